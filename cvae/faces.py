"""Faces on demand: `cvae generate` draws new faces with chosen attributes, `cvae edit`
changes chosen attributes of a given face.

Attributes are set as NAME=VALUE. The model was trained on -1/+1; other numbers
extrapolate (1.5 is "more smiling than any training face"), which is allowed. Every PNG
carries in its text chunks what made it (attributes, model, seed or source image), so a
face found later can be traced and reproduced.

Everything that can be checked is checked before anything is written, and files are
written beside their final path and renamed into place: an error never leaves a
half-written output. TensorFlow is imported only once a model is loaded, so a malformed
option fails at once.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL.PngImagePlugin import PngInfo

from cvae.core.atomic import replace_file
from cvae.core.errors import CvaeError
from cvae.figures import image_grid
from cvae.model.cvae import load_cvae
from cvae.quality.classifier import load_classifier
from cvae.validation.images import check_image

GRID_FILE = "grid.png"
LARGEST_SQUARE = 1 << 62  # a crop no image reaches: `load_square` then takes the largest centred square
SEED_LIMIT = 2**31  # seeds are drawn below this, so that a printed seed is short to retype
LINKED = 0.5  # |correlation| over the training rows at which an attribute is named beside an edit


@dataclass(frozen=True)
class GeneratedFaces:
    paths: list[Path]  # the faces, then the grid
    seed: int
    agreeing_rows: int  # training attribute rows that agree with the settings (0: none did)
    table_rows: int

    def describe_draw(self) -> str:
        if self.table_rows == 0:
            return "every attribute set"
        if self.agreeing_rows == 0:
            return f"no training row agrees with the settings: the others drawn from all {self.table_rows}"
        return f"the others drawn from the {self.agreeing_rows} of {self.table_rows} training rows that agree"


@dataclass(frozen=True)
class EditedFace:
    path: Path
    before: dict[str, float]
    after: dict[str, float]
    # attributes that go with an edited one in the training rows, held the other way on
    # this face: name -> (the value that goes with the edit, the correlation)
    linked: dict[str, tuple[float, float]]

    def describe_linked(self) -> str:
        if not self.linked:
            return ""
        named = ", ".join(f"{name} (r {r:+.2f})" for name, (_, r) in self.linked.items())
        sets = " ".join(f"--set {name}={value:g}" for name, (value, _) in self.linked.items())
        return (f"in the training faces the change goes with {named}, which this face has the other way;"
                f" the model draws it together with them, so set them too for a surer change: {sets}")


def parse_settings(items: list[str], option: str) -> dict[str, float]:
    """NAME=VALUE strings (as given to `option`) -> {name: value}, in the order given."""
    settings: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise CvaeError(f"{option} {item}: expected NAME=VALUE, e.g. {option} Smiling=1")
        try:
            value = float(text)
        except ValueError:
            raise CvaeError(f"{option} {item}: value must be a number") from None
        if not math.isfinite(value):
            raise CvaeError(f"{option} {item}: value must be a finite number")
        if name in settings:
            raise CvaeError(f"{option} {name} is given twice")
        settings[name] = value
    return settings


def check_attribute_names(settings: dict[str, float], known: list[str]) -> None:
    for name in settings:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"this model's attributes are: {', '.join(known)}")
            raise CvaeError(f"unknown attribute {name!r}; {hint}")


def draw_conditions(table: np.ndarray, names: list[str], settings: dict[str, float], count: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """`count` attribute vectors with `settings` applied and the other attributes drawn
    jointly from training rows (so a bald face gets no hair colour), preferring rows that
    already agree with the settings; also returns how many rows agree."""
    columns = [names.index(name) for name in settings]
    values = np.array(list(settings.values()), dtype=np.float32)
    if len(table) == 0:
        unset = [name for name in names if name not in settings]
        if unset:
            raise CvaeError("this model carries no training attribute rows to draw the unset attributes from;"
                            f" set each of them with --attr ({', '.join(unset)})")
        conditions, agreeing = np.zeros((count, len(names)), dtype=np.float32), 0
    else:
        # a row agrees when each set attribute has the setting's sign; 0 is neutral and agrees with any row
        agrees = np.all((np.sign(table[:, columns]) == np.sign(values)) | (values == 0), axis=1)
        pool = table[agrees] if agrees.any() else table  # none agrees: any row, the settings written over
        conditions = pool[rng.choice(len(pool), size=count, replace=len(pool) < count)].astype(np.float32)
        agreeing = int(agrees.sum())
    conditions[:, columns] = values
    return conditions, agreeing


def generate_faces(settings: dict[str, float], count: int, seed: int | None, out_dir: str | Path,
                   model_path: str | Path) -> GeneratedFaces:
    """Write `count` faces (face-NN.png) and a grid of them (grid.png) into `out_dir`."""
    if count < 1:
        raise CvaeError(f"the number of faces (-n) must be at least 1, not {count}")
    if seed is not None and not 0 <= seed < 2**63:
        raise CvaeError(f"the seed (--seed) must be from 0 to 2**63 - 1, not {seed}")
    out_dir = Path(out_dir)
    _require_directory_target(out_dir)
    pinned = pin_model(model_path)
    model = load_cvae(pinned)
    check_attribute_names(settings, model.attribute_names)
    seed = int(np.random.default_rng().integers(SEED_LIMIT)) if seed is None else seed
    table = np.asarray(model.attribute_table)
    conditions, agreeing = draw_conditions(table, model.attribute_names, settings, count,
                                           np.random.default_rng(seed))
    faces = np.asarray(model.generate(conditions, seed=seed))

    provenance = {**model_provenance(model_path, pinned), "cvae:seed": str(seed)}
    width = len(str(count - 1))
    files = {
        f"face-{index:0{width}d}.png": png_bytes([face], {
            "cvae:attributes": attributes_json(model.attribute_names, condition), **provenance,
            "cvae:index": str(index),
        })
        for index, (face, condition) in enumerate(zip(faces, conditions, strict=True))
    }
    files[GRID_FILE] = png_bytes(faces, {"cvae:settings": json.dumps(settings), "cvae:count": str(count),
                                    **provenance})
    paths = _write_together(out_dir, files)
    return GeneratedFaces(paths, seed, agreeing, len(table))


def edit_face(image_path: str | Path, edits: dict[str, float], out_path: str | Path, crop: int | None,
              attributes_from: str, attributes_path: str | Path, model_path: str | Path) -> EditedFace:
    """Encode the face at `image_path` under its own attributes (posterior mean), decode it
    under those attributes with `edits` applied, and write the PNG to `out_path`.

    `attributes_from` is "classifier" (predicted by the classifier at `attributes_path`) or
    "file" (looked up by file name in the CelebA attribute file at `attributes_path`);
    `crop` frames the face as the pipeline framed training faces (None: the largest
    centred square)."""
    image_path, out_path = Path(image_path), Path(out_path)
    _require_readable_image(image_path)
    if out_path.is_dir():
        raise CvaeError(f"{out_path}: is a directory; --out takes the path of the PNG to write")
    pinned = pin_model(model_path)
    model = load_cvae(pinned)
    names = model.attribute_names
    check_attribute_names(edits, names)
    crop = LARGEST_SQUARE if crop is None else crop
    if attributes_from == "classifier":
        before = _attributes_by_classifier(attributes_path, image_path, crop, names)
    else:
        before = _attributes_from_file(attributes_path, image_path, names)
    after = before.copy()
    after[[names.index(name) for name in edits]] = list(edits.values())

    image = load_face(image_path, crop, input_size(model.encoder))
    z_mean = np.asarray(model.encoder([image[None], before[None]])[0])  # the posterior mean: no noise
    edited = np.asarray(model.decoder([z_mean, after[None]]))
    png = png_bytes(edited, {
        "cvae:source": str(image_path),
        "cvae:attributes_before": attributes_json(names, before),
        "cvae:attributes_after": attributes_json(names, after),
        "cvae:attributes_from": f"{attributes_from} {attributes_path}",
        **model_provenance(model_path, pinned),
    })
    _write_file(out_path, png)
    linked = linked_attributes(np.asarray(model.attribute_table), names, before, after, edits)
    return EditedFace(out_path, dict(zip(names, before.tolist())), dict(zip(names, after.tolist())), linked)


def linked_attributes(table: np.ndarray, names: list[str], before: np.ndarray, after: np.ndarray,
                      edits: dict[str, float]) -> dict[str, tuple[float, float]]:
    """The attributes not set whose correlation with an attribute whose sign the edit
    changes reaches `LINKED` over the training rows, and whose value on the face goes the
    other way: name -> (the value that goes with the edit, the correlation), the strongest
    first.

    A decoder learns an attribute from all those the data shows with it: on CelebA it draws
    a smile from Smiling, High_Cheekbones and Mouth_Slightly_Open together, and a Smiling
    edit alone succeeds about half as often as one that sets all three."""
    if len(table) < 2:
        return {}
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.nan_to_num(np.corrcoef(np.asarray(table, dtype=np.float64).T))
    linked: dict[str, tuple[float, float]] = {}
    for name in edits:
        column = names.index(name)
        if np.sign(after[column]) == np.sign(before[column]) or not after[column]:
            continue
        for other, r in enumerate(correlation[column]):
            wanted = float(np.sign(r) * np.sign(after[column]))
            if (other != column and names[other] not in edits and abs(r) >= LINKED
                    and np.sign(before[other]) != wanted):
                linked.setdefault(names[other], (wanted, float(r)))
    return dict(sorted(linked.items(), key=lambda item: -abs(item[1][1])))  # the strongest first


def pin_model(model_path: str | Path) -> Path:
    """The file behind `model_path` (models/production is a symlink that a promotion may
    switch at any moment): the model is read from there, and its provenance names it."""
    path = Path(model_path)
    return path.resolve() if path.exists() else path


def model_provenance(model_path: str | Path, pinned: Path) -> dict[str, str]:
    from cvae.registry.store import file_md5

    chunks = {"cvae:model": str(model_path), "cvae:model_md5": file_md5(pinned)}
    if pinned != Path(model_path).absolute():
        chunks["cvae:model_file"] = str(pinned)  # e.g. the registry version behind models/production
    return chunks


def _attributes_by_classifier(classifier_path: str | Path, image_path: Path, crop: int,
                              names: list[str]) -> np.ndarray:
    from cvae.quality.classifier import predict_attributes

    classifier = load_classifier(classifier_path)
    columns = attribute_columns(names, classifier.attribute_names, f"the classifier {classifier_path}")
    image = load_face(image_path, crop, input_size(classifier.network))
    return predict_attributes(classifier, image[None])[0, columns].astype(np.float32)


def _attributes_from_file(attribute_file: str | Path, image_path: Path, names: list[str]) -> np.ndarray:
    from cvae.core.celeba import load_attributes

    attributes = load_attributes(attribute_file)
    columns = attribute_columns(names, attributes.names, f"the attribute file {attribute_file}")
    try:
        row = attributes.image_ids.index(image_path.name)
    except ValueError:
        raise CvaeError(f"{image_path.name} is not listed in {attribute_file}; use --attrs-from classifier"
                        " to have its attributes predicted") from None
    return attributes.values[row, columns].astype(np.float32)


def attribute_columns(needed: list[str], available: list[str], source: str) -> list[int]:
    """Where each of the model's attributes sits in `source`'s list."""
    missing = [name for name in needed if name not in available]
    if missing:
        raise CvaeError(f"{source} lacks attributes the model takes: {', '.join(missing)}"
                        f" (it has: {', '.join(available)})")
    return [available.index(name) for name in needed]


def load_face(path: Path, crop: int, size: int) -> np.ndarray:
    from cvae.data.dataset import to_unit_range
    from cvae.data.prepare import load_square

    # one image: a full decode (reduction=1) costs nothing, and also serves an image
    # smaller than `size`, which libjpeg's reduced-scale decoding cannot
    return to_unit_range(load_square(path, crop, size, reduction=1))


def input_size(network) -> int:
    return network.inputs[0].shape[1]


def _require_readable_image(path: Path) -> None:
    if not path.is_file():
        raise CvaeError(f"{path}: image not found")
    check = check_image(path)  # a full decode: catches a truncated file, which OpenCV would pad with grey
    if check.error:
        raise CvaeError(f"{path}: cannot read the image ({check.error})")


def _require_directory_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CvaeError(f"{out_dir}: exists and is not a directory; --out takes a directory")


def attributes_json(names: list[str], values: np.ndarray) -> str:
    # rounded: a float32 0.1 would otherwise read 0.10000000149011612
    return json.dumps({name: round(float(value), 6) for name, value in zip(names, values, strict=True)})


def png_bytes(images: np.ndarray, text: dict[str, str]) -> bytes:
    """One image as it is (a grid with no gap), several as a square-ish grid; `text` in
    the PNG's tEXt chunks."""
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    columns = math.ceil(math.sqrt(len(images)))
    buffer = io.BytesIO()
    grid = image_grid(np.asarray(images), columns, gap=0 if len(images) == 1 else 2)
    grid.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    try:
        with replace_file(path) as staging:
            staging.write_bytes(data)
    except OSError as exc:
        raise CvaeError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _write_together(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """All of `files` in `out_dir`, or none: they are written to a hidden folder inside it
    and only then renamed into place (renames on one file system do not fail half-way)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".cvae-staging.", dir=out_dir))
        try:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            for name in files:
                os.replace(staging / name, out_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise CvaeError(f"{out_dir}: cannot write: {exc.strerror or exc}") from None
    return [out_dir / name for name in files]
