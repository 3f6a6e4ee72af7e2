from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvae.core.celeba import IMAGE_DIR, read_partition
from cvae.core.config import params_from_dict
from cvae.core.errors import CvaeError
from cvae.core.parallel import bounded_map
from cvae.data.dataset import load_split, tf_dataset, to_unit_range
from cvae.data.prepare import Chunk, _load_chunk, decode_reduction, load_square, prepare
from cvae.model.train import training_batches
from cvae.validation.validate import validate
from tests.conftest import prepare_data, tiny_params_dict

SHARD = 5  # images per shard in these tests: several shards per split, one of them short


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("prepared")
    params = params_from_dict(tiny_params_dict(data={"shard_images": SHARD}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cvae.data.prepare.CHUNK", 2)  # several chunks per shard, one of them short
        prepare_data(out, params, synthetic_root, validate=True)
    return out / "prepared"


def test_splits_follow_the_partition_file(prepared, synthetic_root):
    partition = read_partition(synthetic_root / "list_eval_partition.txt")
    for code, split in enumerate(("train", "val", "test")):
        loaded = load_split(prepared, split)
        assert loaded.image_ids == [i for i, c in partition.items() if c == code]
        assert loaded.images.shape == (len(loaded), 32, 32, 3) and loaded.images.dtype == np.uint8


def test_images_are_packed_into_bounded_shards_in_order(prepared, synthetic_root):
    split = load_split(prepared, "train")
    counts = [len(np.load(path, mmap_mode="r")) for path in split.images.paths]
    assert counts == split.images.counts and max(counts) == SHARD and sum(counts) == len(split)
    assert len(counts) == -(-len(split) // SHARD)
    for row in range(len(split)):  # across chunk and shard boundaries
        expected = load_square(synthetic_root / IMAGE_DIR / split.image_ids[row], crop=148, size=32)
        np.testing.assert_array_equal(split.images[row], expected)
    rows = np.array([len(split) - 1, 0, SHARD + 1])
    np.testing.assert_array_equal(split.images[rows], np.stack([split.images[int(r)] for r in rows]))


def _epoch(split, seed):
    images, attributes = [], []
    for x, c in tf_dataset(split, 4, shuffle=True, seed=seed):
        images.append(x.numpy())
        attributes.append(c.numpy())
    return np.concatenate(images), np.concatenate(attributes)


def test_a_shuffled_epoch_holds_every_image_once_and_repeats_for_a_seed(prepared):
    split = load_split(prepared, "train")
    images, attributes = _epoch(split, seed=1)
    expected = to_unit_range(split.images[:])
    order = [int(np.flatnonzero((expected == image).all(axis=(1, 2, 3)))[0]) for image in images]
    assert sorted(order) == list(range(len(split))) and order != list(range(len(split)))
    np.testing.assert_array_equal(attributes, np.asarray(split.attributes, dtype=np.float32)[order])
    again, _ = _epoch(split, seed=1)
    np.testing.assert_array_equal(images, again)


def test_each_seed_draws_its_own_permutation_across_all_shards(prepared):
    split = load_split(prepared, "train")
    first_batches = set()
    for seed in range(8):
        x, _ = next(iter(tf_dataset(split, 4, shuffle=True, seed=seed)))
        first_batches.add(x.numpy().tobytes())
    assert len(first_batches) == 8
    # a uniform permutation: over seeds, the first image comes from every shard (a stream
    # that reads a couple of shards at a time would start with the first ones it reads)
    expected = split.images[:]
    shards_first, mixed = set(), 0
    for seed in range(40):
        x, _ = next(iter(tf_dataset(split, 4, shuffle=True, seed=seed)))
        rows = [int(np.flatnonzero((expected == np.round(image * 255)).all(axis=(1, 2, 3)))[0])
                for image in x.numpy()]
        shards_first.add(rows[0] // SHARD)
        mixed += len({row // SHARD for row in rows}) > 1
    assert shards_first == set(range(len(split.images.paths)))
    assert mixed >= 30  # by chance, 4 of a uniform permutation's rows share a shard rarely


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def test_reading_a_split_maps_no_shard_into_memory(prepared):
    # a mapped shard's pages count in the resident memory of the process until unmapped:
    # read through maps, a pass over the data would make training as large as the data
    split = load_split(prepared, "train")
    rows = np.array([len(split) - 1, 0, SHARD + 1, SHARD + 2, SHARD])
    np.testing.assert_array_equal(split.images[rows], to_unit_range(split.images[:])[rows] * 255)
    for _ in tf_dataset(split, 4, shuffle=True, seed=0):
        pass
    assert not [path for path in split.images.paths if str(path) in _mapped_files()]


def test_no_input_pipeline_keeps_an_autotuning_thread(prepared):
    """tf.data's autotuner sleeps for up to 60 s between rounds, and dropping an iterator
    waits for its sleep to end: training stalled for 25-65 s after its last epoch. Every
    pipeline a stage iterates (train's epochs joined by flat_map, which drops the
    epochs' own options, and the plain one of evaluate and the classifier) must go
    without it."""
    params = params_from_dict(tiny_params_dict())
    split = load_split(prepared, "train")
    pipelines = {
        "plain": tf_dataset(split, 4, shuffle=False, seed=0),
        "train's epochs": training_batches(split, params.train, seed=0, first_epoch=0),
        "a map on top": tf_dataset(split, 4, shuffle=True, seed=0).map(lambda images, condition: images),
    }
    for name, pipeline in pipelines.items():
        assert pipeline.options().autotune.enabled is False, name


def test_a_truncated_or_foreign_shard_is_named(prepared, tmp_path):
    import shutil

    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    shard = copy / "train" / "images-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CvaeError, match=r"images-00001.npy: truncated or padded .* run `cvae prepare` again"):
        load_split(copy, "train").images[np.arange(SHARD, 2 * SHARD)]
    np.save(shard, np.zeros((SHARD, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(CvaeError, match=r"images-00001.npy: holds uint8 \(5, 16, 16, 3\), expected uint8 "
                                        r"\(5, 32, 32, 3\)"):
        load_split(copy, "train").images[SHARD]
    shard.write_bytes(b"not numpy")
    with pytest.raises(CvaeError, match=r"images-00001.npy: not a .npy shard"):
        load_split(copy, "train").images[SHARD]


def test_a_prepared_batch_is_scaled_exactly_once(prepared):
    images, attributes = next(iter(tf_dataset(load_split(prepared, "train"), 8, shuffle=True, seed=0)))
    images = images.numpy()
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    # the original tutorial divided by 255 twice: its images peaked near 1/255
    assert images.max() > 0.5
    assert set(np.unique(attributes.numpy())) <= {-1.0, 1.0}


def test_scaling_twice_is_refused():
    with pytest.raises(TypeError, match="already scaled"):
        to_unit_range(to_unit_range(np.full((1, 2, 2, 3), 255, dtype=np.uint8)))


def test_bounded_map_keeps_order_and_limits_jobs_in_flight():
    pulled = 0

    def jobs():
        nonlocal pulled
        for value in range(50):
            pulled += 1
            yield value

    with ThreadPoolExecutor(4) as pool:
        results = []
        for result in bounded_map(pool, lambda value: value * 2, jobs(), window=3):
            results.append(result)
            assert pulled - len(results) < 3  # submitted but not yet consumed
    assert results == [2 * v for v in range(50)]


def test_centre_crop_then_resize(tmp_path):
    # a 178x218 image whose centre 148x148 square is white and the rest black
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[35:183, 15:163] = 255
    Image.fromarray(pixels).save(tmp_path / "face.png")
    square = load_square(tmp_path / "face.png", crop=148, size=32)
    assert square.shape == (32, 32, 3) and square.min() == 255


def test_a_crop_larger_than_the_image_falls_back_to_the_largest_square(tmp_path):
    pixels = np.zeros((50, 40), dtype=np.uint8)
    pixels[5:45, :] = 200  # greyscale; the largest centred square is rows 5..44
    Image.fromarray(pixels, mode="L").save(tmp_path / "small.png")
    square = load_square(tmp_path / "small.png", crop=148, size=32)
    assert square.shape == (32, 32, 3) and (square == 200).all()


def test_an_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CvaeError, match="broken.jpg: cannot read image"):
        _load_chunk(Chunk([str(tmp_path / "broken.jpg")], 148, 32, shard=str(tmp_path / "unused.npy"), offset=0))


def test_prepare_refuses_data_that_failed_validation(tmp_path, synthetic_root, tiny_params):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(synthetic_root, raw)
    (raw / IMAGE_DIR / "000001.jpg").unlink()
    assert not validate(tiny_params, raw, tmp_path / "validation").success
    with pytest.raises(CvaeError, match="failed validation"):
        prepare(tiny_params, raw, tmp_path / "validation", tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


@pytest.mark.slow
def test_a_diverging_training_saves_no_model(prepared, tmp_path):
    from cvae.model.train import train

    params = params_from_dict(tiny_params_dict(train={"learning_rate": 1e8, "clip_norm": 1e30}))
    with pytest.raises(CvaeError, match="loss became nan .* nothing was saved"):
        train(params, prepared, tmp_path / "cvae.keras", tmp_path / "train")
    assert not (tmp_path / "cvae.keras").exists() and not (tmp_path / "train").exists()


def test_a_jpeg_smaller_than_the_model_size_is_upscaled(tmp_path):
    path = tmp_path / "small.jpg"
    Image.new("RGB", (20, 24), (200, 10, 10)).save(path)
    assert decode_reduction(path, crop=148, size=32) == 1
    square = load_square(path, crop=148, size=32)
    assert square.shape == (32, 32, 3) and abs(int(square[16, 16, 0]) - 200) < 8
