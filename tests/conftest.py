"""Shared fixtures: tiny params, a synthetic dataset, prepared data, tiny models, and DVC
projects in temporary git repos."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cvae.core.config import Params, params_from_dict
from cvae.source.synthetic import generate

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DVC = os.environ.get("CVAE_DVC", str(PROJECT / ".venv-dvc" / "bin" / "dvc"))

# The fast settings every pipeline test runs with: few images, 32 px, one epoch.
TINY = {
    "seed": 7,
    "data": {"synthetic_images": 96, "image_size": 32},
    "train": {"epochs": 1, "batch_size": 16, "filters": [8, 16], "latent_dim": 4},
    "classifier": {"epochs": 1, "batch_size": 16, "filters": [8]},
    "evaluate": {"batch_size": 32, "fidelity_samples": 8, "edit_images": 8},
    "visualize": {"reconstructions": 4, "samples": 4, "sweep_steps": 3, "conditional_columns": 3,
                  "interpolation_pairs": 2, "interpolation_steps": 3},
}

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    # TensorFlow in the tests' own processes runs on the threads `cvae train` sets, so that
    # a run resumed in process continues one that a `cvae train` subprocess started bit for
    # bit: oneDNN's sums depend on how an op is split over threads
    from cvae.model.train import configure_cpu_threads

    configure_cpu_threads()


def pytest_collection_modifyitems(config, items):
    # Files holding a slow test (whole pipelines, servers, training) go first, so that under
    # `make test` (--dist loadfile, --no-loadscope-reorder) no long file starts last while
    # the other workers sit idle; the order within each group stays the collection order.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def merged(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_params_dict(**sections) -> dict:
    """The project's params.yaml with the tiny settings (and `sections`) applied."""
    base = yaml.safe_load((PROJECT / "params.yaml").read_text())
    return merged(merged(base, TINY), sections)


@pytest.fixture
def tiny_params():
    return params_from_dict(tiny_params_dict())


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, num_images=48, seed=3, val_fraction=0.25, test_fraction=0.25, workers=1)
    return root


def prepare_data(out: Path, params: Params, raw: Path, validate: bool = False,
                 baseline: Path | None = None) -> dict:
    """Prepares the raw images in `raw` into `out / "prepared"` and returns the prepared
    data's meta. With `validate`, `out / "validation"` is a real validation report (about
    10 s of Great Expectations; compared with, and written to, `baseline` if given);
    without, a passing report stands in for it, for tests that need prepared data and not
    its validation."""
    from cvae.data.prepare import prepare
    from cvae.validation.report import SUMMARY_FILE
    from cvae.validation.validate import validate as run_validation

    if validate:
        run_validation(params, raw, out / "validation", baseline)
    else:
        (out / "validation").mkdir()
        (out / "validation" / SUMMARY_FILE).write_text(json.dumps({"success": True}))
    return prepare(params, raw, out / "validation", out / "prepared")


# The tiny model of the model-level tests: 16 px, three attributes, two conv blocks.
TINY_CVAE = {"image_size": 16, "n_attributes": 3, "filters": [8, 16], "latent_dim": 4, "seed": 0}
TINY_LOSS_WEIGHTS = {"beta": 1.0, "decoder_std": 0.1}


def tiny_cvae(**overrides):
    """An untrained tiny CVAE: `cvae.model.cvae.build_cvae` with TINY_CVAE and
    TINY_LOSS_WEIGHTS, and `overrides` (its keyword arguments, or LossWeights' fields)."""
    import dataclasses

    from cvae.model.cvae import LossWeights, build_cvae

    fields = {field.name for field in dataclasses.fields(LossWeights)}
    weights = {**TINY_LOSS_WEIGHTS, **{key: value for key, value in overrides.items() if key in fields}}
    rest = {key: value for key, value in overrides.items() if key not in fields}
    return build_cvae(**{**TINY_CVAE, **rest}, loss_weights=LossWeights(**weights))


def digest(root: Path) -> str:
    """One hash of every file's name and bytes below `root`."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


def stage_env() -> dict[str, str]:
    # stage commands call `cvae`, which lives beside this interpreter
    return {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=stage_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([DVC, *args], repo, check=check)


def dvc_changes(repo: Path, *stages: str) -> dict:
    """`dvc status --json` without the source check, which is always changed by design
    (it re-checks the source on every run)."""
    status = json.loads(dvc(repo, "status", "--json", *stages).stdout)
    assert status.pop("check_source", ["always changed"]) == ["always changed"], status
    return status


def make_dvc_repo(path: Path, params: dict) -> Path:
    """A fresh git + DVC project holding this project's dvc.yaml, its code (the stages'
    dependencies) and the given params."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dvc.yaml", path / "dvc.yaml")
    shutil.copytree(PROJECT / "cvae", path / "cvae", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / ".dvcignore", path / ".dvcignore")
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "config", "user.email", "test@example.com"], path)
    run(["git", "config", "user.name", "test"], path)
    dvc(path, "init", "-q")
    dvc(path, "config", "core.analytics", "false")
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "pipeline"], path)
    return path


@pytest.fixture
def dvc_repo(tmp_path) -> Path:
    return make_dvc_repo(tmp_path / "project", tiny_params_dict())
