"""Small filesystem helpers of the store: free space, durable atomic replace, temp-file naming."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from i2v_worker.store.errors import DiskFullError, StoreLayoutError

PART_SUFFIX = ".part"


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


def parse_temp_name(filename: str) -> tuple[str, str] | None:
    """`.<name>.<writer>.part` (or its `.json` / `.json.tmp` resume record) -> (name, writer), for
    any model name (gc meets names of manifests newer than its own)."""
    base = filename
    for suffix in (".json.tmp", ".json"):
        if base.endswith(PART_SUFFIX + suffix):
            base = base[: -len(suffix)]
            break
    if not base.startswith(".") or not base.endswith(PART_SUFFIX):
        return None
    name, _, writer = base[1 : -len(PART_SUFFIX)].rpartition(".")
    return (name, writer) if name and writer else None


def parse_part_name(filename: str, known_names: set[str]) -> tuple[str, str] | None:
    """`parse_temp_name`, for one of `known_names` only."""
    parsed = parse_temp_name(filename)
    return parsed if parsed is not None and parsed[0] in known_names else None


def layout_error(exc: OSError, path: Path, *, model: str | None = None) -> StoreLayoutError:
    """A StoreLayoutError naming the path and what to do: read-only or no permission, a file where
    a folder belongs, or any other filesystem error there (a flaky or unmounted volume)."""
    import errno as e

    if exc.errno in (e.EROFS, e.EACCES, e.EPERM):
        where = Path(exc.filename) if exc.filename else path
        return StoreLayoutError(
            f"the model store is not writable at {where} ({exc.strerror})", path=str(where), model=model,
            hint="mount the volume read-write or fix its permissions, or point I2V_MODEL_DIR at a writable "
            "folder; a read-only store can only serve models already present in it",
        )
    if exc.errno in (e.ENOTDIR, e.EEXIST):
        blocker = _file_in_the_way(path)
        return StoreLayoutError(
            f"{blocker} is a file, but the model store needs a folder there", path=str(blocker), model=model,
            hint=f"move or delete {blocker}, or point I2V_MODEL_DIR at another folder",
        )
    where = Path(exc.filename) if exc.filename else path
    return StoreLayoutError(
        f"the model store cannot be used at {where}: {exc.strerror or exc}", path=str(where), model=model,
        hint="check the volume (mounted, healthy, reachable); the operation is safe to retry",
    )


def _file_in_the_way(path: Path) -> Path:
    """The first component of `path` (from the top) that exists and is not a folder."""
    for p in [*reversed(path.parents), path]:
        try:
            if not p.is_dir() and p.exists():
                return p
        except OSError:
            return p
    return path


def make_dirs(path: Path, *, model: str | None = None) -> None:
    """mkdir -p, with a StoreLayoutError for a read-only store or a file in the way."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise layout_error(exc, path, model=model) from None


@dataclass(frozen=True)
class SpaceCheck:
    """One snapshot of a volume: what is free, and how much of it other writers have claimed."""

    needed: int  # bytes this writer still has to allocate
    free: int  # bytes free on the volume (statvfs)
    reserved: int  # bytes other live part files claim (their size) but have not allocated yet
    writers: int  # how many other part files hold such a claim

    @property
    def available(self) -> int:
        return max(0, self.free - self.reserved)


def _unallocated(st: os.stat_result) -> int:
    return max(0, st.st_size - st.st_blocks * 512)


def other_reservations(part: Path, scan: list[Path], *, now: float, live_s: float) -> tuple[int, int]:
    """(bytes, count) that other writers' part files under `scan` claim and have not allocated yet.

    A writer announces its need by sizing its part file before it allocates (a sparse file of the
    final size: st_size says what it will take, st_blocks what it already has). Only parts touched in
    the last `live_s` seconds count (a writer that died before allocating claims nothing). Ties: two
    writers that announced at the same moment, both still unallocated, would each see the other and
    both give up; so a part with NOTHING allocated yet and a name sorting after ours is left out (of
    two such writers exactly one, the smaller name, goes ahead; the rare writer that counted before
    the other announced is caught by the ENOSPC retry in `reserve`)."""
    try:
        dev = os.stat(part).st_dev
    except OSError:
        dev = None
    total = count = 0
    for d in scan:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for it in entries:
            if it.path == str(part) or not it.name.startswith(".") or not it.name.endswith(PART_SUFFIX):
                continue
            try:
                st = it.stat(follow_symlinks=False)
            except OSError:
                continue
            if dev is not None and st.st_dev != dev:
                continue
            if now - max(st.st_mtime, st.st_ctime) > live_s:
                continue
            left = _unallocated(st)
            if left <= 0:
                continue
            if st.st_blocks == 0 and it.name > part.name:
                continue
            total += left
            count += 1
    return total, count


