"""`cvae generate` and `cvae edit` through the CLI, on tiny untrained models (no training:
what is tested is the wiring, the attribute handling, the provenance and the errors)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from cvae.cli import main
from cvae.core.celeba import Attributes, write_attributes
from cvae.data.dataset import to_unit_range
from cvae.data.prepare import load_square
from cvae.quality.classifier import build_classifier, load_classifier, predict_attributes
from tests.conftest import BIN, tiny_cvae

NAMES = ["Bald", "Blond_Hair", "Smiling", "Eyeglasses"]
# The training rows the model carries. Bald faces here never have blond hair or glasses,
# so a face generated with Bald=1 must record Blond_Hair=-1 and Eyeglasses=-1.
TABLE = np.array([
    [1, -1, 1, -1],
    [1, -1, -1, -1],
    [-1, 1, 1, -1],
    [-1, 1, -1, 1],
    [-1, -1, 1, 1],
    [-1, -1, -1, -1],
], dtype=np.float32)
FACE_ROW = [-1.0, 1.0, -1.0, 1.0]  # face.jpg's attributes in the attribute file
CROP = 24  # data.crop of the test's params file; the face image is 40x30


def named_cvae(rows: np.ndarray | None):
    return tiny_cvae(n_attributes=len(NAMES), attribute_names=NAMES, attribute_rows=rows)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("faces")
    keras.utils.set_random_seed(0)
    f = SimpleNamespace(
        model=root / "cvae.keras", bare_model=root / "bare.keras", classifier=root / "classifier.keras",
        foreign_classifier=root / "foreign.keras", sequential=root / "sequential.keras",
        corrupt=root / "corrupt.keras", face=root / "face.jpg", unlisted=root / "unlisted.jpg",
        truncated=root / "truncated.jpg", not_image=root / "notes.jpg",
        attr_file=root / "list_attr_celeba.txt", params=root / "params.yaml", missing=root / "missing",
    )
    named_cvae(TABLE).save(f.model)
    named_cvae(None).save(f.bare_model)
    build_classifier(16, NAMES, [8]).save(f.classifier)
    build_classifier(16, ["Male", "Smiling"], [8]).save(f.foreign_classifier)
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(f.sequential)
    f.corrupt.write_bytes(b"not a zip archive")
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(f.face, quality=95)
    f.unlisted.write_bytes(f.face.read_bytes())
    f.truncated.write_bytes(f.face.read_bytes()[: f.face.stat().st_size // 2])
    f.not_image.write_text("a shopping list, not a face\n")
    write_attributes(f.attr_file, Attributes(["other.jpg", "face.jpg"], NAMES,
                                             np.array([[1, -1, 1, -1], FACE_ROW], dtype=np.int8)))
    f.params.write_text(f"data:\n  crop: {CROP}\n")
    return f


def cvae(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in this process: exit code, stdout, stderr."""
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def chunks(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)


def recorded(path: Path, key: str = "cvae:attributes") -> dict[str, float]:
    return json.loads(chunks(path)[key])


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image, dtype=np.int16)


def generate(capsys, files, out: Path, *args) -> tuple[list[Path], str]:
    code, stdout, stderr = cvae(capsys, "generate", *args, "--out", out, "--model", files.model)
    assert code == 0, stderr
    return sorted(out.glob("face-*.png")), stdout


def test_generate_writes_n_faces_and_a_grid_recording_how_they_were_made(files, capsys, tmp_path):
    out = tmp_path / "faces"
    faces, stdout = generate(capsys, files, out, "--attr", "Smiling=1", "--attr", "Eyeglasses=-0.5",
                             "-n", 5, "--seed", 3)
    assert sorted(path.name for path in out.iterdir()) == [f"face-{i}.png" for i in range(5)] + ["grid.png"]
    for face in faces:
        attributes = recorded(face)
        assert list(attributes) == NAMES
        assert (attributes["Smiling"], attributes["Eyeglasses"]) == (1.0, -0.5)  # extrapolation is allowed
        assert (chunks(face)["cvae:model"], chunks(face)["cvae:seed"]) == (str(files.model), "3")
        assert pixels(face).shape == (16, 16, 3)
    grid = chunks(out / "grid.png")
    assert json.loads(grid["cvae:settings"]) == {"Smiling": 1.0, "Eyeglasses": -0.5}
    assert (grid["cvae:count"], grid["cvae:seed"]) == ("5", "3")
    assert "wrote 5 faces and grid.png" in stdout and "seed 3" in stdout


