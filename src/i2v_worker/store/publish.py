"""The one publish protocol of the store, used by `ModelStore` and by `models get`.

    part file  ->  verify (size, sha256)  ->  fsync  ->  still ours?  ->  rename  ->  fsync dir
               ->  record (the caller's, e.g. the verification record)  ->  drop the resume sidecar

plus the two ways an earlier attempt's work is reused:

- `adopt_part`: the part file of a dead or taken-over writer. It is COPIED into the new writer's
  own, fresh part file (only the byte ranges its resume record says are durable), never renamed:
  a rename keeps the inode, and a writer that was merely frozen (SIGSTOP, a VM pause, a hung
  volume) still has a descriptor on that inode and would go on writing into, or publishing, the
  new writer's file when it wakes. After the copy the old part is unlinked: the old writer's
  descriptor then points at an inode no name refers to, its writes reach nobody and its rename
  fails (ENOENT). The copy is copy_file_range(2): in-kernel, a reflink on btrfs/XFS, a server-side
  copy on NFS 4.2.
- `recognise`: a file already under the model's name with the expected size whose hash matches
  (a kill between the rename and the record write): one hash pass instead of a new download.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from i2v_worker.logs import log
from i2v_worker.store import disk
from i2v_worker.store.errors import DiskFullError, IntegrityError, LeaseLost

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.store.clock import Cancel

logger = logging.getLogger(__name__)

_COPY_BLOCK = 8 * 2**20


@dataclass(frozen=True)
class Adopted:
    source: Path  # the part file the bytes came from (now removed)
    bytes: int  # bytes of recorded ranges copied into the new part


def recorded_ranges(part: Path) -> list[tuple[int, int]]:
    """Half-open byte ranges of the part that its resume record says a resume on this kernel may
    keep ([] if none): the record's own trust rule (durable ranges anywhere, merely written ones on
    the kernel that wrote them)."""
    from i2v_worker.store.transfer import read_sidecar
    from i2v_worker.store.transfer.record import boot_id

    record = read_sidecar(part)
    return [] if record is None else record.usable(boot_id()).spans()


def _adoptable(writer_id: str, mtime: float, *, previous_holder: str | None, now: float,
               stale_after: float | None) -> bool:
    """A part may be reused when its writer is known to be gone: the holder of the stale lease we
    took over, a dead process on this host, or (store only) untouched for longer than the stale time."""
    if previous_holder is not None and writer_id == previous_holder:
        return True
    w = disk.parse_writer_id(writer_id)
    if w is not None and w[0] == disk.this_host() and not disk.pid_alive(w[1]):
        return True
    return stale_after is not None and now - mtime > stale_after


def adopt_part(folder: Path, name: str, temp: Path, *, now: float, previous_holder: str | None = None,
               stale_after: float | None = None, model: str | None = None,
               cancel: "Cancel | None" = None) -> Adopted | None:
    """Copy the best reusable part of `name` in `folder` into `temp` (our own fresh part) with its
    resume record, then remove it. None when there is nothing to reuse."""
    from i2v_worker.store.transfer import remove_part, sidecar_path, sidecar_tmp_path

    best: tuple[int, Path, bytes, list[tuple[int, int]]] | None = None
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    for n in names:
        parsed = disk.parse_part_name(n, {name})
        if parsed is None or not n.endswith(disk.PART_SUFFIX) or folder / n == temp:
            continue
        part = folder / n
        try:
            mtime = os.stat(part).st_mtime
            # The record first, the ranges second: ranges read later can only be a superset, so
            # the record we copy never claims bytes we did not copy.
            record = sidecar_path(part).read_bytes()
        except OSError:
            continue
        if not _adoptable(parsed[1], mtime, previous_holder=previous_holder, now=now, stale_after=stale_after):
            continue
        ranges = recorded_ranges(part)
        done = sum(b - a for a, b in ranges)
        if done > 0 and (best is None or done > best[0]):
            best = (done, part, record, ranges)
    if best is None:
        return None
    done, part, record, ranges = best
    try:
        _copy_ranges(part, temp, ranges, cancel)
        tmp = sidecar_tmp_path(temp)
        with open(tmp, "wb") as fh:  # the record read BEFORE the copy: it never claims more than we copied
            fh.write(record)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, sidecar_path(temp))
    except OSError as exc:
        remove_part(temp)
        if disk.is_enospc(exc):
            # No room for a second copy next to the old one: the old part cannot be reused safely.
            log(logger, logging.WARNING, "no room to copy a previous partial download; starting afresh",
                model=model, part=part.name)
            remove_part(part)
        return None
    remove_part(part)  # the old writer's descriptor now reaches an inode nothing names
    log(logger, logging.INFO, "resuming a previous partial download", model=model, from_writer=part.name,
        bytes_reused=done)
    return Adopted(part, done)


def _copy_ranges(src: Path, dst: Path, ranges: list[tuple[int, int]], cancel: "Cancel | None") -> None:
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(dfd, os.fstat(sfd).st_size)
            for a, b in ranges:
                pos = a
                while pos < b:
                    if cancel is not None and cancel.is_set():
                        raise OSError("cancelled while copying a previous partial download")
                    n = _copy_chunk(sfd, dfd, pos, min(_COPY_BLOCK, b - pos))
                    if n <= 0:
                        raise OSError(f"short read at {pos} copying {src.name}")
                    pos += n
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _copy_chunk(sfd: int, dfd: int, pos: int, n: int) -> int:
    if hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(sfd, dfd, n, pos, pos)
        except OSError as exc:
            if disk.is_enospc(exc):
                raise
    data = os.pread(sfd, n, pos)
    return os.pwrite(dfd, data, pos) if data else 0


def hash_file(path: Path, chunk: int = 8 * 2**20, cancel: "Cancel | None" = None) -> tuple[int, str]:
    """(size, sha256) of a file in one pass."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            if cancel is not None and cancel.is_set():
                raise OSError("cancelled while hashing")
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


