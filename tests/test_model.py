import dataclasses

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cvae.core.errors import CvaeError
from cvae.model.cvae import CVAE, LOG_VARIANCE_BOUNDS, LossWeights, load_cvae
from tests.conftest import tiny_cvae


@pytest.fixture(scope="module")
def model():
    return tiny_cvae()


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 16, 16, 3), dtype=np.float32), rng.choice([-1.0, 1.0], size=(n, 3)).astype(np.float32)


def test_kl_reads_the_encoder_output_as_log_variance(model):
    images, condition = batch(5)
    z_mean, z_log_var = (np.asarray(t, dtype=np.float64) for t in model.encoder([images, condition]))
    _, kl, _ = model.terms(images, condition)
    low, high = LOG_VARIANCE_BOUNDS
    z_log_var = high - np.log1p(np.exp(high - z_log_var))  # held within the bounds, as training does
    z_log_var = low + np.log1p(np.exp(z_log_var - low))
    expected = 0.5 * np.sum(np.exp(z_log_var) + z_mean**2 - 1.0 - z_log_var, axis=-1)
    np.testing.assert_allclose(np.asarray(kl), expected, rtol=1e-4)


def test_a_runaway_log_variance_is_held_at_its_bound_and_keeps_the_kl_finite():
    runaway = tiny_cvae()
    layer = runaway.encoder.get_layer("z_log_var")
    kernel, bias = layer.get_weights()
    images, condition = batch(4)
    for value, bound in ((200.0, LOG_VARIANCE_BOUNDS[1]), (-200.0, LOG_VARIANCE_BOUNDS[0])):  # e^200: inf
        layer.set_weights([np.zeros_like(kernel), np.full_like(bias, value)])
        nll, kl, _ = (np.asarray(t, dtype=np.float64) for t in runaway.terms(images, condition))
        assert np.isfinite(nll).all()
        z_mean = np.asarray(runaway.encoder([images, condition])[0], dtype=np.float64)
        held = 0.5 * np.sum(np.exp(bound) + z_mean**2 - 1.0 - bound, axis=-1)
        np.testing.assert_allclose(kl, held, rtol=1e-4)


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