def test_unset_attributes_are_drawn_from_training_rows_that_agree_with_the_settings(files, capsys, tmp_path):
    bald, _ = generate(capsys, files, tmp_path / "bald", "--attr", "Bald=1", "-n", 8, "--seed", 0)
    assert {tuple(recorded(face).values()) for face in bald} <= {tuple(row) for row in TABLE if row[0] == 1}
    assert all(recorded(face)["Blond_Hair"] == -1.0 for face in bald)  # no hair colour on a bald face

    haired, stdout = generate(capsys, files, tmp_path / "haired", "--attr", "Bald=-1", "-n", 12, "--seed", 0)
    drawn = {tuple(recorded(face).values()) for face in haired}
    assert drawn <= {tuple(row) for row in TABLE if row[0] == -1} and len(drawn) > 1
    assert "from the 4 of 6 training rows that agree" in stdout


def test_settings_no_row_agrees_with_are_written_over_rows_drawn_from_all(files, capsys, tmp_path):
    faces, stdout = generate(capsys, files, tmp_path / "faces", "--attr", "Bald=1", "--attr", "Blond_Hair=1",
                             "-n", 8, "--seed", 0)
    for face in faces:
        bald, blond, *unset = recorded(face).values()
        assert (bald, blond) == (1.0, 1.0)
        assert tuple(unset) in {tuple(row[2:]) for row in TABLE}
    assert "no training row agrees with the settings" in stdout


def test_the_same_seed_gives_the_same_files_and_an_unseeded_run_records_its_seed(files, capsys, tmp_path):
    def contents(out: Path) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in out.iterdir()}

    first, _ = generate(capsys, files, tmp_path / "first", "--attr", "Smiling=1", "-n", 4, "--seed", 5)
    generate(capsys, files, tmp_path / "again", "--attr", "Smiling=1", "-n", 4, "--seed", 5)
    generate(capsys, files, tmp_path / "other", "--attr", "Smiling=1", "-n", 4, "--seed", 6)
    assert contents(tmp_path / "first") == contents(tmp_path / "again")
    assert contents(tmp_path / "first")["face-0.png"] != contents(tmp_path / "other")["face-0.png"]

    unseeded, _ = generate(capsys, files, tmp_path / "unseeded", "--attr", "Smiling=1", "-n", 4)
    seed = chunks(unseeded[0])["cvae:seed"]
    generate(capsys, files, tmp_path / "replayed", "--attr", "Smiling=1", "-n", 4, "--seed", seed)
    assert contents(tmp_path / "unseeded") == contents(tmp_path / "replayed")


def test_a_model_without_training_rows_needs_every_attribute_set(files, capsys, tmp_path):
    code, _, stderr = cvae(capsys, "generate", "--attr", "Smiling=1", "--out", tmp_path / "some",
                           "--model", files.bare_model)
    assert code == 1 and "set each of them with --attr (Bald, Blond_Hair, Eyeglasses)" in stderr
    every = ["--attr", "Bald=1", "--attr", "Blond_Hair=-1", "--attr", "Smiling=0.5", "--attr", "Eyeglasses=1"]
    code, _, stderr = cvae(capsys, "generate", *every, "-n", 2, "--out", tmp_path / "all",
                           "--model", files.bare_model)
    assert code == 0, stderr
    assert recorded(tmp_path / "all" / "face-1.png") == {"Bald": 1.0, "Blond_Hair": -1.0, "Smiling": 0.5,
                                                         "Eyeglasses": 1.0}


