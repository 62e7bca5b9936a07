"""A plain static file server on 127.0.0.1 with Range support and redirects (a real HTTP server).

`FileServer(dir)` serves `GET/HEAD /<name>` (206 for `Range: bytes=a-b`; https with `tls=` a
server-side `ssl.SSLContext`), `/redirect?to=<url>` answers 302 to any URL (for the redirect
re-check tests), `redirect_after(name, n, url)` makes a file answer its first n requests and
redirect every later one (a server that shows a checker one thing and the download another), and it
records every request (method, path, Range) so tests can assert that a job did no network at all.
Fixture: `file_server`.
"""

from __future__ import annotations

import re
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

__all__ = ["FileServer", "file_server"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


class FileServer:
    def __init__(self, root: Path, *, tls: ssl.SSLContext | None = None) -> None:
        self.root = Path(root)
        self.tls = tls
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[Request] = []
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._redirects: dict[str, tuple[int, str]] = {}  # path -> (requests served first, then redirect to)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                parts = urlsplit(self.path)
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append(Request(self.command, parts.path, rng))
                    seen = sum(1 for r in server.requests if r.path == parts.path)
                    later = server._redirects.get(parts.path)
                to = later[1] if later and seen > later[0] else None
                if parts.path == "/redirect" or to:
                    self.send_response(302)
                    self.send_header("Location", to or parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                f = server.root / unquote(parts.path.lstrip("/"))
                if not f.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = f.read_bytes()
                m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
                if m:
                    a = int(m.group(1))
                    b = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                    chunk = data[a:b + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
                else:
                    chunk = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    try:
                        self.wfile.write(chunk)
                        with server._lock:
                            server.bytes_sent += len(chunk)
                    except OSError:
                        pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # https: the handshake runs on accept, with the context's certificate
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._httpd.server_address[1]}"

    def add(self, name: str, data: bytes | Path) -> str:
        target = self.root / name
        target.write_bytes(data if isinstance(data, bytes) else Path(data).read_bytes())
        return f"{self.url}/{name}"

    def redirect_after(self, name: str, n: int, to: str) -> None:
        with self._lock:
            self._redirects[f"/{name}"] = (n, to)

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent = 0

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def file_server(tmp_path) -> Iterator[FileServer]:
    srv = FileServer(tmp_path / "served")
    yield srv
    srv.close()
