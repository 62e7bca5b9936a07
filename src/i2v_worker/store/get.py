"""`i2v-worker models get URL DEST`: one-off download of a single URL with the store's engine.

Same guarantees as the store (own temp file next to DEST, size/sha256 verified, atomic rename,
resume after a kill), without a manifest. Used by users and by bench/ (keep imports lean: no torch).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from i2v_worker.store import disk, publish
from i2v_worker.store.errors import DiskFullError, IntegrityError

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.config import Settings


@dataclass(frozen=True)
class GetResult:
    path: Path
    size: int
    sha256: str
    seconds: float
    resumed_bytes: int
    fetched_bytes: int


def _dest_path(url_path: str | None, dest: Path) -> Path:
    if dest.is_dir():
        name = (url_path or "").rstrip("/").rsplit("/", 1)[-1] or "download"
        return dest / name
    return dest


def get_url(url: str, dest: str | Path, *, settings: "Settings", sha256: str | None = None,
            size: int | None = None, progress: Callable[[int, int | None], None] | None = None,
            cancel: threading.Event | None = None, show_progress: bool | None = None) -> GetResult:
    from i2v_worker.store.sources import HubConfig, SourceResolver, parse_source, redact_url
    from i2v_worker.store.transfer import Downloader, TransferConfig, make_client, make_ssl_context, remove_part

    try:
        src = parse_source(url)
    except ValueError as exc:
        raise IntegrityError(f"bad URL {redact_url(url)!r}: {exc}", hint="use hf://org/repo@rev/path or https://...",
                             permanent=True) from None
    url_path = src.path if src.scheme in ("hf", "file", "s3") else (src.url or "").split("?", 1)[0]
    dest_path = _dest_path(url_path, Path(dest).expanduser())
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise IntegrityError("--sha256 must be 64 hexadecimal characters", permanent=True)

    transfer = TransferConfig.from_settings(settings)
    tls = make_ssl_context()  # one CA bundle load (~35 ms) for the resolver and the range connections
    client = make_client(transfer, verify=tls)
    resolver = SourceResolver(HubConfig.from_settings(settings), client=client)
    downloader = Downloader(transfer, ssl_context=tls)
    writer = disk.new_writer_id()
    temp = dest_path.parent / disk.part_name(dest_path.name, writer)

    t0 = time.monotonic()
    resolved = resolver.resolve(src, model=dest_path.name)
    want_size = resolved.size if size is None else size
    if publish.recognise(dest_path, want_size, sha256 or resolved.sha256) is not None:
        # DEST already holds exactly these bytes (e.g. killed right after the rename): one hash pass
        assert want_size is not None
        return GetResult(dest_path, want_size, sha256 or resolved.sha256 or "", time.monotonic() - t0, 0, 0)
    publish.adopt_part(dest_path.parent, dest_path.name, temp, now=time.time())  # dead local writers only
    bar = None
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    if show_progress and progress is None:
        bar = _Bar(dest_path.name, want_size)
        progress = bar.update
    try:
        if want_size is not None:
            disk.reserve(temp, want_size, [dest_path.parent], model=dest_path.name,
                         preallocate=transfer.preallocate)
        got = downloader.download(resolved, temp, model=dest_path.name,
                                  reresolve=lambda: resolver.resolve(src, model=dest_path.name),
                                  progress=progress, cancel=cancel, expected_size=size, expected_sha256=sha256)
        publish.publish(temp, dest_path, got_size=got.size, got_sha256=got.sha256, expected_size=want_size,
                        expected_sha256=sha256 or resolved.sha256, model=dest_path.name)
    except (IntegrityError, DiskFullError):
        remove_part(temp)
        raise
    except OSError as exc:
        if disk.is_enospc(exc):
            remove_part(temp)
        raise
    finally:
        if bar is not None:
            bar.close()
    return GetResult(dest_path, got.size, got.sha256, time.monotonic() - t0, got.resumed_bytes, got.fetched_bytes)


class _Bar:
    def __init__(self, name: str, total: int | None) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self._p = Progress(TextColumn(name), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True)
        self._task = self._p.add_task(name, total=total)
        self._p.start()

    def update(self, done: int, total: int | None = None) -> None:
        self._p.update(self._task, completed=done, total=total)

    def close(self) -> None:
        self._p.stop()
