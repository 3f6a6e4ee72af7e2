"""Attribute fidelity and edit success, measured against networks whose behaviour is known
exactly: a decoder that draws attribute 0 as the image's brightness and ignores the others,
and a classifier that reads brightness for attribute 0 and always answers +1 / -1 for
attributes 1 and 2."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cvae.core.attributes import chosen
from cvae.core.errors import CvaeError
from cvae.data.dataset import PreparedSplit, ShardedImages
from cvae.model.cvae import CVAE
from cvae.quality.classifier import AttributeClassifier, predict_attributes
from cvae.quality.fidelity import attribute_fidelity, check_classifier, edit_success, reconstruction_fidelity

SIZE, LATENT = 8, 2
NAMES = ["Bright", "Always", "Never"]


def fixed_dense(units: int, kernel: np.ndarray, bias: np.ndarray, activation=None) -> keras.layers.Dense:
    layer = keras.layers.Dense(units, activation=activation)
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return layer


def brightness_cvae(uses_condition: bool = True) -> CVAE:
    images = keras.Input((SIZE, SIZE, 3))
    condition = keras.Input((len(NAMES),))
    flat = keras.layers.Flatten()(images)
    zeros = fixed_dense(LATENT, np.zeros((SIZE * SIZE * 3, LATENT)), np.zeros(LATENT))(flat)
    encoder = keras.Model([images, condition], [zeros, zeros])

    z = keras.Input((LATENT,))
    kernel = np.zeros((len(NAMES), SIZE * SIZE * 3))
    kernel[0] = 6.0 if uses_condition else 0.0  # every pixel = sigmoid(6 * attribute 0)
    pixels = fixed_dense(SIZE * SIZE * 3, kernel, np.zeros(SIZE * SIZE * 3), "sigmoid")(condition)
    decoder = keras.Model([z, condition], keras.layers.Reshape((SIZE, SIZE, 3))(pixels))
    return CVAE(encoder, decoder, attribute_names=NAMES)


def classifier() -> AttributeClassifier:
    images = keras.Input((SIZE, SIZE, 3))
    mean = keras.layers.GlobalAveragePooling2D()(images)
    kernel = np.zeros((3, len(NAMES)))
    kernel[:, 0] = 10.0 / 3  # logit = 10 * (brightness - 0.5)
    logits = fixed_dense(len(NAMES), kernel, np.array([-5.0, 1.0, -1.0]))(mean)
    return AttributeClassifier(keras.Model(images, logits), NAMES)


def noise_split(folder, n: int) -> PreparedSplit:
    """`n` held-out "faces" of uniform noise (channel means near 0.5), random attributes."""
    rng = np.random.default_rng(0)
    np.save(folder / "shard.npy", rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))
    attributes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, len(NAMES)))
    return PreparedSplit(ShardedImages([folder / "shard.npy"], [n], SIZE), attributes,
                         [f"{i}.jpg" for i in range(n)], NAMES)


@pytest.fixture
def held_out(tmp_path) -> PreparedSplit:
    return noise_split(tmp_path, 40)


def test_the_classifier_sees_what_the_decoder_draws():
    model = brightness_cvae()
    for value in (1.0, -1.0):
        condition = np.array([[value, 1.0, 1.0]], np.float32)
        image = np.asarray(model.decoder([np.zeros((1, LATENT), np.float32), condition]))
        assert predict_attributes(classifier(), image)[0].tolist() == [value, 1, -1]


def test_fidelity_is_one_for_a_drawn_attribute_and_chance_for_an_ignored_one(held_out):
    fidelity = attribute_fidelity(brightness_cvae(), classifier(), held_out, NAMES, samples=16, seed=0, batch_size=8)
    # attribute 0 is drawn; the classifier says +1 to "Always" and -1 to "Never" whatever it sees,
    # so each is right for one of the two values: balanced, that is chance
    assert fidelity == {"Bright": 1.0, "Always": 0.5, "Never": 0.5}


def test_fidelity_of_a_decoder_that_ignores_the_condition_is_chance(held_out):
    fidelity = attribute_fidelity(brightness_cvae(uses_condition=False), classifier(), held_out, ["Bright"],
                                  samples=16, seed=0, batch_size=8)
    assert fidelity == {"Bright": 0.5}


def test_fidelity_sets_a_value_no_held_out_face_has(held_out):
    never_bright = PreparedSplit(held_out.images, np.where(np.arange(3) == 0, -1, held_out.attributes).astype(np.int8),
                                 held_out.image_ids, NAMES)
    fidelity = attribute_fidelity(brightness_cvae(), classifier(), never_bright, ["Bright"], samples=16, seed=0,
                                  batch_size=8)
    assert fidelity == {"Bright": 1.0}


def test_edit_success_sees_the_flip_and_keeps_the_rest(held_out):
    result = edit_success(brightness_cvae(), classifier(), held_out, ["Bright", "Always"], NAMES, count=20, seed=0,
                          batch_size=8)
    assert result["Bright"]["success"] == 1.0
    assert result["Bright"]["others_kept"] == 1.0
    assert result["Bright"]["pixel_mse"] > 0.9  # from ~0 to ~1 or back, every pixel
    # the decoder ignores "Always": nothing moves, and the classifier's +1 is right only for
    # the faces whose flipped value is +1
    flipped_to_plus = float((held_out.attributes[np.sort(np.random.default_rng(0).choice(40, 20, replace=False)), 1]
                             == -1).mean())
    assert result["Always"] == {"success": pytest.approx(flipped_to_plus), "others_kept": 1.0, "pixel_mse": 0.0}


def test_unknown_attributes_and_a_mismatched_classifier_are_clear_errors():
    with pytest.raises(CvaeError, match=r"evaluate.edit_attributes: 'Brigth' is not an attribute of the data; did"
                                        r" you mean 'Bright'\?"):
        chosen(["Brigth"], NAMES, "evaluate.edit_attributes")
    assert chosen([], NAMES, "key") == NAMES  # empty: every attribute
    other = AttributeClassifier(classifier().network, ["A", "B", "C"])
    with pytest.raises(CvaeError, match="different attributes"):
        check_classifier(brightness_cvae(), other)


def test_the_classifier_is_scored_per_attribute_with_balanced_accuracy(tmp_path):
    from cvae.quality.classifier import score_classifier

    attributes = np.array([[1, 1, 1]] * 3 + [[-1, 1, -1]] * 7, dtype=np.int8)  # "Always" is right 10/10
    pixels = np.where(attributes[:, :1, None, None] > 0, 250, 5).repeat(SIZE, 1).repeat(SIZE, 2)
    np.save(tmp_path / "shard.npy", np.broadcast_to(pixels, (10, SIZE, SIZE, 3)).astype(np.uint8))
    split = PreparedSplit(ShardedImages([tmp_path / "shard.npy"], [10], SIZE), attributes,
                          [f"{i}.jpg" for i in range(10)], NAMES)
    report = score_classifier(classifier(), split, batch_size=4)
    scores = report["attributes"]
    assert scores["Bright"] == {"accuracy": 1.0, "balanced_accuracy": 1.0, "prevalence": 0.3,
                                "recall_present": 1.0, "recall_absent": 1.0, "threshold": 0.0}
    # no face lacks "Always": its recall on such faces is unknown, not zero
    assert scores["Always"] == {"accuracy": 1.0, "balanced_accuracy": 1.0, "prevalence": 1.0,
                                "recall_present": 1.0, "recall_absent": None, "threshold": 0.0}
    # "Never" says -1 to everything: right on 7 of 10, but on none of the +1 faces
    assert scores["Never"] == {"accuracy": 0.7, "balanced_accuracy": 0.5, "prevalence": 0.3,
                               "recall_present": 0.0, "recall_absent": 1.0, "threshold": 0.0}
    assert (report["mean_accuracy"], report["mean_balanced_accuracy"]) == (0.9, pytest.approx(2.5 / 3, abs=1e-4))


def test_reconstruction_fidelity_compares_the_classifier_on_reconstructions_with_the_truth(held_out):
    # the decoder draws attribute 0 from the face's own value: the classifier sees it in every
    # reconstruction; "Always" and "Never" are right for one value each, balanced: chance
    ceiling = reconstruction_fidelity(brightness_cvae(), classifier(), held_out, NAMES, batch_size=8)
    assert ceiling == {"Bright": 1.0, "Always": 0.5, "Never": 0.5}
    blind = reconstruction_fidelity(brightness_cvae(uses_condition=False), classifier(), held_out, ["Bright"], 8)
    assert blind == {"Bright": 0.5}


def test_an_edit_s_ceiling_is_the_classifier_s_recall_on_real_faces_of_the_value_it_asks_for(held_out):
    from cvae.quality.classifier import score_classifier

    recalls = score_classifier(classifier(), held_out, batch_size=8)["attributes"]
    result = edit_success(brightness_cvae(), classifier(), held_out, ["Always", "Never"], NAMES, count=20, seed=0,
                          batch_size=8, recalls=recalls)
    rows = np.sort(np.random.default_rng(0).choice(40, 20, replace=False))
    # "Always" is seen on every real face that has it and on none that lacks it: only the
    # edits that add it can succeed, whatever the model draws
    added = float((held_out.attributes[rows, 1] == -1).mean())
    assert 0 < added < 1
    assert result["Always"]["success_ceiling"] == pytest.approx(added)
    # "Never" the other way round
    assert result["Never"]["success_ceiling"] == pytest.approx(float((held_out.attributes[rows, 2] == 1).mean()))


def test_an_edit_towards_a_value_no_real_face_has_has_no_ceiling(held_out):
    from cvae.quality.classifier import score_classifier
    from cvae.registry.gate import flatten

    never_bright = PreparedSplit(held_out.images, np.where(np.arange(3) == 0, -1, held_out.attributes).astype(np.int8),
                                 held_out.image_ids, NAMES)
    recalls = score_classifier(classifier(), never_bright, batch_size=8)["attributes"]
    result = edit_success(brightness_cvae(), classifier(), never_bright, ["Bright"], NAMES, count=20, seed=0,
                          batch_size=8, recalls=recalls)
    assert result["Bright"]["success"] == 1.0 and result["Bright"]["success_ceiling"] is None
    # the gate and Dagster's metadata read the metrics flattened: an unknown figure is left out
    assert flatten({"edit": result}) == {"edit/Bright/success": 1.0, "edit/Bright/others_kept": 1.0,
                                         "edit/Bright/pixel_mse": pytest.approx(result["Bright"]["pixel_mse"])}
