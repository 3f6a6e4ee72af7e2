"""Loading the pipeline's .keras files with errors that say what is wrong with the file
(Keras itself calls a foreign file "not found", or fails deep inside deserialisation)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from cvae.errors import CvaeError


def load_model(path: str | Path):
    """The CVAE at `path`, or a CvaeError that says why the file is not one."""
    from cvae.classifier import AttributeClassifier  # noqa: F401 (registered, so a classifier reads as one)
    from cvae.model import load_cvae

    require_keras_file(path, "model")
    try:
        return load_cvae(path)
    except Exception as exc:  # noqa: BLE001 (Keras raises TypeError, ValueError, ... on a foreign file)
        raise CvaeError(f"{path}: not a cvae model: {first_line(exc)}") from None


def load_attribute_classifier(path: str | Path):
    """The attribute classifier at `path`, or a CvaeError that says why the file is not one."""
    from cvae.classifier import load_classifier

    require_keras_file(path, "classifier")
    try:
        return load_classifier(path)
    except CvaeError:
        raise
    except Exception as exc:  # noqa: BLE001 (as in load_model)
        raise CvaeError(f"{path}: not a cvae attribute classifier: {first_line(exc)}") from None


def require_keras_file(path: str | Path, what: str) -> None:
    path = Path(path)
    if not path.is_file():
        raise CvaeError(f"{path}: {what} file not found")
    if not zipfile.is_zipfile(path):  # a .keras file is a zip; Keras would call anything else "not found"
        raise CvaeError(f"{path}: not a .keras {what} file (not a zip archive)")


def first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
