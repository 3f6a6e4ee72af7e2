"""The `prepare` stage: validated raw images -> centre-cropped, resized uint8 arrays.

Images are decoded, cropped and resized in parallel worker processes and written straight
into a memory-mapped `.npy` per split, so memory stays bounded by the chunk size, not the
dataset. Pixels stay uint8 on disk; `cvae.dataset` scales them to [0, 1] exactly once.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cvae.atomic import replace_directory
from cvae.celeba import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    PARTITION_FILE,
    SPLITS,
    deterministic_partition,
    load_attributes,
    read_partition,
)
from cvae.config import Params
from cvae.errors import CvaeError
from cvae.progress import progress
from cvae.validation import read_summary

META_FILE = "meta.json"
IMAGES_FILE = "images.npy"
ATTRIBUTES_FILE = "attributes.npy"
IDS_FILE = "image_ids.txt"
CHUNK = 256  # images per worker task: large enough to amortise the hand-off


def load_square(path: str | Path, crop: int, size: int) -> np.ndarray:
    """Decode one image, take the centre `crop` square (or the largest square that fits,
    when the image is smaller), and resize it to `size`; returns uint8 (size, size, 3)."""
    with Image.open(path) as image:
        width, height = image.size
        side = min(crop, width, height)
        # Let libjpeg decode at a reduced scale when that still leaves >= `size` pixels
        # across the crop: much faster, and no loss at the final size.
        scale = image.draft("RGB", (width * size // side, height * size // side))
        if scale is not None:
            factor = image.size[0] / width
            width, height = image.size
            side = max(size, round(side * factor))
        left, top = (width - side) // 2, (height - side) // 2
        # crop first: resizing with a box would let the filter blend in pixels outside it
        square = image.convert("RGB").crop((left, top, left + side, top + side))
        return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


def _load_chunk(job: tuple[list[str], int, int]) -> np.ndarray:
    paths, crop, size = job
    try:
        return np.stack([load_square(path, crop, size) for path in paths])
    except (OSError, ValueError) as exc:  # name the file: validation should have caught it
        raise CvaeError(f"prepare: cannot read image: {exc}") from None


def prepare(params: Params, raw_dir: str | Path, validation_dir: str | Path, out_dir: str | Path) -> dict:
    raw_dir = Path(raw_dir)
    report = read_summary(validation_dir)
    if not report["success"]:
        raise CvaeError(
            f"prepare: the validation report in {validation_dir} says the data failed validation;"
            " fix the data and run `cvae validate` again"
        )
    attributes = load_attributes(raw_dir / ATTRIBUTE_FILE)
    partition_path = raw_dir / PARTITION_FILE
    partition = (
        read_partition(partition_path)
        if partition_path.exists()
        else deterministic_partition(attributes.image_ids, params.seed, params.data.val_fraction,
                                     params.data.test_fraction)
    )
    missing = [image_id for image_id in attributes.image_ids if image_id not in partition]
    if missing:
        raise CvaeError(f"{partition_path}: no split for {len(missing)} image(s), e.g. {missing[:3]}")
    codes = np.array([partition[image_id] for image_id in attributes.image_ids])
    size, crop = params.data.image_size, params.data.crop

    counts = {}
    with replace_directory(out_dir) as staging, ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for code, split in enumerate(SPLITS):
            subset = attributes.subset(np.flatnonzero(codes == code))
            counts[split] = len(subset.image_ids)
            split_dir = staging / split
            split_dir.mkdir()
            np.save(split_dir / ATTRIBUTES_FILE, subset.values)
            (split_dir / IDS_FILE).write_text("".join(f"{i}\n" for i in subset.image_ids))
            images = np.lib.format.open_memmap(
                split_dir / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(counts[split], size, size, 3)
            )
            paths = [str(raw_dir / IMAGE_DIR / image_id) for image_id in subset.image_ids]
            jobs = [(paths[i:i + CHUNK], crop, size) for i in range(0, len(paths), CHUNK)]
            done = 0
            for batch in progress(pool.map(_load_chunk, jobs), total=len(jobs), desc=f"prepare {split}"):
                images[done:done + len(batch)] = batch
                done += len(batch)
            images.flush()
            del images
        meta = {"attribute_names": attributes.names, "image_size": size, "crop": crop, "splits": counts}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
