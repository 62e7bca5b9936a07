"""A local Hugging Face-style file server for tests (a real HTTP/1.1 server on 127.0.0.1).

It reproduces the hub behaviour a downloader relies on (as huggingface.co and its CDN behave):

- ``HEAD``/``GET /{org}/{repo}/resolve/{rev}/{path}`` -> 302 with ``Location`` to a signed CDN URL
  ``http://127.0.0.1:<cdn port>/cdn/<token>/<sha256>/<file name>`` (the CDN listens on a second
  port: another origin, like the real CDN host, so Authorization must not follow it;
  ``cdn_same_origin=True`` gives a relative ``Location`` on the hub's port instead) plus ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256),
  ``X-Linked-Size`` and ``ETag``. With ``token=`` set, a request without ``Authorization: Bearer
  <token>`` gets 401; unknown repo / revision / path get 404 with ``X-Error-Code`` like the hub.
- ``/cdn/...`` serves ``HEAD`` and (ranged) ``GET``: 206 + ``Content-Range`` for ``Range:
  bytes=a-b``, 200 with the whole body without ``Range``. Every request is recorded.
- Switchable faults (``hf.faults``, thread-safe, mutate at any time): connection reset after N body
  bytes, 429/503 with Retry-After, stall mid-body, Range ignored, corrupted bytes, CDN URL expiry,
  per-connection rate limit. Faults apply to CDN ``GET`` requests unless said otherwise.

Usage::

    with HFServer(tmp_path) as hf:
        sha = hf.add_file("org/repo", "main", "dir/model.bin", b"...")
        url = hf.resolve_url("org/repo", "main", "dir/model.bin")   # hf.endpoint + /org/repo/resolve/...
        hf.faults.reset_after_bytes = 100_000; hf.faults.reset_times = 2
        ...
        assert not any("authorization" in r.headers for r in hf.cdn_requests())

Plain files (an ``https://`` source that is not the hub): ``hf.add_plain(name, data)`` serves
``/files/<name>`` on the hub port, mutable, with a per-version ``ETag`` and ``Last-Modified``,
``Range`` and ``If-Range`` (``hf.plain_if_range = False`` ignores If-Range, like a server that does
not implement it), optional Basic auth (``hf.plain_auth = ("user", "pass")``) and a scheduled
replacement mid-download (``hf.swap_plain(name, data, after_gets=N)``: a same-name file that changes
upstream). ``hf.faults.aggregate_bps`` caps all CDN/plain bodies together (a link, not a connection).

Pytest fixtures: ``hf_server`` (an anonymous server on a temp dir) and ``hf_server_factory``
(call it with ``token=...`` etc.; servers are closed at teardown).

Hand-written on ``http.server`` (not aiohttp) because the faults need direct control of the socket:
an RST mid-body, a body that stops for a while, and per-connection pacing.
"""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import os
import re
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote, urlsplit

import pytest

__all__ = ["HFServer", "Faults", "RecordedRequest", "hf_server", "hf_server_factory"]

_SEND_BLOCK = 64 * 1024


