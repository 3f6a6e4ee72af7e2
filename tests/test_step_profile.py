"""benchmarks/step_profile.py: the profile of the real training step is read and tabled."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from cvae.core.config import params_from_dict
from tests.conftest import PROJECT, prepare_data, stage_env, tiny_params_dict

# each test runs benchmarks/step_profile.py in a fresh process (TensorFlow, a profiled training)
pytestmark = pytest.mark.slow


def test_the_step_profile_tables_the_convolutions_of_the_training_step(tmp_path, synthetic_root):
    settings = tiny_params_dict(data={"image_size": 16})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    # prepared data, not its validation: a passing report stands in for it
    prepare_data(tmp_path, params_from_dict(settings), synthetic_root)

    result = subprocess.run(
        [sys.executable, str(PROJECT / "benchmarks" / "step_profile.py"), "--params", str(tmp_path / "params.yaml"),
         "--prepared", str(tmp_path / "prepared"), "--steps", "2", "--top", "40"],
        cwd=tmp_path, env=stage_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^batch 16: [\d.]+ ms per step", result.stdout, re.MULTILINE), result.stdout
    op_types = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+)% \|", result.stdout, re.MULTILINE)
    # the encoder's convolutions and their gradients run in every step, so they are profiled
    assert any("Conv2D" in name and float(ms) > 0 for name, ms, _ in op_types), result.stdout
    assert not any(name == "IDLE" for name, _, _ in op_types)
    # the trace's view: how long the inter-op threads ran ops side by side, and what ran alone
    # (how long both ran at once depends on what else the machine runs: on a loaded machine
    # a 16-px model's ops never overlapped), so the table and a thread's busy time are asserted
    assert "| threads busy | ms per step |" in result.stdout, result.stdout
    busy = {int(k): float(v) for k, v in re.findall(r"^\| (\d) \| ([\d.]+) \|$", result.stdout, re.MULTILINE)}
    assert set(busy) <= {0, 1, 2} and busy.get(1, 0) > 0, result.stdout
    assert re.search(r"^\| (gradient of )?encoder_\d+ \| [\d.]+ \|$", result.stdout, re.MULTILINE), result.stdout


def test_the_step_profile_names_a_missing_prepared_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, str(PROJECT / "benchmarks" / "step_profile.py"), "--params", str(PROJECT / "params.yaml"),
         "--prepared", str(tmp_path / "nowhere")],
        cwd=tmp_path, env=stage_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert f"no prepared training split under {tmp_path / 'nowhere'}" in result.stderr
