"""One Dagster asset per DVC stage, with the asset graph read from dvc.yaml.

Each asset runs its stage through DVC (so dvc.lock records the run) and reports what the
stage produced: the dvc.lock hashes as data version and metadata, plus what people look
at (counts, metrics, figures). Descriptions and paths come from dvc.yaml (a stage's
`desc`, and the paths its `cmd` passes); stages absent from STAGE_ASSETS fail the import,
so the two graphs cannot drift apart silently.
"""


import base64
import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from cvae.core.config import load_params
from cvae.registry.gate import flatten
from orchestration.dvc_pipeline import (
    PROJECT_ROOT,
    DvcProject,
    Stage,
    data_version,
    read_stages,
    recorded_outputs,
    upstream_stages,
)
from orchestration.gpu_pod import GPU_STAGE, GpuPod

DVC_POOL = "dvc"  # assets that call DVC run one at a time: DVC locks its workspace
VALIDATION_CHECK = "attribute_table_valid"  # blocking: a critical expectation failed
WARNINGS_CHECK = "no_data_warnings"  # not blocking: prevalence (action warn) or files without a row
FORCED_STAGE = "train"  # retrain.force reruns this stage, and so everything downstream of it
CELERY_QUEUE_TAG, GPU_QUEUE = "dagster-celery/queue", "gpu"  # the other steps take the default queue
OWNERS = ["team:ml"]  # shown in the UI; Dagster accepts "team:<name>" or an email address


def _png_markdown(path: Path, caption: str) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"**{caption}**\n\n![{path.name}](data:image/png;base64,{encoded})"


def _validation_metadata(root: Path, stage: Stage) -> dict:
    report = root / stage.path("--report")
    summary = json.loads((report / "summary.json").read_text())
    page = report / "summary.md"
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


def _prepared_metadata(root: Path, stage: Stage) -> dict:
    meta = json.loads((root / stage.path("--out") / "meta.json").read_text())
    return {
        **{f"{split}_images": count for split, count in meta["splits"].items()},
        "image_size": meta["image_size"],
        "attributes": len(meta["attribute_names"]),
    }


