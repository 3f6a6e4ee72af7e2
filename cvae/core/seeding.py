"""One switch for everything random: Python, NumPy, TensorFlow and its kernels."""

from __future__ import annotations

import keras
import tensorflow as tf


def seed_everything(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; with `deterministic_ops`, also make TensorFlow's
    ops deterministic (process-wide; off otherwise, whatever an earlier call did)."""
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    else:  # not in tf.config's public API; Keras reads the same switch
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()
