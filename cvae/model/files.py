"""Checks on the pipeline's .keras files that name what is wrong with a file before Keras
loads it (Keras itself calls a foreign file "not found", or fails deep inside deserialisation).
Imports nothing of the package, so that the model and the classifier each load without the other."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from cvae.core.errors import CvaeError


def require_keras_file(path: str | Path, what: str) -> None:
    path = Path(path)
    if not path.is_file():
        raise CvaeError(f"{path}: {what} file not found")
    if not zipfile.is_zipfile(path):  # a .keras file is a zip; Keras would call anything else "not found"
        raise CvaeError(f"{path}: not a .keras {what} file (not a zip archive)")


def saved_class_name(path: str | Path) -> str | None:
    """The class name that a .keras archive's config.json records, or None where it records none."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None  # Keras's own loader then says what is wrong
    return config.get("class_name") if isinstance(config, dict) else None


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
