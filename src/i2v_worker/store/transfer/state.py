"""`FileDownload`: the shared state of one file being downloaded (a Downloader runs several at
once): where to GET from (renewed on expiry), the version it is tied to, the range schedule, and
the stop signal every worker checks between blocks."""

from __future__ import annotations

import http.client
import logging
import threading
from pathlib import Path
from typing import Callable

from i2v_worker.logs import Throttle, log
from i2v_worker.store.clock import AnyCancel, Cancel, Clock
from i2v_worker.store.errors import DownloadError, SourceChangedError
from i2v_worker.store.retry import RetryPolicy
from i2v_worker.store.sources import ResolvedSource, Validator, redact_url
from i2v_worker.store.transfer.config import ConnectionBudget, TransferConfig
from i2v_worker.store.transfer.http import SocketSet, Transport
from i2v_worker.store.transfer.ranges import Scheduler
from i2v_worker.store.transfer.responses import Changed

logger = logging.getLogger("i2v_worker.store.transfer")


class FileDownload:
    def __init__(self, *, config: TransferConfig, clock: Clock, transport: Transport, budget: ConnectionBudget,
                 renew_lock: threading.Lock, source: ResolvedSource, part: Path, fd: int, size: int,
                 expected_sha: str | None, model: str | None, reresolve: Callable[[], ResolvedSource] | None,
                 cancel: Cancel | None, scheduler: Scheduler | None, validator: Validator | None) -> None:
        self.config, self.clock, self.transport, self.budget = config, clock, transport, budget
        self.retry: RetryPolicy = config.retry
        self._renew_lock = renew_lock
        self.source = source
        self.url, self.headers, self.url_gen = source.url, dict(source.headers), 0
        self.display = source.display_url or redact_url(source.url)
        self.part, self.fd, self.size = part, fd, size
        self.expected_sha = expected_sha
        self.model = model
        self.reresolve = reresolve
        self.cancel = cancel
        self.abort = threading.Event()
        self.stop = AnyCancel(self.abort, cancel)  # what every wait and loop checks
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.range_ignored = False
        self.fetched = 0
        self.connections_used = 1  # connections the file ended up with (ranged.ConnectionGovernor)
        self.connections_wanted = 1 << 30  # workers with an index at or above it stop (the governor's choice)
        self.reresolves_without_progress = 0
        self.scheduler = scheduler
        self.durable: list[tuple[int, int]] = []  # ranges last recorded as durable
        self.validator = validator
        self.validator_from_record = False  # set by the Downloader when it came from a resume record
        self.send_if_range = True
        self.sockets = SocketSet(clock.monotonic)
        self.retry_log = Throttle(5.0, clock.monotonic)

    # -- stopping -------------------------------------------------------------------------------
    def stopped(self) -> bool:
        return self.stop.is_set()

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def interrupt(self) -> None:
        """Stop every worker: set abort and wake reads blocked in a socket at once."""
        self.abort.set()
        self.sockets.shutdown_all()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.interrupt()

    def count_fetched(self, n: int) -> None:
        with self.lock:
            self.fetched += n
            self.reresolves_without_progress = 0

    # -- the version this download is tied to ----------------------------------------------------------
    def check_validator(self, resp: http.client.HTTPResponse) -> None:
        """Tie the download to the first validator seen; a response naming another version means
        the file changed upstream (raises Changed before a byte of it is written)."""
        got = Validator.from_headers(resp.getheader)
        with self.lock:
            if self.validator is None:
                self.validator = got
                return
            if self.validator.conflicts(got):
                raise Changed(f"the file changed upstream during the download (validator {self._v(self.validator)} "
                              f"-> {self._v(got)})", stale_record=self.validator_from_record)
            if got is not None:
                self.validator_from_record = False  # this process has now seen that version served

    @staticmethod
    def _v(v: Validator | None) -> str:
        if v is None:
            return "none"
        return v.etag or v.last_modified or "none"

    def if_range(self) -> str | None:
        with self.lock:
            return self.validator.if_range() if (self.validator is not None and self.send_if_range) else None

    def if_range_refused(self) -> None:
        with self.lock:
            self.send_if_range = False

    # -- the URL --------------------------------------------------------------------------------------
    def current_url(self) -> tuple[str, dict[str, str], int]:
        with self.lock:
            return self.url, self.headers, self.url_gen

    def renew_url(self, seen_gen: int) -> None:
        """403/410 on `seen_gen`'s URL: re-resolve once (other workers reuse the result)."""
        with self._renew_lock:
            with self.lock:
                if self.url_gen != seen_gen:
                    return  # another worker already renewed it
                self.reresolves_without_progress += 1
                rounds = self.reresolves_without_progress
            if self.reresolve is None:
                raise DownloadError("the download URL was refused (HTTP 403) and cannot be renewed",
                                    model=self.model, url=self.display, permanent=True, status=403,
                                    hint="check access to the source; retry later")
            if rounds > self.config.max_reresolves:
                raise DownloadError(f"the download URL is still refused (HTTP 403) after {rounds - 1} re-resolves",
                                    model=self.model, url=self.display, permanent=True, status=403,
                                    hint="check access to the source (token, licence, bucket policy)")
            new = self.reresolve()
            old = self.source
            changed = (new.size is not None and new.size != self.size) or \
                bool(old.sha256 and new.sha256 and old.sha256 != new.sha256) or \
                bool(not (old.sha256 and new.sha256) and old.etag and new.etag and old.etag != new.etag)
            if self.expected_sha and new.sha256 and new.sha256 != self.expected_sha:
                changed = True
            if changed:
                raise SourceChangedError(
                    f"the file changed upstream during the download (etag {old.sha256 or old.etag} -> "
                    f"{new.sha256 or new.etag}, size {self.size} -> {new.size})",
                    model=self.model, url=self.display,
                    hint="pin a revision (hf://org/repo@<commit>/path) and start the download again")
            log(logger, logging.INFO, "download URL renewed after 403", model=self.model, url=self.display)
            with self.lock:
                self.url, self.headers = new.url, dict(new.headers)
                self.url_gen += 1
                if self.expected_sha:
                    # the resolution vouched for the same content (sha256): a new URL (another CDN
                    # edge or object) may present it with another ETag, learnt from its first answer
                    self.validator, self.validator_from_record = None, False
