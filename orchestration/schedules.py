"""The retraining job over the whole graph, its nightly schedule, and the failure log."""

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster_celery import celery_executor

from orchestration.dvc_pipeline import DvcProject

FAILURE_LOG = "logs/run_failures.jsonl"  # in the project folder; one JSON line per failed run

retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.all(),
    description="Re-check the data source, then run every stage through DVC: unchanged stages are skipped by "
                "DVC's cache (retrain.force retrains anyway), and the promote stage replaces the production model "
                "only when the quality gate passes.",
)

# The same graph on Celery workers (docs/deploy.md): start `dagster-celery worker start -q gpu`
# on the GPU machine and one on the default queue, with CVAE_CELERY_BROKER (and _BACKEND) set.
retrain_on_celery = dg.define_asset_job(
    "retrain_on_celery",
    selection=dg.AssetSelection.all(),
    executor_def=celery_executor.configured(
        {"broker": {"env": "CVAE_CELERY_BROKER"}, "backend": {"env": "CVAE_CELERY_BACKEND"}},
        name="celery_from_environment",
    ),
    description="The retrain job with each step on a Celery worker: the cvae_model step on the `gpu` queue, "
                "the others on the default queue. The workers share this project folder and Dagster instance.",
)

nightly_retrain = dg.ScheduleDefinition(
    name="nightly_retrain",
    job=retrain_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    # on as soon as the daemon runs (`make ui`): a team leaves it on; stop it in the UI
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrain every night at 02:00 UTC when the data or params changed; promote only a model that "
                "passes the quality gate.",
)


@dg.run_failure_sensor(
    name="record_run_failures",
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description=f"Append every failed run (job, run id, failed steps, error) to {FAILURE_LOG} in the project.",
)
def record_run_failures(context: dg.RunFailureSensorContext, dvc: DvcProject) -> None:
    failed_steps = sorted({event.step_key for event in context.get_step_failure_events() if event.step_key})
    entry = {
        "time_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_id": context.dagster_run.run_id,
        "job": context.dagster_run.job_name,
        "tags": dict(context.dagster_run.tags),
        "failed_steps": failed_steps,
        "error": context.failure_event.message,
    }
    path = Path(dvc.project_dir) / FAILURE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    # one short append per failure: lines from concurrent sensors do not interleave
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(entry, sort_keys=True) + "\n")
    context.log.info(f"run {entry['run_id']} failed ({', '.join(failed_steps) or 'before any step'}); "
                     f"recorded in {path}")
