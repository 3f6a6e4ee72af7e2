"""Dagster runs as a team leaves them running: two materialisations started at once, and the
run-failure sensor's log."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from filelock import FileLock

from orchestration.assets import STAGE_ASSETS
from orchestration.definitions import defs
from orchestration.dvc_pipeline import TURN_ENDED, TURN_TAKEN, WAITING, DvcProject
from orchestration.schedules import FAILURE_LOG, record_run_failures
from tests.conftest import BIN, PROJECT, dvc_changes, make_dvc_repo, stage_env, tiny_params_dict
from tests.test_dagster import WIDE, resources

DATA_ASSETS = [STAGE_ASSETS[stage].name for stage in ("check_source", "download", "validate", "prepare")]


def _intervals(instance: dg.DagsterInstance, run_id: str) -> tuple[dict, dict]:
    """(step key -> (start, end) of the step, step key -> (start, end) of its turn at DVC's
    workspace) for the steps that ran in `run_id`."""
    steps, turns = {}, {}
    for record in instance.all_logs(run_id):
        event, key = record.dagster_event, record.step_key
        if key is None:
            continue
        if event is None and record.user_message.startswith(TURN_TAKEN):
            turns[key] = (record.timestamp, None)
        elif event is None and record.user_message.startswith(TURN_ENDED):
            turns[key] = (turns[key][0], record.timestamp)
        elif event is not None and event.event_type == dg.DagsterEventType.STEP_START:
            steps[key] = (record.timestamp, None)
        elif event is not None and event.event_type in (dg.DagsterEventType.STEP_SUCCESS,
                                                        dg.DagsterEventType.STEP_FAILURE):
            steps[key] = (steps[key][0], record.timestamp)
    return steps, turns


def _overlaps(spans: list[tuple[float, float]]) -> list:
    spans = sorted(spans)
    return [(one, other) for one, other in zip(spans, spans[1:]) if other[0] < one[1]]


def _materialise_twice_at_once(tmp_path, dagster_yaml: Path | None, assets: list[str],
                               hold_workspace: bool = False) -> tuple[Path, list]:
    """Start two `dagster asset materialize` of `assets` at the same moment on one persistent
    instance and wait for both to succeed. With `hold_workspace`, this test holds DVC's workspace
    until both runs wait for it, so that both then go for it at once.
    -> (the DVC repo, [(steps, turns) of each run])."""
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(validate={"prevalence": WIDE}))
    home = tmp_path / "dagster_home"
    home.mkdir()
    if dagster_yaml is not None:
        shutil.copy(dagster_yaml, home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # the instance's tables exist before the runs start, as under `make ui`: two processes
        # creating a fresh SQLite store at once race each other ("table ... already exists")
        instance.upgrade()
    env = {**stage_env(), "DAGSTER_HOME": str(home), "CVAE_PROJECT_DIR": str(repo)}
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "orchestration.definitions",
               "--select", ",".join(assets)]
    logs = [tmp_path / f"run-{index}.log" for index in (1, 2)]
    workspace = FileLock(repo / ".dvc/tmp/dagster-step.lock")
    if hold_workspace:
        (repo / ".dvc/tmp").mkdir(exist_ok=True)
        workspace.acquire()
    runs = []
    for log in logs:
        with log.open("w") as out:
            runs.append(subprocess.Popen(command, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT))
    if hold_workspace:
        deadline = time.monotonic() + 300
        while not all(WAITING in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(run.poll() is None for run in runs), \
                "both runs should wait for the workspace:\n" + "\n".join(log.read_text()[-3000:] for log in logs)
            time.sleep(0.5)
        workspace.release()
    codes = [run.wait(timeout=600) for run in runs]
    assert codes == [0, 0], "\n".join(log.read_text()[-6000:] for log in logs)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_ids = [record.dagster_run.run_id for record in instance.get_run_records()]
        assert len(run_ids) == 2
        assert all(instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS for run_id in run_ids)
        return repo, [_intervals(instance, run_id) for run_id in run_ids]


@pytest.mark.slow
def test_two_materialisations_at_once_take_turns_and_leave_consistent_outputs(tmp_path):
    # the pools of `make ui`
    repo, runs = _materialise_twice_at_once(tmp_path, PROJECT / "orchestration/dagster.yaml", DATA_ASSETS)
    (first_steps, first_turns), (second_steps, second_turns) = runs
    assert set(first_steps) == set(second_steps) == set(first_turns) == set(second_turns) == set(DATA_ASSETS)
    # one step holds DVC's workspace at a time across both runs. (Not the whole step: the
    # "dvc" pool would give that, but two runs starting at once on SQLite storage can both
    # claim its one slot; the file lock of DvcProject.turn still holds them apart.)
    turns = [*first_turns.values(), *second_turns.values()]
    assert not _overlaps(turns), f"two steps used DVC's workspace at once: {sorted(turns)}"
    # and DVC's workspace is what dvc.lock says: every output whole and recorded
    assert dvc_changes(repo, "check_source", "download", "validate", "prepare") == {}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"download", "validate", "prepare"} <= set(lock)


@pytest.mark.slow
def test_without_a_pool_two_runs_still_take_turns_at_dvc(tmp_path):
    """An instance without the "dvc" pool limit (a DAGSTER_HOME made by hand) starts both runs'
    steps at once: DVC itself would fail the second on "'data/source.json' is busy"."""
    assets = DATA_ASSETS[:2]  # check_source and download: the race is at the first step
    repo, runs = _materialise_twice_at_once(tmp_path, None, assets, hold_workspace=True)
    (first_steps, first_turns), (second_steps, second_turns) = runs
    assert set(first_turns) == set(second_turns) == set(assets)
    # without the pool, both runs' first steps ran at once: the turns were the file lock's doing
    assert _overlaps([first_steps[assets[0]], second_steps[assets[0]]])
    turns = [*first_turns.values(), *second_turns.values()]
    assert not _overlaps(turns), f"two steps used DVC's workspace at once: {sorted(turns)}"
    assert dvc_changes(repo, "check_source", "download") == {}


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


def test_the_sensors_and_the_schedule_are_on_by_default():
    assert defs.resolve_sensor_def("record_run_failures").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_sensor_def("dvc_lock_history").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("nightly_retrain").default_status == dg.DefaultScheduleStatus.RUNNING