def test_edit_encodes_under_the_classifier_s_attributes_and_records_before_and_after(files, capsys, tmp_path):
    out = tmp_path / "edited.png"
    code, stdout, stderr = cvae(capsys, "edit", files.face, "--set", "Smiling=1", "--out", out,
                                "--model", files.model, "--classifier", files.classifier,
                                "--params", files.params)
    assert code == 0, stderr
    face = to_unit_range(load_square(files.face, CROP, 16, reduction=1))
    predicted = predict_attributes(load_classifier(files.classifier), face[None])[0].astype(float).tolist()
    assert list(recorded(out, "cvae:attributes_before").values()) == predicted
    assert recorded(out, "cvae:attributes_after") == {**dict(zip(NAMES, predicted)), "Smiling": 1.0}
    assert chunks(out)["cvae:source"] == str(files.face)
    assert chunks(out)["cvae:attributes_from"] == f"classifier {files.classifier}"
    assert pixels(out).shape == (16, 16, 3) and "edit: wrote" in stdout
    assert sorted(tmp_path.iterdir()) == [out]  # no staging file left beside it


def test_edit_takes_the_face_s_attributes_from_its_row_in_the_attribute_file(files, capsys, tmp_path):
    out = tmp_path / "edited.png"
    code, stdout, stderr = cvae(capsys, "edit", files.face, "--set", "Smiling=1", "--set", "Bald=1.5",
                                "--out", out, "--model", files.model,
                                "--attrs-from", "file", "--attr-file", files.attr_file)
    assert code == 0, stderr
    assert list(recorded(out, "cvae:attributes_before").values()) == FACE_ROW
    assert recorded(out, "cvae:attributes_after") == {"Bald": 1.5, "Blond_Hair": 1.0, "Smiling": 1.0,
                                                      "Eyeglasses": 1.0}
    assert "Smiling -1 -> 1, Bald -1 -> 1.5" in stdout


def test_edit_changes_the_face_only_when_an_attribute_changes(files, capsys, tmp_path):
    def edit(name: str, *sets: str) -> np.ndarray:
        out = tmp_path / name
        code, _, stderr = cvae(capsys, "edit", files.face, *sets, "--out", out, "--model", files.model,
                               "--attrs-from", "file", "--attr-file", files.attr_file)
        assert code == 0, stderr
        return pixels(out)

    reconstruction = edit("reconstruction.png")
    np.testing.assert_array_equal(edit("unchanged.png", "--set", "Smiling=-1"), reconstruction)  # already -1
    assert np.abs(edit("smiling.png", "--set", "Smiling=1") - reconstruction).max() > 0


def test_edit_names_the_attributes_the_training_rows_show_against_the_change(files, capsys, tmp_path):
    # Eyeglasses is the opposite of Smiling in all rows but one (r = -0.82); Bald and
    # Blond_Hair go with it weakly (r = 0.2)
    smiling = np.array([1, 1, 1, 1, 1, -1, -1, -1, -1, -1], dtype=np.float32)
    glasses = -smiling
    glasses[0] = 1.0
    rows = np.stack([np.tile([1.0, -1.0], 5), [1, -1, -1, 1, 1, -1, 1, 1, -1, -1], smiling, glasses], axis=1)
    model = tmp_path / "linked.keras"
    named_cvae(rows.astype(np.float32)).save(model)

    def edit(*sets: str) -> str:
        code, stdout, stderr = cvae(capsys, "edit", files.face, *sets, "--out", tmp_path / "e.png",
                                    "--model", model, "--attrs-from", "file", "--attr-file", files.attr_file)
        assert code == 0, stderr
        return stdout

    # face.jpg has Smiling -1 and Eyeglasses +1: a smile goes with no glasses in these rows
    note = edit("--set", "Smiling=1")
    assert "edit: note:" in note and "Eyeglasses (r -0.82)" in note and "--set Eyeglasses=-1" in note
    assert "Bald" not in note.split("note:")[1] and "Blond_Hair" not in note.split("note:")[1]
    assert "note:" not in edit("--set", "Smiling=-1")  # no change of sign: nothing to go with
    assert "note:" not in edit("--set", "Smiling=1", "--set", "Eyeglasses=1")  # set by the user


