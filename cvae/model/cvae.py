"""The conditional VAE (Keras 3, TensorFlow backend), in the shape of keras.io's vae.py.

Encoder q(z | x, c) and decoder p(x | z, c) (their layers are in `cvae.model.networks`).
The encoder outputs the log-variance; sampling and the KL term both read it so.
The loss is computed in float32 whatever the precision policy: the encoder's outputs,
the sampling and the decoder's output are float32.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf
from keras import layers, ops

from cvae.model.files import load_keras_file
from cvae.model.networks import PACKAGE, build_adversary, build_critic, build_decoder, build_encoder

LOG_VARIANCE_BOUNDS = (-10.0, 2.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampling(layers.Layer):
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I), for any batch size."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # nothing to build: marked built so that Keras, building the model before fit under
        # a distribution strategy, does not try to call the whole CVAE on a batch
        self.built = True

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """The objective, per image: the negative log-likelihood under a Gaussian of std
    `decoder_std` on [0, 1] pixels, plus `beta` times the KL (ramped up from 0 over the
    first `kl_warmup_steps` optimizer steps), plus each further term times its weight.
    `steer_mask` picks the attributes the steer term covers (1) and leaves out (0); None
    covers every one. `steer_flip` is the share of the steer term's faces decoded with their
    own attributes and one covered attribute flipped, and judged on that one (the rest:
    another face's, judged on every covered one). A zero `steer` weight leaves the critic
    out, a zero `adversary` weight the adversary."""

    beta: float = 1.0
    decoder_std: float = 0.1
    kl_warmup_steps: int = 0
    xcov: float = 0.0
    edge: float = 0.0
    steer: float = 0.0
    critic_fake: float = 0.0
    adversary: float = 0.0
    steer_flip: float = 0.0
    steer_mask: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.steer_mask is not None:  # a tuple: the object stays frozen and hashable
            object.__setattr__(self, "steer_mask", tuple(float(v) for v in self.steer_mask))


@keras.saving.register_keras_serializable(package=PACKAGE)
class CVAE(keras.Model):
    """Trains on the negative ELBO with a Gaussian likelihood of fixed std on [0, 1] pixels
    and a beta-weighted KL; tracks per-pixel MSE and per-image KL on their own."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model, loss_weights: LossWeights | dict | None = None,
                 critic: keras.Model | None = None, adversary: keras.Model | None = None, seed: int | None = None,
                 attribute_names: list[str] | None = None, attribute_table_rows: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        # a dict when read back from a saved model's config
        self.loss_weights = (loss_weights if isinstance(loss_weights, LossWeights)
                             else LossWeights(**(loss_weights or {})))
        # optional: the model's own attribute classifier, which the steer term asks to see
        # the attributes in decoded faces, and a small network that reads the attributes
        # from the latent means, which the adversary term asks the encoder to leave blind
        self.critic = critic
        self.adversary = adversary
        # The model travels without its dataset: it carries the attribute names and a sample
        # of training attribute rows, from which `cvae generate` draws the attributes a user
        # did not set (joint prevalence, so no bald face with blond hair).
        self.attribute_names = list(attribute_names or [f"attribute_{i}" for i in range(self.n_attributes)])
        self.attribute_table = self.add_weight(shape=(attribute_table_rows, self.n_attributes),
                                               initializer="zeros", trainable=False, name="attribute_table")
        self.seed = seed
        self.sampling = Sampling(seed=seed, dtype="float32")  # mixed precision would round the noise
        self.steer_seed_generator = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.loss_tracker = keras.metrics.Mean(name="loss")  # the training objective (KL weighted)
        self.neg_elbo_tracker = keras.metrics.Mean(name="neg_elbo")  # nll + kl, unweighted
        self.mse_tracker = keras.metrics.Mean(name="mse")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.xcov_tracker = keras.metrics.Mean(name="xcov")
        self.edge_tracker = keras.metrics.Mean(name="edges")  # the edge term, in nats per image
        self.steer_tracker = keras.metrics.Mean(name="steer")  # cross-entropy of edited decodes
        self.critic_tracker = keras.metrics.Mean(name="critic")  # cross-entropy on real images
        self.adversary_tracker = keras.metrics.Mean(name="adversary")  # its cross-entropy on z
        self.built = True  # the encoder and decoder are functional models, built already

    @property
    def metrics(self):
        trackers = [self.loss_tracker, self.neg_elbo_tracker, self.mse_tracker, self.kl_tracker, self.xcov_tracker,
                    self.edge_tracker]
        trackers += [self.steer_tracker, self.critic_tracker] if self.critic is not None else []
        return trackers + ([self.adversary_tracker] if self.adversary is not None else [])

    @property
    def seed_generators(self) -> list[keras.random.SeedGenerator]:
        """The random generators whose state a checkpoint keeps (save_weights does not)."""
        return [self.sampling.seed_generator, self.steer_seed_generator]

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
        return self._terms(images, condition, training)[:3]

    def _terms(self, images, condition, training):
        images, condition = ops.cast(images, "float32"), ops.cast(condition, "float32")
        z_mean, z_log_var = self.encoder([images, condition], training=training)
        z_log_var = bounded_log_variance(z_log_var)
        z = self.sampling([z_mean, z_log_var])
        reconstruction = self.decoder([z, condition], training=training)
        dims = math.prod(images.shape[1:])  # static: the image size is fixed by the model
        squared = ops.reshape(ops.square(images - reconstruction), (-1, dims))
        variance = self.loss_weights.decoder_std**2
        nll = ops.sum(squared, axis=-1) / (2 * variance) + dims * 0.5 * math.log(2 * math.pi * variance)
        kl = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)
        edges = edge_difference(images, reconstruction) / (2 * variance)
        return nll, kl, ops.mean(squared, axis=-1), z_mean, z, edges

    def kl_weight(self):
        """beta, ramped linearly from 0 over the first `kl_warmup_steps` optimizer steps.

        Read from the optimizer's step counter in the graph, so a resumed run (which
        restores the optimizer) continues the ramp where it stopped."""
        w = self.loss_weights
        if not w.kl_warmup_steps or self.optimizer is None:
            return ops.convert_to_tensor(w.beta, "float32")
        progress = ops.cast(self.optimizer.iterations, "float32") / w.kl_warmup_steps
        return w.beta * ops.minimum(progress, 1.0)

    @property
    def helpers(self) -> list[keras.Model]:
        """The networks trained on their own objectives beside the encoder and decoder."""
        return [network for network in (self.critic, self.adversary) if network is not None]

    def _update(self, images, condition, training):
        """Update the trackers; return the model's objective and the helpers' (batch means)."""
        w = self.loss_weights
        condition = ops.cast(condition, "float32")
        nll, kl, mse, z_mean, z, edges = self._terms(images, condition, training)
        xcov = cross_correlation(z_mean, condition)
        # The objectives are sums of the terms' batch means: the gradient of a per-image sum
        # reads the shapes of all its terms, so with a batch of unknown size every term's
        # gradient waited for the last term to be computed (a training step 1-2% longer on
        # a 2-core CPU)
        kl_weight = self.kl_weight()
        loss = ops.mean(nll) + kl_weight * ops.mean(kl) + w.xcov * xcov + w.edge * ops.mean(edges)
        critic_loss = ops.zeros(())
        if self.critic is not None:
            steer, critic_real, critic_fake = self._steer_terms(images, condition, z, training)
            loss = loss + w.steer * ops.mean(steer)
            critic_loss = ops.mean(critic_real) + w.critic_fake * ops.mean(critic_fake)
            self.steer_tracker.update_state(steer)
            self.critic_tracker.update_state(critic_real)
        if self.adversary is not None:
            read, unreadable = self._adversary_terms(z_mean, condition, training)
            loss = loss + w.adversary * ops.mean(unreadable)
            critic_loss = critic_loss + ops.mean(read)
            self.adversary_tracker.update_state(read)
        # trackers are weighted by images, so an epoch's metric is a mean over images (a
        # short last batch counts for what it holds) and replicas' shares add up
        self.loss_tracker.update_state(loss, sample_weight=ops.cast(ops.shape(nll)[0], "float32"))
        self.neg_elbo_tracker.update_state(nll + kl)
        self.mse_tracker.update_state(mse)
        self.kl_tracker.update_state(kl)
        self.xcov_tracker.update_state(xcov)
        self.edge_tracker.update_state(edges)
        return loss, critic_loss

    def _steer_terms(self, images, condition, z, training):
        """Per image: the critic's cross-entropy on the face decoded with another image's
        attributes (the batch's rows shuffled: plausible combinations), on the real face,
        and against "absent" for every attribute the decoded face was asked to show (the
        critic learns the last two; the last weighs `critic_fake_weight`, and with 0 it is
        not computed).

        z is held fixed: the steer term teaches the decoder to obey c, not the encoder to
        code for the edit. The second lesson makes the critic strict: it never learns to
        see an attribute in a decoded face (so it and the decoder cannot agree on a code of
        their own), only that a decoded one does not count until it looks like the real
        ones. Learning from real faces alone, it saw a smile in 96% of the faces given one
        where the classifier saw 42%, and the steer term had nothing left to teach."""
        w = self.loss_weights
        mask = ops.convert_to_tensor(w.steer_mask or [1.0] * self.n_attributes, "float32")
        target, flipped = self.steer_targets(condition, mask)
        edited = self.decoder([ops.stop_gradient(z), target], training=training)
        # A flipped face is read on the flipped attribute alone. Its others are the face's
        # own, which the decoder keeps from z and c as in its reconstruction. Read on them
        # too, the attributes the critic sees through one another would work against the
        # flip: on real faces a smile shows in the cheekbones as well, so "smiling, without
        # high cheekbones" would ask the decoder for a smile and for none.
        read = ops.where(flipped, mask * ops.cast(target != condition, "float32"), mask)

        def cross_entropy(logits, attributes, covered):
            labels = (attributes + 1.0) / 2.0  # -1/+1 to 0/1
            per_attribute = ops.binary_crossentropy(labels, ops.cast(logits, "float32"), from_logits=True)
            return ops.sum(per_attribute * covered, axis=-1)

        real = ops.cast(images, "float32")
        edited_logits = self.critic(edited, training=training)
        steer = cross_entropy(edited_logits, target, read)
        critic_real = cross_entropy(self.critic(real, training=training), condition, mask)
        if not w.critic_fake:
            return steer, critic_real, ops.zeros_like(critic_real)
        # the steer term's critic pass serves the lesson too (one pass fewer per step): the
        # lesson is differentiated for the critic's weights alone (train_step), so nothing of
        # it reaches the decoder through `edited`; on a flipped face it too covers only the
        # flipped attribute, the others showing as the real face shows them
        logits = ops.cast(edited_logits, "float32")
        asked = ops.cast(target > 0, "float32") * read
        absent = ops.binary_crossentropy(ops.zeros_like(logits), logits, from_logits=True)
        return steer, critic_real, ops.sum(absent * asked, axis=-1)

    def steer_targets(self, condition, mask):
        """The attributes the steer term decodes each face with, and which faces (a column of
        booleans) have their own with one attribute flipped.

        Another face's attributes (the batch's rows shuffled) are plausible combinations:
        what sampling asks for. An edit asks for a face's own attributes with one flipped
        (glasses on a young woman wearing lipstick), combinations the data may never show;
        a share `steer_flip` of the faces are decoded so, the attribute flipped drawn
        uniformly from those the mask covers."""
        target = keras.random.shuffle(condition, axis=0, seed=self.steer_seed_generator)
        share = self.loss_weights.steer_flip
        if not share:
            return target, ops.zeros_like(condition[:, :1], dtype="bool")
        scores = keras.random.uniform(ops.shape(condition), seed=self.steer_seed_generator) * mask
        one = ops.one_hot(ops.argmax(scores, axis=-1), ops.shape(condition)[-1], dtype="float32")
        flipped = keras.random.uniform(ops.shape(condition)[:1], seed=self.steer_seed_generator) < share
        flipped = ops.expand_dims(flipped, -1)
        return ops.where(flipped, condition * (1.0 - 2.0 * one), target), flipped

    def _adversary_terms(self, z_mean, condition, training):
        """Per image: the adversary's cross-entropy on the true attributes (its lesson) and
        on the batch's share of each attribute (the encoder's term: lowest where the
        adversary reads from z no more than the share it would guess without z).

        A latent adversary (Lample et al. 2017, Fader networks): where z holds the
        attributes, the decoder learns them from z and ignores c, so an encoded face keeps
        its smile whatever c says. XCov removes only linear traces; this any trace the
        adversary can read. The share rather than Fader networks' flipped labels: a
        bounded target that asks for no information, where flipped labels (or even odds)
        ask z to code c in reverse (or to hide even how common an attribute is)."""
        labels = (condition + 1.0) / 2.0
        logits = ops.cast(self.adversary(z_mean, training=training), "float32")
        read = ops.binary_crossentropy(labels, logits, from_logits=True)
        share = ops.broadcast_to(ops.mean(labels, axis=0, keepdims=True), ops.shape(labels))
        unreadable = ops.binary_crossentropy(share, logits, from_logits=True)
        return ops.sum(read, axis=-1), ops.sum(unreadable, axis=-1)

    def train_step(self, data):
        images, condition = data
        with tf.GradientTape(persistent=bool(self.helpers)) as tape:
            loss, critic_loss = self._update(images, condition, training=True)
            # Each replica sees its share of the batch and the optimizer sums the replicas'
            # gradients, so each contributes its mean / replicas. scale_loss multiplies by
            # the loss scale under mixed_float16 (a LossScaleOptimizer, which compile puts in
            # and whose apply unscales the gradients); otherwise it changes nothing.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
            scaled_critic_loss = self.optimizer.scale_loss(critic_loss / replicas)
        if not self.helpers:
            gradients = tape.gradient(scaled_loss, self.trainable_weights)
            self.optimizer.apply(gradients, self.trainable_weights)
        else:
            # two objectives: the critic learns the attributes from real faces only (were it
            # to learn to see them in decoded ones too, it and the decoder could agree on a
            # code no one else sees); from decoded faces it learns only that they do not count.
            # The adversary learns to read c from z, which the encoder's term works against.
            # Each objective is differentiated for its own weights alone: the helpers' read
            # the decoded faces and z, and must not reach the decoder or encoder through them
            generator = self.encoder.trainable_weights + self.decoder.trainable_weights
            helpers = [weight for network in self.helpers for weight in network.trainable_weights]
            gradients = tape.gradient(scaled_loss, generator) + tape.gradient(scaled_critic_loss, helpers)
            del tape
            self.optimizer.apply(gradients, generator + helpers)
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
        def serialized(network):
            return None if network is None else keras.saving.serialize_keras_object(network)

        return {
            **super().get_config(),
            "encoder": serialized(self.encoder),
            "decoder": serialized(self.decoder),
            "loss_weights": dataclasses.asdict(self.loss_weights),
            "critic": serialized(self.critic),
            "adversary": serialized(self.adversary),
            "seed": self.seed,
            "attribute_names": self.attribute_names,
            "attribute_table_rows": self.attribute_table.shape[0],
        }

    @classmethod
    def from_config(cls, config):
        config = upgraded_config(config)
        for network in ("encoder", "decoder", "critic", "adversary"):
            if config.get(network) is not None:
                config[network] = keras.saving.deserialize_keras_object(config[network])
        return cls(**config)


