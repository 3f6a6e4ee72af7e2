"""Where a figure came from, written into its PNG text chunks: the git commit, a hash of
the params, and the dvc.lock hashes of the model and the data. `cvae provenance FILE`
reads them back."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from cvae.core.config import Params
from cvae.core.errors import CvaeError

PREFIX = "cvae:"  # every provenance key starts so; other text chunks are left as they are
LOCK_FILE = "dvc.lock"


def collect(params: Params, model_path: str | Path, data_dir: str | Path, project_dir: str | Path = ".") -> dict:
    """The provenance of outputs made now from `model_path` and `data_dir`, as PNG text keys."""
    return {PREFIX + key: value for key, value in record(params, model_path, data_dir, project_dir).items()}


def record(params: Params, model_path: str | Path, data_dir: str | Path, project_dir: str | Path = ".") -> dict:
    """Git commit, params hash, and the model and data with their md5s in dvc.lock."""
    project_dir = Path(project_dir)
    locked = locked_hashes(project_dir)
    model_md5 = _md5(Path(model_path))
    fields = {
        "git_commit": _git_commit(project_dir),
        "params_sha256": hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode()).hexdigest(),
        "model": str(model_path),
        "model_md5": model_md5,
        "model_dvc_lock_md5": locked.get(_key(model_path), "absent (not a DVC output here)"),
        "data": str(data_dir),
        "data_dvc_lock_md5": locked.get(_key(data_dir), "absent (not a DVC output here)"),
    }
    if fields["model_dvc_lock_md5"] not in ("absent (not a DVC output here)", model_md5):
        # the file was replaced after DVC recorded it: say so rather than vouch for the wrong one
        fields["model_dvc_lock_md5"] += " (stale: the model file differs)"
    return fields


def read(path: str | Path) -> dict[str, str]:
    """All text chunks of a PNG, the provenance first; an error names what is wrong."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise CvaeError(f"{path}: a {image.format} image, not a PNG; only PNGs carry provenance")
            text = dict(image.text)
    except FileNotFoundError:
        raise CvaeError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CvaeError(f"{path}: not a readable PNG ({exc})") from None
    ours = {key: value for key, value in text.items() if key.startswith(PREFIX)}
    if not ours:
        raise CvaeError(f"{path}: no provenance in its text chunks (keys starting {PREFIX!r}); "
                        "it was not written by `cvae visualize`")
    return {**ours, **{key: value for key, value in text.items() if key not in ours}}


def _key(path: str | Path) -> str:
    return Path(path).as_posix().rstrip("/")


def locked_hashes(project_dir: Path) -> dict[str, str]:
    """Output path -> md5 over every stage of dvc.lock (nothing when there is none)."""
    lock = project_dir / LOCK_FILE
    if not lock.exists():
        return {}
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except yaml.YAMLError as exc:
        raise CvaeError(f"{lock}: not valid YAML ({exc})") from None
    return {_key(out["path"]): out["md5"] for stage in stages.values() for out in stage.get("outs", [])
            if "md5" in out}


def locked_code(project_dir: Path, stage: str) -> dict[str, str]:
    """Code file -> md5, as dvc.lock recorded them when `stage` last ran: the code that made
    its outputs, whatever the working tree holds now ({} when nothing is recorded)."""
    lock = project_dir / LOCK_FILE
    if not lock.exists():
        return {}
    try:
        entry = ((yaml.safe_load(lock.read_text()) or {}).get("stages", {})).get(stage, {})
    except yaml.YAMLError as exc:
        raise CvaeError(f"{lock}: not valid YAML ({exc})") from None
    return {dep["path"]: dep["md5"] for dep in entry.get("deps", [])
            if dep["path"].endswith(".py") and "md5" in dep}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit(project_dir: Path) -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True)

    try:
        head = git("rev-parse", "HEAD")
    except FileNotFoundError:
        return "unknown (git is not installed)"
    if head.returncode != 0:
        return "none (not a git repository, or no commit yet)"
    # DVC outputs are git-ignored, and dvc.lock changes as stages run: other uncommitted
    # changes mean code or params
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{LOCK_FILE}").stdout.strip()
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
