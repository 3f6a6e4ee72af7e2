"""The validation report: a summary of the outcomes, saved as JSON for machines (`prepare`
reads `success`, Dagster shows the failures and warnings) and as Markdown for people.

Both files are free of timestamps, so an unchanged delivery gives an unchanged report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cvae.core.atomic import replace_directory
from cvae.core.errors import CvaeError
from cvae.validation.expectations import CRITICAL, ExpectationOutcome

SUMMARY_FILE = "summary.json"
MARKDOWN_FILE = "summary.md"
MEAN_EXPECTATION = "expect_column_mean_to_be_between"  # how the prevalence bounds are checked


@dataclass(frozen=True)
class ValidationSummary:
    success: bool  # false only when a blocking (critical) expectation failed
    source: str
    rows: int  # attribute rows
    image_files: int
    evaluated: int
    failed: list[ExpectationOutcome]  # blocking failures
    warnings: list[ExpectationOutcome]  # failures that are reported but let the data through
    shares: dict[str, float | None]  # share of +1 of each attribute bounded in params

    @classmethod
    def of(cls, source: str, rows: int, image_files: int, outcomes: list[ExpectationOutcome]) -> ValidationSummary:
        failed = [o for o in outcomes if not o.success and o.severity == CRITICAL]
        return cls(
            success=not failed,
            source=source,
            rows=rows,
            image_files=image_files,
            evaluated=len(outcomes),
            failed=failed,
            warnings=[o for o in outcomes if not o.success and o.severity != CRITICAL],
            shares={o.column: o.observed for o in outcomes if o.expectation == MEAN_EXPECTATION},
        )

    def describe_failures(self) -> str:
        lines = [f"validation of {self.source} failed: {len(self.failed)} blocking of {self.evaluated} expectations"]
        return "\n".join(lines + [f"  - {describe(o)}" for o in self.failed] + self._warning_lines())

    def describe_warnings(self) -> str:
        return "\n".join(self._warning_lines())

    def _warning_lines(self) -> list[str]:
        if not self.warnings:
            return []
        return [f"{len(self.warnings)} warning(s), not blocking:"] + [f"  - {describe(o)}" for o in self.warnings]


def describe(outcome: ExpectationOutcome) -> str:
    """One line: where, what was expected, what was found, and a few offending rows."""
    where = f"[{outcome.table}] {outcome.expectation}" + (f", column {outcome.column}" if outcome.column else "")
    if outcome.unexpected_count is not None:
        found = f"{outcome.unexpected_count} unexpected"
    elif outcome.observed is not None:
        found = f"observed {_value(outcome.observed)}"
    else:
        found = "failed"
    examples = f"; examples: {', '.join(outcome.examples)}" if outcome.examples else ""
    return f"{where}: {found} (expected {outcome.expected}){examples}"


def write_report(summary: ValidationSummary, outcomes: list[ExpectationOutcome], report_dir: str | Path) -> None:
    with replace_directory(report_dir) as staging:
        (staging / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2, default=str) + "\n")
        (staging / MARKDOWN_FILE).write_text(markdown(summary, outcomes))


def read_summary(report_dir: str | Path) -> dict[str, Any]:
    path = Path(report_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CvaeError(f"{path}: no validation report; run `cvae validate` first") from None


def markdown(summary: ValidationSummary, outcomes: list[ExpectationOutcome]) -> str:
    verdict = "PASSED" if summary.success else f"FAILED ({len(summary.failed)} blocking)"
    if summary.warnings:
        verdict += f", {len(summary.warnings)} warning(s)"
    met = f"{sum(o.success for o in outcomes)} of {summary.evaluated} expectations met"
    lines = [
        f"# Validation of `{summary.source}`: {verdict}",
        "",
        f"{summary.rows} attribute rows, {summary.image_files} image files; {met}.",
    ]
    for title, group in (("Blocking failures", summary.failed), ("Warnings (not blocking)", summary.warnings)):
        lines += ["", f"## {title}", ""]
        lines += [f"- {_cell(describe(o))}" for o in group] or ["None."]
    prevalence = [o for o in outcomes if o.expectation == MEAN_EXPECTATION]
    if prevalence:
        lines += ["", "## Attribute prevalence", "", "| attribute | share of +1 | expected | result |", "|---|---|---|---|"]
        lines += [f"| {o.column} | {_value(o.observed)} | {o.expected} | {_verdict(o)} |" for o in prevalence]
    lines += ["", "## All expectations", ""]
    lines += ["| file | column | expectation | expected | severity | result |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {o.table} | {o.column or ''} | {o.expectation} | {_cell(o.expected)} | {o.severity} | {_verdict(o)} |"
        for o in outcomes
    ]
    return "\n".join(lines) + "\n"


def _verdict(outcome: ExpectationOutcome) -> str:
    return "ok" if outcome.success else ("FAILED" if outcome.severity == CRITICAL else "WARNING")


def _value(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
