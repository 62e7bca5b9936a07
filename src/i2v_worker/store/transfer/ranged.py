"""Parallel ranged download of one file of known size into its preallocated part file.

Workers (one keep-alive connection each) take pieces from the `Scheduler` in file order, GET each
(`Range`, `If-Range` once the validator is known, `Accept-Encoding: identity`), check the answer
(responses.py) and `pwrite` every block at its offset as it arrives: memory per connection is one
1 MiB buffer, whatever the file size. The supervisor (the calling thread) adapts the number of
workers to the link (`ConnectionGovernor`), reports progress, checkpoints the range record and
starts early writeback; the `InOrderHasher` follows the contiguous prefix.

Failure rules: transient failures (reset, idle-read timeout, throughput under `min_throughput_bps`
over `throughput_window_s`, 429/5xx) retry the piece from where it stopped, after the one
RetryPolicy's backoff on the injected clock; a piece gives up after `max_attempts` consecutive
failures, where only a request that kept up the minimum throughput resets the count (a slow-loris
server that trickles bytes fails in bounded time). Expired URLs are renewed (state.renew_url).
"""

from __future__ import annotations

import http.client
import logging
import threading
from typing import Callable

from i2v_worker.logs import Throttle, log
from i2v_worker.store.errors import DownloadError
from i2v_worker.store.failures import Failure, classify_exception, describe_exception
from i2v_worker.store.transfer.hasher import HASH_BLOCK, InOrderHasher
from i2v_worker.store.transfer.http import Connection, TooManyRedirects, body_reader
from i2v_worker.store.transfer.partfile import datasync, pwrite_all, start_writeback
from i2v_worker.store.transfer.ranges import Piece
from i2v_worker.store.transfer.responses import (Aborted, Changed, Expired, RangeIgnored, Transient,
                                                 check_range_response)
from i2v_worker.store.transfer.state import FileDownload

logger = logging.getLogger("i2v_worker.store.transfer")

NET_BLOCK = 1 * 2**20  # body buffer per connection (readinto, then pwrite)
_SUPERVISE_S = 0.05
_PROGRESS_S = 0.5
_CHECKPOINT_S = 2.0  # make the written ranges durable and record them at least this often...
_CHECKPOINT_MIN_BYTES = 8 * 2**20  # ...and every max(this, 1% of the file) of progress (what a crash can cost)
_RECORD_S = 0.05  # record the written (not yet durable) ranges this often (what a SIGKILL can cost)
# (the durable sync runs on its own thread, DurableSyncer, so a slow fdatasync never delays this)
_WRITEBACK_MIN = 16 * 2**20


class DurableSyncer:
    """The part file's disk I/O, off the supervisor's thread: on each `request()` it takes a
    snapshot of the ranges, fdatasyncs the part and publishes the snapshot as `dl.durable`; in
    between it starts early writeback of the hashed prefix (`writeback_from`, a callable giving the
    hashed offset; None disables it). Both can block for seconds on a busy volume (sync_file_range
    too, when the device queue is congested); meanwhile the supervisor keeps recording the written
    ranges 20 times a second (what a SIGKILL costs stays small)."""

    _WRITEBACK_POLL_S = 0.1

    def __init__(self, dl: FileDownload, writeback_from: Callable[[], int] | None = None) -> None:
        self.dl = dl
        self._writeback_from = writeback_from
        self._flushed = 0
        self._want = threading.Event()
        self._stop = threading.Event()
        self._busy = False
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"i2v-sync-{dl.model or 'file'}")
        self._thread.start()

    def request(self) -> bool:
        """Start a sync unless one is running; False when busy."""
        if self._busy:
            return False
        self._busy = True
        self._want.set()
        return True

    def _run(self) -> None:
        dl = self.dl
        while True:
            if not self._want.wait(self._WRITEBACK_POLL_S):
                if self._writeback_from is not None:
                    self._flushed = _writeback(dl, self._writeback_from(), self._flushed)
                continue
            self._want.clear()
            if self._stop.is_set():
                return
            spans = dl.scheduler.snapshot() if dl.scheduler else []  # before the sync: all written
            try:
                datasync(dl.fd)
            except OSError as exc:
                log(logger, logging.WARNING, "cannot sync the part file", model=dl.model, error=str(exc))
            else:
                with dl.lock:
                    dl.durable = spans
            self._busy = False

    def close(self) -> None:
        self._stop.set()
        self._want.set()
        self._thread.join()


