"""The part file on disk: preallocation, positioned writes, early writeback, disk-full errors."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from i2v_worker.store.errors import DiskFullError

_prepare_lock = threading.Lock()  # one preallocation at a time (see prepare)


class LocalIOError(Exception):
    """An I/O error on the part file (not retried like network errors)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def disk_full(part: Path, size: int | None, model: str | None, exc: OSError) -> DiskFullError:
    try:
        free = shutil.disk_usage(part.parent).free
    except OSError:
        free = -1
    need = size if size is not None else 0
    return DiskFullError(
        f"no space left on the device while writing {part.name} in {part.parent}: the file needs "
        f"{need} bytes ({need / 1e9:.2f} GB), {free} bytes free ({exc.strerror})",
        model=model, needed=need, available=free,
        hint="free some space or point I2V_MODEL_DIR at a larger volume; the part file and its "
             ".json sidecar can be deleted (transfer.remove_part)")


def prepare(fd: int, part: Path, size: int, model: str | None, *, preallocate: bool) -> None:
    """Size the part file: fallocate so ENOSPC shows up now, not hours in (sparse truncate where the
    filesystem cannot). One at a time: two concurrent fallocates that together exceed the free
    space can both fail half-way (seen on tmpfs), where one after the other one succeeds."""
    cur = os.fstat(fd).st_size
    if cur > size:
        os.ftruncate(fd, size)
    if preallocate and size > 0:
        try:
            with _prepare_lock:
                if fallocate(fd, size):
                    return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(part, size, model, exc) from None
            raise
    if cur < size:
        os.ftruncate(fd, size)


def pwrite_all(fd: int, data: bytes | memoryview, pos: int, part: Path, size: int | None, model: str | None) -> None:
    mv = memoryview(data)
    while len(mv):
        try:
            n = os.pwrite(fd, mv, pos)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(part, size, model, exc) from None
            raise LocalIOError(exc) from exc
        mv = mv[n:]
        pos += n


def datasync(fd: int) -> None:
    os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)


_libc_fallocate: Any = None


def fallocate(fd: int, size: int) -> bool:
    """Allocate [0, size) with the fallocate(2) syscall; False where the filesystem or OS lacks it.

    Not `os.posix_fallocate`: where the filesystem has no fallocate (NFS v3, many FUSE network
    volumes) glibc emulates it by writing every block, minutes of I/O for a 10 GB model.
    """
    global _libc_fallocate
    import ctypes

    if _libc_fallocate is None:
        try:
            func = ctypes.CDLL(None, use_errno=True).fallocate
            func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
            func.restype = ctypes.c_int
            _libc_fallocate = func
        except (OSError, AttributeError):
            _libc_fallocate = False
    if _libc_fallocate is False:
        return False
    if _libc_fallocate(fd, 0, 0, size) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err))


_libc_sync_file_range: Any = None


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """sync_file_range(2) with SYNC_FILE_RANGE_WRITE: start writeback of a range without waiting
    (Python's os module lacks it). False where unavailable; errors are ignored (an optimisation
    only: durability still comes from fdatasync/fsync)."""
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
