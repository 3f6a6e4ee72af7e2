"""A built-in set of labelled shapes in CelebA's layout, drawn with Pillow.

Its labels have nothing to do with faces, to show that the pipeline takes any attribute
names: every one is plainly visible in the picture.

- `Circle`: the shapes are circles (else squares or triangles);
- `Red`: they are red (else blue or green);
- `Large`: they cover about three times the area (squares and triangles are sized to the
  area of the circle they stand for, so size does not tell the kind);
- `Striped`: they are filled with stripes of a lighter or darker shade (else plainly);
- `Dark_Background`: the background is dark grey (else light grey);
- `Two_Shapes`: two shapes of the same kind, colour, size class and fill (else one);
  a little less likely when `Large`, the only correlation between the labels.

Nuisance variation (position, rotation, stripe angle and width, colour and background
tint, exposure, a soft light gradient, blur, noise) keeps the task from being trivial.
The images are 128x128: the `prepare` stage, whose default crop (148) is larger, takes
the whole image and resizes it. Like `cvae.source.synthetic`, each image is drawn from its own
generator seeded by (seed, index) (`cvae.source.drawn`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cvae.core.celeba import Attributes
from cvae.source.drawn import write_drawn_set

SIZE = 128  # width and height

SHAPE_ATTRIBUTES = ("Circle", "Red", "Large", "Striped", "Dark_Background", "Two_Shapes")

_RED = (205, 45, 40)
_OTHER_COLOURS = ((45, 85, 210), (40, 165, 70))  # blue, green
# Radius of the circle of the same area as a shape: small and large, in pixels.
_SMALL_RADIUS, _LARGE_RADIUS = (9.0, 12.0), (16.0, 20.0)
# Distance from the centre to the farthest point, per unit of that radius.
_REACH = {
    "circle": 1.0,
    "square": math.sqrt(math.pi / 2),  # half the diagonal of a square of area pi
    "triangle": math.sqrt(4 * math.pi / (3 * math.sqrt(3))),  # equilateral, area pi
}
_MARGIN = 2.0  # pixels kept free at the image's edge
_GAP = 6.0  # pixels kept free between two shapes; JPEG keeps colour at half resolution and
# would bridge a narrower gap


def sample_attributes(rng: np.random.Generator) -> dict[str, bool]:
    """One image's labels."""
    a = {
        "Circle": bool(rng.random() < 0.4),
        "Red": bool(rng.random() < 0.45),
        "Large": bool(rng.random() < 0.4),
        "Striped": bool(rng.random() < 0.4),
        "Dark_Background": bool(rng.random() < 0.5),
    }
    a["Two_Shapes"] = bool(rng.random() < (0.3 if a["Large"] else 0.45))  # two large ones crowd the frame
    return a


def draw_shapes(a: dict[str, bool], rng: np.random.Generator) -> Image.Image:
    """Draw one SIZE x SIZE RGB image showing the labels of `a`."""
    level = rng.uniform(15, 70) if a["Dark_Background"] else rng.uniform(165, 235)
    background = tuple(int(np.clip(level + rng.integers(-10, 11), 0, 255)) for _ in range(3))
    base = _RED if a["Red"] else _OTHER_COLOURS[rng.integers(len(_OTHER_COLOURS))]
    colour = np.array([np.clip(v + rng.integers(-20, 21), 0, 255) for v in base], dtype=np.float32)
    kind = "circle" if a["Circle"] else ("square", "triangle")[rng.integers(2)]
    low, high = _LARGE_RADIUS if a["Large"] else _SMALL_RADIUS

    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    radii = [rng.uniform(low, high) for _ in range(2 if a["Two_Shapes"] else 1)]
    centres = _place(rng, [r * _REACH[kind] for r in radii])
    for (x, y), radius in zip(centres, radii, strict=True):
        _draw_shape(draw, kind, x, y, radius, rng.uniform(0, 2 * math.pi))

    pixels = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    pixels[...] = colour
    if a["Striped"]:
        # the second shade stands out from the background as much as the colour does
        shade = colour + 0.6 * (255 - colour) if a["Dark_Background"] else colour * 0.35
        angle, period = rng.uniform(0, math.pi), rng.uniform(10, 14)
        ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        along = xs * math.cos(angle) + ys * math.sin(angle) + rng.uniform(0, period)
        pixels[np.floor(along / (period / 2)) % 2 == 1] = shade
    fill = Image.fromarray(pixels.astype(np.uint8))
    image = Image.composite(fill, Image.new("RGB", (SIZE, SIZE), background), mask)
    return _light_and_noise(image, rng)


def _place(rng: np.random.Generator, reaches: list[float]) -> list[tuple[float, float]]:
    """Centres for one or two shapes that keep them inside the image and apart."""
    bounds = [(reach + _MARGIN, SIZE - reach - _MARGIN) for reach in reaches]
    if len(reaches) == 1:
        return [(rng.uniform(*bounds[0]), rng.uniform(*bounds[0]))]
    (low1, high1), (low2, high2) = bounds
    for _ in range(100):  # the second centre at a random angle and distance from the first
        angle = rng.uniform(0, 2 * math.pi)
        distance = sum(reaches) + _GAP + rng.uniform(0, 24)
        dx, dy = distance * math.cos(angle), distance * math.sin(angle)
        x_low, x_high = max(low1, low2 - dx), min(high1, high2 - dx)
        y_low, y_high = max(low1, low2 - dy), min(high1, high2 - dy)
        if x_low <= x_high and y_low <= y_high:
            x, y = rng.uniform(x_low, x_high), rng.uniform(y_low, y_high)
            return [(x, y), (x + dx, y + dy)]
    # Never in practice: corner to corner, as close as allowed (the largest pair fits so).
    step = (sum(reaches) + _GAP) / (2 * math.sqrt(2))
    return [(SIZE / 2 - step, SIZE / 2 - step), (SIZE / 2 + step, SIZE / 2 + step)]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, radius: float, turn: float) -> None:
    reach = radius * _REACH[kind]
    if kind == "circle":
        draw.ellipse((x - reach, y - reach, x + reach, y + reach), fill=255)
        return
    corners = 4 if kind == "square" else 3
    draw.polygon([(x + reach * math.cos(turn + 2 * math.pi * k / corners),
                   y + reach * math.sin(turn + 2 * math.pi * k / corners)) for k in range(corners)], fill=255)


def _light_and_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))), dtype=np.float32)
    # a soft light from a random side, and an overall exposure jitter
    direction = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[-1:1:SIZE * 1j, -1:1:SIZE * 1j].astype(np.float32)
    ramp = (xs * math.cos(direction) + ys * math.sin(direction))[..., None]
    pixels *= rng.uniform(0.9, 1.1) * (1.0 + rng.uniform(0.0, 0.06) * ramp)
    pixels += rng.normal(0.0, rng.uniform(2.0, 5.0), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw(rng: np.random.Generator) -> tuple[Image.Image, dict[str, bool]]:
    """One image and its labels, drawn from `rng`."""
    attributes = sample_attributes(rng)
    return draw_shapes(attributes, rng), attributes


def generate(root: str | Path, num_images: int, seed: int, val_fraction: float,
             test_fraction: float, workers: int | None = None) -> Attributes:
    """Write `num_images` shape images and their attribute and partition files to `root`."""
    return write_drawn_set(root, draw, SHAPE_ATTRIBUTES, num_images, seed, val_fraction, test_fraction,
                           workers, description="shapes")
