"""The retrain job on Celery workers, without Kubernetes: a real Redis on 127.0.0.1 and two
`dagster-celery` workers, one on the `gpu` queue; the cvae_model step runs on that one and
every other step on the default queue's worker."""

from __future__ import annotations

import subprocess

import dagster as dg
import pytest
import yaml

from orchestration.assets import STAGE_ASSETS
from orchestration.instance import write_instance_settings
from tests.conftest import BIN, dvc_changes, make_dvc_repo, stage_env, tiny_params_dict
from tests.servers import redis_server, stop_group, wait_for
from tests.test_dagster import WIDE

WORKERS = {"cpu": "dagster", "gpu": "gpu"}  # worker name -> queue (dagster-celery's default queue: dagster)
# the stages up to the GPU one: enough to see both queues at work, without the rest of the pipeline
STAGES = ("check_source", "download", "validate", "prepare", "train")


@pytest.mark.slow
def test_the_train_step_runs_on_the_gpu_queue_and_the_rest_on_the_default_one(tmp_path, monkeypatch):
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(validate={"prevalence": WIDE}))
    home = tmp_path / "dagster_home"
    write_instance_settings(home, environ={})
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.upgrade()  # the tables exist before two workers open the instance at once
    with redis_server(tmp_path / "redis") as redis:
        env = {**stage_env(), "DAGSTER_HOME": str(home), "CVAE_PROJECT_DIR": str(repo),
               "CVAE_CELERY_BROKER": f"{redis}/0", "CVAE_CELERY_BACKEND": f"{redis}/1"}
        worker_config = tmp_path / "celery.yaml"  # the workers' side of the executor's config
        worker_config.write_text(yaml.safe_dump({"execution": {"config": {
            "broker": env["CVAE_CELERY_BROKER"], "backend": env["CVAE_CELERY_BACKEND"]}}}))
        workers, logs = [], {name: tmp_path / f"worker-{name}.log" for name in WORKERS}
        try:
            for name, queue in WORKERS.items():
                with logs[name].open("w") as out:
                    workers.append(subprocess.Popen(
                        [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                         "-y", str(worker_config), "-q", queue, "-n", name, "--",
                         "--concurrency=1", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                        cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            for worker, log in zip(workers, logs.values(), strict=True):
                wait_for(lambda log=log: " ready." in log.read_text(), f"the celery worker of {log.name}", worker, log)
            result = subprocess.run(
                [str(BIN / "dagster"), "job", "execute", "-m", "orchestration.definitions", "-j", "retrain_on_celery",
                 "--op-selection", ",".join(STAGE_ASSETS[stage].name for stage in STAGES)],
                cwd=repo, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, (result.stdout[-4000:] + result.stderr[-4000:] +
                                            "\n".join(log.read_text()[-3000:] for log in logs.values()))
        finally:
            for worker in workers:
                stop_group(worker)

    with dg.DagsterInstance.get() as instance:
        [record] = instance.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        # the executor names, for each step it sent, the worker that took it
        ran_on = {}
        for event in instance.get_records_for_run(record.dagster_run.run_id,
                                                  of_type=dg.DagsterEventType.ENGINE_EVENT).records:
            metadata = event.event_log_entry.dagster_event.engine_event_data.metadata
            if "Celery worker" in metadata:
                ran_on[event.event_log_entry.step_key] = metadata["Celery worker"].value.split("@")[0]
    assert ran_on == {STAGE_ASSETS[stage].name: "gpu" if stage == "train" else "cpu" for stage in STAGES}
    assert dvc_changes(repo, *STAGES) == {}  # every step ran its stage through DVC, recorded in dvc.lock
