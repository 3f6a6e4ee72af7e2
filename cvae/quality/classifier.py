"""The attribute classifier: the classifier of generated and edited faces.

A small CNN with one sigmoid output per attribute, trained by the pipeline on the
prepared training images. Its accuracy on the held-out split is reported per attribute,
so a fidelity figure can be read against how well the classifier itself sees that attribute.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from cvae.core.atomic import replace_file
from cvae.core.config import Params
from cvae.core.errors import CvaeError
from cvae.data.dataset import PreparedSplit, load_split, tf_dataset
from cvae.model.files import load_keras_file
from cvae.model.networks import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttributeClassifier(keras.Model):
    """Images in [0, 1] -> one score per attribute: the network's logit less the attribute's
    threshold, so a positive score reads "present". Carries the attribute names and the
    thresholds (0 until `calibrated`: the logit's own even odds)."""

    def __init__(self, network: keras.Model, attribute_names: list[str], thresholds: list[float] | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.attribute_names = list(attribute_names)
        # a tuple: Keras would track a list as a structure of its own
        self.thresholds = tuple(float(t) for t in (thresholds or [0.0] * len(self.attribute_names)))
        self.built = True  # the network is a functional model, built already

    def call(self, images, training=False):
        return self.network(images, training=training) - ops.convert_to_tensor(self.thresholds, "float32")

    def calibrated(self, thresholds: list[float]) -> AttributeClassifier:
        """The same network read at other thresholds."""
        return AttributeClassifier(self.network, self.attribute_names, thresholds)

    def get_config(self):
        return {**super().get_config(), "network": keras.saving.serialize_keras_object(self.network),
                "attribute_names": self.attribute_names, "thresholds": list(self.thresholds)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def build_classifier(image_size: int, attribute_names: list[str], filters: list[int]) -> AttributeClassifier:
    images = keras.Input((image_size, image_size, 3), name="images")
    # Pixels centred to [-1, 1] and leaky units, as in the CVAE's encoder. With [0, 1] inputs
    # and plain ReLUs the classifier learnt the thin features slowly: after 10 epochs it missed
    # 37 of the 57 held-out closed smiles (an arc against a straight line; 16 now), and a
    # higher learning rate (0.003) left it at chance instead.
    x = layers.Rescaling(2.0, offset=-1.0, name="centre")(images)
    for width in filters:
        x = layers.Conv2D(width, 3, strides=2, padding="same")(x)
        x = layers.LeakyReLU(0.2)(x)
        x = layers.Conv2D(width, 3, padding="same")(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Flatten()(x)  # not pooled: where a feature sits (mouth, eyes, hair) matters
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(128, activation="relu")(x)
    logits = layers.Dense(len(attribute_names), dtype="float32", name="logits")(x)
    return AttributeClassifier(keras.Model(images, logits, name="classifier_network"), attribute_names)


def load_classifier(path: str | Path) -> AttributeClassifier:
    """The attribute classifier at `path`, or a CvaeError that says why the file is not one."""
    return load_keras_file(path, AttributeClassifier, "classifier", "a cvae attribute classifier",
                           "{path} holds a {held}, not a cvae attribute classifier")


def predict_attributes(classifier: AttributeClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """-1/+1 per image and attribute for float images in [0, 1]."""
    logits = [np.asarray(classifier(images[start:start + batch_size]))
              for start in range(0, len(images), batch_size)]
    if not logits:
        return np.zeros((0, len(classifier.attribute_names)), dtype=np.int8)
    return np.where(np.concatenate(logits) > 0, 1, -1).astype(np.int8)


def _mirrored_targets(images, condition):
    """Half the faces mirrored left to right (no attribute has a side: the labels hold),
    which doubles what a small training set teaches; targets -1/+1 -> 0/1."""
    import tensorflow as tf

    mirror = tf.random.uniform((tf.shape(images)[0], 1, 1, 1)) < 0.5
    return tf.where(mirror, images[:, :, ::-1, :], images), (condition + 1.0) / 2.0


def train_classifier(params: Params, prepared_dir: str | Path, model_path: str | Path,
                     report_path: str | Path) -> dict:
    from cvae.core.attributes import check_names
    from cvae.core.seeding import seed_everything

    seed_everything(params.seed)
    p = params.classifier
    train_split = load_split(prepared_dir, "train")
    test_split = load_split(prepared_dir, "test")
    if len(test_split) == 0:
        raise CvaeError(f"{prepared_dir}: the test split is empty; the classifier cannot be scored")
    check_names(params, train_split.attribute_names, str(prepared_dir))
    classifier = build_classifier(train_split.images.shape[1], train_split.attribute_names, p.filters)
    classifier.compile(optimizer=keras.optimizers.Adam(p.learning_rate),
                       loss=keras.losses.BinaryCrossentropy(from_logits=True))
    classifier.fit(
        tf_dataset(train_split, p.batch_size, shuffle=True, seed=params.seed).map(_mirrored_targets),
        epochs=p.epochs,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    # A logit is read at even odds by default, which for a rare attribute sees only strong
    # cases (on real faces: 68% of the glasses worn). Each attribute's threshold is the
    # one of best balanced accuracy on the validation faces, which the classifier never
    # trained on; the test faces score it.
    val_split = load_split(prepared_dir, "val")
    classifier = classifier.calibrated(balanced_thresholds(
        predict_logits(classifier, val_split, params.evaluate.batch_size), np.asarray(val_split.attributes)))
    report = score_classifier(classifier, test_split, params.evaluate.batch_size)
    with replace_file(model_path) as staging:
        classifier.save(staging)
    with replace_file(report_path) as staging:
        staging.write_text(json.dumps(report, indent=2) + "\n")
    return report


def predict_logits(classifier: AttributeClassifier, split: PreparedSplit, batch_size: int) -> np.ndarray:
    """The classifier's scores for every face of `split` (faces x attributes)."""
    scores = [np.asarray(classifier(split.unit_images(slice(start, start + batch_size))))
              for start in range(0, len(split), batch_size)]
    return np.concatenate(scores) if scores else np.zeros((0, len(classifier.attribute_names)), np.float32)


def balanced_thresholds(scores: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per attribute: the threshold on `scores` (faces x attributes) at which the balanced
    accuracy against `truth` (-1/+1) is highest, halfway between two neighbouring scores; of
    equally good ones, the nearest to 0. 0 where the faces do not hold both values."""
    thresholds = []
    for column in range(scores.shape[1]):
        order = np.argsort(scores[:, column], kind="stable")
        ranked, present = scores[order, column], truth[order, column] > 0
        positives, negatives = int(present.sum()), int((~present).sum())
        if not positives or not negatives:
            thresholds.append(0.0)
            continue
        # cutting before rank i calls the faces from i on "present"
        missed = np.concatenate([[0], np.cumsum(present)])  # present faces below the cut
        rejected = np.concatenate([[0], np.cumsum(~present)])  # absent faces below the cut
        balanced = ((positives - missed) / positives + rejected / negatives) / 2
        cuts = np.concatenate([[ranked[0] - 1.0], (ranked[:-1] + ranked[1:]) / 2, [ranked[-1] + 1.0]])
        distinct = np.concatenate([[True], ranked[1:] > ranked[:-1], [True]])  # no cut between equal scores
        best = np.flatnonzero(distinct & (balanced >= balanced[distinct].max() - 1e-12))
        thresholds.append(float(cuts[best[np.argmin(np.abs(cuts[best]))]]))
    return thresholds


def score_classifier(classifier: AttributeClassifier, split: PreparedSplit, batch_size: int) -> dict:
    """Per attribute on `split`: accuracy, balanced accuracy (the mean of the +1 and -1
    recalls) and each recall (None where no face has that value). Balanced accuracy is what
    matters for a rare attribute, and it is the ceiling against which the fidelity of
    generated faces reads; the recalls are the ceilings of edits towards each value."""
    predicted = np.where(predict_logits(classifier, split, batch_size) > 0, 1, -1)
    truth = np.asarray(split.attributes)
    per_attribute = {}
    for index, name in enumerate(split.attribute_names):
        right = predicted[:, index] == truth[:, index]
        recall = {value: float(right[truth[:, index] == value].mean()) if (truth[:, index] == value).any() else None
                  for value in (1, -1)}
        per_attribute[name] = {
            "accuracy": round(float(right.mean()), 4),
            "balanced_accuracy": round(float(np.mean([r for r in recall.values() if r is not None])), 4),
            "prevalence": round(float((truth[:, index] > 0).mean()), 4),
            "recall_present": None if recall[1] is None else round(recall[1], 4),
            "recall_absent": None if recall[-1] is None else round(recall[-1], 4),
            "threshold": round(classifier.thresholds[index], 4),
        }
    return {
        "test_images": len(split),
        "mean_accuracy": round(float(np.mean([a["accuracy"] for a in per_attribute.values()])), 4),
        "mean_balanced_accuracy": round(float(np.mean([a["balanced_accuracy"] for a in per_attribute.values()])), 4),
        "attributes": per_attribute,
    }