# steer targets were once a choice; "shuffled" (the batch's rows shuffled) is the one kept
RETIRED_OPTIONS = {"steer_targets": "shuffled"}


def upgraded_config(config: dict) -> dict:
    """A saved CVAE's config in today's form, so that every model in a registry still loads
    (a rollback may go to any of them): weights saved as flat keywords (`beta`,
    `steer_weight`, ...) move into `loss_weights`, and retired options are dropped when
    they hold the value that is now built in."""
    config = dict(config)
    fields = {field.name for field in dataclasses.fields(LossWeights)}
    networks = {"encoder", "decoder", "critic", "adversary"}  # config keys of their own, not weights
    flat = {key: key.removesuffix("_weight") for key in config
            if (key.endswith("_weight") and key.removesuffix("_weight") in fields) or (key in fields - networks)}
    if flat:
        weights = dict(config.get("loss_weights") or {})
        weights.update({field: config.pop(key) for key, field in flat.items()})
        config["loss_weights"] = weights
    for option, built_in in RETIRED_OPTIONS.items():
        if option in config and config[option] == built_in:
            del config[option]
    return config


def bounded_log_variance(log_var, low: float = LOG_VARIANCE_BOUNDS[0], high: float = LOG_VARIANCE_BOUNDS[1]):
    """The encoder's log-variance held smoothly within [low, high] (soft minimum, then soft
    maximum; the gradient never vanishes). Unbounded, steered runs on real faces showed
    mean KLs of up to 3.5e9 nats in their first epoch (the KL weight still near 0), from
    runaway variances, and every run steered with flipped attributes ended in NaN; bounded,
    none has. No posterior needs a variance above the prior's e^0 by much, or below e^-10."""
    log_var = high - ops.softplus(high - log_var)
    return low + ops.softplus(log_var - low)


