"""The model registry, the production link and the quality gate of the promote stage.

Production models are real (tiny, untrained) Keras models scored for real on a prepared
held-out split; the challenger's metrics are planted files, as `evaluate` would write them,
so each test decides exactly how much better or worse the challenger is."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

keras = pytest.importorskip("keras")

from cvae.cli import main
from cvae.core.config import GateRule, params_from_dict
from cvae.core.errors import CvaeError
from cvae.data.dataset import load_split
from cvae.quality.evaluate import score
from cvae.registry import store as registry
from cvae.registry.gate import compare, flatten
from cvae.registry.promote import KEPT, PROMOTED, promote
from tests.conftest import prepare_data, tiny_cvae, tiny_params_dict

SIZE = 16
GATE = {"neg_elbo_nats": {"better": "lower", "tolerance": 5.0},
        "fidelity/mean": {"better": "higher", "tolerance": 0.02},
        "edit/Smiling/success": {"better": "higher", "tolerance": 0.05}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic_root) -> SimpleNamespace:
    """A prepared split, a classifier, and three tiny models differing only in their weights."""
    from cvae.quality.classifier import build_classifier

    root = tmp_path_factory.mktemp("promote")
    settings = tiny_params_dict(data={"image_size": SIZE, "crop": 148}, train={"filters": [8, 16]},
                                validate={"min_image_size": 16})
    settings["validate"]["prevalence"] = {}  # 48 faces: prevalence bounds are not the point here
    settings["retrain"]["gate"] = GATE  # replaced, not merged into the project's gate
    params = params_from_dict(settings)
    meta = prepare_data(root, params, synthetic_root, validate=True, baseline=root / "baseline.json")
    names = meta["attribute_names"]
    rows = load_split(root / "prepared", "train").attributes  # kept in the model, for `cvae generate`
    w = SimpleNamespace(root=root, params=params, prepared=root / "prepared", classifier=root / "classifier.keras")
    build_classifier(SIZE, names, [8]).save(w.classifier)
    for name, seed in (("first", 1), ("second", 2), ("third", 3)):
        keras.utils.set_random_seed(seed)
        path = root / f"{name}.keras"
        tiny_cvae(image_size=SIZE, n_attributes=len(names), seed=seed, attribute_names=names,
                  attribute_rows=rows).save(path)
        setattr(w, name, path)
    keras.utils.set_random_seed(4)
    w.other_size = root / "other_size.keras"
    tiny_cvae(image_size=2 * SIZE, n_attributes=len(names), seed=4, attribute_names=names).save(w.other_size)
    return w


def real_score(w, model_path: Path) -> dict:
    from cvae.model.cvae import load_cvae
    from cvae.quality.classifier import load_classifier

    return score(w.params, w.prepared, load_cvae(model_path), load_classifier(w.classifier))


def shifted(metrics: dict, **changes: float) -> dict:
    """`metrics` with some flat entries ("fidelity/mean") moved by the given amounts."""
    out = json.loads(json.dumps(metrics))
    for path, delta in changes.items():
        node, *keys = out, *path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = node[keys[-1]] + delta
    return out


def run_promote(w, project: Path, model: Path, metrics: dict) -> dict:
    metrics_path = project / "metrics.json"
    metrics_path.write_text(json.dumps(metrics))
    return promote(w.params, w.prepared, model, w.classifier, metrics_path, project / "registry",
                   project / "production", project / "promotion.json", project_dir=project)


def test_the_gate_passes_within_tolerance_and_fails_beyond_it():
    production = {"neg_elbo_nats": 100.0, "fidelity": {"mean": 0.80}}
    rules = {"neg_elbo_nats": GateRule(better="lower", tolerance=2.0),
             "fidelity/mean": GateRule(better="higher", tolerance=0.02)}

    def verdicts(challenger):
        return {c.metric: c.passed for c in compare(challenger, production, rules)}

    assert verdicts({"neg_elbo_nats": 102.0, "fidelity": {"mean": 0.78}}) == {"neg_elbo_nats": True,
                                                                              "fidelity/mean": True}
    assert verdicts({"neg_elbo_nats": 102.5, "fidelity": {"mean": 0.77}}) == {"neg_elbo_nats": False,
                                                                              "fidelity/mean": False}
    assert verdicts({"neg_elbo_nats": 50.0, "fidelity": {"mean": 0.99}}) == {"neg_elbo_nats": True,
                                                                             "fidelity/mean": True}
    assert verdicts({"neg_elbo_nats": math.nan, "fidelity": {"mean": 0.80}})["neg_elbo_nats"] is False


def test_a_gated_metric_evaluate_does_not_write_is_named():
    rules = {"fidelity/men": GateRule(better="higher", tolerance=0.0)}
    with pytest.raises(CvaeError, match=r"retrain.gate: fidelity/men not among the metrics of evaluate \(.*fidelity/mean"):
        compare({"fidelity": {"mean": 0.8}}, {"fidelity": {"mean": 0.8}}, rules)


@pytest.mark.slow
def test_first_model_is_promoted_a_better_one_replaces_it_and_a_worse_one_does_not(world, tmp_path):
    w, project = world, tmp_path
    first_metrics = real_score(w, w.first)
    first = run_promote(w, project, w.first, first_metrics)
    assert (first["decision"], first["reason"]) == (PROMOTED, "no production model yet")
    assert registry.production(project / "production").name == first["challenger"]["version"]

    # the second model, a little better on every gated metric than the production model scores
    production_now = real_score(w, w.first)
    better = shifted(production_now, neg_elbo_nats=-1.0, fidelity__mean=0.01, edit__Smiling__success=0.0)
    second = run_promote(w, project, w.second, better)
    assert second["decision"] == PROMOTED, second["reason"]
    assert second["production_before"]["version"] == first["challenger"]["version"]
    # production was scored again, on the same faces with the same seed: the same numbers
    rescored = flatten(second["production_before"]["metrics"])
    assert rescored == pytest.approx(flatten(production_now), rel=1e-6, abs=1e-6)
    assert {c["metric"]: c["passed"] for c in second["gate"]} == dict.fromkeys(GATE, True)
    assert registry.production(project / "production").name == second["challenger"]["version"]

    # the third model: fidelity worse than production (now the second model) beyond the tolerance
    worse = shifted(real_score(w, w.second), fidelity__mean=-0.05)
    third = run_promote(w, project, w.third, worse)
    assert third["decision"] == KEPT
    assert "fidelity/mean" in third["reason"] and "edit/Smiling/success" not in third["reason"]
    failed = [c for c in third["gate"] if not c["passed"]]
    assert [c["metric"] for c in failed] == ["fidelity/mean"]
    assert failed[0]["challenger"] == pytest.approx(failed[0]["production"] - 0.05, abs=1e-6)
    assert registry.production(project / "production").name == second["challenger"]["version"]

    # every model is kept, with its metrics and provenance; every decision is on record
    kept = registry.versions(project / "registry")
    assert [v.name for v in kept] == sorted(d["challenger"]["version"] for d in (first, second, third))
    third_version = next(v for v in kept if v.name == third["challenger"]["version"])
    assert third_version.metrics() == worse
    provenance = third_version.provenance()
    assert provenance["model_md5"] == registry.file_md5(w.third)
    assert provenance["params"]["retrain"]["gate"]["fidelity/mean"]["tolerance"] == 0.02
    assert {"git_commit", "params_sha256", "dvc_lock_md5", "classifier_md5"} <= set(provenance)
    decisions = [json.loads(line) for line in (project / "registry" / registry.DECISIONS_FILE).read_text().splitlines()]
    assert [d["decision"] for d in decisions] == [PROMOTED, PROMOTED, KEPT]
    assert json.loads((project / "promotion.json").read_text()) == third


def test_the_production_model_as_challenger_is_not_registered_twice(world, tmp_path):
    metrics = real_score(world, world.first)
    first = run_promote(world, tmp_path, world.first, metrics)
    again = run_promote(world, tmp_path, world.first, metrics)
    assert again["decision"] == KEPT and "production model" in again["reason"]
    assert again["challenger"]["version"] == first["challenger"]["version"]
    assert len(registry.versions(tmp_path / "registry")) == 1


def test_a_production_model_that_cannot_be_scored_on_the_data_stays_in_use(world, tmp_path):
    version = registry.register(tmp_path / "registry", world.other_size, world.classifier, {"mse": 1.0},
                                {"note": "trained on 32 px faces"})
    registry.set_production(tmp_path / "production", version)
    decision = run_promote(world, tmp_path, world.first, real_score(world, world.first))
    assert decision["decision"] == KEPT
    assert "cannot be scored on this data" in decision["reason"] and "(32, 32, 3)" in decision["reason"]
    assert registry.production(tmp_path / "production").name == version.name


def test_a_gate_naming_an_unknown_metric_fails_before_anything_is_written(world, tmp_path):
    settings = tiny_params_dict()
    settings["retrain"]["gate"] = {"fidelity/men": {"better": "higher", "tolerance": 0.0}}
    params = params_from_dict(settings)
    (tmp_path / "metrics.json").write_text(json.dumps({"fidelity": {"mean": 0.5}}))
    with pytest.raises(CvaeError, match="retrain.gate: fidelity/men"):
        promote(params, world.prepared, world.first, world.classifier, tmp_path / "metrics.json",
                tmp_path / "registry", tmp_path / "production", tmp_path / "promotion.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_version_folder_gets_the_modes_of_a_plain_folder(world, tmp_path):
    version = registry.register(tmp_path / "registry", world.first, world.classifier, {}, {})
    (tmp_path / "plain").mkdir()
    assert version.path.stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_a_failed_registration_leaves_no_version_behind(world, tmp_path):
    with pytest.raises(FileNotFoundError):
        registry.register(tmp_path / "registry", world.first, tmp_path / "missing.keras", {}, {})
    assert list((tmp_path / "registry").iterdir()) == []


def test_the_production_link_is_switched_by_one_rename_and_stays_relative(world, tmp_path):
    one = registry.register(tmp_path / "models/registry", world.first, world.classifier, {}, {})
    two = registry.register(tmp_path / "models/registry", world.second, world.classifier, {}, {})
    link = tmp_path / "models/production"
    registry.set_production(link, one)
    renames = []
    real_replace = os.replace

    def spy(source, target):
        renames.append((Path(source).name, Path(target).name))
        real_replace(source, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry.os, "replace", spy)
        registry.set_production(link, two)
    assert renames == [(f".production.{os.getpid()}.new", "production")]
    assert os.readlink(link) == f"registry/{two.name}"
    moved = tmp_path / "moved"
    (tmp_path / "models").rename(moved)
    assert registry.production(moved / "production").name == two.name


def test_a_dangling_or_foreign_production_path_is_explained(world, tmp_path):
    link = tmp_path / "production"
    os.symlink("registry/gone", link)
    with pytest.raises(CvaeError, match=r"points at registry/gone, which holds no cvae.keras"):
        registry.production(link)
    link.unlink()
    link.mkdir()
    with pytest.raises(CvaeError, match="expected a symlink to a registry version, found a directory"):
        registry.production(link)


def test_cli_lists_versions_and_rolls_back(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = registry.register("models/registry", world.first, world.classifier, {"neg_elbo_nats": 12.5}, {},
                            now=datetime(2026, 11, 24, 2, 0, tzinfo=UTC))
    two = registry.register("models/registry", world.second, world.classifier, {"neg_elbo_nats": 11.0}, {},
                            now=datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    registry.set_production("models/production", two)
    assert main(["production", "--set", one.name]) == 0
    assert registry.production("models/production").name == one.name
    capsys.readouterr()
    assert main(["production"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"* {one.name}") and "neg_elbo_nats 12.5" in lines[0]
    assert lines[1].startswith(f"  {two.name}")
    # a fresh clone after `dvc pull`: the registry came, the link did not
    registry.record_decision("models/registry", {"decision": "promoted", "production": two.name})
    Path("models/production").unlink()
    assert main(["production", "--restore"]) == 0
    assert registry.production("models/production").name == two.name
    assert main(["production", "--set", "nope"]) == 1
    assert f"no version 'nope' (registered: {one.name}, {two.name})" in capsys.readouterr().err


def test_generate_uses_the_production_model_and_says_when_there_is_none(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "-n", "2", "--seed", "1", "--out", "faces"]) == 1
    assert "models/production: no production model yet; run the pipeline" in capsys.readouterr().err
    version = registry.register("models/registry", world.first, world.classifier, {}, {})
    registry.set_production("models/production", version)
    assert main(["generate", "-n", "2", "--seed", "1", "--out", "faces"]) == 0
    from PIL import Image

    with Image.open(tmp_path / "faces" / "face-1.png") as image:
        assert image.text["cvae:model"] == "models/production/cvae.keras"
        # pinned to the version behind the link when it was read, with its MD5
        assert image.text["cvae:model_file"] == str(version.model.resolve())
        assert image.text["cvae:model_md5"] == registry.file_md5(world.first)
