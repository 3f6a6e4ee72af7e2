"""The classifier learns every attribute of the data from the images and keeps it through a
save and a safe-mode load."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cvae.quality.classifier import build_classifier, load_classifier, predict_attributes

SIZE = 8


def bright_and_red(n: int):
    rng = np.random.default_rng(0)
    images = rng.random((n, SIZE, SIZE, 3)).astype(np.float32) * 0.5
    labels = rng.random((n, 2)) < 0.4
    images += 0.4 * labels[:, 0, None, None, None]  # brighter everywhere
    images[..., 0] += 0.5 * labels[:, 1, None, None]  # redder
    return np.clip(images, 0, 1), np.where(labels, 1.0, -1.0).astype(np.float32)


def test_the_classifier_reads_every_attribute_and_survives_a_safe_load(tmp_path):
    images, labels = bright_and_red(128)
    keras.utils.set_random_seed(0)
    judge = build_classifier(SIZE, ["Bright", "Red"], [4])
    judge.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    judge.fit(images, (labels + 1) / 2, epochs=30, batch_size=16, verbose=0)
    judge.save(tmp_path / "judge.keras")
    loaded = load_classifier(tmp_path / "judge.keras")
    assert loaded.attribute_names == ["Bright", "Red"]
    seen = predict_attributes(loaded, images)
    assert (seen == labels).mean(axis=0).min() > 0.9
    shuffled = labels[np.random.default_rng(1).permutation(len(labels))]
    assert (seen == shuffled).mean(axis=0).max() < 0.75  # reading the pictures, not guessing
