import json
import shutil

import pytest

from cvae.celeba import ATTRIBUTE_FILE, IMAGE_DIR
from cvae.cli import main
from cvae.validation import validate


@pytest.fixture
def raw(tmp_path, synthetic_root):
    copy = tmp_path / "raw"
    shutil.copytree(synthetic_root, copy)
    return copy


def plant(raw, line_number, old, new):
    path = raw / ATTRIBUTE_FILE
    lines = path.read_text().splitlines()
    assert old in lines[line_number - 1]
    lines[line_number - 1] = lines[line_number - 1].replace(old, new, 1)
    path.write_text("\n".join(lines) + "\n")


def failures(summary):
    return {(f.expectation, f.column): f for f in summary.failed}


def test_clean_data_passes_and_report_is_written(raw, tmp_path):
    summary = validate(raw, tmp_path / "report")
    assert summary.success and summary.rows == 48 and not summary.failed
    saved = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert saved["success"] is True
    assert "PASSED" in (tmp_path / "report" / "summary.md").read_text()


def test_report_is_the_same_for_the_same_data(raw, tmp_path):
    validate(raw, tmp_path / "a")
    validate(raw, tmp_path / "b")
    for name in ("summary.json", "summary.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_value_fails_naming_column_and_image(raw, tmp_path):
    plant(raw, 4, "000002.jpg -1", "000002.jpg  2")  # first value of the second row
    summary = validate(raw, tmp_path / "report")
    assert not summary.success
    failure = failures(summary)[("expect_column_values_to_be_in_set", "5_o_Clock_Shadow")]
    assert failure.unexpected_count == 1 and failure.examples == ["000002.jpg: 2"]
    assert "FAILED" in (tmp_path / "report" / "summary.md").read_text()


def test_missing_image_duplicate_id_short_row_and_wrong_count(raw, tmp_path):
    (raw / IMAGE_DIR / "000005.jpg").unlink()
    plant(raw, 7, "000005.jpg", "000005.jpg")
    plant(raw, 8, "000006.jpg", "000001.jpg")  # a duplicate id
    path = raw / ATTRIBUTE_FILE
    lines = path.read_text().splitlines()
    lines[9] = lines[9].rsplit(" ", 2)[0]  # a row that lost its last values
    lines[0] = "49"
    path.write_text("\n".join(lines) + "\n")
    found = failures(validate(raw, tmp_path / "report"))
    assert found[("expect_column_values_to_be_in_set", "has_image_file")].examples == ["000005.jpg: False"]
    assert found[("expect_column_values_to_be_unique", "image_id")].unexpected_count == 2
    assert found[("expect_column_values_to_not_be_null", "Young")].examples == ["000008.jpg: None"]
    assert found[("expect_table_row_count_to_equal", None)].examples == [48]


def test_cli_exits_non_zero_with_a_readable_summary(raw, tmp_path, capsys):
    plant(raw, 4, "000002.jpg -1", "000002.jpg  x")
    code = main(["validate", "--raw", str(raw), "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 1
    assert "expect_column_values_to_be_in_set column 5_o_Clock_Shadow: 1 unexpected" in err
    assert "000002.jpg: 'x'" in err and "Traceback" not in err
