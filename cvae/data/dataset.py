"""Reading prepared splits: uint8 shards on disk, float32 in [0, 1] for the model.

A split is a list of shard files (`images-NNNNN.npy`, uint8) plus its attributes and ids.
`ShardedImages` reads any rows of a split with positional reads (`os.pread`), never a
memory map: a map's pages count in the process's resident memory as long as they stay
mapped, so reading a whole split through maps would make a process as large as the data.
`tf_dataset` feeds the model from it: every epoch a full permutation of the split's rows
(8 bytes per image), cut into batches, each batch read in one parallel `tf.data` step; so
the memory of training does not grow with the number of images, and every epoch is a
uniform shuffle (no shuffling buffer to bound).

Scaling happens here and only here (`to_unit_range`, `_scale_in_graph`), so the
original tutorial's bug (resizing to [0, 1] and then dividing by 255 again) cannot come
back unnoticed.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae.core.errors import CvaeError

META_FILE = "meta.json"
ATTRIBUTES_FILE = "attributes.npy"
IDS_FILE = "image_ids.txt"
SHARD_NAME = "images-{:05d}.npy"
# what `np.save` writes (2.0 for headers over 64 KiB)
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class ShardedImages:
    """The images of one split as one read-only (n, size, size, 3) uint8 array-like.

    Rows are read with `os.pread` from each shard's data offset (runs of consecutive rows
    in one read), so they cost no memory once the caller drops them; safe from several
    threads at once, as `tf.data` calls it."""

    def __init__(self, paths: list[Path], counts: list[int], size: int):
        self.paths, self.counts = paths, counts
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), size, size, 3)
        self.dtype = np.dtype(np.uint8)
        self.row_bytes = size * size * 3
        self._opened: dict[int, tuple[int, int]] = {}  # shard -> (file descriptor, data offset)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self[np.array([rows])][0]
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows must lie in [0, {len(self)}), got {rows.min()}..{rows.max()}")
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        if not len(rows):
            return out
        flat = out.reshape(len(rows), self.row_bytes)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        # runs of consecutive rows within one shard: one read each
        shards = np.searchsorted(self.starts, ordered, side="right") - 1
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(shards) != 0)) + 1
        for run_start, run_stop in zip([0, *breaks], [*breaks, len(ordered)]):
            shard = int(shards[run_start])
            first, count = int(ordered[run_start] - self.starts[shard]), run_stop - run_start
            block = self._read(shard, first, count)
            flat[order[run_start:run_stop]] = block.reshape(count, self.row_bytes)
        return out

    def _read(self, shard: int, first: int, count: int) -> np.ndarray:
        descriptor, offset = self._open(shard)
        wanted = count * self.row_bytes
        data = os.pread(descriptor, wanted, offset + first * self.row_bytes)
        if len(data) != wanted:  # shrunk since it was opened
            raise CvaeError(f"{self.paths[shard]}: truncated while being read; run `cvae prepare` again")
        return np.frombuffer(data, dtype=np.uint8)

    def _open(self, shard: int) -> tuple[int, int]:
        with self._lock:
            if shard not in self._opened:
                self._opened[shard] = _open_shard(self.paths[shard], (self.counts[shard], *self.shape[1:]))
            return self._opened[shard]

    def __del__(self):
        for descriptor, _ in getattr(self, "_opened", {}).values():
            os.close(descriptor)


def _open_shard(path: Path, shape: tuple[int, ...]) -> tuple[int, int]:
    """An open descriptor of a shard file and the offset of its pixels, after checking its
    .npy header and size against the shape the split's meta.json promises."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version}")
            found_shape, fortran_order, dtype = read_header(handle)
            offset, size = handle.tell(), os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise CvaeError(f"{path}: shard missing; run `cvae prepare` again") from None
    except ValueError as error:
        raise CvaeError(f"{path}: not a .npy shard ({error}); run `cvae prepare` again") from None
    if found_shape != shape or fortran_order or dtype != np.uint8:
        raise CvaeError(f"{path}: holds {dtype} {found_shape}, expected uint8 {shape} in C order;"
                        " run `cvae prepare` again")
    if size != offset + int(np.prod(shape)):
        raise CvaeError(f"{path}: truncated or padded ({size:,} bytes, expected {offset + int(np.prod(shape)):,});"
                        " run `cvae prepare` again")
    return os.open(path, os.O_RDONLY), offset


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


def tf_dataset(split: PreparedSplit, batch_size: int, shuffle: bool, seed):
    """Batches of (images in [0, 1], attributes as float -1/+1).

    Shuffled, an epoch is a uniform permutation of all rows drawn from `seed` (an int or
    a scalar tensor: `train` builds one epoch per seed inside `tf.data`), so it is the
    same for a seed; unshuffled, the rows come in order. Either way a batch is read in
    one step, several in parallel, and only the permutation grows with the split.
    """
    import tensorflow as tf

    if len(split) == 0:
        raise CvaeError("cannot build a dataset from an empty split")
    images, size = split.images, split.images.shape[1]
    attributes = np.array(split.attributes, dtype=np.int8)  # k bytes per image, in memory
    k = attributes.shape[1]

    def read_batch(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return images[rows], attributes[rows].astype(np.float32)

    def batch_of(rows):
        pixels, condition = tf.numpy_function(read_batch, [rows], (tf.uint8, tf.float32), stateful=False)
        return tf.ensure_shape(pixels, (None, size, size, 3)), tf.ensure_shape(condition, (None, k))

    rows = tf.range(len(split), dtype=tf.int64)
    if shuffle:
        # stateless: the permutation is a function of the seed alone, not of how often or
        # where this dataset was built
        rows = tf.random.experimental.stateless_shuffle(rows, seed=tf.stack([tf.cast(seed, tf.int64), 0]))
    batches = (tf.data.Dataset.from_tensor_slices(rows).batch(batch_size)
               .map(batch_of, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .map(_scale_in_graph, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    # inside `train`'s flat_map tf.data cannot count the batches; Keras, not told, ends each
    # pass with a warning that the input "ran out of data"
    batches = batches.apply(tf.data.experimental.assert_cardinality(-(-len(split) // batch_size)))
    return without_autotune_thread(batches.prefetch(PREFETCH_BATCHES))


# Batches read ahead: the input is about 40x faster than training (see the README), so a
# couple in hand keep the model fed.
PREFETCH_BATCHES = 2


def without_autotune_thread(dataset):
    """`dataset` without tf.data's autotuning thread, which the pipeline does not need.

    That thread re-tunes the pipeline at an interval that doubles up to 60 s, and
    dropping the iterator waits for its current interval to run out: training stalled
    for 25-65 s after its last epoch (gdb: the main thread in `~RootDataset::Iterator`,
    the autotuner in `Model::OptimizeLoop`'s timed wait, the CPU idle). Parallel maps
    still run one call per core."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _scale_in_graph(pixels, condition):
    import tensorflow as tf

    if pixels.dtype != tf.uint8:
        raise TypeError(f"expected uint8 pixels to scale, got {pixels.dtype} (already scaled?)")
    return tf.cast(pixels, tf.float32) / 255.0, condition
