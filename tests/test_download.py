"""The download stage: every source, the HTTP path against a real local server, safe unpacking."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

import cvae.source.download
import cvae.source.http
from cvae.core.celeba import ATTRIBUTE_FILE, IMAGE_DIR, PARTITION_FILE, read_attribute_frame
from cvae.core.config import params_from_dict
from cvae.core.errors import CvaeError
from cvae.source.archive import extract_zip
from cvae.source.download import download
from cvae.source.synthetic import generate
from tests.conftest import BIN, tiny_params_dict
from tests.http_server import FileServer, Served

ZIP = "application/zip"


@pytest.fixture(autouse=True)
def no_retry_delays(monkeypatch):
    monkeypatch.setattr(cvae.source.http, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def celeba_dir(tmp_path_factory) -> Path:
    """A real CelebA-layout folder: 8 images, attribute and partition files."""
    root = tmp_path_factory.mktemp("celeba")
    generate(root, num_images=8, seed=1, val_fraction=0.25, test_fraction=0.25, workers=1)
    return root


@pytest.fixture(scope="module")
def celeba_zip(celeba_dir, tmp_path_factory) -> Path:
    """The whole layout zipped under one top folder, as most archives are made."""
    return zip_folder(celeba_dir, tmp_path_factory.mktemp("zip") / "celeba-small.zip", prefix="celeba-small/")


@pytest.fixture
def raw(tmp_path) -> Path:
    return tmp_path / "data" / "raw"


def make_params(tmp_path: Path, **data):
    return params_from_dict(tiny_params_dict(data={"download_dir": str(tmp_path / "downloads"), **data}))


def zip_folder(folder: Path, archive: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zip_file:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zip_file.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zip_file.writestr(name, data)
    return archive


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*")
            if path.is_file()}


def digest(algorithm: str, data: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def assert_nothing_half_done(raw: Path, previous: dict[str, bytes] | None = None) -> None:
    """`raw` holds what it held before (or does not exist), and no staging folder is left."""
    if previous is None:
        assert not raw.exists()
    else:
        assert files_of(raw) == previous
    assert [path.name for path in raw.parent.iterdir() if path.name.startswith(f".{raw.name}.")] == []


def kaggle_copy(celeba_dir: Path, root: Path, odd_token: str | None = None) -> Path:
    """The Kaggle variant of `celeba_dir`: CSVs and a nested image folder."""
    frame = read_attribute_frame(celeba_dir / ATTRIBUTE_FILE).frame.astype(str)
    if odd_token is not None:
        frame.iloc[0, 1] = odd_token
    root.mkdir()
    frame.to_csv(root / "list_attr_celeba.csv", index=False)
    with (root / "list_eval_partition.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image_id", "partition"])
        writer.writerows(line.split() for line in (celeba_dir / PARTITION_FILE).read_text().splitlines())
    shutil.copytree(celeba_dir / IMAGE_DIR, root / IMAGE_DIR / IMAGE_DIR)
    return root


# --- local sources -------------------------------------------------------------------


def test_local_directory_is_copied_not_linked(tmp_path, raw, celeba_dir):
    download(make_params(tmp_path, source=str(celeba_dir)), raw)
    assert files_of(raw) == files_of(celeba_dir)
    image = sorted((raw / IMAGE_DIR).iterdir())[0]
    assert image.stat().st_ino != (celeba_dir / IMAGE_DIR / image.name).stat().st_ino
    assert_nothing_half_done(raw, files_of(celeba_dir))


def test_kaggle_directory_is_rewritten_in_celeba_layout(tmp_path, raw, celeba_dir):
    source = kaggle_copy(celeba_dir, tmp_path / "kaggle", odd_token="0")
    grey = source / IMAGE_DIR / IMAGE_DIR / "grey.png"
    Image.new("L", (20, 30), 128).save(grey)  # copied as it is

    download(make_params(tmp_path, source=str(source)), raw)

    assert files_of(raw / IMAGE_DIR) == files_of(celeba_dir / IMAGE_DIR) | {"grey.png": grey.read_bytes()}
    assert (raw / PARTITION_FILE).read_bytes() == (celeba_dir / PARTITION_FILE).read_bytes()
    converted = (raw / ATTRIBUTE_FILE).read_text().splitlines()
    original = (celeba_dir / ATTRIBUTE_FILE).read_text().splitlines()
    # CelebA's own format, line for line, except the odd value, which is carried as it was
    assert converted[:2] + converted[3:] == original[:2] + original[3:]
    assert converted[2].split()[1] == "0"


def test_kaggle_csv_with_an_empty_cell_is_refused(tmp_path, raw, celeba_dir):
    source = kaggle_copy(celeba_dir, tmp_path / "kaggle", odd_token="")
    with pytest.raises(CvaeError, match=r"list_attr_celeba\.csv:2: Bald holds ''"):
        download(make_params(tmp_path, source=str(source)), raw)
    assert_nothing_half_done(raw)


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_local_zip_of_the_whole_layout_under_a_top_folder(tmp_path, raw, celeba_dir, celeba_zip, algorithm):
    checksum = digest(algorithm, celeba_zip.read_bytes())
    download(make_params(tmp_path, source=str(celeba_zip), checksum=checksum), raw)
    assert files_of(raw) == files_of(celeba_dir)
    assert_nothing_half_done(raw, files_of(celeba_dir))


def test_local_zip_of_the_kaggle_variant(tmp_path, raw, celeba_dir):
    archive = zip_folder(kaggle_copy(celeba_dir, tmp_path / "kaggle"), tmp_path / "celeba-dataset.zip")
    download(make_params(tmp_path, source=str(archive)), raw)
    assert files_of(raw) == files_of(celeba_dir)


def test_official_zip_with_the_text_files_beside_it(tmp_path, raw, celeba_dir):
    folder = tmp_path / "official"
    folder.mkdir()
    archive = zip_folder(celeba_dir / IMAGE_DIR, folder / "img_align_celeba.zip", prefix=f"{IMAGE_DIR}/")
    for name in (ATTRIBUTE_FILE, PARTITION_FILE):
        shutil.copy(celeba_dir / name, folder / name)
    download(make_params(tmp_path, source=str(archive)), raw)
    assert files_of(raw) == files_of(celeba_dir)


def test_local_zip_checksum_mismatch_keeps_the_previous_raw_data(tmp_path, raw, celeba_zip):
    raw.mkdir(parents=True)
    (raw / "previous.txt").write_text("kept")
    wrong = "md5:" + "0" * 32
    with pytest.raises(CvaeError, match=rf"checksum mismatch: expected {wrong}, got md5:[0-9a-f]{{32}}"):
        download(make_params(tmp_path, source=str(celeba_zip), checksum=wrong), raw)
    assert_nothing_half_done(raw, {"previous.txt": b"kept"})


@pytest.mark.parametrize("source, message", [
    ("/no/such/folder", r"'/no/such/folder' does not exist"),
    ("ftp://example.org/celeba.zip", r"only http:// and https:// URLs are supported"),
], ids=["missing-path", "ftp"])
def test_unknown_sources_are_named(tmp_path, raw, source, message):
    with pytest.raises(CvaeError, match=message):
        download(make_params(tmp_path, source=source), raw)
    assert_nothing_half_done(raw)


def test_a_checksum_for_a_directory_is_refused_not_ignored(tmp_path, raw, celeba_dir):
    with pytest.raises(CvaeError, match="data.checksum is set"):
        download(make_params(tmp_path, source=str(celeba_dir), checksum="md5:" + "0" * 32), raw)


# --- safe unpacking --------------------------------------------------------------------


def zip_with_entry(celeba_dir: Path, archive: Path, entry: zipfile.ZipInfo, data: bytes) -> Path:
    """A valid layout plus one extra entry: only the guard under test can refuse it."""
    zip_folder(celeba_dir, archive)
    with zipfile.ZipFile(archive, "a") as zip_file:
        zip_file.writestr(entry, data)
    return archive


def symlink_entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name)
    entry.create_system = 3  # Unix
    entry.external_attr = (stat.S_IFLNK | 0o777) << 16
    return entry


@pytest.mark.parametrize("entry, message", [
    (zipfile.ZipInfo("img_align_celeba/../../escaped.txt"), r"points outside the archive \(\.\.\)"),
    (zipfile.ZipInfo("..\\escaped.txt"), r"points outside the archive \(\.\.\)"),
    (zipfile.ZipInfo("/tmp/absolute.txt"), "has an absolute path"),
    (zipfile.ZipInfo("C:/absolute.txt"), "has an absolute path"),
    (symlink_entry("img_align_celeba/link.jpg"), "is a symbolic link"),
], ids=["dotdot", "dotdot-backslash", "absolute", "drive", "symlink"])
def test_unsafe_entries_are_refused_and_named(tmp_path, raw, celeba_dir, entry, message):
    archive = zip_with_entry(celeba_dir, tmp_path / "evil.zip", entry, b"/etc/passwd")
    with pytest.raises(CvaeError, match=f"entry {entry.filename!r}".replace("\\", "\\\\") + ".*" + message):
        download(make_params(tmp_path, source=str(archive)), raw)
    assert_nothing_half_done(raw)
    assert not (tmp_path / "escaped.txt").exists() and not (raw.parent / "escaped.txt").exists()


def test_zip_bomb_is_refused_by_the_declared_size(tmp_path, raw, celeba_dir):
    entry = zipfile.ZipInfo("img_align_celeba/bomb.bin")
    entry.compress_type = zipfile.ZIP_DEFLATED
    archive = zip_with_entry(celeba_dir, tmp_path / "bomb.zip", entry, bytes(2_000_000))
    assert archive.stat().st_size < 200_000  # small on disk, large unpacked
    layout_bytes = sum(len(data) for data in files_of(celeba_dir).values())
    params = make_params(tmp_path, source=str(archive), max_unpacked_bytes=layout_bytes + 1_000_000)
    with pytest.raises(CvaeError, match=r"more than data.max_unpacked_bytes .* 'img_align_celeba/bomb.bin'"):
        download(params, raw)
    assert_nothing_half_done(raw)
    download(make_params(tmp_path, source=str(archive), max_unpacked_bytes=layout_bytes + 2_000_000), raw)


def test_an_entry_that_writes_more_than_it_declares_is_cut_off(tmp_path, celeba_dir, monkeypatch):
    archive = zip_folder(celeba_dir, tmp_path / "celeba.zip")
    # zipfile itself stops at the declared size; play a reader that does not.
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, member: io.BytesIO(bytes(member.file_size + 1)))
    with pytest.raises(CvaeError, match=r"'img_align_celeba/000001\.jpg' unpacks to more than the [\d,]+"):
        extract_zip(archive, tmp_path / "out", max_unpacked_bytes=10**9)


def test_a_corrupt_entry_is_a_clear_error(tmp_path):
    archive = tmp_path / "lying.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zip_file:
        zip_file.writestr("payload.bin", b"A" * 1000)
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")  # declare 10 bytes, hold 1000
    archive.write_bytes(bytes(data))
    with pytest.raises(CvaeError, match=r"cannot unpack entry 'payload.bin': Bad CRC-32"):
        extract_zip(archive, tmp_path / "out", max_unpacked_bytes=10**9)


def test_an_archive_without_the_layout_lists_what_it_holds(tmp_path, raw):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("holiday/README.txt", "hi")
        zip_file.writestr("holiday/pics/a.jpg", b"\xff\xd8")
    with pytest.raises(CvaeError, match=(
        r"photos.zip: no CelebA layout: found no img_align_celeba/ and no list_attr_celeba.txt"
        r" \(or list_attr_celeba.csv\) \(nor beside it, in .*\);"
        r" it holds: holiday/, holiday/README.txt, holiday/pics/$"
    )):
        download(make_params(tmp_path, source=str(archive)), raw)
    assert_nothing_half_done(raw)


def test_a_file_that_is_not_a_zip_is_named(tmp_path, raw):
    (tmp_path / "celeba.tar.gz").write_bytes(b"\x1f\x8b not a zip")
    with pytest.raises(CvaeError, match=r"celeba.tar.gz is not a zip archive"):
        download(make_params(tmp_path, source=str(tmp_path / "celeba.tar.gz")), raw)


# --- http(s) URLs -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_url_zip_with_checksum(tmp_path, raw, celeba_dir, celeba_zip, algorithm, capsys):
    body = celeba_zip.read_bytes()
    with FileServer({"/celeba.zip": Served(body, ZIP)}) as server:
        params = make_params(tmp_path, source=server.url("/celeba.zip"), checksum=digest(algorithm, body))
        download(params, raw)
    log = capsys.readouterr().err.splitlines()  # not a terminal: plain progress lines
    assert f"download celeba.zip: {len(body) / 1024:.1f} KiB of {len(body) / 1024:.1f} KiB" in log
    assert files_of(raw) == files_of(celeba_dir)
    assert (tmp_path / "downloads" / "celeba.zip").read_bytes() == body
    kept = sorted(path.name for path in (tmp_path / "downloads").iterdir())
    assert kept == ["celeba.zip", "celeba.zip.download.json"]


@pytest.mark.parametrize("status, path", [(404, "/missing.zip"), (500, "/broken.zip")])
def test_http_errors_name_the_url_and_status(tmp_path, raw, status, path):
    raw.mkdir(parents=True)
    (raw / "previous.txt").write_text("kept")
    with FileServer({"/broken.zip": Served(b"", status=500)}) as server:
        with pytest.raises(CvaeError, match=rf"{server.url(path)}: HTTP {status} "):
            download(make_params(tmp_path, source=server.url(path)), raw)
    assert_nothing_half_done(raw, {"previous.txt": b"kept"})


def test_a_cut_connection_is_resumed_with_range(tmp_path, raw, celeba_dir, celeba_zip):
    body = celeba_zip.read_bytes()
    cut = len(body) // 3
    with FileServer({"/celeba.zip": Served(body, ZIP)}, cut_after=cut) as server:
        download(make_params(tmp_path, source=server.url("/celeba.zip"), checksum=digest("md5", body)), raw)
    (_, first), (_, second) = server.requests
    assert "Range" not in first
    assert second["Range"] == f"bytes={cut}-" and second["If-Range"].startswith('"')
    assert files_of(raw) == files_of(celeba_dir)


def test_a_server_that_ignores_range_is_read_again_from_byte_zero(tmp_path, raw, celeba_dir, celeba_zip):
    body = celeba_zip.read_bytes()
    files = {"/celeba.zip": Served(body, ZIP)}
    with FileServer(files, cut_after=len(body) // 3, honour_range=False) as server:
        download(make_params(tmp_path, source=server.url("/celeba.zip")), raw)
    assert [("Range" in headers) for _, headers in server.requests] == [False, True]
    # not the partial bytes with the whole body appended
    assert (tmp_path / "downloads" / "celeba.zip").read_bytes() == body
    assert files_of(raw) == files_of(celeba_dir)


def test_a_cut_that_cannot_be_resumed_fails_clearly_then_the_next_run_resumes(tmp_path, raw, celeba_dir,
                                                                               celeba_zip):
    body = celeba_zip.read_bytes()
    cut = len(body) // 3
    files = {"/celeba.zip": Served(body, ZIP)}
    with FileServer(files, cut_after=cut, cuts=None, honour_range=False) as server:
        params = make_params(tmp_path, source=server.url("/celeba.zip"))
        with pytest.raises(CvaeError, match=(
            rf"{server.url('/celeba.zip')}: download failed: the connection closed after {cut:,} of"
            rf" {len(body):,} bytes; 3 retries got no further than {cut:,} bytes; the partial file"
            r" .*celeba.zip.part is kept"
        )):
            download(params, raw)
        assert len(server.requests) == 4
        assert_nothing_half_done(raw)
        assert not (tmp_path / "downloads" / "celeba.zip").exists()

        server.cut_after, server.honour_range = None, True  # the line is good again
        download(params, raw)
    assert server.requests[-1][1]["Range"] == f"bytes={cut}-"
    assert files_of(raw) == files_of(celeba_dir)


def test_a_partial_file_of_a_file_since_changed_is_not_resumed_by_last_modified(tmp_path):
    # A server without ETag: If-Range carries Last-Modified, so the new file comes whole.
    old, new = b"o" * 3000, b"n" * 3000
    files = {"/data.bin": Served(old, last_modified="Mon, 03 Nov 2025 02:00:00 GMT")}
    target = tmp_path / "downloads" / "data.bin"
    with FileServer(files, send_etag=False, cut_after=1000, cuts=None, honour_range=False) as server:
        with pytest.raises(CvaeError, match="download failed"):
            cvae.source.http.fetch(server.url("/data.bin"), target)
        server.cut_after, server.honour_range = None, True  # the line is good again
        server.files["/data.bin"] = Served(new, last_modified="Tue, 04 Nov 2025 02:00:00 GMT")
        cvae.source.http.fetch(server.url("/data.bin"), target)
    assert server.requests[-1][1]["If-Range"] == "Mon, 03 Nov 2025 02:00:00 GMT"
    assert target.read_bytes() == new  # not the old file's first 1000 bytes and the rest of the new one


def test_a_partial_file_from_another_url_is_not_resumed(tmp_path, raw, celeba_zip):
    body = celeba_zip.read_bytes()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "celeba.zip.part").write_bytes(b"bytes of some other file")
    (downloads / "celeba.zip.download.json").write_text('{"url": "http://elsewhere/celeba.zip"}')
    with FileServer({"/celeba.zip": Served(body, ZIP)}) as server:
        download(make_params(tmp_path, source=server.url("/celeba.zip")), raw)
    assert ["Range" in headers for _, headers in server.requests] == [False]
    assert (downloads / "celeba.zip").read_bytes() == body


def test_checksum_mismatch_keeps_the_bad_download_aside(tmp_path, raw, celeba_zip):
    body = celeba_zip.read_bytes()
    wrong = "sha256:" + "ab" * 32
    with FileServer({"/celeba.zip": Served(body, ZIP)}) as server, pytest.raises(CvaeError) as error:
        download(make_params(tmp_path, source=server.url("/celeba.zip"), checksum=wrong), raw)
    bad = tmp_path / "downloads" / "celeba.zip.bad"
    assert str(error.value) == (
        f"{server.url('/celeba.zip')}: checksum mismatch: expected {wrong}, got {digest('sha256', body)};"
        f" the download is kept as {bad}"
    )
    assert bad.read_bytes() == body
    assert sorted(path.name for path in bad.parent.iterdir()) == ["celeba.zip.bad"]
    assert_nothing_half_done(raw)


@pytest.mark.parametrize("with_checksum", [True, False], ids=["checksum", "recorded-size"])
def test_a_verified_download_is_not_fetched_again(tmp_path, raw, celeba_dir, celeba_zip, with_checksum):
    body = celeba_zip.read_bytes()
    with FileServer({"/celeba.zip": Served(body, ZIP)}) as server:
        checksum = digest("md5", body) if with_checksum else None
        params = make_params(tmp_path, source=server.url("/celeba.zip"), checksum=checksum)
        download(params, raw)
        download(params, raw)
        assert len(server.requests) == 1
    shutil.rmtree(raw)
    download(params, raw)  # the server is gone: no network work at all
    assert files_of(raw) == files_of(celeba_dir)


# --- the official CelebA files --------------------------------------------------------


@pytest.fixture
def official_files(celeba_dir, tmp_path) -> dict[str, bytes]:
    archive = zip_folder(celeba_dir / IMAGE_DIR, tmp_path / "img_align_celeba.zip", prefix=f"{IMAGE_DIR}/")
    return {
        "img_align_celeba.zip": archive.read_bytes(),
        ATTRIBUTE_FILE: (celeba_dir / ATTRIBUTE_FILE).read_bytes(),
        PARTITION_FILE: (celeba_dir / PARTITION_FILE).read_bytes(),
    }


def test_celeba_from_a_mirror(tmp_path, raw, celeba_dir, official_files, monkeypatch):
    # the real MD5s cannot match tiny stand-ins: swap in theirs
    monkeypatch.setattr(cvae.source.download, "CELEBA_FILES", tuple(
        dataclasses.replace(file, md5=hashlib.md5(official_files[file.name]).hexdigest())
        for file in cvae.source.download.CELEBA_FILES
    ))
    served = {f"/celeba/{name}": Served(body, "text/plain") for name, body in official_files.items()}
    with FileServer(served) as server:
        download(make_params(tmp_path, source="celeba", celeba_mirror=server.url("/celeba/")), raw)
    assert sorted(path for path, _ in server.requests) == sorted(served)
    assert files_of(raw) == files_of(celeba_dir)


def test_celeba_files_are_checked_against_the_official_md5s(tmp_path, raw, official_files):
    served = {f"/celeba/{name}": Served(body, "text/plain") for name, body in official_files.items()}
    with FileServer(served) as server, pytest.raises(CvaeError, match=(
        r"celeba: cannot get list_attr_celeba.txt: .*checksum mismatch:"
        r" expected md5:75e246fa4810816ffd6ee81facbd244c.*\nCheck data.celeba_mirror"
    )):
        download(make_params(tmp_path, source="celeba", celeba_mirror=server.url("/celeba")), raw)
    assert_nothing_half_done(raw)


def test_celeba_html_page_from_google_drive_says_how_to_go_on(tmp_path, raw, monkeypatch):
    page = Served(b"<html><body>Google Drive can't scan this file for viruses.</body></html>",
                  "text/html; charset=utf-8")
    files = {f"/uc?id={file.drive_id}": page for file in cvae.source.download.CELEBA_FILES}
    with FileServer(files) as server:
        monkeypatch.setattr(cvae.source.download, "GOOGLE_DRIVE_URL", server.url("/uc?id={file_id}"))
        with pytest.raises(CvaeError) as error:
            download(make_params(tmp_path, source="celeba"), raw)
    message = str(error.value)
    assert "celeba: cannot get list_attr_celeba.txt" in message
    assert "sent an HTML page instead of list_attr_celeba.txt" in message
    assert "data.source: /path/to/folder-or-zip" in message and "data.celeba_mirror: https://" in message
    assert_nothing_half_done(raw)
    assert not any((tmp_path / "downloads").iterdir())  # a page is never kept as the file


# --- the command line -----------------------------------------------------------------


def test_cli_reports_a_download_error_without_a_traceback(tmp_path, raw):
    params_file = tmp_path / "params.yaml"
    params = tiny_params_dict(data={"download_dir": str(tmp_path / "downloads")})
    params_file.write_text(yaml.safe_dump(params))
    with FileServer({}) as server:
        result = subprocess.run(
            [str(BIN / "cvae"), "download", "--params", str(params_file),
             "--set", f"data.source={server.url('/celeba.zip')}", "--out", str(raw)],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 1
    assert result.stderr == f"cvae download: error: {server.url('/celeba.zip')}: HTTP 404 Not Found\n"
    assert_nothing_half_done(raw)
