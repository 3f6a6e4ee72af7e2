"""What users care about, judged by the attribute classifier: does a face generated with
an attribute show it (fidelity), and does editing a face change what was asked and only
that (edit success)?"""

from __future__ import annotations

import numpy as np

from cvae.core.errors import CvaeError
from cvae.core.progress import progress
from cvae.data.dataset import PreparedSplit
from cvae.quality.classifier import AttributeClassifier, predict_attributes


def check_classifier(model, classifier: AttributeClassifier) -> None:
    if list(classifier.attribute_names) != list(model.attribute_names):
        raise CvaeError("the classifier and the model were trained on different attributes: "
                        f"{classifier.attribute_names} vs {model.attribute_names}; retrain the classifier")


def attribute_fidelity(model, classifier: AttributeClassifier, split: PreparedSplit, attributes: list[str],
                       samples: int, seed: int, batch_size: int) -> dict[str, float]:
    """Per attribute: the mean over value +1 and -1 of how often the classifier sees that
    value in faces generated with it (a balanced accuracy, so a rare attribute cannot score
    well by never appearing). The other attributes come from held-out faces that have the
    value, i.e. from the data's own joint distribution: no bald face with blond hair."""
    rng = np.random.default_rng(seed)
    table = np.asarray(split.attributes, dtype=np.float32)
    fidelity = {}
    for name in progress(attributes, len(attributes), "evaluate: fidelity"):
        column = split.attribute_names.index(name)
        agreement = []
        for value in (1.0, -1.0):
            pool = np.flatnonzero(table[:, column] == value)
            condition = table[rng.choice(pool if len(pool) else len(table), samples)]
            condition[:, column] = value
            images = decode_prior(model, condition, seed, batch_size)
            agreement.append(float((predict_attributes(classifier, images, batch_size)[:, column] == value).mean()))
        fidelity[name] = float(np.mean(agreement))
    return fidelity


def reconstruction_fidelity(model, classifier: AttributeClassifier, split: PreparedSplit, attributes: list[str],
                            batch_size: int) -> dict[str, float]:
    """Per attribute: the balanced agreement of the classifier on reconstructions of the
    held-out faces (posterior mean, own attributes) with those faces' true values.

    The ceiling for fidelity and edit success under this classifier: an attribute it does not
    see in reconstructions of faces that have it, it will not see in generated or edited
    ones either, however well the model steers it."""
    images_seen = []
    for rows in _batches(len(split), batch_size):
        images, condition = split.unit_images(rows), np.asarray(split.attributes[rows], dtype=np.float32)
        reconstruction = np.asarray(model([images, condition]))
        images_seen.append(predict_attributes(classifier, reconstruction, batch_size))
    seen, truth = np.concatenate(images_seen), np.asarray(split.attributes, dtype=np.float32)
    fidelity = {}
    for name in attributes:
        column = split.attribute_names.index(name)
        recalls = [float((seen[truth[:, column] == value, column] == value).mean())
                   for value in (1.0, -1.0) if (truth[:, column] == value).any()]
        fidelity[name] = float(np.mean(recalls))
    return fidelity


def edit_success(model, classifier: AttributeClassifier, split: PreparedSplit, attributes: list[str],
                 judged: list[str], count: int, seed: int, batch_size: int,
                 recalls: dict[str, dict] | None = None) -> dict[str, dict[str, float | None]]:
    """Encode held-out faces with their attributes, flip one attribute, decode. Per flipped
    attribute: how often the classifier sees the flip, how often it sees every other judged
    attribute as it saw it on the plain reconstruction, and the pixel MSE to that
    reconstruction.

    With `recalls` (cvae.quality.classifier.score_classifier's per-attribute report on real
    held-out faces), also `success_ceiling`: the success a perfect edit, one as plain as a
    real face's, would score, since the classifier sees a real face's attribute only as often
    as its recall for that value. For a rare attribute nearly every edit adds it, so its
    ceiling is the classifier's recall on real faces that have it."""
    rows = np.sort(np.random.default_rng(seed).choice(len(split), min(count, len(split)), replace=False))
    images = split.unit_images(rows)
    condition = np.asarray(split.attributes[rows], dtype=np.float32)
    z_mean = np.concatenate([np.asarray(model.encoder([images[s], condition[s]])[0])
                             for s in _batches(len(rows), batch_size)])
    plain = _decode(model, z_mean, condition, batch_size)
    seen_plain = predict_attributes(classifier, plain, batch_size)
    results = {}
    for name in progress(attributes, len(attributes), "evaluate: edits"):
        column = split.attribute_names.index(name)
        flipped = condition.copy()
        flipped[:, column] = -flipped[:, column]
        edited = _decode(model, z_mean, flipped, batch_size)
        seen = predict_attributes(classifier, edited, batch_size)
        others = [split.attribute_names.index(other) for other in judged if other != name]
        results[name] = {
            "success": float((seen[:, column] == flipped[:, column]).mean()),
            "others_kept": float((seen[:, others] == seen_plain[:, others]).mean()) if others else 1.0,
            "pixel_mse": float(np.square(edited - plain).mean()),
        }
        if recalls is not None:
            results[name]["success_ceiling"] = _success_ceiling(recalls[name], flipped[:, column])
    return results


def _success_ceiling(recall: dict, asked: np.ndarray) -> float | None:
    """The mean over edits of the classifier's recall on real faces of the value each asks
    for; None where no real face has a value that some edit asks for."""
    by_value = {1.0: recall["recall_present"], -1.0: recall["recall_absent"]}
    wanted = [by_value[float(value)] for value in asked]
    return None if any(value is None for value in wanted) else float(np.mean(wanted))


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, start + batch_size) for start in range(0, n, batch_size)]


def _decode(model, z: np.ndarray, condition: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(model.decoder([z[s], condition[s]])) for s in _batches(len(z), batch_size)])


def decode_prior(model, condition: np.ndarray, seed: int, batch_size: int) -> np.ndarray:
    """Faces decoded from z ~ N(0, I) drawn from `seed`: the same codes for any model."""
    z = np.random.default_rng(seed).standard_normal((len(condition), model.latent_dim)).astype(np.float32)
    return _decode(model, z, condition, batch_size)
