"""The transfer engine: parallel ranged downloads into a preallocated part file, hashed in order.

One `Downloader` serves every download of a store (from several threads at once); a shared
`ConnectionBudget` caps the connections across all of them. For one file:

- the byte space is split into ranges of `chunk_size`, handed out in order to up to
  `connections_per_file` worker threads; each worker GETs its range (`Range: bytes=a-b`,
  `Accept-Encoding: identity`), checks the answer is 206 with exactly the asked `Content-Range`
  (a 200 is never appended), and `pwrite`s each received block at its offset into the part file
  (preallocated with fallocate(2) so a full disk shows at the start): memory per connection is one
  1 MiB buffer, whatever the file size;
- a hasher thread follows the contiguous written prefix and feeds sha256 from the page cache
  (mmap windows, else `preadv`), so verification needs no second pass after the download;
- the supervising thread asks the kernel to start writing the prefix out as it grows
  (sync_file_range), so the fsync before publish does not stall on a whole file of dirty pages;
- every few seconds the contiguous prefix is fsynced and recorded in the sidecar
  `part_path + ".json"` (written atomically: temp + os.replace), so a download killed by anything,
  SIGKILL included, resumes: the next call rehashes that prefix from disk and fetches the rest;
- failures: transient ones (reset, stall = idle-read timeout or throughput under
  `min_throughput_bps` over `throughput_window_s`, 429/5xx with Retry-After honoured) retry the
  range from where it stopped with exponential backoff and jitter; 403 from the CDN re-resolves the source (the
  identity must be unchanged) and continues; 401/404/416 and size or hash mismatches fail fast.

Cleanup contract (for the caller): the engine never renames the part file and never deletes it.
On `DiskFullError`/`IntegrityError` the caller should delete the part file and its sidecar
(`remove_part(part_path)` does both); on `TransferCancelled` or a transient `DownloadError` it should
keep them so the next call resumes.

Hand-written rather than delegated to a library: httpx has no segmented downloader, and the
in-order hashing, resume sidecar and fault rules above are what the store's guarantees rest on.
Resolution uses httpx; the body loop uses stdlib `http.client` + `readinto1` into a fixed buffer,
which measured ~4x less CPU per byte than httpx's `iter_raw` (see `_Connection`).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import mmap
import os
import random
import re
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from i2v_worker.logs import Throttle, log
from i2v_worker.store.errors import DiskFullError, DownloadError, IntegrityError, StoreError
from i2v_worker.store.sources import ResolvedSource, parse_retry_after, redact_url

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.config import Settings

logger = logging.getLogger("i2v_worker.store.transfer")

__all__ = [
    "TransferConfig", "ConnectionBudget", "Transferred", "Downloader", "TransferCancelled",
    "make_client", "make_ssl_context", "remove_part", "sidecar_path", "read_sidecar",
]

SIDECAR_VERSION = 1
_HASH_BLOCK = 4 * 2**20  # hasher wakes for this much new prefix; preadv block when mmap is refused
_HASH_WINDOW = 16 * 2**20  # hasher's mmap window over the part file
_COPY_BLOCK = 8 * 2**20  # file:// copies and resume rehash
_CHECKPOINT_S = 2.0  # sidecar update interval
_PROGRESS_S = 0.5  # progress callback interval
_NET_BLOCK = 1 * 2**20  # body buffer per connection (readinto, then pwrite)
_WRITEBACK_MIN = 16 * 2**20  # start writeback of the written prefix in steps of at least this
_USER_AGENT = "i2v-worker"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class TransferConfig:
    connections_per_file: int = 16  # a CDN caps each connection (~40 MB/s): 16 reach aria2c -x16
    max_connections: int = 32  # across all downloads: two big files at full speed at once
    chunk_size: int = 16 * 2**20  # range size
    read_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    min_throughput_bps: int = 256 * 1024
    throughput_window_s: float = 20.0
    max_attempts: int = 8  # consecutive failures of one range without progress
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0  # longest Retry-After honoured
    max_reresolves: int = 3  # 403 -> re-resolve rounds without progress before giving up
    preallocate: bool = True  # posix_fallocate the part file (else a sparse truncate)
    # Linux: start writeback (sync_file_range) of the written prefix while downloading, so the
    # fsync before publish finds little left to write (it was ~0.5 s per GiB of wall time).
    early_writeback: bool = True
    # hash the written prefix through mmap windows (hashlib reads the page cache directly: ~0.15 s
    # CPU per GiB less than preadv into a buffer, measured here); preadv where mmap is refused.
    hash_mmap: bool = True

    def __post_init__(self) -> None:
        for name in ("connections_per_file", "max_connections", "chunk_size", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransferConfig.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_settings(cls, settings: "Settings", **kw: Any) -> "TransferConfig":
        return cls(connections_per_file=settings.connections_per_file,
                   max_connections=settings.max_connections, **kw)


class ConnectionBudget:
    """The global connection cap shared by all concurrent downloads of one store."""

    def __init__(self, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        self._sem = threading.BoundedSemaphore(max_connections)

    def acquire(self, abort: threading.Event | None = None) -> bool:
        """Take a connection slot; False when `abort` was set while waiting."""
        while True:
            if abort is not None and abort.is_set():
                return False
            if self._sem.acquire(timeout=0.1):
                return True

    def release(self) -> None:
        self._sem.release()


@dataclass(frozen=True)
class Transferred:
    size: int
    sha256: str
    resumed_bytes: int  # bytes of the part file reused (rehashed from disk, not fetched)
    fetched_bytes: int  # body bytes received from the network in this call


class TransferCancelled(StoreError):
    """The cancel event was set: the part file and its sidecar are kept for a later resume."""


def make_ssl_context() -> Any:
    """The TLS context httpx builds by default (certifi, SSL_CERT_FILE/DIR). Loading the CA bundle
    costs ~35 ms of CPU: build it once and pass it to `make_client(verify=...)` and `Downloader`."""
    return httpx.create_ssl_context()


def make_client(config: TransferConfig | None = None, **kw: Any) -> httpx.Client:
    """An httpx client sized for the engine (pool >= the connection cap, our timeouts)."""
    cfg = config or TransferConfig()
    limits = httpx.Limits(max_connections=cfg.max_connections + 8,
                          max_keepalive_connections=cfg.max_connections + 8)
    timeout = httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s, write=30.0, pool=None)
    return httpx.Client(limits=limits, timeout=timeout, headers={"User-Agent": "i2v-worker"}, **kw)


def sidecar_path(part_path: Path | str) -> Path:
    return Path(str(part_path) + ".json")


def read_sidecar(part_path: Path | str) -> dict[str, Any] | None:
    """The resume record of a part file, or None when absent or unreadable."""
    try:
        data = json.loads(sidecar_path(part_path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("v") != SIDECAR_VERSION:
        return None
    return data


def remove_part(part_path: Path | str) -> None:
    """Delete a part file and its sidecar (the caller's cleanup after DiskFullError/IntegrityError)."""
    for p in (Path(part_path), sidecar_path(part_path), Path(str(sidecar_path(part_path)) + ".tmp")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# ---- internal failure kinds ----------------------------------------------------------------------

class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class _Expired(Exception):
    """403/410 on a range request: the signed URL expired."""


class _RangeIgnored(Exception):
    """The server answered 200 (the whole body) to a Range request."""


class _Aborted(Exception):
    pass


class _Range:
    __slots__ = ("start", "end", "filled")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.filled = start, end, start  # [start, end); [start, filled) written


class _Job:
    """State of one download (a Downloader runs several jobs at once)."""

    def __init__(self, dl: "Downloader", source: ResolvedSource, part: Path, fd: int, size: int,
                 expected_sha: str | None, model: str | None, reresolve: Callable[[], ResolvedSource] | None,
                 cancel: threading.Event | None, start: int) -> None:
        self.dl = dl
        self.cfg = dl.config
        self.source = source
        self.url, self.headers, self.url_gen = source.url, dict(source.headers), 0
        self.display = source.display_url or redact_url(source.url)
        self.part, self.fd, self.size = part, fd, size
        self.expected_sha = expected_sha
        self.model = model
        self.reresolve = reresolve
        self.cancel = cancel
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self.range_ignored = False
        self.fetched = 0
        self.reresolves_without_progress = 0
        cs = self.cfg.chunk_size
        self.ranges = [_Range(a, min(a + cs, size)) for a in range(start, size, cs)]
        self.next_range = 0
        self.front = 0  # index of the first incomplete range
        self.prefix = start  # contiguous written prefix
        self.hashed = 0
        self.retry_log = Throttle(5.0, dl.clock)
        self.sockets: set[Any] = set()  # live sockets of this job's connections (see interrupt)

    def interrupt(self) -> None:
        """Abort: wake workers blocked in a socket read at once (cancel, or a failure elsewhere)."""
        self.abort.set()
        with self.lock:
            socks = list(self.sockets)
            self.cond.notify_all()
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- shared state -------------------------------------------------------------------------------
    def take_range(self) -> _Range | None:
        with self.lock:
            if self.next_range >= len(self.ranges) or self.abort.is_set():
                return None
            r = self.ranges[self.next_range]
            self.next_range += 1
            return r

    def advance(self, r: _Range, n: int) -> None:
        with self.lock:
            r.filled += n
            self.fetched += n
            self.reresolves_without_progress = 0
            if self.ranges[self.front] is r:
                old = self.prefix
                while self.front < len(self.ranges) and self.ranges[self.front].filled >= self.ranges[self.front].end:
                    self.front += 1
                self.prefix = self.ranges[self.front].filled if self.front < len(self.ranges) else self.size
                if self.prefix - self.hashed >= _HASH_BLOCK or self.prefix == self.size or \
                        self.prefix // _HASH_BLOCK != old // _HASH_BLOCK:
                    self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.interrupt()

    def done_bytes(self) -> int:
        with self.lock:
            return self.size - sum(r.end - r.filled for r in self.ranges)

    def stopped(self) -> bool:
        return self.abort.is_set() or (self.cancel is not None and self.cancel.is_set())

    def current_url(self) -> tuple[str, dict[str, str], int]:
        with self.lock:
            return self.url, self.headers, self.url_gen

    def renew_url(self, seen_gen: int) -> None:
        """403 on `seen_gen`'s URL: re-resolve once (other workers reuse the result)."""
        with self.dl._reresolve_lock:
            with self.lock:
                if self.url_gen != seen_gen:
                    return  # another worker already renewed it
                self.reresolves_without_progress += 1
                rounds = self.reresolves_without_progress
            if self.reresolve is None:
                raise DownloadError("the download URL was refused (HTTP 403) and cannot be renewed",
                                    model=self.model, url=self.display, permanent=True, status=403,
                                    hint="check access to the source; retry later")
            if rounds > self.cfg.max_reresolves:
                raise DownloadError(f"the download URL is still refused (HTTP 403) after {rounds - 1} re-resolves",
                                    model=self.model, url=self.display, permanent=True, status=403,
                                    hint="check access to the source (token, licence, bucket policy)")
            new = self.reresolve()
            old = self.source
            changed = (new.size is not None and new.size != self.size) or \
                (old.sha256 and new.sha256 and old.sha256 != new.sha256) or \
                (not (old.sha256 and new.sha256) and old.etag and new.etag and old.etag != new.etag)
            if self.expected_sha and new.sha256 and new.sha256 != self.expected_sha:
                changed = True
            if changed:
                raise DownloadError(
                    f"the file changed upstream during the download (etag {old.sha256 or old.etag} -> "
                    f"{new.sha256 or new.etag}, size {self.size} -> {new.size})",
                    model=self.model, url=self.display, permanent=True,
                    hint="pin a revision (hf://org/repo@<commit>/path) and start the download again")
            log(logger, logging.INFO, "download URL renewed after 403", model=self.model, url=self.display)
            with self.lock:
                self.url, self.headers = new.url, dict(new.headers)
                self.url_gen += 1


class Downloader:
    def __init__(self, config: TransferConfig, *,
                 budget: ConnectionBudget | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, resolver: Any = None,
                 ssl_context: Any = None) -> None:
        self.config = config
        self.budget = budget if budget is not None else ConnectionBudget(config.max_connections)
        self.clock = clock
        self._sleep = sleep
        # `client` is kept for the interface; range GETs use one http.client connection per worker
        # (see _Connection for the measurement). `resolver` is unused: callers pass `reresolve`.
        self.resolver = resolver
        self._reresolve_lock = threading.Lock()
        # one preallocation at a time: two concurrent fallocates that together exceed the free
        # space can both fail half-way (seen on tmpfs), where one after the other one succeeds
        self._prepare_lock = threading.Lock()
        self._ssl: Any = ssl_context  # None: built like httpx's default on first HTTPS use

    def _ssl_context(self) -> Any:
        """TLS context for the range connections, built like httpx's (certifi, SSL_CERT_FILE/DIR)."""
        if self._ssl is None:
            self._ssl = make_ssl_context()
        return self._ssl

    # ---- public ------------------------------------------------------------------------------------
    def download(self, source: ResolvedSource, part_path: Path, *, model: str | None = None,
                 reresolve: Callable[[], ResolvedSource] | None = None,
                 progress: Callable[[int, int | None], None] | None = None,
                 cancel: threading.Event | None = None,
                 expected_size: int | None = None, expected_sha256: str | None = None) -> Transferred:
        """Download `source` into `part_path` (resuming when its sidecar matches). `expected_size`
        / `expected_sha256` (manifest pins) take precedence over what the server announced."""
        part_path = Path(part_path)
        size = expected_size if expected_size is not None else source.size
        sha = (expected_sha256 or source.sha256 or None)
        sha = sha.lower() if sha else None
        if source.size is not None and size is not None and source.size != size:
            raise IntegrityError(f"the source serves {source.size} bytes, expected {size}", model=model,
                                 url=source.display_url or redact_url(source.url),
                                 hint="the file changed upstream or the manifest pin is wrong")
        if source.is_local:
            return self._copy_local(source, part_path, size, sha, model, progress, cancel)
        return self._download_http(source, part_path, size, sha, model, reresolve, progress, cancel)

    # ---- http ----------------------------------------------------------------------------------------
    def _download_http(self, source: ResolvedSource, part: Path, size: int | None, sha: str | None,
                       model: str | None, reresolve: Callable[[], ResolvedSource] | None,
                       progress: Callable[[int, int | None], None] | None,
                       cancel: threading.Event | None) -> Transferred:
        t0 = self.clock()
        display = source.display_url or redact_url(source.url)
        identity = {"size": size, "sha256": sha, "etag": source.etag}
        part.parent.mkdir(parents=True, exist_ok=True)
        resume_from = self._resumable_prefix(part, identity) if size is not None else 0
        fd = os.open(part, os.O_RDWR | os.O_CREAT | (0 if resume_from else os.O_TRUNC), 0o644)
        try:
            if size is not None:
                self._prepare(fd, part, size, model, display)
            hasher = hashlib.sha256()
            if resume_from:
                self._rehash(fd, hasher, resume_from, cancel, model)
                log(logger, logging.INFO, "resuming download", model=model, url=display,
                    resumed_bytes=resume_from, size=size)
            try:
                self._write_sidecar(part, identity, resume_from)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._disk_full(part, size, model, exc) from None
                raise
            if size is None:
                job = _Job(self, source, part, fd, 0, sha, model, reresolve, cancel, 0)
                digest, total = self._single_stream(job, hasher, progress, None)
                size = total
            else:
                job = _Job(self, source, part, fd, size, sha, model, reresolve, cancel, resume_from)
                job.hashed = resume_from
                digest = self._ranged(job, hasher, identity, progress)
            self._finish_checks(job, digest, size, sha, display)
            took = max(self.clock() - t0, 1e-6)
            log(logger, logging.INFO, "download complete", model=model, url=display, size=size,
                fetched=job.fetched, resumed=resume_from, seconds=round(took, 2),
                mib_s=round(job.fetched / took / 2**20, 1), connections=min(self.config.connections_per_file,
                                                                          max(1, len(job.ranges))))
            return Transferred(size=size, sha256=digest, resumed_bytes=resume_from, fetched_bytes=job.fetched)
        finally:
            os.close(fd)

    def _finish_checks(self, job: _Job, digest: str, size: int, sha: str | None, display: str) -> None:
        actual = os.fstat(job.fd).st_size
        if actual != size:
            raise IntegrityError(f"size mismatch: wrote {actual} bytes, expected {size}", model=job.model,
                                 url=display, hint="try again; if it persists the source is inconsistent")
        if sha and digest != sha:
            try:
                sidecar_path(job.part).unlink()  # the prefix is not trustworthy: never resume from it
            except FileNotFoundError:
                pass
            raise IntegrityError(f"sha256 mismatch: expected {sha}, got {digest}", model=job.model, url=display,
                                 hint="the bytes received are corrupt or the source changed; delete the part "
                                      "file and try again; if it persists the source or the pin is wrong")

    def _ranged(self, job: _Job, hasher: Any, identity: dict[str, Any],
                progress: Callable[[int, int | None], None] | None) -> str:
        cfg = self.config
        n_workers = max(1, min(cfg.connections_per_file, len(job.ranges)))
        hash_state: dict[str, Any] = {"hasher": hasher, "error": None}
        hasher_thread = threading.Thread(target=self._hash_loop, args=(job, hash_state), daemon=True,
                                         name=f"i2v-hash-{job.model or 'file'}")
        hasher_thread.start()
        workers = [threading.Thread(target=self._worker, args=(job,), daemon=True,
                                    name=f"i2v-dl-{job.model or 'file'}-{i}") for i in range(n_workers)]
        for w in workers:
            w.start()
        progress_throttle = Throttle(_PROGRESS_S, self.clock)
        checkpoint_throttle = Throttle(_CHECKPOINT_S, self.clock)
        checkpoint_throttle.ready()
        flushed = job.prefix  # writeback started up to here (see _start_writeback)
        try:
            while True:
                alive = [w for w in workers if w.is_alive()]
                if not alive:
                    break
                alive[0].join(timeout=0.1)
                if job.cancel is not None and job.cancel.is_set() and not job.abort.is_set():
                    job.interrupt()
                if progress and progress_throttle.ready():
                    progress(job.done_bytes(), job.size)
                if checkpoint_throttle.ready():
                    self._checkpoint(job, identity)
                elif cfg.early_writeback:
                    flushed = self._start_writeback(job, flushed)
        except BaseException:
            job.interrupt()
            for w in workers:
                w.join()
            self._stop_hasher(job, hasher_thread)
            self._checkpoint(job, identity)
            raise
        if job.error is None and job.range_ignored and not (job.cancel and job.cancel.is_set()):
            # The server ignores Range: stop the hasher, then take the whole body in one stream.
            self._stop_hasher(job, hasher_thread)
            log(logger, logging.WARNING, "server ignores Range requests, falling back to one stream",
                model=job.model, url=job.display)
            job.abort.clear()
            digest, _ = self._single_stream(job, hashlib.sha256(), progress, identity)
            return digest
        if job.error is None and job.cancel is not None and job.cancel.is_set() and job.prefix < job.size:
            self._stop_hasher(job, hasher_thread)
            self._checkpoint(job, identity)
            raise TransferCancelled("download cancelled; the part file is kept for resume", model=job.model)
        if job.error is not None:
            self._stop_hasher(job, hasher_thread)
            self._checkpoint(job, identity)
            raise self._public_error(job, job.error)
        # all ranges written: let the hasher finish the tail
        with job.cond:
            job.cond.notify_all()
        hasher_thread.join()
        if hash_state["error"] is not None:
            raise self._public_error(job, hash_state["error"])
        self._checkpoint(job, identity)
        if progress:
            progress(job.size, job.size)
        return hash_state["hasher"].hexdigest()

    def _stop_hasher(self, job: _Job, t: threading.Thread) -> None:
        with job.cond:
            job.abort.set()
            job.cond.notify_all()
        t.join()

    def _hash_loop(self, job: _Job, state: dict[str, Any]) -> None:
        """Consume the contiguous written prefix in order (page cache reads, GIL released)."""
        reader = _PrefixHasher(job.fd, state["hasher"], use_mmap=self.config.hash_mmap)
        try:
            while True:
                with job.cond:
                    while job.prefix - job.hashed < _HASH_BLOCK and job.prefix < job.size and not job.abort.is_set():
                        job.cond.wait(0.5)
                    if job.abort.is_set() and job.prefix < job.size:
                        return
                    target = job.prefix
                pos = job.hashed
                while pos < target:
                    pos = reader.update(pos, target)
                with job.lock:
                    job.hashed = pos
                if pos >= job.size:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            state["error"] = exc
            job.fail(exc)

    def _start_writeback(self, job: _Job, flushed: int) -> int:
        """Ask the kernel to start writing [flushed, prefix) to disk now (non-blocking), so the
        fdatasync of the next checkpoint and the fsync before publish have little left to do."""
        with job.lock:
            prefix = job.prefix
        if prefix - flushed < _WRITEBACK_MIN:
            return flushed
        if not _sync_file_range_write(job.fd, flushed, prefix - flushed):
            return job.size  # unsupported here: stop trying for this job
        return prefix

    def _worker(self, job: _Job) -> None:
        conn = _Connection(self, job)
        buf = bytearray(_NET_BLOCK)  # the only body buffer of this connection
        try:
            while not job.stopped():
                r = job.take_range()
                if r is None:
                    return
                self._fetch_range(job, r, conn, buf)
        except _Aborted:
            return
        except _RangeIgnored:
            with job.lock:
                job.range_ignored = True
            job.interrupt()
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            job.fail(exc)
        finally:
            conn.close()

    def _fetch_range(self, job: _Job, r: _Range, conn: "_Connection", buf: bytearray) -> None:
        """Fetch [r.filled, r.end) until complete, retrying transient failures from where it stopped."""
        cfg = self.config
        failures = 0
        stop = job.abort if job.cancel is None else _AnyEvent(job.abort, job.cancel)
        while r.filled < r.end:
            if job.stopped() or not self.budget.acquire(stop):
                raise _Aborted()
            before = r.filled
            url, headers, gen = job.current_url()
            try:
                try:
                    self._get_range(job, r, url, headers, conn, buf)
                finally:
                    self.budget.release()
                if r.filled >= r.end:
                    return
                raise _Transient("the body ended before the end of the range")
            except (_Expired, _Transient, OSError, http.client.HTTPException) as exc:
                err = _after_failed_request(exc, job, conn, gen)
                if err is None:
                    continue
            if job.stopped():
                raise _Aborted()
            failures = 0 if r.filled > before else failures + 1
            if failures >= cfg.max_attempts:
                raise DownloadError(
                    f"gave up on bytes {r.filled}-{r.end - 1} after {failures} attempts without progress "
                    f"(last error: {err})", model=job.model, url=job.display, status=err.status,
                    hint="the server or network is unreliable; try again later (the part file is kept for resume)")
            delay = self._backoff(max(1, failures), err.retry_after)
            if job.retry_log.ready():
                log(logger, logging.WARNING, "range failed, retrying", model=job.model, url=job.display,
                    offset=r.filled, error=str(err), wait_s=round(delay, 2))
            self._wait(delay, job)

    def _get_range(self, job: _Job, r: _Range, url: str, headers: dict[str, str], conn: "_Connection",
                   buf: bytearray) -> None:
        """One ranged GET for [r.filled, r.end), written in place as it arrives."""
        h = dict(headers)
        h["Range"] = f"bytes={r.filled}-{r.end - 1}"
        resp = conn.get(url, h)
        if resp.status != 206:
            self._raise_for_status(job, resp, ranged=True)
        cr = _CONTENT_RANGE.match(resp.getheader("content-range") or "")
        if not cr:
            raise _Transient(f"206 without a valid Content-Range ({resp.getheader('content-range')!r})")
        a, b, total = int(cr.group(1)), int(cr.group(2)), cr.group(3)
        if total != "*" and int(total) != job.size:
            raise IntegrityError(f"size mismatch: the server says {total} bytes, expected {job.size}",
                                 model=job.model, url=job.display,
                                 hint="the file changed upstream or the manifest pin is wrong")
        if (a, b) != (r.filled, r.end - 1):
            raise _Transient(f"asked bytes {r.filled}-{r.end - 1}, got Content-Range {a}-{b}")
        enc = (resp.getheader("content-encoding") or "identity").lower()
        if enc != "identity":
            raise _Transient(f"the server applied Content-Encoding {enc} to a range")
        if resp.length is not None and resp.length != r.end - r.filled:
            raise _Transient(f"Content-Length {resp.length} does not match the range")
        self._stream_into(job, r, resp, buf)
        _finish_body(resp)
        conn.done(resp)

    def _stream_into(self, job: _Job, r: _Range, resp: http.client.HTTPResponse, buf: bytearray) -> None:
        cfg = self.config
        clock = self.clock
        fd = job.fd
        mv = memoryview(buf)
        window_start = clock()
        window_bytes = 0
        min_bytes = cfg.min_throughput_bps * cfg.throughput_window_s
        pos = r.filled
        read = _body_reader(resp)
        while pos < r.end:
            n = read(mv[: min(len(mv), r.end - pos)])
            if not n:
                return
            self._pwrite_all(fd, mv[:n], pos, job)
            pos += n
            job.advance(r, n)
            window_bytes += n
            now = clock()
            if now - window_start >= cfg.throughput_window_s:
                if window_bytes < min_bytes:
                    raise _Transient(f"stalled: {window_bytes} bytes in {now - window_start:.0f}s "
                                     f"(< {cfg.min_throughput_bps} B/s)")
                window_start, window_bytes = now, 0
            if job.abort.is_set() or (job.cancel is not None and job.cancel.is_set()):
                raise _Aborted()

    def _pwrite_all(self, fd: int, data: bytes | memoryview, pos: int, job: _Job) -> None:
        mv = memoryview(data)
        while len(mv):
            try:
                n = os.pwrite(fd, mv, pos)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._disk_full(job.part, job.size, job.model, exc) from None
                raise _LocalIOError(exc) from exc
            mv = mv[n:]
            pos += n

    def _raise_for_status(self, job: _Job, resp: http.client.HTTPResponse, *, ranged: bool) -> None:
        code = resp.status
        if code == 200 and ranged:
            raise _RangeIgnored()
        retry_after = parse_retry_after(resp.getheader("retry-after"))
        if code in (403, 410):
            raise _Expired()
        if code == 401:
            raise DownloadError("access denied (HTTP 401) on the download URL", model=job.model, url=job.display,
                                permanent=True, status=401, hint="set HF_TOKEN / credentials with access to the file")
        if code == 404:
            raise DownloadError("the download URL answered 404 (not found)", model=job.model, url=job.display,
                                permanent=True, status=404, hint="check the source URI; the file may have been removed")
        if code == 416:
            raise IntegrityError(f"the server cannot serve the asked range (HTTP 416): the file is smaller than "
                                 f"{job.size} bytes", model=job.model, url=job.display,
                                 hint="the file changed upstream or the manifest pin is wrong")
        if code in (408, 425, 429) or code >= 500:
            raise _Transient(f"HTTP {code}", retry_after=retry_after, status=code)
        raise DownloadError(f"unexpected HTTP {code} on the download URL", model=job.model, url=job.display,
                            permanent=True, status=code)

    # ---- one stream (size unknown, or Range ignored) -------------------------------------------------------
    def _single_stream(self, job: _Job, hasher: Any, progress: Callable[[int, int | None], None] | None,
                       identity: dict[str, Any] | None) -> tuple[str, int]:
        """GET the whole body from offset 0, writing in order and hashing inline. A retry asks for
        `Range: bytes=pos-`; if the server answers 200 again the first `pos` bytes are skipped."""
        cfg = self.config
        expected = job.size if job.size else None
        state = {"pos": 0}
        failures = 0
        throttles = (Throttle(_PROGRESS_S, self.clock), Throttle(_CHECKPOINT_S, self.clock))
        throttles[1].ready()
        conn = _Connection(self, job)
        buf = bytearray(_NET_BLOCK)
        try:
            while True:
                if job.cancel is not None and job.cancel.is_set():
                    if identity:
                        self._write_sidecar(job.part, identity, self._durable(job.fd, state["pos"]))
                    raise TransferCancelled("download cancelled; the part file is kept for resume", model=job.model)
                if not self.budget.acquire(job.cancel):
                    continue
                before = state["pos"]
                url, headers, gen = job.current_url()
                try:
                    try:
                        complete = self._stream_once(job, url, headers, hasher, state, expected, progress,
                                                     identity, throttles, conn, buf)
                    finally:
                        self.budget.release()
                    if complete:
                        pos = state["pos"]
                        if expected is None:
                            os.ftruncate(job.fd, pos)
                        if progress:
                            progress(pos, expected)
                        if identity:
                            self._write_sidecar(job.part, identity, self._durable(job.fd, pos))
                        return hasher.hexdigest(), pos
                    if job.cancel is not None and job.cancel.is_set():
                        continue
                    raise _Transient(f"body ended at {state['pos']} of {expected} bytes")
                except (_Expired, _Transient, OSError, http.client.HTTPException) as exc:
                    err = _after_failed_request(exc, job, conn, gen)
                    if err is None:
                        continue
                failures = 0 if state["pos"] > before else failures + 1
                if failures >= cfg.max_attempts:
                    raise DownloadError(f"gave up after {failures} attempts without progress (last error: {err})",
                                        model=job.model, url=job.display, status=err.status,
                                        hint="the server or network is unreliable; try again later")
                try:
                    self._wait(self._backoff(max(1, failures), err.retry_after), job)
                except _Aborted:
                    continue  # cancelled: handled at the loop top
        finally:
            conn.close()

    def _stream_once(self, job: _Job, url: str, headers: dict[str, str], hasher: Any, state: dict[str, int],
                     expected: int | None, progress: Callable[[int, int | None], None] | None,
                     identity: dict[str, Any] | None, throttles: tuple[Throttle, Throttle],
                     conn: "_Connection", buf: bytearray) -> bool:
        """One GET of the rest of the body; True when the body is complete."""
        pos = state["pos"]
        h = dict(headers)
        if pos:
            h["Range"] = f"bytes={pos}-"
        resp = conn.get(url, h)
        code = resp.status
        skip = 0
        if code == 206:
            cr = _CONTENT_RANGE.match(resp.getheader("content-range") or "")
            if not cr or int(cr.group(1)) != pos:
                raise _Transient(f"bad Content-Range {resp.getheader('content-range')!r}")
        elif code == 200:
            skip = pos  # the whole body again: skip what is already written and hashed
        else:
            self._raise_for_status(job, resp, ranged=False)
        enc = (resp.getheader("content-encoding") or "identity").lower()
        if enc != "identity":
            raise DownloadError(f"the server sends Content-Encoding {enc} despite Accept-Encoding: identity",
                                model=job.model, url=job.display, permanent=True,
                                hint="use another source or mirror")
        mv = memoryview(buf)
        read = _body_reader(resp)
        while True:
            n = read(mv)
            if not n:
                break
            data = mv[:n]
            if skip:
                if n <= skip:
                    skip -= n
                    continue
                data = data[skip:]
                skip = 0
                n = len(data)
            if expected is not None and pos + n > expected:
                raise IntegrityError(f"size mismatch: the server sends more than {expected} bytes",
                                     model=job.model, url=job.display,
                                     hint="the file changed upstream or the manifest pin is wrong")
            self._pwrite_all(job.fd, data, pos, job)
            hasher.update(data)
            pos += n
            state["pos"] = pos
            with job.lock:
                job.fetched += n
            if job.cancel is not None and job.cancel.is_set():
                return False
            if progress and throttles[0].ready():
                progress(pos, expected)
            if identity and throttles[1].ready():
                self._write_sidecar(job.part, identity, self._durable(job.fd, pos))
        _finish_body(resp)
        conn.done(resp)
        return skip == 0 and (expected is None or pos == expected)

    # ---- file:// ---------------------------------------------------------------------------------------
    def _copy_local(self, source: ResolvedSource, part: Path, size: int | None, sha: str | None,
                    model: str | None, progress: Callable[[int, int | None], None] | None,
                    cancel: threading.Event | None) -> Transferred:
        """Copy a local file with a large buffer, hashing inline (no ranges, no resume needed)."""
        display = source.display_url or source.url
        part.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        buf = bytearray(_COPY_BLOCK)
        mv = memoryview(buf)
        throttle = Throttle(_PROGRESS_S, self.clock)
        pos = 0
        try:
            src_fd = os.open(source.url, os.O_RDONLY)
        except OSError as exc:
            raise DownloadError(f"cannot open local file: {exc.strerror}", model=model, url=display,
                                permanent=True) from None
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                total = size if size is not None else os.fstat(src_fd).st_size
                self._prepare(fd, part, total, model, display)
                while True:
                    if cancel is not None and cancel.is_set():
                        raise TransferCancelled("copy cancelled", model=model)
                    n = os.readv(src_fd, [mv])
                    if n == 0:
                        break
                    if pos + n > total:
                        raise IntegrityError(f"size mismatch: the local file is larger than {total} bytes",
                                             model=model, url=display, hint="the file changed; check the manifest pin")
                    try:
                        written = 0
                        while written < n:
                            written += os.pwrite(fd, mv[written:n], pos + written)
                    except OSError as exc:
                        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise self._disk_full(part, total, model, exc) from None
                        raise
                    h.update(mv[:n])
                    pos += n
                    if progress and throttle.ready():
                        progress(pos, total)
                if pos != total:
                    raise IntegrityError(f"size mismatch: copied {pos} bytes, expected {total}", model=model,
                                         url=display, hint="the file changed; check the manifest pin")
                digest = h.hexdigest()
                if sha and digest != sha:
                    raise IntegrityError(f"sha256 mismatch: expected {sha}, got {digest}", model=model, url=display,
                                         hint="the local file differs from the manifest pin")
                if progress:
                    progress(pos, total)
                return Transferred(size=pos, sha256=digest, resumed_bytes=0, fetched_bytes=pos)
            finally:
                os.close(fd)
        finally:
            os.close(src_fd)

    # ---- part file and sidecar -----------------------------------------------------------------------------
    def _prepare(self, fd: int, part: Path, size: int, model: str | None, display: str) -> None:
        """Preallocate so ENOSPC shows up now, not hours in (sparse truncate where unsupported)."""
        cur = os.fstat(fd).st_size
        if cur > size:
            os.ftruncate(fd, size)
        if self.config.preallocate and size > 0:
            try:
                with self._prepare_lock:
                    allocated = _fallocate(fd, size)
                if allocated:
                    return
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._disk_full(part, size, model, exc) from None
                raise
        if cur < size:
            os.ftruncate(fd, size)

    def _disk_full(self, part: Path, size: int | None, model: str | None, exc: OSError) -> DiskFullError:
        try:
            free = shutil.disk_usage(part.parent).free
        except OSError:
            free = -1
        need = size if size is not None else 0
        err = DiskFullError(
            f"no space left on the device while writing {part.name} in {part.parent}: the file needs "
            f"{need} bytes ({need / 1e9:.2f} GB), {free} bytes free ({exc.strerror})",
            model=model,
            hint="free some space or point I2V_MODEL_DIR at a larger volume; the part file and its "
                 ".json sidecar can be deleted (transfer.remove_part)")
        err.needed = need  # type: ignore[attr-defined]
        err.available = free  # type: ignore[attr-defined]
        return err

    def _resumable_prefix(self, part: Path, identity: dict[str, Any]) -> int:
        data = read_sidecar(part)
        if data is None or not part.exists():
            return 0
        same = data.get("size") == identity["size"] and (
            (identity["sha256"] is not None and data.get("sha256") == identity["sha256"])
            or (identity["sha256"] is None and identity["etag"] is not None and data.get("etag") == identity["etag"]))
        if not same:
            return 0
        verified = data.get("verified")
        if not isinstance(verified, int) or verified <= 0:
            return 0
        try:
            on_disk = part.stat().st_size
        except OSError:
            return 0
        return min(verified, on_disk, identity["size"] or 0)

    def _rehash(self, fd: int, hasher: Any, upto: int, cancel: threading.Event | None, model: str | None) -> None:
        buf = bytearray(_COPY_BLOCK)
        mv = memoryview(buf)
        pos = 0
        while pos < upto:
            if cancel is not None and cancel.is_set():
                raise TransferCancelled("cancelled while checking the partial download", model=model)
            n = os.preadv(fd, [mv[: min(_COPY_BLOCK, upto - pos)]], pos)
            if n <= 0:
                raise OSError(errno.EIO, f"short read at {pos} while rehashing the part file")
            hasher.update(mv[:n])
            pos += n

    def _checkpoint(self, job: _Job, identity: dict[str, Any]) -> None:
        with job.lock:
            prefix = job.prefix
        try:
            self._write_sidecar(job.part, identity, self._durable(job.fd, prefix))
        except OSError as exc:  # a failed checkpoint only costs resume progress
            log(logger, logging.WARNING, "cannot update the resume record", model=job.model, error=str(exc))

    @staticmethod
    def _durable(fd: int, prefix: int) -> int:
        os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
        return prefix

    @staticmethod
    def _write_sidecar(part: Path, identity: dict[str, Any], verified: int) -> None:
        tmp = Path(str(sidecar_path(part)) + ".tmp")
        data = {"v": SIDECAR_VERSION, **identity, "verified": verified}
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, sidecar_path(part))

    # ---- misc ---------------------------------------------------------------------------------------------
    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        c = self.config
        if retry_after is not None:
            return min(retry_after, c.retry_after_max_s) + random.uniform(0, 0.1 * c.backoff_base_s)
        return min(c.backoff_max_s, c.backoff_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _wait(self, delay: float, job: _Job) -> None:
        if self._sleep is time.sleep:  # interruptible by abort/cancel
            end = time.monotonic() + delay
            while (left := end - time.monotonic()) > 0:
                if job.stopped():
                    raise _Aborted()
                job.abort.wait(min(left, 0.1))
            return
        self._sleep(delay)
        if job.stopped():
            raise _Aborted()

    def _public_error(self, job: _Job, exc: BaseException) -> BaseException:
        if isinstance(exc, (StoreError,)):
            return exc
        if isinstance(exc, _LocalIOError):
            exc = exc.error
        if isinstance(exc, OSError):
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return self._disk_full(job.part, job.size, job.model, exc)
            return DownloadError(f"I/O error on the part file {job.part}: {exc.strerror or exc}", model=job.model,
                                 url=job.display, hint="check the volume; the part file is kept for resume")
        return DownloadError(f"{exc.__class__.__name__}: {exc}", model=job.model, url=job.display)


class _AnyEvent:
    """Looks like an Event that is set when either of two events is (for ConnectionBudget.acquire)."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()


class _LocalIOError(Exception):
    """An I/O error on the part file (not retried like network errors)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


_libc_fallocate: Any = None


def _fallocate(fd: int, size: int) -> bool:
    """Allocate [0, size) with the fallocate(2) syscall; False where the filesystem or OS lacks it.

    Not `os.posix_fallocate`: where the filesystem has no fallocate (NFS v3, many FUSE network
    volumes) glibc emulates it by writing every block, minutes of I/O for a 10 GB model.
    """
    global _libc_fallocate
    if _libc_fallocate is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            func = libc.fallocate
            func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
            func.restype = ctypes.c_int
            _libc_fallocate = func
        except (OSError, AttributeError):
            _libc_fallocate = False
    if _libc_fallocate is False:
        return False
    import ctypes

    if _libc_fallocate(fd, 0, 0, size) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err))


