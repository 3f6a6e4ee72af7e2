"""The `promote` stage: register the newly trained model and make it the production model
only if the quality gate passes.

The challenger's metrics are `evaluate`'s (reports/metrics.json). The production model is
scored again here, on the same held-out split, with the same classifier and seed, so both
sets of numbers come from identical samples; old numbers measured on older data would not
be comparable. The decision, with both sets, goes to reports/promotion.json and to the
registry's audit trail.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cvae.core.atomic import replace_file
from cvae.core.config import Params
from cvae.core.errors import CvaeError
from cvae.core.provenance import locked_code, locked_hashes, record
from cvae.registry import store
from cvae.registry.gate import check_rules, compare, flatten

PROMOTED, KEPT = "promoted", "kept"


def promote(params: Params, prepared_dir: str | Path, model_path: str | Path, classifier_path: str | Path,
            metrics_path: str | Path, registry_dir: str | Path, production_link: str | Path,
            decision_path: str | Path, project_dir: str | Path = ".") -> dict:
    model_path, classifier_path = Path(model_path), Path(classifier_path)
    challenger_metrics = _read_metrics(Path(metrics_path))
    rules = params.retrain.gate
    check_rules(rules, challenger_metrics)  # a typo in params fails before anything is written
    current = store.production(production_link)
    model_md5 = store.file_md5(model_path)

    comparisons, production_metrics = [], None
    if current is None:
        promote_it, reason = True, "no production model yet"
    elif current.provenance().get("model_md5") == model_md5:
        promote_it, reason = False, f"the challenger is the production model ({current.name}) already"
    else:
        production_metrics, unscorable = _score_production(params, prepared_dir, current, classifier_path)
        if unscorable:
            promote_it = False
            reason = (f"the production model {current.name} cannot be scored on this data ({unscorable}); it"
                      " stays in use. To switch anyway: cvae production --set VERSION")
        else:
            comparisons = compare(challenger_metrics, production_metrics, rules)
            regressed = [c.metric for c in comparisons if not c.passed]
            promote_it = not regressed
            reason = (f"no gated metric regressed beyond its tolerance against {current.name}" if promote_it
                      else f"regressed beyond tolerance against {current.name}: {', '.join(regressed)}")

    version = store.find(registry_dir, model_md5) or store.register(
        registry_dir, model_path, classifier_path, challenger_metrics,
        _provenance(params, model_path, prepared_dir, project_dir))
    if promote_it:
        store.set_production(production_link, version)
    decision = {
        "decision": PROMOTED if promote_it else KEPT,
        "reason": reason,
        "decided_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "challenger": {"version": version.name, "metrics": challenger_metrics},
        "production_before": None if current is None else {"version": current.name, "metrics": production_metrics},
        "production": version.name if promote_it else current.name,
        "gate": [comparison.as_dict() for comparison in comparisons],
    }
    store.record_decision(registry_dir, decision)
    with replace_file(decision_path) as staging:
        staging.write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
    return decision


def describe(decision: dict) -> str:
    lines = [f"promote: {decision['decision']} {decision['challenger']['version']}: {decision['reason']};"
             f" production is {decision['production']}"]
    for check in decision["gate"]:
        verdict = "ok" if check["passed"] else "REGRESSED"
        lines.append(f"  {check['metric']}: challenger {check['challenger']:.4g}, production"
                     f" {check['production']:.4g} ({check['better']} is better, tolerance {check['tolerance']:g}):"
                     f" {verdict}")
    return "\n".join(lines)


def gated_numbers(decision: dict) -> dict[str, float]:
    """The gated metrics of both models, flat, for Dagster's metadata."""
    return {f"{side}/{check['metric']}": check[side] for check in decision["gate"]
            for side in ("challenger", "production")}


def _score_production(params: Params, prepared_dir, current: store.Version,
                      classifier_path: Path) -> tuple[dict | None, str | None]:
    from cvae.model.cvae import load_cvae
    from cvae.quality.classifier import load_classifier
    from cvae.quality.evaluate import score

    try:
        model = load_cvae(current.model)
        classifier = load_classifier(classifier_path)
        _check_image_size(model, prepared_dir)
        return score(params, prepared_dir, model, classifier), None
    except CvaeError as error:
        return None, str(error)


def _check_image_size(model, prepared_dir) -> None:
    from cvae.data.dataset import load_split

    expected = tuple(load_split(prepared_dir, "test").images.shape[1:])
    got = tuple(model.encoder.inputs[0].shape[1:])
    if got != expected:
        raise CvaeError(f"it takes images of shape {got}, the data has {expected}")


def _provenance(params: Params, model_path: Path, prepared_dir, project_dir) -> dict:
    return {
        **record(params, model_path, prepared_dir, project_dir),
        "registered_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "params": params.model_dump(by_alias=True),
        "dvc_lock_md5": locked_hashes(Path(project_dir)),
        # git_commit is HEAD at registration; these are the files that trained the model
        "train_code_md5": locked_code(Path(project_dir), "train"),
    }


def _read_metrics(path: Path) -> dict:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CvaeError(f"{path}: metrics not found; run the evaluate stage first") from None
    except ValueError as exc:
        raise CvaeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(metrics, dict) or not flatten(metrics):
        raise CvaeError(f"{path}: expected the metrics mapping written by evaluate")
    return metrics
