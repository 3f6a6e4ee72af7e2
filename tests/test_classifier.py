"""The judge reads from the images only the attributes it is told to learn, and answers the
others with their prevalence, the same for every image."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cvae.classifier import build_classifier, load_classifier, predict_attributes

SIZE = 8


def brightness_and_noise(n: int, hidden_prevalence: float):
    rng = np.random.default_rng(0)
    images = rng.random((n, SIZE, SIZE, 3)).astype(np.float32)
    images *= rng.choice(np.array([0.5, 1.0], dtype=np.float32), size=(n, 1, 1, 1))  # dark or not
    bright = images.mean(axis=(1, 2, 3)) > 0.375
    noise = rng.random(n) < hidden_prevalence  # labels the pictures do not show
    return images, np.stack([bright, noise], axis=1).astype(np.float32)


def trained_judge(learnt, tmp_path):
    images, labels = brightness_and_noise(96, hidden_prevalence=0.25)
    keras.utils.set_random_seed(0)
    judge = build_classifier(SIZE, ["Bright", "Hidden"], [4], learnt)
    judge.compile(optimizer=keras.optimizers.Adam(0.03), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    judge.fit(images, labels, epochs=40, batch_size=16, verbose=0)
    judge.save(tmp_path / "judge.keras")  # the layer survives saving
    return load_classifier(tmp_path / "judge.keras"), images, labels


def test_an_unlearnt_attribute_gets_its_prevalence_for_every_image(tmp_path):
    judge, images, labels = trained_judge(["Bright"], tmp_path)
    logits = np.asarray(judge(images))
    assert np.ptp(logits[:, 1]) == 0.0  # the image does not reach it
    assert 1 / (1 + np.exp(-logits[0, 1])) == pytest.approx(labels[:, 1].mean(), abs=0.05)
    seen = predict_attributes(judge, images)
    assert (seen[:, 0] == np.where(labels[:, 0] > 0, 1, -1)).mean() > 0.9  # the learnt one is read
    assert (seen[:, 1] == -1).all()  # rarer than not: absent


def test_with_every_attribute_learnt_the_network_reads_them_all(tmp_path):
    judge, images, _ = trained_judge(None, tmp_path)
    assert "prior_for_unlearnt" not in [layer.name for layer in judge.network.layers]
    assert np.ptp(np.asarray(judge(images))[:, 1]) > 0.1
