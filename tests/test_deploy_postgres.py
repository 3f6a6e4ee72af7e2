"""A team's Dagster: the instance settings that the environment selects, and the webserver and
daemon on a real PostgreSQL server, across a restart."""

from __future__ import annotations

import time

import dagster as dg
import pytest
import yaml

from orchestration.assets import STAGE_ASSETS, VALIDATION_CHECK
from orchestration.dvc_history import DATA_VERSION_TAG, RECORDED_BY_DVC, SOURCE_TAG
from orchestration.dvc_pipeline import data_version, recorded_outputs
from orchestration.instance import instance_settings, write_instance_settings
from tests.conftest import dvc, make_dvc_repo, tiny_params_dict
from tests.servers import postgres_server
from tests.test_dagster import WIDE
from tests.test_dagster_runs import _intervals, _overlaps
from tests.test_dagster_ui import ALL_ASSETS, _materialize_all, _wait_for_run, dagster_dev

PG_ENV = {"DAGSTER_PG_HOST": "db.example", "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "secret"}
DATA_STAGES = ("check_source", "download", "validate", "prepare")
DATA_ASSETS = {STAGE_ASSETS[stage].name for stage in DATA_STAGES}
SENSOR_SECONDS = 180  # the daemon ticks the sensor every 30 s at most; allow for a busy machine


def test_no_environment_keeps_the_embedded_sqlite_instance(tmp_path):
    settings = instance_settings(tmp_path, environ={})
    assert "storage" not in settings and "compute_logs" not in settings  # Dagster's defaults: SQLite, local
    assert settings["concurrency"]["pools"]["default_limit"] == 1


def test_postgres_settings_name_the_variables_not_their_values(tmp_path):
    written = write_instance_settings(tmp_path, environ={**PG_ENV, "DAGSTER_PG_PORT": "6543"})
    text = (tmp_path / "dagster.yaml").read_text()
    assert "secret" not in text and "db.example" not in text
    database = yaml.safe_load(text)["storage"]["postgres"]["postgres_db"]
    assert database == written["storage"]["postgres"]["postgres_db"]
    assert database["scheme"] == "postgresql+psycopg2"  # not SQLAlchemy 2.1's psycopg 3 default
    assert database["password"] == {"env": "DAGSTER_PG_PASSWORD"} and database["port"] == {"env": "DAGSTER_PG_PORT"}
    assert database["db_name"] == "dagster"


def test_postgres_without_credentials_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="DAGSTER_PG_PASSWORD must be set"):
        instance_settings(tmp_path, environ={"DAGSTER_PG_HOST": "db", "DAGSTER_PG_USER": "u"})