def test_linked_attributes_follow_the_sign_of_the_correlation_and_the_edit():
    from cvae.faces import linked_attributes

    rng = np.random.default_rng(0)
    base = rng.choice([-1.0, 1.0], 400)
    noise = rng.random(400)
    table = np.stack([base, np.where(noise < 0.95, base, -base), np.where(noise < 0.6, base, -base),
                      rng.choice([-1.0, 1.0], 400)], axis=1)
    names = ["A", "Strong", "Weak", "Unrelated"]  # r with A: about 0.9, 0.2, 0
    before = np.array([-1.0, -1.0, -1.0, -1.0])
    after = np.array([1.0, -1.0, -1.0, -1.0])
    linked = linked_attributes(table, names, before, after, {"A": 1.0})
    assert list(linked) == ["Strong"] and linked["Strong"][0] == 1.0 and linked["Strong"][1] > 0.8
    # already as the edit would have it: nothing named
    assert linked_attributes(table, names, np.array([-1.0, 1.0, -1.0, -1.0]), after, {"A": 1.0}) == {}
    # an edit that leaves A's sign as it was changes nothing to go with
    assert linked_attributes(table, names, after, after, {"A": 1.0}) == {}
    # the other way round: A to -1 goes with Strong -1
    assert linked_attributes(table, names, np.array([1.0, 1.0, 1.0, 1.0]), np.array([-1.0, 1.0, 1.0, 1.0]),
                             {"A": -1.0})["Strong"][0] == -1.0


def test_a_failed_write_leaves_no_faces_behind(files, capsys, tmp_path, monkeypatch):
    written = []

    def write_bytes_until_the_disk_is_full(path: Path, data: bytes) -> int:
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(path)
        return real_write_bytes(path, data)

    real_write_bytes = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", write_bytes_until_the_disk_is_full)
    out = tmp_path / "faces"
    code, _, stderr = cvae(capsys, "generate", "-n", 4, "--out", out, "--model", files.model)
    assert code == 1 and f"cvae generate: error: {out}: cannot write: No space left on device" in stderr
    assert written and list(out.iterdir()) == []


def test_an_output_path_of_the_wrong_kind_is_refused_and_left_alone(files, capsys, tmp_path):
    a_file, a_directory = tmp_path / "a_file", tmp_path / "a_directory"
    a_file.write_text("keep me")
    a_directory.mkdir()
    code, _, stderr = cvae(capsys, "generate", "--out", a_file, "--model", files.model)
    assert code == 1 and f"{a_file}: exists and is not a directory" in stderr
    code, _, stderr = cvae(capsys, "edit", files.face, "--out", a_directory, "--model", files.model,
                           "--classifier", files.classifier)
    assert code == 1 and f"{a_directory}: is a directory" in stderr
    assert a_file.read_text() == "keep me" and list(a_directory.iterdir()) == []
    assert sorted(tmp_path.iterdir()) == [a_directory, a_file]


