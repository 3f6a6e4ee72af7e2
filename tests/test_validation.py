"""The validate stage: every expectation is proved by planting its defect.

Running the suite costs about two seconds whatever the data size (GX's per-expectation
overhead), so one delivery holding many independent defects is validated once, through
the real CLI, and each defect has its own test reading the saved report.
"""

import contextlib
import io
import json
import shutil

import pytest
import yaml
from PIL import Image

from cvae.cli import main
from cvae.core.celeba import ATTRIBUTE_FILE, IMAGE_DIR, PARTITION_FILE
from cvae.core.config import params_from_dict
from cvae.core.errors import CvaeError
from cvae.validation.validate import validate
from tests.conftest import tiny_params_dict

ATTRIBUTES = ATTRIBUTE_FILE
FOLDER = f"{IMAGE_DIR}/"
# Wide bounds: 48 drawn faces may miss the default prevalence bounds by chance.
WIDE = {"Male": [0.0, 1.0], "Smiling": [0.0, 1.0], "Eyeglasses": [0.0, 1.0]}


def params(**validate_section):
    return params_from_dict(tiny_params_dict(validate={"prevalence": WIDE, **validate_section}))


def copy_raw(source, target):
    shutil.copytree(source, target)
    return target


def edit_lines(path, edit):
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def set_value(lines, image_id, position, value):
    """Replace the value at `position` (0 = first attribute) on the row of `image_id`."""
    row = next(i for i, line in enumerate(lines) if line.startswith(image_id + " "))
    tokens = lines[row].split()
    tokens[1 + position] = value
    lines[row] = " ".join(tokens)


def keyed(outcomes):
    return {(o["table"], o["expectation"], o["column"]): o for o in outcomes}


# --- one delivery with many defects, validated once through the CLI -------------------

@pytest.fixture(scope="module")
def defective(tmp_path_factory, synthetic_root):
    root = tmp_path_factory.mktemp("defective")
    raw = copy_raw(synthetic_root, root / "raw")
    images = raw / IMAGE_DIR

    def plant_attributes(lines):
        set_value(lines, "000002.jpg", 0, "2")  # a value outside {-1, 1}
        set_value(lines, "000003.jpg", 1, "x")  # a non-numeric value
        set_value(lines, "000013.jpg", 2, "99999999999999999999")  # a number beyond int64
        short = next(i for i, line in enumerate(lines) if line.startswith("000004.jpg"))
        lines[short] = lines[short].rsplit(maxsplit=1)[0]  # a row that lost its last value
        longer = next(i for i, line in enumerate(lines) if line.startswith("000012.jpg"))
        lines[longer] += "  1"  # a row with one value too many
        lines.append(lines[2])  # a duplicate of 000001.jpg's row
        lines[0] = "50"  # the file now holds 49 rows

    def plant_partition(lines):
        lines[:] = [line for line in lines if not line.startswith("000010.jpg")]  # an id missing
        lines[:] = [("000009.jpg 3" if line.startswith("000009.jpg") else line) for line in lines]
        lines.append("000011.jpg 1")  # listed twice
        lines.append("999999.jpg 0")  # no attribute row

    edit_lines(raw / ATTRIBUTE_FILE, plant_attributes)
    edit_lines(raw / PARTITION_FILE, plant_partition)
    (images / "000005.jpg").unlink()
    (images / "000006.jpg").write_bytes(b"this is not a JPEG" * 20)
    whole = (images / "000007.jpg").read_bytes()
    (images / "000007.jpg").write_bytes(whole[: len(whole) // 2])  # the first half of a real JPEG
    Image.new("RGB", (20, 25), "white").save(images / "000008.jpg", "JPEG")  # below data.image_size
    shutil.copy(images / "000001.jpg", images / "stray.jpg")  # a file without a row

    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params_dict(validate={
        "prevalence": {**WIDE, "Male": [0.95, 1.0]}, "prevalence_action": "block"})))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["validate", "--raw", str(raw), "--report", str(root / "report"), "--params", str(params_file),
                     "--baseline", str(root / "validated_prevalence.json")])
    report = json.loads((root / "report" / "summary.json").read_text())
    return {"code": code, "stderr": stderr.getvalue(), "report": report, "failed": keyed(report["failed"]),
            "warnings": keyed(report["warnings"]), "markdown": (root / "report" / "summary.md").read_text()}


