"""One Dagster asset per DVC stage, with the asset graph read from dvc.yaml.

Each asset runs its stage through DVC (so dvc.lock records the run) and reports what the
stage produced: the dvc.lock hashes as data version and metadata, plus what people look
at (counts, metrics, figures). Stages absent from STAGE_ASSETS fail the import, so the
two graphs cannot drift apart silently.
"""


import base64
import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError  # not re-exported by dagster

from cvae.config import load_params
from cvae.gate import flatten

from orchestration.dvc_pipeline import (
    PROJECT_ROOT,
    DvcProject,
    data_version,
    read_stages,
    recorded_outputs,
    upstream_stages,
)

DVC_POOL = "dvc"  # assets that call DVC run one at a time: DVC locks its workspace
VALIDATION_CHECK = "attribute_table_valid"  # blocking: a critical expectation failed
WARNINGS_CHECK = "no_data_warnings"  # not blocking: prevalence (action warn) or files without a row
FORCED_STAGE = "train"  # retrain.force reruns this stage, and so everything downstream of it
OWNERS = ["team:ml"]  # shown in the UI; Dagster accepts "team:<name>" or an email address


@dataclass(frozen=True)
class StageAsset:
    name: str
    group: str
    description: str


STAGE_ASSETS = {
    "check_source": StageAsset("source_fingerprint", "data", "A fingerprint of `data.source` (data/source.json): a "
                               "folder's content hash, a URL's ETag or Last-Modified, the official CelebA MD5s. It is "
                               "re-checked on every run; when it is unchanged, DVC skips download and everything "
                               "after it."),
    "download": StageAsset("raw_images", "data", "The raw dataset in CelebA layout (data/raw): images, "
                           "list_attr_celeba.txt and list_eval_partition.txt, from `data.source`."),
    "validate": StageAsset("validation_report", "data", "Great Expectations report on the attribute table, "
                           "partition file and images (reports/validation); its blocking check keeps bad data "
                           "from `prepare` and `train`, its warning check flags shifted deliveries."),
    "prepare": StageAsset("prepared_images", "data", "Centre-cropped, resized uint8 images and attributes per "
                          "split (data/prepared)."),
    "train": StageAsset("cvae_model", "model", "The trained conditional VAE (models/cvae.keras) and its "
                        "per-epoch history (reports/train)."),
    "train_classifier": StageAsset("attribute_classifier", "model", "The attribute classifier that judges "
                                   "generated and edited faces (models/classifier.keras), with its held-out "
                                   "accuracy per attribute (reports/classifier.json)."),
    "evaluate": StageAsset("evaluation_metrics", "model", "Held-out ELBO (nats per image, bits per dim), "
                           "reconstruction MSE against the mean-image baseline, attribute fidelity of "
                           "generated faces, the classifier's agreement on reconstructions (the ceiling of "
                           "fidelity), edit success, and the quality of sampled faces: their grid-artifact rate "
                           "and their Fréchet distance to held-out faces in the judge's features "
                           "(reports/metrics.json)."),
    "promote": StageAsset("production_model", "model", "The model registry (models/registry: every trained model "
                          "with its metrics and provenance) and the production model (models/production), switched "
                          "only when the quality gate of `retrain.gate` passes against the model in use, both scored "
                          "on the same held-out faces (reports/promotion.json)."),
    "visualize": StageAsset("figures", "model", "Reconstructions, random and conditional samples, a sweep of "
                            "two attributes, edits of held-out faces, interpolation, the PCA and t-SNE latent maps "
                            "and the training curves (reports/figures); each PNG records its provenance (`cvae "
                            "provenance FILE`)."),
}


