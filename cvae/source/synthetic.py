"""A built-in synthetic face set in CelebA's exact layout, drawn with Pillow.

Fifteen of CelebA's attributes, under CelebA's names, are drawn so that they are plainly
visible (hair colour and length, smile, open mouth, glasses, hat, bangs, baldness, pale
skin, moustache, beard, lipstick), and the attribute file lists those fifteen alone: a
label that no pixel shows would only teach a model to memorise faces. Nuisance
variation (position, face shape and size, background, lighting, noise) keeps the task
from being trivial. Every image is drawn from its own generator seeded by (seed, index),
so the set is the same for a seed whatever the number of worker processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cvae.core.celeba import Attributes
from cvae.source.drawn import image_id, write_drawn_set  # noqa: F401  (image_id: part of this module's API)

WIDTH, HEIGHT = 178, 218  # CelebA's aligned image size
CENTRE = (89, 109)  # the centre of CelebA's usual 148x148 crop

VISIBLE_ATTRIBUTES = (
    "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Gray_Hair", "Male",
    "Mouth_Slightly_Open", "Mustache", "No_Beard", "Pale_Skin", "Smiling", "Wearing_Hat", "Wearing_Lipstick",
)  # fmt: skip

_HAIR_RGB = {
    "Black_Hair": (28, 24, 22),
    "Blond_Hair": (228, 196, 118),
    "Brown_Hair": (112, 70, 38),
    "Gray_Hair": (176, 176, 180),
    None: (214, 96, 28),  # ginger: CelebA faces with none of the four colours
}
_SKIN_RGB = [(224, 172, 140), (198, 140, 104), (160, 108, 76), (236, 188, 160)]
_PALE_SKIN_RGB = (250, 232, 222)


def sample_attributes(rng: np.random.Generator) -> dict[str, bool]:
    """One face's attributes, with plausible correlations between them."""
    male = bool(rng.random() < 0.45)
    a = {"Male": male}
    a["Bald"] = male and rng.random() < 0.12
    a["Wearing_Hat"] = not a["Bald"] and rng.random() < 0.15
    hair = None
    if not a["Bald"]:
        hair = rng.choice(["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "none"],
                          p=[0.30, 0.22 if not male else 0.10, 0.26, 0.08, 0.14 if not male else 0.26])
        hair = None if hair == "none" else str(hair)
    for colour in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"):
        a[colour] = hair == colour
    a["Bangs"] = not a["Bald"] and not a["Wearing_Hat"] and rng.random() < 0.25
    a["Smiling"] = bool(rng.random() < 0.48)
    a["Mouth_Slightly_Open"] = bool(rng.random() < (0.65 if a["Smiling"] else 0.3))
    a["Eyeglasses"] = bool(rng.random() < 0.22)
    a["Pale_Skin"] = bool(rng.random() < 0.18)
    a["Mustache"] = male and rng.random() < 0.3
    a["No_Beard"] = not (male and rng.random() < 0.35)
    a["Wearing_Lipstick"] = bool(rng.random() < (0.03 if male else 0.8))
    return a


def draw_face(a: dict[str, bool], rng: np.random.Generator) -> Image.Image:
    """Draw one 178x218 RGB face showing the visible attributes of `a`."""
    background = tuple(int(v) for v in rng.integers(30, 226, size=3))
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    draw = ImageDraw.Draw(image)

    cx = CENTRE[0] + rng.normal(0, 4)
    cy = CENTRE[1] + rng.normal(0, 4)
    scale = rng.uniform(0.88, 1.08)
    half_w = scale * rng.uniform(36, 42) * (1.06 if a["Male"] else 1.0)
    half_h = scale * rng.uniform(48, 54)
    hair_rgb = _jitter(rng, _HAIR_RGB[_hair_colour(a)], 14)
    skin_rgb = _jitter(rng, _PALE_SKIN_RGB if a["Pale_Skin"] else _SKIN_RGB[rng.integers(4)], 10)

    top = cy - half_h
    if not a["Bald"] and not a["Male"]:  # long hair falls behind the head to the shoulders
        draw.rounded_rectangle(
            (cx - half_w * 1.35, top - half_h * 0.18, cx + half_w * 1.35, cy + half_h * 1.25),
            radius=half_w * 0.9, fill=hair_rgb,
        )
    # neck, then the face; a male jaw is squarer
    draw.rectangle((cx - half_w * 0.45, cy + half_h * 0.6, cx + half_w * 0.45, HEIGHT), fill=skin_rgb)
    draw.ellipse((cx - half_w, top, cx + half_w, cy + half_h), fill=skin_rgb)
    if a["Male"]:
        draw.rounded_rectangle(
            (cx - half_w * 0.92, cy, cx + half_w * 0.92, cy + half_h * 0.95),
            radius=half_w * 0.35, fill=skin_rgb,
        )
    if not a["Bald"]:  # hair on top of the head; short for men
        draw.chord(
            (cx - half_w * 1.08, top - half_h * 0.12, cx + half_w * 1.08, cy + half_h * 0.2),
            start=180, end=360, fill=hair_rgb,
        )
        if a["Male"]:
            for x0, x1 in ((cx - half_w * 1.02, cx - half_w * 0.86), (cx + half_w * 0.86, cx + half_w * 1.02)):
                draw.rectangle((x0, cy - half_h * 0.45, x1, cy - half_h * 0.05), fill=hair_rgb)
    if a["Bangs"]:
        # a straight fringe down to just above the eyebrows
        draw.rectangle((cx - half_w * 0.9, cy - half_h * 0.55, cx + half_w * 0.9, cy - half_h * 0.3), fill=hair_rgb)
    if a["Wearing_Hat"]:
        hat_rgb = _jitter(rng, (60, 60, 150) if rng.random() < 0.5 else (150, 40, 40), 30)
        draw.rectangle((cx - half_w * 0.85, top - half_h * 0.45, cx + half_w * 0.85, top + half_h * 0.25), fill=hat_rgb)
        draw.rectangle((cx - half_w * 1.45, top + half_h * 0.15, cx + half_w * 1.45, top + half_h * 0.32), fill=hat_rgb)

    eye_y = cy - half_h * 0.12
    eye_dx = half_w * 0.4
    brow_width = 4 if a["Male"] else 2
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse((ex - 6, eye_y - 3.5, ex + 6, eye_y + 3.5), fill=(245, 245, 245))
        draw.ellipse((ex - 3, eye_y - 3, ex + 3, eye_y + 3), fill=(40, 30, 30))
        draw.line((ex - 8, eye_y - 10, ex + 8, eye_y - 11), fill=hair_rgb if not a["Bald"] else (90, 70, 60),
                  width=brow_width)
        if a["Eyeglasses"]:
            draw.ellipse((ex - 13, eye_y - 11, ex + 13, eye_y + 11), outline=(15, 15, 15), width=3)
    if a["Eyeglasses"]:
        draw.line((cx - eye_dx + 13, eye_y, cx + eye_dx - 13, eye_y), fill=(15, 15, 15), width=3)
        for side in (-1, 1):
            draw.line((cx + side * (eye_dx + 13), eye_y, cx + side * half_w, eye_y - 3), fill=(15, 15, 15), width=3)

    nose_rgb = tuple(int(v * 0.8) for v in skin_rgb)
    draw.line((cx, eye_y + 4, cx - 3, cy + half_h * 0.28, cx + 3, cy + half_h * 0.3), fill=nose_rgb, width=2)

    if not a["No_Beard"]:
        draw.chord(
            (cx - half_w * 0.95, cy - half_h * 0.1, cx + half_w * 0.95, cy + half_h * 1.02),
            start=0, end=180, fill=hair_rgb,
        )
    _draw_mouth(draw, a, cx, cy + half_h * 0.52, half_w, skin_rgb, hair_rgb)

    image = _light_and_noise(image, rng)
    return image


def _draw_mouth(draw: ImageDraw.ImageDraw, a: dict[str, bool], cx: float, my: float,
                half_w: float, skin_rgb: tuple, hair_rgb: tuple) -> None:
    lip_rgb = (200, 20, 50) if a["Wearing_Lipstick"] else tuple(int(v * 0.7) for v in skin_rgb)
    mouth_w = half_w * (0.55 if a["Smiling"] else 0.42)
    if a["Mustache"]:
        draw.rectangle((cx - mouth_w - 3, my - 12, cx + mouth_w + 3, my - 5), fill=hair_rgb)
    if not a["No_Beard"]:  # the mouth shows through the beard on a skin-coloured patch
        draw.ellipse((cx - mouth_w - 4, my - 6, cx + mouth_w + 4, my + 12), fill=skin_rgb)
    open_h = 9 if a["Mouth_Slightly_Open"] else 0
    if a["Smiling"]:  # an upturned arc; open, it shows teeth
        if open_h:
            draw.chord((cx - mouth_w, my - 10, cx + mouth_w, my + 10 + open_h), 0, 180, fill=(250, 250, 250),
                       outline=lip_rgb, width=3)
        else:
            draw.arc((cx - mouth_w, my - 12, cx + mouth_w, my + 8), 20, 160, fill=lip_rgb, width=4)
    elif open_h:
        draw.ellipse((cx - mouth_w * 0.6, my - 3, cx + mouth_w * 0.6, my + open_h), fill=(60, 10, 20),
                     outline=lip_rgb, width=3)
    else:
        draw.line((cx - mouth_w, my + 2, cx + mouth_w, my + 2), fill=lip_rgb, width=4)


def _light_and_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))), dtype=np.float32)
    # a soft directional light: brighter on one side, overall exposure jitter
    ramp = np.linspace(-1.0, 1.0, WIDTH, dtype=np.float32)[None, :, None]
    pixels *= rng.uniform(0.8, 1.15) * (1.0 + rng.uniform(-0.18, 0.18) * ramp)
    pixels += rng.normal(0.0, rng.uniform(2.0, 8.0), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _hair_colour(a: dict[str, bool]) -> str | None:
    return next((c for c in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair") if a[c]), None)


def _jitter(rng: np.random.Generator, rgb: tuple, spread: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-spread, spread + 1), 0, 255)) for v in rgb)


def draw(rng: np.random.Generator) -> tuple[Image.Image, dict[str, bool]]:
    """One face and its attributes, drawn from `rng`."""
    attributes = sample_attributes(rng)
    return draw_face(attributes, rng), attributes


def generate(root: str | Path, num_images: int, seed: int, val_fraction: float,
             test_fraction: float, workers: int | None = None) -> Attributes:
    """Write `num_images` synthetic faces and their attribute and partition files to `root`."""
    return write_drawn_set(root, draw, VISIBLE_ATTRIBUTES, num_images, seed, val_fraction, test_fraction,
                           workers, description="synthetic faces")
