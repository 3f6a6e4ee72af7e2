"""`dvc repro` end to end on the tiny synthetic set, in a temporary git repo."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cvae.core.celeba import ATTRIBUTE_FILE, CELEBA_ATTRIBUTES, load_attributes
from cvae.core.config import load_params
from cvae.figures import CAPTIONS, SHOWS_KEY
from cvae.source.synthetic import VISIBLE_ATTRIBUTES
from tests.conftest import BIN, PROJECT, dvc, dvc_changes, make_dvc_repo, run, tiny_params_dict

# every test here runs `dvc repro` (all of it, or a part) in a fresh project: minutes each
pytestmark = pytest.mark.slow

STAGES = ("check_source", "download", "validate", "prepare", "train", "train_classifier", "evaluate", "promote",
          "visualize")
ALWAYS = "check_source"  # re-checks the source on every run (always_changed); the rest follow its output


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    repo = make_dvc_repo(tmp_path_factory.mktemp("dvc") / "project", tiny_params_dict())
    first = dvc(repo, "repro")
    return repo, first


def stale_stages(repo):
    return set(dvc_changes(repo))


def test_repro_runs_every_stage_and_writes_the_outputs(reproduced):
    repo, first = reproduced
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    # long steps report progress as plain lines when the output is a log, not a terminal
    logged = first.stdout + first.stderr
    judged = len(VISIBLE_ATTRIBUTES)  # every attribute of the data, since params name none
    assert re.search(r"^\d+/\d+ - \d+s - .*val_neg_elbo", logged, re.MULTILINE)  # Keras: a line per epoch
    for line in ("download: synthetic faces: 96/96", "prepare: 1/",
                 f"evaluate: fidelity: {judged}/{judged}", f"evaluate: edits: {judged}/{judged}",
                 f"visualize: {len(CAPTIONS)}/{len(CAPTIONS)}"):
        assert line in logged, line
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert {"mse", "kl_nats", "neg_elbo_nats", "bits_per_dim", "mean_image_mse", "mse_vs_mean_image"} <= set(metrics)
    assert set(metrics["fidelity"]) == {"mean", *VISIBLE_ATTRIBUTES}
    assert all(0.0 <= value <= 1.0 for value in metrics["fidelity"].values())
    assert set(metrics["reconstruction_fidelity"]) == {"mean", *VISIBLE_ATTRIBUTES}
    assert set(metrics["edit"]) == {"mean", *VISIBLE_ATTRIBUTES}
    assert set(metrics["edit"]["Smiling"]) == set(metrics["edit"]["mean"]) == {"success", "others_kept", "pixel_mse",
                                                                                  "success_ceiling"}
    classifier = json.loads((repo / "reports/classifier.json").read_text())
    assert set(classifier["attributes"]) == set(VISIBLE_ATTRIBUTES)
    assert set(classifier["attributes"]["Smiling"]) == {"accuracy", "balanced_accuracy", "prevalence", "recall_present",
                                                          "recall_absent", "threshold"}
    # read at thresholds fitted on the validation faces, not at even odds
    assert any(scores["threshold"] != 0 for scores in classifier["attributes"].values())
    assert (repo / "models/cvae.keras").stat().st_size > 0
    for name in CAPTIONS:
        with Image.open(repo / "reports/figures" / name) as image:
            assert image.format == "PNG"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)


def test_status_is_clean_and_a_second_repro_runs_nothing(reproduced):
    repo, _ = reproduced
    assert stale_stages(repo) == set()
    second = dvc(repo, "repro")
    assert stages_run(second.stdout) == {ALWAYS}  # the source re-checked, found unchanged: nothing else
    assert stale_stages(repo) == set()


def stages_run(output):
    return set(re.findall(r"Running stage '(\w+)'", output))


def stages_rerun(output):
    """The stages a repro redid beyond the source check, which runs every time: those it ran,
    and those it restored from the run-cache (the same params ran before, in another test)."""
    ran = stages_run(output)
    assert ALWAYS in ran
    restored = set(re.findall(r"Stage '(\w+)' is cached - skipping run", output))
    return (ran | restored) - {ALWAYS}


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("train", "beta", 0.5, {"train", "evaluate", "promote", "visualize"}),
        ("visualize", "samples", 9, {"visualize"}),
        ("classifier", "epochs", 2, {"train_classifier", "evaluate", "promote"}),
    ],
)
def test_a_changed_param_reruns_its_stages_and_their_descendants_only(reproduced, section, key, value, expected):
    repo, _ = reproduced
    path = repo / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert stages_rerun(dvc(repo, "repro").stdout) == expected
    finally:
        path.write_text(original)
        dvc(repo, "repro")  # back to the original outputs (from DVC's run cache)
    assert stale_stages(repo) == set()


@pytest.mark.parametrize("edited, expected", [
    ("cvae/figures.py", {"visualize"}),
    ("cvae/model/cvae.py", {"train", "evaluate", "promote", "visualize"}),
    ("cvae/quality/classifier.py", {"train_classifier", "evaluate", "promote"}),
])
def test_editing_code_reruns_the_stages_that_run_it_and_no_other(reproduced, edited, expected):
    repo, _ = reproduced
    path = repo / edited
    original = path.read_text()
    path.write_text(original + "\n# edited\n")  # the stages run the installed copy: same behaviour
    try:
        assert stages_run(dvc(repo, "repro").stdout) - {ALWAYS} == expected
    finally:
        path.write_text(original)
        dvc(repo, "repro")  # back to the original outputs (from DVC's run cache)
    assert stale_stages(repo) == set()


def test_the_registry_records_the_code_that_trained_its_model(reproduced):
    repo, _ = reproduced
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]
    locked = {dep["path"]: dep["md5"] for dep in lock["deps"] if dep["path"].endswith(".py")}
    model_md5 = next(out["md5"] for out in lock["outs"] if out["path"] == "models/cvae.keras")
    versions = [json.loads(path.read_text()) for path in (repo / "models" / "registry").glob("*/provenance.json")]
    provenance = next(p for p in versions if p["dvc_lock_md5"]["models/cvae.keras"] == model_md5)
    assert "cvae/model/cvae.py" in provenance["train_code_md5"]
    assert provenance["train_code_md5"] == locked


def locked_outputs(repo) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_every_figure_records_the_commit_params_model_and_data_it_came_from(reproduced):
    repo, _ = reproduced
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    params = load_params(repo / "params.yaml").model_dump()
    params_hash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    locked = locked_outputs(repo)
    for name in CAPTIONS:
        with Image.open(repo / "reports/figures" / name) as image:
            text = dict(image.text)
        assert text["cvae:git_commit"] == head, name
        assert text["cvae:params_sha256"] == params_hash, name
        assert text["cvae:model_dvc_lock_md5"] == locked["models/cvae.keras"] == text["cvae:model_md5"], name
        assert text["cvae:data_dvc_lock_md5"] == locked["data/prepared"], name
    printed = run([str(BIN / "cvae"), "provenance", "reports/figures/samples.png"], repo).stdout
    assert f"git_commit: {head}\n" in printed and f"data_dvc_lock_md5: {locked['data/prepared']}\n" in printed


def test_dvc_plots_render_the_training_curves_and_every_figure(reproduced, tmp_path):
    repo, _ = reproduced
    shown = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    images = {Path(key).name for key, entries in shown.items() if entries[0]["type"] == "image"}
    assert images == set(CAPTIONS)
    curves = {key: entries[0]["content"] for key, entries in shown.items() if entries[0]["type"] == "vega"}
    assert set(curves) == {"neg_elbo", "objective", "mse", "kl"}  # each its own chart, none replaced
    for key, content in curves.items():
        column = "loss" if key == "objective" else key
        assert {row["field"] for row in content["data"]["values"]} == {column, f"val_{column}"}
    dvc(repo, "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "val_neg_elbo" in page and "samples.png" in page


def test_dvc_metrics_show_and_diff_across_commits(reproduced):
    repo, _ = reproduced
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    (workspace,) = (revision["data"] for revision in shown.values())  # one revision: the workspace
    assert workspace["reports/metrics.json"]["data"]["fidelity"]["mean"] >= 0.0
    assert "attributes" in workspace["reports/classifier.json"]["data"]
    # commit the metrics, change what evaluate does, compare; then put everything back
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    path = repo / "params.yaml"
    original = path.read_text()
    run(["git", "add", "-f", "dvc.lock", "reports/metrics.json", "reports/classifier.json"], repo)
    run(["git", "commit", "-q", "-m", "metrics"], repo)
    try:
        params = yaml.safe_load(original)
        params["evaluate"]["edit_attributes"] = ["Male"]
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        dvc(repo, "repro", "evaluate")
        diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
        changed = diff["reports/metrics.json"]
        assert "edit.Smiling.success" in changed and changed["edit.Smiling.success"]["new"] is None
    finally:
        path.write_text(original)
        dvc(repo, "repro")
        run(["git", "reset", "-q", head], repo)  # the commit goes; the files stay as reproduced
    assert stale_stages(repo) == set()


def test_dvc_exp_run_with_a_param_and_exp_show(reproduced):
    repo, _ = reproduced
    run(["git", "add", "-f", "dvc.lock"], repo)
    run(["git", "commit", "-q", "-m", "baseline"], repo)
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    try:
        # DVC's own environment (antlr 4.9, see DESIGN.md), the project's `cvae` on PATH
        ran = dvc(repo, "exp", "run", "-S", "train.beta=0.5", "-n", "beta-half")
        assert stages_rerun(ran.stdout) == {"train", "evaluate", "promote", "visualize"}
        shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
        experiments = [exp for entry in shown for group in (entry.get("experiments") or [])
                       for exp in group["revs"]]
        (ours,) = [exp for exp in experiments if exp.get("name") == "beta-half"]
        data = ours["data"]
        assert data["params"]["params.yaml"]["data"]["train"]["beta"] == 0.5
        assert "fidelity" in data["metrics"]["reports/metrics.json"]["data"]
    finally:
        run(["git", "checkout", "-q", "--", "params.yaml"], repo)
        dvc(repo, "repro")  # the baseline's outputs again, from the run cache
        run(["git", "reset", "-q", head + "~1"], repo)  # the baseline commit goes; files stay
    assert stale_stages(repo) == set()


def test_push_wipe_and_pull_through_the_default_local_remote(reproduced):
    repo, _ = reproduced
    shutil.copy(PROJECT / ".dvc" / "config", repo / ".dvc" / "config")  # the project's default remote
    remote = (repo / ".dvc" / "../../cvae-dvc-remote").resolve()
    assert remote.parent == repo.parent  # beside the project, not inside it
    dvc(repo, "push")
    assert any(remote.rglob("*")), "nothing was pushed"
    before = locked_outputs(repo)
    model_bytes = (repo / "models/cvae.keras").read_bytes()
    shutil.rmtree(repo / ".dvc" / "cache")
    registered = sorted(path.name for path in (repo / "models/registry").iterdir())
    for output in ("data/raw", "data/prepared", "reports/validation", "reports/figures", "models/cvae.keras",
                   "models/classifier.keras", "models/registry"):
        target = repo / output
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    assert stale_stages(repo)  # the outputs are gone
    dvc(repo, "pull")
    assert stale_stages(repo) == set()
    assert locked_outputs(repo) == before
    assert (repo / "models/cvae.keras").read_bytes() == model_bytes
    # the registry travels too: every model kept, with the gate's audit trail
    assert sorted(path.name for path in (repo / "models/registry").iterdir()) == registered


def test_a_changed_source_folder_reruns_download_and_an_unchanged_one_does_not(tmp_path, synthetic_root):
    delivery = tmp_path / "delivery"
    shutil.copytree(synthetic_root, delivery)
    settings = tiny_params_dict(data={"source": str(delivery)})
    settings["validate"]["prevalence"] = {}  # 48 faces: the bounds are not the point here
    repo = make_dvc_repo(tmp_path / "project", settings)
    assert {"download", "validate", "prepare"} <= stages_rerun(dvc(repo, "repro", "prepare").stdout)
    # the next night, the same files: the source is re-checked and nothing else runs
    assert stages_rerun(dvc(repo, "repro", "prepare").stdout) == set()
    # one image re-saved with other bytes (same name, same size class): the delivery changed
    image = sorted((delivery / "img_align_celeba").iterdir())[0]
    with Image.open(image) as face:
        face.rotate(180).save(image, quality=90)
    rerun = stages_rerun(dvc(repo, "repro", "prepare").stdout)
    assert {"download", "validate", "prepare"} <= rerun, rerun
    record = json.loads((repo / "data/source.json").read_text())
    assert (record["kind"], record["files"]) == ("directory", sum(1 for p in delivery.rglob("*") if p.is_file()))


def test_a_labelled_set_with_other_names_runs_end_to_end_with_only_the_source_changed(tmp_path):
    repo = make_dvc_repo(tmp_path / "project", tiny_params_dict(data={"source": "shapes"}))
    dvc(repo, "repro")
    names = load_attributes(repo / "data/raw" / ATTRIBUTE_FILE).names
    assert "Circle" in names and not set(names) & set(CELEBA_ATTRIBUTES)
    assert (repo / "models/cvae.keras").stat().st_size > 0 and (repo / "models/production").exists()
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics["fidelity"]) == set(metrics["edit"]) == {"mean", *names}
    assert {"grid_artifact_rate", "frechet_distance"} <= set(metrics["samples"])
    assert json.loads((repo / "reports/promotion.json").read_text())["decision"] == "promoted"
    shown = {}
    for name in CAPTIONS:
        with Image.open(repo / "reports/figures" / name) as image:
            assert image.format == "PNG"
            if SHOWS_KEY in image.text:
                shown[name] = json.loads(image.text[SHOWS_KEY])
    assert len(shown) == 4  # the conditional rows, the sweep, the edits and the latent map
    for name, chosen in shown.items():
        settings = chosen.values() if isinstance(chosen, dict) else [chosen]
        assert {attribute for setting in settings for attribute in setting} <= set(names), name


def test_dagster_sees_what_dvc_repro_ran_once(reproduced):
    """`dvc repro` outside Dagster: the dvc.lock sensor reports every stage as a materialisation
    of its asset, with the lock's hashes as data version; an unchanged lock reports nothing."""
    import dagster as dg

    from orchestration.assets import STAGE_ASSETS
    from orchestration.dvc_history import DATA_VERSION_TAG, RECORDED_BY_DVC, SOURCE_TAG, dvc_lock_history
    from orchestration.dvc_pipeline import DvcProject, data_version, recorded_outputs
    from tests.conftest import DVC

    repo, _ = reproduced
    resources = {"dvc": DvcProject(project_dir=str(repo), dvc_executable=DVC)}
    with dg.DagsterInstance.ephemeral() as instance:
        def tick() -> dg.SensorResult:
            return dvc_lock_history(dg.build_sensor_context(instance=instance, resources=resources))

        first = tick()
        reported = {event.asset_key.to_user_string(): event for event in first.asset_events}
        assert list(reported) == [STAGE_ASSETS[stage].name for stage in STAGES]  # upstream first
        for stage in STAGES:
            event = reported[STAGE_ASSETS[stage].name]
            assert event.tags[DATA_VERSION_TAG] == data_version(recorded_outputs(repo, stage)).value
            assert event.tags[SOURCE_TAG] == RECORDED_BY_DVC
            assert event.metadata["dvc_stage"].value == stage
        assert reported["evaluation_metrics"].metadata["fidelity/mean"].value == \
            json.loads((repo / "reports/metrics.json").read_text())["fidelity"]["mean"]
        for event in first.asset_events:  # what the daemon does with a sensor's asset events
            instance.report_runless_asset_event(event)
        for asset in reported:
            latest = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert latest.run_id == "" and latest.asset_materialization.tags[SOURCE_TAG] == RECORDED_BY_DVC

        second = tick()
        assert not second.asset_events and second.skip_reason  # nothing new in dvc.lock

        # a model dvc.lock records anew (as `dvc repro` would write it), seen once the workspace is free
        lock = repo / "dvc.lock"
        recorded = lock.read_text()
        try:
            lock.write_text(recorded.replace(recorded_outputs(repo, "train")["models/cvae.keras"], "0" * 32))
            with DvcProject(project_dir=str(repo)).workspace_lock():  # a Dagster step is using DVC
                assert not tick().asset_events
            assert [event.asset_key.to_user_string() for event in tick().asset_events] == ["cvae_model"]
        finally:
            lock.write_text(recorded)
