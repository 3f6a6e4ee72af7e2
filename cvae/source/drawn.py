"""Write a built-in drawn image set in CelebA layout: images, attribute and partition files.

The sets (`cvae.source.synthetic`, `cvae.source.shapes`) each give one function that draws an image and
its labels from a random generator; this module runs it for every index, in a process pool
when that pays, and writes the files. Every image is drawn from its own generator seeded by
(seed, index), so a set is the same for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cvae.core.celeba import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    PARTITION_FILE,
    Attributes,
    deterministic_partition,
    write_attributes,
    write_partition,
)
from cvae.core.progress import progress

# Draws one image and its labels (name -> present) from the generator. It runs in worker
# processes, so it must be a module-level function (picklable by name).
Draw = Callable[[np.random.Generator], tuple[Image.Image, Mapping[str, bool]]]

JPEG_QUALITY = 92
POOL_CHUNK = 64  # images per task sent to a worker; smaller sets are drawn in process


def image_id(index: int) -> str:
    return f"{index + 1:06d}.jpg"  # CelebA's own naming: 000001.jpg, 000002.jpg, ...


def _draw_and_save(job: tuple[Draw, tuple[str, ...], int, int, str]) -> list[int]:
    draw, names, seed, index, image_dir = job
    image, labels = draw(np.random.default_rng([seed, index]))
    image.save(Path(image_dir) / image_id(index), quality=JPEG_QUALITY)
    return [1 if labels[name] else -1 for name in names]


def write_drawn_set(root: str | Path, draw: Draw, names: Sequence[str], num_images: int, seed: int,
                    val_fraction: float, test_fraction: float, workers: int | None = None,
                    description: str = "drawn images") -> Attributes:
    """Draw `num_images` images with `draw` into `root` in CelebA layout; `names` are the
    attribute file's columns, in order. `description` names the set in the progress line."""
    root = Path(root)
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    names = tuple(names)
    jobs = [(draw, names, seed, index, str(image_dir)) for index in range(num_images)]
    label = f"download: {description}"
    workers = workers or os.cpu_count() or 1
    if workers > 1 and num_images > POOL_CHUNK:
        with ProcessPoolExecutor(workers) as pool:
            drawn = pool.map(_draw_and_save, jobs, chunksize=POOL_CHUNK)
            rows = list(progress(drawn, num_images, label))
    else:
        rows = [_draw_and_save(job) for job in progress(jobs, num_images, label)]
    ids = [image_id(index) for index in range(num_images)]
    attributes = Attributes(ids, list(names), np.asarray(rows, dtype=np.int8).reshape(num_images, len(names)))
    write_attributes(root / ATTRIBUTE_FILE, attributes)
    write_partition(root / PARTITION_FILE, deterministic_partition(ids, seed, val_fraction, test_fraction))
    return attributes
