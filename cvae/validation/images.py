"""Decode every image in full, in parallel worker processes, and record its size.

A header read (`Image.open`) misses truncated and corrupt files; only `load()` decodes
the pixel data. JPEGs are decoded in draft mode (libjpeg's reduced-scale DCT), which is
cheaper and still reads the whole entropy-coded stream, so truncation is still caught
(tests/test_validation.py plants a truncated JPEG to prove it).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cvae.core.parallel import usable_cores
from cvae.core.progress import progress

CHUNK = 256  # images per worker task: amortises the hand-off between processes


@dataclass(frozen=True)
class ImageCheck:
    error: str | None  # why the image does not decode; None when it does
    width: int | None  # the stored size, None when the file does not decode
    height: int | None


def check_image(path: str | Path) -> ImageCheck:
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.draft("RGB", (max(1, width // 4), max(1, height // 4)))  # a no-op for PNG
            image.load()
    except UnidentifiedImageError:  # its message holds the absolute path: keep reports portable
        return ImageCheck("not an image format Pillow can read", None, None)
    except Exception as exc:  # noqa: BLE001 (Pillow's decoders raise OSError, SyntaxError, ValueError, ...)
        return ImageCheck(f"{type(exc).__name__}: {exc}", None, None)
    return ImageCheck(None, width, height)


def _check_chunk(paths: list[str]) -> list[ImageCheck]:
    return [check_image(path) for path in paths]


def check_images(paths: Sequence[str | Path], workers: int | None = None, chunk: int = CHUNK) -> list[ImageCheck]:
    """One `ImageCheck` per path, in order; `workers` processes (default: every usable core)."""
    workers = workers or usable_cores()
    chunks = [[str(path) for path in paths[i:i + chunk]] for i in range(0, len(paths), chunk)]
    if workers == 1 or len(chunks) <= 1:  # a pool costs more than it saves here
        return [check for part in chunks for check in _check_chunk(part)]
    with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
        done = progress(pool.map(_check_chunk, chunks), total=len(chunks), desc="validate: decoding images")
        return [check for part in done for check in part]
