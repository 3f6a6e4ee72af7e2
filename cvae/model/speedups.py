"""CPU speed-ups: parts that compute what a plain Keras part computes, faster on a CPU.

`cvae.model.train` asks for them here. Each stays while `benchmarks/cpu_speedups.py`
measures a gain from it end to end (docs/performance.md); `turned_off` trains with the
plain Keras parts instead, for that benchmark and for the tests that hold each speed-up
to its plain part's numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import keras
import tensorflow as tf
from keras import ops

from cvae.model.networks import PACKAGE

SPEEDUPS = {
    "fused_adam": "Adam's update of each variable in one fused TensorFlow op (FusedAdam)",
}
_off: set[str] = set()


@contextmanager
def turned_off(names: Iterable[str]) -> Iterator[None]:
    """Build, compile and train with the plain Keras parts of `names` (keys of SPEEDUPS)."""
    names = set(names)
    unknown = names - set(SPEEDUPS)
    if unknown:
        raise ValueError(f"unknown speed-ups {sorted(unknown)}; known: {sorted(SPEEDUPS)}")
    before = set(_off)
    _off.update(names)
    try:
        yield
    finally:
        _off.clear()
        _off.update(before)


def _on(name: str) -> bool:
    return name not in _off


# --- fused_adam ---------------------------------------------------------------------------

# Keras's Adam writes its update as about ten small ops per variable and step (the step's
# powers of beta, the bias correction, three reads, three assignments); the CVAE has 50
# variables, so every training step ran some 500 ops of a few microseconds each. They
# start all at once when the step count moves, and TensorFlow's executor runs such cheap
# ops one after another on the thread that readied them: on a 2-core CPU that held one
# core for about a millisecond at the start of every step while the other waited.
@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam with the same state (m and v per variable, the step count)
    and the same update, each variable's in one `ResourceApplyAdam` op, with the step's
    scalars (learning rate, powers of the betas) computed once, not once per variable.

    Where Keras's update is written for cases this one does not take (AMSGrad, sparse
    gradients), Keras's own update runs. Clipping, loss scaling and the step count stay
    Keras's. The arithmetic is TensorFlow's: 1 - beta is rounded after the subtraction in
    float32, not before, so the weights after a step can differ from Keras's in the
    last bits."""

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        if self.amsgrad:
            return super()._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)
        scalars: dict[tuple[str, tf.DType], dict] = {}  # per device and dtype: once a step

        def update(variable, gradient, learning_rate):
            if isinstance(gradient, tf.IndexedSlices):
                return self.update_step(gradient, variable, learning_rate)
            key = (variable.device, variable.dtype)
            if key not in scalars:
                scalars[key] = self._step_scalars(learning_rate, variable.dtype)
            m = self._momentums[self._get_variable_index(variable)]
            v = self._velocities[self._get_variable_index(variable)]
            return tf.raw_ops.ResourceApplyAdam(var=variable.handle, m=m.handle, v=v.handle,
                                                grad=ops.cast(gradient, variable.dtype), **scalars[key])

        for gradient, variable in grads_and_vars:
            distribution.extended.update(variable, update, args=(gradient, learning_rate), group=False)

    def _step_scalars(self, learning_rate, dtype) -> dict:
        """The update's scalars for this step, as Keras's Adam computes them."""
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        return {"lr": ops.cast(learning_rate, dtype), "beta1_power": ops.power(beta_1, local_step),
                "beta2_power": ops.power(beta_2, local_step), "beta1": beta_1, "beta2": beta_2,
                "epsilon": ops.cast(self.epsilon, dtype)}


def adam(learning_rate, **kwargs) -> keras.optimizers.Optimizer:
    return (FusedAdam if _on("fused_adam") else keras.optimizers.Adam)(learning_rate, **kwargs)
