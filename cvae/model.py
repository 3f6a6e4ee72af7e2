"""The conditional VAE (Keras 3, TensorFlow backend), in the shape of keras.io's vae.py.

Encoder q(z | x, c) and decoder p(x | z, c) (their layers are in `cvae.networks`).
The encoder outputs the log-variance; sampling and the KL term both read it so.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops

from cvae.networks import PACKAGE, build_decoder, build_encoder


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampling(layers.Layer):
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I), for any batch size."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CVAE(keras.Model):
    """Trains on the negative ELBO with a Gaussian likelihood of fixed std on [0, 1] pixels
    and a beta-weighted KL; tracks per-pixel MSE and per-image KL on their own."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, beta: float = 1.0,
                 decoder_std: float = 0.1, seed: int | None = None, attribute_names: list[str] | None = None,
                 attribute_table_rows: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        # The model travels without its dataset: it carries the attribute names and a sample
        # of training attribute rows, from which `cvae generate` draws the attributes a user
        # did not set (joint prevalence, so no bald face with blond hair).
        self.attribute_names = list(attribute_names or [f"attribute_{i}" for i in range(self.n_attributes)])
        self.attribute_table = self.add_weight(shape=(attribute_table_rows, self.n_attributes),
                                               initializer="zeros", trainable=False, name="attribute_table")
        self.beta = beta
        self.decoder_std = decoder_std
        self.seed = seed
        self.sampling = Sampling(seed=seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.mse_tracker = keras.metrics.Mean(name="mse")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.built = True  # the encoder and decoder are functional models, built already

    @property
    def metrics(self):
        return [self.loss_tracker, self.mse_tracker, self.kl_tracker]

    @property
    def n_attributes(self) -> int:
        return self.encoder.inputs[1].shape[-1]

    @property
    def latent_dim(self) -> int:
        return self.decoder.inputs[0].shape[-1]

    def call(self, inputs, training=False):
        images, condition = inputs
        z_mean, _ = self.encoder([images, condition], training=training)
        return self.decoder([z_mean, condition], training=training)

    def terms(self, images, condition, training=False):
        """Per-image negative log-likelihood (nats), KL (nats) and per-pixel MSE."""
        images, condition = ops.convert_to_tensor(images), ops.convert_to_tensor(condition)
        z_mean, z_log_var = self.encoder([images, condition], training=training)
        z = self.sampling([z_mean, z_log_var])
        reconstruction = self.decoder([z, condition], training=training)
        dims = math.prod(images.shape[1:])  # static: the image size is fixed by the model
        squared = ops.reshape(ops.square(images - reconstruction), (-1, dims))
        variance = self.decoder_std**2
        nll = ops.sum(squared, axis=-1) / (2 * variance) + dims * 0.5 * math.log(2 * math.pi * variance)
        kl = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
        return nll, kl, ops.mean(squared, axis=-1)

    def _update(self, images, condition, training):
        nll, kl, mse = self.terms(images, condition, training=training)
        loss = ops.mean(nll + self.beta * kl)
        self.loss_tracker.update_state(loss)
        self.mse_tracker.update_state(ops.mean(mse))
        self.kl_tracker.update_state(ops.mean(kl))
        return loss

    def train_step(self, data):
        images, condition = data
        with tf.GradientTape() as tape:
            loss = self._update(images, condition, training=True)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply(gradients, self.trainable_weights)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        images, condition = data
        self._update(images, condition, training=False)
        return {metric.name: metric.result() for metric in self.metrics}

    def generate(self, condition, seed: int | None = None):
        """Decode z ~ N(0, I) under `condition`; any number of rows."""
        condition = ops.convert_to_tensor(condition, "float32")
        z = keras.random.normal((ops.shape(condition)[0], self.latent_dim), seed=seed)
        return self.decoder([z, condition])

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "beta": self.beta,
            "decoder_std": self.decoder_std,
            "seed": self.seed,
            "attribute_names": self.attribute_names,
            "attribute_table_rows": self.attribute_table.shape[0],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["decoder"] = keras.saving.deserialize_keras_object(config["decoder"])
        return cls(**config)


def build_cvae(image_size: int, n_attributes: int, filters: list[int], latent_dim: int,
               beta: float, decoder_std: float, seed: int | None = None) -> CVAE:
    model = CVAE(
        build_encoder(image_size, n_attributes, filters, latent_dim),
        build_decoder(image_size, n_attributes, filters, latent_dim),
        beta=beta,
        decoder_std=decoder_std,
        seed=seed,
    )
    return model


def load_cvae(path) -> CVAE:
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    if not isinstance(model, CVAE):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a cvae.CVAE")
    return model
