"""Dagster runs as a team leaves them running: two materialisations started at once, and the
run-failure sensor's log."""

from __future__ import annotations

import json
import shutil
import subprocess

import dagster as dg
import yaml

from orchestration.assets import STAGE_ASSETS
from orchestration.definitions import defs
from orchestration.dvc_pipeline import DvcProject
from orchestration.schedules import FAILURE_LOG, record_run_failures
from tests.conftest import BIN, PROJECT, dvc_changes, make_dvc_repo, stage_env, tiny_params_dict
from tests.test_dagster import WIDE, resources

DATA_ASSETS = [STAGE_ASSETS[stage].name for stage in ("check_source", "download", "validate", "prepare")]


def _step_intervals(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """step key -> (start, end) timestamps of the steps that ran in `run_id`."""
    starts, ends = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = record.timestamp
    return {key: (starts[key], ends[key]) for key in starts}


def test_two_materialisations_at_once_take_turns_and_leave_consistent_outputs(tmp_path):
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(validate={"prevalence": WIDE}))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "orchestration/dagster.yaml", home / "dagster.yaml")  # the pools of `make ui`
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # the instance's tables exist before the runs start, as under `make ui`: two processes
        # creating a fresh SQLite store at once race each other ("table ... already exists")
        instance.upgrade()
    env = {**stage_env(), "DAGSTER_HOME": str(home), "CVAE_PROJECT_DIR": str(repo)}
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "orchestration.definitions",
               "--select", ",".join(DATA_ASSETS)]
    logs = [tmp_path / f"run-{index}.log" for index in (1, 2)]
    runs = []
    for log in logs:
        with log.open("w") as out:
            runs.append(subprocess.Popen(command, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT))
    codes = [run.wait(timeout=600) for run in runs]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_ids = [record.dagster_run.run_id for record in instance.get_run_records()]
        assert len(run_ids) == 2
        assert all(instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS for run_id in run_ids)
        first, second = (_step_intervals(instance, run_id) for run_id in run_ids)
    assert set(first) == set(second) == set(DATA_ASSETS)
    # the DVC pool holds one step at a time across both runs: no two steps overlap in time
    spans = sorted([*first.values(), *second.values()])
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"steps of the two runs overlapped: {spans}"
    # and DVC's workspace is what dvc.lock says: every output whole and recorded
    assert dvc_changes(repo, "check_source", "download", "validate", "prepare") == {}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"download", "validate", "prepare"} <= set(lock)


def test_a_failed_run_is_appended_to_the_failure_log(tmp_path):
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(data={"source": str(tmp_path / "no-such-folder")}))
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(defs.assets, selection=dg.AssetSelection.assets(STAGE_ASSETS["check_source"].name),
                                resources=resources(repo), instance=instance, raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        [failure] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="record_run_failures", dagster_instance=instance, dagster_run=run,
            dagster_event=failure.dagster_event, resources={"dvc": DvcProject(project_dir=str(repo))},
        ).for_run_failure()
        record_run_failures(context)
        record_run_failures(context)  # appended, not replaced
    lines = (repo / FAILURE_LOG).read_text().splitlines()
    assert len(lines) == 2
    entry = json.loads(lines[0])
    assert entry["run_id"] == result.run_id
    assert entry["failed_steps"] == [STAGE_ASSETS["check_source"].name]
    assert entry["job"] == result.job_def.name
    assert entry["error"]  # Dagster's one-line summary of the failure


def test_the_failure_sensor_and_the_schedule_are_on_by_default():
    assert defs.resolve_sensor_def("record_run_failures").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("nightly_retrain").default_status == dg.DefaultScheduleStatus.RUNNING

