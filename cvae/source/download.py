"""The `download` stage: put the raw dataset, in CelebA layout, into `data/raw/`.

Sources (`data.source`):
- `synthetic`: the built-in face set, drawn here;
- `shapes`: the built-in set of labelled shapes (labels unlike CelebA's), drawn here;
- `celeba`: the three official files, from Google Drive or from `data.celeba_mirror`,
  always checked against their published MD5s;
- a local directory in CelebA layout or in the Kaggle variant: copied (`cvae.source.folder`);
- a local zip holding that layout, or the official `img_align_celeba.zip` with the text
  files beside it: checked against `data.checksum` when one is given;
- an http(s) URL of such a zip: downloaded into `data.download_dir` (resumed after a
  dropped connection, kept for the next run: `cvae.source.http`), checked against
  `data.checksum` when one is given.

Archives are unpacked with guards against unsafe entries and zip bombs (`cvae.source.archive`).
The result appears at once and complete, or not at all: a failure leaves `data/raw` as
it was.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from cvae.core.atomic import replace_directory
from cvae.core.celeba import ATTRIBUTE_FILE, PARTITION_FILE
from cvae.core.config import DataParams, Params
from cvae.core.errors import CvaeError
from cvae.source import shapes, synthetic
from cvae.source.archive import extract_zip
from cvae.source.checksums import Checksum
from cvae.source.folder import find_layout, install
from cvae.source.http import fetch

SYNTHETIC = "synthetic"
SHAPES = "shapes"
# The built-in drawn sets; each draws `data.synthetic_images` images.
DRAWN = {SYNTHETIC: synthetic.generate, SHAPES: shapes.generate}
CELEBA = "celeba"
GOOGLE_DRIVE_URL = "https://drive.google.com/uc?export=download&id={file_id}"
UNPACKED = ".unpacked"  # inside the staging directory, so a failure cleans it up too


@dataclass(frozen=True)
class OfficialFile:
    name: str
    drive_id: str  # the Google Drive file id (as torchvision uses)
    md5: str


# The official CelebA files (reference/celeba.md), small ones first so that a refusing
# host is noticed before the 1.4 GB archive.
CELEBA_FILES = (
    OfficialFile(ATTRIBUTE_FILE, "0B7EVK8r0v71pblRyaVFSWGxPY0U", "75e246fa4810816ffd6ee81facbd244c"),
    OfficialFile(PARTITION_FILE, "0B7EVK8r0v71pY0NSMzRuSXJEVkk", "d32c9cbf5e040fd4025c592c306e6668"),
    OfficialFile("img_align_celeba.zip", "0B7EVK8r0v71pZjFTYXZWM3FlRnM", "00d2c5bc6d35e252742224ab0c1e8fcb"),
)
LOCAL_COPY_ADVICE = (
    "download CelebA yourself and set `data.source: /path/to/folder-or-zip` (a folder in"
    " CelebA layout or the Kaggle variant, a zip of one, or img_align_celeba.zip with the"
    " .txt files beside it)"
)


def download(params: Params, raw_dir: str | Path, source_check: str | Path | None = None) -> Path:
    """`source_check`: the record of `cvae check-source` (data/source.json); for a URL, a kept
    download that no longer matches what the server reports is fetched again."""
    raw_dir = Path(raw_dir)
    data = params.data
    source = data.source
    checksum = Checksum.parse(data.checksum) if data.checksum else None
    with replace_directory(raw_dir) as staging:
        if source in DRAWN:
            _refuse_checksum(checksum, source)
            DRAWN[source](
                staging,
                num_images=data.synthetic_images,
                seed=params.seed,
                val_fraction=data.val_fraction,
                test_fraction=data.test_fraction,
            )
        elif source == CELEBA:
            _refuse_checksum(checksum, source)
            _install_official_celeba(data, staging)
        elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
            _install_url(source, checksum, data, staging, _validators(source_check, source))
        else:
            _install_local(Path(source).expanduser(), checksum, data, staging)
    return raw_dir


def _refuse_checksum(checksum: Checksum | None, source: str) -> None:
    # A checksum that is silently not checked would be worse than none.
    if checksum is not None:
        raise CvaeError(
            f"data.checksum is set, but data.source {source!r} is not an archive or URL; checksums"
            " apply only to those (the `celeba` files are always checked against their official MD5s)"
        )


def _install_official_celeba(data: DataParams, staging: Path) -> None:
    folder = Path(data.download_dir)
    for official in CELEBA_FILES:
        if data.celeba_mirror:
            url = f"{data.celeba_mirror.rstrip('/')}/{official.name}"
            advice = f"Check data.celeba_mirror ({data.celeba_mirror}), or {LOCAL_COPY_ADVICE}."
        else:
            url = GOOGLE_DRIVE_URL.format(file_id=official.drive_id)
            advice = (
                "Google Drive often refuses these downloads (quotas, confirmation pages). To go"
                f" on, {LOCAL_COPY_ADVICE}, or set `data.celeba_mirror: https://...` to a host"
                f" that serves {', '.join(file.name for file in CELEBA_FILES)}."
            )
        try:
            fetch(url, folder / official.name, Checksum("md5", official.md5))
        except CvaeError as error:
            raise CvaeError(f"celeba: cannot get {official.name}: {error}\n{advice}") from None
    _install_archive(folder / CELEBA_FILES[-1].name, "celeba", data, staging, beside=folder)


def _validators(source_check: str | Path | None, url: str) -> dict:
    if source_check is None or not Path(source_check).is_file():
        return {}
    try:
        record = json.loads(Path(source_check).read_text(encoding="utf-8"))
    except ValueError as error:
        raise CvaeError(f"{source_check}: not valid JSON ({error}); run `cvae check-source` again") from None
    if record.get("kind") != "url" or record.get("source") != url:
        return {}  # a record of another source says nothing about this one
    return {key: record[key] for key in ("etag", "last-modified", "sha256") if key in record}


def _install_url(url: str, checksum: Checksum | None, data: DataParams, staging: Path,
                 expected: dict | None = None) -> None:
    if urlparse(url).scheme not in ("http", "https"):
        raise CvaeError(f"data.source: {url}: only http:// and https:// URLs are supported")
    name = Path(unquote(urlparse(url).path)).name
    if name in ("", ".", ".."):
        name = "download.zip"
    archive = fetch(url, Path(data.download_dir) / name, checksum, expected)
    _install_archive(archive, url, data, staging)


def _install_local(path: Path, checksum: Checksum | None, data: DataParams, staging: Path) -> None:
    if path.is_dir():
        _refuse_checksum(checksum, str(path))
        install(find_layout(path, str(path)), staging, move_images=False)
    elif path.is_file():
        if not zipfile.is_zipfile(path):
            raise CvaeError(f"data.source: {path} is not a zip archive (nor a directory in CelebA layout)")
        if checksum is not None and (got := checksum.of_file(path)) != checksum:
            raise CvaeError(f"data.source: {path}: checksum mismatch: expected {checksum}, got {got}")
        _install_archive(path, str(path), data, staging, beside=path.parent)
    else:
        raise CvaeError(
            f"data.source: {str(path)!r} does not exist; expected 'synthetic', 'shapes', 'celeba', an"
            " http(s) URL, or a local directory or zip in CelebA layout"
        )


def _install_archive(archive: Path, described_as: str, data: DataParams, staging: Path,
                     beside: Path | None = None) -> None:
    unpacked = staging / UNPACKED
    extract_zip(archive, unpacked, data.max_unpacked_bytes)
    install(find_layout(unpacked, described_as, beside), staging, move_images=True)
    shutil.rmtree(unpacked)
