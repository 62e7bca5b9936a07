"""Small filesystem helpers of the store: free space, durable atomic replace, temp-file naming."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
from pathlib import Path

from i2v_worker.store.errors import DiskFullError

PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"  # the transfer engine's resume state: part_path + ".json"


def new_writer_id() -> str:
    """host-pid-random, safe in a file name; `parse_writer_id` reads host and pid back."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"


def parse_writer_id(writer_id: str) -> tuple[str, int] | None:
    parts = writer_id.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def this_host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def part_name(name: str, writer_id: str) -> str:
    return f".{name}.{writer_id}{PART_SUFFIX}"


def parse_part_name(filename: str, known_names: set[str]) -> tuple[str, str] | None:
    """`.<name>.<writer>.part` (or its `.json` sidecar) -> (name, writer) for a known model name."""
    base = filename
    for suffix in (".json.tmp", ".json"):
        if base.endswith(PART_SUFFIX + suffix):
            base = base[: -len(suffix)]
            break
    if not base.startswith(".") or not base.endswith(PART_SUFFIX):
        return None
    inner = base[1 : -len(PART_SUFFIX)]
    name, _, writer = inner.rpartition(".")
    if name in known_names and writer:
        return name, writer
    return None


def check_free_space(folder: Path, need: int, *, model: str) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        err = DiskFullError(
            f"not enough disk space in {folder}: needs {need} bytes ({need / 1e9:.2f} GB), "
            f"{free} bytes ({free / 1e9:.2f} GB) available",
            model=model,
            hint="free some space (`i2v-worker models gc` removes stale temp files and unreferenced "
            "models) or point I2V_MODEL_DIR at a larger volume",
        )
        err.needed, err.available = need, free  # type: ignore[attr-defined]
        raise err


def is_enospc(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some network filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def part_progress(part: Path) -> int:
    """Bytes of a part file verified in order (from the transfer engine's sidecar), 0 if unknown.
    The part itself is preallocated, so its size says nothing about progress."""
    import json

    try:
        with open(str(part) + ".json", "rb") as fh:
            data = json.loads(fh.read())
        verified = data.get("verified", 0)
        return verified if isinstance(verified, int) and verified > 0 else 0
    except (OSError, ValueError, AttributeError):
        return 0


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError:
            pass


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists (EPERM: it exists, owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
