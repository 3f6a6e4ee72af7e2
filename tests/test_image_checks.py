import pytest
from PIL import Image

from cvae.core.celeba import IMAGE_DIR
from cvae.validation.images import ImageCheck, check_image, check_images


@pytest.fixture
def face(synthetic_root):
    return (synthetic_root / IMAGE_DIR / "000001.jpg").read_bytes()


@pytest.mark.parametrize("kept", [0.5, 0.9, -2])  # half, most, all but the end-of-image marker
def test_draft_decoding_still_catches_a_truncated_jpeg(face, tmp_path, kept):
    path = tmp_path / "cut.jpg"
    path.write_bytes(face[: int(len(face) * kept)] if kept > 0 else face[:kept])
    assert check_image(path).error.startswith("OSError: image file is truncated")


def test_sizes_are_the_stored_ones_not_the_draft_ones(face, tmp_path):
    (tmp_path / "face.jpg").write_bytes(face)
    assert check_image(tmp_path / "face.jpg") == ImageCheck(None, 178, 218)


def test_worker_processes_give_the_same_checks_in_order(face, tmp_path):
    Image.new("L", (70, 90)).save(tmp_path / "grey.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.jpg")
    png = (tmp_path / "grey.png").read_bytes()
    files = {
        "face.jpg": face,
        "half.jpg": face[: len(face) // 2],
        "garbage.jpg": b"\xff\xd8 not really a JPEG" * 10,
        "grey.png": png,
        "half.png": png[: len(png) // 2],
        "dot.jpg": (tmp_path / "dot.jpg").read_bytes(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [tmp_path / name for name in files]
    checks = check_images(paths, workers=2, chunk=2)
    assert checks == [check_image(path) for path in paths]
    assert [(c.width, c.height) for c in checks] == [(178, 218), (None, None), (None, None), (70, 90),
                                                     (None, None), (1, 1)]
    assert [c.error is None for c in checks] == [True, False, False, True, False, True]
