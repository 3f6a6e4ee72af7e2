"""The quality gate: a challenger replaces the production model only if no metric listed
in `retrain.gate` is worse than production's by more than its tolerance."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cvae.core.config import GateRule
from cvae.core.errors import CvaeError


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"edit": {"Smiling": {"success": 0.9}}} -> {"edit/Smiling/success": 0.9}; a null
    (a figure the data could not give, such as a recall where no face has the value) is
    left out."""
    flat = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{name}/"))
        elif value is not None:
            flat[f"{prefix}{name}"] = float(value)
    return flat


@dataclass(frozen=True)
class Comparison:
    metric: str
    better: str
    tolerance: float
    challenger: float
    production: float

    @property
    def change(self) -> float:
        """How much better the challenger is (negative: worse), in the metric's unit."""
        difference = self.challenger - self.production
        return difference if self.better == "higher" else -difference

    @property
    def passed(self) -> bool:
        # NaN compares false: a metric that could not be measured never passes. The slack
        # absorbs float rounding, so a change of exactly the tolerance passes (0.78 - 0.80
        # is -0.020000000000000018 in binary)
        slack = 1e-9 * max(1.0, abs(self.challenger), abs(self.production))
        return self.change >= -self.tolerance - slack

    def as_dict(self) -> dict:
        return {**asdict(self), "change": _finite(self.change), "passed": self.passed}

    def describe(self) -> str:
        verdict = "ok" if self.passed else "REGRESSED"
        return (f"{self.metric}: {self.challenger:.4g} vs {self.production:.4g} ({self.better} is better,"
                f" tolerance {self.tolerance:g}): {verdict}")


def check_rules(rules: dict[str, GateRule], metrics: dict) -> None:
    """Every gated metric must exist in `metrics`; the error names the key and the choices."""
    available = flatten(metrics)
    unknown = [name for name in rules if name not in available]
    if unknown:
        raise CvaeError(f"retrain.gate: {', '.join(unknown)} not among the metrics of evaluate"
                        f" ({', '.join(sorted(available))})")


def compare(challenger: dict, production: dict, rules: dict[str, GateRule]) -> list[Comparison]:
    check_rules(rules, challenger)
    check_rules(rules, production)
    ours, theirs = flatten(challenger), flatten(production)
    return [Comparison(name, rule.better, rule.tolerance, ours[name], theirs[name]) for name, rule in rules.items()]


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None