def test_s3_step_logs_follow_the_bucket_and_endpoint(tmp_path):
    settings = instance_settings(tmp_path, environ={"CVAE_LOGS_S3_BUCKET": "logs", "AWS_ENDPOINT_URL": "http://s3"})
    logs = settings["compute_logs"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    assert logs["config"]["bucket"] == {"env": "CVAE_LOGS_S3_BUCKET"}
    assert logs["config"]["endpoint_url"] == {"env": "AWS_ENDPOINT_URL"}
    assert "endpoint_url" not in instance_settings(tmp_path, environ={"CVAE_LOGS_S3_BUCKET": "b"})["compute_logs"]["config"]


AUTOMATION = """
query Automation($schedule: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $schedule) {
    __typename
    ... on Schedule { id scheduleState { status } }
  }
}
"""

STOP_SCHEDULE = """
mutation Stop($id: String) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}
"""

LATEST = """
query Latest($assetKey: AssetKeyInput!) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset { assetMaterializations(limit: 1) { runId tags { key value } } }
  }
}
"""

RUNS = """
query Runs {
  runsOrError { __typename ... on Runs { results { runId status } } }
}
"""

CHECKS = """
query Checks($assetKey: AssetKeyInput!, $checkName: String!) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, limit: 5) { runId status }
}
"""


def _latest(dagster, asset: str) -> dict | None:
    found = dagster.query(LATEST, assetKey={"path": [asset]})["assetOrError"]
    if found["__typename"] != "Asset" or not found["assetMaterializations"]:
        return None
    [latest] = found["assetMaterializations"]
    return {"run_id": latest["runId"], "tags": {tag["key"]: tag["value"] for tag in latest["tags"]}}


def _schedule(dagster) -> dict:
    selector = {"repositoryLocationName": dagster.location, "repositoryName": dagster.repository,
                "scheduleName": "nightly_retrain"}
    found = dagster.query(AUTOMATION, schedule=selector)["scheduleOrError"]
    assert found["__typename"] == "Schedule", found
    return found


@pytest.mark.slow
def test_dagster_on_postgres_sees_dvc_runs_keeps_pools_and_survives_a_restart(tmp_path, monkeypatch):
    with postgres_server() as postgres:
        for name, value in postgres.env().items():
            monkeypatch.setenv(name, value)  # this process reads the instance too
        repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(validate={"prevalence": WIDE}))
        dvc(repo, "repro", "prepare")  # the data stages outside Dagster, as `make run` starts
        home = tmp_path / "dagster_home"
        settings = write_instance_settings(home, environ=postgres.env())
        assert "postgres" in settings["storage"]
        log = tmp_path / "dagster-dev.log"

        with dagster_dev(repo, home, log, env=postgres.env()) as dagster:
            # the daemon's dvc.lock sensor shows what `dvc repro` did, with its hashes as versions
            deadline = time.monotonic() + SENSOR_SECONDS
            while not all(_latest(dagster, asset) for asset in DATA_ASSETS):
                assert time.monotonic() < deadline, f"not every data asset reported:\n{dagster.log_tail()}"
                time.sleep(2)
            for stage in DATA_STAGES:
                latest = _latest(dagster, STAGE_ASSETS[stage].name)
                assert latest["run_id"] == "" and latest["tags"][SOURCE_TAG] == RECORDED_BY_DVC, latest
                assert latest["tags"][DATA_VERSION_TAG] == data_version(recorded_outputs(repo, stage)).value
            assert not any(_latest(dagster, asset) for asset in ALL_ASSETS - DATA_ASSETS)  # never run

            stopped = dagster.query(STOP_SCHEDULE, id=_schedule(dagster)["id"])["stopRunningSchedule"]
            assert stopped["__typename"] == "ScheduleStateResult", stopped
            run_id = _materialize_all(dagster, only=DATA_ASSETS)  # DVC skips them: its cache has them
            _wait_for_run(dagster, run_id)

            # two runs launched together: the "dvc" pool (one slot) holds whole steps apart, since
            # PostgreSQL honours the SELECT ... FOR UPDATE that claims a slot
            pair = [_materialize_all(dagster, only=DATA_ASSETS) for _ in range(2)]
            for launched in pair:
                _wait_for_run(dagster, launched)

        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert not list(home.glob("**/*.db")), "the instance wrote SQLite files beside PostgreSQL"
            steps = [_intervals(instance, launched)[0] for launched in pair]
            assert set(steps[0]) == set(steps[1]) == DATA_ASSETS
            spans = [*steps[0].values(), *steps[1].values()]
            assert not _overlaps(spans), f"two steps ran at once despite the pool: {sorted(spans)}"

        with dagster_dev(repo, home, log, env=postgres.env()) as dagster:  # webserver and daemon again
            assert _schedule(dagster)["scheduleState"]["status"] == "STOPPED"
            assert _latest(dagster, "source_fingerprint")["run_id"] in pair
            assert len(dagster.query(RUNS)["runsOrError"]["results"]) == 3
            checks = dagster.query(CHECKS, assetKey={"path": [STAGE_ASSETS["validate"].name]},
                                   checkName=VALIDATION_CHECK)["assetCheckExecutions"]
            assert {(check["runId"], check["status"]) for check in checks} >= {(run_id, "SUCCEEDED")}
