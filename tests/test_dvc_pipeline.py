"""`dvc repro` end to end on the tiny synthetic set, in a temporary git repo."""

import json
import re

import pytest
import yaml
from PIL import Image

from cvae.figures import CAPTIONS
from tests.conftest import dvc, make_dvc_repo, tiny_params_dict

STAGES = ("download", "validate", "prepare", "train", "train_classifier", "evaluate", "visualize")


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    repo = make_dvc_repo(tmp_path_factory.mktemp("dvc") / "project", tiny_params_dict())
    first = dvc(repo, "repro")
    return repo, first


def stale_stages(repo):
    return set(json.loads(dvc(repo, "status", "--json").stdout))


def test_repro_runs_every_stage_and_writes_the_outputs(reproduced):
    repo, first = reproduced
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert {"mse", "kl_nats", "neg_elbo_nats", "bits_per_dim", "mean_image_mse", "mse_vs_mean_image"} <= set(metrics)
    judged = tiny_params_dict()["evaluate"]["fidelity_attributes"]
    assert set(metrics["fidelity"]) == {"mean", *judged}
    assert all(0.0 <= value <= 1.0 for value in metrics["fidelity"].values())
    assert set(metrics["edit"]) == {"Smiling", "Eyeglasses", "Male"}
    assert set(metrics["edit"]["Smiling"]) == {"success", "others_kept", "pixel_mse"}
    classifier = json.loads((repo / "reports/classifier.json").read_text())
    assert set(classifier["attributes"]["Smiling"]) == {"accuracy", "balanced_accuracy", "prevalence"}
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
    assert "Running stage" not in second.stdout
    assert stale_stages(repo) == set()


def stages_run(output):
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("train", "beta", 0.5, {"train", "evaluate", "visualize"}),
        ("visualize", "samples", 9, {"visualize"}),
        ("classifier", "epochs", 2, {"train_classifier", "evaluate"}),
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
        assert stages_run(dvc(repo, "repro").stdout) == expected
    finally:
        path.write_text(original)
        dvc(repo, "repro")  # back to the original outputs (from DVC's run cache)
    assert stale_stages(repo) == set()
