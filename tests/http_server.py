"""A real HTTP server on 127.0.0.1 for download tests, with switchable misbehaviour."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    body: bytes
    content_type: str = "application/octet-stream"
    status: int = 200  # anything else is sent as an error with a short body
    last_modified: str | None = None  # sent as Last-Modified (and matched by If-Range) when set


@dataclass
class FileServer:
    """Serves `files` by path; `requests` records (path, headers) of every GET.

    `cut_after`: responses are cut (the socket shut) after this many body bytes, for the
    first `cuts` responses (None: every response). `honour_range`: False plays a server
    that ignores Range and always sends the whole file with 200.
    """

    files: dict[str, Served]
    cut_after: int | None = None
    cuts: int | None = 1
    honour_range: bool = True
    send_etag: bool = True  # False sends no ETag (with no `Served.last_modified`: no validators at all)
    answer_head: bool = True  # False answers HEAD with 405 Method Not Allowed
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)  # paths of every HEAD request

    def __post_init__(self) -> None:
        self._cuts_done = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cut_after is None or (self.cuts is not None and self._cuts_done >= self.cuts):
                return False
            self._cuts_done += 1
            return True


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            server.heads.append(self.path)
            served = server.files.get(self.path)
            if not server.answer_head:
                self.send_error(405)
            elif served is None or served.status != 200:
                self.send_error(404 if served is None else served.status)
            else:
                self.send_response(200)
                self.send_header("Content-Type", served.content_type)
                self.send_header("Content-Length", str(len(served.body)))
                self._send_validators(served, _etag(served.body))
                self.end_headers()

        def do_GET(self) -> None:
            server.requests.append((self.path, dict(self.headers)))
            served = server.files.get(self.path)
            if served is None or served.status != 200:
                self.send_error(404 if served is None else served.status)
                return
            body, etag = served.body, _etag(served.body)
            start = self._range_start(served, etag)
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Type", served.content_type)
            self.send_header("Content-Length", str(len(body) - start))
            self._send_validators(served, etag)
            self.end_headers()
            if server._take_cut():
                self.wfile.write(body[start:start + server.cut_after])
                self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a short body
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def _send_validators(self, served: Served, etag: str) -> None:
            if server.send_etag:
                self.send_header("ETag", etag)
            if served.last_modified:
                self.send_header("Last-Modified", served.last_modified)

        def _range_start(self, served: Served, etag: str) -> int:
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if not server.honour_range or match is None:
                return 0
            if_range = self.headers.get("If-Range")
            if if_range is not None and if_range not in (etag, served.last_modified):
                return 0
            return int(match.group(1))

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    return Handler


def _etag(body: bytes) -> str:
    return '"' + hashlib.md5(body).hexdigest() + '"'
