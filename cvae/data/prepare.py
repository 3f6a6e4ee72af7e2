"""The `prepare` stage: validated raw images -> centre-cropped, resized uint8 shards.

The main process creates each split's shard files (`data.shard_images` images each,
empty) and hands out chunks of them; worker processes, one per core, decode (OpenCV,
with libjpeg's reduced-scale decoding where the final size allows it), crop and resize
a chunk and write it straight into its rows of the shard. A few chunks are in flight at a
time, so memory is bounded by the chunk size, never by the dataset: a 200,000-image set
streams through the same few megabytes. Pixels stay uint8 on disk; `cvae.data.dataset`
scales them to [0, 1] exactly once.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cvae.core.atomic import replace_directory
from cvae.core.celeba import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    PARTITION_FILE,
    SPLITS,
    deterministic_partition,
    load_attributes,
    read_partition,
)
from cvae.core.config import Params
from cvae.core.errors import CvaeError
from cvae.core.parallel import bounded_map, usable_cores
from cvae.core.progress import progress
from cvae.data.dataset import ATTRIBUTES_FILE, IDS_FILE, META_FILE, SHARD_NAME
from cvae.validation.validate import read_summary

CHUNK = 128  # images per worker task: large enough to amortise the hand-off
# OpenCV's imread flags for libjpeg's reduced-scale decoding, by reduction factor
REDUCED_DECODE = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_reduction(path: str | Path, crop: int, size: int) -> int:
    """The largest factor by which libjpeg may shrink this JPEG while decoding (DCT
    scaling, much faster than a full decode) that still leaves `size` pixels across the
    crop; 1 for other formats, which gain nothing from it. Reads the header only."""
    with Image.open(path) as image:
        if image.format != "JPEG":
            return 1
        side = min(crop, *image.size)
    # an image smaller than `size` is upscaled from a full decode
    return max((factor for factor in REDUCED_DECODE if side // factor >= size), default=1)


def load_square(path: str | Path, crop: int, size: int, reduction: int | None = None) -> np.ndarray:
    """Decode one image, take the centre `crop` square (or the largest square that fits,
    when the image is smaller), and resize it to `size`; returns uint8 RGB (size, size, 3).

    `reduction` is the decode scale (`decode_reduction`); `prepare` passes the one of a
    chunk's first image, since a dataset's images mostly share a size, and an image that
    it does not fit is decoded again at full size."""
    if reduction is None:
        reduction = decode_reduction(path, crop, size)
    pixels = _decode_bgr(path, reduction)
    height, width = pixels.shape[:2]
    side = min(crop // reduction, width, height)
    if side < size and reduction > 1:
        return load_square(path, crop, size, reduction=1)
    top, left = (height - side) // 2, (width - side) // 2
    # crop first: resizing a larger region would let the filter blend in pixels outside it;
    # INTER_AREA averages what each output pixel covers, the right filter to shrink with
    square = cv2.resize(pixels[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(square, cv2.COLOR_BGR2RGB)


def _decode_bgr(path: str | Path, reduction: int) -> np.ndarray:
    """3-channel BGR pixels (greyscale, palette, alpha and CMYK converted), `reduction`
    times smaller than the image."""
    pixels = cv2.imread(str(path), REDUCED_DECODE[reduction])
    if pixels is None:  # a format OpenCV lacks; validation decoded it with Pillow, so Pillow can
        with Image.open(path) as image:
            pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
        if reduction > 1:
            height, width = pixels.shape[:2]
            pixels = cv2.resize(pixels, (width // reduction, height // reduction), interpolation=cv2.INTER_AREA)
    return pixels


@dataclass(frozen=True)
class Chunk:
    """A worker's job: decode `paths` and write them at byte `offset` of the shard file."""

    paths: list[str]
    crop: int
    size: int
    shard: str
    offset: int


def _load_chunk(chunk: Chunk) -> int:
    """Decode a chunk and write it straight into its rows of the shard file: no pixels
    travel back to the main process, which would only copy them again."""
    cv2.setNumThreads(1)  # one worker process per core already: no threads on top
    pixels = np.empty((len(chunk.paths), chunk.size, chunk.size, 3), dtype=np.uint8)
    reduction = None
    for row, path in enumerate(chunk.paths):
        try:
            reduction = reduction or decode_reduction(path, chunk.crop, chunk.size)
            pixels[row] = load_square(path, chunk.crop, chunk.size, reduction)
        except (OSError, ValueError, cv2.error) as exc:  # name the file: validation should have caught it
            raise CvaeError(f"{path}: cannot read image: {exc}") from None
    with open(chunk.shard, "r+b") as shard:  # a buffered write: all bytes or an error, never a short write
        shard.seek(chunk.offset)
        shard.write(pixels.data)
    return len(pixels)


def _create_shards(split_dir: Path, images: int, shard_images: int, size: int) -> list[tuple[int, int]]:
    """Create a split's shard files (`images-NNNNN.npy`), empty at full size with their
    header written, for the workers to fill; returns (images, data offset) for each."""
    shards = []
    for index, start in enumerate(range(0, images, shard_images)):
        count = min(shard_images, images - start)
        empty = np.lib.format.open_memmap(split_dir / SHARD_NAME.format(index), mode="w+", dtype=np.uint8,
                                          shape=(count, size, size, 3))
        shards.append((count, empty.offset))
        del empty  # the file now has its header and full size (sparse)
    return shards


def _chunks(split_dir: Path, image_ids: list[str], image_dir: str, shards: list[tuple[int, int]], crop: int,
            size: int) -> Iterator[Chunk]:
    """The chunks that fill a split's shards, made as they are needed (paths for 200,000
    images would be tens of megabytes); a chunk never straddles two shards."""
    shard_start = 0
    for index, (count, data_offset) in enumerate(shards):
        shard = str(split_dir / SHARD_NAME.format(index))
        for first in range(0, count, CHUNK):
            ids = image_ids[shard_start + first:shard_start + min(first + CHUNK, count)]
            paths = [os.path.join(image_dir, image_id) for image_id in ids]
            yield Chunk(paths, crop, size, shard, data_offset + first * size * size * 3)
        shard_start += count


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
    workers = usable_cores()

    with replace_directory(out_dir) as staging, ProcessPoolExecutor(workers) as pool:
        shards, chunk_streams = {}, []
        for split, subset in subsets.items():
            split_dir = staging / split
            split_dir.mkdir()
            np.save(split_dir / ATTRIBUTES_FILE, subset.values)
            (split_dir / IDS_FILE).write_text("".join(f"{i}\n" for i in subset.image_ids))
            shards[split] = _create_shards(split_dir, len(subset.image_ids), params.data.shard_images, size)
            chunk_streams.append(
                _chunks(split_dir, subset.image_ids, str(raw_dir / IMAGE_DIR), shards[split], crop, size)
            )
        total = sum(-(-count // CHUNK) for split_shards in shards.values() for count, _ in split_shards)
        # one stream over all splits: the workers never wait between them
        done = bounded_map(pool, _load_chunk, itertools.chain(*chunk_streams), window=2 * workers)
        for _ in progress(done, total=total, desc="prepare"):
            pass
        meta = {
            "attribute_names": attributes.names, "image_size": size, "crop": crop,
            "splits": {split: len(subset.image_ids) for split, subset in subsets.items()},
            "shards": {split: [count for count, _ in split_shards] for split, split_shards in shards.items()},
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