def cross_correlation(z_mean, condition):
    """Half the sum of squared correlations between the latent means and the attributes
    over a batch (XCov, Cheung et al. 2014, on correlations: shrinking z cannot lower it).
    Zero when z holds no linear trace of c, so the decoder has to take the attributes from
    c, which is what makes them steerable."""
    def standardised(x):
        centred = x - ops.mean(x, axis=0, keepdims=True)
        return centred / ops.sqrt(ops.mean(ops.square(centred), axis=0, keepdims=True) + 1e-6)

    n = ops.cast(ops.shape(z_mean)[0], "float32")
    correlation = ops.matmul(ops.transpose(standardised(z_mean)), standardised(condition)) / n
    return 0.5 * ops.sum(ops.square(correlation))


def edge_difference(images, reconstruction):
    """Per image: the summed squared error of the differences between neighbouring pixels
    (across and down) of the reconstruction against those of the face.

    The same optimum as the likelihood's (the mean of what the decoder cannot tell apart),
    but it weighs an error by how fast it changes from pixel to pixel: blurred edges (a
    lens rim, a moustache, the corners of a mouth) cost more than under the likelihood
    alone, so the decoder learns them sooner. Signed differences, not their size
    (Mathieu et al. 2016): matching only the contrast's size let the decoder fill the eye
    region of faces it could not place with a dotted texture of the right contrast."""
    # The differences are linear, so those of the error are the errors of the differences.
    # ops.slice, not x[:, 1:]: a strided slice's gradient (StridedSliceGrad) cost 18 ms of
    # a 100 ms training step on the CPU; a plain slice's gradient is a pad.
    # Rows of width * channels values: the neighbour across is `channels` values on, and
    # the innermost axis is long, which the CPU's vector units need (3 channels alone
    # made every op of the term a slow strided loop).
    _, height, width, channels = images.shape
    error = ops.reshape(ops.cast(images, "float32") - reconstruction, (-1, height, width * channels))

    def difference(axis, step):
        size = [-1, height, width * channels]
        size[axis] -= step
        after = [0, 0, 0]
        after[axis] = step
        return ops.slice(error, after, size) - ops.slice(error, [0, 0, 0], size)

    down, across = difference(1, 1), difference(2, channels)
    return ops.sum(ops.square(down), axis=(1, 2)) + ops.sum(ops.square(across), axis=(1, 2))


