"""The Dagster UI front door: a real `dagster dev` (webserver and daemon) on a free local port,
driven through the same GraphQL calls as the UI's "Materialize all" button."""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from cvae.figures import CAPTIONS
from orchestration.assets import OWNERS, STAGE_ASSETS
from orchestration.instance import write_instance_settings
from tests.conftest import BIN, make_dvc_repo, stage_env, tiny_params_dict
from tests.servers import free_ports
from tests.test_dagster import WIDE

# a real `dagster dev` materializing every asset: minutes
pytestmark = pytest.mark.slow

ALL_ASSETS = {spec.name for spec in STAGE_ASSETS.values()}
ASSET_JOB = "__ASSET_JOB"  # the implicit job over all assets that "Materialize all" launches
# within pytest's 900 s timeout (pyproject.toml); the run takes 1.5 to 3 minutes on 2 busy cores
STARTUP_SECONDS = 180
RUN_SECONDS = 600
PNG_IN_MARKDOWN = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")

WORKSPACE = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message stack }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

# What the asset graph page loads before it offers "Materialize all".
ASSET_NODES = """
query AssetNodes {
  assetNodes {
    assetKey { path }
    isMaterializable
    jobNames
    owners { __typename ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
    assetChecksOrError { __typename ... on AssetChecks { checks { name } } }
  }
}
"""

