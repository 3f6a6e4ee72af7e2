"""Entry point for `dagster dev -m orchestration.definitions` and the webserver."""

import dagster as dg

from orchestration.assets import build_stage_assets
from orchestration.dvc_history import dvc_lock_history
from orchestration.dvc_pipeline import DvcProject
from orchestration.gpu_pod import GpuPod
from orchestration.schedules import nightly_retrain, record_run_failures, retrain_job, retrain_on_celery

defs = dg.Definitions(
    assets=build_stage_assets(),
    jobs=[retrain_job, retrain_on_celery],
    schedules=[nightly_retrain],
    sensors=[record_run_failures, dvc_lock_history],
    resources={"dvc": DvcProject(), "pipes_subprocess_client": dg.PipesSubprocessClient(), "gpu_pod": GpuPod()},
)
