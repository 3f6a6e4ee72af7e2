import numpy as np
import pytest
from PIL import Image

from cvae.celeba import IMAGE_DIR
from cvae.dataset import load_split, tf_dataset, to_unit_range
from cvae.errors import CvaeError
from cvae.prepare import load_square, prepare
from cvae.validation import validate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_root):
    from cvae.config import params_from_dict
    from tests.conftest import tiny_params_dict

    out = tmp_path_factory.mktemp("prepared")
    validate(synthetic_root, out / "validation")
    params = params_from_dict(tiny_params_dict())
    prepare(params, synthetic_root, out / "validation", out / "prepared")
    return out / "prepared"


def test_splits_follow_the_partition_file(prepared, synthetic_root):
    from cvae.celeba import read_partition

    partition = read_partition(synthetic_root / "list_eval_partition.txt")
    for code, split in enumerate(("train", "val", "test")):
        loaded = load_split(prepared, split)
        assert loaded.image_ids == [i for i, c in partition.items() if c == code]
        assert loaded.images.shape == (len(loaded), 32, 32, 3) and loaded.images.dtype == np.uint8


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


def test_centre_crop_then_resize(tmp_path):
    # a 178x218 image whose centre 148x148 square is white and the rest black
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[35:183, 15:163] = 255
    Image.fromarray(pixels).save(tmp_path / "face.png")
    square = load_square(tmp_path / "face.png", crop=148, size=32)
    assert square.shape == (32, 32, 3) and square.min() == 255


def test_a_crop_larger_than_the_image_falls_back_to_the_largest_square(tmp_path):
    Image.new("L", (40, 50), 128).save(tmp_path / "small.jpg")  # greyscale, smaller than the crop
    square = load_square(tmp_path / "small.jpg", crop=148, size=32)
    assert square.shape == (32, 32, 3)


def test_prepare_refuses_data_that_failed_validation(tmp_path, synthetic_root, tiny_params):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(synthetic_root, raw)
    (raw / IMAGE_DIR / "000001.jpg").unlink()
    assert not validate(raw, tmp_path / "validation").success
    with pytest.raises(CvaeError, match="failed validation"):
        prepare(tiny_params, raw, tmp_path / "validation", tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()