class ConnectionGovernor:
    """How many connections one file uses: start with `initial`, double while each measuring window
    is faster (by `gain`) than the best before; after two windows that are not, stay, or go back to
    the count of the best window when the last one was clearly (by `gain`) slower (extra workers
    finish their piece and stop; noise must not halve a capped CDN's connections): an open link saturates
    the CPU with a few connections, where more only add contention; a CDN that caps each connection
    keeps rewarding more. Never above `cap`."""

    def __init__(self, initial: int, cap: int, window_s: float, gain: float, now: Callable[[], float]) -> None:
        self.cap = max(1, cap)
        self.target = min(initial, self.cap)
        self.window_s, self.gain, self.now = window_s, gain, now
        self.best = 0.0
        self.best_target = self.target
        self.flat = 0
        self.frozen = self.target >= self.cap
        self._t0: float | None = None
        self._b0 = 0

    def observe(self, done_bytes: int) -> int:
        """Feed the file's byte count; returns the number of connections wanted now."""
        if self.frozen:
            return self.target
        t = self.now()
        if self._t0 is None:
            if done_bytes <= 0:
                return self.target  # the first window starts with the first bytes, not with the connects
            self._t0, self._b0 = t, done_bytes
            return self.target
        if t - self._t0 < self.window_s:
            return self.target
        rate = (done_bytes - self._b0) / (t - self._t0)
        self._t0, self._b0 = t, done_bytes
        grew = rate > self.best * self.gain
        if rate > self.best:
            self.best, self.best_target = rate, self.target
        if grew:
            self.flat = 0
            if self.target >= self.cap:
                self.frozen = True
            else:
                self.target = min(self.cap, self.target * 2)
        else:
            self.flat += 1
            if self.flat >= 2:
                self.frozen = True
                if rate * self.gain < self.best:  # clearly worse than with fewer: go back to those
                    self.target = self.best_target
        return self.target


