"""The Dagster front door: real definitions, real DVC runs in a temporary git repo."""

import json
import re
import shutil
from datetime import UTC, datetime

import dagster as dg
import pytest
import yaml

from cvae.core.celeba import ATTRIBUTE_FILE
from orchestration.assets import OWNERS, STAGE_ASSETS, VALIDATION_CHECK, WARNINGS_CHECK, build_stage_assets
from orchestration.definitions import defs
from orchestration.dvc_history import dvc_lock_history
from orchestration.dvc_pipeline import DvcProject, read_stages
from orchestration.gpu_pod import GpuPod
from orchestration.schedules import nightly_retrain
from tests.conftest import BIN, DVC, PROJECT, dvc, dvc_changes, make_dvc_repo, run, tiny_params_dict

# Wide prevalence bounds: 96 drawn faces may miss the default bounds by chance.
WIDE = {"Male": [0.0, 1.0], "Smiling": [0.0, 1.0], "Eyeglasses": [0.0, 1.0]}


def resources(repo):
    return {"dvc": DvcProject(project_dir=str(repo), dvc_executable=DVC),
            "pipes_subprocess_client": dg.PipesSubprocessClient(), "gpu_pod": GpuPod(image="")}


def materialized(result):
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def check_evaluations(result):
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


@pytest.mark.slow
def test_definitions_load_in_dagster_tooling(tmp_path, monkeypatch):
    # the same loader `dagster dev` and the webserver use, with an instance of its own
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    dagster = BIN / "dagster"
    result = run([str(dagster), "definitions", "validate", "-m", "orchestration.definitions"], PROJECT)
    assert "Validation successful" in result.stdout + result.stderr


def test_asset_graph_agrees_with_dvc_dag(tmp_path):
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict())
    edges = set(re.findall(r'"(\w+)" -> "(\w+)"', dvc(repo, "dag", "--dot").stdout))
    dvc_edges = {(STAGE_ASSETS[a].name, STAGE_ASSETS[b].name) for a, b in edges}
    graph = defs.resolve_asset_graph()
    dagster_edges = {
        (parent.to_user_string(), key.to_user_string())
        for key in graph.get_all_asset_keys()
        for parent in graph.get(key).parent_keys
    }
    assert dagster_edges == dvc_edges
    # with check_source -> download, train_classifier (prepare -> it -> evaluate) and promote
    # (after prepare, both models and evaluate)
    assert len(dvc_edges) == 15


def test_every_asset_has_an_owner():
    graph = defs.resolve_asset_graph()
    owners = {key.to_user_string(): graph.get(key).owners for key in graph.get_all_asset_keys()}
    assert owners == {spec.name: OWNERS for spec in STAGE_ASSETS.values()}
    assert OWNERS and all(owner.startswith("team:") or "@" in owner for owner in OWNERS)


def test_a_stage_without_an_asset_fails_the_import(tmp_path):
    spec = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    spec["stages"]["export"] = {"desc": "Exported models.", "cmd": "cvae export", "deps": ["models/cvae.keras"],
                                "outs": ["export"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"disagree on stages: \['export'\]"):
        build_stage_assets(tmp_path / "dvc.yaml")


def test_each_asset_is_described_by_its_stage_desc_in_dvc_yaml():
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    graph = defs.resolve_asset_graph()
    descriptions = {key.to_user_string(): graph.get(key).description for key in graph.get_all_asset_keys()}
    assert descriptions == {STAGE_ASSETS[name].name: body["desc"] for name, body in stages.items()}


def test_a_stage_without_a_desc_fails_the_import(tmp_path):
    spec = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    del spec["stages"]["prepare"]["desc"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"stages \['prepare'\] have no desc"):
        build_stage_assets(tmp_path / "dvc.yaml")


def test_asset_metadata_reads_paths_from_the_stage_command(tmp_path):
    stages = read_stages(PROJECT / "dvc.yaml")
    assert stages["train"].path("--model") == "models/cvae.keras"
    assert stages["promote"].path("--production") == "models/production"
    with pytest.raises(ValueError, match=r"stage train's cmd has no --figures option"):
        stages["train"].path("--figures")
    # a path moved in dvc.yaml moves what the asset reads
    spec = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    spec["stages"]["evaluate"]["cmd"] = spec["stages"]["evaluate"]["cmd"].replace("reports/metrics.json",
                                                                                  "elsewhere/scores.json")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/scores.json").write_text(json.dumps({"fidelity": {"mean": 0.5}}))
    evaluate = read_stages(tmp_path / "dvc.yaml")["evaluate"]
    assert STAGE_ASSETS["evaluate"].describe(tmp_path, evaluate)["fidelity/mean"].value == 0.5


def test_the_nightly_schedule_requests_a_retraining_run():
    assert nightly_retrain.cron_schedule == "0 2 * * *"
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 25, 2, tzinfo=UTC))
    requests = nightly_retrain.evaluate_tick(context).run_requests
    assert len(requests) == 1
    assert nightly_retrain.job_name == "retrain"
    job = defs.resolve_job_def("retrain")
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == {
        spec.name for spec in STAGE_ASSETS.values()
    }


