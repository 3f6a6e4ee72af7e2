"""The model registry on disk: every trained model kept under `models/registry/<version>/`
with its metrics and provenance, and `models/production`, a symlink to the version in use.

A version folder is written beside its final name and renamed into place, and the
production link is replaced by renaming a new link over it: both are atomic on one file
system, so a reader (`cvae generate`, a running server) sees the old model or the new
one, never half of either. Version folders are never changed once written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cvae.core.errors import CvaeError

MODEL_FILE = "cvae.keras"
CLASSIFIER_FILE = "classifier.keras"  # the classifier its metrics were measured with; `cvae edit` uses it
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
DECISIONS_FILE = "decisions.jsonl"  # one line per gate decision, oldest first: the audit trail


@dataclass(frozen=True)
class Version:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def classifier(self) -> Path:
        return self.path / CLASSIFIER_FILE

    def metrics(self) -> dict:
        return _read_json(self.path / METRICS_FILE)

    def provenance(self) -> dict:
        return _read_json(self.path / PROVENANCE_FILE)


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions(registry: str | Path) -> list[Version]:
    """The registered versions, oldest first (names start with their UTC time)."""
    registry = Path(registry)
    if not registry.is_dir():
        return []
    return [Version(entry) for entry in sorted(registry.iterdir())
            if entry.is_dir() and not entry.name.startswith(".") and (entry / PROVENANCE_FILE).is_file()]


def find(registry: str | Path, model_md5: str) -> Version | None:
    """The version holding a model with this MD5, if one was registered."""
    return next((v for v in versions(registry) if v.provenance().get("model_md5") == model_md5), None)


def register(registry: str | Path, model: Path, classifier: Path, metrics: dict, provenance: dict,
             now: datetime | None = None) -> Version:
    """Copy the model, its classifier, metrics and provenance into a new version folder."""
    registry = Path(registry)
    registry.mkdir(parents=True, exist_ok=True)
    model_md5 = file_md5(model)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    final = registry / f"{stamp}-{model_md5[:8]}"
    if final.exists():
        raise CvaeError(f"{final}: a registry version of this name exists already; versions are never replaced")
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=registry))
    try:
        _chmod_as_mkdir(staging)
        shutil.copyfile(model, staging / MODEL_FILE)
        shutil.copyfile(classifier, staging / CLASSIFIER_FILE)
        _write_json(staging / METRICS_FILE, metrics)
        _write_json(staging / PROVENANCE_FILE, {**provenance, "version": final.name, "model_md5": model_md5,
                                                "classifier_md5": file_md5(classifier)})
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Version(final)


def production(link: str | Path) -> Version | None:
    """The version `link` points at; None when there is no production model yet."""
    link = Path(link)
    if not link.is_symlink() and not link.exists():
        return None
    if not link.is_symlink():
        raise CvaeError(f"{link}: expected a symlink to a registry version, found a "
                        f"{'directory' if link.is_dir() else 'file'}; move it away")
    target = link.resolve()
    if not (target / MODEL_FILE).is_file():
        raise CvaeError(f"{link} points at {os.readlink(link)}, which holds no {MODEL_FILE}; roll back with"
                        " `cvae production --set VERSION` (`cvae production` lists them)")
    return Version(target)


def set_production(link: str | Path, version: Version) -> None:
    """Point `link` at `version` in one rename."""
    link = Path(link)
    if not version.model.is_file():
        raise CvaeError(f"{version.path}: not a registry version (no {MODEL_FILE})")
    if link.exists() and not link.is_symlink():
        production(link)  # raises: a real folder or file is never replaced
    link.parent.mkdir(parents=True, exist_ok=True)
    # a relative target keeps the link valid when the project folder moves or is copied
    target = os.path.relpath(version.path.resolve(), link.parent.resolve())
    temporary = link.with_name(f".{link.name}.{os.getpid()}.new")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def record_decision(registry: str | Path, decision: dict) -> None:
    """Append a gate decision to the registry's audit trail (one JSON line)."""
    path = Path(registry) / DECISIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(decision, sort_keys=True) + "\n")


def last_decided(registry: str | Path) -> Version:
    """The version the last gate decision left in production (for a fresh clone after `dvc pull`)."""
    path = Path(registry) / DECISIONS_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if not lines:
        raise CvaeError(f"{path}: no gate decision recorded; run the pipeline first")
    try:
        name = json.loads(lines[-1])["production"]
    except (ValueError, KeyError, TypeError):
        raise CvaeError(f"{path}:{len(lines)}: not a decision record (expected JSON with 'production')") from None
    return Version(Path(registry) / name)


def _chmod_as_mkdir(folder: Path) -> None:
    """mkdtemp makes a folder only its owner can read; a version folder gets the modes
    a plain mkdir would (the umask's), so the team can read the models."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CvaeError(f"{path}: not found") from None
    except ValueError as exc:
        raise CvaeError(f"{path}: not valid JSON ({exc})") from None
