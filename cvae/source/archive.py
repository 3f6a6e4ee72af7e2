"""Unpack a zip archive safely: every entry is checked before anything is written.

Refused, naming the entry: paths that would land outside the destination (absolute, or
with `..`), symbolic links, and archives that declare more unpacked bytes than a limit
(zip bombs). Declared sizes can lie, so each entry is also cut off the moment it writes
more than it declared. Files are written with default permissions, whatever the archive
says.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path, PureWindowsPath

from cvae.core.errors import CvaeError
from cvae.core.progress import progress

CHUNK_BYTES = 1 << 20
# What zipfile raises on a corrupt, truncated, encrypted or oddly compressed entry.
_UNREADABLE_ENTRY = (zipfile.BadZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError, OSError)


def extract_zip(archive: Path, destination: Path, max_unpacked_bytes: int) -> None:
    """Unpack `archive` into `destination` (created), refusing unsafe entries and zip bombs."""
    try:
        zip_file = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as error:
        raise CvaeError(f"{archive}: not a readable zip archive ({error})") from None
    with zip_file:
        members = zip_file.infolist()
        _check_members(archive, members, max_unpacked_bytes)
        destination.mkdir(parents=True, exist_ok=True)
        for member in progress(members, len(members), f"unpack {archive.name}"):
            try:
                _extract_member(zip_file, member, destination)
            except _UNREADABLE_ENTRY as error:
                raise CvaeError(f"{archive}: cannot unpack entry {member.filename!r}: {error}") from None


def _check_members(archive: Path, members: list[zipfile.ZipInfo], max_unpacked_bytes: int) -> None:
    declared = 0
    for member in members:
        name = member.filename
        if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
            raise CvaeError(f"{archive}: entry {name!r} has an absolute path; refusing to unpack the archive")
        if ".." in _parts(name):
            raise CvaeError(f"{archive}: entry {name!r} points outside the archive (..); refusing to unpack")
        if stat.S_ISLNK(member.external_attr >> 16):  # Unix mode bits live in the high 16 bits
            raise CvaeError(f"{archive}: entry {name!r} is a symbolic link; refusing to unpack the archive")
        declared += member.file_size
        if declared > max_unpacked_bytes:
            raise CvaeError(
                f"{archive}: unpacks to more than data.max_unpacked_bytes ({max_unpacked_bytes:,} bytes);"
                f" the limit is passed at entry {name!r} ({declared:,} bytes so far)"
            )


def _extract_member(zip_file: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path) -> None:
    parts = _parts(member.filename)
    if not parts:
        return
    target = destination.joinpath(*parts)
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zip_file.open(member) as source, target.open("wb") as out:
        while chunk := source.read(CHUNK_BYTES):
            written += len(chunk)
            if written > member.file_size:
                raise CvaeError(
                    f"{zip_file.filename}: entry {member.filename!r} unpacks to more than the"
                    f" {member.file_size:,} bytes it declares; refusing to unpack the archive"
                )
            out.write(chunk)


def _parts(name: str) -> list[str]:
    # Zips made on Windows may use backslashes; treat both as separators.
    return [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]
