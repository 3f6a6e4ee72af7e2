"""One history for both front doors: stages that `dvc repro` (or `make run`) ran outside
Dagster show up in Dagster as materialisations without a run.

The sensor reads dvc.lock. A stage whose recorded outputs differ from what Dagster last saw
for its asset (by data version: the same hash of the lock's md5s that the assets report)
is reported as a runless materialisation, with the stage's metadata read from its outputs.
A stage Dagster ran itself, or an unchanged dvc.lock, reports nothing.
"""

from __future__ import annotations

import dagster as dg

from orchestration.assets import STAGE_ASSETS
from orchestration.dvc_pipeline import PROJECT_ROOT, DvcProject, data_version, read_stages, recorded_outputs

# the tag under which Dagster stores a materialisation's data version (MaterializeResult's
# data_version lands here too, so versions from runs and from this sensor compare as equals)
DATA_VERSION_TAG = "dagster/data_version"
SOURCE_TAG = "cvae/recorded_by"  # "dvc": the materialisation came from dvc.lock, not a Dagster run
RECORDED_BY_DVC = "dvc"


def _last_seen_version(instance: dg.DagsterInstance, asset: str) -> str | None:
    entry = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if entry is None or entry.asset_materialization is None:
        return None
    return entry.asset_materialization.tags.get(DATA_VERSION_TAG)


def lock_materialisations(instance: dg.DagsterInstance, dvc: DvcProject,
                          log: dg.DagsterLogManager | None = None) -> list[dg.AssetMaterialization]:
    """A materialisation for each stage whose dvc.lock entry Dagster has not seen, upstream first."""
    stages = read_stages(PROJECT_ROOT / "dvc.yaml")
    events = []
    for name, stage in stages.items():  # dvc.yaml lists stages in pipeline order
        hashes = recorded_outputs(dvc.root, name)
        if not hashes:
            continue  # never run, or nothing recorded
        version = data_version(hashes).value
        spec = STAGE_ASSETS[name]
        if _last_seen_version(instance, spec.name) == version:
            continue
        try:
            described = spec.describe(dvc.root, stage)
        except (OSError, ValueError, KeyError) as error:
            # dvc.lock moved on but the workspace was not checked out (`dvc checkout` fixes it)
            described = {"outputs_unreadable": f"{type(error).__name__}: {error}"}
            if log is not None:
                log.warning(f"{name}: dvc.lock is newer than the outputs in {dvc.root}: {error}")
        events.append(dg.AssetMaterialization(
            asset_key=spec.name,
            description=f"recorded by DVC in {dvc.root / 'dvc.lock'} (a run outside Dagster, such as `dvc repro`)",
            metadata={**described, "dvc_run": "ran outside Dagster: recorded in dvc.lock",
                      "dvc_stage": name, "dvc_lock_md5": dg.MetadataValue.json(hashes)},
            tags={DATA_VERSION_TAG: version, SOURCE_TAG: RECORDED_BY_DVC},
        ))
    return events


@dg.sensor(
    name="dvc_lock_history",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Report each stage that DVC ran outside Dagster (`dvc repro`, `make run`) as a materialisation "
                "of its asset, read from dvc.lock, with the lock's hashes as the data version.",
)
def dvc_lock_history(context: dg.SensorEvaluationContext, dvc: DvcProject) -> dg.SensorResult:
    workspace = dvc.workspace_lock()
    try:
        workspace.acquire(timeout=0)
    except TimeoutError:
        # a Dagster step is between its `dvc repro` and its own materialisation: let it report
        return dg.SensorResult(skip_reason="a Dagster step is using the DVC workspace; next tick")
    try:
        events = lock_materialisations(context.instance, dvc, context.log)
    finally:
        workspace.release()
    if not events:
        return dg.SensorResult(skip_reason="dvc.lock records nothing that Dagster has not seen")
    context.log.info(f"dvc.lock records new outputs for {', '.join(str(e.asset_key.to_user_string()) for e in events)}")
    return dg.SensorResult(asset_events=events)
