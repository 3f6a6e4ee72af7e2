"""Reading prepared splits: uint8 shards on disk, float32 in [0, 1] for the model.

A split is a list of shard files (`images-NNNNN.npy`, uint8) plus its attributes and ids.
`tf_dataset` streams the shards through `tf.data` (shards read in parallel, a bounded
shuffling buffer, prefetch), so memory does not grow with the number of images.
`ShardedImages` gives random access (a few rows for figures) through memory maps.

Scaling happens here and only here (`to_unit_range`, `_scale_in_graph`), so the
original tutorial's bug (resizing to [0, 1] and then dividing by 255 again) cannot come
back unnoticed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae.errors import CvaeError

META_FILE = "meta.json"
ATTRIBUTES_FILE = "attributes.npy"
IDS_FILE = "image_ids.txt"
SHARD_NAME = "images-{:05d}.npy"


class ShardedImages:
    """The images of one split as one read-only (n, size, size, 3) uint8 array-like."""

    def __init__(self, paths: list[Path], counts: list[int], size: int):
        self.paths, self.counts = paths, counts
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), size, size, 3)
        self.dtype = np.dtype(np.uint8)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def shard(self, index: int) -> np.ndarray:
        if index not in self._maps:
            self._maps[index] = np.load(self.paths[index], mmap_mode="r")
        return self._maps[index]

    def __getitem__(self, rows: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self[np.array([rows])][0]
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        shards = np.searchsorted(self.starts, rows, side="right") - 1
        for shard in np.unique(shards):
            chosen = shards == shard
            out[chosen] = self.shard(int(shard))[rows[chosen] - self.starts[shard]]
        return out


@dataclass(frozen=True)
class PreparedSplit:
    images: ShardedImages
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
    if split not in meta["splits"]:
        raise CvaeError(f"{prepared_dir}: no split {split!r} (have {sorted(meta['splits'])})")
    split_dir = Path(prepared_dir) / split
    counts = meta["shards"][split]
    return PreparedSplit(
        images=ShardedImages([split_dir / SHARD_NAME.format(i) for i in range(len(counts))], counts,
                             meta["image_size"]),
        attributes=np.load(split_dir / ATTRIBUTES_FILE, mmap_mode="r"),
        image_ids=(split_dir / IDS_FILE).read_text().split(),
        attribute_names=meta["attribute_names"],
    )


def tf_dataset(split: PreparedSplit, batch_size: int, shuffle: bool, seed: int, shuffle_buffer: int = 8192):
    """Batches of (images in [0, 1], attributes as float -1/+1), streamed shard by shard.

    Shuffling is two-level, as for any sharded dataset: the shard order is reshuffled
    every epoch, two shards are interleaved, and a buffer of `shuffle_buffer` images
    mixes them; all of it seeded, so an epoch's order is the same for a seed.
    """
    import tensorflow as tf

    if len(split) == 0:
        raise CvaeError("cannot build a dataset from an empty split")
    images, size, k = split.images, split.images.shape[1], split.attributes.shape[1]

    def read_shard(index: np.int64) -> tuple[np.ndarray, np.ndarray]:
        start, stop = images.starts[index], images.starts[index + 1]
        # a plain read, not the memory map: the pages are released with the array
        return np.load(images.paths[index]), np.asarray(split.attributes[start:stop], dtype=np.float32)

    def shard_dataset(index):
        pixels, condition = tf.numpy_function(read_shard, [index], (tf.uint8, tf.float32))
        return tf.data.Dataset.from_tensor_slices(
            (tf.ensure_shape(pixels, (None, size, size, 3)), tf.ensure_shape(condition, (None, k)))
        )

    shards = tf.data.Dataset.range(len(images.paths))
    if shuffle:
        shards = shards.shuffle(len(images.paths), seed=seed, reshuffle_each_iteration=True)
    examples = shards.interleave(shard_dataset, cycle_length=2, num_parallel_calls=tf.data.AUTOTUNE,
                                 deterministic=True)
    if shuffle:
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    batches = examples.batch(batch_size).map(_scale_in_graph, num_parallel_calls=tf.data.AUTOTUNE,
                                             deterministic=True)
    # tf.data cannot count what the interleave yields; Keras, not told, ends each pass
    # with a warning that the input "ran out of data"
    batches = batches.apply(tf.data.experimental.assert_cardinality(-(-len(split) // batch_size)))
    return batches.prefetch(tf.data.AUTOTUNE)


def _scale_in_graph(pixels, condition):
    import tensorflow as tf

    if pixels.dtype != tf.uint8:
        raise TypeError(f"expected uint8 pixels to scale, got {pixels.dtype} (already scaled?)")
    return tf.cast(pixels, tf.float32) / 255.0, condition
