"""The `evaluate` stage: held-out reconstruction error, KL and ELBO into metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cvae.atomic import replace_file
from cvae.config import Params
from cvae.dataset import load_split, tf_dataset, to_unit_range


def mean_image(split) -> np.ndarray:
    """The per-pixel mean of a split in [0, 1], read shard by shard (bounded memory)."""
    total = np.zeros(split.images.shape[1:], dtype=np.float64)
    for index in range(len(split.images.paths)):
        total += to_unit_range(np.load(split.images.paths[index])).sum(axis=0, dtype=np.float64)
    return (total / max(len(split), 1)).astype(np.float32)


def evaluate(params: Params, prepared_dir: str | Path, model_path: str | Path, metrics_path: str | Path) -> dict:
    from cvae.model import load_cvae

    model = load_cvae(model_path)
    test = load_split(prepared_dir, "test")
    baseline = mean_image(load_split(prepared_dir, "train"))
    sums = {"nll": 0.0, "kl": 0.0, "mse_sampled": 0.0, "mse": 0.0, "mean_image_mse": 0.0}
    for images, condition in tf_dataset(test, params.evaluate.batch_size, shuffle=False, seed=params.seed):
        nll, kl, mse_sampled = (np.asarray(t, dtype=np.float64) for t in model.terms(images, condition))
        reconstruction = np.asarray(model([images, condition]))
        pixels = np.asarray(images)
        sums["nll"] += nll.sum()
        sums["kl"] += kl.sum()
        sums["mse_sampled"] += mse_sampled.sum()
        sums["mse"] += np.square(pixels - reconstruction).mean(axis=(1, 2, 3)).sum()
        sums["mean_image_mse"] += np.square(pixels - baseline).mean(axis=(1, 2, 3)).sum()
    n = len(test)
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
    with replace_file(metrics_path) as staging:
        staging.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
