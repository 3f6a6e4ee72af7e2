import numpy as np
import pytest
from PIL import Image

from cvae.core.celeba import (
    ATTRIBUTE_FILE,
    CELEBA_ATTRIBUTES,
    IMAGE_DIR,
    PARTITION_FILE,
    load_attributes,
    read_partition,
)
from cvae.source.synthetic import VISIBLE_ATTRIBUTES, draw_face, generate, sample_attributes
from tests.conftest import digest


def test_layout_matches_celeba(synthetic_root):
    attributes = load_attributes(synthetic_root / ATTRIBUTE_FILE)
    # CelebA's names, in CelebA's order, for the attributes drawn; no undrawn label
    assert attributes.names == [name for name in CELEBA_ATTRIBUTES if name in VISIBLE_ATTRIBUTES]
    assert set(attributes.names) == set(VISIBLE_ATTRIBUTES)
    assert attributes.image_ids[:2] == ["000001.jpg", "000002.jpg"]
    header = (synthetic_root / ATTRIBUTE_FILE).read_text().splitlines()
    assert header[0] == "48" and header[1].endswith(" ")
    partition = read_partition(synthetic_root / PARTITION_FILE)
    assert set(partition) == set(attributes.image_ids)
    assert sorted(set(partition.values())) == [0, 1, 2]
    for image_id in attributes.image_ids:
        with Image.open(synthetic_root / IMAGE_DIR / image_id) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (178, 218))


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    generate(tmp_path / "a", 80, seed=11, val_fraction=0.1, test_fraction=0.1, workers=1)
    generate(tmp_path / "b", 80, seed=11, val_fraction=0.1, test_fraction=0.1, workers=2)
    generate(tmp_path / "c", 80, seed=12, val_fraction=0.1, test_fraction=0.1, workers=1)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_attributes_vary_and_keep_plausible_correlations():
    rng = np.random.default_rng(0)
    faces = [sample_attributes(rng) for _ in range(3000)]
    assert all(set(face) == set(VISIBLE_ATTRIBUTES) for face in faces)
    share = {name: np.mean([face[name] for face in faces]) for name in VISIBLE_ATTRIBUTES}
    for name in VISIBLE_ATTRIBUTES:
        assert 0.04 < share[name] < 0.96, name
    assert not any(f["Bald"] and (f["Black_Hair"] or f["Blond_Hair"] or f["Brown_Hair"] or f["Gray_Hair"])
                   for f in faces)
    assert not any(not f["Male"] and not f["No_Beard"] for f in faces)
    lipstick_male = np.mean([f["Wearing_Lipstick"] for f in faces if f["Male"]])
    lipstick_female = np.mean([f["Wearing_Lipstick"] for f in faces if not f["Male"]])
    assert lipstick_male < 0.1 < 0.5 < lipstick_female
    # independent enough to learn: Smiling and Eyeglasses are not tied to Male
    for name in ("Smiling", "Eyeglasses", "Pale_Skin"):
        assert abs(np.corrcoef([f[name] for f in faces], [f["Male"] for f in faces])[0, 1]) < 0.1


BASE = {name: False for name in CELEBA_ATTRIBUTES} | {"Brown_Hair": True, "No_Beard": True}
TOGGLES = {
    "Male": {"Male": True}, "Brown_Hair": {"Brown_Hair": False}, "Smiling": {"Smiling": True}, "Mouth_Slightly_Open": {"Mouth_Slightly_Open": True},
    "Eyeglasses": {"Eyeglasses": True}, "Black_Hair": {"Brown_Hair": False, "Black_Hair": True},
    "Blond_Hair": {"Brown_Hair": False, "Blond_Hair": True}, "Gray_Hair": {"Brown_Hair": False, "Gray_Hair": True},
    "Bald": {"Brown_Hair": False, "Male": True, "Bald": True}, "Bangs": {"Bangs": True},
    "Wearing_Hat": {"Wearing_Hat": True}, "Pale_Skin": {"Pale_Skin": True},
    "Mustache": {"Male": True, "Mustache": True}, "No_Beard": {"Male": True, "No_Beard": False},
    "Wearing_Lipstick": {"Wearing_Lipstick": True},
}


@pytest.mark.parametrize("attribute", sorted(TOGGLES))
def test_each_visible_attribute_changes_the_centre_crop(attribute):
    def centre(a):
        pixels = np.asarray(draw_face(a, np.random.default_rng(5)), dtype=np.float32)
        return pixels[35:183, 15:163]  # the 148x148 crop the model sees

    reference = BASE | ({"Male": True} if attribute in ("Bald", "Mustache", "No_Beard") else {})
    changed = np.abs(centre(BASE | TOGGLES[attribute]) - centre(reference)).mean(axis=-1)
    # not noise: a visible patch of the face moves by a clear margin
    assert (changed > 40).sum() > 30, attribute


def test_every_visible_attribute_is_checked():
    assert set(TOGGLES) == set(VISIBLE_ATTRIBUTES)
