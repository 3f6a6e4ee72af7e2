"""The CPU speed-ups compute what their plain Keras parts compute."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cvae.core.config import TrainParams  # noqa: E402
from cvae.model import speedups  # noqa: E402
from cvae.model.train import make_optimizer  # noqa: E402
from tests.conftest import tiny_cvae  # noqa: E402


def trained_one_call(off: set[str]):
    """A tiny steered model after two training steps, with `off` turned off, and its outputs."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(16, 16, 16, 3)).astype(np.float32)
    condition = np.where(rng.uniform(size=(16, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    with speedups.turned_off(off):
        keras.utils.set_random_seed(0)
        model = tiny_cvae(steer=5.0, critic_fake=0.5, edge=1.0)
        model.compile(optimizer=make_optimizer(TrainParams(), steps_per_epoch=2))
        model.fit(images, condition, batch_size=8, epochs=1, verbose=0, shuffle=False)
        outputs = np.asarray(model([images, condition]))
    return model, outputs


def test_with_every_speedup_off_training_computes_the_same_numbers():
    fast, fast_outputs = trained_one_call(set())
    plain, plain_outputs = trained_one_call(set(speedups.SPEEDUPS))
    # the parts differ ...
    assert type(fast.optimizer) is speedups.FusedAdam and type(plain.optimizer) is keras.optimizers.Adam
    layer_types = {type(layer) for layer in fast.decoder.layers}, {type(layer) for layer in plain.decoder.layers}
    assert speedups.PhaseConv2DTranspose in layer_types[0] and speedups.PhaseConv2DTranspose not in layer_types[1]
    # ... the numbers do not (Adam's 1 - beta is rounded in another order: the last bits)
    for ours, theirs in zip(fast.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fast_outputs, plain_outputs, rtol=1e-3, atol=1e-4)


def test_the_output_layer_computes_the_transposed_convolution_and_its_gradients():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.normal(size=(2, 5, 6, 4)).astype(np.float32))  # not square: rows and columns apart
    phase = speedups.PhaseConv2DTranspose(3, 4, strides=2, padding="same", use_bias=False)
    plain = keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same", use_bias=False)
    phase.build(inputs.shape), plain.build(inputs.shape)
    plain.set_weights(phase.get_weights())
    results = []
    for layer in (phase, plain):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs)
            loss = tf.reduce_sum(outputs * tf.cos(outputs))  # an upstream gradient that varies
        results.append([outputs, *tape.gradient(loss, [inputs, layer.kernel])])
    assert results[0][0].shape == (2, 10, 12, 3)
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="4x4, stride 2"):
        speedups.PhaseConv2DTranspose(3, 3, strides=2, padding="same", use_bias=False).build(inputs.shape)


def test_the_matmul_shift_adds_what_broadcasting_adds():
    rng = np.random.default_rng(1)
    features, shift = rng.normal(size=(2, 4, 5, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
    expected = features + shift[:, None, None, :]
    np.testing.assert_allclose(np.asarray(speedups.add_per_image(features, shift)), expected, rtol=1e-6, atol=1e-6)
    with speedups.turned_off({"matmul_shift"}):
        np.testing.assert_allclose(np.asarray(speedups.add_per_image(features, shift)), expected, rtol=0, atol=0)


def test_turned_off_names_what_it_knows_and_restores_on_exit():
    with pytest.raises(ValueError, match=r"unknown speed-ups \['fast_mode'\]"):
        with speedups.turned_off({"fast_mode"}):
            pass
    with speedups.turned_off({"fused_adam"}):
        with speedups.turned_off(set()):
            assert type(speedups.adam(0.1)) is keras.optimizers.Adam
        assert type(speedups.adam(0.1)) is keras.optimizers.Adam
    assert type(speedups.adam(0.1)) is speedups.FusedAdam