class _PrefixHasher:
    """Feeds sha256 with [pos, end) of the part file, from the page cache, in order.

    mmap windows of `_HASH_WINDOW` bytes (unmapped after each, so RSS stays bounded): the hash
    reads the cached pages in place instead of copying them into a buffer first. The bytes are
    already written by this process (pwrite completed), so the pages are cached or on disk; where
    mmap is refused (some FUSE/network filesystems) it falls back to preadv into one reused buffer.
    Trade-off: a page that cannot be read back (an I/O error on a network volume after eviction)
    is a SIGBUS with mmap where preadv gives EIO; the part file and sidecar survive either way, so
    the next attempt resumes. `TransferConfig(hash_mmap=False)` chooses preadv.
    """

    def __init__(self, fd: int, hasher: Any, *, use_mmap: bool) -> None:
        self.fd, self.hasher, self.use_mmap = fd, hasher, use_mmap
        self.buf: memoryview | None = None

    def update(self, pos: int, end: int) -> int:
        """Hash a prefix of [pos, end); returns the new position (> pos)."""
        if self.use_mmap:
            base = pos - pos % mmap.ALLOCATIONGRANULARITY
            stop = min(end, base + _HASH_WINDOW)
            try:
                m = mmap.mmap(self.fd, stop - base, prot=mmap.PROT_READ, offset=base)
            except (OSError, ValueError):
                self.use_mmap = False
            else:
                try:
                    with memoryview(m)[pos - base:] as view:
                        self.hasher.update(view)
                finally:
                    m.close()
                return stop
        if self.buf is None:
            self.buf = memoryview(bytearray(_HASH_BLOCK))
        n = os.preadv(self.fd, [self.buf[: min(_HASH_BLOCK, end - pos)]], pos)
        if n <= 0:
            raise OSError(errno.EIO, f"short read at {pos} while hashing")
        self.hasher.update(self.buf[:n])
        return pos + n


