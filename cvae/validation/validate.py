"""The `validate` stage: Great Expectations 1.x suites on the raw dataset, one report.

Up to four tables, each with its own suite:
- the attribute table as the file holds it (`celeba.read_attribute_frame`, so every
  defect is reported rather than the first one raised), with derived per-image columns
  (file present, full decode, size, listed in the partition file);
- the share of +1 of each attribute bounded in `validate.prevalence`;
- the partition file, when there is one;
- the files in img_align_celeba/ (at least one; any without an attribute row is a warning).

Failures of critical expectations block the pipeline; failures of warning ones (orphan
files, prevalence with `prevalence_action: warn`) are reported and let the data through.
Great Expectations is imported where it is used: the import takes seconds, and `prepare`
imports this module only to read the report.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from cvae.core.atomic import replace_file
from cvae.core.attributes import check_names
from cvae.core.celeba import (
    ATTRIBUTE_FILE,
    IMAGE_DIR,
    IMAGE_ID_COLUMN,
    PARTITION_FILE,
    AttributeFile,
    read_attribute_frame,
    read_partition_frame,
)
from cvae.core.config import Params
from cvae.core.errors import CvaeError
from cvae.validation.expectations import CRITICAL, WARNING, Table, run_tables
from cvae.validation.images import ImageCheck, check_images
from cvae.validation.report import ValidationSummary, read_summary, write_report

__all__ = ["ValidationSummary", "read_summary", "validate"]

# Derived per-row columns of the attribute table.
HAS_IMAGE_COLUMN = "has_image_file"  # img_align_celeba/<image_id> exists
DECODE_ERROR_COLUMN = "image_decode_error"  # why the image does not decode; null when it does
WIDTH_COLUMN = "image_width"
HEIGHT_COLUMN = "image_height"
IMAGE_COLUMNS = [HAS_IMAGE_COLUMN, DECODE_ERROR_COLUMN, WIDTH_COLUMN, HEIGHT_COLUMN]
IN_PARTITION_COLUMN = "in_partition_file"  # only when there is a partition file
# Columns of the partition and image-file tables.
PARTITION_COLUMN = "partition"
HAS_ROW_COLUMN = "has_attribute_row"
DRIFT_COLUMN = "prevalence_shift"  # |share of +1 now - in the last validated delivery|


def validate(params: Params, raw_dir: str | Path, report_dir: str | Path,
             baseline_path: str | Path | None = None) -> ValidationSummary:
    """Validate the dataset at `raw_dir`; write the report to `report_dir`; return its summary.

    With `baseline_path`, the share of +1 of each attribute is compared with the one of the
    last delivery that passed (a warning beyond `validate.drift_tolerance`), and replaced by
    this delivery's when it passes."""
    raw_dir = Path(raw_dir)
    attribute_file = read_attribute_frame(raw_dir / ATTRIBUTE_FILE)
    _check_header(attribute_file)
    # every key that names attributes, checked here, before anything trains
    check_names(params, attribute_file.names, str(attribute_file.path))
    bounds = params.validation.prevalence
    files = _image_files(raw_dir / IMAGE_DIR)
    partition_path = raw_dir / PARTITION_FILE
    partition = _partition_frame(partition_path) if partition_path.exists() else None

    attributes = _attribute_rows(attribute_file, raw_dir / IMAGE_DIR, files, partition)
    ids = set(attributes[IMAGE_ID_COLUMN])
    tables = [
        Table(ATTRIBUTE_FILE, attributes,
              _attribute_expectations(attribute_file, partition is not None,
                                      params.validation.min_image_size or params.data.image_size)),
        Table(f"{IMAGE_DIR}/", _file_rows(files, ids), _file_expectations()),
    ]
    if bounds:
        tables.append(Table(ATTRIBUTE_FILE, _shares(attributes, list(bounds)),
                            _prevalence_expectations(bounds, params.validation.prevalence_action)))
    if partition is not None:
        partition[HAS_ROW_COLUMN] = partition[IMAGE_ID_COLUMN].isin(ids)
        tables.append(Table(PARTITION_FILE, partition, _partition_expectations()))
    prevalence = _prevalence(attributes, attribute_file.names)
    previous = read_baseline(baseline_path) if baseline_path else None
    if previous is not None:
        drift = drift_table(prevalence, previous, params.validation.drift_attributes)
        tables.append(Table(f"prevalence against the last validated delivery ({baseline_path})", drift,
                            _drift_expectations(params.validation.drift_tolerance)))
    outcomes = run_tables(tables)
    summary = ValidationSummary.of(str(raw_dir), len(attributes), len(files), outcomes)
    write_report(summary, outcomes, report_dir)
    if baseline_path and summary.success:
        write_baseline(baseline_path, str(raw_dir), prevalence)
    return summary


