"""The `prepare` stage: validated raw images -> centre-cropped, resized uint8 shards.

Images are decoded, cropped and resized in parallel worker processes, a chunk at a time,
with only a few chunks in flight; the main process packs them into shard files of
`data.shard_images` images. Memory is bounded by the chunk and shard sizes, never by the
dataset: a 200,000-image set streams through the same few megabytes. Pixels stay uint8
on disk; `cvae.dataset` scales them to [0, 1] exactly once.
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
from cvae.dataset import ATTRIBUTES_FILE, IDS_FILE, META_FILE, SHARD_NAME
from cvae.errors import CvaeError
from cvae.parallel import bounded_map, usable_cores
from cvae.progress import progress
from cvae.validation import read_summary

CHUNK = 128  # images per worker task: large enough to amortise the hand-off


def load_square(path: str | Path, crop: int, size: int) -> np.ndarray:
    """Decode one image, take the centre `crop` square (or the largest square that fits,
    when the image is smaller), and resize it to `size`; returns uint8 (size, size, 3)."""
    with Image.open(path) as image:
        width, height = image.size
        side = min(crop, width, height)
        # Let libjpeg decode at a reduced scale when that still leaves >= `size` pixels
        # across the crop: much faster, and no loss at the final size.
        if image.draft("RGB", (width * size // side, height * size // side)) is not None:
            factor = image.size[0] / width
            width, height = image.size
            side = max(size, round(side * factor))
        left, top = (width - side) // 2, (height - side) // 2
        if image.mode != "RGB":  # greyscale, palette, RGBA, CMYK; converting RGB would only copy
            image = image.convert("RGB")
        # crop first: resizing with a box would let the filter blend in pixels outside it
        square = image.crop((left, top, left + side, top + side))
        return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


def _load_chunk(job: tuple[list[str], int, int]) -> np.ndarray:
    paths, crop, size = job
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for row, path in enumerate(paths):
        try:
            out[row] = load_square(path, crop, size)
        except (OSError, ValueError) as exc:  # name the file: validation should have caught it
            raise CvaeError(f"{path}: cannot read image: {exc}") from None
    return out


class ShardWriter:
    """Packs image chunks into `images-NNNNN.npy` files of `shard_images` images each."""

    def __init__(self, directory: Path, shard_images: int, size: int):
        self.directory = directory
        self.buffer = np.empty((shard_images, size, size, 3), dtype=np.uint8)
        self.filled = 0
        self.counts: list[int] = []

    def add(self, images: np.ndarray) -> None:
        while len(images):
            taken = min(len(images), len(self.buffer) - self.filled)
            self.buffer[self.filled:self.filled + taken] = images[:taken]
            self.filled += taken
            images = images[taken:]
            if self.filled == len(self.buffer):
                self._flush()

    def close(self) -> list[int]:
        if self.filled:
            self._flush()
        return self.counts

    def _flush(self) -> None:
        np.save(self.directory / SHARD_NAME.format(len(self.counts)), self.buffer[:self.filled])
        self.counts.append(self.filled)
        self.filled = 0


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
    subsets = {split: attributes.subset(np.flatnonzero(codes == code)) for code, split in enumerate(SPLITS)}
    # One stream of jobs over all splits, so that the workers never wait between splits.
    job_splits = [split for split, subset in subsets.items() for _ in range(0, len(subset.image_ids), CHUNK)]
    image_dir = str(raw_dir / IMAGE_DIR)
    jobs = (
        ([os.path.join(image_dir, image_id) for image_id in subset.image_ids[start:start + CHUNK]], crop, size)
        for subset in subsets.values() for start in range(0, len(subset.image_ids), CHUNK)
    )
    workers = usable_cores()

    with replace_directory(out_dir) as staging, ProcessPoolExecutor(workers) as pool:
        writers = {}
        for split, subset in subsets.items():
            split_dir = staging / split
            split_dir.mkdir()
            np.save(split_dir / ATTRIBUTES_FILE, subset.values)
            (split_dir / IDS_FILE).write_text("".join(f"{i}\n" for i in subset.image_ids))
            writers[split] = ShardWriter(split_dir, params.data.shard_images, size)
        chunks = bounded_map(pool, _load_chunk, jobs, window=2 * workers)
        for split, chunk in progress(zip(job_splits, chunks, strict=True), total=len(job_splits), desc="prepare"):
            writers[split].add(chunk)
        meta = {
            "attribute_names": attributes.names, "image_size": size, "crop": crop,
            "splits": {split: len(subset.image_ids) for split, subset in subsets.items()},
            "shards": {split: writer.close() for split, writer in writers.items()},
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
