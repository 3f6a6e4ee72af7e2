"""`cvae studio`: steer a model live in a browser page.

A small Starlette app (the ASGI toolkit the Dagster webserver already installs) serves one
plain HTML page with no outside assets, and a JSON/PNG API the page calls as sliders move:

- GET  /api/model   the attribute names, the slider range, the latent directions, the model
- POST /api/random  a seed and a training attribute row drawn with it (a plausible face)
- POST /api/face    one decoded face as PNG; with ?download=1 it carries the provenance
                    text chunks that `cvae generate` writes (model file, MD5, attributes, seed)
- POST /api/photo   an uploaded image, cropped as `cvae edit` crops it, its attributes read
                    by the classifier, its posterior mean kept for the sliders to act on

Everything the page sends is checked: unknown attribute names, values outside the slider
range and broken or oversized uploads are refused with a message, and the server goes on.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cvae.core.errors import CvaeError
from cvae.faces import (
    LARGEST_SQUARE,
    SEED_LIMIT,
    attribute_columns,
    attributes_json,
    check_attribute_names,
    input_size,
    load_face,
    model_provenance,
    pin_model,
    png_bytes,
)

SLIDER_LIMIT = 3.0  # sliders run over [-3, 3]: the model trained on -1/+1, and extrapolation shows what it learnt
DIRECTIONS = 4  # sliders for the latent code's main directions
DIRECTION_SAMPLES = 256  # generated faces whose encoded means give those directions
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000  # a 40-megapixel photo; Pillow's own bomb guard starts far higher
PHOTOS_KEPT = 16  # uploaded photos held for their sliders, the oldest dropped first
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PAGE = Path(__file__).with_name("studio.html")


class StudioInputError(CvaeError):
    """A request the studio refuses, with the message the page shows."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Photo:
    name: str
    attributes: np.ndarray  # as the classifier read them
    z_mean: np.ndarray  # the posterior mean under those attributes


