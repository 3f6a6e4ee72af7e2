"""Sample quality: grid artifacts planted on drawn faces are flagged and clean faces are
not; the Fréchet distance matches its closed form; the classifier's features are what its
logits layer reads; and a decoder that paints a grid or draws far from the data is told
apart from the held-out faces."""

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from cvae.core.errors import CvaeError
from cvae.data.dataset import PreparedSplit, ShardedImages
from cvae.model.cvae import CVAE
from cvae.quality.classifier import AttributeClassifier, build_classifier
from cvae.quality.samples import (
    classifier_features,
    frechet_distance,
    grid_artifact_rate,
    grid_artifact_scores,
    sample_quality,
)
from cvae.source.synthetic import CENTRE, draw_face, sample_attributes
from tests.test_promote import real_score, world  # noqa: F401  (world: a fixture)
from tests.test_quality import LATENT, NAMES, SIZE, brightness_cvae, classifier, fixed_dense, noise_split

SIDE = 64
Y, X = np.mgrid[:SIDE, :SIDE]
GRIDS = {  # each with unit RMS
    "4-pixel columns": np.sqrt(2) * np.cos(2 * np.pi * X / 4),
    "4-pixel rows": np.sqrt(2) * np.cos(2 * np.pi * Y / 4 + 0.7),
    "2-pixel columns": np.cos(np.pi * X),
    "4-pixel dots": 2 * np.cos(2 * np.pi * X / 4) * np.cos(2 * np.pi * Y / 4),
    "2-pixel checkerboard": np.cos(np.pi * X) * np.cos(np.pi * Y),
    "4-pixel checkerboard": np.where((X // 2 + Y // 2) % 2 == 0, 1.0, -1.0),
}


def rgb(grey: np.ndarray) -> np.ndarray:
    """One (h, w) greyscale image as a batch of one RGB image."""
    return np.repeat(grey[None, :, :, None], 3, axis=3)


def drawn_faces(count: int, seed: int) -> np.ndarray:
    """Synthetic faces, centre-cropped and shrunk to 64 px as `prepare` does, in [0, 1]."""
    faces = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        image = draw_face(sample_attributes(rng), rng)
        box = (CENTRE[0] - 74, CENTRE[1] - 74, CENTRE[0] + 74, CENTRE[1] + 74)
        faces.append(np.asarray(image.crop(box).resize((SIDE, SIDE), Image.BOX), dtype=np.float32) / 255)
    return np.stack(faces)


@pytest.fixture(scope="module")
def real_faces() -> np.ndarray:
    return drawn_faces(200, seed=0)


@pytest.fixture(scope="module")
def other_faces() -> np.ndarray:
    return drawn_faces(100, seed=1)


def test_all_the_power_of_a_grid_is_on_the_grid_and_none_of_a_coarser_pattern():
    flat = np.full((1, SIDE, SIDE, 3), 0.5)
    assert grid_artifact_scores(flat).tolist() == [0.0]
    for name, grid in GRIDS.items():
        assert grid_artifact_scores(rgb(0.5 + 0.1 * grid))[0] == pytest.approx(1.0), name
    eight_pixel = rgb(0.5 + 0.1 * np.cos(2 * np.pi * X / 8))
    assert grid_artifact_scores(eight_pixel)[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("grid", GRIDS)
def test_a_faint_grid_on_faces_is_flagged_and_clean_faces_are_not(real_faces, other_faces, grid):
    clean_rate, threshold = grid_artifact_rate(other_faces, real_faces)
    assert clean_rate <= 0.05  # 0.5% expected; a percentile of 200 faces is not exact
    # RMS 0.03: about 8 levels of 255, faint on a face
    painted = np.clip(other_faces + 0.03 * GRIDS[grid][None, :, :, None], 0, 1)
    painted_rate, same_threshold = grid_artifact_rate(painted, real_faces)
    assert same_threshold == threshold
    assert painted_rate >= 0.95


def test_real_faces_are_flagged_at_the_rate_of_the_quantile(real_faces):
    rate, _ = grid_artifact_rate(real_faces, real_faces)
    assert rate == pytest.approx(0.005, abs=1 / len(real_faces))


def test_smooth_random_fields_are_not_flagged_and_a_fainter_grid_on_them_is():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    fields = np.stack([gaussian_filter(rng.random((SIDE, SIDE, 3)), (3, 3, 0)) for _ in range(300)])
    fields = 0.5 + 4 * (fields - fields.mean())
    real, generated = fields[:200], fields[200:]
    assert grid_artifact_rate(generated, real)[0] <= 0.05
    assert grid_artifact_rate(generated + 0.01 * GRIDS["2-pixel checkerboard"][None, :, :, None], real)[0] == 1.0


def exact_gaussian_sample(mean: np.ndarray, std: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` vectors whose sample mean and covariance are exactly `mean` and diag(std**2)."""
    noise = np.random.default_rng(seed).standard_normal((count, len(mean)))
    noise -= noise.mean(axis=0)
    whitened = noise @ np.linalg.inv(np.linalg.cholesky(np.cov(noise, rowvar=False))).T
    return mean + whitened * std


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mean_a, std_a = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5, 1.5])
    mean_b, std_b = np.array([1.0, 1.0, 0.0, 0.5]), np.array([3.0, 1.0, 0.5, 0.1])
    a, b = exact_gaussian_sample(mean_a, std_a, 500, 0), exact_gaussian_sample(mean_b, std_b, 300, 1)
    closed_form = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(closed_form, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_frechet_distance_is_zero_to_itself_and_grows_with_a_mean_shift():
    features = np.random.default_rng(0).standard_normal((400, 16)) @ np.random.default_rng(1).random((16, 16))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    distances = [frechet_distance(features, features + shift) for shift in (0.1, 0.5, 1.0)]
    # a shift of s in each of 16 dimensions moves the means 16 s^2 apart, nothing else
    assert distances == pytest.approx([16 * s**2 for s in (0.1, 0.5, 1.0)], rel=1e-6)


def test_frechet_distance_of_few_vectors_in_many_dimensions_stays_finite():
    # 6 vectors in 32 dimensions: singular covariances, as on a small test split
    few = np.random.default_rng(0).standard_normal((6, 32))
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-3)
    assert frechet_distance(few, few + 1.0) == pytest.approx(32.0, rel=1e-3)
    with pytest.raises(CvaeError, match="at least two"):
        frechet_distance(few[:1], few)


def test_classifier_features_are_what_the_logits_layer_reads():
    images = np.random.default_rng(0).random((10, 16, 16, 3)).astype(np.float32)
    classifier = build_classifier(16, ["Male", "Smiling", "Blurry"], [8])
    features = classifier_features(classifier, images, batch_size=4)
    logits = classifier.network.get_layer("logits")
    assert features.shape == (10, logits.kernel.shape[0])
    kernel, bias = (np.asarray(w) for w in logits.get_weights())
    np.testing.assert_allclose(features @ kernel + bias, np.asarray(classifier(images)), rtol=1e-4, atol=1e-5)


def test_classifier_features_are_found_by_structure_past_layers_after_the_logits():
    # a classifier that reads the channel means, with a layer after its logits
    inputs = keras.Input((SIZE, SIZE, 3))
    means = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = fixed_dense(len(NAMES), np.eye(3), np.zeros(3))(means)
    network = keras.Model(inputs, keras.layers.Rescaling(2.0)(logits))
    images = np.random.default_rng(0).random((10, SIZE, SIZE, 3)).astype(np.float32)
    features = classifier_features(AttributeClassifier(network, NAMES), images, batch_size=3)
    np.testing.assert_allclose(features, images.mean(axis=(1, 2)), rtol=1e-5)


def grid_cvae() -> CVAE:
    """brightness_cvae's encoder, and a decoder that paints a 2-pixel checkerboard whatever z and c."""
    base = brightness_cvae()
    z, condition = keras.Input((LATENT,)), keras.Input((len(NAMES),))
    checkerboard = np.cos(np.pi * np.arange(SIZE))[:, None] * np.cos(np.pi * np.arange(SIZE))[None, :]
    bias = np.repeat(4.0 * checkerboard[:, :, None], 3, axis=2).reshape(-1)
    pixels = fixed_dense(SIZE * SIZE * 3, np.zeros((len(NAMES), SIZE * SIZE * 3)), bias, "sigmoid")(condition)
    decoder = keras.Model([z, condition], keras.layers.Reshape((SIZE, SIZE, 3))(pixels))
    return CVAE(base.encoder, decoder, attribute_names=NAMES)


@pytest.fixture
def noisy_faces(tmp_path) -> PreparedSplit:
    return noise_split(tmp_path, 60)


def test_sample_quality_tells_a_grid_painter_and_a_far_off_decoder_from_the_data(noisy_faces):
    painter = sample_quality(grid_cvae(), classifier(), noisy_faces, seed=0, batch_size=16)
    flat = sample_quality(brightness_cvae(), classifier(), noisy_faces, seed=0, batch_size=16)
    assert painter["grid_artifact_rate"] == 1.0
    # flat faces, near black or near white: no grid, but far from noise of mean 0.5
    assert flat["grid_artifact_rate"] == 0.0
    assert flat["frechet_distance"] > 100 * flat["real_frechet_distance"]
    # the floor depends on the held-out faces and the seed only, not on the model
    assert painter["real_frechet_distance"] == flat["real_frechet_distance"]
    assert sample_quality(brightness_cvae(), classifier(), noisy_faces, seed=0, batch_size=7) == pytest.approx(flat)


def test_sample_quality_needs_two_faces_a_half(noisy_faces):
    three = PreparedSplit(ShardedImages(noisy_faces.images.paths, [3], SIZE), noisy_faces.attributes[:3],
                          noisy_faces.image_ids[:3], NAMES)
    with pytest.raises(CvaeError, match="at least 4 held-out faces"):
        sample_quality(brightness_cvae(), classifier(), three, seed=0, batch_size=16)


def test_evaluate_scores_samples_on_the_same_draws_for_every_model(world):
    first, second = real_score(world, world.first), real_score(world, world.second)
    assert set(first["samples"]) == {"grid_artifact_rate", "frechet_distance", "real_frechet_distance",
                                     "frechet_ratio"}
    assert first["samples"]["frechet_ratio"] == pytest.approx(
        first["samples"]["frechet_distance"] / first["samples"]["real_frechet_distance"], abs=1e-4)
    assert 0.0 <= first["samples"]["grid_artifact_rate"] <= 1.0
    assert first["samples"]["frechet_distance"] != second["samples"]["frechet_distance"]
    assert first["samples"]["real_frechet_distance"] == second["samples"]["real_frechet_distance"]