_libc_sync_file_range: Any = None


def _sync_file_range_write(fd: int, offset: int, nbytes: int) -> bool:
    """sync_file_range(2) with SYNC_FILE_RANGE_WRITE: start writeback of a range without waiting
    (Python's os module lacks it). False where unavailable; errors are ignored (an optimisation only:
    durability still comes from fdatasync/fsync)."""
    global _libc_sync_file_range
    if _libc_sync_file_range is None:
        _libc_sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                func = ctypes.CDLL(None, use_errno=True).sync_file_range
                func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
                func.restype = ctypes.c_int
                _libc_sync_file_range = func
            except (OSError, AttributeError):
                pass
    if _libc_sync_file_range is False:
        return False
    _libc_sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE
    return True


def _body_reader(resp: http.client.HTTPResponse) -> Callable[[memoryview], int]:
    """readinto for the body that returns what one socket read brings (`readinto1`), so bytes
    received before a reset or a stall are written and never fetched again. Falls back to
    `resp.readinto` (which fills the whole buffer) for chunked or unsized bodies."""
    fp = getattr(resp, "fp", None)
    if resp.chunked or resp.length is None or not hasattr(fp, "readinto1"):
        return resp.readinto
    left = [resp.length]

    def read(mv: memoryview) -> int:
        if left[0] <= 0:
            return 0
        want = mv[: min(len(mv), left[0])]
        n = fp.readinto1(want)
        if n == 0:
            raise http.client.IncompleteRead(b"", left[0])
        left[0] -= n
        resp.length = left[0]  # keeps http.client's bookkeeping right for the keep-alive reuse
        return n

    return read