@dataclass
class Faults:
    """Faults injected into CDN GET responses. Counters ("first K times") are consumed atomically.

    - ``reset_after_bytes``: send N bytes of a body then reset the TCP connection (RST), for the
      first ``reset_times`` GET responses (``None`` = every time).
    - ``status`` (429 or 503): answer that status with ``Retry-After: retry_after`` for the first
      ``status_times`` GET requests. ``retry_after`` may be seconds ("2") or an HTTP date.
      ``status_on_resolve=True`` applies it to resolve requests instead of CDN requests.
    - ``stall_after_bytes`` / ``stall_s``: send N bytes, then send nothing for ``stall_s`` seconds
      (connection kept open), for the first ``stall_times`` responses; then the body continues.
    - ``ignore_range``: answer 200 with the whole body even when Range was asked;
      ``ignore_range_after=N``: the same, but only after the first N CDN GET requests.
    - ``corrupt_offsets``: flip these absolute file offsets in every served body (persistent).
    - ``url_valid_requests`` / ``url_valid_s``: a CDN token is valid for its first N GET
      requests / for T seconds after the resolve that issued it; later requests with it get 403.
      Resolving again issues a fresh token.
    - ``rate_limit_bps``: pace every CDN body at this many bytes per second per connection.
    - ``trickle_bps``: pace the first ``trickle_times`` bodies at this (slow) rate: a connection
      that is alive but too slow (what the minimum-throughput rule catches).
    """

    reset_after_bytes: int | None = None
    reset_times: int | None = 1
    status: int | None = None
    status_times: int | None = 1
    retry_after: str | None = "1"
    status_on_resolve: bool = False
    stall_after_bytes: int | None = None
    stall_s: float = 5.0
    stall_times: int | None = 1
    ignore_range: bool = False
    ignore_range_after: int | None = None
    corrupt_offsets: tuple[int, ...] = ()
    url_valid_requests: int | None = None
    url_valid_s: float | None = None
    rate_limit_bps: int | None = None
    trickle_bps: int | None = None
    trickle_times: int | None = 1
    aggregate_bps: int | None = None  # all bodies together (a shared link), on top of rate_limit_bps
    slow_headers_bps: int | None = None  # drip the response headers of CDN/plain GETs at this rate
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take(self, name: str) -> bool:
        """Consume one use of the counted fault `name` ("reset", "status", "stall", "trickle")."""
        with self._lock:
            times = getattr(self, f"{name}_times")
            if times is None:
                return True
            if times <= 0:
                return False
            setattr(self, f"{name}_times", times - 1)
            return True

    def clear(self) -> None:
        with self._lock:
            self.reset_after_bytes = None
            self.status = None
            self.stall_after_bytes = None
            self.ignore_range = False
            self.ignore_range_after = None
            self.corrupt_offsets = ()
            self.url_valid_requests = None
            self.url_valid_s = None
            self.rate_limit_bps = None
            self.trickle_bps = None
            self.aggregate_bps = None
            self.slow_headers_bps = None


@dataclass
class RecordedRequest:
    method: str
    path: str  # request target without query
    range: str | None  # the Range header as sent
    headers: dict[str, str]  # lower-cased names
    status: int = 0
    bytes_sent: int = 0  # body bytes actually written
    kind: str = ""  # "resolve", "cdn" or "other"
    time: float = 0.0  # time.monotonic() at arrival


@dataclass
class _Blob:
    sha256: str
    size: int
    path: Path


@dataclass
class _Token:
    issued: float
    uses: int = 0


