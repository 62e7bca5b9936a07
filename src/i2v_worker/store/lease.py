"""Download leases: one writer per model at a time on a shared store, without trusting locks.

`R/.i2v/leases/<name>.lease` holds JSON {holder, host, pid, started, heartbeat}. The lease IS an
inode: whoever's inode sits under that name holds it, and the holder keeps a descriptor open on it.

- Acquire: write the JSON to a private temp file, then `link()` it to the lease name. link() fails
  with EEXIST when a lease exists, and is atomic on every filesystem we care about, NFS included
  (the classic NFS-safe exclusive create; a lost reply is recovered by checking st_nlink == 2).
- Heartbeat: the holder first checks that the lease name still points at ITS inode
  (stat(name).st_ino == fstat(fd).st_ino), then rewrites the JSON in place through its descriptor
  (pwrite of a fixed-width record + fsync, so NFS clients see it). A holder that was taken over
  can only ever write into its own, now unlinked, inode: it can never touch its successor's lease.
- Takeover of a STALE lease (heartbeat older than `stale_after`, or a dead pid on this host) is one
  atomic step: the taker links a fresh lease to a claim name derived from the stale content,
  `.<name>.lease.<sha256(stale bytes)[:16]>.<n>.claim` (link: only one taker can create it), checks
  the lease still holds exactly those stale bytes, and renames its fresh lease over the lease name.
  No moment exists without a lease file (no move-aside-and-put-back window in which a third process
  acquires). A second taker that saw the same stale bytes loses the claim; a taker that saw older
  bytes finds a different lease content and gives up. A claim whose taker died (older than
  `stale_after`) is passed over by claiming number n+1. Claims are removed once used; `gc` removes
  abandoned ones.
- Transient filesystem errors (ESTALE, EIO from a flaky volume) never mark the lease lost: the
  heartbeat retries. The lease is lost only on positive evidence (another inode under the name), or
  when the holder could not refresh it for longer than `stale_after` (others may take over by then).
  Losing it sets `lost` (an Event). The download's abort signal is `stop_signal`: lost, or EXPIRED
  (no successful heartbeat for nearly the stale time: frozen by SIGSTOP or a VM pause, or stuck in a
  slow fsync), checked without a system call before each write, so a writer that wakes up after
  others may have taken over stops at once instead of waiting for its heartbeat thread.

Hand-written rather than a lock library on purpose: flock/fcntl silently succeed for everyone on
some network filesystems, and a lease must survive machines that die without releasing. The lease
only avoids duplicate work: the store's correctness never depends on it (each writer downloads to
its own temp file, verifies it, and renames atomically).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
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
RECORD_BYTES = 512  # fixed width: an in-place rewrite never leaves a longer old tail behind
CLAIM_SUFFIX = ".claim"
_MAX_CLAIMS = 64


@dataclass(frozen=True)
class LeaseInfo:
    holder: str
    host: str
    pid: int
    started: float
    heartbeat: float
    raw: bytes = b""
    file_mtime: float = 0.0


class LeaseUnreadable(OSError):
    """The lease file exists but could not be read (ESTALE, EIO, ...): try again later."""


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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = directory / f"{name}.lease"
        self.name = name
        self.holder = holder
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self._clock = clock
        self._monotonic = monotonic
        self.stale_after = stale_after
        self.heartbeat_every = heartbeat_every
        self.lost = threading.Event()  # set once the lease is lost: the download's abort signal
        self._fd: int | None = None  # open on OUR lease inode while held
        # Every use of _fd (fstat, pwrite, fsync, relink, close) holds this lock: a descriptor
        # closed under a heartbeat stuck in fsync could be reused by another file (a part!) and the
        # heartbeat would then write lease JSON into it. release() never closes it under the lock
        # holder: it hands the close to the heartbeat thread instead.
        self._fd_lock = threading.Lock()
        self._close_on_exit = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._last_ok = 0.0  # monotonic time of the last successful refresh
        self.previous: LeaseInfo | None = None  # the stale lease this one took over, if any

    @property
    def held(self) -> bool:
        return self._fd is not None and not self.lost.is_set()

    def expired(self) -> bool:
        """Our last successful heartbeat is so old that others may find the lease stale any moment
        (we were frozen, or the heartbeat is stuck in a slow fsync): a holder must not act on the
        lease then. Costs no system call: checked before every write of the download."""
        limit = max(self.stale_after - self.heartbeat_every, self.stale_after / 2)
        return self._fd is not None and self._monotonic() - self._last_ok > limit

    @property
    def stop_signal(self) -> "_StopSignal":
        """Set (`is_set()`) when the lease is lost or expired: the download's abort signal."""
        return _StopSignal(self)

    # --- reading --------------------------------------------------------------------------------
    def read(self) -> LeaseInfo | None:
        """The current lease, None when there is none (or it cannot be read just now). A file being
        written (empty/unparsable) is reported with holder '?' and its file mtime as heartbeat."""
        try:
            return self.read_strict()
        except LeaseUnreadable:
            return None

    def read_strict(self) -> LeaseInfo | None:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
                mtime = os.fstat(fh.fileno()).st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LeaseUnreadable(exc.errno, f"cannot read the lease {self.path}: {exc.strerror}") from exc
        return _parse(raw, mtime)

    def is_stale(self, info: LeaseInfo) -> bool:
        if self._clock() - info.heartbeat > self.stale_after:
            return True
        # Same machine: a holder process that is gone left the lease behind (SIGKILL, OOM).
        return info.host == self.host and info.pid > 0 and info.pid != self.pid and not disk.pid_alive(info.pid)

    # --- taking ---------------------------------------------------------------------------------
    def _content(self) -> bytes:
        now = self._clock()
        body = json.dumps({"holder": self.holder, "host": self.host, "pid": self.pid,
                           "started": self._started or now, "heartbeat": now}).encode()
        return body.ljust(RECORD_BYTES) if len(body) < RECORD_BYTES else body

    def _fresh_file(self) -> tuple[Path, int]:
        """A private temp file holding our lease record, and a descriptor on it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._started = self._started or self._clock()
        # unique per attempt: two threads of one store share a holder id
        tmp = self.path.with_name(f".{self.path.name}.{self.holder}.{os.urandom(4).hex()}.new")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self._content())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            disk.remove_quietly(tmp)
            raise
        return tmp, fd

    def try_acquire(self) -> bool:
        """Create the lease when there is none; True when this caller now holds it."""
        fd = self._link_fresh()
        if fd is None:
            return False
        self._hold(fd)
        return True

    def _link_fresh(self) -> int | None:
        """Link a fresh record at the lease's name unless one is there: its descriptor, or None."""
        tmp, fd = self._fresh_file()
        try:
            won = _link_exclusive(tmp, self.path, fd)
        finally:
            disk.remove_quietly(tmp)
        if not won:
            os.close(fd)
            return None
        return fd

    def take_over(self, seen: LeaseInfo) -> bool:
        """Replace the stale lease `seen` in one atomic step; True when this caller now holds it."""
        digest = hashlib.sha256(seen.raw).hexdigest()[:16]
        tmp, fd = self._fresh_file()
        claim: Path | None = None
        won = False
        try:
            for n in range(_MAX_CLAIMS):
                candidate = self.path.with_name(f".{self.path.name}.{digest}.{n}{CLAIM_SUFFIX}")
                if _link_exclusive(tmp, candidate, fd):
                    claim = candidate
                    break
                try:  # someone else claims this stale lease: is that taker still at it?
                    age = self._clock() - candidate.stat().st_mtime
                except FileNotFoundError:
                    return False  # used and removed: the lease has a new holder
                if age < self.stale_after:
                    return False
            if claim is None:
                return False
            t_claim = self._monotonic()
            try:
                now = self.read_strict()
            except LeaseUnreadable:
                return False
            if now is None or now.raw != seen.raw or self._monotonic() - t_claim > self.stale_after / 4:
                # The holder came back (a new heartbeat), someone else replaced it already, or we
                # were frozen long enough that our check is not worth trusting: give up.
                return False
            # The one step that changes the holder: our fresh lease replaces the stale one. No other
            # taker can be between its own check and rename: it would need this claim first.
            os.rename(tmp, self.path)
            won = True
        finally:
            disk.remove_quietly(tmp)
            if claim is not None:
                disk.remove_quietly(claim)
            if not won:
                os.close(fd)
        self.previous = seen
        self._hold(fd)
        log(logger, logging.WARNING, "took over a stale download lease", model=self.name,
            previous_holder=seen.holder, previous_host=seen.host,
            heartbeat_age_s=round(self._clock() - seen.heartbeat, 1))
        return True

    def _hold(self, fd: int) -> None:
        self._fd = fd
        self.lost.clear()
        self._last_ok = self._monotonic()

    # --- holding --------------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        try:
            self._beat_loop()
        finally:
            with self._fd_lock:
                if self._close_on_exit and self._fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(self._fd)
                    self._fd = None

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                self.refresh()
            except OSError as exc:  # a flaky network volume: keep going, try again next beat
                log(logger, logging.WARNING, "lease heartbeat failed; retrying", model=self.name,
                    error=str(exc))
                if self._monotonic() - self._last_ok > self.stale_after:
                    self._mark_lost(None, reason=f"could not refresh it for over {self.stale_after:.0f} s")
            if self.lost.is_set():
                return

    def refresh(self) -> None:
        """Check we still hold the lease and write a new heartbeat. Raises OSError on a transient
        filesystem error (the lease is NOT marked lost for that)."""
        with self._fd_lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        fd = self._fd
        if fd is None or self.lost.is_set():
            return
        if self._still_held_locked():
            fd = self._fd  # _relink may have replaced it
            t = self._monotonic()  # others judge us by the time written now, not after the fsync
            os.pwrite(fd, self._content(), 0)
            os.fsync(fd)
            self._last_ok = t

    def still_held(self) -> bool:
        """Whether the lease name still points at our inode. False marks the lease lost; a
        transient error raises OSError (nothing decided)."""
        with self._fd_lock:
            return self._still_held_locked()

    def _still_held_locked(self) -> bool:
        fd = self._fd
        if fd is None or self.lost.is_set():
            return False
        mine = os.fstat(fd)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            # Removed under us (an operator, or a gc of an old version): recreate ours if nobody
            # else has taken it. Not when we are late: a taker may have had it and released it
            # since (then our part file may be gone too), and we must not come back as holder.
            late = self._monotonic() - self._last_ok > self.stale_after
            if not late and self._relink(fd):
                return True
            self._mark_lost(self.read(), reason="the lease file was removed and someone else holds it now")
            return False
        if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
            if self._monotonic() - self._last_ok > self.stale_after:
                # Frozen (SIGSTOP, VM pause) past the stale time yet nobody took over: still ours.
                log(logger, logging.WARNING, "the lease heartbeat was late but nobody took over",
                    model=self.name, late_s=round(self._monotonic() - self._last_ok, 1))
            return True
        self._mark_lost(self.read(), reason="another writer took it over")
        return False

    def _relink(self, fd: int) -> bool:
        """Our lease name is gone: link a fresh record in its place unless someone else did."""
        new_fd = self._link_fresh()
        if new_fd is None:
            return False
        os.close(fd)
        self._fd = new_fd
        return True

    def _mark_lost(self, info: LeaseInfo | None, *, reason: str) -> None:
        if not self.lost.is_set():
            log(logger, logging.WARNING, "lost the download lease; stopping this download", model=self.name,
                reason=reason, now_held_by=info.holder if info else "?")
        self.lost.set()
        self._stop.set()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self._fd_lock.acquire(timeout=1.0):
            # The heartbeat is stuck in a slow fsync holding the descriptor: it closes it on exit
            # (our lease file stays; it turns stale and is taken over like a dead holder's).
            self._close_on_exit = True
            return
        try:
            fd, self._fd = self._fd, None
        finally:
            self._fd_lock.release()
        if fd is None:
            return
        try:
            mine = os.fstat(fd)
            st = os.stat(self.path)
            if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
                # Remove only our own inode. (A taker renaming over it between the stat and the
                # unlink would lose its new lease; it then re-acquires at its next heartbeat.)
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _StopSignal:
    """Lease lost or expired, as a cancel signal (`is_set()`), for the download it protects."""

    def __init__(self, lease: Lease) -> None:
        self._lease = lease

    def is_set(self) -> bool:
        return self._lease.lost.is_set() or self._lease.expired()


def _parse(raw: bytes, mtime: float) -> LeaseInfo:
    try:
        d = json.loads(raw)
        return LeaseInfo(str(d["holder"]), str(d["host"]), int(d["pid"]), float(d["started"]),
                         float(d["heartbeat"]), raw, mtime)
    except (ValueError, KeyError, TypeError):
        return LeaseInfo("?", "?", -1, mtime, mtime, raw, mtime)


def _link_exclusive(src: Path, dst: Path, fd: int) -> bool:
    """link(src, dst); True when dst is now our inode. On NFS a retransmitted LINK can report
    EEXIST although it succeeded: st_nlink of our inode says the truth."""
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.EIO, errno.ESTALE):
            raise
    try:
        mine, st = os.fstat(fd), os.stat(dst)
    except OSError:
        return False
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)