def _finish_body(resp: http.client.HTTPResponse) -> None:
    """Mark a fully read response closed so its connection can carry the next request."""
    if resp.length == 0 and not resp.isclosed():
        resp.read()


def _after_failed_request(exc: BaseException, job: _Job, conn: Any, gen: int) -> "_Transient | None":
    """Close the connection after a failed request and classify the failure: None when the CDN URL
    expired (renewed here; retry at once), else the retryable error (a refused TLS certificate is
    raised as permanent). Network errors are resets, timeouts and malformed responses."""
    conn.close()
    if isinstance(exc, _Expired):
        job.renew_url(gen)
        return None
    if isinstance(exc, _Transient):
        return exc
    _raise_if_tls_refused(exc, job)
    return _Transient(_describe(exc))


def _raise_if_tls_refused(exc: BaseException, job: _Job) -> None:
    """A certificate the client refuses will not get better by retrying."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        raise DownloadError(f"TLS certificate verification failed: {exc.verify_message or exc}", model=job.model,
                            url=job.display, permanent=True,
                            hint="the server's certificate is not trusted; fix the source URL or the CA bundle "
                                 "(SSL_CERT_FILE)") from None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = exc.__class__.__name__
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return f"read timeout ({name})"
    return f"{name}: {text}" if text else name


class _Connection:
    """One keep-alive HTTP/1.1 connection, owned by one worker thread.

    The body loop runs on stdlib `http.client` + `readinto` into a fixed buffer rather than on
    httpx: measured on this machine against a local nginx, httpx's `iter_raw` costs ~1.2 s of CPU
    per GiB (h11 copies every block twice) and `http.client.readinto` ~0.3 s, which is the
    difference between missing and meeting the throughput target on 2 cores. httpx stays in use
    for resolution (HEAD, redirects, hub semantics).
    """

    def __init__(self, dl: "Downloader", job: _Job | None = None) -> None:
        self.dl = dl
        self.job = job
        self.conn: http.client.HTTPConnection | None = None
        self.origin: tuple[str, str, int] | None = None
        self.reused = False

    def _open(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        cfg = self.dl.config
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=cfg.connect_timeout_s, context=self.dl._ssl_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=cfg.connect_timeout_s)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(cfg.read_timeout_s)
        if self.job is not None:
            with self.job.lock:
                self.job.sockets.add(conn.sock)
        return conn

    def get(self, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """GET `url` (following up to 5 redirects; Authorization dropped when the origin changes)."""
        headers = {**headers, "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
        for _ in range(6):
            resp = self._get_once(url, headers)
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("location"):
                nxt = urljoin(url, resp.getheader("location") or "")
                self.close()
                if urlsplit(nxt)[:2] != urlsplit(url)[:2]:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                url = nxt
                continue
            return resp
        raise _Transient("too many redirects on the download URL")

    def _get_once(self, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        u = urlsplit(url)
        scheme = u.scheme.lower()
        if scheme not in ("http", "https") or not u.hostname:
            raise DownloadError(f"cannot download from {redact_url(url)}", permanent=True)
        origin = (scheme, u.hostname, u.port or (443 if scheme == "https" else 80))
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        for attempt in (0, 1):
            if self.conn is None or self.origin != origin:
                self.close()
                self.conn, self.origin, self.reused = self._open(*origin), origin, False
            try:
                self.conn.request("GET", target, headers=headers)
                return self.conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # an idle keep-alive connection closed by the server: one fresh try
                was_reused = self.reused
                self.close()
                if not was_reused or attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def done(self, resp: http.client.HTTPResponse) -> None:
        """The body was consumed: keep the connection for the next range, else drop it."""
        if resp.isclosed() and not resp.will_close:
            self.reused = True
        else:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            if self.job is not None and self.conn.sock is not None:
                with self.job.lock:
                    self.job.sockets.discard(self.conn.sock)
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn, self.origin, self.reused = None, None, False