def _prevalence(attributes: pd.DataFrame, names: list[str]) -> dict[str, float]:
    """Share of +1 per attribute over the rows whose value is -1 or +1."""
    shares = {}
    for name in names:
        values = pd.to_numeric(attributes[name], errors="coerce")
        valid = values[values.isin([1, -1])]
        shares[name] = round(float((valid == 1).mean()), 6) if len(valid) else None
    return shares


def read_baseline(path: str | Path) -> dict[str, float] | None:
    """The prevalence of the last validated delivery, or None before the first one."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        return {str(name): (None if share is None else float(share)) for name, share in saved["prevalence"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CvaeError(f"{path}: not a prevalence baseline written by `cvae validate` ({exc}); delete it to"
                        " start afresh") from None


def write_baseline(path: str | Path, source: str, prevalence: dict[str, float]) -> None:
    with replace_file(path) as staging:
        staging.write_text(json.dumps({"source": source, "prevalence": prevalence}, indent=2) + "\n")


def drift_table(current: dict[str, float], previous: dict[str, float], wanted: list[str]) -> pd.DataFrame:
    """One row per attribute in both deliveries (or in `wanted`): the absolute change of its
    share of +1. An attribute the previous delivery lacked counts as a full shift."""
    names = wanted or [name for name in current if current[name] is not None]
    missing = [name for name in names if name not in current]
    if missing:
        raise CvaeError(f"validate.drift_attributes: {missing} not among the attribute file's columns")
    shifts = []
    for name in names:
        before, now = previous.get(name), current[name]
        shifts.append(1.0 if before is None or now is None else round(abs(now - before), 6))
    # the attribute goes in the `image_id` column: failed rows are reported as "name: shift"
    return pd.DataFrame({IMAGE_ID_COLUMN: names, DRIFT_COLUMN: shifts})


def _drift_expectations(tolerance: float) -> list:
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeBetween(
        column=DRIFT_COLUMN, min_value=0.0, max_value=tolerance, severity=WARNING,
        description=f"each attribute's share of +1 within {tolerance} of the last validated delivery")]


def _check_header(attribute_file: AttributeFile) -> None:
    # Columns are named after the header, so a repeated or reserved name cannot be a column.
    reserved = {IMAGE_ID_COLUMN, *IMAGE_COLUMNS, IN_PARTITION_COLUMN}
    clashes = sorted(name for name, count in Counter(attribute_file.names).items() if count > 1 or name in reserved)
    if clashes:
        raise CvaeError(f"{attribute_file.path}:2: attribute names must be unique and not {IMAGE_ID_COLUMN} or a"
                        f" derived column name; found {', '.join(clashes)}")


def _image_files(image_dir: Path) -> list[str]:
    if not image_dir.is_dir():
        return []
    with os.scandir(image_dir) as entries:  # scandir knows file types without a stat per file
        return sorted(entry.name for entry in entries if entry.is_file())


def _partition_frame(path: Path) -> pd.DataFrame:
    return _integer_columns(read_partition_frame(path, PARTITION_COLUMN), [PARTITION_COLUMN])


def _attribute_rows(attribute_file: AttributeFile, image_dir: Path, files: list[str],
                    partition: pd.DataFrame | None) -> pd.DataFrame:
    frame = _integer_columns(attribute_file.frame.copy(), attribute_file.names)
    ids = frame[IMAGE_ID_COLUMN]
    frame[HAS_IMAGE_COLUMN] = ids.isin(set(files))
    present = sorted(set(ids[frame[HAS_IMAGE_COLUMN]]))  # each file once, even for duplicate ids
    # os.path.join: building 200,000 Path objects would take seconds
    checks = dict(zip(present, check_images([os.path.join(image_dir, i) for i in present]), strict=True))
    no_file = ImageCheck(None, None, None)  # has_image_file reports it; these columns stay null
    per_row = [checks.get(image_id, no_file) for image_id in ids]
    frame[DECODE_ERROR_COLUMN] = pd.Series([check.error for check in per_row], index=frame.index, dtype=object)
    frame[WIDTH_COLUMN] = pd.array([check.width for check in per_row], dtype="Int64")
    frame[HEIGHT_COLUMN] = pd.array([check.height for check in per_row], dtype="Int64")
    if partition is not None:
        frame[IN_PARTITION_COLUMN] = ids.isin(set(partition[IMAGE_ID_COLUMN]))
    return frame


def _integer_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    # GX checks an int64 column about 4x faster than an object one. Only columns holding
    # nothing but integers convert, so nulls and odd tokens stay for the suite to report.
    for column in columns:
        if pd.api.types.infer_dtype(frame[column], skipna=False) == "integer":
            try:
                frame[column] = frame[column].astype("int64")
            except OverflowError:  # a number beyond int64 is a bad value: leave it as written
                pass
    return frame


def _shares(attributes: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per row, 1.0 for +1 and 0.0 for -1 (null otherwise): a column's mean is its share of +1."""
    shares = pd.DataFrame({IMAGE_ID_COLUMN: attributes[IMAGE_ID_COLUMN]})
    for name in names:
        shares[name] = attributes[name].map({1: 1.0, -1: 0.0}).astype("float64")
    return shares


