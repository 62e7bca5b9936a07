"""file:// sources: a copy with a large buffer, hashed inline (no ranges, no resume needed)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Callable

from i2v_worker.logs import Throttle
from i2v_worker.store.clock import Cancel, Clock
from i2v_worker.store.errors import DownloadError, IntegrityError, TransferCancelled
from i2v_worker.store.sources import ResolvedSource
from i2v_worker.store.transfer.partfile import disk_full, prepare
from i2v_worker.store.transfer.types import Transferred

COPY_BLOCK = 8 * 2**20


def copy_local(source: ResolvedSource, part: Path, size: int | None, sha: str | None, model: str | None,
               progress: Callable[[int, int | None], None] | None, cancel: Cancel | None, *,
               clock: Clock, preallocate: bool) -> Transferred:
    display = source.display_url or source.url
    part.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    mv = memoryview(bytearray(COPY_BLOCK))
    throttle = Throttle(0.5, clock.monotonic)
    pos = 0
    try:
        src_fd = os.open(source.url, os.O_RDONLY)
    except OSError as exc:
        raise DownloadError(f"cannot open local file: {exc.strerror}", model=model, url=display,
                            permanent=True) from None
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: keeps a store's preallocation
        try:
            total = size if size is not None else os.fstat(src_fd).st_size
            prepare(fd, part, total, model, preallocate=preallocate)
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
                        raise disk_full(part, total, model, exc) from None
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
