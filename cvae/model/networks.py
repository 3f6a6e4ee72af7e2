"""The encoder and decoder networks of the CVAE.

The condition c (attributes as -1/+1) modulates every stage of both networks (FiLM): a
decoder that sees c only at its input learns to ignore it for small details, because
the encoder can put them into z.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

PACKAGE = "cvae"
UPSAMPLING = ("transposed", "resize")  # how the decoder doubles a feature map's side


@keras.saving.register_keras_serializable(package=PACKAGE)
class FiLM(layers.Layer):
    """Feature-wise linear modulation by the condition: x * (1 + gamma(c)) + beta(c).

    As expressive as concatenating c tiled over the feature map (a conv of a constant map
    is a per-channel bias) plus a per-channel gain, at the cost of one small Dense.

    `carries_bias`: the layer holds the bias of the convolution before it (built without
    one) and adds it here, as (x + bias) * (1 + gamma) + beta: the same function and the
    same weights, with one pass over the feature map fewer each way (on a CPU the decoder's
    separate bias adds and their gradients took about 3 ms of an 80 ms step)."""

    def __init__(self, channels: int, carries_bias: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.carries_bias = carries_bias
        # zero at the start: the identity modulation. A random start would scale and shift
        # every channel by the 40 attributes (most of them invisible noise) before anything
        # is learned, and training first has to undo it.
        # the layer's own policy: a Dense made here would take the global one at load time
        self.projection = layers.Dense(2 * channels, kernel_initializer="zeros", dtype=self.dtype_policy)

    def build(self, features_shape, condition_shape):
        self.projection.build(condition_shape)
        if self.carries_bias:
            self.bias = self.add_weight(shape=(self.channels,), initializer="zeros", name="bias")

    def call(self, features, condition):
        gamma, beta = ops.split(self.projection(condition), 2, axis=-1)
        scale = 1.0 + gamma
        if self.carries_bias:  # per image and channel: no pass over the feature map
            beta = beta + self.bias * scale
        return features * scale[:, None, None, :] + beta[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "carries_bias": self.carries_bias}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShiftPerImage(layers.Layer):
    """Adds one offset per image and channel to every position of a feature map.

    `channels`: the layer holds the bias of the convolution before it (built without one)
    and adds it with the offset in one pass (0: none; models saved before it had one)."""

    def __init__(self, channels: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, features_shape, shift_shape):
        if self.channels:
            self.bias = self.add_weight(shape=(self.channels,), initializer="zeros", name="bias")

    def call(self, features, shift):
        if self.channels:
            shift = shift + self.bias
        # The offsets spread over the map by a matrix product with a 0/1 matrix, then added
        # to the flat map: the same numbers (each output sums one offset and zeros). Added
        # by broadcasting, 3 channels made the add a slow strided loop on a CPU: 0.73 ms on a
        # batch of 32 faces at 64 px against 0.29, and its gradient 0.51 against 0.42 (one thread).
        _, height, width, channels = features.shape
        spread = ops.convert_to_tensor(np.tile(np.eye(channels), (1, height * width)), shift.dtype)
        flat = ops.reshape(features, (-1, height * width * channels)) + ops.matmul(shift, spread)
        return ops.reshape(flat, (-1, height, width, channels))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


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


def build_encoder(image_size: int, n_attributes: int, filters: list[int], latent_dim: int) -> keras.Model:
    images = keras.Input((image_size, image_size, 3), name="images")
    condition = keras.Input((n_attributes,), name="attributes")
    # [0, 1] pixels centred to [-1, 1]: an all-positive input makes every filter's gradient
    # share a sign, and training then took two more epochs to reach the same error
    x = layers.Rescaling(2.0, offset=-1.0, name="centre")(images)
    for width in filters:
        x = layers.Conv2D(width, 4, strides=2, padding="same")(x)
        x = FiLM(width)(x, condition)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Flatten()(x)
    x = layers.Concatenate()([x, condition])
    x = layers.Dense(256)(x)
    x = layers.LeakyReLU(0.2)(x)
    # float32 even under mixed precision: the KL term and sampling read them
    z_mean = layers.Dense(latent_dim, dtype="float32", name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, dtype="float32", name="z_log_var")(x)
    return keras.Model([images, condition], [z_mean, z_log_var], name="encoder")


def build_decoder(image_size: int, n_attributes: int, filters: list[int], latent_dim: int,
                  upsampling: str = "transposed") -> keras.Model:
    """Mirror of the encoder: each block doubles the side and halves the channels, and
    every block is modulated by the condition.

    `upsampling`: how a block doubles the side. `transposed`: a 4x4 stride-2 transposed
    convolution, fast on a CPU, but its kernel overlaps unevenly, so it paints grids of 2-
    and 4-pixel period where a loss rewards texture (Odena et al. 2016, "Deconvolution and
    checkerboard artifacts"). `resize`: a bilinear doubling, then a 3x3 convolution, which
    has no such pattern to fall into."""
    if upsampling not in UPSAMPLING:
        raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
    z = keras.Input((latent_dim,), name="z")
    condition = keras.Input((n_attributes,), name="attributes")
    side = image_size // 2 ** len(filters)
    x = layers.Concatenate()([z, condition])
    x = layers.Dense(side * side * filters[-1])(x)
    x = layers.Reshape((side, side, filters[-1]))(x)
    x = FiLM(filters[-1])(x, condition)
    x = layers.LeakyReLU(0.2)(x)
    for width in reversed(filters[:-1]):
        # the convolutions' biases are added by the layers after them, per image (FiLM,
        # ShiftPerImage): one pass fewer over each feature map
        x = _doubling(x, width, upsampling)
        x = FiLM(width, carries_bias=True)(x, condition)
        x = layers.LeakyReLU(0.2)(x)
    # the output end in float32 under mixed precision too: the likelihood reads these pixels
    if upsampling == "transposed":
        logits = PhaseConv2DTranspose(3, 4, strides=2, padding="same", use_bias=False, dtype="float32")(x)
    else:
        logits = _doubling(x, 3, upsampling, dtype="float32")
    # A direct path from (z, c) to one colour offset per image: global colour and lighting
    # (a background's hue, a photo's exposure) are shared by every pixel, and learnt through
    # the conv stack alone they took half of training (a plateau of the error until the
    # encoder and decoder found the background's colour, at epoch 9 to 15 of 20); with this
    # path the plateau ends by epoch 4.
    # zero at the start, like FiLM: a random start shifts every face's colour by the noise
    # in z before anything is learnt, and the first steps' loss then varies with the draw
    colour = layers.Dense(3, kernel_initializer="zeros", dtype="float32", name="colour")(
        layers.Concatenate()([z, condition]))
    logits = ShiftPerImage(3, dtype="float32")(logits, colour)
    # sigmoid: the data lie in [0, 1], and so must the mean of the likelihood
    images = layers.Activation("sigmoid", dtype="float32", name="images")(logits)
    return keras.Model([z, condition], images, name="decoder")


def _doubling(x, width: int, upsampling: str, **kwargs):
    """Twice the side, `width` channels, no bias (the layer after adds it)."""
    if upsampling == "transposed":
        return layers.Conv2DTranspose(width, 4, strides=2, padding="same", use_bias=False, **kwargs)(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", **kwargs)(x)
    return layers.Conv2D(width, 3, padding="same", use_bias=False, **kwargs)(x)


def build_critic(image_size: int, n_attributes: int, filters: list[int]) -> keras.Model:
    """The model's own attribute classifier (one logit per attribute), trained alongside it
    on the real training images. Decoded faces whose attributes it cannot see cost the
    decoder (the `steer` term), so the decoder draws what c asks for. It is not the judge
    of `cvae.quality.classifier`: that one is trained apart and only scores."""
    images = keras.Input((image_size, image_size, 3), name="images")
    # The critic reads the faces at half the side (means of 2x2 pixels): the steer term's
    # critic passes are then a quarter of the work (a training step about a fifth shorter,
    # fidelity the same within the seeds' spread), and a texture at the pixel grid's own frequency, the
    # artefact a transposed convolution draws most easily, cancels out, so the decoder
    # cannot satisfy the critic with one.
    x = layers.AveragePooling2D(2, name="half_size")(images)
    # centred to [-1, 1] as in the encoder and the judge: on [0, 1] pixels the critic hardly
    # learnt the thin features, and the steer term cannot teach what the critic cannot see
    # (Smiling edit success .75 / .81 against .69 / .76, seeds 42 / 1; it costs nothing)
    x = layers.Rescaling(2.0, offset=-1.0, name="centre")(x)
    for width in filters:
        x = layers.Conv2D(width, 4, strides=2, padding="same")(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Flatten()(x)
    logits = layers.Dense(n_attributes, dtype="float32", name="logits")(x)
    return keras.Model(images, logits, name="critic")


def build_adversary(latent_dim: int, n_attributes: int, width: int = 256) -> keras.Model:
    """Reads the attributes from a latent mean (one logit per attribute): the latent
    adversary of `cvae.model.cvae.CVAE`. Two hidden layers, as in Fader networks, so that it
    finds traces of c in z that no linear read would."""
    z = keras.Input((latent_dim,), name="z_mean")
    x = layers.Dense(width)(z)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Dense(width)(x)
    x = layers.LeakyReLU(0.2)(x)
    logits = layers.Dense(n_attributes, dtype="float32", name="logits")(x)
    return keras.Model(z, logits, name="adversary")