@pytest.mark.slow
def test_materializing_everything_leaves_dvc_clean(tmp_path):
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(validate={"prevalence": WIDE}))
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(defs.assets, resources=resources(repo), instance=instance)
    assert result.success
    assert materialized(result) == {spec.name for spec in STAGE_ASSETS.values()}
    assert dvc_changes(repo) == {}
    # Dagster's own runs wrote dvc.lock: the dvc.lock sensor finds nothing it has not seen
    tick = dvc_lock_history(dg.build_sensor_context(instance=instance, resources=resources(repo)))
    assert not tick.asset_events, [event.asset_key for event in tick.asset_events]

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    by_asset = {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    model = by_asset["cvae_model"].metadata
    assert model["dvc_lock_md5"].data == {out["path"]: out["md5"] for out in lock["train"]["outs"]}
    figures = by_asset["figures"].metadata
    assert figures["samples"].value.count("data:image/png;base64,") == 1
    assert figures["samples_path"].value.endswith("reports/figures/samples.png")
    metrics = by_asset["evaluation_metrics"].metadata
    written = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["mse"].value == written["mse"]
    assert metrics["fidelity/mean"].value == written["fidelity"]["mean"]
    assert metrics["edit/Smiling/success"].value == written["edit"]["Smiling"]["success"]
    judge = by_asset["attribute_classifier"].metadata
    assert judge["mean_accuracy"].value == json.loads((repo / "reports/classifier.json").read_text())["mean_accuracy"]
    checks = check_evaluations(result)
    assert {name: check.passed for name, check in checks.items()} == {VALIDATION_CHECK: True, WARNINGS_CHECK: True}
    promotion = by_asset["production_model"].metadata
    decision = json.loads((repo / "reports/promotion.json").read_text())
    assert (promotion["decision"].value, promotion["reason"].value) == ("promoted", "no production model yet")
    assert promotion["production_version"].value == decision["production"]
    assert f"cvae studio --model {repo / 'models/production/cvae.keras'}" in promotion["open_in_studio"].value
    assert (repo / "models/production").resolve() == repo / "models/registry" / decision["production"]
    assert model["dvc_reran"].value is True and model["dvc_run"].value.startswith("ran: ")

    assert by_asset["source_fingerprint"].metadata["source_changed"].value is True  # the first check

    # the next night, nothing changed: the source is re-checked, every other stage is skipped,
    # and the metadata says so
    again = dg.materialize(defs.assets, resources=resources(repo))
    metadata = {e.asset_key.to_user_string(): e.materialization.metadata for e in again.get_asset_materialization_events()}
    assert len(metadata) == len(STAGE_ASSETS)
    source = metadata.pop("source_fingerprint")
    assert source["source_changed"].value is False
    assert source["dvc_run"].value.startswith("re-checked: unchanged: nothing to retrain")
    reran = {asset: entries["dvc_reran"].value for asset, entries in metadata.items()}
    assert reran == dict.fromkeys(reran, False), reran
    assert metadata["cvae_model"]["dvc_run"].value.startswith("skipped: ")

    # retrain.force: the model is trained again although nothing changed, and goes through the gate
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["retrain"]["force"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    forced = dg.materialize(defs.assets, resources=resources(repo))
    by_asset = {e.asset_key.to_user_string(): e.materialization for e in forced.get_asset_materialization_events()}
    assert by_asset["cvae_model"].metadata["dvc_run"].value == "ran: forced by retrain.force"
    assert not by_asset["raw_images"].metadata["dvc_reran"].value
    gate = by_asset["production_model"].metadata
    assert gate["previous_production_version"].value == decision["production"]
    assert {check["metric"] for check in gate["gate"].data} == set(params["retrain"]["gate"])
    assert "challenger/fidelity/mean" in gate and "production/fidelity/mean" in gate


@pytest.mark.slow
def test_bad_data_fails_the_blocking_check_and_nothing_downstream_runs(tmp_path, synthetic_root):
    delivery = tmp_path / "delivery"
    shutil.copytree(synthetic_root, delivery)
    lines = (delivery / ATTRIBUTE_FILE).read_text().splitlines()
    image_id, _, *rest = lines[2].split()
    lines[2] = " ".join([image_id, "7", *rest])  # a value outside {-1, 1} on the first row
    (delivery / ATTRIBUTE_FILE).write_text("\n".join(lines) + "\n")
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(data={"source": str(delivery)}))

    result = dg.materialize(defs.assets, resources=resources(repo), raise_on_error=False)
    assert not result.success
    check = check_evaluations(result)[VALIDATION_CHECK]
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.ERROR)
    failed = check.metadata["failed_expectations"].data
    assert any(f["column"] == "Bald" and f["examples"] == ["000001.jpg: 7"] for f in failed)
    assert materialized(result) == {"source_fingerprint", "raw_images", "validation_report"}
    assert not (repo / "data/prepared").exists() and not (repo / "models/cvae.keras").exists()


@pytest.mark.slow
def test_a_prevalence_warning_fails_the_warning_check_and_downstream_still_runs(tmp_path):
    shifted = {**WIDE, "Male": [0.95, 1.0]}  # as if the nightly delivery had lost most men
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(validate={"prevalence": shifted}))
    selection = dg.AssetSelection.assets("source_fingerprint", "raw_images", "validation_report", "prepared_images")

    result = dg.materialize(defs.assets, selection=selection, resources=resources(repo))
    assert result.success
    checks = check_evaluations(result)
    assert checks[VALIDATION_CHECK].passed
    warning = checks[WARNINGS_CHECK]
    assert (warning.passed, warning.severity) == (False, dg.AssetCheckSeverity.WARN)
    [male] = warning.metadata["warnings"].data
    assert male["column"] == "Male" and male["observed"] == warning.metadata["attribute_shares"].data["Male"]
    assert materialized(result) == {"source_fingerprint", "raw_images", "validation_report", "prepared_images"}
    assert (repo / "data/prepared/meta.json").exists()