def test_cli_exits_1_with_a_readable_message_and_no_traceback(defective):
    assert defective["code"] == 1
    err = defective["stderr"]
    assert "cvae validate: error: validation of" in err and "Traceback" not in err
    assert ("[list_attr_celeba.txt] expect_column_values_to_be_in_set, column Bangs: 1 unexpected"
            " (expected values in {-1, 1}); examples: 000003.jpg: 'x'") in err
    assert "1 warning(s), not blocking:" in err


def test_only_the_planted_defects_fail(defective):
    assert defective["report"]["success"] is False
    assert set(defective["failed"]) == {
        (ATTRIBUTES, "expect_table_columns_to_match_ordered_list", None),
        (ATTRIBUTES, "expect_table_row_count_to_equal", None),
        (ATTRIBUTES, "expect_column_values_to_be_unique", "image_id"),
        (ATTRIBUTES, "expect_column_values_to_be_in_set", "Bald"),
        (ATTRIBUTES, "expect_column_values_to_be_in_set", "Bangs"),
        (ATTRIBUTES, "expect_column_values_to_be_in_set", "Black_Hair"),
        (ATTRIBUTES, "expect_column_values_to_not_be_null", "Wearing_Lipstick"),
        (ATTRIBUTES, "expect_column_values_to_be_in_set", "has_image_file"),
        (ATTRIBUTES, "expect_column_values_to_be_null", "image_decode_error"),
        (ATTRIBUTES, "expect_column_values_to_be_between", "image_width"),
        (ATTRIBUTES, "expect_column_values_to_be_between", "image_height"),
        (ATTRIBUTES, "expect_column_values_to_be_in_set", "in_partition_file"),
        (ATTRIBUTES, "expect_column_mean_to_be_between", "Male"),
        (PARTITION_FILE, "expect_column_values_to_be_in_set", "partition"),
        (PARTITION_FILE, "expect_column_values_to_be_unique", "image_id"),
        (PARTITION_FILE, "expect_column_values_to_be_in_set", "has_attribute_row"),
    }
    assert set(defective["warnings"]) == {(FOLDER, "expect_column_values_to_be_in_set", "has_attribute_row")}


def failure(defective, table, expectation, column=None):
    return defective["failed"][(table, expectation, column)]