def _png_markdown(path: Path, caption: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"**{caption}**\n\n![{path.name}](data:image/png;base64,{encoded})"


def _validation_metadata(root: Path) -> dict:
    summary = json.loads((root / "reports/validation/summary.json").read_text())
    page = root / "reports/validation/summary.md"
    return {
        "rows": summary["rows"],
        "image_files": summary["image_files"],
        "expectations_evaluated": summary["evaluated"],
        "expectations_failed": len(summary["failed"]),
        "warnings": len(summary["warnings"]),
        "attribute_shares": dg.MetadataValue.json(summary["shares"]),
        "report": dg.MetadataValue.path(str(page)),
        "report_page": dg.MetadataValue.md(page.read_text()),
    }


def _prepared_metadata(root: Path) -> dict:
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    return {
        **{f"{split}_images": count for split, count in meta["splits"].items()},
        "image_size": meta["image_size"],
        "attributes": len(meta["attribute_names"]),
    }


def _model_metadata(root: Path) -> dict:
    with (root / "reports/train/history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    return {
        "epochs": len(rows),
        **{f"final_{name}": dg.MetadataValue.float(float(value)) for name, value in last.items() if name != "epoch"},
        "model_path": dg.MetadataValue.path(str(root / "models/cvae.keras")),
    }


def _classifier_metadata(root: Path) -> dict:
    report = json.loads((root / "reports/classifier.json").read_text())
    return {
        **{name: dg.MetadataValue.float(value) for name, value in flatten(report).items()},
        "classifier_path": dg.MetadataValue.path(str(root / "models/classifier.keras")),
    }


def _metrics_metadata(root: Path) -> dict:
    # numeric metadata, one entry per metric, so the UI plots each across materialisations
    metrics = json.loads((root / "reports/metrics.json").read_text())
    return {name: dg.MetadataValue.float(value) for name, value in flatten(metrics).items()}


def _promotion_metadata(root: Path) -> dict:
    from cvae.promote import gated_numbers

    decision = json.loads((root / "reports/promotion.json").read_text())
    before = decision["production_before"]
    return {
        "decision": decision["decision"],
        "reason": decision["reason"],
        "challenger_version": decision["challenger"]["version"],
        "production_version": decision["production"],
        "previous_production_version": before["version"] if before else "none",
        "gate": dg.MetadataValue.json(decision["gate"]),
        **{name: dg.MetadataValue.float(value) for name, value in gated_numbers(decision).items()},
        "decision_path": dg.MetadataValue.path(str(root / "reports/promotion.json")),
        "production_path": dg.MetadataValue.path(str(root / "models/production")),
    }


def _figures_metadata(root: Path) -> dict:
    from cvae.figures import CAPTIONS

    folder = root / "reports/figures"
    metadata = {}
    for name, caption in CAPTIONS.items():
        stem = Path(name).stem
        metadata[stem] = dg.MetadataValue.md(_png_markdown(folder / name, caption))
        metadata[f"{stem}_path"] = dg.MetadataValue.path(str(folder / name))
    return metadata


def _source_metadata(root: Path) -> dict:
    record = json.loads((root / "data/source.json").read_text())
    return {"fingerprint": dg.MetadataValue.json(record), "source_kind": record["kind"]}


def _raw_metadata(root: Path) -> dict:
    from cvae.celeba import IMAGE_DIR

    return {"images": sum(1 for _ in (root / "data/raw" / IMAGE_DIR).iterdir())}


DESCRIBE: dict[str, Callable[[Path], dict]] = {
    "check_source": _source_metadata,
    "download": _raw_metadata,
    "validate": _validation_metadata,
    "prepare": _prepared_metadata,
    "train": _model_metadata,
    "train_classifier": _classifier_metadata,
    "evaluate": _metrics_metadata,
    "promote": _promotion_metadata,
    "visualize": _figures_metadata,
}


def _run_metadata(changes: list[str], forced: bool) -> dict:
    """Whether DVC reran the stage and why: an unchanged stage is skipped (DVC's cache)."""
    if forced:
        summary = "ran: forced by retrain.force"
    elif changes:
        summary = "ran: " + "; ".join(changes)
    else:
        summary = "skipped: its data, code and params are unchanged since the last run (DVC's cache)"
    return {"dvc_run": summary, "dvc_reran": bool(forced or changes)}


def _lock_metadata(root: Path, stage: str) -> tuple[dict, dg.DataVersion]:
    hashes = recorded_outputs(root, stage)
    return {"dvc_stage": stage, "dvc_lock_md5": dg.MetadataValue.json(hashes)}, data_version(hashes)


def _source_result(context: dg.AssetExecutionContext, dvc: DvcProject,
                   pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """Re-check the source (DVC runs this stage every time) and say whether it changed."""
    fingerprint = dvc.root / "data/source.json"
    before = fingerprint.read_bytes() if fingerprint.exists() else None
    dvc.repro(context, pipes, "check_source")
    changed = fingerprint.read_bytes() != before
    summary = ("changed: download and the stages after it run again" if changed else
               "unchanged: nothing to retrain (DVC's cache skips download and every stage after it)")
    context.log.info(f"check_source: the data source is {summary}")
    lock_metadata, version = _lock_metadata(dvc.root, "check_source")
    return dg.MaterializeResult(
        metadata={**_source_metadata(dvc.root), "source_changed": changed, "dvc_run": f"re-checked: {summary}",
                  "dvc_reran": True, **lock_metadata},
        data_version=version,
    )


def _validation_result(context: dg.AssetExecutionContext, dvc: DvcProject,
                       pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """Run `validate`; a data failure is a failed blocking check, not a crashed asset, so the
    UI shows which expectations failed while `prepare` and `train` are held back."""
    changes = dvc.pending_changes("validate")
    run_metadata = _run_metadata(changes, forced=False)
    context.log.info(f"validate: {run_metadata['dvc_run']}")
    started = time.time()
    try:
        dvc.repro(context, pipes, "validate")
        stage_failed = False
    except DagsterPipesExecutionError:
        stage_failed = True
    report = dvc.root / "reports/validation/summary.json"
    # a stage DVC skipped keeps the report dvc.lock records; one that ran must have written anew
    if not report.exists() or (changes and report.stat().st_mtime < started):
        raise dg.Failure("the validate stage failed before writing a report; see the step's logs")
    summary = json.loads(report.read_text())
    if stage_failed and summary["success"]:
        raise dg.Failure("the validate stage failed although the data passed; see the step's logs")
    lock_metadata, version = _lock_metadata(dvc.root, "validate")
    report = dg.MetadataValue.path(str(dvc.root / "reports/validation/summary.md"))
    checks = [
        dg.AssetCheckResult(
            check_name=VALIDATION_CHECK,
            passed=bool(summary["success"]),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"failed_expectations": dg.MetadataValue.json(summary["failed"]), "report": report},
        ),
        dg.AssetCheckResult(
            check_name=WARNINGS_CHECK,
            passed=not summary["warnings"],
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "warnings": dg.MetadataValue.json(summary["warnings"]),
                "attribute_shares": dg.MetadataValue.json(summary["shares"]),
                "report": report,
            },
        ),
    ]
    return dg.MaterializeResult(
        metadata={**_validation_metadata(dvc.root), **run_metadata, **lock_metadata},
        data_version=version if not stage_failed else None,
        check_results=checks,
    )


def _stage_result(stage: str, context: dg.AssetExecutionContext, dvc: DvcProject,
                  pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """One stage's asset body, run while this step holds the DVC workspace."""
    if stage == "validate":
        return _validation_result(context, dvc, pipes_subprocess_client)
    if stage == "check_source":
        return _source_result(context, dvc, pipes_subprocess_client)
    force = stage == FORCED_STAGE and load_params(dvc.root / "params.yaml").retrain.force
    run_metadata = _run_metadata(dvc.pending_changes(stage), force)
    context.log.info(f"{stage}: {run_metadata['dvc_run']}")
    dvc.repro(context, pipes_subprocess_client, stage, force=force)
    lock_metadata, version = _lock_metadata(dvc.root, stage)
    return dg.MaterializeResult(metadata={**DESCRIBE[stage](dvc.root), **run_metadata, **lock_metadata},
                                data_version=version)


def _stage_asset(stage: str, upstream: set[str]) -> dg.AssetsDefinition:
    spec = STAGE_ASSETS[stage]
    check_specs = (
        [
            dg.AssetCheckSpec(VALIDATION_CHECK, asset=spec.name, blocking=True,
                              description="No critical Great Expectations expectation failed: attribute "
                                          "table, partition file and images are sound."),
            dg.AssetCheckSpec(WARNINGS_CHECK, asset=spec.name, blocking=False,
                              description="No warning-level expectation failed: attribute prevalence within "
                                          "validate.prevalence (with prevalence_action: warn), and no image "
                                          "file without an attribute row."),
        ]
        if stage == "validate" else []
    )

    @dg.asset(
        name=spec.name,
        deps=sorted(STAGE_ASSETS[name].name for name in upstream),
        group_name=spec.group,
        description=spec.description,
        owners=OWNERS,
        kinds={"dvc", "python"},
        pool=DVC_POOL,
        check_specs=check_specs,
        metadata={"dvc_stage": stage},
    )
    def _asset(context: dg.AssetExecutionContext, dvc: DvcProject,
               pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        with dvc.turn(context):
            return _stage_result(stage, context, dvc, pipes_subprocess_client)

    return _asset


def build_stage_assets(dvc_yaml: Path = PROJECT_ROOT / "dvc.yaml") -> list[dg.AssetsDefinition]:
    stages = read_stages(dvc_yaml)
    unknown = set(stages) ^ set(STAGE_ASSETS)
    if unknown:
        raise ValueError(f"{dvc_yaml} and orchestration.assets.STAGE_ASSETS disagree on stages: {sorted(unknown)}")
    upstream = upstream_stages(stages)
    return [_stage_asset(stage, upstream[stage]) for stage in stages]
