"""`cvae visualize`: every figure, what each one shows, its provenance, and its errors (on
an untrained tiny model: the wiring is tested, not the model's quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from cvae.cli import main
from cvae.core.config import params_from_dict
from cvae.core.errors import CvaeError
from cvae.data.dataset import load_split
from cvae.figures import CAPTIONS, CONDITIONAL, CURVES, EDITS, INTERPOLATION, LABEL_WIDTH, visualize
from cvae.model.train import HISTORY_FILE
from tests.conftest import prepare_data, tiny_cvae, tiny_params_dict

SIZE, GAP = 16, 2


def make_params(**visualize_params):
    params = tiny_params_dict(data={"image_size": SIZE})
    params["visualize"].update(visualize_params)  # replaced, not merged: the rows are mappings
    return params_from_dict(params)


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_root) -> Path:
    root = tmp_path_factory.mktemp("figures")
    prepare_data(root, make_params(), synthetic_root)  # a passing report stands in for validate
    names = load_split(root / "prepared", "train").attribute_names
    keras.utils.set_random_seed(0)
    tiny_cvae(image_size=SIZE, n_attributes=len(names), attribute_names=names).save(root / "cvae.keras")
    (root / "train").mkdir()
    (root / "train" / HISTORY_FILE).write_text("epoch,kl,loss,val_kl,val_loss\n1,5,9,6,10\n2,4,7,5,8\n")
    return root


def draw(project: Path, out: Path, **visualize_params) -> dict:
    return visualize(make_params(**visualize_params), project / "prepared", project / "cvae.keras", out,
                     project / "train")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def grid_row(image: np.ndarray, row: int, left: int = 0) -> np.ndarray:
    top = GAP + row * (SIZE + GAP)
    return image[top:top + SIZE, left:]


def test_every_figure_is_written_with_its_provenance(project, tmp_path):
    written = draw(project, tmp_path / "figures")
    assert sorted(Path(path).name for path in written.values()) == sorted(CAPTIONS)
    model_md5 = __import__("hashlib").md5((project / "cvae.keras").read_bytes()).hexdigest()
    for name in CAPTIONS:
        with Image.open(tmp_path / "figures" / name) as image:
            assert image.format == "PNG"
            text = dict(image.text)
        assert text["cvae:model_md5"] == model_md5, name
        assert text["cvae:data"] == str(project / "prepared"), name
        assert len(text["cvae:params_sha256"]) == 64, name
        assert text["cvae:model_dvc_lock_md5"].startswith("absent"), name  # no dvc.lock here


def test_conditional_rows_share_their_latent_codes_and_differ_only_by_the_setting(project, tmp_path):
    draw(project, tmp_path / "f", conditional_rows={"a": {"Smiling": 1}, "b": {"Smiling": 1},
                                                    "c": {"Smiling": -1, "Male": 1}})
    image = pixels(tmp_path / "f" / CONDITIONAL)
    first, second, third = (grid_row(image, row, LABEL_WIDTH) for row in range(3))
    np.testing.assert_array_equal(first, second)  # same codes, same setting: the same faces
    assert np.abs(first - third).max() > 0


def test_the_edits_figure_shows_the_held_out_faces_first(project, tmp_path):
    draw(project, tmp_path / "f", reconstructions=3)
    test = load_split(project / "prepared", "test")
    real = np.round(test.unit_images(slice(0, 3)) * 255).astype(np.int16)
    top = grid_row(pixels(tmp_path / "f" / EDITS), 0, LABEL_WIDTH)
    for column in range(3):
        left = GAP + column * (SIZE + GAP)
        np.testing.assert_array_equal(top[:, left:left + SIZE], real[column])


def test_interpolation_rows_start_and_end_at_real_faces(project, tmp_path):
    draw(project, tmp_path / "f", interpolation_pairs=1, interpolation_steps=3)
    image = pixels(tmp_path / "f" / INTERPOLATION)
    assert image.shape[1] == GAP + 5 * (SIZE + GAP)  # the two faces and three steps between
    test = load_split(project / "prepared", "test")
    faces = {np.round(face * 255).astype(np.int16).tobytes() for face in test.unit_images(slice(0, len(test)))}
    row = grid_row(image, 0)
    for column in (0, 4):
        left = GAP + column * (SIZE + GAP)
        assert row[:, left:left + SIZE].tobytes() in faces


@pytest.mark.parametrize("key, value, message", [
    ("conditional_rows", {"glasses": {"Eyeglases": 1}},
     r"visualize.conditional_rows.glasses: 'Eyeglases' is not an attribute of the data; did you mean 'Eyeglasses'"),
    ("edit_rows", {"x": {"Nope": 1}}, r"visualize.edit_rows.x: 'Nope' is not an attribute"),
    ("sweep_attributes", ["Male", "Smilin"], r"visualize.sweep_attributes: 'Smilin'"),
    ("latent_color_attributes", ["Smiling", "Smilin"], r"visualize.latent_color_attributes: 'Smilin'"),
])
def test_an_unknown_attribute_is_named_and_the_old_figures_stay(project, tmp_path, key, value, message):
    draw(project, tmp_path / "f")
    before = {path.name: path.read_bytes() for path in (tmp_path / "f").iterdir()}
    with pytest.raises(CvaeError, match=message):
        draw(project, tmp_path / "f", **{key: value})
    assert {path.name: path.read_bytes() for path in (tmp_path / "f").iterdir()} == before


def test_training_curves_need_a_readable_history(project, tmp_path):
    params = make_params()
    with pytest.raises(CvaeError, match=r"history.csv: no training history"):
        visualize(params, project / "prepared", project / "cvae.keras", tmp_path / "f", tmp_path / "none")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / HISTORY_FILE).write_text("epoch,loss\n1,oops\n")
    with pytest.raises(CvaeError, match=r"history.csv: expected a number"):
        visualize(params, project / "prepared", project / "cvae.keras", tmp_path / "f", bad)
    assert not (tmp_path / "f").exists()
    written = visualize(params, project / "prepared", project / "cvae.keras", tmp_path / "f", None)
    assert CURVES not in {Path(path).name for path in written.values()}


def test_cvae_provenance_prints_the_record_and_refuses_other_files(project, tmp_path, capsys):
    draw(project, tmp_path / "f")
    assert main(["provenance", str(tmp_path / "f" / EDITS)]) == 0
    out = capsys.readouterr().out
    assert f"data: {project / 'prepared'}\n" in out and "git_commit: " in out and "cvae:" not in out
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    (tmp_path / "notes.txt").write_text("hello")
    for path, message in ((tmp_path / "plain.png", "no provenance in its text chunks"),
                          (tmp_path / "notes.txt", "not a readable PNG"),
                          (tmp_path / "missing.png", "no such file")):
        assert main(["provenance", str(path)]) == 1
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate", "visualize"])
def test_a_file_that_is_not_a_model_is_a_clear_error_without_traceback(project, tmp_path, capsys, command):
    (tmp_path / "cvae.keras").write_text("not a model")
    paths = {"evaluate": ["--classifier", str(project / "cvae.keras"), "--metrics", str(tmp_path / "m.json")],
             "visualize": ["--figures", str(tmp_path / "figures"), "--history", str(project / "train")]}[command]
    code = main([command, "--prepared", str(project / "prepared"), "--model", str(tmp_path / "cvae.keras"), *paths])
    err = capsys.readouterr().err
    assert code == 1 and "cvae.keras: not a .keras model file (not a zip archive)" in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "figures").exists()
