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


def test_thresholds_of_best_balanced_accuracy_read_a_rare_attribute_its_even_odds_miss():
    from cvae.quality.classifier import balanced_thresholds

    # a rare attribute whose scores sit low: at 0, 2 of its 4 faces are missed
    scores = np.array([[-3.0], [-2.5], [-2.0], [-1.5], [-1.0], [-0.8], [-0.6], [-0.4], [0.5], [1.0]])
    truth = np.where(np.arange(10) >= 6, 1, -1)[:, None]
    (threshold,) = balanced_thresholds(scores, truth)
    assert threshold == pytest.approx(-0.7)  # between the last absent face and the first present one
    assert ((scores[:, 0] > threshold) == (truth[:, 0] > 0)).all()
    # a perfect split at 0 keeps the cut nearest 0; one value alone gives no evidence to move it
    assert balanced_thresholds(np.array([[-2.0], [-1.0], [1.0], [3.0]]), np.array([[-1], [-1], [1], [1]])) == [0.0]
    assert balanced_thresholds(np.array([[-2.0], [5.0]]), np.array([[1], [1]])) == [0.0]
    # equal scores cannot be cut apart: the threshold never falls between two of them
    (tied,) = balanced_thresholds(np.array([[1.0], [1.0], [1.0], [2.0]]), np.array([[-1], [1], [-1], [1]]))
    assert tied in (pytest.approx(0.0), pytest.approx(1.5))


def test_a_calibrated_classifier_reads_at_its_thresholds_and_keeps_them_through_a_safe_load(tmp_path):
    judge = build_classifier(SIZE, ["Bright", "Red"], [4])
    images, _ = bright_and_red(8)
    logits = np.asarray(judge(images))
    thresholds = [float(np.median(logits[:, 0])), -100.0]
    calibrated = judge.calibrated(thresholds)
    calibrated.save(tmp_path / "judge.keras")
    loaded = load_classifier(tmp_path / "judge.keras")
    assert loaded.thresholds == pytest.approx(tuple(thresholds))
    seen = predict_attributes(loaded, images)
    assert (seen[:, 0] == np.where(logits[:, 0] > thresholds[0], 1, -1)).all()
    assert (seen[:, 1] == 1).all()