def _file_rows(files: list[str], ids: set[str]) -> pd.DataFrame:
    return pd.DataFrame({IMAGE_ID_COLUMN: files, HAS_ROW_COLUMN: [name in ids for name in files]})


def _attribute_expectations(attribute_file: AttributeFile, has_partition: bool, min_size: int) -> list:
    import great_expectations.expectations as gxe

    names, declared = attribute_file.names, attribute_file.declared_count
    derived = IMAGE_COLUMNS + ([IN_PARTITION_COLUMN] if has_partition else [])
    count = (
        gxe.ExpectTableRowCountToEqual(value=int(declared), description=f"the row count on line 1 ({declared})")
        if declared.isdigit()
        # a non-numeric line 1 matches no row count: an expectation that must fail
        else gxe.ExpectTableRowCountToEqual(value=-1, description=f"a row count on line 1, found {declared!r}")
    )
    suite = [
        # a row with more values than the header adds columns (see read_attribute_frame)
        gxe.ExpectTableColumnsToMatchOrderedList(
            column_list=[IMAGE_ID_COLUMN, *names, *derived],
            description=f"{IMAGE_ID_COLUMN} and the {len(names)} attributes of the header, in order,"
                        " and no row with more values",
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, description="at least one row"),
        count,
        gxe.ExpectColumnValuesToBeUnique(column=IMAGE_ID_COLUMN, description="each image id once"),
    ]
    for name in names:
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=name, description="a value on every row"))
        suite.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=[-1, 1], description="values in {-1, 1}"))
    suite += [
        gxe.ExpectColumnValuesToBeInSet(column=HAS_IMAGE_COLUMN, value_set=[True],
                                        description=f"a file in {IMAGE_DIR}/ for every row"),
        gxe.ExpectColumnValuesToBeNull(column=DECODE_ERROR_COLUMN, description="every image decodes in full"),
        gxe.ExpectColumnValuesToBeBetween(column=WIDTH_COLUMN, min_value=min_size,
                                          description=f"images at least {min_size} px wide"),
        gxe.ExpectColumnValuesToBeBetween(column=HEIGHT_COLUMN, min_value=min_size,
                                          description=f"images at least {min_size} px high"),
    ]
    if has_partition:
        suite.append(gxe.ExpectColumnValuesToBeInSet(column=IN_PARTITION_COLUMN, value_set=[True],
                                                     description=f"every image id listed in {PARTITION_FILE}"))
    return suite


def _prevalence_expectations(bounds: dict[str, list[float]], action: str) -> list:
    import great_expectations.expectations as gxe

    severity = CRITICAL if action == "block" else WARNING
    return [
        gxe.ExpectColumnMeanToBeBetween(column=name, min_value=low, max_value=high, severity=severity,
                                        description=f"share of +1 between {low} and {high}")
        for name, (low, high) in bounds.items()
    ]


def _file_expectations() -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, description=f"an image folder {IMAGE_DIR}/ with files"),
        gxe.ExpectColumnValuesToBeInSet(column=HAS_ROW_COLUMN, value_set=[True], severity=WARNING,
                                        description=f"a row in {ATTRIBUTE_FILE} for every file; a file without one is unused"),
    ]


def _partition_expectations() -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=[IMAGE_ID_COLUMN, PARTITION_COLUMN, HAS_ROW_COLUMN],
                                                 description="lines of two fields: an image id, then 0, 1 or 2"),
        gxe.ExpectColumnValuesToBeUnique(column=IMAGE_ID_COLUMN, description="each image id once"),
        gxe.ExpectColumnValuesToNotBeNull(column=PARTITION_COLUMN, description="a split code on every line"),
        gxe.ExpectColumnValuesToBeInSet(column=PARTITION_COLUMN, value_set=[0, 1, 2],
                                        description="split codes in {0, 1, 2}"),
        gxe.ExpectColumnValuesToBeInSet(column=HAS_ROW_COLUMN, value_set=[True],
                                        description=f"a row in {ATTRIBUTE_FILE} for every listed id"),
    ]
