import pytest

from cvae.cli import main
from cvae.core.config import load_params
from cvae.core.errors import CvaeError


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_project_params_load_with_every_section():
    params = load_params("params.yaml")
    assert params.data.source == "synthetic"
    assert params.data.image_size % 2 ** len(params.train.filters) == 0


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "train:\n  epochz: 3\n")
    with pytest.raises(CvaeError, match=r"params.yaml: train.epochz: unknown key"):
        load_params(path)


def test_a_removed_key_says_why(tmp_path):
    path = write(tmp_path, "train:\n  shuffle_buffer: 8192\n")
    with pytest.raises(CvaeError, match=r"train.shuffle_buffer: removed: every epoch is now a full permutation"):
        load_params(path)


def test_wrong_type_names_key_and_expectation(tmp_path):
    path = write(tmp_path, "train:\n  epochs: three\n")
    with pytest.raises(CvaeError, match=r"train.epochs: input should be a valid integer.*'three'"):
        load_params(path)


def test_overrides_are_parsed_as_yaml_and_checked(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n")
    params = load_params(path, ["train.epochs=5", "train.beta=0.5", "train.filters=[8, 16]", "data.image_size=32"])
    assert (params.train.epochs, params.train.beta, params.train.filters) == (5, 0.5, [8, 16])
    with pytest.raises(CvaeError, match="train.nope: unknown key"):
        load_params(path, ["train.nope=1"])
    with pytest.raises(CvaeError, match="expected section.key=value"):
        load_params(path, ["train.epochs"])


def test_image_size_must_fit_the_model(tmp_path):
    path = write(tmp_path, "data:\n  image_size: 36\n")
    with pytest.raises(CvaeError, match=r"image_size \(36\) must divide by 2\*\*len\(train.filters\) = 16"):
        load_params(path)


def test_cli_reports_bad_params_without_traceback(tmp_path, capsys):
    path = write(tmp_path, "data:\n  crop: -1\n")
    assert main(["download", "--params", str(path), "--out", str(tmp_path / "raw")]) == 1
    err = capsys.readouterr().err
    assert "cvae download: error:" in err and "data.crop" in err and "Traceback" not in err
    assert not (tmp_path / "raw").exists()


def test_params_yaml_holds_exactly_the_codes_defaults():
    import yaml

    from cvae.core.config import Params

    written = yaml.safe_load(open("params.yaml").read())
    defaults = Params().model_dump(by_alias=True, mode="json")
    # every key is written out (and documented there), with the value the code assumes when it is left out
    assert written == defaults


def test_a_params_file_that_leaves_keys_out_gets_the_same_model(tmp_path):
    path = write(tmp_path, "data:\n  source: shapes\n")
    assert load_params(path).model_dump() == load_params("params.yaml", ["data.source=shapes"]).model_dump()