# The UI's own mutation (LaunchPipelineExecution in the webapp's bundle).
LAUNCH = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status assetMaterializations { assetKey { path } } }
    ... on PythonError { message }
  }
}
"""

RUN_LOGS = """
query RunLogs($runId: ID!) {
  logsForRun(runId: $runId, limit: 1000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level stepKey }
        ... on ExecutionStepFailureEvent { error { message stack causes { message stack } } }
        ... on RunFailureEvent { error { message stack } }
        ... on EngineEvent { error { message stack } }
      }
    }
    ... on PythonError { message }
  }
}
"""

LATEST_MATERIALIZATION = """
query LatestMaterialization($assetKey: AssetKeyInput!) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries {
          __typename
          label
          ... on MarkdownMetadataEntry { mdStr }
          ... on PathMetadataEntry { path }
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""


# The state the daemon holds for the nightly schedule and the failure sensor (the UI's toggles).
AUTOMATION_STATE = """
query Automation($schedule: ScheduleSelector!, $sensor: SensorSelector!) {
  scheduleOrError(scheduleSelector: $schedule) {
    __typename
    ... on Schedule { scheduleState { status } }
  }
  sensorOrError(sensorSelector: $sensor) {
    __typename
    ... on Sensor { sensorState { status } }
  }
}
"""


@dataclass
class Dagster:
    url: str
    log: Path
    project: Path
    location: str = ""  # the code location and repository, as the UI addresses them
    repository: str = ""

    def query(self, document: str, **variables) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": document, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:  # a malformed query: GraphQL says why in the body
            pytest.fail(f"GraphQL answered {error.code}: {error.read().decode(errors='replace')}")
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}"
        return body["data"]

    def log_tail(self, chars: int = 20_000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _wait_until_loaded(dagster: Dagster, server: subprocess.Popen) -> tuple[str, str]:
    """Poll until the webserver answers and its code location has loaded; (location, repository)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    state = "no answer"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"dagster dev exited with {server.returncode}:\n{dagster.log_tail()}")
        try:
            [entry] = dagster.query(WORKSPACE)["workspaceOrError"]["locationEntries"]
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            state = f"no answer ({error})"
        else:
            location = entry["locationOrLoadError"]
            state = f"{entry['loadStatus']}: {location}"
            if location and location["__typename"] == "PythonError":
                stack = "".join(location["stack"])
                pytest.fail(f"the code location failed to load: {location['message']}{stack}")
            if entry["loadStatus"] == "LOADED" and location:
                [repository] = location["repositories"]
                return entry["name"], repository["name"]
        time.sleep(1)
    pytest.fail(f"dagster dev not ready after {STARTUP_SECONDS}s ({state}):\n{dagster.log_tail()}")


def _stop(server: subprocess.Popen) -> None:
    """Stop dagster dev and everything it started (webserver, daemon, code server, run workers):
    all of them share its process group."""
    try:
        os.killpg(server.pid, signal.SIGTERM)  # dagster dev shuts its children down on SIGTERM
        server.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # whatever outlived it
    except ProcessLookupError:
        pass
    server.wait()


@contextmanager
def dagster_dev(repo: Path, home: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[Dagster]:
    """`dagster dev` (webserver, daemon, code server) for `repo` with the instance in `home`,
    as `make ui` starts it, from the project folder, in a session of its own to stop as one group."""
    port = free_ports(1)[0]
    dagster = Dagster(url=f"http://127.0.0.1:{port}", log=log, project=repo)
    env = {**stage_env(), **(env or {}), "DAGSTER_HOME": str(home), "CVAE_PROJECT_DIR": str(repo)}
    with dagster.log.open("a") as out:
        server = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-m", "orchestration.definitions",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        dagster.location, dagster.repository = _wait_until_loaded(dagster, server)
        yield dagster
    finally:
        _stop(server)


@pytest.fixture
def dagster_ui(tmp_path) -> Iterator[Dagster]:
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(validate={"prevalence": WIDE}))
    home = tmp_path / "dagster_home"
    write_instance_settings(home, environ={})  # as `make ui` does with no servers configured
    with dagster_dev(repo, home, tmp_path / "dagster-dev.log") as dagster:
        yield dagster


def _materialize_all(dagster: Dagster, only: set[str] | None = None) -> str:
    """Launch a run as the UI's "Materialize all" does (or "Materialize selected", of `only`)."""
    nodes = [node for node in dagster.query(ASSET_NODES)["assetNodes"] if node["isMaterializable"]]
    assert {"/".join(node["assetKey"]["path"]) for node in nodes} == ALL_ASSETS
    nodes = [node for node in nodes if only is None or "/".join(node["assetKey"]["path"]) in only]
    for node in nodes:
        assert ASSET_JOB in node["jobNames"]
        assert [owner.get("team") or owner.get("email") for owner in node["owners"]] == [
            owner.removeprefix("team:") for owner in OWNERS
        ]
    params = {
        "mode": "default",
        "runConfigData": "{}",
        "executionMetadata": {"tags": []},
        "selector": {
            "repositoryLocationName": dagster.location,
            "repositoryName": dagster.repository,
            "pipelineName": ASSET_JOB,
            "assetSelection": [{"path": node["assetKey"]["path"]} for node in nodes],
            "assetCheckSelection": [
                {"name": check["name"], "assetKey": {"path": node["assetKey"]["path"]}}
                for node in nodes
                if node["assetChecksOrError"]["__typename"] == "AssetChecks"
                for check in node["assetChecksOrError"]["checks"]
            ],
        },
    }
    launched = dagster.query(LAUNCH, executionParams=params)["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _run_failure_report(dagster: Dagster, run_id: str) -> str:
    logs = dagster.query(RUN_LOGS, runId=run_id)["logsForRun"]
    lines = []
    for event in logs.get("events", []):
        error = event.get("error")
        if error or event.get("level") in ("ERROR", "CRITICAL"):
            lines.append(f"[{event['__typename']} {event.get('stepKey')}] {event.get('message')}")
            if error:
                lines.append(f"{error['message']}{''.join(error['stack'])}")
                causes = error.get("causes") or []
                lines += [f"caused by: {cause['message']}{''.join(cause['stack'])}" for cause in causes]
    return "\n".join(lines) or json.dumps(logs)[-20_000:]


def _wait_for_run(dagster: Dagster, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        run = dagster.query(RUN, runId=run_id)["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] == "SUCCESS":
            return run
        if run["status"] in ("FAILURE", "CANCELED"):
            pytest.fail(f"run {run_id} ended {run['status']}:\n{_run_failure_report(dagster, run_id)}")
        time.sleep(3)
    pytest.fail(f"run {run_id} still {run['status']} after {RUN_SECONDS}s:\n"
                f"{_run_failure_report(dagster, run_id)}\n{dagster.log_tail()}")


def _latest_metadata(dagster: Dagster, asset: str, run_id: str) -> dict[str, dict]:
    asset_or_error = dagster.query(LATEST_MATERIALIZATION, assetKey={"path": [asset]})["assetOrError"]
    assert asset_or_error["__typename"] == "Asset", asset_or_error
    [latest] = asset_or_error["assetMaterializations"]
    assert latest["runId"] == run_id
    return {entry["label"]: entry for entry in latest["metadataEntries"]}


def _assert_embeds_a_png(markdown: str) -> None:
    [encoded] = PNG_IN_MARKDOWN.findall(markdown)
    try:
        data = base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        pytest.fail(f"the embedded PNG is not valid base64: {error}")
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.verify()


def test_materialize_all_in_the_ui_shows_figures_and_metrics(dagster_ui):
    # left on by default: the daemon of a fresh `make ui` runs them without anyone switching them on
    where = {"repositoryLocationName": dagster_ui.location, "repositoryName": dagster_ui.repository}
    state = dagster_ui.query(AUTOMATION_STATE, schedule={**where, "scheduleName": "nightly_retrain"},
                             sensor={**where, "sensorName": "record_run_failures"})
    assert state["scheduleOrError"]["scheduleState"]["status"] == "RUNNING", state
    assert state["sensorOrError"]["sensorState"]["status"] == "RUNNING", state

    run_id = _materialize_all(dagster_ui)
    run = _wait_for_run(dagster_ui, run_id)
    assert {"/".join(event["assetKey"]["path"]) for event in run["assetMaterializations"]} == ALL_ASSETS

    figures = _latest_metadata(dagster_ui, "figures", run_id)
    for name in CAPTIONS:  # read now: the figure list grows
        stem = Path(name).stem
        assert figures[stem]["__typename"] == "MarkdownMetadataEntry", (stem, figures.get(stem))
        _assert_embeds_a_png(figures[stem]["mdStr"])
        path = figures[f"{stem}_path"]
        assert path["__typename"] == "PathMetadataEntry"
        assert Path(path["path"]).name == name and Path(path["path"]).is_file()

    metrics = _latest_metadata(dagster_ui, "evaluation_metrics", run_id)
    floats = {label: entry["floatValue"] for label, entry in metrics.items()
              if entry["__typename"] == "FloatMetadataEntry"}
    assert all(isinstance(value, float) for value in floats.values()), floats
    written = json.loads((dagster_ui.project / "reports/metrics.json").read_text())
    assert floats["mse"] == written["mse"] and floats["fidelity/mean"] == written["fidelity"]["mean"]

    promotion = _latest_metadata(dagster_ui, "production_model", run_id)
    assert promotion["decision"]["text"] == "promoted"
    assert (dagster_ui.project / "models/production").resolve().name == promotion["production_version"]["text"]

    report = _latest_metadata(dagster_ui, "validation_report", run_id)["report"]
    assert report["__typename"] == "PathMetadataEntry"
    assert report["path"].endswith("reports/validation/summary.md") and Path(report["path"]).is_file()