def _model_metadata(root: Path, stage: Stage) -> dict:
    with (root / stage.path("--history") / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    return {
        "epochs": len(rows),
        **{f"final_{name}": dg.MetadataValue.float(float(value)) for name, value in last.items() if name != "epoch"},
        "model_path": dg.MetadataValue.path(str(root / stage.path("--model"))),
    }


def _classifier_metadata(root: Path, stage: Stage) -> dict:
    report = json.loads((root / stage.path("--report")).read_text())
    return {
        **{name: dg.MetadataValue.float(value) for name, value in flatten(report).items()},
        "classifier_path": dg.MetadataValue.path(str(root / stage.path("--model"))),
    }


def _metrics_metadata(root: Path, stage: Stage) -> dict:
    # numeric metadata, one entry per metric, so the UI plots each across materialisations
    metrics = json.loads((root / stage.path("--metrics")).read_text())
    return {name: dg.MetadataValue.float(value) for name, value in flatten(metrics).items()}


def _promotion_metadata(root: Path, stage: Stage) -> dict:
    from cvae.registry.promote import gated_numbers

    decision = json.loads((root / stage.path("--decision")).read_text())
    before = decision["production_before"]
    return {
        "decision": decision["decision"],
        "reason": decision["reason"],
        "challenger_version": decision["challenger"]["version"],
        "production_version": decision["production"],
        "previous_production_version": before["version"] if before else "none",
        "gate": dg.MetadataValue.json(decision["gate"]),
        **{name: dg.MetadataValue.float(value) for name, value in gated_numbers(decision).items()},
        "decision_path": dg.MetadataValue.path(str(root / stage.path("--decision"))),
        "production_path": dg.MetadataValue.path(str(root / stage.path("--production"))),
        # the page that steers this model live (docs/studio.md)
        "open_in_studio": dg.MetadataValue.md(
            f"`cvae studio --model {root / stage.path('--production') / 'cvae.keras'}` "
            "(or `make studio` in the project), then open <http://127.0.0.1:8765/>"),
    }


def _figures_metadata(root: Path, stage: Stage) -> dict:
    from cvae.figures import CAPTIONS

    folder = root / stage.path("--figures")
    metadata = {}
    for name, caption in CAPTIONS.items():
        stem = Path(name).stem
        metadata[stem] = dg.MetadataValue.md(_png_markdown(folder / name, caption))
        metadata[f"{stem}_path"] = dg.MetadataValue.path(str(folder / name))
    return metadata


def _source_metadata(root: Path, stage: Stage) -> dict:
    record = json.loads((root / stage.path("--out")).read_text())
    return {"fingerprint": dg.MetadataValue.json(record), "source_kind": record["kind"]}


def _raw_metadata(root: Path, stage: Stage) -> dict:
    from cvae.core.celeba import IMAGE_DIR

    return {"images": sum(1 for _ in (root / stage.path("--out") / IMAGE_DIR).iterdir())}


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


def _source_result(stage: Stage, context: dg.AssetExecutionContext, dvc: DvcProject,
                   pipes: dg.PipesSubprocessClient, gpu_pod: GpuPod) -> dg.MaterializeResult:
    """Re-check the source (DVC runs this stage every time) and say whether it changed."""
    fingerprint = dvc.root / stage.path("--out")
    before = fingerprint.read_bytes() if fingerprint.exists() else None
    dvc.repro(context, pipes, stage.name)
    changed = fingerprint.read_bytes() != before
    summary = ("changed: download and the stages after it run again" if changed else
               "unchanged: nothing to retrain (DVC's cache skips download and every stage after it)")
    context.log.info(f"{stage.name}: the data source is {summary}")
    lock_metadata, version = _lock_metadata(dvc.root, stage.name)
    return dg.MaterializeResult(
        metadata={**_source_metadata(dvc.root, stage), "source_changed": changed,
                  "dvc_run": f"re-checked: {summary}", "dvc_reran": True, **lock_metadata},
        data_version=version,
    )


def _validation_result(stage: Stage, context: dg.AssetExecutionContext, dvc: DvcProject,
                       pipes: dg.PipesSubprocessClient, gpu_pod: GpuPod) -> dg.MaterializeResult:
    """Run `validate`; a data failure is a failed blocking check, not a crashed asset, so the
    UI shows which expectations failed while `prepare` and `train` are held back."""
    changes = dvc.pending_changes(stage.name)
    run_metadata = _run_metadata(changes, forced=False)
    context.log.info(f"{stage.name}: {run_metadata['dvc_run']}")
    started = time.time()
    stage_failed = not dvc.repro(context, pipes, stage.name, check=False)
    folder = dvc.root / stage.path("--report")
    report = folder / "summary.json"
    # a stage DVC skipped keeps the report dvc.lock records; one that ran must have written anew
    if not report.exists() or (changes and report.stat().st_mtime < started):
        raise dg.Failure(f"the {stage.name} stage failed before writing a report; see the step's logs")
    summary = json.loads(report.read_text())
    if stage_failed and summary["success"]:
        raise dg.Failure(f"the {stage.name} stage failed although the data passed; see the step's logs")
    lock_metadata, version = _lock_metadata(dvc.root, stage.name)
    page = dg.MetadataValue.path(str(folder / "summary.md"))
    checks = [
        dg.AssetCheckResult(
            check_name=VALIDATION_CHECK,
            passed=bool(summary["success"]),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"failed_expectations": dg.MetadataValue.json(summary["failed"]), "report": page},
        ),
        dg.AssetCheckResult(
            check_name=WARNINGS_CHECK,
            passed=not summary["warnings"],
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "warnings": dg.MetadataValue.json(summary["warnings"]),
                "attribute_shares": dg.MetadataValue.json(summary["shares"]),
                "report": page,
            },
        ),
    ]
    return dg.MaterializeResult(
        metadata={**_validation_metadata(dvc.root, stage), **run_metadata, **lock_metadata},
        data_version=version if not stage_failed else None,
        check_results=checks,
    )


