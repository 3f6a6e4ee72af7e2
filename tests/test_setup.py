"""The environment is the locked one: `make setup` installs exactly what uv.lock and
dvc-requirements.txt pin, so two set-ups a month apart train the same model."""

import importlib.util
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import PROJECT

needs_project_venv = pytest.mark.skipif(Path(sys.prefix).resolve() != (PROJECT / ".venv").resolve(),
                                        reason="checks the project's own virtualenvs, which `make setup` installs")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@needs_project_venv
def test_every_installed_package_the_lock_names_has_the_locked_version():
    locked = {}  # a universal lock may pin a package once per range of Python versions
    for package in tomllib.loads((PROJECT / "uv.lock").read_text())["package"]:
        locked.setdefault(_canonical(package["name"]), set()).add(package.get("version"))
    installed = {_canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    checked = {name: version for name, version in installed.items() if name in locked and name != "cvae"}
    assert {"tensorflow", "keras", "dagster", "great-expectations"} <= checked.keys()
    wrong = {name: (version, sorted(locked[name])) for name, version in checked.items()
             if version not in locked[name]}
    assert not wrong, f"installed (left) differs from uv.lock (right): {wrong}"


@needs_project_venv
def test_the_virtualenvs_dvc_is_the_pinned_version():
    """With .venv active, `dvc` is DVC's own virtualenv's, at the version pinned."""
    pinned = re.search(r"^dvc==([\w.]+)", (PROJECT / "dvc-requirements.txt").read_text(), re.M).group(1)
    dvc = PROJECT / ".venv" / "bin" / "dvc"
    version = subprocess.run([dvc, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == pinned


@needs_project_venv
def test_both_virtualenvs_are_installed_compiled_to_bytecode():
    """Where PYTHONDONTWRITEBYTECODE is set, a module without bytecode is compiled again in
    every process: TensorFlow's import alone then takes twice as long in every stage."""
    import tensorflow

    python = PROJECT / ".venv-dvc" / "bin" / "python"
    dvc_module = subprocess.run([python, "-c", "import dvc.repo; print(dvc.repo.__file__)"],
                                capture_output=True, text=True, check=True).stdout.strip()
    for module in (tensorflow.__file__, dvc_module):
        assert Path(importlib.util.cache_from_source(module)).is_file(), f"no bytecode for {module}"
