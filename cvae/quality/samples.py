"""How faces sampled from the prior compare with real held-out faces, without Inception
weights (FID's network cannot be fetched offline):

- a grid-artifact rate: stride-2 transposed convolutions tend to paint periodic grids of
  2- and 4-pixel period over what they decode; real faces almost never show them;
- a Fréchet distance in the feature space of the pipeline's own attribute
  classifier (FID's formula, on the classifier's penultimate layer instead of Inception's).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from scipy import linalg

from cvae.core.errors import CvaeError
from cvae.data.dataset import PreparedSplit
from cvae.quality.classifier import AttributeClassifier
from cvae.quality.fidelity import decode_prior

# Real faces above the threshold: the threshold is their 99.5th percentile, so a decoder
# that draws like the data is flagged on 0.5% of its faces.
REAL_QUANTILE = 99.5
# Faces in each half of the held-out split that the sample metrics compare (see
# `sample_quality`); bounds their time and memory on a large test split such as CelebA's.
SAMPLE_FACES = 1000
# ITU-R BT.601 luma: the greyscale a grid shows in, whatever its colour
LUMA = np.array([0.299, 0.587, 0.114])
# pytorch-fid's offset for a singular covariance product
FRECHET_EPS = 1e-6


def grid_artifact_scores(images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Per image (n, h, w, 3): the share of its spectral power (greyscale, mean removed)
    at the periods of 2 and 4 pixels, along rows, columns and both (a dot grid)."""
    height, width = images.shape[1:3]
    if height % 4 or width % 4:
        raise CvaeError(f"grid artifacts are measured on sides divisible by 4, got {height}x{width}")
    on_grid = np.outer(_grid_bins(height), _grid_bins(width))
    on_grid[0, 0] = False  # the mean, removed
    scores = []
    for start in range(0, len(images), chunk):
        grey = images[start:start + chunk].astype(np.float64) @ LUMA
        grey -= grey.mean(axis=(1, 2), keepdims=True)
        power = np.square(np.abs(np.fft.fft2(grey)))
        total = power.sum(axis=(1, 2))
        # a flat image has no power at all, and no grid either
        scores.append(np.divide(power[:, on_grid].sum(axis=1), total, out=np.zeros_like(total), where=total > 0))
    return np.concatenate(scores) if scores else np.zeros(0)


def _grid_bins(side: int) -> np.ndarray:
    """The FFT bins of frequency 0, 1/4, 1/2 and 3/4 (= -1/4) cycles per pixel."""
    return (4 * np.arange(side)) % side == 0


def grid_artifact_rate(generated: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    """The share of `generated` images whose grid-artifact score exceeds the REAL_QUANTILE
    percentile of the `real` images' scores, and that threshold."""
    threshold = float(np.percentile(grid_artifact_scores(real), REAL_QUANTILE))
    return float((grid_artifact_scores(generated) > threshold).mean()), threshold


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of feature vectors (one a
    row): ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), as FID computes it."""
    if min(len(features_a), len(features_b)) < 2:
        raise CvaeError("a Frechet distance needs at least two feature vectors per set")
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = _sqrtm_of_product(cov_a, cov_b)
    if root is None:
        # fewer vectors than dimensions, or dead units: a singular product has no reliable
        # root; shifting both covariances by eps*I (as pytorch-fid does) gives one
        offset = FRECHET_EPS * np.eye(len(cov_a))
        root = _sqrtm_of_product(cov_a + offset, cov_b + offset)
    # the root of a product of covariances is real up to rounding: drop the imaginary dust
    distance = np.sum(np.square(mean_a - mean_b)) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root).real
    return float(max(distance, 0.0))  # rounding can leave a tiny negative for identical sets


def _sqrtm_of_product(cov_a: np.ndarray, cov_b: np.ndarray) -> np.ndarray | None:
    """sqrtm(cov_a @ cov_b), or None where SciPy finds the product singular."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            root = linalg.sqrtm(cov_a @ cov_b)
        except linalg.LinAlgWarning:
            return None
    return root if np.isfinite(root).all() else None


def classifier_features(classifier: AttributeClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The classifier's penultimate features of float images in [0, 1]: what its logits layer
    (the network's last Dense layer) reads. Found by the layer's type, not its position, so
    a layer added after the logits changes nothing."""
    dense = [layer for layer in classifier.network.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise CvaeError("the attribute classifier has no Dense layer to read features before")
    features = keras.Model(classifier.network.input, dense[-1].input)
    batches = [np.asarray(features(images[start:start + batch_size]), dtype=np.float64)
               for start in range(0, len(images), batch_size)]
    return np.concatenate(batches) if batches else np.zeros((0, dense[-1].input.shape[-1]))


def sample_quality(model, classifier: AttributeClassifier, split: PreparedSplit, seed: int,
                   batch_size: int) -> dict[str, float]:
    """The held-out faces, shuffled by `seed`, give two disjoint halves of up to
    SAMPLE_FACES: `reference` and `stand_in`. Faces generated from the prior with the
    stand-in faces' attributes (z drawn from `seed` too, so any two models are scored on
    the same draws) are compared with the reference half, and so are the stand-in faces
    themselves: what a model that draws like the data would score."""
    half = min(len(split) // 2, SAMPLE_FACES)
    if half < 2:
        raise CvaeError(f"sample quality needs at least 4 held-out faces, the test split has {len(split)}")
    order = np.random.default_rng(seed).permutation(len(split))
    reference_rows, stand_in_rows = np.sort(order[:half]), np.sort(order[half:2 * half])
    reference, stand_in = split.unit_images(reference_rows), split.unit_images(stand_in_rows)
    generated = decode_prior(model, np.asarray(split.attributes[stand_in_rows], dtype=np.float32), seed, batch_size)
    rate, _ = grid_artifact_rate(generated, np.concatenate([reference, stand_in]))
    reference_features = classifier_features(classifier, reference, batch_size)
    return {
        "grid_artifact_rate": rate,
        "frechet_distance": frechet_distance(classifier_features(classifier, generated, batch_size), reference_features),
        "real_frechet_distance": frechet_distance(classifier_features(classifier, stand_in, batch_size),
                                                  reference_features),
    }