def _stage_result(stage: Stage, context: dg.AssetExecutionContext, dvc: DvcProject,
                  pipes: dg.PipesSubprocessClient, gpu_pod: GpuPod) -> dg.MaterializeResult:
    """One stage's asset body, run while this step holds the DVC workspace."""
    force = stage.name == FORCED_STAGE and load_params(dvc.root / "params.yaml").retrain.force
    changes = dvc.pending_changes(stage.name)
    run_metadata = _run_metadata(changes, force)
    context.log.info(f"{stage.name}: {run_metadata['dvc_run']}")
    if stage.name == GPU_STAGE and gpu_pod.enabled and (changes or force):
        gpu_pod.run(context, stage.name, force=force)  # trains there and pushes the run
        dvc.repro(context, pipes, stage.name, pull=True)  # restored from the run-cache, recorded here
    else:
        dvc.repro(context, pipes, stage.name, force=force)
    lock_metadata, version = _lock_metadata(dvc.root, stage.name)
    return dg.MaterializeResult(
        metadata={**STAGE_ASSETS[stage.name].describe(dvc.root, stage), **run_metadata, **lock_metadata},
        data_version=version,
    )


@dataclass(frozen=True)
class StageAsset:
    name: str
    group: str
    describe: Callable[[Path, Stage], dict]  # what people look at, read from the stage's outputs
    run: Callable[..., dg.MaterializeResult] = _stage_result  # the asset's body


STAGE_ASSETS = {
    "check_source": StageAsset("source_fingerprint", "data", _source_metadata, _source_result),
    "download": StageAsset("raw_images", "data", _raw_metadata),
    "validate": StageAsset("validation_report", "data", _validation_metadata, _validation_result),
    "prepare": StageAsset("prepared_images", "data", _prepared_metadata),
    "train": StageAsset("cvae_model", "model", _model_metadata),
    "train_classifier": StageAsset("attribute_classifier", "model", _classifier_metadata),
    "evaluate": StageAsset("evaluation_metrics", "model", _metrics_metadata),
    "promote": StageAsset("production_model", "model", _promotion_metadata),
    "visualize": StageAsset("figures", "model", _figures_metadata),
}


def _stage_asset(stage: Stage, upstream: set[str]) -> dg.AssetsDefinition:
    spec = STAGE_ASSETS[stage.name]
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
        if stage.name == "validate" else []
    )

    @dg.asset(
        name=spec.name,
        deps=sorted(STAGE_ASSETS[name].name for name in upstream),
        group_name=spec.group,
        description=stage.description,
        owners=OWNERS,
        kinds={"dvc", "python"},
        pool=DVC_POOL,
        check_specs=check_specs,
        metadata={"dvc_stage": stage.name},
        # on Celery workers (the retrain_on_celery job) the GPU stage goes to the `gpu` queue
        op_tags={CELERY_QUEUE_TAG: GPU_QUEUE} if stage.name == GPU_STAGE else None,
    )
    def _asset(context: dg.AssetExecutionContext, dvc: DvcProject,
               pipes_subprocess_client: dg.PipesSubprocessClient, gpu_pod: GpuPod) -> dg.MaterializeResult:
        with dvc.turn(context):
            return spec.run(stage, context, dvc, pipes_subprocess_client, gpu_pod)

    return _asset


def build_stage_assets(dvc_yaml: Path = PROJECT_ROOT / "dvc.yaml") -> list[dg.AssetsDefinition]:
    stages = read_stages(dvc_yaml)
    unknown = set(stages) ^ set(STAGE_ASSETS)
    if unknown:
        raise ValueError(f"{dvc_yaml} and orchestration.assets.STAGE_ASSETS disagree on stages: {sorted(unknown)}")
    upstream = upstream_stages(stages)
    return [_stage_asset(stage, upstream[name]) for name, stage in stages.items()]
