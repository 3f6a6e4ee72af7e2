"""CPU speed-ups: parts that compute what a plain Keras part computes, faster on a CPU.

The networks and `cvae.model.train` ask for them here. They stay while
`benchmarks/cpu_speedups.py` measures a gain from them end to end (docs/performance.md);
`turned_off` builds and trains with the plain Keras parts instead, for that benchmark and
for the tests that hold each speed-up to its plain part's numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

PACKAGE = "cvae"  # the name Keras files record for the project's layers

SPEEDUPS = {
    "fused_adam": "Adam's update of each variable in one fused TensorFlow op (FusedAdam)",
    "phase_convolution": "the decoder's output layer run forward as a convolution (PhaseConv2DTranspose)",
    "matmul_shift": "the per-image colour offset spread over the image by a matrix product",
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


# --- phase_convolution --------------------------------------------------------------------

# Which tap of a 4x4, stride-2, "same" transposed convolution's kernel each output phase
# reads at input offsets -1, 0, +1 along one axis (None: none): an even output pixel 2m
# sums input m-1 (tap 3) and m (tap 1), an odd one 2m+1 sums m (tap 2) and m+1 (tap 0).
_PHASE_TAPS = ((3, 1, None), (None, 2, 0))


def _phase_gather_index() -> np.ndarray:
    """Index (3, 3, 4) into the kernel's 16 taps (16: a zero) of the 3x3 kernel of each
    of the four output phases, in depth_to_space's order (row phase, then column phase)."""
    index = np.full((3, 3, 4), 16)
    for phase, (row, column) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for dy in range(3):
            for dx in range(3):
                ky, kx = _PHASE_TAPS[row][dy], _PHASE_TAPS[column][dx]
                if ky is not None and kx is not None:
                    index[dy, dx, phase] = ky * 4 + kx
    return index


_PHASE_INDEX = _phase_gather_index()


@tf.custom_gradient
def _phase_transposed_convolution(inputs, kernel):
    """conv2d_transpose(inputs, kernel) for a (4, 4, out, in) kernel, stride 2, "same":
    forward as one stride-1 3x3 convolution to the four output phases, then
    depth_to_space; backward as TensorFlow's own gradients of the transposed convolution."""
    out_channels, in_channels = kernel.shape[2], kernel.shape[3]
    taps = ops.concatenate([ops.reshape(ops.transpose(kernel, (0, 1, 3, 2)), (16, in_channels, out_channels)),
                            ops.zeros((1, in_channels, out_channels), kernel.dtype)], axis=0)
    phases = ops.reshape(ops.transpose(ops.take(taps, _PHASE_INDEX, axis=0), (0, 1, 3, 2, 4)),
                         (3, 3, in_channels, 4 * out_channels))
    outputs = tf.nn.depth_to_space(tf.nn.conv2d(inputs, phases, 1, "SAME"), 2)

    def gradient(upstream):
        return (tf.nn.conv2d(upstream, kernel, 2, "SAME"),
                tf.compat.v1.nn.conv2d_backprop_filter(upstream, tf.shape(kernel), inputs, [1, 2, 2, 1], "SAME"))

    return outputs, gradient


@keras.saving.register_keras_serializable(package=PACKAGE)
class PhaseConv2DTranspose(layers.Conv2DTranspose):
    """A 4x4, stride-2, "same" Conv2DTranspose without bias (the same weights and
    function), whose forward pass runs as a forward convolution.

    On a CPU oneDNN computes a transposed convolution with its backward-data kernel, which
    for 3 output channels runs at a quarter of the speed of the forward convolution of its
    gradient: the decoder's output layer took 4.0 ms forward and 5.6 ms forward and
    backward on a batch of 32 at 64 px, this one 2.4 and 3.7 ms (one thread). The 3x3
    kernel of the phases holds a quarter zeros (9 taps where each phase needs 4), so the
    other layers, with more channels, are faster as plain transposed convolutions."""

    def build(self, input_shape):
        if (tuple(self.kernel_size), tuple(self.strides), self.padding, self.use_bias, self.data_format) != (
                (4, 4), (2, 2), "same", False, "channels_last"):
            raise ValueError(f"{self.name}: PhaseConv2DTranspose is 4x4, stride 2, 'same', channels last, no bias")
        super().build(input_shape)

    def call(self, inputs):
        # the kernel read here, outside: a custom gradient must not see the variable itself
        kernel = tf.identity(ops.cast(self.kernel, self.compute_dtype))
        outputs = _phase_transposed_convolution(ops.convert_to_tensor(inputs), kernel)
        return outputs if self.activation is None else self.activation(outputs)


def output_transposed_convolution(channels: int, **kwargs) -> layers.Layer:
    """A 4x4, stride-2, "same" transposed convolution without bias."""
    layer = PhaseConv2DTranspose if _on("phase_convolution") else layers.Conv2DTranspose
    return layer(channels, 4, strides=2, padding="same", use_bias=False, **kwargs)


# --- matmul_shift -------------------------------------------------------------------------

def add_per_image(features, shift):
    """features (batch, height, width, channels) + shift (batch, channels) at every position.

    The offsets spread over the map by a matrix product with a 0/1 matrix, then added to
    the flat map: the same numbers (each output sums one offset and zeros). Added by
    broadcasting, 3 channels made the add a slow strided loop on a CPU: 0.73 ms on a batch
    of 32 faces at 64 px against 0.29, and its gradient 0.51 against 0.42 (one thread)."""
    if not _on("matmul_shift"):
        return features + shift[:, None, None, :]
    _, height, width, channels = features.shape
    spread = ops.convert_to_tensor(np.tile(np.eye(channels), (1, height * width)), shift.dtype)
    flat = ops.reshape(features, (-1, height * width * channels)) + ops.matmul(shift, spread)
    return ops.reshape(flat, (-1, height, width, channels))
