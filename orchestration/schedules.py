"""The retraining job over the whole graph and its nightly schedule."""

import dagster as dg

retrain_job = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.all(),
    description="Run every stage through DVC: unchanged stages are skipped by DVC's own cache.",
)

nightly_retrain = dg.ScheduleDefinition(
    name="nightly_retrain",
    job=retrain_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    description="Retrain every night at 02:00 UTC on the latest data and params.",
)
