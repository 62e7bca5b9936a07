"""Download leases: one writer per model at a time on a shared store, without trusting locks.

`R/.i2v/leases/<name>.lease` is created with O_CREAT|O_EXCL and holds JSON
{holder, host, pid, started, heartbeat}. The holder rewrites the heartbeat every few seconds from
a background thread (temp + rename, so readers never see half a file). Others poll; a lease whose
heartbeat is older than `stale_after` seconds (or whose holder is a dead process on this host) is
STALE and may be taken over. Takeover renames the stale file to a name private to the taker (only
one rename of the same file can succeed), checks it is the stale lease it saw, and then creates a
fresh lease with O_EXCL.

Hand-written rather than a lock library on purpose: flock/fcntl silently succeed for everyone on
some network filesystems, and a lease must survive machines that die without releasing. The lease
only avoids duplicate work: the store's correctness never depends on it (each writer downloads to
its own temp file, verifies it, and renames atomically).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from i2v_worker.logs import log
from i2v_worker.store import disk

logger = logging.getLogger(__name__)

STALE_AFTER_S = 30.0
HEARTBEAT_EVERY_S = 5.0


@dataclass(frozen=True)
class LeaseInfo:
    holder: str
    host: str
    pid: int
    started: float
    heartbeat: float
    raw: bytes = b""
    file_mtime: float = 0.0



class Lease:
    """The lease of one model. Not reentrant; one instance per attempt."""

    def __init__(
        self,
        directory: Path,
        name: str,
        holder: str,
        *,
        clock: Callable[[], float] = time.time,
        stale_after: float = STALE_AFTER_S,
        heartbeat_every: float = HEARTBEAT_EVERY_S,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.path = directory / f"{name}.lease"
        self.name = name
        self.holder = holder
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self._clock = clock
        self.stale_after = stale_after
        self.heartbeat_every = heartbeat_every
        self._held = False
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    # --- reading --------------------------------------------------------------------------------
    def read(self) -> LeaseInfo | None:
        """The current lease, None when there is none. A file being created (empty) or unreadable
        is reported with the holder '?' and its file mtime as heartbeat."""
        try:
            raw = self.path.read_bytes()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            return None
        try:
            d = json.loads(raw)
            return LeaseInfo(str(d["holder"]), str(d["host"]), int(d["pid"]), float(d["started"]),
                             float(d["heartbeat"]), raw, mtime)
        except (ValueError, KeyError, TypeError):
            return LeaseInfo("?", "?", -1, mtime, mtime, raw, mtime)

    def is_stale(self, info: LeaseInfo) -> bool:
        if self._clock() - info.heartbeat > self.stale_after:
            return True
        # Same machine: a holder process that is gone left the lease behind (SIGKILL, OOM).
        return info.host == self.host and info.pid > 0 and info.pid != self.pid and not disk.pid_alive(info.pid)

    # --- taking ---------------------------------------------------------------------------------
    def _content(self) -> bytes:
        now = self._clock()
        return json.dumps({"holder": self.holder, "host": self.host, "pid": self.pid,
                           "started": self._started or now, "heartbeat": now}).encode()

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._started = self._clock()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content())
        finally:
            os.close(fd)
        self._held = True
        return True

    def take_over(self, seen: LeaseInfo) -> bool:
        """Replace the stale lease `seen`; True when this caller now holds the lease."""
        private = self.path.with_name(f".{self.path.name}.{self.holder}.takeover")
        try:
            os.rename(self.path, private)  # of several takers, one rename succeeds
        except FileNotFoundError:
            return False
        try:
            got = private.read_bytes()
        except OSError:
            got = b""
        if got != seen.raw:
            # We moved a fresh lease someone just wrote: put it back unless a new one exists.
            try:
                os.link(private, self.path)
            except OSError:
                pass
            private.unlink(missing_ok=True)
            return False
        private.unlink(missing_ok=True)
        log(logger, logging.WARNING, "took over a stale download lease", model=self.name,
            previous_holder=seen.holder, previous_host=seen.host,
            heartbeat_age_s=round(self._clock() - seen.heartbeat, 1))
        return self.try_acquire()

    # --- holding --------------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                self.refresh()
            except OSError as exc:  # a flaky network volume: keep downloading, try again later
                log(logger, logging.WARNING, "lease heartbeat failed", model=self.name, error=str(exc))

    def refresh(self) -> None:
        info = self.read()
        if info is None:  # someone removed it (gc, a takeover race): recreate ours
            if not self.try_acquire():
                self._mark_lost(None)
            return
        if info.holder != self.holder:
            self._mark_lost(info)
            return
        tmp = self.path.with_name(f".{self.path.name}.{self.holder}.tmp")
        tmp.write_bytes(self._content())
        os.replace(tmp, self.path)

    def _mark_lost(self, info: LeaseInfo | None) -> None:
        if not self.lost:
            log(logger, logging.WARNING, "lost the download lease; continuing (the publish is still atomic)",
                model=self.name, now_held_by=info.holder if info else "?")
        self.lost = True
        self._held = False
        self._stop.set()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self._held:
            return
        self._held = False
        info = self.read()
        if info is not None and info.holder == self.holder:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
