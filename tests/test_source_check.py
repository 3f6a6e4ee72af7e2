"""`cvae check-source`: the fingerprint that decides whether the nightly run downloads (and
retrains) at all. Folders and zips on disk, URLs against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cvae.core.config import params_from_dict
from cvae.core.errors import CvaeError
from cvae.source.check import check_source
from cvae.source.download import CELEBA_FILES, download
from tests.conftest import tiny_params_dict
from tests.http_server import FileServer, Served
from tests.test_download import ZIP, celeba_dir, celeba_zip, files_of, raw, zip_folder  # noqa: F401 (fixtures)


def params_for(tmp_path: Path, source: str, **data):
    data = {"source": source, "download_dir": str(tmp_path / "dl"), **data}
    return params_from_dict(tiny_params_dict(data=data))


def check(tmp_path: Path, source: str, out: str = "source.json", **data):
    return check_source(params_for(tmp_path, source, **data), tmp_path / out)


@pytest.fixture
def delivery(tmp_path, celeba_dir) -> Path:
    return Path(shutil.copytree(celeba_dir, tmp_path / "delivery"))


def test_an_unchanged_folder_gives_the_same_bytes_and_leaves_the_file_alone(tmp_path, delivery):
    first = check(tmp_path, str(delivery))
    written = (tmp_path / "source.json").read_bytes()
    mtime = (tmp_path / "source.json").stat().st_mtime_ns
    second = check(tmp_path, str(delivery))
    assert (first.changed, second.changed) == (True, False)
    assert (tmp_path / "source.json").read_bytes() == written
    assert (tmp_path / "source.json").stat().st_mtime_ns == mtime  # not even rewritten
    # deterministic: another output path, the same bytes
    check(tmp_path, str(delivery), out="again.json")
    assert (tmp_path / "again.json").read_bytes() == written
    assert json.loads(written) == second.record
    assert second.record["files"] == len(files_of(delivery))
    assert second.record["bytes"] == sum(len(data) for data in files_of(delivery).values())
    assert second.describe().startswith(f"local directory {delivery}: {second.record['files']} files")
    assert second.describe().endswith("; unchanged since the last check")
    assert first.describe().endswith("; changed since the last check")


def flip_one_byte(data: bytes) -> bytes:
    """The same size, one byte other."""
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0xFF
    return bytes(changed)


def _edit_one_byte(folder: Path) -> None:
    image = sorted((folder / "img_align_celeba").iterdir())[0]
    image.write_bytes(flip_one_byte(image.read_bytes()))  # same name, same size, other content


def _add_a_file(folder: Path) -> None:
    (folder / "img_align_celeba" / "999999.jpg").write_bytes(b"new")


def _rename_a_file(folder: Path) -> None:
    image = sorted((folder / "img_align_celeba").iterdir())[0]
    image.rename(image.with_name(f"{image.stem}x{image.suffix}"))  # its place in the order kept


def _remove_a_file(folder: Path) -> None:
    sorted((folder / "img_align_celeba").iterdir())[-1].unlink()


@pytest.mark.parametrize("change", [_edit_one_byte, _add_a_file, _rename_a_file, _remove_a_file])
def test_a_changed_folder_is_noticed(tmp_path, delivery, change):
    before = check(tmp_path, str(delivery)).record
    change(delivery)
    after = check(tmp_path, str(delivery))
    assert after.changed and after.record["sha256"] != before["sha256"]


def test_a_changed_zip_is_noticed(tmp_path, celeba_dir):
    archive = zip_folder(celeba_dir, tmp_path / "celeba.zip")
    first = check(tmp_path, str(archive))
    assert first.changed and first.record["bytes"] == archive.stat().st_size
    assert not check(tmp_path, str(archive)).changed
    archive.write_bytes(flip_one_byte(archive.read_bytes()))
    assert check(tmp_path, str(archive)).changed


def test_a_local_file_that_is_not_a_zip_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("not an archive")
    with pytest.raises(CvaeError, match=r"notes\.txt is not a zip archive"):
        check(tmp_path, str(tmp_path / "notes.txt"))


def test_a_url_is_checked_by_its_etag_without_downloading_it(tmp_path, celeba_zip):
    with FileServer({"/celeba.zip": Served(celeba_zip.read_bytes(), ZIP)}) as server:
        url = server.url("/celeba.zip")
        first = check(tmp_path, url)
        assert not check(tmp_path, url).changed
        assert first.record["etag"] and first.record["content-length"] == str(celeba_zip.stat().st_size)
        assert server.requests == [] and len(server.heads) == 2  # HEAD only: no body was read
        server.files["/celeba.zip"] = Served(flip_one_byte(celeba_zip.read_bytes()), ZIP)  # same size
        assert check(tmp_path, url).changed


MONDAY = "Mon, 03 Nov 2025 02:00:00 GMT"
TUESDAY = "Tue, 04 Nov 2025 02:00:00 GMT"


def test_a_url_is_checked_by_its_last_modified(tmp_path, celeba_zip):
    body = celeba_zip.read_bytes()
    with FileServer({"/celeba.zip": Served(body, ZIP, last_modified=MONDAY)}, send_etag=False) as server:
        url = server.url("/celeba.zip")
        assert check(tmp_path, url).record == {"kind": "url", "source": url, "last-modified": MONDAY,
                                               "content-length": str(len(body))}
        assert not check(tmp_path, url).changed
        server.files["/celeba.zip"] = Served(body, ZIP, last_modified=TUESDAY)  # touched on the server
        assert check(tmp_path, url).changed
        assert server.requests == []


def test_a_server_without_validators_is_read_and_hashed(tmp_path, celeba_zip):
    with FileServer({"/celeba.zip": Served(celeba_zip.read_bytes(), ZIP)}, send_etag=False) as server:
        url = server.url("/celeba.zip")
        first = check(tmp_path, url)
        assert set(first.record) == {"kind", "source", "sha256"}
        assert "read whole" in first.describe()
        assert not check(tmp_path, url).changed
        assert len(server.requests) == 2  # one GET of the body per check
        server.files["/celeba.zip"] = Served(flip_one_byte(celeba_zip.read_bytes()), ZIP)  # same size
        assert check(tmp_path, url).changed


def test_a_cut_body_is_an_error_not_a_change(tmp_path, celeba_zip):
    body = celeba_zip.read_bytes()
    with FileServer({"/celeba.zip": Served(body, ZIP)}, send_etag=False, cut_after=len(body) // 2) as server:
        url = server.url("/celeba.zip")
        with pytest.raises(CvaeError, match=rf"^{url}: the transfer failed"):
            check(tmp_path, url)
    assert not (tmp_path / "source.json").exists()


def test_a_server_refusing_head_is_asked_with_get(tmp_path, celeba_zip):
    with FileServer({"/celeba.zip": Served(celeba_zip.read_bytes(), ZIP)}, answer_head=False) as server:
        url = server.url("/celeba.zip")
        record = check(tmp_path, url).record
        assert record["etag"] and len(server.requests) == 1 and server.heads == ["/celeba.zip"]
        server.files["/celeba.zip"] = Served(flip_one_byte(celeba_zip.read_bytes()), ZIP)
        assert check(tmp_path, url).changed


def test_a_server_refusing_head_without_validators_is_hashed_from_one_get(tmp_path, celeba_zip):
    files = {"/celeba.zip": Served(celeba_zip.read_bytes(), ZIP)}
    with FileServer(files, answer_head=False, send_etag=False) as server:
        record = check(tmp_path, server.url("/celeba.zip")).record
        assert "sha256" in record and len(server.requests) == 1


def test_a_url_with_a_checksum_needs_no_network(tmp_path, celeba_zip):
    with FileServer({"/celeba.zip": Served(celeba_zip.read_bytes(), ZIP)}) as server:
        record = check(tmp_path, server.url("/celeba.zip"), checksum="md5:" + "0" * 32).record
        assert record["checksum"] == "md5:" + "0" * 32
        assert server.requests == [] and server.heads == []


def test_synthetic_and_celeba_are_fingerprinted_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("no request expected")

    monkeypatch.setattr("cvae.source.check.urlopen", no_network)
    assert check(tmp_path, "synthetic").record == {"kind": "synthetic"}
    assert not check(tmp_path, "synthetic").changed
    record = check(tmp_path, "celeba", out="celeba.json").record
    assert record["md5"] == {file.name: file.md5 for file in CELEBA_FILES}
    # a mirror serves the same (MD5-checked) files: the same fingerprint
    assert not check(tmp_path, "celeba", out="celeba.json", celeba_mirror="http://127.0.0.1:9/").changed


def test_an_http_error_names_the_url_and_writes_nothing(tmp_path):
    with FileServer({}) as server:
        url = server.url("/missing.zip")
        with pytest.raises(CvaeError, match=rf"^{url}: HTTP 404"):
            check(tmp_path, url)
    assert not (tmp_path / "source.json").exists()


def test_an_unreachable_host_names_the_url_and_writes_nothing(tmp_path):
    with FileServer({}) as server:
        url = server.url("/celeba.zip")
    # the server is stopped: nothing listens on its port any more
    with pytest.raises(CvaeError, match=rf"^{url}: cannot reach the server"):
        check(tmp_path, url)
    assert not (tmp_path / "source.json").exists()


def test_a_missing_local_source_is_named(tmp_path):
    with pytest.raises(CvaeError, match=r"data.source: '.*/nowhere' does not exist"):
        check(tmp_path, str(tmp_path / "nowhere"))


def test_a_url_that_is_not_http_is_named(tmp_path):
    with pytest.raises(CvaeError, match=r"data.source: ftp://host/celeba.zip: only http:// and https://"):
        check(tmp_path, "ftp://host/celeba.zip")


def one_more_image(celeba_dir: Path, tmp_path: Path) -> Path:
    """The delivery of `celeba_zip` with one image more, as the server's next version."""
    image = (celeba_dir / "img_align_celeba" / "000001.jpg").read_bytes()
    return zip_folder(celeba_dir, tmp_path / "changed.zip", prefix="celeba-small/",
                      extra={"celeba-small/img_align_celeba/extra.jpg": image})