def recognise(final: Path, size: int | None, sha256: str | None) -> os.stat_result | None:
    """The stat of `final` when it already holds exactly the expected bytes (one hash pass), else
    None. Needs both a size and a sha256 to compare with."""
    if size is None or sha256 is None:
        return None
    try:
        st = os.stat(final)
    except OSError:
        return None
    if st.st_size != size:
        return None
    try:
        got_size, got_sha = hash_file(final)
    except OSError:
        return None
    if got_size != size or got_sha != sha256:
        return None
    st2 = os.stat(final)
    if (st2.st_ino, st2.st_mtime_ns, st2.st_size) != (st.st_ino, st.st_mtime_ns, st.st_size):
        return None  # changed while we hashed it
    return st2


def publish(temp: Path, final: Path, *, got_size: int, got_sha256: str, expected_size: int | None,
            expected_sha256: str | None, owns: Callable[[], bool] = lambda: True,
            record: Callable[[os.stat_result], None] | None = None, model: str | None = None,
            url: str | None = None) -> os.stat_result:
    """Verify `temp` and make it `final` atomically; returns the published file's stat.

    `owns` is asked right before the rename: a writer that lost its lease (another writer took the
    download over) must not publish; it gets LeaseLost and its part is left for the new holder.
    On a verification failure or ENOSPC the part and its resume record are removed."""
    from i2v_worker.store.transfer import remove_part, sidecar_path, sidecar_tmp_path

    problem = None
    if expected_size is not None and got_size != expected_size:
        problem = f"downloaded {got_size} bytes, expected {expected_size}"
    elif expected_sha256 is not None and got_sha256 != expected_sha256:
        problem = f"sha256 of the download is {got_sha256}, expected {expected_sha256}"
    if problem:
        remove_part(temp)
        raise IntegrityError(f"{problem}; nothing was published", model=model, url=url,
                             hint="try again; if it persists the source or the manifest pin is wrong")
    try:
        disk.fsync_file(temp)
        if not owns():
            raise LeaseLost("another writer took the download over; this one stops without publishing",
                            model=model)
        os.replace(temp, final)
    except FileNotFoundError:
        # Our part is gone: a new lease holder adopted (copied and removed) it while we were frozen.
        raise LeaseLost("the part file was taken over by another writer; nothing was published",
                        model=model) from None
    except OSError as exc:
        if disk.is_enospc(exc):
            remove_part(temp)
            raise DiskFullError(f"disk full while publishing {final}: {exc.strerror}", model=model,
                                hint="free some space or point I2V_MODEL_DIR at a larger volume") from None
        raise
    disk.fsync_dir(final.parent)
    st = os.stat(final)
    if record is not None:
        try:
            record(st)
        except OSError as exc:  # published, but not recorded: the next run recognises it (one hash)
            if disk.is_enospc(exc):
                raise DiskFullError(f"disk full while writing the verification record of {final} "
                                    f"({exc.strerror}); the file itself is published and verified", model=model,
                                    hint="free some space; the next fetch recognises the file with one hash "
                                    "pass, no download") from None
            raise disk.layout_error(exc, final.parent, model=model) from None
    disk.remove_quietly(sidecar_path(temp), sidecar_tmp_path(temp))
    return st