def download_ranges(dl: FileDownload, *, progress: Callable[[int, int | None], None] | None,
                    checkpoint: Callable[..., None]) -> str:
    """Fetch every missing piece; returns the sha256 of the whole file. Raises the internal
    outcomes RangeIgnored / Changed / Aborted (cancel), or the first worker's error."""
    cfg = dl.config
    sched = dl.scheduler
    assert sched is not None
    hasher = InOrderHasher(dl.fd, sched, use_mmap=cfg.hash_mmap, name=f"i2v-hash-{dl.model or 'file'}")
    hasher.on_failure = dl.fail
    hasher.start()
    cap = max(1, min(cfg.connections_per_file, len(sched.pieces)))
    governor = ConnectionGovernor(cfg.initial_connections, cap, cfg.adapt_interval_s, cfg.adapt_gain,
                                  dl.clock.monotonic)
    workers: list[threading.Thread] = []

    def add_workers(n: int) -> None:
        for _ in range(n):
            w = threading.Thread(target=_worker, args=(dl, len(workers)), daemon=True,
                                 name=f"i2v-dl-{dl.model or 'file'}-{len(workers)}")
            workers.append(w)
            w.start()

    add_workers(governor.target)
    dl.connections_used = dl.connections_wanted = governor.target
    progress_throttle = Throttle(_PROGRESS_S, dl.clock.monotonic)
    checkpoint_throttle = Throttle(_CHECKPOINT_S, dl.clock.monotonic)
    checkpoint_throttle.ready()
    record_throttle = Throttle(_RECORD_S, dl.clock.monotonic)
    every = max(_CHECKPOINT_MIN_BYTES, dl.size // 100)
    synced_at = sched.done_bytes()
    syncer = DurableSyncer(dl, (lambda: hasher.hashed) if cfg.early_writeback else None)
    try:
        while True:
            alive = [w for w in workers if w.is_alive()]
            if not alive:
                break
            alive[0].join(timeout=_SUPERVISE_S)
            if dl.cancelled() and not dl.abort.is_set():
                dl.interrupt()
            dl.sockets.shutdown_overdue()  # headers not complete within the read timeout
            want = governor.observe(sched.done_bytes() - sched.resumed)
            dl.connections_wanted = want  # workers above it stop after their piece
            if want > len(workers) and sched.remaining_pieces() > 0 and not dl.stopped():
                add_workers(min(want - len(workers), sched.remaining_pieces()))
            dl.connections_used = min(want, len(workers))
            if progress and progress_throttle.ready():
                progress(sched.done_bytes(), dl.size)
            done_now = sched.done_bytes()
            if (done_now - synced_at >= every or checkpoint_throttle.ready()) and syncer.request():
                checkpoint_throttle.ready(force=True)
                synced_at = done_now
            if record_throttle.ready():
                checkpoint(False)
    except BaseException:
        dl.interrupt()
        for w in workers:
            w.join()
        hasher.stop()
        syncer.close()
        checkpoint()
        raise
    syncer.close()
    if dl.error is not None or dl.range_ignored or dl.stopped() or not sched.complete():
        hasher.stop()
        if not isinstance(dl.error, Changed):
            checkpoint()
        if dl.error is not None:
            raise dl.error
        if dl.range_ignored and not dl.cancelled():
            raise RangeIgnored()
        raise Aborted()
    digest = hasher.finish()
    checkpoint()
    if progress:
        progress(dl.size, dl.size)
    return digest


def _writeback(dl: FileDownload, hashed: int, flushed: int) -> int:
    """Ask the kernel to start writing [flushed, hashed) out now (non-blocking), so the fdatasync of
    the next checkpoint and the fsync before publish have little left to do."""
    if hashed - flushed < _WRITEBACK_MIN:
        return flushed
    if not start_writeback(dl.fd, flushed, hashed - flushed):
        return dl.size  # unsupported here: stop trying for this file
    return hashed


def _worker(dl: FileDownload, index: int) -> None:
    conn = Connection(dl.transport, dl.sockets)
    buf = bytearray(NET_BLOCK)  # the only body buffer of this connection
    try:
        while not dl.stopped():
            if index >= dl.connections_wanted:
                return  # the governor settled on fewer connections
            piece = dl.scheduler.take() if dl.scheduler else None
            if piece is None:
                return
            _fetch_piece(dl, piece, conn, buf)
    except Aborted:
        return
    except RangeIgnored:
        with dl.lock:
            dl.range_ignored = True
        dl.interrupt()
    except BaseException as exc:  # noqa: BLE001 - reported to the supervisor
        dl.fail(exc)
    finally:
        conn.close()


def _fetch_piece(dl: FileDownload, piece: Piece, conn: Connection, buf: bytearray) -> None:
    """Fetch [piece.filled, piece.end) until complete, retrying transient failures from where it stopped."""
    failures = 0
    while piece.filled < piece.end:
        if dl.stopped() or not dl.budget.acquire(dl.stop):
            raise Aborted()
        before = piece.filled
        url, headers, gen = dl.current_url()
        try:
            try:
                _get_piece(dl, piece, url, headers, conn, buf)
            finally:
                dl.budget.release()
            if piece.filled >= piece.end:
                return
            raise Transient("the body ended before the end of the range")
        except (Expired, Transient, OSError, http.client.HTTPException) as exc:
            err = failed_request(dl, exc, conn, gen)
            if err is None:
                continue
        if dl.stopped():
            raise Aborted()
        failures = 0 if (piece.filled > before and not err.slow) else failures + 1
        if failures >= dl.retry.max_attempts:
            raise DownloadError(
                f"gave up on bytes {piece.filled}-{piece.end - 1} after {failures} failed attempts "
                f"(last error: {err})", model=dl.model, url=dl.display, status=err.status,
                hint="the server or network is unreliable or too slow; try again later "
                     "(the part file is kept for resume)")
        delay = dl.retry.delay(failures or 1, err.retry_after)
        if dl.retry_log.ready():
            log(logger, logging.WARNING, "range failed, retrying", model=dl.model, url=dl.display,
                offset=piece.filled, error=str(err), wait_s=round(delay, 2))
        if dl.clock.wait(delay, dl.stop):
            raise Aborted()


def failed_request(dl: FileDownload, exc: BaseException, conn: Connection, gen: int) -> Transient | None:
    """After a request on `conn` failed (both download paths): None when the URL had expired (it
    is renewed: retry at once), else the Transient failure to count; a permanent one raises."""
    conn.close()
    if isinstance(exc, Expired):
        dl.renew_url(gen)
        return None
    return exc if isinstance(exc, Transient) else _network_failure(dl, exc)


def _network_failure(dl: FileDownload, exc: BaseException) -> Transient:
    if isinstance(exc, TooManyRedirects) or classify_exception(exc) is Failure.PERMANENT:
        import ssl

        if isinstance(exc, ssl.SSLCertVerificationError):
            raise DownloadError(f"TLS certificate verification failed: {exc.verify_message or exc}", model=dl.model,
                                url=dl.display, permanent=True,
                                hint="the server's certificate is not trusted; fix the source URL or the CA "
                                     "bundle (SSL_CERT_FILE)") from None
        raise DownloadError(describe_exception(exc), model=dl.model, url=dl.display, permanent=True) from None
    return Transient(describe_exception(exc))


def _get_piece(dl: FileDownload, piece: Piece, url: str, headers: dict[str, str], conn: Connection,
               buf: bytearray) -> None:
    """One ranged GET for [piece.filled, piece.end), written in place as it arrives."""
    h = dict(headers)
    h["Range"] = f"bytes={piece.filled}-{piece.end - 1}"
    if_range = dl.if_range()
    if if_range:
        h["If-Range"] = if_range
    resp = conn.get(url, h)
    try:
        check_range_response(dl, resp, piece.filled, piece.end, sent_if_range=bool(if_range))
    except Changed as exc:
        dl.fail(exc)
        raise Aborted() from None
    _stream_into(dl, piece, resp, buf)
    conn.done(resp)


def _stream_into(dl: FileDownload, piece: Piece, resp: http.client.HTTPResponse, buf: bytearray) -> None:
    cfg = dl.config
    now = dl.clock.monotonic
    mv = memoryview(buf)
    window_start = now()
    window_bytes = 0
    min_bytes = cfg.min_throughput_bps * cfg.throughput_window_s
    read = body_reader(resp)
    sched = dl.scheduler
    assert sched is not None
    while piece.filled < piece.end:
        n = read(mv[: min(len(mv), piece.end - piece.filled)])
        if not n:
            return
        pwrite_all(dl.fd, mv[:n], piece.filled, dl.part, dl.size, dl.model)
        sched.advance(piece, n)
        dl.count_fetched(n)
        window_bytes += n
        t = now()
        if t - window_start >= cfg.throughput_window_s:
            if window_bytes < min_bytes:
                raise Transient(f"too slow: {window_bytes} bytes in {t - window_start:.0f}s "
                                f"(< {cfg.min_throughput_bps} B/s)", slow=True)
            window_start, window_bytes = t, 0
        if dl.stopped():
            raise Aborted()


__all__ = ["download_ranges", "ConnectionGovernor", "HASH_BLOCK", "NET_BLOCK"]
