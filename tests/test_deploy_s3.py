"""DVC's remote and Dagster's step logs on a real S3 server (SeaweedFS on 127.0.0.1), and the
field's recipe for stages that run on another machine: the worker runs `dvc repro
--single-item --pull <stage>` and pushes outputs and run-cache; the orchestrating clone
restores the stage from the run-cache and alone writes dvc.lock."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from orchestration.assets import STAGE_ASSETS
from orchestration.dvc_pipeline import PROJECT_ROOT, read_stages
from orchestration.instance import write_instance_settings
from tests.conftest import BIN, DVC, dvc, dvc_changes, make_dvc_repo, run, stage_env, tiny_params_dict
from tests.servers import s3_server

BUCKET = "cvae-dvc"
WORKER_STAGES = ("train",)  # the GPU step
# always_changed, persist or uncached outputs: docs/deploy.md names them
ORCHESTRATOR_ONLY = {"check_source", "validate", "train_classifier", "evaluate", "promote"}


def test_the_stages_the_run_cache_cannot_restore_are_named():
    stages = read_stages(PROJECT_ROOT / "dvc.yaml")
    assert {name for name, stage in stages.items() if not stage.runs_elsewhere} == ORCHESTRATOR_ONLY
    assert all(stages[name].runs_elsewhere for name in WORKER_STAGES)
    guide = (PROJECT_ROOT / "docs/deploy.md").read_text()
    for name in ORCHESTRATOR_ONLY:
        assert f"`{name}`" in guide, name


def _locked_md5(repo, stage: str) -> dict[str, str]:
    entry = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return {out["path"]: out["md5"] for out in entry["outs"]}


def _dvc_with(repo, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([DVC, *args], cwd=repo, env={**stage_env(), **env}, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_a_worker_trains_and_the_orchestrator_restores_it_from_the_s3_run_cache(tmp_path):
    with s3_server(tmp_path / "s3", buckets=(BUCKET,)) as s3:
        orchestrator = make_dvc_repo(tmp_path / "orchestrator", tiny_params_dict())
        # the remote is shared through git; its credentials are not (config.local is git-ignored)
        dvc(orchestrator, "remote", "add", "-d", "-f", "shared", f"s3://{BUCKET}/cvae")
        dvc(orchestrator, "remote", "modify", "shared", "endpointurl", s3.endpoint)
        dvc(orchestrator, "remote", "modify", "--local", "shared", "access_key_id", s3.access_key)
        dvc(orchestrator, "remote", "modify", "--local", "shared", "secret_access_key", s3.secret_key)
        run(["git", "add", "-A"], orchestrator)
        run(["git", "commit", "-q", "-m", "the shared S3 remote"], orchestrator)
        tracked = run(["git", "ls-files"], orchestrator).stdout.split()
        assert ".dvc/config.local" not in tracked
        assert s3.secret_key not in (orchestrator / ".dvc/config").read_text()

        # the orchestrator prepares the data, pushes it and commits dvc.lock
        dvc(orchestrator, "repro", "prepare")
        dvc(orchestrator, "push")
        run(["git", "add", "dvc.lock"], orchestrator)
        run(["git", "commit", "-q", "-m", "prepared data"], orchestrator)

        # a worker (the GPU machine) clones the repo, with its credentials in the environment
        worker = tmp_path / "worker"
        run(["git", "clone", "-q", str(orchestrator), str(worker)], tmp_path)
        credentials = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        trained = _dvc_with(worker, credentials, "repro", "--single-item", "--pull", *WORKER_STAGES)
        assert "Running stage 'train'" in trained.stdout
        assert "Running stage 'prepare'" not in trained.stdout  # its inputs came from the remote
        _dvc_with(worker, credentials, "push")
        _dvc_with(worker, credentials, "push", "--run-cache")
        model = (worker / "models/cvae.keras").read_bytes()

        # the orchestrator finishes the pipeline without training: the run-cache has the stage
        finished = dvc(orchestrator, "repro", "--pull")
        assert "Stage 'train' is cached - skipping run, checking out outputs" in finished.stdout, finished.stdout
        assert "Running stage 'train'" not in finished.stdout
        assert "Running stage 'evaluate'" in finished.stdout
        assert (orchestrator / "models/cvae.keras").read_bytes() == model
        assert _locked_md5(orchestrator, "train") == _locked_md5(worker, "train")
        assert dvc_changes(orchestrator) == {}

        # everything to S3, then a machine with nothing: the same bytes come back
        dvc(orchestrator, "push")
        listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="cvae/")
        assert listed["KeyCount"] > 0
        before = {stage: _locked_md5(orchestrator, stage) for stage in ("prepare", "train", "promote", "visualize")}
        shutil.rmtree(orchestrator / ".dvc" / "cache")
        for output in ("data/raw", "data/prepared", "models/cvae.keras", "models/classifier.keras",
                       "models/registry", "reports/figures"):
            target = orchestrator / output
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        assert dvc_changes(orchestrator)  # the outputs are gone
        dvc(orchestrator, "pull")
        assert dvc_changes(orchestrator) == {}
        assert (orchestrator / "models/cvae.keras").read_bytes() == model
        assert {stage: _locked_md5(orchestrator, stage) for stage in before} == before


@pytest.mark.slow
def test_step_logs_go_to_the_s3_bucket(tmp_path):
    bucket = "cvae-logs"
    with s3_server(tmp_path / "s3", buckets=(bucket,)) as s3:
        repo = make_dvc_repo(tmp_path / "project", tiny_params_dict())
        env = {**s3.env(), "CVAE_LOGS_S3_BUCKET": bucket}
        home = tmp_path / "dagster_home"
        write_instance_settings(home, environ=env)
        result = subprocess.run(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "orchestration.definitions",
             "--select", STAGE_ASSETS["check_source"].name],
            cwd=repo, env={**stage_env(), **env, "DAGSTER_HOME": str(home), "CVAE_PROJECT_DIR": str(repo)},
            capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
        # an upload that failed would not fail the run: read the logs back from the bucket
        client = s3.client()
        keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys and all(key.startswith("dagster-logs/storage/") for key in keys), keys
        logged = "".join(client.get_object(Bucket=bucket, Key=key)["Body"].read().decode() for key in keys)
        assert "check-source: synthetic faces" in logged  # the stage command's own output