def latent_directions(model, count: int, samples: int = DIRECTION_SAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The principal axes of the encoder's means over faces the model itself draws, and the
    spread along each: (count, latent_dim) unit rows, (count,) standard deviations. No
    data is needed, so the studio runs from a model file alone."""
    rng = np.random.default_rng(seed)
    table = np.asarray(model.attribute_table)
    conditions = (table[rng.choice(len(table), samples)] if len(table)
                  else np.zeros((samples, len(model.attribute_names)))).astype(np.float32)
    faces = np.asarray(model.generate(conditions, seed=seed))
    means = np.asarray(model.encoder([faces, conditions])[0], dtype=np.float64)
    _, spread, axes = np.linalg.svd(means - means.mean(axis=0), full_matrices=False)
    count = min(count, axes.shape[0])
    return axes[:count].astype(np.float32), (spread[:count] / math.sqrt(samples - 1)).astype(np.float32)


class Studio:
    """A loaded model (and classifier, for uploads) and what the page asks of it."""

    def __init__(self, model_path: str | Path, classifier_path: str | Path | None = None, crop: int | None = None,
                 directions: int = DIRECTIONS):
        from cvae.model.cvae import load_cvae  # TensorFlow loads with the model, not with the module

        pinned = pin_model(model_path)
        self.model = load_cvae(pinned)
        self.provenance = model_provenance(model_path, pinned)
        self.names = list(self.model.attribute_names)
        self.size = input_size(self.model.encoder)
        self.crop = LARGEST_SQUARE if crop is None else crop
        self.classifier, self.classifier_columns = None, []
        if classifier_path is not None and Path(classifier_path).exists():
            from cvae.quality.classifier import load_classifier

            self.classifier = load_classifier(classifier_path)
            self.classifier_columns = attribute_columns(self.names, self.classifier.attribute_names,
                                                        f"the classifier {classifier_path}")
        self.axes, self.spread = latent_directions(self.model, directions)
        self.decode = _compiled_decoder(self.model.decoder, self.model.latent_dim, len(self.names))
        self.photos: OrderedDict[str, Photo] = OrderedDict()
        self.lock = threading.Lock()  # one model call at a time: the page's requests arrive on several threads

    def describe(self) -> dict:
        return {"attributes": self.names, "limit": SLIDER_LIMIT, "directions": len(self.axes),
                "image_size": self.size, "uploads": self.classifier is not None,
                "max_upload_bytes": MAX_UPLOAD_BYTES, "model": self.provenance}

    def random_row(self, request: dict) -> dict:
        """A seed (the one given, or a new one) and a training attribute row drawn with it."""
        seed = self._seed(request.get("seed"))
        table = np.asarray(self.model.attribute_table)
        row = (table[np.random.default_rng(seed).integers(len(table))] if len(table)
               else np.zeros(len(self.names)))
        return {"seed": seed, "attributes": {name: float(value) for name, value in zip(self.names, row, strict=True)}}

    def face(self, request: dict, download: bool = False) -> tuple[bytes, float]:
        """The PNG of one face and the seconds its decoding took."""
        condition = self._condition(request.get("attributes"))
        offsets = self._offsets(request.get("directions", []))
        text = {"cvae:attributes": attributes_json(self.names, condition), **self.provenance}
        photo_id = request.get("photo")
        if photo_id:
            photo = self.photos.get(str(photo_id))
            if photo is None:
                raise StudioInputError("that photo is no longer held by the studio: upload it again", 410)
            z = photo.z_mean.copy()
            text["cvae:source"] = photo.name
        else:
            seed = self._seed(request.get("seed"))
            z = np.random.default_rng(seed).standard_normal(self.model.latent_dim).astype(np.float32)
            text["cvae:seed"] = str(seed)
        z += offsets @ (self.axes * self.spread[:, None])
        text["cvae:directions"] = json.dumps([round(float(value), 4) for value in offsets])
        with self.lock:
            started = time.perf_counter()
            image = np.asarray(self.decode(z[None], condition[None]))
            seconds = time.perf_counter() - started
        return png_bytes(image, text if download else {}), seconds

    def read_photo(self, data: bytes, name: str) -> dict:
        """Crop, read and encode an uploaded image; its id lets later faces start from it."""
        if self.classifier is None:
            raise StudioInputError("this model has no classifier beside it (classifier.keras) to read a photo's "
                                   "attributes; start the studio with --classifier")
        name = Path(name or "upload").name
        if not data:
            raise StudioInputError(f"{name}: the file is empty")
        if len(data) > MAX_UPLOAD_BYTES:
            raise StudioInputError(f"{name}: {len(data):,} bytes; the studio takes images up to "
                                   f"{MAX_UPLOAD_BYTES // 2**20} MB", 413)
        with tempfile.TemporaryDirectory(prefix="cvae-studio-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            _check_upload(path, name)
            image = load_face(path, self.crop, self.size)
            for_classifier = load_face(path, self.crop, input_size(self.classifier.network))
        from cvae.quality.classifier import predict_attributes

        with self.lock:
            read = predict_attributes(self.classifier, for_classifier[None])[0, self.classifier_columns]
            attributes = read.astype(np.float32)
            z_mean = np.asarray(self.model.encoder([image[None], attributes[None]], training=False)[0])[0]
            reconstruction = np.asarray(self.model.decoder([z_mean[None], attributes[None]], training=False))
        photo_id = secrets.token_hex(8)
        self.photos[photo_id] = Photo(name, attributes, z_mean.astype(np.float32))
        while len(self.photos) > PHOTOS_KEPT:
            self.photos.popitem(last=False)
        return {"id": photo_id, "name": name,
                "attributes": {key: float(value) for key, value in zip(self.names, attributes, strict=True)},
                "input": _data_url(png_bytes(image[None], {})),
                "reconstruction": _data_url(png_bytes(reconstruction, {}))}

    def _seed(self, value) -> int:
        if value is None or value == "":
            return int(np.random.default_rng().integers(SEED_LIMIT))
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise StudioInputError(f"seed {value!r}: expected a whole number")
        try:
            seed = int(value)
        except ValueError:
            raise StudioInputError(f"seed {value!r}: expected a whole number") from None
        if not 0 <= seed < 2**63:
            raise StudioInputError(f"seed {seed}: expected a number from 0 to 2**63 - 1")
        return seed

    def _condition(self, settings) -> np.ndarray:
        if not isinstance(settings, dict):
            raise StudioInputError("attributes: expected an object of NAME: VALUE")
        try:
            check_attribute_names(settings, self.names)
        except CvaeError as error:
            raise StudioInputError(str(error)) from None
        condition = np.zeros(len(self.names), dtype=np.float32)
        for name, value in settings.items():
            condition[self.names.index(name)] = _in_range(value, name)
        return condition

    def _offsets(self, values) -> np.ndarray:
        if not isinstance(values, list) or len(values) > len(self.axes):
            raise StudioInputError(f"directions: expected a list of at most {len(self.axes)} numbers")
        offsets = np.zeros(len(self.axes), dtype=np.float32)
        offsets[:len(values)] = [_in_range(value, f"direction {index + 1}") for index, value in enumerate(values)]
        return offsets


def _compiled_decoder(decoder, latent_dim: int, attributes: int):
    """The decoder as one TensorFlow graph: a Keras call in eager mode spends tens of
    milliseconds dispatching its layers one by one, the graph a few (docs/studio.md)."""
    import tensorflow as tf

    signature = [tf.TensorSpec((None, latent_dim), tf.float32), tf.TensorSpec((None, attributes), tf.float32)]
    return tf.function(lambda z, condition: decoder([z, condition], training=False), input_signature=signature)


def _in_range(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StudioInputError(f"{what}: {value!r} is not a number")
    if abs(value) > SLIDER_LIMIT:
        raise StudioInputError(f"{what}: {value:g} is outside the sliders' range, -{SLIDER_LIMIT:g} to {SLIDER_LIMIT:g}")
    return float(value)


def _check_upload(path: Path, name: str) -> None:
    """Refuse what is not a whole, reasonably sized image before anything decodes it in full."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise StudioInputError(f"{name}: far too many pixels to decode safely; the studio takes up to "
                               f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise StudioInputError(f"{name}: not an image the studio can read (PNG, JPEG, WebP, ...)") from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise StudioInputError(f"{name}: {width} x {height} pixels; the studio takes up to "
                               f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels")
    from cvae.validation.images import check_image

    check = check_image(path)  # a full decode: a truncated file fails here, not as grey pixels later
    if check.error:
        raise StudioInputError(f"{name}: cannot read the image ({check.error})")


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def create_app(studio: Studio):
    """The Starlette app: the page and its API."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    def refused(error: StudioInputError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    async def json_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StudioInputError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise StudioInputError("the request body must be a JSON object")
        return body

    async def page(_: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def model(_: Request) -> JSONResponse:
        return JSONResponse(studio.describe())

    async def random_row(request: Request) -> Response:
        try:
            return JSONResponse(studio.random_row(await json_body(request)))
        except StudioInputError as error:
            return refused(error)

    async def face(request: Request) -> Response:
        download = request.query_params.get("download") == "1"
        try:
            png, seconds = await run_in_threadpool(studio.face, await json_body(request), download)
        except StudioInputError as error:
            return refused(error)
        headers = {"Server-Timing": f"decode;dur={seconds * 1000:.2f}", "Cache-Control": "no-store"}
        if download:
            headers["Content-Disposition"] = 'attachment; filename="cvae-face.png"'
        return Response(png, media_type="image/png", headers=headers)

    async def photo(request: Request) -> Response:
        name = request.headers.get("x-file-name", "upload")
        try:
            declared = int(request.headers.get("content-length") or 0)
            if declared > MAX_UPLOAD_BYTES:  # refused before a byte of it is read
                raise StudioInputError(f"{name}: {declared:,} bytes; the studio takes images up to "
                                       f"{MAX_UPLOAD_BYTES // 2**20} MB", 413)
            data = bytearray()
            async for chunk in request.stream():
                data += chunk
                if len(data) > MAX_UPLOAD_BYTES:
                    raise StudioInputError(f"{name}: more than {MAX_UPLOAD_BYTES // 2**20} MB", 413)
            return JSONResponse(await run_in_threadpool(studio.read_photo, bytes(data), name))
        except StudioInputError as error:
            return refused(error)

    return Starlette(routes=[
        Route("/", page),
        Route("/api/model", model),
        Route("/api/random", random_row, methods=["POST"]),
        Route("/api/face", face, methods=["POST"]),
        Route("/api/photo", photo, methods=["POST"]),
    ])


def serve(studio: Studio, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(studio), host=host, port=port, log_level="warning")