# (arguments, the message after "cvae <command>: error: "); {f} is the module's files
ERRORS = {
    "unknown attribute": ("generate --attr Smilng=1", "unknown attribute 'Smilng'; did you mean 'Smiling'?"),
    "unknown attribute, nothing close": ("generate --attr Age=1", "unknown attribute 'Age'; this model's"
                                         " attributes are: Bald, Blond_Hair, Smiling, Eyeglasses"),
    "value not a number": ("generate --attr Smiling=yes", "--attr Smiling=yes: value must be a number"),
    "value not finite": ("generate --attr Smiling=nan", "--attr Smiling=nan: value must be a finite number"),
    "no NAME=VALUE": ("generate --attr Smiling", "--attr Smiling: expected NAME=VALUE"),
    "no value": ("generate --attr Smiling=", "--attr Smiling=: expected NAME=VALUE"),
    "attribute twice": ("generate --attr Smiling=1 --attr Smiling=-1", "--attr Smiling is given twice"),
    "no faces": ("generate -n 0", "the number of faces (-n) must be at least 1, not 0"),
    "negative seed": ("generate --seed -1", "the seed (--seed) must be from 0 to 2**63 - 1, not -1"),
    "missing model": ("generate --model {f.missing}/m.keras", "{f.missing}/m.keras: model file not found"),
    "a classifier as the model": ("generate --model {f.classifier}", "{f.classifier}: not a cvae model:"
                                  " {f.classifier} holds a AttributeClassifier, not a cvae.CVAE"),
    "another Keras model": ("generate --model {f.sequential}", "{f.sequential}: not a cvae model: "),
    "a corrupt model": ("generate --model {f.corrupt}",
                        "{f.corrupt}: not a .keras model file (not a zip archive)"),
    "edit: missing image": ("edit {f.missing}/face.jpg", "{f.missing}/face.jpg: image not found"),
    "edit: not an image": ("edit {f.not_image}",
                           "{f.not_image}: cannot read the image (not an image format Pillow can read)"),
    "edit: truncated image": ("edit {f.truncated}", "{f.truncated}: cannot read the image (OSError: "),
    "edit: unknown attribute": ("edit {f.face} --set Eyeglases=1",
                                "unknown attribute 'Eyeglases'; did you mean 'Eyeglasses'?"),
    "edit: value not a number": ("edit {f.face} --set Smiling=maybe",
                                 "--set Smiling=maybe: value must be a number"),
    "edit: corrupt model": ("edit {f.face} --model {f.corrupt}", "{f.corrupt}: not a .keras model file"),
    "edit: missing classifier": ("edit {f.face} --classifier {f.missing}/c.keras",
                                 "{f.missing}/c.keras: classifier file not found"),
    "edit: the model as classifier": ("edit {f.face} --classifier {f.model}",
                                      "{f.model} holds a CVAE, not a cvae attribute classifier"),
    "edit: classifier of other attributes": ("edit {f.face} --classifier {f.foreign_classifier}",
                                             "the classifier {f.foreign_classifier} lacks attributes the"
                                             " model takes: Bald, Blond_Hair, Eyeglasses"),
    "edit: image not in the attribute file": ("edit {f.unlisted} --attrs-from file --attr-file {f.attr_file}",
                                              "unlisted.jpg is not listed in {f.attr_file}"),
    "edit: missing attribute file": ("edit {f.face} --attrs-from file --attr-file {f.missing}/attrs.txt",
                                     "{f.missing}/attrs.txt: file not found"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_a_mistake_is_a_one_line_error_and_writes_nothing(case, files, capsys, tmp_path):
    arguments, message = (text.format(f=files) for text in ERRORS[case])
    command, *rest = arguments.split()
    # the tiny models unless the case names its own (the project's models/ must not be read)
    defaults = {"--model": files.model, **({"--classifier": files.classifier} if command == "edit" else {})}
    unnamed = [str(part) for option, path in defaults.items() if option not in rest
               for part in (option, path)]
    out = tmp_path / ("faces" if command == "generate" else "edited.png")
    code, stdout, stderr = cvae(capsys, command, *rest, *unnamed, "--out", out)
    assert code == 1
    assert stderr.startswith(f"cvae {command}: error: {message}"), stderr
    assert stderr.count("\n") == 1 and stdout == ""
    assert list(tmp_path.iterdir()) == []  # no output, not even a staging file


@pytest.mark.slow
def test_the_installed_command_reports_a_mistake_without_a_traceback(files, tmp_path):
    def installed_cvae(*args) -> str:
        result = subprocess.run([BIN / "cvae", *args], capture_output=True, text=True)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        return result.stderr.splitlines()[-1]  # TensorFlow may log lines of its own before it

    truncated = installed_cvae("edit", files.truncated, "--set", "Smiling=1", "--model", files.model,
                               "--classifier", files.classifier, "--out", tmp_path / "e.png")
    assert truncated.startswith(f"cvae edit: error: {files.truncated}: cannot read the image")
    misspelt = installed_cvae("generate", "--attr", "Smilng=1", "--model", files.model,
                              "--out", tmp_path / "faces")
    assert misspelt == "cvae generate: error: unknown attribute 'Smilng'; did you mean 'Smiling'?"
    assert list(tmp_path.iterdir()) == []
