"""The in-order hasher: sha256 of a part file that is written out of order, with no second pass.

Ranges arrive in any order (parallel connections, resumed gaps); the hasher thread follows the
contiguous written prefix (`Scheduler.prefix()`) and feeds sha256 with each new stretch from the
page cache, as soon as it is there. Bytes kept from an earlier attempt are read back from the part
file the same way when the prefix reaches them, so a resume needs no separate rehash pass.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from typing import Any, Callable

from i2v_worker.store.transfer.ranges import Scheduler

HASH_BLOCK = 4 * 2**20  # wake for this much new prefix; preadv block when mmap is refused
_HASH_WINDOW = 16 * 2**20  # mmap window over the part file


class FileReader:
    """Feeds a hasher with [pos, end) of a file, from the page cache.

    mmap windows of `_HASH_WINDOW` bytes (unmapped after each, so RSS stays bounded): the hash
    reads the cached pages in place instead of copying them into a buffer first. Where mmap is
    refused (some FUSE/network filesystems) it falls back to preadv into one reused buffer.
    Trade-off: a page that cannot be read back (an I/O error on a network volume after eviction)
    is a SIGBUS with mmap where preadv gives EIO; `TransferConfig(hash_mmap=False)` chooses preadv.
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
            self.buf = memoryview(bytearray(HASH_BLOCK))
        n = os.preadv(self.fd, [self.buf[: min(HASH_BLOCK, end - pos)]], pos)
        if n <= 0:
            raise OSError(errno.EIO, f"short read at {pos} while hashing")
        self.hasher.update(self.buf[:n])
        return pos + n


class InOrderHasher:
    """A thread hashing the scheduler's contiguous prefix as it grows; `finish()` returns the hex
    digest once the whole file is hashed. `stop()` abandons it (the download failed)."""

    def __init__(self, fd: int, scheduler: Scheduler, *, use_mmap: bool, name: str,
                 on_hashed: Callable[[int], None] | None = None) -> None:
        self.scheduler = scheduler
        self.sha = hashlib.sha256()
        self.reader = FileReader(fd, self.sha, use_mmap=use_mmap)
        self.hashed = 0
        self.error: BaseException | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        self.on_hashed = on_hashed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        s = self.scheduler
        try:
            while self.hashed < s.size:
                with s.changed:
                    while (s.done.prefix() - self.hashed < HASH_BLOCK and s.done.prefix() < s.size
                           and not self._stop.is_set()):
                        s.changed.wait(0.5)
                    if self._stop.is_set():
                        return
                    target = s.done.prefix()
                pos = self.hashed
                while pos < target:
                    pos = self.reader.update(pos, target)
                    if self._stop.is_set():
                        return
                self.hashed = pos
                if self.on_hashed is not None:
                    self.on_hashed(pos)
        except BaseException as exc:  # noqa: BLE001 - reported to the supervisor
            self.error = exc
            if self.on_failure is not None:
                self.on_failure(exc)

    def stop(self) -> None:
        self._stop.set()
        with self.scheduler.changed:
            self.scheduler.changed.notify_all()
        self._thread.join()

    def finish(self) -> str:
        with self.scheduler.changed:
            self.scheduler.changed.notify_all()
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.sha.hexdigest()
