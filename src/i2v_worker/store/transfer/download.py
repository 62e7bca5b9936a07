"""The `Downloader`: one per store, serving every download (from several threads at once).

For a file it opens (or resumes) the part file, picks the path (ranged when the size is known, one
stream otherwise or when the server ignores Range), and turns what happened into the public
outcome: `Transferred`, `TransferCancelled` (part and record kept), `SourceChangedError` (record
dropped), `DiskFullError` / `IntegrityError` (the caller deletes the part) or `DownloadError`.

Resume: any part file whose record (record.py) is about the same file (size and sha256, else the
source's etag) resumes, whoever wrote it; only the missing ranges are fetched, and the kept ones
are hashed from disk in order by the same hasher pass. A record whose validator differs from what
resolution sees now is about an older version: ignored.

A file that changes upstream mid-download (a response with another ETag / Last-Modified than the
download is tied to; `If-Range` makes a conforming server answer 200 with the new version instead
of a mixed 206) is never stitched: the record is dropped and, when no sha256 is expected (an
unpinned https:// file), the download restarts once from zero on the new version; otherwise (or on
a second change) it fails with "the file changed upstream".
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable

from i2v_worker.logs import log
from i2v_worker.store.clock import Cancel, Clock, SystemClock
from i2v_worker.store.errors import (DiskFullError, DownloadError, IntegrityError, SourceChangedError, StoreError,
                                     TransferCancelled)
from i2v_worker.store.sources import ResolvedSource, redact_url
from i2v_worker.store.transfer.config import ConnectionBudget, TransferConfig
from i2v_worker.store.transfer.http import Transport
from i2v_worker.store.transfer.local import copy_local
from i2v_worker.store.transfer.partfile import LocalIOError, datasync, disk_full, prepare
from i2v_worker.store.transfer.ranged import download_ranges
from i2v_worker.store.transfer.ranges import RangeSet, Scheduler
from i2v_worker.store.transfer.record import (ResumeRecord, boot_id, drop_sidecar, read_sidecar, update_sidecar,
                                              write_sidecar)
from i2v_worker.store.transfer.responses import Aborted, Changed, RangeIgnored
from i2v_worker.store.transfer.state import FileDownload
from i2v_worker.store.transfer.stream import download_stream
from i2v_worker.store.transfer.types import Transferred

logger = logging.getLogger("i2v_worker.store.transfer")

Progress = Callable[[int, "int | None"], None]


class Downloader:
    def __init__(self, config: TransferConfig, *, budget: ConnectionBudget | None = None,
                 clock: Clock | None = None, ssl_context: object = None, transport: Transport | None = None) -> None:
        self.config = config
        self.budget = budget if budget is not None else ConnectionBudget(config.max_connections)
        self.clock = clock or SystemClock()
        self.transport = transport or Transport(connect_timeout_s=config.connect_timeout_s,
                                                read_timeout_s=config.read_timeout_s, ssl_context=ssl_context)
        self._renew_lock = threading.Lock()
        self._boot_id = boot_id()

    def download(self, source: ResolvedSource, part_path: Path | str, *, model: str | None = None,
                 reresolve: Callable[[], ResolvedSource] | None = None, progress: Progress | None = None,
                 cancel: Cancel | None = None, expected_size: int | None = None,
                 expected_sha256: str | None = None) -> Transferred:
        """Download `source` into `part_path` (resuming from its range record when it is about the
        same file). `expected_size` / `expected_sha256` (manifest pins) take precedence over what
        the server announced. `cancel` (anything with `is_set()`) is checked after every block."""
        part = Path(part_path)
        size = expected_size if expected_size is not None else source.size
        sha = (expected_sha256 or source.sha256 or None)
        sha = sha.lower() if sha else None
        display = source.display_url or redact_url(source.url)
        if source.size is not None and size is not None and source.size != size:
            raise IntegrityError(f"the source serves {source.size} bytes, expected {size}", model=model, url=display,
                                 hint="the file changed upstream or the manifest pin is wrong")
        if source.is_local:
            return copy_local(source, part, size, sha, model, progress, cancel, clock=self.clock,
                              preallocate=self.config.preallocate)
        restarted = False
        while True:
            try:
                return self._download_http(source, part, size, sha, model, reresolve, progress, cancel)
            except Changed as exc:
                drop_sidecar(part)  # never resume from bytes of two versions
                # Start over once when nothing pins the content (an unpinned https:// file: the new
                # version is as good as the old), or when the kept bytes were of a version this
                # process never saw served (a resume record); else the pinned content is gone.
                if restarted or not (sha is None or exc.stale_record):
                    raise SourceChangedError(
                        f"{exc}; nothing was published", model=model, url=display,
                        hint="the next attempt starts over on the new version; pin a revision or a sha256 "
                             "in the manifest to get one fixed version") from None
                restarted = True
                log(logger, logging.WARNING, "the file changed upstream: starting over on the version served now",
                    model=model, url=display, reason=str(exc))
                if reresolve is not None:
                    source = reresolve()
                if size is not None and source.size is not None and source.size != size:
                    raise SourceChangedError(f"the file changed upstream during the download (size {size} -> "
                                             f"{source.size}); nothing was published", model=model, url=display,
                                             hint="start the download again") from None

    # ---- http ----------------------------------------------------------------------------------------
    def _transport_for(self, source: ResolvedSource) -> Transport:
        """The transport, or for a job-named URL the same one under the source's egress policy."""
        return self.transport if source.egress is None else self.transport.with_egress(source.egress)

    def _download_http(self, source: ResolvedSource, part: Path, size: int | None, sha: str | None,
                       model: str | None, reresolve: Callable[[], ResolvedSource] | None,
                       progress: Progress | None, cancel: Cancel | None) -> Transferred:
        t0 = self.clock.monotonic()
        part.parent.mkdir(parents=True, exist_ok=True)
        done, validator = self._resumable(part, size, sha, source)
        # never O_TRUNC: the store may have created and fallocated the part already (its space claim
        # other writers see); bytes outside the record are never trusted, whatever they are
        fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            dl = FileDownload(config=self.config, clock=self.clock, transport=self._transport_for(source),
                              budget=self.budget,
                              renew_lock=self._renew_lock, source=source, part=part, fd=fd, size=size or 0,
                              expected_sha=sha, model=model, reresolve=reresolve, cancel=cancel,
                              scheduler=None, validator=validator)
            dl.validator_from_record = bool(done.total()) and validator is not None and source.validator is None
            resumed = 0
            try:
                if size is None:
                    digest, size = download_stream(dl, hashlib.sha256(), expected=None, progress=progress,
                                                   checkpoint=None)
                else:
                    prepare(fd, part, size, model, preallocate=self.config.preallocate)
                    dl.scheduler = Scheduler(size, self.config.chunk_size, done)
                    resumed = dl.scheduler.resumed
                    if resumed:
                        log(logger, logging.INFO, "resuming download", model=model, url=dl.display,
                            resumed_bytes=resumed, size=size, gaps=len(done.missing(size)))
                    # kept ranges may be only `written` (same kernel): make them durable before the
                    # record calls them `done`
                    self._record(dl, dl.scheduler.snapshot(), sync=bool(resumed))
                    try:
                        dl.durable = [s for s in dl.scheduler.snapshot()]
                        digest = download_ranges(dl, progress=progress, checkpoint=lambda durable=True: self._checkpoint(dl, durable))
                    except RangeIgnored:
                        log(logger, logging.WARNING, "server ignores Range requests, falling back to one stream",
                            model=model, url=dl.display)
                        dl.abort.clear()
                        dl.range_ignored, dl.error, resumed = False, None, 0
                        self._record(dl, [], sync=False)
                        digest, _ = download_stream(dl, hashlib.sha256(), expected=size, progress=progress,
                                                    checkpoint=lambda pos: self._record(dl, [(0, pos)] if pos else [], sync=True))
            except Aborted:
                if dl.cancelled():
                    raise TransferCancelled("download cancelled; the part file is kept for resume", model=model) from None
                raise DownloadError("the download stopped", model=model, url=dl.display) from None
            except (Changed, StoreError):
                raise
            except BaseException as exc:
                raise self._public_error(dl, exc) from exc
            self._finish_checks(dl, digest, size, sha)
            took = max(self.clock.monotonic() - t0, 1e-6)
            connections = dl.connections_used
            log(logger, logging.INFO, "download complete", model=model, url=dl.display, size=size,
                fetched=dl.fetched, resumed=resumed, seconds=round(took, 2),
                mib_s=round(dl.fetched / took / 2**20, 1), connections=connections)
            return Transferred(size=size, sha256=digest, resumed_bytes=resumed, fetched_bytes=dl.fetched,
                               connections=connections)
        finally:
            os.close(fd)

    def _resumable(self, part: Path, size: int | None, sha: str | None,
                   source: ResolvedSource) -> tuple[RangeSet, object]:
        """The ranges of `part` that can be kept, and the validator the download is tied to."""
        if size is None:
            return RangeSet(), source.validator
        rec = read_sidecar(part)
        if rec is None or not rec.same_file(size, sha, source.etag):
            return RangeSet(), source.validator
        if rec.validator is not None and rec.validator.conflicts(source.validator):
            log(logger, logging.INFO, "the partial download is of an older version of the file: starting over",
                path=str(part))
            return RangeSet(), source.validator
        try:
            on_disk = part.stat().st_size
        except OSError:
            return RangeSet(), source.validator
        return rec.usable(self._boot_id).clipped(on_disk), rec.validator or source.validator

    def _record(self, dl: FileDownload, spans: list[tuple[int, int]], *, sync: bool,
                written: list[tuple[int, int]] | None = None) -> None:
        if sync:
            datasync(dl.fd)
        rec = ResumeRecord(size=dl.size, sha256=dl.expected_sha, etag=dl.source.etag, validator=dl.validator,
                           done=tuple(spans), written=tuple(written or ()), boot_id=self._boot_id)
        try:
            if written is None:
                write_sidecar(dl.part, rec)
            else:
                update_sidecar(dl.part, rec)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not spans:
                raise disk_full(dl.part, dl.size, dl.model, exc) from None
            log(logger, logging.WARNING, "cannot update the resume record", model=dl.model, error=str(exc))

    def _checkpoint(self, dl: FileDownload, durable: bool = True) -> None:
        """Record the written ranges: `durable` syncs the part first and records them as `done`;
        otherwise they go to `written` (trusted on this kernel only), the durable set unchanged.
        A failed checkpoint only costs resume progress."""
        assert dl.scheduler is not None
        spans = dl.scheduler.snapshot()  # taken before the sync: every byte in it is written
        if not durable:
            with dl.lock:
                kept = list(dl.durable)
            self._record(dl, kept, sync=False, written=spans)
            return
        try:
            datasync(dl.fd)
        except OSError as exc:
            log(logger, logging.WARNING, "cannot sync the part file", model=dl.model, error=str(exc))
            return
        dl.durable = spans
        self._record(dl, spans, sync=False)

    def _finish_checks(self, dl: FileDownload, digest: str, size: int, sha: str | None) -> None:
        actual = os.fstat(dl.fd).st_size
        if actual != size:
            raise IntegrityError(f"size mismatch: wrote {actual} bytes, expected {size}", model=dl.model,
                                 url=dl.display, hint="try again; if it persists the source is inconsistent")
        if sha and digest != sha:
            drop_sidecar(dl.part)  # the ranges are not trustworthy: never resume from them
            raise IntegrityError(f"sha256 mismatch: expected {sha}, got {digest}", model=dl.model, url=dl.display,
                                 hint="the bytes received are corrupt or the source changed; delete the part "
                                      "file and try again; if it persists the source or the pin is wrong")

    @staticmethod
    def _public_error(dl: FileDownload, exc: BaseException) -> BaseException:
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, LocalIOError):
            exc = exc.error
        if isinstance(exc, OSError):
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return disk_full(dl.part, dl.size, dl.model, exc)
            return DownloadError(f"I/O error on the part file {dl.part}: {exc.strerror or exc}", model=dl.model,
                                 url=dl.display, hint="check the volume; the part file is kept for resume")
        return DownloadError(f"{exc.__class__.__name__}: {exc}", model=dl.model, url=dl.display)


__all__ = ["Downloader", "DiskFullError"]
