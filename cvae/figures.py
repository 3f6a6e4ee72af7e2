"""The `visualize` stage: PNG figures of what the model learned, under reports/figures/.

The original tutorial's figures (reconstructions, random samples, the Male x Smiling sweep,
the latent map) and a few it did not have (conditional rows over shared latent codes,
edits of held-out faces, interpolation, training curves). Every PNG carries its
provenance in its text chunks (`cvae.core.provenance`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from cvae.core.atomic import replace_directory
from cvae.core.attributes import check_names, figure_choices
from cvae.core.config import Params
from cvae.core.errors import CvaeError
from cvae.core.progress import progress
from cvae.core.provenance import collect
from cvae.data.dataset import PreparedSplit, load_split

RECONSTRUCTIONS = "reconstructions.png"
SAMPLES = "samples.png"
CONDITIONAL = "conditional_samples.png"
SWEEP = "sweep.png"
EDITS = "edits.png"
INTERPOLATION = "interpolation.png"
LATENT = "latent_map.png"
CURVES = "training_curves.png"

CAPTIONS = {
    RECONSTRUCTIONS: "Held-out faces (top row) above their reconstructions from the posterior mean.",
    SAMPLES: "Random faces: z ~ N(0, I), attributes taken from held-out faces.",
    CONDITIONAL: "Each column one latent code z ~ N(0, I) and one held-out face's attributes; each row applies "
                 "the attribute setting named on the left (visualize.conditional_rows): the same people with the "
                 "attribute changed.",
    SWEEP: "One held-out face's latent code under a sweep of two attributes (visualize.sweep_attributes), the "
           "first from - to + across, the second down (visualize.sweep_range); the original tutorial swept "
           "Male x Smiling.",
    EDITS: "Held-out faces, their reconstructions, then the edits of visualize.edit_rows applied to each face's "
           "own attributes and latent code.",
    INTERPOLATION: "Each row walks in a straight line from one held-out face to another, in latent code and "
                   "attributes together; the real faces are at both ends.",
    LATENT: "Held-out latent means in 2-D (PCA above, t-SNE below), coloured by each attribute of "
            "visualize.latent_color_attributes.",
    CURVES: "Per epoch, training and validation: the objective (KL weighted), the negative ELBO, the "
            "reconstruction MSE per pixel and the KL per image.",
}
LABEL_WIDTH = 84  # pixels of row labels left of a labelled grid
SHOWS_KEY = "cvae:shows"  # PNG text chunk: the attributes (or settings by label) a figure shows


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


def labelled_grid(rows: list[np.ndarray], labels: list[str], gap: int = 2) -> Image.Image:
    """One row of images per label, the label written on the left."""
    columns = rows[0].shape[0]
    grid = image_grid(np.concatenate(rows), columns=columns, gap=gap)
    canvas = Image.new("RGB", (grid.width + LABEL_WIDTH, grid.height), "white")
    canvas.paste(grid, (LABEL_WIDTH, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    row_height = rows[0].shape[1] + gap
    for index, label in enumerate(labels):
        draw.text((4, gap + index * row_height + row_height // 2 - 6), label[:14], fill="black", font=font)
    return canvas


def visualize(params: Params, prepared_dir: str | Path, model_path: str | Path, figures_dir: str | Path,
              history_dir: str | Path | None = None) -> dict:
    from cvae.model.cvae import load_cvae

    model = load_cvae(model_path)
    test = load_split(prepared_dir, "test")
    if len(test) == 0:
        raise CvaeError(f"{prepared_dir}: the test split is empty; nothing to visualise")
    v = params.visualize
    check_names(params, test.attribute_names, str(prepared_dir))
    choice = figure_choices(params, test.attribute_names, np.asarray(test.attributes))
    history = _read_history(Path(history_dir)) if history_dir else None
    provenance = collect(params, model_path, prepared_dir)
    rng = np.random.default_rng(params.seed)
    figures = {
        RECONSTRUCTIONS: lambda path: _save(_reconstructions(model, test, v.reconstructions), path, provenance),
        SAMPLES: lambda path: _save(_samples(model, test, v.samples, rng, params.seed), path, provenance),
        CONDITIONAL: lambda path: _save(_conditional(model, test, choice["conditional_rows"], v.conditional_columns,
                                                     rng, params.seed), path,
                                        _showing(provenance, choice["conditional_rows"])),
        SWEEP: lambda path: _save(_sweep(model, test, choice["sweep_attributes"], v.sweep_steps, v.sweep_range),
                                  path, _showing(provenance, choice["sweep_attributes"])),
        EDITS: lambda path: _save(_edits(model, test, choice["edit_rows"], v.reconstructions), path,
                                  _showing(provenance, choice["edit_rows"])),
        INTERPOLATION: lambda path: _save(_interpolation(model, test, v.interpolation_pairs,
                                                         v.interpolation_steps, rng), path, provenance),
        LATENT: lambda path: _latent_map(model, test, choice["latent_color_attributes"], params.seed, path,
                                         _showing(provenance, choice["latent_color_attributes"])),
        CURVES: lambda path: _training_curves(history, path, provenance),
    }
    if history is None:
        del figures[CURVES]
    with replace_directory(figures_dir) as staging:
        for name, draw in progress(figures.items(), len(figures), "visualize"):
            draw(staging / name)
    return {name: str(Path(figures_dir) / name) for name in figures}


def _showing(provenance: dict[str, str], shown) -> dict[str, str]:
    """The provenance plus the attribute settings a figure shows (chosen from the data
    unless params name them), so a reader of the PNG sees which they are."""
    return {**provenance, SHOWS_KEY: json.dumps(shown)}


def _save(image: Image.Image, path: Path, provenance: dict[str, str]) -> None:
    info = PngInfo()
    for key, value in provenance.items():
        info.add_text(key, value)
    image.save(path, pnginfo=info)


def _encode(model, images: np.ndarray, condition: np.ndarray) -> np.ndarray:
    return np.asarray(model.encoder([images, condition])[0])  # the posterior mean: no noise


def _decode(model, z: np.ndarray, condition: np.ndarray) -> np.ndarray:
    return np.asarray(model.decoder([z.astype(np.float32), condition.astype(np.float32)]))


def _apply(condition: np.ndarray, settings: dict[str, float], names: list[str]) -> np.ndarray:
    changed = condition.copy()
    for name, value in settings.items():
        changed[:, names.index(name)] = value
    return changed


def _reconstructions(model, test: PreparedSplit, count: int) -> Image.Image:
    count = min(count, len(test))
    images, condition = test.unit_images(slice(0, count)), test.attributes[:count].astype(np.float32)
    return image_grid(np.concatenate([images, np.asarray(model([images, condition]))]), columns=count)


def _samples(model, test: PreparedSplit, count: int, rng: np.random.Generator, seed: int) -> Image.Image:
    rows = rng.integers(0, len(test), size=count)
    samples = np.asarray(model.generate(test.attributes[rows].astype(np.float32), seed=seed))
    return image_grid(samples, columns=int(np.ceil(np.sqrt(count))))


def _conditional(model, test: PreparedSplit, rows: dict[str, dict[str, float]], columns: int,
                 rng: np.random.Generator, seed: int) -> Image.Image:
    base = test.attributes[rng.integers(0, len(test), size=columns)].astype(np.float32)
    z = np.asarray(np.random.default_rng(seed).standard_normal((columns, model.latent_dim)), dtype=np.float32)
    decoded = [_decode(model, z, _apply(base, settings, test.attribute_names)) for settings in rows.values()]
    return labelled_grid(decoded, list(rows))


def _sweep(model, test: PreparedSplit, axes: list[str], steps: int, value_range: float) -> Image.Image:
    """The tutorial's grid: one face's latent code decoded under a sweep of two attributes
    (one row when the data have a single attribute)."""
    columns = [test.attribute_names.index(name) for name in axes]
    face, attributes = test.unit_images(slice(0, 1)), test.attributes[:1].astype(np.float32)
    z_mean = _encode(model, face, attributes)
    values = np.linspace(-value_range, value_range, steps, dtype=np.float32)
    rows = steps if len(columns) > 1 else 1
    condition = np.repeat(attributes, steps * rows, axis=0)
    condition[:, columns[0]] = np.tile(values, rows)
    if len(columns) > 1:
        condition[:, columns[1]] = np.repeat(values, steps)
    return image_grid(_decode(model, np.repeat(z_mean, steps * rows, axis=0), condition), columns=steps)


def _edits(model, test: PreparedSplit, rows: dict[str, dict[str, float]], count: int) -> Image.Image:
    count = min(count, len(test))
    images, condition = test.unit_images(slice(0, count)), test.attributes[:count].astype(np.float32)
    z_mean = _encode(model, images, condition)
    edited = [_decode(model, z_mean, _apply(condition, settings, test.attribute_names)) for settings in rows.values()]
    return labelled_grid([images, _decode(model, z_mean, condition), *edited], ["held-out", "reconstructed",
                                                                                 *rows])


def _interpolation(model, test: PreparedSplit, pairs: int, steps: int, rng: np.random.Generator) -> Image.Image:
    pairs = min(pairs, len(test) // 2) or 1
    ends = rng.choice(len(test), size=2 * pairs, replace=len(test) < 2 * pairs)
    images, condition = test.unit_images(ends), test.attributes[ends].astype(np.float32)
    z_mean = _encode(model, images, condition)
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    rows = []
    for pair in range(pairs):
        first, last = 2 * pair, 2 * pair + 1
        z = (1 - weights) * z_mean[first] + weights * z_mean[last]
        c = (1 - weights) * condition[first] + weights * condition[last]
        rows.append(np.concatenate([images[first:first + 1], _decode(model, z, c), images[last:last + 1]]))
    return image_grid(np.concatenate(rows), columns=steps + 2)


def _latent_map(model, test: PreparedSplit, attributes: list[str], seed: int, path: Path,
                provenance: dict[str, str]) -> None:
    plt = _pyplot()
    from sklearn.manifold import TSNE

    means = [_encode(model, test.unit_images(slice(start, start + 256)),
                     test.attributes[start:start + 256].astype(np.float32)) for start in range(0, len(test), 256)]
    latent = np.concatenate(means).astype(np.float64)
    centred = latent - latent.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projections = {"PCA": centred @ components[:2].T}
    if len(test) > 4:  # t-SNE needs a perplexity below the number of points
        perplexity = min(30.0, (len(test) - 1) / 3)
        projections["t-SNE"] = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(latent)
    figure, axes = plt.subplots(len(projections), len(attributes), figsize=(3.2 * len(attributes),
                                3.2 * len(projections)), dpi=100, squeeze=False)
    for row, (method, points) in enumerate(projections.items()):
        for column, name in enumerate(attributes):
            positive = test.attributes[:, test.attribute_names.index(name)] > 0
            ax = axes[row, column]
            for chosen, colour, sign in ((~positive, "tab:blue", "-1"), (positive, "tab:orange", "+1")):
                ax.scatter(points[chosen, 0], points[chosen, 1], s=5, c=colour, alpha=0.7, label=f"{name} {sign}")
            ax.set_title(f"{method}: {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.legend(loc="best", fontsize=7, markerscale=2)
    _savefig(plt, figure, path, provenance)


def _read_history(history_dir: Path) -> dict[str, list[float]]:
    from cvae.model.train import HISTORY_FILE

    path = history_dir / HISTORY_FILE
    if not path.exists():
        raise CvaeError(f"{path}: no training history; run `cvae train` first")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise CvaeError(f"{path}: the training history has no epochs")
    try:
        return {key: [float(row[key]) for row in rows] for key in rows[0]}
    except (TypeError, ValueError) as exc:
        raise CvaeError(f"{path}: expected a number in every column ({exc})") from None


def _training_curves(history: dict[str, list[float]], path: Path, provenance: dict[str, str]) -> None:
    plt = _pyplot()
    panels = [("loss", "objective (nats)"), ("neg_elbo", "negative ELBO (nats)"), ("mse", "MSE per pixel"),
              ("kl", "KL (nats)")]
    panels = [(key, title) for key, title in panels if key in history]
    epochs = history.get("epoch") or list(range(1, len(next(iter(history.values()))) + 1))
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.0), dpi=100, squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        ax.plot(epochs, history[key], marker="o", ms=3, label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", ms=3, label="validation")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    _savefig(plt, figure, path, provenance)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(plt, figure, path: Path, provenance: dict[str, str]) -> None:
    figure.tight_layout()
    # no version stamp: same inputs, same bytes; the provenance goes into the text chunks
    figure.savefig(path, format="png", metadata={"Software": None, **provenance})
    plt.close(figure)
