"""Great Expectations 1.x, called directly: run expectations on pandas frames and read
each result into a plain `ExpectationOutcome` (dagster-ge is frozen on GX 0.x).

Every frame has an `image_id` column, so a failed row expectation names its rows as
`id: value`. Each expectation carries its `description` (what a person should read as
"expected") and its `severity`: "critical" blocks the pipeline, "warning" is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from cvae.core.celeba import IMAGE_ID_COLUMN

EXAMPLES_SHOWN = 5
CRITICAL = "critical"
WARNING = "warning"


@dataclass(frozen=True)
class Table:
    name: str  # what people call it: the file or folder the rows come from
    frame: pd.DataFrame
    expectations: list  # great_expectations.expectations.Expectation


@dataclass(frozen=True)
class ExpectationOutcome:
    table: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    expected: str
    observed: Any  # the measured value of a table or aggregate expectation (row count, mean)
    unexpected_count: int | None
    examples: list[str]  # a few offending rows as "id: value", or ids, or column mismatches


def run_tables(tables: list[Table]) -> list[ExpectationOutcome]:
    """Validate each table with its own suite in one ephemeral context; outcomes in order."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("cvae")
    outcomes = []
    for number, table in enumerate(tables):
        name = f"table_{number}"  # GX names must be unique; people see table.name
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=table.expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite, name=name))
        result = definition.run(
            batch_parameters={"dataframe": table.frame},
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": EXAMPLES_SHOWN,
                "unexpected_index_column_names": [IMAGE_ID_COLUMN],
            },
        )
        outcomes.extend(_outcome(table.name, entry) for entry in result.to_json_dict()["results"])
    return outcomes


def _outcome(table: str, result: dict[str, Any]) -> ExpectationOutcome:
    config = result["expectation_config"]
    column = config["kwargs"].get("column")
    details = result.get("result") or {}
    exception = result.get("exception_info") or {}
    observed = details.get("observed_value")
    if exception.get("raised_exception"):
        observed = f"could not be computed: {exception.get('exception_message')}"
    return ExpectationOutcome(
        table=table,
        expectation=config["type"],
        column=column,
        severity=config.get("severity") or CRITICAL,
        success=bool(result["success"]),
        expected=config.get("description") or config["type"],
        observed=None if details.get("details", {}).get("mismatched") else observed,
        unexpected_count=details.get("unexpected_count"),
        examples=_examples(column, details)[:EXAMPLES_SHOWN],
    )


def _examples(column: str | None, details: dict[str, Any]) -> list[str]:
    if "partial_unexpected_index_list" in details:
        return [
            str(row[IMAGE_ID_COLUMN]) if column == IMAGE_ID_COLUMN else f"{row[IMAGE_ID_COLUMN]}: {row.get(column)!r}"
            for row in details["partial_unexpected_index_list"]
        ]
    mismatched = (details.get("details") or {}).get("mismatched") or []
    return [
        f"position {m['Expected Column Position']}: expected {m['Expected']!r}, found {m['Found']!r}"
        for m in mismatched
    ]
