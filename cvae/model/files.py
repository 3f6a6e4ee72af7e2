"""Loading the pipeline's .keras files with errors that name what is wrong with a file
(Keras itself calls a foreign file "not found", or fails deep inside deserialisation).
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


def load_keras_file(path: str | Path, expected: type, what: str, label: str, wrong_class: str):
    """The `expected` object saved at `path` (safe mode, not compiled), or a CvaeError that
    says why the file is not one: missing, not a .keras archive, unreadable ("<path>: not
    <label>: ..."), or holding another class (`wrong_class`, formatted with path and held)."""
    import keras

    require_keras_file(path, what)
    held = saved_class_name(path)
    if held not in (None, expected.__name__):  # named from the archive: no need to import the other's code
        raise CvaeError(wrong_class.format(path=path, held=held))
    try:
        loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 (Keras raises TypeError, ValueError, ... on a foreign file)
        raise CvaeError(f"{path}: not {label}: {first_line(exc)}") from None
    if not isinstance(loaded, expected):
        raise CvaeError(wrong_class.format(path=path, held=type(loaded).__name__))
    return loaded