def test_the_decoders_convolutions_have_their_bias_added_per_image_by_the_next_layer(model, tmp_path):
    from cvae.model.networks import FiLM, ShiftPerImage

    rng = np.random.default_rng(0)
    features, condition = rng.normal(size=(2, 4, 4, 5)).astype(np.float32), batch(2)[1]
    film = FiLM(5, carries_bias=True)
    film.build(features.shape, condition.shape)
    film.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in film.get_weights()])
    kernel, projection_bias = film.projection.get_weights()
    gamma, beta = np.split(condition @ kernel + projection_bias, 2, axis=-1)
    expected = (features + film.bias.numpy()) * (1 + gamma[:, None, None]) + beta[:, None, None]
    np.testing.assert_allclose(np.asarray(film(features, condition)), expected, rtol=1e-5, atol=1e-5)

    shift = ShiftPerImage(5)
    shift.build(features.shape, (2, 5))
    shift.bias.assign(rng.normal(size=5).astype(np.float32))
    offsets = rng.normal(size=(2, 5)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(shift(features, offsets)),
                               features + offsets[:, None, None] + shift.bias.numpy(), rtol=1e-6, atol=1e-6)
    # every transposed convolution leaves its bias to the layer after it
    convolutions = [layer for layer in model.decoder.layers if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert convolutions and not any(layer.use_bias for layer in convolutions)
    carried = [layer for layer in model.decoder.layers if isinstance(layer, FiLM | ShiftPerImage)
               and getattr(layer, "bias", None) is not None]
    assert len(carried) == len(convolutions)
    # a FiLM saved without the convolution's bias loads as it was
    assert not FiLM.from_config({"channels": 5}).carries_bias


def test_one_epoch_lowers_the_loss_and_the_model_round_trips_in_safe_mode(tmp_path):
    model = tiny_cvae()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    images, condition = batch(64)
    history = model.fit(images, condition, batch_size=16, epochs=3, verbose=0, shuffle=False).history
    assert set(history) == {"loss", "neg_elbo", "mse", "kl", "xcov", "edges"}
    assert history["loss"][-1] < history["loss"][0]
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_cvae(path)
    assert isinstance(loaded, CVAE) and loaded.loss_weights == model.loss_weights
    assert (loaded.loss_weights.beta, loaded.loss_weights.decoder_std) == (1.0, 0.1)
    np.testing.assert_allclose(np.asarray(loaded([images[:4], condition[:4]])),
                               np.asarray(model([images[:4], condition[:4]])), atol=1e-6)


def test_the_edge_term_charges_for_blur_and_wrong_textures_not_for_brightness():
    from cvae.model.cvae import edge_difference

    rows, columns = np.indices((16, 16))
    faces = np.stack([((rows // 4 + columns // 4) % 2).astype(np.float32)] * 3, axis=-1)[None] * 0.6 + 0.2
    blurred = (faces + np.roll(faces, 1, axis=1) + np.roll(faces, 1, axis=2) + np.roll(faces, 1, axis=(1, 2))) / 4
    brighter = faces + 0.2  # every pixel off by 0.2, every edge kept
    assert float(edge_difference(faces, faces)[0]) == 0.0
    assert float(edge_difference(faces, brighter)[0]) == pytest.approx(0.0, abs=1e-4)
    # the blurred faces are no further from the faces in squared error than the brighter ones...
    assert np.square(faces - blurred).sum() < np.square(faces - brighter).sum()
    # ...but only blur changes the differences between neighbours
    assert float(edge_difference(faces, blurred)[0]) > 10
    # a texture in the wrong phase has every edge's contrast right and every edge's sign
    # wrong: it must cost (matching contrast alone drew such textures where faces were unsure)
    texture = 0.5 + 0.2 * (-1.0) ** (rows + columns)[None, :, :, None] * np.ones((1, 16, 16, 3), np.float32)
    assert float(edge_difference(texture, 1.0 - texture)[0]) > 10


def test_the_edge_term_is_the_squared_error_of_the_neighbour_differences_of_each_channel():
    from cvae.model.cvae import edge_difference

    rng = np.random.default_rng(0)
    faces, reconstructions = (rng.random((2, 8, 12, 3), dtype=np.float32) for _ in range(2))
    error = faces - reconstructions  # the channels differ: a neighbour taken in the wrong channel shows
    expected = (np.square(np.diff(error, axis=1)).sum(axis=(1, 2, 3))
                + np.square(np.diff(error, axis=2)).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(np.asarray(edge_difference(faces, reconstructions)), expected, rtol=1e-5)


def test_the_edge_term_enters_the_training_objective():
    images, condition = batch(32)
    losses = {}
    for weight in (0.0, 3.0):
        keras.utils.set_random_seed(0)  # the same initial weights for both
        model = tiny_cvae(edge=weight)
        model.compile(optimizer=keras.optimizers.Adam(0.0))  # no step: both see the same weights
        losses[weight] = model.evaluate(images, condition, batch_size=32, verbose=0, return_dict=True)
    assert losses[0.0]["edges"] == pytest.approx(losses[3.0]["edges"]) and losses[0.0]["edges"] > 0
    assert losses[3.0]["loss"] == pytest.approx(losses[0.0]["loss"] + 3.0 * losses[0.0]["edges"], rel=1e-4)
    assert losses[3.0]["neg_elbo"] == pytest.approx(losses[0.0]["neg_elbo"], rel=1e-6)  # not part of the ELBO


def test_loading_something_else_is_refused(tmp_path):
    other = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(CvaeError, match="other.keras: not a cvae model: .* holds a Sequential, not a cvae.CVAE"):
        load_cvae(tmp_path / "other.keras")


def test_the_correlation_penalty_sees_attributes_copied_into_z():
    from cvae.model.cvae import cross_correlation

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
        model = tiny_cvae(xcov=weight)
        model.compile(optimizer=keras.optimizers.Adam(0.0))  # no step: both see the same weights
        losses[weight] = model.evaluate(images, condition, batch_size=32, verbose=0, return_dict=True)
    assert losses[0.0]["xcov"] == pytest.approx(losses[1000.0]["xcov"]) and losses[0.0]["xcov"] > 0
    assert losses[1000.0]["loss"] == pytest.approx(losses[0.0]["loss"] + 1000.0 * losses[0.0]["xcov"], rel=1e-4)


def _steered(weight: float, mask=None, seed: int = 0, critic_fake_weight: float = 0.0) -> CVAE:
    """A tiny CVAE with its critic; the same initial weights for every weight and mask."""
    from cvae.model.networks import build_critic, build_decoder, build_encoder

    keras.utils.set_random_seed(seed)
    weights = LossWeights(beta=1.0, decoder_std=0.1, steer=weight, steer_mask=mask, critic_fake=critic_fake_weight)
    return CVAE(build_encoder(16, 3, [8, 16], 4), build_decoder(16, 3, [8, 16], 4), weights,
                critic=build_critic(16, 3, [8]), seed=0)


def _one_step(model: CVAE, images, condition) -> dict[str, list[np.ndarray]]:
    """Each network's update in one SGD step."""
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = {part: [np.asarray(w).copy() for w in getattr(model, part).weights]
              for part in ("encoder", "decoder", "critic", "adversary") if getattr(model, part) is not None}
    model.fit(images, condition, batch_size=len(images), epochs=1, verbose=0, shuffle=False)
    return {part: [np.asarray(w) - b for w, b in zip(getattr(model, part).weights, weights)]
            for part, weights in before.items()}


def test_the_steer_term_enters_the_objective_only_for_the_masked_attributes():
    images, condition = batch(32)
    results = {}
    for weight, mask in ((0.0, None), (50.0, None), (50.0, [1.0, 0.0, 0.0])):
        model = _steered(weight, mask)
        model.compile(optimizer=keras.optimizers.Adam(0.0))
        results[weight, mask is None] = model.evaluate(images, condition, batch_size=32, verbose=0, return_dict=True)
    plain, steered, masked = results[0.0, True], results[50.0, True], results[50.0, False]
    assert steered["steer"] > 0
    assert steered["loss"] == pytest.approx(plain["loss"] + 50.0 * steered["steer"], rel=1e-4)
    # one attribute of three: about a third of the cross-entropy (an untrained critic is near log 2 on each)
    assert 0.15 < masked["steer"] / steered["steer"] < 0.55
    assert masked["critic"] < steered["critic"]


def test_the_objectives_are_the_batch_means_of_what_the_trackers_report():
    images, condition = batch(32)
    model = _steered(50.0, critic_fake_weight=2.0)
    model.loss_weights = dataclasses.replace(model.loss_weights, edge=3.0, xcov=100.0)
    steer_terms, seen = model._steer_terms, {}

    def recorded_steer_terms(*args, **kwargs):
        terms = steer_terms(*args, **kwargs)
        seen.update(zip(("steer", "real", "fake"), (np.asarray(t) for t in terms)))
        return terms

    model._steer_terms = recorded_steer_terms
    loss, critic_loss = model._update(images, condition, training=False)
    assert seen["steer"].mean() > 0 and seen["fake"].mean() > 0
    assert float(loss) == pytest.approx(float(model.loss_tracker.result()), rel=1e-5)
    # the critic's: its cross-entropy on real faces plus its lesson on decoded ones
    assert float(critic_loss) == pytest.approx(seen["real"].mean() + 2.0 * seen["fake"].mean(), rel=1e-5)


def _assert_the_term_moves_only(without: dict, with_term: dict, moved: str, kept: tuple[str, ...], helper: str):
    """A term (the difference of the two one-step updates) reaches `moved` and none of
    `kept`, while `helper` learns (from its own objective)."""
    assert max(np.abs(a - b).max() for a, b in zip(without[moved], with_term[moved])) > 1e-6
    for part in kept:
        for a, b in zip(without[part], with_term[part]):
            np.testing.assert_allclose(a, b, atol=1e-7)
    assert max(np.abs(update).max() for update in with_term[helper]) > 0


def test_the_decoder_learns_from_the_steer_term_and_the_critic_only_from_real_faces():
    images, condition = batch(32)
    unsteered = _one_step(_steered(0.0), images, condition)
    steered = _one_step(_steered(1000.0), images, condition)
    # not the encoder (z is held fixed) and not the critic (it could learn the decoder's code)
    _assert_the_term_moves_only(unsteered, steered, "decoder", ("encoder", "critic"), helper="critic")


def test_the_critic_learns_that_decoded_faces_lack_what_they_were_asked_to_show():
    images, _ = batch(8)
    # every row the same, so the steer term's shuffled targets are these rows
    condition = np.tile(np.array([[1.0, -1.0, 1.0]], "float32"), (8, 1))
    z = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    model = _steered(50.0, [1.0, 1.0, 0.0], critic_fake_weight=2.0)
    _, _, fake = (np.asarray(t) for t in model._steer_terms(images, condition, z, training=False))
    logits = np.asarray(model.critic(model.decoder([z, condition])))
    # "absent" for the one attribute that is both asked for (+1) and steered: log(1 + e^logit)
    np.testing.assert_allclose(fake, np.logaddexp(0.0, logits[:, 0]), rtol=1e-5)
    off = _steered(50.0, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(np.asarray(off._steer_terms(images, condition, z, training=False)[2]), 0.0)


def test_flipped_steer_targets_are_each_face_s_own_attributes_with_one_covered_attribute_flipped():
    condition = np.random.default_rng(0).choice([-1.0, 1.0], size=(256, 3)).astype("float32")
    mask = np.array([1.0, 0.0, 1.0], "float32")
    model = _steered(50.0, list(mask))
    model.loss_weights = dataclasses.replace(model.loss_weights, steer_flip=0.5)
    target, flipped = (np.asarray(t) for t in model.steer_targets(condition, mask))
    rows = flipped[:, 0]
    assert 0.35 < rows.mean() < 0.65  # about the share asked for
    changed = target[rows] != condition[rows]
    assert (changed.sum(axis=1) == 1).all() and not changed[:, 1].any()  # one, never the uncovered one
    assert 0.35 < changed[:, 0].mean() < 0.65  # drawn evenly from the covered ones
    # the others are whole rows of the batch (shuffled), as without the share
    rows_of_batch = {tuple(row) for row in condition}
    assert all(tuple(row) in rows_of_batch for row in target[~rows])
    model.loss_weights = dataclasses.replace(model.loss_weights, steer_flip=0.0)
    assert not np.asarray(model.steer_targets(condition, mask)[1]).any()


def test_the_critic_s_lesson_on_a_flipped_face_covers_only_the_flipped_attribute():
    images, _ = batch(8)
    condition = np.tile(np.array([[1.0, 1.0, 1.0]], "float32"), (8, 1))  # every attribute asked for
    z = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    model = _steered(50.0, critic_fake_weight=2.0)
    model.loss_weights = dataclasses.replace(model.loss_weights, steer_flip=1.0)
    _, _, fake = (np.asarray(t) for t in model._steer_terms(images, condition, z, training=False))
    # every face is flipped from +1 to -1 in one attribute: none asks for one it lacks
    np.testing.assert_array_equal(fake, 0.0)
    model.loss_weights = dataclasses.replace(model.loss_weights, steer_flip=0.0)
    _, _, shuffled = (np.asarray(t) for t in model._steer_terms(images, condition, z, training=False))
    assert (shuffled > 0).all()  # another face's attributes (here the same): all three are lessons
    lacking = -condition
    model.loss_weights = dataclasses.replace(model.loss_weights, steer_flip=1.0)
    _, _, one = (np.asarray(t) for t in model._steer_terms(images, lacking, z, training=False))
    # flipped from -1 to +1: one lesson each, fewer than the three a face asking for all would get
    assert (one > 0).all() and (one < shuffled).all()


def test_the_steer_term_reads_a_flipped_face_on_the_flipped_attribute_alone():
    images, _ = batch(8)
    condition = np.tile(np.array([[1.0, 1.0, 1.0]], "float32"), (8, 1))
    z = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    model = _steered(50.0, [1.0, 1.0, 0.0])
    model.loss_weights = dataclasses.replace(model.loss_weights, steer_flip=1.0)
    steer = np.asarray(model._steer_terms(images, condition, z, training=False)[0])
    # each face has attribute 0 or 1 flipped to -1: its term is the critic's cross-entropy
    # against "absent" on that one, log(1 + e^logit), not a sum over both covered ones
    candidates = []
    for column in (0, 1):
        target = condition.copy()
        target[:, column] = -1.0
        logits = np.asarray(model.critic(model.decoder([z, target])))
        candidates.append(np.logaddexp(0.0, logits[:, column]))
    nearest = np.min([np.abs(steer - candidate) / candidate for candidate in candidates], axis=0)
    assert (nearest < 1e-4).all(), (steer, candidates)


def test_a_model_steered_with_flipped_targets_round_trips_with_its_share(tmp_path):
    model = _steered(5.0)
    model.loss_weights = dataclasses.replace(model.loss_weights, steer_flip=0.25)
    model.save(tmp_path / "m.keras")
    assert load_cvae(tmp_path / "m.keras").loss_weights.steer_flip == 0.25


def test_the_critics_lesson_on_decoded_faces_trains_the_critic_and_not_the_decoder():
    images, condition = batch(32)
    plain = _one_step(_steered(50.0), images, condition)
    strict = _one_step(_steered(50.0, critic_fake_weight=5.0), images, condition)
    for a, b in zip(plain["decoder"], strict["decoder"]):
        np.testing.assert_allclose(a, b, atol=1e-7)
    assert max(np.abs(a - b).max() for a, b in zip(plain["critic"], strict["critic"])) > 1e-6


def test_a_steered_model_round_trips_with_its_critic(tmp_path):
    model = _steered(5.0, [1.0, 0.0, 1.0], critic_fake_weight=2.0)
    images, _ = batch(2)
    model.save(tmp_path / "m.keras")
    loaded = load_cvae(tmp_path / "m.keras")
    w = loaded.loss_weights
    assert (w.steer, w.steer_mask, w.critic_fake) == (5.0, (1.0, 0.0, 1.0), 2.0)
    np.testing.assert_allclose(np.asarray(loaded.critic(images)), np.asarray(model.critic(images)), atol=1e-6)


def test_a_colour_shared_by_every_pixel_is_learnt_in_three_epochs():
    """Faces of one flat colour each: the decoder's direct colour path learns them quickly
    (in the full model, the conv stack alone took 9 to 15 epochs to find a background's
    colour; here it stays near the mean image after three)."""
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.15, 0.85, size=(512, 1, 1, 3))
    images = np.broadcast_to(colours, (512, 16, 16, 3)).astype(np.float32)
    condition = rng.choice([-1.0, 1.0], size=(512, 3)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = tiny_cvae()
    model.compile(optimizer=keras.optimizers.Adam(2e-3, global_clipnorm=1.0))
    model.fit(images, condition, batch_size=32, epochs=3, verbose=0, shuffle=False)
    mse = np.mean((np.asarray(model([images, condition])) - images) ** 2)
    mean_image_mse = np.mean((images - images.mean(axis=0)) ** 2)
    assert mse < mean_image_mse / 5  # 17x below with the path, 2.3x without


def test_the_critic_reads_pixels_centred_on_mid_grey():
    """A mid-grey face reaches the critic's convolutions as zeros (pixels centred to [-1, 1],
    as in the encoder and the classifier), so its logits are the output layer's bias alone."""
    from cvae.model.networks import build_critic

    keras.utils.set_random_seed(0)
    critic = build_critic(16, 3, [8, 16])
    logits_layer = critic.get_layer("logits")
    logits_layer.bias.assign(np.array([0.5, -1.0, 2.0], dtype=np.float32))
    grey = np.full((2, 16, 16, 3), 0.5, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(critic(grey)), [[0.5, -1.0, 2.0]] * 2, atol=1e-6)
    assert np.abs(np.asarray(critic(grey + 0.2)) - [0.5, -1.0, 2.0]).max() > 1e-3


def test_the_critic_is_blind_to_a_pattern_alternating_from_pixel_to_pixel():
    """The critic reads 2x2 means, which cancel a texture at the pixel grid's frequency (so
    the steer term cannot be satisfied by one), and still sees a shape drawn as strongly."""
    from cvae.model.networks import build_critic

    keras.utils.set_random_seed(0)
    critic = build_critic(16, 3, [8, 16])
    faces, _ = batch(4)
    rows, columns = np.indices((16, 16))
    dots = (0.2 * (-1.0) ** (rows + columns))[None, :, :, None].astype(np.float32)
    ring = np.zeros((1, 16, 16, 1), dtype=np.float32)
    ring[0, 4:12, 4:12], ring[0, 6:10, 6:10] = -0.2, 0.0  # a dark square outline, like a lens
    plain = np.asarray(critic(faces))
    np.testing.assert_allclose(np.asarray(critic(faces + dots)), plain, atol=1e-5)
    assert np.abs(np.asarray(critic(faces + ring)) - plain).max() > 1e-3


def test_a_resizing_decoder_has_no_transposed_convolution_and_round_trips(tmp_path):
    model = tiny_cvae(upsampling="resize")
    kinds = {type(layer).__name__ for layer in model.decoder.layers}
    assert "UpSampling2D" in kinds and not any("Transpose" in kind for kind in kinds)
    images, condition = batch(4)
    assert tuple(model([images, condition]).shape) == (4, 16, 16, 3)
    model.save(tmp_path / "resize.keras")
    loaded = load_cvae(tmp_path / "resize.keras")
    np.testing.assert_allclose(np.asarray(loaded([images, condition])), np.asarray(model([images, condition])),
                               atol=1e-6)
    transposed = tiny_cvae()
    assert any("Transpose" in type(layer).__name__ for layer in transposed.decoder.layers)


def _adversarial(weight: float, seed: int = 0) -> CVAE:
    """A tiny CVAE with its latent adversary; the same initial weights for every weight."""
    from cvae.model.networks import build_adversary, build_decoder, build_encoder

    keras.utils.set_random_seed(seed)
    return CVAE(build_encoder(16, 3, [8, 16], 4), build_decoder(16, 3, [8, 16], 4),
                LossWeights(beta=1.0, decoder_std=0.1, adversary=weight), adversary=build_adversary(4, 3, width=16),
                seed=0)


def test_the_adversarys_term_is_least_when_it_reads_from_z_only_the_batchs_share():
    _, condition = batch(8)
    model = _adversarial(1.0)
    z = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    share = ((condition + 1) / 2).mean(axis=0)
    least = -(share * np.log(share) + (1 - share) * np.log(1 - share)).sum()  # the shares' entropy
    read, unreadable = (np.asarray(t) for t in model._adversary_terms(z, condition, training=False))
    assert (unreadable > least + 1e-3).all()  # a random network reads something from z
    logits = np.asarray(model.adversary(z))
    np.testing.assert_allclose(read, np.logaddexp(0.0, -condition * logits).sum(axis=-1), rtol=1e-5)
    final = model.adversary.get_layer("logits")  # reads nothing from z, guesses each share
    final.set_weights([np.zeros_like(final.get_weights()[0]), np.log(share / (1 - share))])
    read, unreadable = (np.asarray(t) for t in model._adversary_terms(z, condition, training=False))
    np.testing.assert_allclose(unreadable, least, rtol=1e-5)


def test_the_adversarys_term_enters_the_objective_and_its_lesson_the_helpers_loss():
    images, condition = batch(32)
    results = {}
    for weight in (0.0, 20.0):
        model = _adversarial(weight)
        model.compile(optimizer=keras.optimizers.Adam(0.0))
        results[weight] = model.evaluate(images, condition, batch_size=32, verbose=0, return_dict=True)
        if weight:
            z_mean, _ = model.encoder([images, condition])
            read, unreadable = (np.asarray(t) for t in model._adversary_terms(z_mean, condition, training=False))
            loss, helpers_loss = model._update(images, condition, training=False)
            assert float(helpers_loss) == pytest.approx(read.mean(), rel=1e-5)
    assert results[20.0]["adversary"] == pytest.approx(results[0.0]["adversary"])
    assert results[0.0]["adversary"] > 0
    assert results[20.0]["loss"] == pytest.approx(results[0.0]["loss"] + 20.0 * unreadable.mean(), rel=1e-4)


def test_the_encoder_learns_from_the_adversarys_term_and_the_adversary_only_from_its_lesson():
    images, condition = batch(32)
    off = _one_step(_adversarial(0.0), images, condition)
    on = _one_step(_adversarial(1000.0), images, condition)
    # not the decoder (it reads z, not the adversary) and not the adversary (it would learn to read nothing)
    _assert_the_term_moves_only(off, on, "encoder", ("decoder", "adversary"), helper="adversary")


def test_a_model_with_a_latent_adversary_round_trips_with_it(tmp_path):
    model = tiny_cvae(adversary=7.0)
    z = np.random.default_rng(0).standard_normal((2, 4)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = load_cvae(tmp_path / "m.keras")
    assert loaded.loss_weights.adversary == 7.0 and loaded.critic is None
    np.testing.assert_allclose(np.asarray(loaded.adversary(z)), np.asarray(model.adversary(z)), atol=1e-6)
    assert tiny_cvae(seed=None).adversary is None  # weight 0: no adversary to train


@pytest.mark.slow
def test_the_adversary_makes_an_attribute_that_z_could_carry_follow_c():
    """Faces whose brightness varies continuously, with attribute 0 its sign: z has to hold
    the brightness, and so holds the attribute too, unless the adversary charges for it.
    Then the decoder takes the sign from c, and flipping c flips the face."""
    rng = np.random.default_rng(0)
    brightness = rng.uniform(-1, 1, size=512)
    images = np.broadcast_to((0.5 + 0.35 * brightness)[:, None, None, None], (512, 16, 16, 3)).astype(np.float32)
    condition = rng.choice([-1.0, 1.0], size=(512, 3)).astype(np.float32)
    condition[:, 0] = np.sign(brightness)
    flipped = condition * np.array([-1.0, 1.0, 1.0], np.float32)
    success = {}
    for weight in (0.0, 200.0):
        keras.utils.set_random_seed(0)
        model = tiny_cvae(adversary=weight)
        model.compile(optimizer=keras.optimizers.Adam(2e-3, global_clipnorm=1.0))
        model.fit(images, condition, batch_size=32, epochs=20, verbose=0, shuffle=False)
        z_mean = np.asarray(model.encoder([images, condition])[0])
        edited = np.asarray(model.decoder([z_mean, flipped])).mean(axis=(1, 2, 3))
        success[weight] = float(np.mean(np.sign(edited - 0.5) == flipped[:, 0]))
    assert success[0.0] < 0.4 and success[200.0] > 0.7  # measured: 0.19 and 0.90


def _resaved_with_config(source, target, change) -> None:
    """Copy a .keras file with its config.json changed by `change` (as an older release saved it)."""
    import json
    import zipfile

    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename == "config.json":
                saved = json.loads(data)
                change(saved["config"])
                data = json.dumps(saved).encode()
            new.writestr(item, data)


def test_a_model_saved_with_flat_weights_and_a_retired_option_still_loads(tmp_path):
    """Registry versions saved before the weights became one LossWeights keep loading: a
    rollback may go to any of them."""
    model = tiny_cvae(beta=2.0, decoder_std=0.15, xcov=100.0, steer=30.0, critic_fake=0.5)
    model.save(tmp_path / "today.keras")

    def flatten(config):
        weights = config.pop("loss_weights")
        config.update({key if key in ("beta", "decoder_std", "kl_warmup_steps", "steer_mask") else f"{key}_weight": value
                       for key, value in weights.items()})
        config["steer_targets"] = "shuffled"

    _resaved_with_config(tmp_path / "today.keras", tmp_path / "older.keras", flatten)
    older = load_cvae(tmp_path / "older.keras")
    assert older.loss_weights == model.loss_weights
    np.testing.assert_array_equal(older.decoder.get_weights()[0], model.decoder.get_weights()[0])

    # a retired option with a value that is no longer built in is still refused
    _resaved_with_config(tmp_path / "older.keras", tmp_path / "other.keras",
                         lambda config: config.update(steer_targets="fixed"))
    with pytest.raises(CvaeError, match="steer_targets"):
        load_cvae(tmp_path / "other.keras")
