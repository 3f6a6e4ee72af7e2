"""Download one file over http(s): streamed, resumed after a dropped connection, verified.

Bytes go to `<target>.part`, which is renamed onto `target` only when it is complete and
matches the expected checksum, so `target` is always a whole file. Beside it,
`<target>.download.json` records where the file came from (URL, ETag, Last-Modified,
size): a `.part` is resumed only for the URL that started it (with `If-Range`, so a file
that changed on the server is fetched again from byte 0), and a later run trusts a
finished file whose checksum, or else whose record, still matches, and does no network
work at all, unless `cvae check-source` saw the server report another ETag or
Last-Modified (`expected`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from http import HTTPStatus
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from cvae.core.atomic import replace_file
from cvae.core.errors import CvaeError
from cvae.core.progress import byte_progress
from cvae.source.checksums import Checksum

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # a stalled connection counts as dropped after this long
RETRY_DELAYS_S = (1.0, 5.0, 15.0)  # waits before each retry that follows no progress
USER_AGENT = "cvae-download"


class _ConnectionLost(Exception):
    """The transfer stopped early; a retry resumes from what the `.part` file holds."""


def fetch(url: str, target: Path, checksum: Checksum | None = None, expected: dict | None = None) -> Path:
    """Make `target` a complete, verified copy of `url`, downloading only if needed.

    `expected`: what `cvae check-source` found on the server now ("etag", "last-modified"
    or the content's "sha256"); a kept copy that no longer matches is fetched again."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if _is_verified_copy(url, target, checksum) and _matches(target, expected or {}):
        return target
    if target.exists():
        print(f"download: {target} is not a verified copy of {url}; fetching it again", file=sys.stderr)
        target.unlink()
    part = _part_path(target)
    if _read_record(target).get("url") != url:
        part.unlink(missing_ok=True)  # bytes of another file must never be resumed
    _download_with_retries(url, part, target)
    if checksum is not None:
        _verify(url, part, target, checksum)
    os.replace(part, target)
    _write_record(target, {**_read_record(target), "size": target.stat().st_size})
    return target


def _is_verified_copy(url: str, target: Path, checksum: Checksum | None) -> bool:
    if not target.is_file():
        return False
    if checksum is not None:
        return checksum.of_file(target) == checksum
    record = _read_record(target)
    return record.get("url") == url and record.get("size") == target.stat().st_size


def _matches(target: Path, expected: dict) -> bool:
    # Only validators the check found are compared: a server that sends no ETag says
    # nothing about one.
    record = _read_record(target)
    for validator in ("etag", "last-modified"):
        if validator in expected and record.get(validator) != expected[validator]:
            return False
    if "sha256" in expected:  # a server without validators: the check hashed its content
        wanted = Checksum("sha256", expected["sha256"])
        return wanted.of_file(target) == wanted
    return True


def _download_with_retries(url: str, part: Path, target: Path) -> None:
    # Retries are counted only while they get no further, so a long download over a
    # flaky line finishes, while a server that restarts every response from byte 0
    # (ignoring Range) and drops it at the same point gives up.
    furthest = _size(part)
    retries_without_progress = 0
    while True:
        try:
            _transfer(url, part, target)
            return
        except _ConnectionLost as lost:
            if _size(part) > furthest:
                furthest, retries_without_progress = _size(part), 0
            if retries_without_progress == len(RETRY_DELAYS_S):
                kept = ""
                if part.exists():
                    kept = f"; the partial file {part} is kept and the next run resumes it"
                raise CvaeError(
                    f"{url}: download failed: {lost}; {retries_without_progress} retries got no"
                    f" further than {furthest:,} bytes{kept}"
                ) from None
            time.sleep(RETRY_DELAYS_S[retries_without_progress])
            retries_without_progress += 1


def _transfer(url: str, part: Path, target: Path) -> None:
    offset = _size(part)
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        # Either validator makes a server that changed the file send it whole from byte 0.
        record = _read_record(target)
        validator = record.get("etag") or record.get("last-modified")
        if validator:
            headers["If-Range"] = validator
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as error:
        error.close()
        if error.code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE and offset:
            part.unlink()  # the partial file no longer fits the file on the server
            raise _ConnectionLost("the server refused to resume (HTTP 416)") from None
        raise CvaeError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (OSError, HTTPException) as error:
        raise _ConnectionLost(_describe(error)) from None
    with response:
        if response.headers.get_content_type() == "text/html":
            raise CvaeError(
                f"{url}: the server sent an HTML page instead of {target.name} (a login, quota"
                " or virus-scan confirmation page, most likely)"
            )
        if response.status == HTTPStatus.PARTIAL_CONTENT:
            if _range_start(response.headers.get("Content-Range", "")) != offset:
                part.unlink()
                raise _ConnectionLost("the server resumed at another offset than asked")
        else:
            # A whole file (a server that ignores Range sends all of it again): start over.
            offset = 0
            _write_record(target, {"url": url, "etag": response.headers.get("ETag"),
                                   "last-modified": response.headers.get("Last-Modified")})
        length = response.headers.get("Content-Length", "")
        total = offset + int(length) if length.isdigit() else None
        with part.open("ab" if offset else "wb") as out, \
                byte_progress(total, f"download {target.name}", initial=offset) as advance:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    advance(len(chunk))
            except (OSError, HTTPException) as error:
                raise _ConnectionLost(_describe(error)) from None
    if total is not None and _size(part) < total:
        raise _ConnectionLost(f"the connection closed after {_size(part):,} of {total:,} bytes")


def _verify(url: str, part: Path, target: Path, expected: Checksum) -> None:
    got = expected.of_file(part)
    if got != expected:
        bad = target.with_name(target.name + ".bad")
        os.replace(part, bad)  # kept for inspection, out of the way of the next attempt
        _record_path(target).unlink(missing_ok=True)
        raise CvaeError(
            f"{url}: checksum mismatch: expected {expected}, got {got}; the download is kept as {bad}"
        )


def _range_start(content_range: str) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(match.group(1)) if match else None


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error  # URLError wraps the socket error
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".download.json")


def _read_record(target: Path) -> dict:
    try:
        record = json.loads(_record_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(target: Path, record: dict) -> None:
    with replace_file(_record_path(target)) as staging:
        staging.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
