"""TensorFlow's CPU kernels: cvae turns oneDNN's on, and a user's explicit choice stands."""

import os
import subprocess
import sys

import pytest

PROBE = ("import cvae, os; from tensorflow.python.util import _pywrap_util_port as port;"
         " print(os.environ['TF_ENABLE_ONEDNN_OPTS'], port.IsMklEnabled())")


def tensorflow_after_cvae(**overrides: str) -> str:
    """What a fresh process that imports cvae, then TensorFlow, sees: the variable and
    whether TensorFlow's oneDNN kernels are on."""
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env={**env, **overrides})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, ["1", "True"]),  # unset: cvae turns them on (TensorFlow would not on an AVX2-only CPU)
    # the user's explicit choice: a second fresh TensorFlow process, about 10 s
    pytest.param({"TF_ENABLE_ONEDNN_OPTS": "0"}, ["0", "False"], marks=pytest.mark.slow),
])
def test_importing_cvae_turns_onednn_on_unless_the_user_said_otherwise(overrides, expected):
    assert tensorflow_after_cvae(**overrides) == expected
