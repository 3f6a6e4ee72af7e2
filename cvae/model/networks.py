"""The encoder and decoder networks of the CVAE.

The condition c (attributes as -1/+1) modulates every stage of both networks (FiLM): a
decoder that sees c only at its input learns to ignore it for small details, because
the encoder can put them into z.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from cvae.model import speedups

PACKAGE = speedups.PACKAGE
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
    """Adds one offset per image and channel to every position of a feature map, and the
    bias of the convolution before it (built without one), in one pass."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, features_shape, shift_shape):
        self.bias = self.add_weight(shape=(self.channels,), initializer="zeros", name="bias")

    def call(self, features, shift):
        return speedups.add_per_image(features, shift + self.bias)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


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
        logits = speedups.output_transposed_convolution(3, dtype="float32")(x)
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
    decoder (the `steer` term), so the decoder draws what c asks for. It is not the classifier
    of `cvae.quality.classifier`: that one is trained apart and only scores."""
    images = keras.Input((image_size, image_size, 3), name="images")
    # The critic reads the faces at half the side (means of 2x2 pixels): the steer term's
    # critic passes are then a quarter of the work (a training step about a fifth shorter,
    # fidelity the same within the seeds' spread), and a texture at the pixel grid's own frequency, the
    # artefact a transposed convolution draws most easily, cancels out, so the decoder
    # cannot satisfy the critic with one.
    x = layers.AveragePooling2D(2, name="half_size")(images)
    # centred to [-1, 1] as in the encoder and the classifier: on [0, 1] pixels the critic hardly
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
