"""The `evaluate` stage: held-out ELBO, reconstruction error against the mean-image
baseline, attribute fidelity, edit success and the quality of sampled faces, into
metrics.json (DVC metrics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cvae.core.atomic import replace_file
from cvae.core.attributes import check_names, chosen
from cvae.core.config import Params
from cvae.core.errors import CvaeError
from cvae.core.progress import progress
from cvae.data.dataset import load_split, tf_dataset, to_unit_range
from cvae.quality.classifier import score_classifier
from cvae.quality.fidelity import attribute_fidelity, check_classifier, edit_success, reconstruction_fidelity
from cvae.quality.samples import sample_quality


def mean_image(split) -> np.ndarray:
    """The per-pixel mean of a split in [0, 1], read shard by shard (bounded memory)."""
    total = np.zeros(split.images.shape[1:], dtype=np.float64)
    for index in range(len(split.images.paths)):
        total += to_unit_range(np.load(split.images.paths[index])).sum(axis=0, dtype=np.float64)
    return (total / max(len(split), 1)).astype(np.float32)


def evaluate(params: Params, prepared_dir: str | Path, model_path: str | Path, classifier_path: str | Path,
             metrics_path: str | Path) -> dict:
    from cvae.model.cvae import load_cvae
    from cvae.quality.classifier import load_classifier

    metrics = score(params, prepared_dir, load_cvae(model_path), load_classifier(classifier_path))
    with replace_file(metrics_path) as staging:
        staging.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def score(params: Params, prepared_dir: str | Path, model, classifier) -> dict:
    """Every metric of `model` on the held-out split, judged by `classifier`. The same
    seed draws the same latent codes and faces for any model, so two models scored
    here are compared on identical samples (the promotion gate relies on it)."""
    check_classifier(model, classifier)
    test = load_split(prepared_dir, "test")
    if len(test) == 0:
        raise CvaeError(f"{prepared_dir}: the test split is empty; nothing to evaluate")
    e = params.evaluate
    check_names(params, test.attribute_names, str(prepared_dir))
    judged = chosen(e.fidelity_attributes, test.attribute_names, "evaluate.fidelity_attributes")
    edited = chosen(e.edit_attributes, test.attribute_names, "evaluate.edit_attributes")
    baseline = mean_image(load_split(prepared_dir, "train"))
    n = len(test)
    sums = {"nll": 0.0, "kl": 0.0, "mse_sampled": 0.0, "mse": 0.0, "mean_image_mse": 0.0}
    batches = tf_dataset(test, params.evaluate.batch_size, shuffle=False, seed=params.seed)
    for images, condition in progress(batches, math.ceil(n / e.batch_size), "evaluate: held-out ELBO"):
        nll, kl, mse_sampled = (np.asarray(t, dtype=np.float64) for t in model.terms(images, condition))
        reconstruction = np.asarray(model([images, condition]))
        pixels = np.asarray(images)
        sums["nll"] += nll.sum()
        sums["kl"] += kl.sum()
        sums["mse_sampled"] += mse_sampled.sum()
        sums["mse"] += np.square(pixels - reconstruction).mean(axis=(1, 2, 3)).sum()
        sums["mean_image_mse"] += np.square(pixels - baseline).mean(axis=(1, 2, 3)).sum()
    dims = int(np.prod(test.images.shape[1:]))
    neg_elbo = (sums["nll"] + sums["kl"]) / n
    metrics = {
        "test_images": n,
        # per-pixel MSE of the reconstruction from the posterior mean, and of the mean
        # training image (the baseline any model must beat by far)
        "mse": sums["mse"] / n,
        "mean_image_mse": sums["mean_image_mse"] / n,
        "kl_nats": sums["kl"] / n,
        # ELBO with one z sample per image, Gaussian likelihood on [0, 1] pixels
        "neg_elbo_nats": neg_elbo,
        # the same on the 8-bit scale (a density on [0, 255] is 255**-dims smaller),
        # the unit the literature reports
        "bits_per_dim": (neg_elbo + dims * math.log(256)) / (dims * math.log(2)),
    }
    metrics = {key: value if isinstance(value, int) else round(float(value), 6) for key, value in metrics.items()}
    metrics["mse_vs_mean_image"] = round(metrics["mean_image_mse"] / max(metrics["mse"], 1e-12), 3)
    fidelity = attribute_fidelity(model, classifier, test, judged, e.fidelity_samples, params.seed, e.batch_size)
    metrics["fidelity"] = {"mean": _round(np.mean(list(fidelity.values()))),
                           **{name: _round(value) for name, value in fidelity.items()}}
    ceiling = reconstruction_fidelity(model, classifier, test, judged, e.batch_size)
    metrics["reconstruction_fidelity"] = {"mean": _round(np.mean(list(ceiling.values()))),
                                          **{name: _round(value) for name, value in ceiling.items()}}
    # the classifier's recalls on real held-out faces: what an edit's success reads against
    recalls = score_classifier(classifier, test, e.batch_size)["attributes"]
    edits = edit_success(model, classifier, test, edited, judged, e.edit_images, params.seed, e.batch_size, recalls)
    metrics["edit"] = {name: {key: _round_or_none(value) for key, value in result.items()}
                       for name, result in edits.items()}
    # over the edited attributes: what the gate reads when params name none
    metrics["edit"]["mean"] = {key: _mean_or_none([result[key] for result in edits.values()])
                               for key in next(iter(edits.values()))}
    samples = sample_quality(model, classifier, test, params.seed, e.batch_size)
    metrics["samples"] = {
        # share of faces sampled from the prior with a 2- or 4-pixel grid stronger than
        # in all but 0.5% of the held-out faces (so 0.005 draws like the data)
        "grid_artifact_rate": _round(samples["grid_artifact_rate"]),
        # Fréchet distance, in the classifier's penultimate features, between sampled faces and
        # one half of the held-out faces (lower is better; its scale is the features', so
        # it is kept to significant digits, not decimals)
        "frechet_distance": _significant(samples["frechet_distance"]),
        # the same between the other half of the held-out faces and that half: the floor
        # the sampled faces would reach if they were drawn like the data
        "real_frechet_distance": _significant(samples["real_frechet_distance"]),
        # the first over the second: free of the features' scale, so one gate tolerance
        # serves any data (1: sampled faces as close as real ones)
        "frechet_ratio": _round(samples["frechet_distance"] / max(samples["real_frechet_distance"], 1e-12)),
    }
    return metrics


def _round(value: float) -> float:
    return round(float(value), 4)


def _round_or_none(value: float | None) -> float | None:
    return None if value is None else _round(value)


def _mean_or_none(values: list[float | None]) -> float | None:
    """The mean, or None where a value is missing (a mean over some would mislead)."""
    return None if any(value is None for value in values) else _round(np.mean(values))


def _significant(value: float) -> float:
    return float(f"{value:.6g}")
