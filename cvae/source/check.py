"""The `check_source` stage: a fingerprint of the data source, so that DVC reruns `download`
(and everything after it) only when the source changed.

The stage always runs (`always_changed` in dvc.yaml) and writes `data/source.json`, which
`download` depends on. The file holds only what identifies the source's content (no times,
no temporary paths, sorted keys), so an unchanged source gives the same bytes and DVC skips
the rest. Kinds mirror the dispatch of `cvae.source.download`:

- `synthetic`, `shapes`: nothing outside the project; the generator's params are DVC params
  of `download`.
- `celeba`: the official release is frozen and `download` checks the published MD5s, so the
  fingerprint is those MD5s; no network.
- a local directory: a hash over every file's relative path, size and content.
- a local zip: its SHA-256 and size.
- an http(s) URL: `data.checksum` when given (the content is pinned; no network), else the
  server's ETag, Last-Modified and Content-Length from a HEAD request; a server that gives
  neither ETag nor Last-Modified is read whole and hashed, since nothing cheaper tells a
  changed file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from cvae.core.atomic import replace_file
from cvae.core.config import Params
from cvae.core.errors import CvaeError
from cvae.core.progress import byte_progress, progress
from cvae.source.download import CELEBA, CELEBA_FILES, DRAWN
from cvae.source.http import TIMEOUT_S, USER_AGENT

BLOCK = 1 << 20
VALIDATORS = ("ETag", "Last-Modified", "Content-Length")  # recorded lower-cased, as fetch records them
HEAD_REFUSED = (HTTPStatus.METHOD_NOT_ALLOWED, HTTPStatus.NOT_IMPLEMENTED)


@dataclass(frozen=True)
class SourceCheck:
    record: dict  # what `out` holds now
    changed: bool  # the file's content differs from what `out` held before (True when there was none)

    def describe(self) -> str:
        state = "changed since the last check" if self.changed else "unchanged since the last check"
        return f"{_what(self.record)}; {state}"


def check_source(params: Params, out: str | Path) -> SourceCheck:
    """Fingerprint `data.source` into `out`, rewriting it only when the fingerprint changed."""
    out = Path(out)
    record = fingerprint(params)
    text = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
    previous = out.read_bytes() if out.is_file() else None
    if previous != text:  # an unchanged check leaves the file (and its mtime) alone
        with replace_file(out) as staging:
            staging.write_bytes(text)
    return SourceCheck(record, previous != text)


def fingerprint(params: Params) -> dict:
    source = params.data.source
    if source in DRAWN:
        return {"kind": source}
    if source == CELEBA:
        # No network: download accepts these files only with exactly these MD5s.
        return {"kind": "celeba", "md5": {file.name: file.md5 for file in CELEBA_FILES}}
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        return _url(source, params.data.checksum)
    path = Path(source).expanduser()
    if path.is_dir():
        return _directory(path, source)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise CvaeError(f"data.source: {path} is not a zip archive (nor a directory in CelebA layout)")
        size = path.stat().st_size
        with byte_progress(size, f"check-source: hashing {path.name}") as advance:
            return {"kind": "zip", "source": source, "bytes": size, "sha256": _sha256_file(path, advance)}
    raise CvaeError(
        f"data.source: {str(path)!r} does not exist; expected 'synthetic', 'shapes', 'celeba', an"
        " http(s) URL, or a local directory or zip in CelebA layout"
    )


def _directory(root: Path, source: str) -> dict:
    # Sorted by the relative path as text, so the order (and the hash) is the same on every
    # machine and Python version. Nothing is skipped: any changed file counts as a change.
    files = sorted((Path(folder, name).relative_to(root).as_posix()
                    for folder, _, names in os.walk(root) for name in names
                    if (Path(folder) / name).is_file()))
    digest, total = hashlib.sha256(), 0
    for name in progress(files, len(files), "check-source: hashing files"):
        path = root / name
        size = path.stat().st_size
        total += size
        # path, size and content per file: an edited, added, removed or renamed file shows
        digest.update(f"{name}\0{size}\0{_sha256_file(path)}\n".encode())
    return {"kind": "directory", "source": source, "files": len(files), "bytes": total,
            "sha256": digest.hexdigest()}


def _url(url: str, checksum: str | None) -> dict:
    if urlparse(url).scheme not in ("http", "https"):
        raise CvaeError(f"data.source: {url}: only http:// and https:// URLs are supported")
    if checksum:
        return {"kind": "url", "source": url, "checksum": checksum}
    method, response = "HEAD", _request(url, "HEAD")
    if response is None:  # HEAD refused: a GET's headers tell the same; its body is read only if needed
        method, response = "GET", _request(url, "GET")
    with response:
        found = {name.lower(): response.headers[name] for name in VALIDATORS if response.headers.get(name)}
        if "etag" in found or "last-modified" in found:
            return {"kind": "url", "source": url, **found}
        if method == "GET":
            return {"kind": "url", "source": url, "sha256": _sha256_body(url, response)}
    with _request(url, "GET") as response:
        return {"kind": "url", "source": url, "sha256": _sha256_body(url, response)}


def _request(url: str, method: str) -> HTTPResponse | None:
    """The open response, or None when the server refuses HEAD; errors name the URL."""
    try:
        return urlopen(Request(url, method=method, headers={"User-Agent": USER_AGENT}), timeout=TIMEOUT_S)
    except HTTPError as error:
        error.close()
        if method == "HEAD" and error.code in HEAD_REFUSED:
            return None
        raise CvaeError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (OSError, HTTPException, ValueError) as error:
        raise CvaeError(f"{url}: cannot reach the server ({_reason(error)})") from None


def _sha256_body(url: str, response: HTTPResponse) -> str:
    length = response.headers.get("Content-Length", "")
    total = int(length) if length.isdigit() else None
    digest, done = hashlib.sha256(), 0
    try:
        with byte_progress(total, "check-source: hashing the download") as advance:
            while block := response.read(BLOCK):
                digest.update(block)
                done += len(block)
                advance(len(block))
    except (OSError, HTTPException) as error:
        raise CvaeError(f"{url}: the transfer failed ({_reason(error)})") from None
    if total is not None and done < total:  # the hash of a cut body would look like a change
        raise CvaeError(f"{url}: the transfer failed: the connection closed after {done:,} of"
                        f" {total:,} bytes")
    return digest.hexdigest()


def _sha256_file(path: Path, advance: Callable[[int], None] = lambda n_bytes: None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
            advance(len(block))
    return digest.hexdigest()


def _what(record: dict) -> str:
    kind, source = record["kind"], record.get("source", "")
    if kind == "synthetic":
        return "synthetic faces (drawn by download; nothing outside the project to check)"
    if kind == "shapes":
        return "labelled shapes (drawn by download; nothing outside the project to check)"
    if kind == "celeba":
        return "official CelebA files (a frozen release, pinned by their published MD5s)"
    if kind == "directory":
        return (f"local directory {source}: {record['files']:,} files, {record['bytes']:,} bytes,"
                f" content sha256 {record['sha256'][:12]}…")
    if kind == "zip":
        return f"local zip {source}: {record['bytes']:,} bytes, sha256 {record['sha256'][:12]}…"
    if "checksum" in record:
        return f"{source}: pinned by data.checksum {record['checksum']} (not asked)"
    if "sha256" in record:
        return f"{source}: no ETag or Last-Modified, so read whole: sha256 {record['sha256'][:12]}…"
    found = ", ".join(f"{name} {record[name.lower()]}" for name in VALIDATORS if name.lower() in record)
    return f"{source}: {found}"


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error  # URLError wraps the socket error
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