def test_download_fetches_a_url_again_only_when_the_check_saw_it_change(tmp_path, raw, celeba_dir,
                                                                         celeba_zip):
    original = celeba_zip.read_bytes()
    changed = one_more_image(celeba_dir, tmp_path)
    with FileServer({"/celeba.zip": Served(original, ZIP)}) as server:
        params = params_for(tmp_path, server.url("/celeba.zip"))
        record = tmp_path / "source.json"
        check_source(params, record)
        download(params, raw, record)
        check_source(params, record)
        download(params, raw, record)
        assert len(server.requests) == 1  # unchanged: the kept copy serves
        server.files["/celeba.zip"] = Served(changed.read_bytes(), ZIP)
        download(params, raw, record)
        assert len(server.requests) == 1  # without a new check, nothing says it changed
        check_source(params, record)
        download(params, raw, record)
        assert len(server.requests) == 2  # the new ETag: fetched again
    assert "img_align_celeba/extra.jpg" in files_of(raw)


def test_download_fetches_a_url_again_when_its_last_modified_changed(tmp_path, raw, celeba_dir, celeba_zip):
    original = celeba_zip.read_bytes()
    with FileServer({"/celeba.zip": Served(original, ZIP, last_modified=MONDAY)}, send_etag=False) as server:
        params = params_for(tmp_path, server.url("/celeba.zip"))
        record = tmp_path / "source.json"
        check_source(params, record)
        download(params, raw, record)
        check_source(params, record)
        download(params, raw, record)
        assert len(server.requests) == 1
        server.files["/celeba.zip"] = Served(original, ZIP, last_modified=TUESDAY)
        check_source(params, record)
        download(params, raw, record)
        assert len(server.requests) == 2


def test_download_from_a_server_without_validators_compares_the_content(tmp_path, raw, celeba_dir,
                                                                         celeba_zip):
    changed = one_more_image(celeba_dir, tmp_path)
    with FileServer({"/celeba.zip": Served(celeba_zip.read_bytes(), ZIP)}, send_etag=False) as server:
        params = params_for(tmp_path, server.url("/celeba.zip"))
        record = tmp_path / "source.json"
        check_source(params, record)
        download(params, raw, record)
        assert len(server.requests) == 2  # the check read it, the download fetched it
        download(params, raw, record)
        assert len(server.requests) == 2  # the kept copy still has the checked content
        server.files["/celeba.zip"] = Served(changed.read_bytes(), ZIP)
        check_source(params, record)
        download(params, raw, record)
        assert len(server.requests) == 4
    assert "img_align_celeba/extra.jpg" in files_of(raw)