def test_bad_value(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_values_to_be_in_set", "Bald")
    assert (found["unexpected_count"], found["examples"]) == (1, ["000002.jpg: 2"])


def test_non_numeric_value(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_values_to_be_in_set", "Bangs")
    assert found["examples"] == ["000003.jpg: 'x'"]


def test_number_too_large_for_any_integer_type(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_values_to_be_in_set", "Black_Hair")
    assert found["examples"] == ["000013.jpg: 99999999999999999999"]


def test_row_with_too_few_values(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_values_to_not_be_null", "Wearing_Lipstick")
    assert found["examples"] == ["000004.jpg: None"]


def test_row_with_too_many_values(defective):
    found = failure(defective, ATTRIBUTES, "expect_table_columns_to_match_ordered_list")
    assert "found 'extra_value_1'" in found["examples"][0]


def test_duplicate_id(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_values_to_be_unique", "image_id")
    assert (found["unexpected_count"], found["examples"]) == (2, ["000001.jpg", "000001.jpg"])


def test_wrong_count_on_line_1(defective):
    found = failure(defective, ATTRIBUTES, "expect_table_row_count_to_equal")
    assert (found["observed"], found["expected"]) == (49, "the row count on line 1 (50)")


def test_missing_image(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_values_to_be_in_set", "has_image_file")
    assert found["examples"] == ["000005.jpg: False"]


def test_corrupt_and_truncated_images_fail_to_decode(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_values_to_be_null", "image_decode_error")
    assert found["unexpected_count"] == 2
    garbage, truncated = found["examples"]
    assert garbage == "000006.jpg: 'not an image format Pillow can read'"
    assert truncated.startswith("000007.jpg: 'OSError: image file is truncated")


def test_image_too_small(defective):
    width = failure(defective, ATTRIBUTES, "expect_column_values_to_be_between", "image_width")
    height = failure(defective, ATTRIBUTES, "expect_column_values_to_be_between", "image_height")
    assert (width["examples"], height["examples"]) == (["000008.jpg: 20"], ["000008.jpg: 25"])
    assert width["expected"] == "images at least 32 px wide"  # validate.min_image_size null: data.image_size


def test_partition_value_outside_0_1_2(defective):
    found = failure(defective, PARTITION_FILE, "expect_column_values_to_be_in_set", "partition")
    assert found["examples"] == ["000009.jpg: 3"]


def test_id_missing_from_partition(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_values_to_be_in_set", "in_partition_file")
    assert found["examples"] == ["000010.jpg: False"]


def test_duplicate_partition_id(defective):
    found = failure(defective, PARTITION_FILE, "expect_column_values_to_be_unique", "image_id")
    assert found["examples"] == ["000011.jpg", "000011.jpg"]


def test_partition_id_without_attribute_row(defective):
    found = failure(defective, PARTITION_FILE, "expect_column_values_to_be_in_set", "has_attribute_row")
    assert found["examples"] == ["999999.jpg: False"]


def test_prevalence_out_of_bounds_blocks_when_told_to(defective):
    found = failure(defective, ATTRIBUTES, "expect_column_mean_to_be_between", "Male")
    assert found["severity"] == "critical" and found["expected"] == "share of +1 between 0.95 and 1.0"
    assert found["observed"] == defective["report"]["shares"]["Male"] < 0.95


def test_orphan_file_is_a_warning(defective):
    found = defective["warnings"][(FOLDER, "expect_column_values_to_be_in_set", "has_attribute_row")]
    assert found["severity"] == "warning" and found["examples"] == ["stray.jpg: False"]


def test_markdown_lists_failures_apart_from_warnings(defective):
    page = defective["markdown"]
    assert page.startswith(f"# Validation of `{defective['report']['source']}`: FAILED (16 blocking), 1 warning(s)")
    failures, warnings = page.split("## Blocking failures")[1].split("## Warnings (not blocking)")
    assert "000002.jpg: 2" in failures and "stray.jpg" not in failures
    assert "stray.jpg: False" in warnings.split("## Attribute prevalence")[0]
    assert "| Male | " in page.split("## Attribute prevalence")[1]


# --- deliveries that need a run of their own -----------------------------------------

def test_clean_data_passes_with_the_same_report_each_time(synthetic_root, tmp_path):
    summary = validate(params(), synthetic_root, tmp_path / "a")
    assert summary.success and summary.rows == 48 and not summary.failed and not summary.warnings
    assert set(summary.shares) == set(WIDE) and all(0 < share < 1 for share in summary.shares.values())
    saved = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert saved["success"] is True
    assert "PASSED" in (tmp_path / "a" / "summary.md").read_text()
    validate(params(), synthetic_root, tmp_path / "b")
    for name in ("summary.json", "summary.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prevalence_out_of_bounds_only_warns_by_default(synthetic_root, tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params_dict(validate={"prevalence": {**WIDE, "Male": [0.95, 1.0]}})))
    code = main(["validate", "--raw", str(synthetic_root), "--report", str(tmp_path / "report"),
                 "--baseline", str(tmp_path / "validated_prevalence.json"),
                 "--params", str(params_file)])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert report["success"] is True and not report["failed"]
    [warning] = report["warnings"]
    assert (warning["column"], warning["severity"]) == ("Male", "warning")
    assert f"observed {report['shares']['Male']:.3f} (expected share of +1 between 0.95 and 1.0)" in out


def test_header_without_rows_fails(synthetic_root, tmp_path):
    raw = copy_raw(synthetic_root, tmp_path / "raw")
    header = (raw / ATTRIBUTE_FILE).read_text().splitlines()[1]
    (raw / ATTRIBUTE_FILE).write_text(f"0\n{header}\n")
    summary = validate(params(), raw, tmp_path / "report")
    assert not summary.success
    assert [(o.expectation, o.observed) for o in summary.failed if o.table == ATTRIBUTES] == [
        ("expect_table_row_count_to_be_between", 0)]
    assert "at least one row" in summary.describe_failures()


def test_missing_image_folder_fails(synthetic_root, tmp_path):
    raw = copy_raw(synthetic_root, tmp_path / "raw")
    shutil.rmtree(raw / IMAGE_DIR)
    summary = validate(params(), raw, tmp_path / "report")
    assert not summary.success
    found = keyed(map(vars, summary.failed))
    assert found[(FOLDER, "expect_table_row_count_to_be_between", None)]["observed"] == 0
    assert found[(ATTRIBUTES, "expect_column_values_to_be_in_set", "has_image_file")]["unexpected_count"] == 48
    assert "expected an image folder img_align_celeba/ with files" in summary.describe_failures()


def test_every_key_naming_an_absent_attribute_is_reported_at_once_before_anything_trains(synthetic_root, tmp_path):
    bad = params_from_dict(tiny_params_dict(
        validate={"prevalence": {**WIDE, "Has_Wings": [0.1, 0.2]}},
        train={"steer_attributes": ["Smilng"]},
        visualize={"edit_rows": {"wings": {"Has_Wings": 1}}, "sweep_attributes": ["Male", "Tail"]},
        retrain={"gate": {"edit/Has_Wings/success": {"better": "higher", "tolerance": 0.05}}},
    ))
    with pytest.raises(CvaeError) as raised:
        validate(bad, synthetic_root, tmp_path / "report")
    message = str(raised.value)
    assert "list_attr_celeba.txt does not have (it has 15: Bald, Bangs" in message
    for line in ("validate.prevalence: 'Has_Wings' is not an attribute of the data",
                 "train.steer_attributes: 'Smilng' is not an attribute of the data; did you mean 'Smiling'?",
                 "visualize.edit_rows.wings: 'Has_Wings' is not an attribute",
                 "visualize.sweep_attributes: 'Tail' is not an attribute",
                 "retrain.gate.edit/Has_Wings/success: 'Has_Wings' is not an attribute"):
        assert line in message, line
    assert not (tmp_path / "report").exists()


def test_a_repeated_attribute_name_is_a_clear_error(synthetic_root, tmp_path):
    raw = copy_raw(synthetic_root, tmp_path / "raw")
    edit_lines(raw / ATTRIBUTE_FILE, lambda lines: lines.__setitem__(1, lines[1].replace("Bald", "Bangs")))
    with pytest.raises(CvaeError, match=r"list_attr_celeba\.txt:2: attribute names must be unique .*found Bangs$"):
        validate(params(), raw, tmp_path / "report")


# --- drift against the last validated delivery ------------------------------------------

def shift(raw, name, value, count):
    """Set attribute `name` to `value` on the first `count` rows of the attribute file."""
    position = (raw / ATTRIBUTE_FILE).read_text().splitlines()[1].split().index(name)

    def edit(lines):
        for line_number in range(2, 2 + count):
            image_id = lines[line_number].split()[0]
            set_value(lines, image_id, position, value)
    edit_lines(raw / ATTRIBUTE_FILE, edit)


def test_prevalence_drift_warns_and_the_baseline_follows_validated_deliveries(synthetic_root, tmp_path):
    baseline = tmp_path / "validated_prevalence.json"
    first = validate(params(), synthetic_root, tmp_path / "r1", baseline)
    assert first.success and not first.warnings  # nothing to compare with yet
    recorded = json.loads(baseline.read_text())["prevalence"]
    assert len(recorded) == 15 and 0 < recorded["Smiling"] < 1
    again = validate(params(), synthetic_root, tmp_path / "r2", baseline)
    assert again.success and not again.warnings  # the same delivery: no shift

    shifted = copy_raw(synthetic_root, tmp_path / "shifted")
    shift(shifted, "Smiling", "1", 24)  # half of the 48 rows now smile
    summary = validate(params(), shifted, tmp_path / "r3", baseline)
    assert summary.success  # a warning, not a block
    [warning] = summary.warnings
    assert warning.column == "prevalence_shift" and warning.examples[0].startswith("Smiling: ")
    assert "within 0.05 of the last validated delivery" in summary.describe_warnings()
    assert json.loads(baseline.read_text())["prevalence"]["Smiling"] > recorded["Smiling"]  # the new baseline

    # a delivery that fails validation does not become the baseline
    before = baseline.read_bytes()
    failing = validate(params(prevalence={"Male": [0.95, 1.0]}, prevalence_action="block"), synthetic_root,
                       tmp_path / "r4", baseline)
    assert not failing.success and baseline.read_bytes() == before
    # a wider tolerance lets the same shift through
    assert not validate(params(drift_tolerance=0.9), synthetic_root, tmp_path / "r5", baseline).warnings


def test_a_broken_baseline_or_unknown_drift_attribute_is_named(synthetic_root, tmp_path):
    baseline = tmp_path / "validated_prevalence.json"
    baseline.write_text("{not json")
    with pytest.raises(CvaeError, match=r"validated_prevalence.json: not a prevalence baseline"):
        validate(params(), synthetic_root, tmp_path / "report", baseline)
    baseline.write_text(json.dumps({"prevalence": {"Smiling": 0.5}}))
    with pytest.raises(CvaeError, match=r"validate.drift_attributes: 'Smilng' is not an attribute"):
        validate(params(drift_attributes=["Smilng"]), synthetic_root, tmp_path / "report", baseline)