def check_space(part: Path, size: int, scan: list[Path], *, now: float, live_s: float) -> SpaceCheck:
    st = os.stat(part)
    need = max(0, size - min(size, st.st_blocks * 512))
    reserved, writers = other_reservations(part, scan, now=now, live_s=live_s)
    return SpaceCheck(needed=need, free=shutil.disk_usage(part.parent).free, reserved=reserved, writers=writers)


def disk_full_error(check: SpaceCheck, folder: Path, *, model: str | None) -> DiskFullError:
    """The one wording of 'not enough space before starting': every number from one snapshot."""
    if check.reserved:
        have = (f"{check.free} bytes ({check.free / 1e9:.2f} GB) free, of which {check.reserved} bytes "
                f"({check.reserved / 1e9:.2f} GB) are reserved by {check.writers} other download(s) in "
                f"progress, so {check.available} bytes ({check.available / 1e9:.2f} GB) available")
    else:
        have = f"{check.available} bytes ({check.available / 1e9:.2f} GB) available"
    return DiskFullError(
        f"not enough disk space in {folder}: needs {check.needed} bytes ({check.needed / 1e9:.2f} GB), {have}",
        model=model, needed=check.needed, available=check.available, reserved=check.reserved,
        hint="free some space (`i2v-worker models gc` removes stale temp files and unreferenced "
        "models) or point I2V_MODEL_DIR at a larger volume",
    )


def reserve(part: Path, size: int, scan: list[Path], *, model: str | None, live_s: float = 30.0,
            clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
            attempts: int = 6, preallocate: bool = True) -> None:
    """Claim `size` bytes for `part` on its volume, across processes and hosts, before any byte
    is fetched; DiskFullError (part removed) when they do not fit next to what others claimed.

    1. announce: size the part file (sparse) so other writers see the claim;
    2. count: free space minus what other live part files claim and have not allocated yet;
    3. allocate (fallocate) when it fits. Two allocations racing past step 2 at the same instant
       can both hit ENOSPC half-way (tmpfs undoes a failed fallocate): then withdraw, wait a random
       moment and count again, so one of them wins and the other sees its allocation.
    Where the filesystem has no fallocate (or `preallocate` is off) the claim stays a sparse size
    (others still count it)."""
    import random

    from i2v_worker.store.transfer import remove_part
    from i2v_worker.store.transfer.partfile import fallocate

    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for attempt in range(attempts):
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)  # announce (or re-announce after withdrawing)
            check = check_space(part, size, scan, now=clock(), live_s=live_s)
            if check.needed > check.available:
                if check.reserved == 0 or attempt + 1 == attempts or check.needed > check.free:
                    raise disk_full_error(check, part.parent, model=model)
            else:
                try:
                    if check.needed == 0 or not preallocate or fallocate(fd, size):
                        return
                    return  # no fallocate here: the sparse size is the claim
                except OSError as exc:
                    if not is_enospc(exc):
                        raise
                    if attempt + 1 == attempts:
                        now = check_space(part, size, scan, now=clock(), live_s=live_s)
                        if now.needed > now.available:
                            raise disk_full_error(now, part.parent, model=model) from None
                        raise DiskFullError(  # the numbers would say it fits: say what happened instead
                            f"not enough disk space in {part.parent}: allocating {now.needed} bytes failed "
                            f"{attempts} times while other downloads were allocating at the same moment "
                            f"({now.available} bytes are available now)", model=model, needed=now.needed,
                            available=now.available, reserved=now.reserved,
                            hint="try again; if it persists, free some space or point I2V_MODEL_DIR at a "
                            "larger volume") from None
            os.ftruncate(fd, 0)  # withdraw, so the other writer can go ahead
            sleep(random.uniform(0.05, 0.3) * (attempt + 1))
    except BaseException:
        os.close(fd)
        fd = -1
        remove_part(part)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


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
    """Bytes of a part file its resume record counts as written (`verified`), 0 if unknown. The
    part itself is preallocated, so its size says nothing about progress. Reads the record's JSON
    directly (its name is transfer.sidecar_path's `part + ".json"`): `status` must not import the
    transfer engine (httpx) just to show progress."""
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