def build_cvae(image_size: int, n_attributes: int, filters: list[int], latent_dim: int,
               loss_weights: LossWeights = LossWeights(), seed: int | None = None,
               attribute_names: list[str] | None = None, attribute_rows=None,
               upsampling: str = "transposed") -> CVAE:
    """`attribute_rows`: training attribute rows (-1/+1) to keep with the model. A
    positive steer weight adds the critic, a positive adversary weight the latent
    adversary. `upsampling`: the decoder's (cvae.model.networks.build_decoder)."""
    rows = 0 if attribute_rows is None else len(attribute_rows)
    model = CVAE(
        build_encoder(image_size, n_attributes, filters, latent_dim),
        build_decoder(image_size, n_attributes, filters, latent_dim, upsampling),
        loss_weights=loss_weights,
        critic=build_critic(image_size, n_attributes, filters[:-1] or filters) if loss_weights.steer > 0 else None,
        adversary=build_adversary(latent_dim, n_attributes) if loss_weights.adversary > 0 else None,
        seed=seed,
        attribute_names=attribute_names,
        attribute_table_rows=rows,
    )
    if rows:
        model.attribute_table.assign(ops.convert_to_tensor(attribute_rows, "float32"))
    return model


def load_cvae(path) -> CVAE:
    """The CVAE at `path`, or a CvaeError that says why the file is not one."""
    return load_keras_file(path, CVAE, "model", "a cvae model",
                           "{path}: not a cvae model: {path} holds a {held}, not a cvae.CVAE")