class HFServer:
    """See module docstring. Thread-safe; a context manager; binds 127.0.0.1 on a free port."""

    def __init__(self, root_dir: str | os.PathLike, token: str | None = None,
                 *, gated_repos: tuple[str, ...] | None = None, cdn_same_origin: bool = False,
                 tls: bool = False) -> None:
        self.root = Path(root_dir)
        self.blob_dir = self.root / "hf-blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        # None: the token (when set) is required for every repo; else only for these repos.
        self.gated_repos = gated_repos
        self.cdn_same_origin = cdn_same_origin
        self.tls = tls  # serve HTTPS with a certificate for 127.0.0.1 from a test CA (ca_file)
        self.ca_file: Path | None = None
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str, str], _Blob] = {}  # (repo, rev, path) -> blob
        self._commits: dict[tuple[str, str], str] = {}  # (repo, rev) -> commit sha1
        self._tokens: dict[str, _Token] = {}
        self._token_ids = itertools.count(1)
        self._stop = threading.Event()
        self.active_cdn_gets = 0  # CDN GET bodies being sent right now
        self.max_active_cdn_gets = 0  # the peak of active_cdn_gets (checks connection caps)
        self._httpd: ThreadingHTTPServer | None = None
        self._plain: dict[str, tuple[_Blob, int]] = {}  # name -> (blob, version)
        self._plain_swaps: dict[str, tuple[bytes, int]] = {}  # name -> (new data, after N GETs)
        self.plain_if_range = True
        self.plain_auth: tuple[str, str] | None = None
        self._link_lock = threading.Lock()
        self._link_next = 0.0  # aggregate pacing: when the shared link is free again
        self._cdn_httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ---- content --------------------------------------------------------------------------------
    def add_file(self, repo: str, rev: str, path: str, data: bytes | str | os.PathLike) -> str:
        """Publish `data` (bytes, or a file path, copied by reference) at repo@rev/path; returns its sha256.

        Replacing a file later changes its etag: existing CDN URLs keep serving the old blob
        (content-addressed, like the real CDN), a new resolve points at the new one.
        """
        if isinstance(data, (bytes, bytearray, memoryview)):
            sha = hashlib.sha256(data).hexdigest()
            blob_path = self.blob_dir / sha
            if not blob_path.exists():
                tmp = blob_path.with_suffix(".tmp")
                tmp.write_bytes(bytes(data))
                os.replace(tmp, blob_path)
        else:
            blob_path = Path(data)
            h = hashlib.sha256()
            with open(blob_path, "rb") as f:
                while chunk := f.read(4 * 2**20):
                    h.update(chunk)
            sha = h.hexdigest()
        blob = _Blob(sha, blob_path.stat().st_size, blob_path)
        with self._lock:
            self._files[(repo, rev, path)] = blob
            key = (repo, rev)
            self._commits[key] = hashlib.sha1(
                f"{repo}@{rev}#{len(self._files)}".encode()).hexdigest()
        return sha

    def add_plain(self, name: str, data: bytes) -> str:
        """Serve `data` at /files/<name> (replacing what was there: a new version); returns the URL."""
        sha = hashlib.sha256(data).hexdigest()
        blob_path = self.blob_dir / sha
        if not blob_path.exists():
            blob_path.write_bytes(bytes(data))
        with self._lock:
            version = self._plain.get(name, (None, 0))[1] + 1
            self._plain[name] = (_Blob(sha, len(data), blob_path), version)
        return self.plain_url(name)

    def plain_url(self, name: str, userinfo: str = "") -> str:
        scheme, rest = self.endpoint.split("://", 1)
        return f"{scheme}://{userinfo + '@' if userinfo else ''}{rest}/files/{quote(name)}"

    def swap_plain(self, name: str, data: bytes, *, after_gets: int) -> None:
        """Replace /files/<name> by `data` once `after_gets` GETs of it have been answered."""
        with self._lock:
            self._plain_swaps[name] = (bytes(data), after_gets)

    def plain_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == "plain"]

    def _plain_get(self, name: str, count: bool) -> tuple[_Blob, int] | None:
        swap = None
        with self._lock:
            if count and name in self._plain_swaps:
                data, after = self._plain_swaps[name]
                served = sum(1 for r in self.requests if r.kind == "plain" and r.method == "GET"
                             and r.path == f"/files/{quote(name)}")
                if served > after:
                    swap = self._plain_swaps.pop(name)[0]
        if swap is not None:
            self.add_plain(name, swap)
        with self._lock:
            return self._plain.get(name)

    def _pace_link(self, n: int) -> float:
        """Aggregate pacing: reserve n bytes of the shared link; returns how long to wait first."""
        rate = self.faults.aggregate_bps
        if not rate:
            return 0.0
        with self._link_lock:
            now = time.monotonic()
            start = max(now, self._link_next)
            self._link_next = start + n / rate
            return start - now

    def commit_of(self, repo: str, rev: str = "main") -> str:
        with self._lock:
            return self._commits[(repo, rev)]

    def resolve_url(self, repo: str, rev: str, path: str) -> str:
        return f"{self.endpoint}/{repo}/resolve/{quote(rev, safe='')}/{quote(path)}"

    # ---- observation ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"{self._scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    def client_ssl_context(self):
        """An SSL context that trusts this server's test CA (tls=True)."""
        import ssl

        assert self.ca_file is not None, "server started without tls=True"
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def cdn_endpoint(self) -> str:
        """Origin of the CDN URLs (a second port; the hub's own origin when cdn_same_origin)."""
        if self.cdn_same_origin:
            return self.endpoint
        assert self._cdn_httpd is not None, "server not started"
        return f"{self._scheme}://127.0.0.1:{self._cdn_httpd.server_address[1]}"

    def cdn_url(self, sha256: str, name: str = "file") -> str:
        """A fresh signed CDN URL for a blob (as a resolve would hand out)."""
        return f"{self.cdn_endpoint}/cdn/{self._new_token()}/{sha256}/{quote(name)}"

    def cdn_requests(self, method: str | None = "GET") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == "cdn" and (method is None or r.method == method)]

    def resolve_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == "resolve"]

    @property
    def bytes_served(self) -> int:
        """Body bytes written by CDN responses (what a downloader actually fetched)."""
        with self._lock:
            return sum(r.bytes_sent for r in self.requests if r.kind in ("cdn", "plain"))

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_active_cdn_gets = self.active_cdn_gets

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "HFServer":
        handler = type("_BoundHandler", (_Handler,), {"hf": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        servers = [self._httpd]
        if not self.cdn_same_origin:
            self._cdn_httpd = _Server(("127.0.0.1", 0), handler)
            servers.append(self._cdn_httpd)
        if self.tls:
            ctx = self._server_ssl_context()
            for srv in servers:
                srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        for i, srv in enumerate(servers):
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"hf-server-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()  # wakes stalled responses
        for srv in (self._httpd, self._cdn_httpd):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        self._httpd = self._cdn_httpd = None

    def __enter__(self) -> "HFServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _server_ssl_context(self):
        """A certificate for 127.0.0.1 from a test CA of its own (trustme); `ca_file` is that CA."""
        import ssl

        import trustme

        ca = trustme.CA()
        self.ca_file = self.root / "hf-server-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        return ctx

    # ---- internals used by the handler ------------------------------------------------------------
    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _lookup(self, repo: str, rev: str, path: str) -> tuple[_Blob | None, str | None, str]:
        """-> (blob, commit, error code)."""
        with self._lock:
            repos = {k[0] for k in self._files}
            if repo not in repos:
                return None, None, "RepoNotFound"
            commit = self._commits.get((repo, rev))
            if commit is None:  # a commit hash works as a revision too
                for (r, rv), c in self._commits.items():
                    if r == repo and c == rev:
                        commit, rev = c, rv
                        break
            if commit is None:
                return None, None, "RevisionNotFound"
            blob = self._files.get((repo, rev, path))
            if blob is None:
                return None, commit, "EntryNotFound"
            return blob, commit, ""

    def _new_token(self) -> str:
        tid = f"t{next(self._token_ids)}-{os.urandom(4).hex()}"
        with self._lock:
            self._tokens[tid] = _Token(issued=time.monotonic())
        return tid

    def _use_token(self, tid: str, count: bool) -> bool:
        f = self.faults
        with self._lock:
            tok = self._tokens.get(tid)
            if tok is None:
                return False
            if count:
                tok.uses += 1
            if f.url_valid_requests is not None and tok.uses > f.url_valid_requests:
                return False
            if f.url_valid_s is not None and time.monotonic() - tok.issued > f.url_valid_s:
                return False
            return True

    def _blob_by_sha(self, sha: str) -> _Blob | None:
        with self._lock:
            for b in self._files.values():
                if b.sha256 == sha:
                    return b
        p = self.blob_dir / sha
        if re.fullmatch(r"[0-9a-f]{64}", sha) and p.exists():
            return _Blob(sha, p.stat().st_size, p)
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:  # resets and client aborts are expected
        pass


class _ResetConnection(Exception):
    pass


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hf: HFServer  # bound in HFServer.start
    server_version = "hf-test-server/1.0"

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    # ---- plumbing --------------------------------------------------------------------------------
    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except _ResetConnection:
            self.close_connection = True
        except (ConnectionError, BrokenPipeError, socket.timeout, OSError):
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0 then close)."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        finally:
            raise _ResetConnection()

    def _begin(self, kind: str) -> RecordedRequest:
        req = RecordedRequest(
            method=self.command, path=urlsplit(self.path).path, range=self.headers.get("Range"),
            headers={k.lower(): v for k, v in self.headers.items()}, kind=kind, time=time.monotonic())
        self.hf._record(req)
        return req

    def _simple(self, req: RecordedRequest, status: int, headers: dict[str, str] | None = None,
                body: bytes = b"") -> None:
        req.status = status
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
            req.bytes_sent = len(body)

    def flush_headers(self) -> None:
        rate = self.hf.faults.slow_headers_bps
        if not (rate and self.command == "GET" and getattr(self, "_drip_headers", False)):
            super().flush_headers()
            return
        data = b"".join(getattr(self, "_headers_buffer", []))
        self._headers_buffer = []
        step = max(1, rate // 10)
        for i in range(0, len(data), step):  # a slow-loris server: every read gets a few bytes
            self.wfile.write(data[i:i + step])
            self.wfile.flush()
            if self.hf._stop.wait(step / rate):
                self._reset()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/cdn/"):
            self._cdn(path)
        elif path.startswith("/files/"):
            self._plain_file(path[len("/files/"):])
        elif "/resolve/" in path:
            self._resolve(path)
        else:
            req = self._begin("other")
            self._simple(req, 404, {"X-Error-Code": "EntryNotFound"}, b"not found")

    # ---- hub resolve -----------------------------------------------------------------------------
    def _resolve(self, path: str) -> None:
        req = self._begin("resolve")
        hf, f = self.hf, self.hf.faults
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m:
            self._simple(req, 404, {"X-Error-Code": "EntryNotFound"}, b"bad resolve path")
            return
        repo, rev, fpath = m.group(1), m.group(2), m.group(3)
        if f.status_on_resolve and f.status and f.take("status"):
            headers = {"Retry-After": f.retry_after} if f.retry_after else {}
            self._simple(req, f.status, headers, b"slow down")
            return
        needs_token = hf.token is not None and (hf.gated_repos is None or repo in hf.gated_repos)
        if needs_token and self.headers.get("Authorization") != f"Bearer {hf.token}":
            self._simple(req, 401, {"X-Error-Code": "GatedRepo",
                                    "X-Error-Message": "Access to this model is restricted. You must be authenticated."},
                         b"unauthorized")
            return
        blob, commit, code = hf._lookup(repo, rev, fpath)
        if blob is None:
            self._simple(req, 404, {"X-Error-Code": code, "X-Error-Message": f"{code}: {repo}@{rev}/{fpath}"},
                         code.encode())
            return
        location = hf.cdn_url(blob.sha256, fpath.rsplit("/", 1)[-1])
        if hf.cdn_same_origin:
            location = location[len(hf.endpoint):]  # relative, like some mirrors
        self._simple(req, 302, {
            "Location": location,
            "X-Repo-Commit": commit or "",
            "X-Linked-Etag": f'"{blob.sha256}"',
            "X-Linked-Size": str(blob.size),
            "ETag": f'"{blob.sha256}"',
        })

    # ---- plain files ---------------------------------------------------------------------------------
    def _plain_file(self, name: str) -> None:
        import base64

        req = self._begin("plain")
        hf = self.hf
        if hf.plain_auth is not None:
            want = "Basic " + base64.b64encode(":".join(hf.plain_auth).encode()).decode()
            if self.headers.get("Authorization") != want:
                self._simple(req, 401, {"WWW-Authenticate": 'Basic realm="files"'}, b"unauthorized")
                return
        got = hf._plain_get(name, count=self.command == "GET")
        if got is None:
            self._simple(req, 404, {}, b"no such file")
            return
        blob, version = got
        etag = f'"v{version}-{blob.sha256[:16]}"'
        last_modified = email.utils.formatdate(1_700_000_000 + version, usegmt=True)
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and if_range and hf.plain_if_range and if_range not in (etag, last_modified):
            rng = None  # RFC 9110: the validator does not match: send the whole (current) file
        self._serve_blob(req, blob, rng, {"ETag": etag, "Last-Modified": last_modified})

    # ---- CDN ----------------------------------------------------------------------------------------
    def _cdn(self, path: str) -> None:
        req = self._begin("cdn")
        hf, f = self.hf, self.hf.faults
        parts = path.split("/")  # '', 'cdn', token, sha, name
        if len(parts) < 4:
            self._simple(req, 404, {}, b"no such object")
            return
        tid, sha = parts[2], parts[3]
        is_get = self.command == "GET"
        if not hf._use_token(tid, count=is_get):
            self._simple(req, 403, {"Content-Type": "application/xml"},
                         b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
            return
        blob = hf._blob_by_sha(sha)
        if blob is None:
            self._simple(req, 404, {}, b"no such object")
            return
        if is_get and f.status and not f.status_on_resolve and f.take("status"):
            headers = {"Retry-After": f.retry_after} if f.retry_after else {}
            self._simple(req, f.status, headers, b"slow down")
            return
        self._serve_blob(req, blob, self.headers.get("Range"),
                         {"ETag": f'"{blob.sha256}"', "Last-Modified": email.utils.formatdate(0, usegmt=True)})

    def _serve_blob(self, req: RecordedRequest, blob: _Blob, rng: str | None, validators: dict[str, str]) -> None:
        hf, f = self.hf, self.hf.faults
        self._drip_headers = True
        is_get = self.command == "GET"
        size = blob.size
        start, end = 0, size - 1
        status = 200
        ignore = f.ignore_range
        if f.ignore_range_after is not None and is_get:
            with hf._lock:
                gets = sum(1 for r in hf.requests if r.kind == "cdn" and r.method == "GET")
            ignore = ignore or gets > f.ignore_range_after
        if rng and not ignore:
            m = _RANGE_RE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                self._simple(req, 416, {"Content-Range": f"bytes */{size}"})
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or end < start:
                self._simple(req, 416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        length = end - start + 1
        req.status = status
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in validators.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not is_get:
            return
        with hf._lock:
            hf.active_cdn_gets += 1
            hf.max_active_cdn_gets = max(hf.max_active_cdn_gets, hf.active_cdn_gets)
        self._active = True
        try:
            self._send_body(req, blob, start, length)
        finally:
            self._inactive()

    def _inactive(self) -> None:
        """Count this body as finished (called as soon as its last byte is written)."""
        if getattr(self, "_active", False):
            self._active = False
            with self.hf._lock:
                self.hf.active_cdn_gets -= 1

    def _send_body(self, req: RecordedRequest, blob: _Blob, start: int, length: int) -> None:
        f = self.hf.faults
        reset_at = f.reset_after_bytes if (f.reset_after_bytes is not None and f.reset_after_bytes < length
                                           and f.take("reset")) else None
        stall_at = f.stall_after_bytes if (f.stall_after_bytes is not None and f.stall_after_bytes < length
                                           and f.take("stall")) else None
        corrupt = [o for o in f.corrupt_offsets if start <= o < start + length]
        rate = f.rate_limit_bps
        if f.trickle_bps and f.take("trickle"):
            rate = f.trickle_bps
        sent = 0
        t0 = time.monotonic()
        with open(blob.path, "rb") as fh:
            fh.seek(start)
            block = min(_SEND_BLOCK, max(1024, rate // 20)) if rate else _SEND_BLOCK  # smooth pacing
            while sent < length:
                n = min(block, length - sent)
                if reset_at is not None:
                    n = min(n, reset_at - sent) if sent < reset_at else n
                if stall_at is not None and sent < stall_at:
                    n = min(n, stall_at - sent)
                data = fh.read(n)
                if not data:
                    break
                if corrupt:
                    buf = bytearray(data)
                    for o in corrupt:
                        if start + sent <= o < start + sent + len(buf):
                            buf[o - start - sent] ^= 0xFF
                    data = bytes(buf)
                self.wfile.write(data)
                sent += len(data)
                req.bytes_sent = sent
                if sent >= length:
                    self._inactive()  # before the client can start its next request
                    break
                if reset_at is not None and sent >= reset_at:
                    self._reset()
                if stall_at is not None and sent == stall_at:
                    stall_at = None
                    if self.hf._stop.wait(f.stall_s):
                        self._reset()
                if rate:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0 and self.hf._stop.wait(ahead):
                        self._reset()
                link_wait = self.hf._pace_link(len(data))
                if link_wait > 0 and self.hf._stop.wait(link_wait):
                    self._reset()


# ---- pytest fixtures ---------------------------------------------------------------------------------

@pytest.fixture
def hf_server_factory(tmp_path_factory) -> Iterator:
    """Call with HFServer's keyword arguments (``token=...``); every server is closed at teardown."""
    servers: list[HFServer] = []

    def make(token: str | None = None, **kw) -> HFServer:
        root = tmp_path_factory.mktemp("hf-server")
        srv = HFServer(root, token=token, **kw).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.close()
        shutil.rmtree(s.root, ignore_errors=True)


@pytest.fixture
def hf_server(hf_server_factory) -> HFServer:
    """An anonymous (no token) HF-style server on 127.0.0.1."""
    return hf_server_factory()
