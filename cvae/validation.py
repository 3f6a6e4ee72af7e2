"""The `validate` stage: a Great Expectations 1.x suite on the attribute table.

The suite runs on the table as the file holds it (see `celeba.read_attribute_frame`), so
every defect is reported rather than the first one raised. The report is written as JSON
(for machines: prepare reads `success`, Dagster shows the failures) and as Markdown (for
people), both free of timestamps so that an unchanged delivery gives an unchanged report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cvae.atomic import replace_directory
from cvae.celeba import ATTRIBUTE_FILE, IMAGE_DIR, IMAGE_ID_COLUMN, read_attribute_frame
from cvae.errors import CvaeError

SUMMARY_FILE = "summary.json"
MARKDOWN_FILE = "summary.md"
HAS_IMAGE_COLUMN = "has_image_file"  # derived: whether img_align_celeba/<image_id> exists
EXAMPLES_SHOWN = 5


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    expected: str
    unexpected_count: int | None
    examples: list[Any]  # a few offending values or image ids


@dataclass(frozen=True)
class ValidationSummary:
    success: bool
    source: str
    rows: int
    evaluated: int
    failed: list[ExpectationOutcome]

    def describe_failures(self) -> str:
        lines = [f"validation of {self.source} failed: {len(self.failed)} of {self.evaluated} expectations"]
        for outcome in self.failed:
            where = f" column {outcome.column}" if outcome.column else ""
            count = f": {outcome.unexpected_count} unexpected" if outcome.unexpected_count is not None else ""
            lines.append(
                f"  - {outcome.expectation}{where}{count} (expected {outcome.expected});"
                f" examples: {outcome.examples}"
            )
        return "\n".join(lines)


def validate(raw_dir: str | Path, report_dir: str | Path) -> ValidationSummary:
    """Validate the dataset at `raw_dir`; write the report; return the summary."""
    raw_dir = Path(raw_dir)
    attribute_file = read_attribute_frame(raw_dir / ATTRIBUTE_FILE)
    frame = attribute_file.frame.copy()
    image_dir = raw_dir / IMAGE_DIR
    present = {entry.name for entry in image_dir.iterdir()} if image_dir.is_dir() else set()
    frame[HAS_IMAGE_COLUMN] = frame[IMAGE_ID_COLUMN].isin(present)

    suite = _build_suite(attribute_file.names, attribute_file.declared_count)
    results = _run_suite(suite, frame)
    outcomes = [_outcome(result) for result in results["results"]]
    summary = ValidationSummary(
        success=bool(results["success"]),
        source=str(attribute_file.path),
        rows=len(frame),
        evaluated=len(outcomes),
        failed=[outcome for outcome in outcomes if not outcome.success],
    )
    with replace_directory(report_dir) as staging:
        (staging / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
        (staging / MARKDOWN_FILE).write_text(_markdown(summary, outcomes))
    return summary


def read_summary(report_dir: str | Path) -> dict[str, Any]:
    path = Path(report_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CvaeError(f"{path}: no validation report; run `cvae validate` first") from None


def _build_suite(names: list[str], declared_count: str):
    import great_expectations as gx

    expectations = gx.expectations
    suite = [
        # Columns are the header's names, in order; a row with more values than names
        # adds columns (see read_attribute_frame), which this catches.
        expectations.ExpectTableColumnsToMatchOrderedList(column_list=[IMAGE_ID_COLUMN, *names, HAS_IMAGE_COLUMN]),
        expectations.ExpectTableRowCountToBeBetween(min_value=1),
        expectations.ExpectColumnValuesToBeUnique(column=IMAGE_ID_COLUMN),
        expectations.ExpectColumnValuesToNotBeNull(column=IMAGE_ID_COLUMN),
        expectations.ExpectColumnValuesToBeInSet(column=HAS_IMAGE_COLUMN, value_set=[True]),
    ]
    if declared_count.isdigit():
        suite.append(expectations.ExpectTableRowCountToEqual(value=int(declared_count)))
    else:  # a non-numeric first line can match no row count: an impossible expectation
        suite.append(expectations.ExpectTableRowCountToEqual(value=-1, meta={"declared": declared_count}))
    for name in names:
        suite.append(expectations.ExpectColumnValuesToNotBeNull(column=name))
        suite.append(expectations.ExpectColumnValuesToBeInSet(column=name, value_set=[-1, 1]))
    return suite


def _run_suite(expectations: list, frame: pd.DataFrame) -> dict[str, Any]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("celeba")
        .add_dataframe_asset("attributes")
        .add_batch_definition_whole_dataframe("whole_table")
    )
    suite = context.suites.add(gx.ExpectationSuite(name="celeba_attributes", expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name="celeba_attributes")
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={
            "result_format": "SUMMARY",
            "partial_unexpected_count": EXAMPLES_SHOWN,
            "unexpected_index_column_names": [IMAGE_ID_COLUMN],
        },
    )
    return result.to_json_dict()


def _outcome(result: dict[str, Any]) -> ExpectationOutcome:
    config = result["expectation_config"]
    kwargs = config["kwargs"]
    details = result.get("result") or {}
    exception = result.get("exception_info") or {}
    if exception.get("raised_exception"):
        details = {"observed_value": exception.get("exception_message")}
    column = kwargs.get("column")
    if "partial_unexpected_index_list" in details:  # "id: value" for each offending row
        examples = [
            f"{row.get(IMAGE_ID_COLUMN)}: {row.get(column)!r}" if column != IMAGE_ID_COLUMN else row.get(IMAGE_ID_COLUMN)
            for row in details["partial_unexpected_index_list"]
        ]
    elif "mismatched" in (details.get("details") or {}):
        examples = [
            f"position {m['Expected Column Position']}: expected {m['Expected']!r}, found {m['Found']!r}"
            for m in details["details"]["mismatched"]
        ]
    elif "observed_value" in details:
        examples = [details["observed_value"]]
    else:
        examples = details.get("partial_unexpected_list") or []
    return ExpectationOutcome(
        expectation=config["type"],
        column=column,
        success=bool(result["success"]),
        expected=_expected(config["type"], kwargs, config.get("meta") or {}),
        unexpected_count=details.get("unexpected_count"),
        examples=examples[:EXAMPLES_SHOWN],
    )


def _expected(kind: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    if "value_set" in kwargs:
        return f"values in {kwargs['value_set']}"
    if "column_list" in kwargs:
        return f"columns {kwargs['column_list'][:4]}... ({len(kwargs['column_list'])} in all)"
    if kind == "expect_table_row_count_to_equal":
        declared = meta.get("declared", kwargs["value"])
        return f"the row count declared on line 1 ({declared!r})"
    if kind == "expect_table_row_count_to_be_between":
        return "at least one row"
    if kind == "expect_column_values_to_be_unique":
        return "unique values"
    return "no nulls"


def _markdown(summary: ValidationSummary, outcomes: list[ExpectationOutcome]) -> str:
    verdict = "PASSED" if summary.success else "FAILED"
    lines = [
        f"# Validation of `{summary.source}`: {verdict}",
        "",
        f"{summary.rows} rows; {summary.evaluated - len(summary.failed)} of {summary.evaluated}"
        " expectations met.",
        "",
        "| expectation | column | result | unexpected | examples |",
        "|---|---|---|---|---|",
    ]
    for outcome in sorted(outcomes, key=lambda o: o.success):
        lines.append(
            f"| {outcome.expectation} | {outcome.column or ''} | {'ok' if outcome.success else 'FAILED'}"
            f" | {'' if outcome.unexpected_count is None else outcome.unexpected_count}"
            f" | {', '.join(map(str, outcome.examples)) if not outcome.success else ''} |"
        )
    return "\n".join(lines) + "\n"
