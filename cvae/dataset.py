"""Reading prepared splits: uint8 on disk, float32 in [0, 1] for the model.

Scaling happens here and only here (`to_unit_range`), so the original tutorial's bug
(resizing to [0, 1] and then dividing by 255 again) cannot come back unnoticed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae.errors import CvaeError
from cvae.prepare import ATTRIBUTES_FILE, IDS_FILE, IMAGES_FILE, META_FILE


@dataclass(frozen=True)
class PreparedSplit:
    images: np.ndarray  # uint8 (n, size, size, 3), memory-mapped
    attributes: np.ndarray  # int8 (n, k) in {-1, 1}
    image_ids: list[str]
    attribute_names: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)

    def unit_images(self, rows: slice | np.ndarray) -> np.ndarray:
        return to_unit_range(self.images[rows])


def to_unit_range(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels to scale, got {images.dtype} (already scaled?)")
    return images.astype(np.float32) / 255.0


def read_meta(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CvaeError(f"{path}: no prepared data; run `cvae prepare` first") from None


def load_split(prepared_dir: str | Path, split: str) -> PreparedSplit:
    meta = read_meta(prepared_dir)
    split_dir = Path(prepared_dir) / split
    if split not in meta["splits"]:
        raise CvaeError(f"{prepared_dir}: no split {split!r} (have {sorted(meta['splits'])})")
    return PreparedSplit(
        images=np.load(split_dir / IMAGES_FILE, mmap_mode="r"),
        attributes=np.load(split_dir / ATTRIBUTES_FILE),
        image_ids=(split_dir / IDS_FILE).read_text().split(),
        attribute_names=meta["attribute_names"],
    )


def tf_dataset(split: PreparedSplit, batch_size: int, shuffle: bool, seed: int):
    """Batches of (images in [0, 1], attributes as float -1/+1), read from the memory map
    batch by batch so that memory does not grow with the dataset."""
    import tensorflow as tf

    if len(split) == 0:
        raise CvaeError("cannot build a dataset from an empty split")
    size = split.images.shape[1]
    k = split.attributes.shape[1]

    def gather(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(rows)  # sorted reads are sequential on disk
        return split.unit_images(rows), split.attributes[rows].astype(np.float32)

    indices = tf.data.Dataset.range(len(split))
    if shuffle:
        indices = indices.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).map(
        lambda rows: tf.numpy_function(gather, [rows], (tf.float32, tf.float32)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return batches.map(
        lambda x, c: (tf.ensure_shape(x, (None, size, size, 3)), tf.ensure_shape(c, (None, k)))
    ).prefetch(tf.data.AUTOTUNE)
