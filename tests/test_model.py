import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cvae.model import CVAE, build_cvae, load_cvae


@pytest.fixture(scope="module")
def model():
    return build_cvae(image_size=16, n_attributes=3, filters=[8, 16], latent_dim=4, beta=1.0,
                      decoder_std=0.1, seed=0)


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 16, 16, 3), dtype=np.float32), rng.choice([-1.0, 1.0], size=(n, 3)).astype(np.float32)


def test_kl_reads_the_encoder_output_as_log_variance(model):
    images, condition = batch(5)
    z_mean, z_log_var = (np.asarray(t, dtype=np.float64) for t in model.encoder([images, condition]))
    _, kl, _ = model.terms(images, condition)
    expected = 0.5 * np.sum(np.exp(z_log_var) + z_mean**2 - 1.0 - z_log_var, axis=-1)
    np.testing.assert_allclose(np.asarray(kl), expected, rtol=1e-4)


def test_sampling_and_generation_work_for_any_batch_size(model):
    for n in (1, 3, 17):
        images, condition = batch(n)
        assert np.asarray(model.terms(images, condition)[0]).shape == (n,)
        generated = np.asarray(model.generate(condition, seed=1))
        assert generated.shape == (n, 16, 16, 3)
        assert generated.min() >= 0.0 and generated.max() <= 1.0  # sigmoid: the data's range


def test_the_decoder_uses_the_condition_at_every_stage(model):
    z = np.zeros((1, 4), dtype=np.float32)
    on, off = np.ones((1, 3), np.float32), -np.ones((1, 3), np.float32)
    assert np.abs(np.asarray(model.decoder([z, on])) - np.asarray(model.decoder([z, off]))).max() > 1e-4
    modulated = [layer for layer in model.decoder.layers if type(layer).__name__ == "FiLM"]
    assert len(modulated) == len([8, 16])  # the dense stem and each upsampling block but the output


def test_one_epoch_lowers_the_loss_and_the_model_round_trips_in_safe_mode(tmp_path):
    model = build_cvae(image_size=16, n_attributes=3, filters=[8, 16], latent_dim=4, beta=1.0,
                       decoder_std=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    images, condition = batch(64)
    history = model.fit(images, condition, batch_size=16, epochs=3, verbose=0, shuffle=False).history
    assert set(history) == {"loss", "neg_elbo", "mse", "kl", "xcov"}
    assert history["loss"][-1] < history["loss"][0]
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_cvae(path)
    assert isinstance(loaded, CVAE) and (loaded.beta, loaded.decoder_std) == (1.0, 0.1)
    np.testing.assert_allclose(np.asarray(loaded([images[:4], condition[:4]])),
                               np.asarray(model([images[:4], condition[:4]])), atol=1e-6)


def test_loading_something_else_is_refused(tmp_path):
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(TypeError, match="not a cvae.CVAE"):
        load_cvae(tmp_path / "other.keras")


def test_the_correlation_penalty_sees_attributes_copied_into_z():
    from cvae.model import cross_correlation

    rng = np.random.default_rng(0)
    condition = rng.choice([-1.0, 1.0], size=(512, 3)).astype(np.float32)
    independent = rng.standard_normal((512, 4)).astype(np.float32)
    copied = independent.copy()
    copied[:, 0] = 0.1 * condition[:, 1]  # a small copy: correlation, unlike covariance, ignores scale
    assert float(cross_correlation(independent, condition)) < 0.05
    assert float(cross_correlation(copied, condition)) == pytest.approx(0.5, abs=0.05)


def test_the_correlation_penalty_enters_the_training_objective():
    images, condition = batch(32)
    losses = {}
    for weight in (0.0, 1000.0):
        keras.utils.set_random_seed(0)  # the same initial weights for both
        model = build_cvae(image_size=16, n_attributes=3, filters=[8, 16], latent_dim=4, beta=1.0,
                           decoder_std=0.1, seed=0, xcov_weight=weight)
        model.compile(optimizer=keras.optimizers.Adam(0.0))  # no step: both see the same weights
        losses[weight] = model.evaluate(images, condition, batch_size=32, verbose=0, return_dict=True)
    assert losses[0.0]["xcov"] == pytest.approx(losses[1000.0]["xcov"]) and losses[0.0]["xcov"] > 0
    assert losses[1000.0]["loss"] == pytest.approx(losses[0.0]["loss"] + 1000.0 * losses[0.0]["xcov"], rel=1e-4)
