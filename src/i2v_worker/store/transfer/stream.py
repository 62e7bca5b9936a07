"""One stream from offset 0: for a file of unknown size, or a server that ignores Range.

The body is written in order and hashed inline. A retry asks for `Range: bytes=pos-`; if the server
answers 200 again the first `pos` bytes are skipped (never appended twice). Every response is
checked against the file's validator like the ranged path.
"""

from __future__ import annotations

import http.client
import os
from typing import Any, Callable

from i2v_worker.logs import Throttle
from i2v_worker.store.errors import DownloadError, IntegrityError
from i2v_worker.store.transfer.http import Connection, body_reader
from i2v_worker.store.transfer.partfile import pwrite_all
from i2v_worker.store.transfer.ranged import NET_BLOCK, failed_request
from i2v_worker.store.transfer.responses import (Aborted, Expired, Transient, content_range_start,
                                                 raise_for_status)
from i2v_worker.store.transfer.state import FileDownload

_PROGRESS_S = 0.5
_CHECKPOINT_S = 2.0


def download_stream(dl: FileDownload, hasher: Any, *, expected: int | None,
                    progress: Callable[[int, int | None], None] | None,
                    checkpoint: Callable[[int], None] | None) -> tuple[str, int]:
    """Returns (sha256, size). `checkpoint(pos)` records [0, pos) as done (known size only)."""
    state = {"pos": 0}
    failures = 0
    throttles = (Throttle(_PROGRESS_S, dl.clock.monotonic), Throttle(_CHECKPOINT_S, dl.clock.monotonic))
    throttles[1].ready()
    conn = Connection(dl.transport, dl.sockets)
    buf = bytearray(NET_BLOCK)
    try:
        while True:
            if dl.stopped():
                if checkpoint:
                    checkpoint(state["pos"])
                raise Aborted()
            if not dl.budget.acquire(dl.stop):
                continue
            before = state["pos"]
            url, headers, gen = dl.current_url()
            try:
                try:
                    complete = _stream_once(dl, url, headers, hasher, state, expected, progress, checkpoint,
                                            throttles, conn, buf)
                finally:
                    dl.budget.release()
                if complete:
                    pos = state["pos"]
                    if expected is None:
                        os.ftruncate(dl.fd, pos)
                    if progress:
                        progress(pos, expected)
                    if checkpoint:
                        checkpoint(pos)
                    return hasher.hexdigest(), pos
                if dl.stopped():
                    continue
                raise Transient(f"body ended at {state['pos']} of {expected} bytes")
            except (Expired, Transient, OSError, http.client.HTTPException) as exc:
                err = failed_request(dl, exc, conn, gen)
                if err is None:
                    continue
            failures = 0 if (state["pos"] > before and not err.slow) else failures + 1
            if failures >= dl.retry.max_attempts:
                raise DownloadError(f"gave up after {failures} failed attempts (last error: {err})",
                                    model=dl.model, url=dl.display, status=err.status,
                                    hint="the server or network is unreliable; try again later")
            dl.clock.wait(dl.retry.delay(failures or 1, err.retry_after), dl.stop)
    finally:
        conn.close()


def _stream_once(dl: FileDownload, url: str, headers: dict[str, str], hasher: Any, state: dict[str, int],
                 expected: int | None, progress: Callable[[int, int | None], None] | None,
                 checkpoint: Callable[[int], None] | None, throttles: tuple[Throttle, Throttle],
                 conn: Connection, buf: bytearray) -> bool:
    """One GET of the rest of the body; True when the body is complete."""
    cfg = dl.config
    pos = state["pos"]
    h = dict(headers)
    if pos:
        h["Range"] = f"bytes={pos}-"
    resp = conn.get(url, h)
    code = resp.status
    skip = 0
    if code == 206:
        if content_range_start(resp) != pos:
            raise Transient(f"bad Content-Range {resp.getheader('content-range')!r}")
    elif code == 200:
        skip = pos  # the whole body again: skip what is already written and hashed
    else:
        raise_for_status(dl, resp)
    dl.check_validator(resp)
    enc = (resp.getheader("content-encoding") or "identity").lower()
    if enc != "identity":
        raise DownloadError(f"the server sends Content-Encoding {enc} despite Accept-Encoding: identity",
                            model=dl.model, url=dl.display, permanent=True, hint="use another source or mirror")
    mv = memoryview(buf)
    read = body_reader(resp)
    now = dl.clock.monotonic
    window_start, window_bytes = now(), 0
    min_bytes = cfg.min_throughput_bps * cfg.throughput_window_s
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
                                 model=dl.model, url=dl.display,
                                 hint="the file changed upstream or the manifest pin is wrong")
        pwrite_all(dl.fd, data, pos, dl.part, expected, dl.model)
        hasher.update(data)
        pos += n
        state["pos"] = pos
        dl.count_fetched(n)
        window_bytes += n
        t = now()
        if t - window_start >= cfg.throughput_window_s:
            if window_bytes < min_bytes:
                raise Transient(f"too slow: {window_bytes} bytes in {t - window_start:.0f}s", slow=True)
            window_start, window_bytes = t, 0
        if dl.stopped():
            return False
        if progress and throttles[0].ready():
            progress(pos, expected)
        if checkpoint and throttles[1].ready():
            checkpoint(pos)
    conn.done(resp)
    return skip == 0 and (expected is None or pos == expected)
