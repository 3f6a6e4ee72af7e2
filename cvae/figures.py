"""The `visualize` stage: PNG figures of what the model learned, under reports/figures/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cvae.atomic import replace_directory
from cvae.config import Params
from cvae.dataset import load_split
from cvae.errors import CvaeError

RECONSTRUCTIONS = "reconstructions.png"
SAMPLES = "samples.png"
SWEEP = "sweep_male_smiling.png"
LATENT = "latent_pca.png"
SWEEP_ATTRIBUTES = ("Male", "Smiling")  # across, down: the original tutorial's sweep

CAPTIONS = {
    RECONSTRUCTIONS: "Held-out faces (top row) above their reconstructions from the posterior mean.",
    SAMPLES: "Random faces: z ~ N(0, I), attributes taken from held-out faces.",
    SWEEP: "One latent code; Male from - to + across, Smiling from - to + down.",
    LATENT: "Held-out latent means projected on their first two principal components.",
}


def image_grid(images: np.ndarray, columns: int, gap: int = 2) -> Image.Image:
    """Tile float images in [0, 1], (n, h, w, 3), row by row on a white background."""
    n, height, width, _ = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * (height + gap) + gap, columns * (width + gap) + gap, 3), dtype=np.float32)
    for index, image in enumerate(images):
        top = gap + (index // columns) * (height + gap)
        left = gap + (index % columns) * (width + gap)
        canvas[top:top + height, left:left + width] = image
    return Image.fromarray(np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8))


def visualize(params: Params, prepared_dir: str | Path, model_path: str | Path, figures_dir: str | Path) -> dict:
    from cvae.model import load_cvae

    model = load_cvae(model_path)
    test = load_split(prepared_dir, "test")
    if len(test) == 0:
        raise CvaeError(f"{prepared_dir}: the test split is empty; nothing to visualise")
    v = params.visualize
    rng = np.random.default_rng(params.seed)
    names = test.attribute_names
    with replace_directory(figures_dir) as staging:
        count = min(v.reconstructions, len(test))
        images, condition = test.unit_images(slice(0, count)), test.attributes[:count].astype(np.float32)
        reconstructions = np.asarray(model([images, condition]))
        image_grid(np.concatenate([images, reconstructions]), columns=count).save(staging / RECONSTRUCTIONS)

        rows = rng.integers(0, len(test), size=v.samples)
        samples = np.asarray(model.generate(test.attributes[rows].astype(np.float32), seed=params.seed))
        image_grid(samples, columns=int(np.ceil(np.sqrt(v.samples)))).save(staging / SAMPLES)

        _sweep(model, test, v.sweep_steps, v.sweep_range).save(staging / SWEEP)
        if v.latent_color_attribute not in names:
            raise CvaeError(f"visualize.latent_color_attribute: {v.latent_color_attribute!r} is not an attribute"
                            f" of this dataset (have {', '.join(names)})")
        _latent_map(model, test, names.index(v.latent_color_attribute), v.latent_color_attribute,
                    staging / LATENT)
    return {name: str(Path(figures_dir) / name) for name in CAPTIONS}


def _sweep(model, test, steps: int, value_range: float) -> Image.Image:
    """The tutorial's grid: one face's latent code decoded under a Male x Smiling sweep."""
    names = test.attribute_names
    missing = [name for name in SWEEP_ATTRIBUTES if name not in names]
    if missing:
        raise CvaeError(f"the sweep needs attributes {missing}, which this dataset lacks")
    across, down = (names.index(name) for name in SWEEP_ATTRIBUTES)
    face, attributes = test.unit_images(slice(0, 1)), test.attributes[:1].astype(np.float32)
    z_mean, _ = model.encoder([face, attributes])
    values = np.linspace(-value_range, value_range, steps, dtype=np.float32)
    condition = np.repeat(attributes, steps * steps, axis=0)
    condition[:, down] = np.repeat(values, steps)
    condition[:, across] = np.tile(values, steps)
    decoded = np.asarray(model.decoder([np.repeat(np.asarray(z_mean), steps * steps, axis=0), condition]))
    return image_grid(decoded, columns=steps)


def _latent_map(model, test, attribute: int, attribute_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = []
    for start in range(0, len(test), 256):
        rows = slice(start, start + 256)
        z_mean, _ = model.encoder([test.unit_images(rows), test.attributes[rows].astype(np.float32)])
        means.append(np.asarray(z_mean))
    latent = np.concatenate(means)
    centred = latent - latent.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:2].T
    labels = test.attributes[:, attribute] > 0
    figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
    for value, colour in ((False, "tab:blue"), (True, "tab:orange")):
        chosen = labels == value
        axes.scatter(projected[chosen, 0], projected[chosen, 1], s=6, c=colour, alpha=0.7,
                     label=f"{attribute_name} = {'+1' if value else '-1'}")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title("Held-out latent means (PCA)")
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})  # no version stamp: same inputs, same bytes
    plt.close(figure)
