"""Put a verified source under a model's name in the store without copying it.

A hard link when the store is on the same filesystem (the store's file then stays valid whatever
happens to the cache's name for it: the bytes are shared, not borrowed), else a symlink to the
real file (a cache on another filesystem or mount, e.g. RunPod's cached models or a read-only
volume). The link is made under a temp name (`.<name>.<writer>.adopting`, never a `.part` a
download could resume and write into) and renamed into place: the model's name is either absent
or complete. Nothing here opens the source, let alone for writing; replacing or deleting the
store's name later (a new download, gc) touches only the link.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

TEMP_SUFFIX = ".adopting"


def temp_name(name: str, writer_id: str) -> str:
    return f".{name}.{writer_id}{TEMP_SUFFIX}"


def make_link(real: Path, temp: Path) -> str:
    """Link `temp` to `real`; returns "hardlink" or "symlink"."""
    _remove(temp)
    try:
        os.link(real, temp, follow_symlinks=False)
        return "hardlink"
    except OSError as exc:
        # EXDEV: another filesystem or mount; EPERM/EACCES: protected_hardlinks or a foreign owner;
        # EMLINK: too many links; EROFS: a read-only mount. A symlink works in all of them.
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EROFS, errno.ENOTSUP):
            raise
    os.symlink(os.path.abspath(real), temp)
    return "symlink"


def publish(temp: Path, final: Path) -> None:
    os.replace(temp, final)  # replaces a name (an old link or file), never writes through it
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


remove = _remove
