"""What one range response means: the internal outcomes of a request, and the checks every
response passes before a byte of its body is written (status by the store's one table in
failures.py, Content-Range, encoding, and the file's validator)."""

from __future__ import annotations

import http.client
import re
from typing import TYPE_CHECKING

from i2v_worker.store.errors import DownloadError, IntegrityError
from i2v_worker.store.failures import Failure, classify_status
from i2v_worker.store.sources import parse_retry_after

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.store.transfer.state import FileDownload

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Transient(Exception):
    """Retry this request after a backoff. `slow`: cut by the minimum-throughput rule (counts as a
    failure whatever the request delivered)."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None,
                 slow: bool = False) -> None:
        super().__init__(message)
        self.retry_after, self.status, self.slow = retry_after, status, slow


class Expired(Exception):
    """The transfer URL is refused (403/410): resolve again and continue."""


class RangeIgnored(Exception):
    """The server answered 200 (the whole body) to a Range request."""


class Aborted(Exception):
    """The download is stopping (cancel, or a failure elsewhere)."""


class Changed(Exception):
    """The file at the URL is not the version this download started with. `stale_record`: the
    version it differs from is the one a resume record named (this process never saw it served)."""

    def __init__(self, message: str, *, stale_record: bool = False) -> None:
        super().__init__(message)
        self.stale_record = stale_record


def raise_for_status(dl: "FileDownload", resp: http.client.HTTPResponse) -> None:
    code = resp.status
    kind = classify_status(code)
    if kind is Failure.EXPIRED:
        raise Expired(f"HTTP {code}")
    if kind is Failure.TRANSIENT:
        raise Transient(f"HTTP {code}", retry_after=parse_retry_after(resp.getheader("retry-after"),
                                                                      now=dl.clock.time), status=code)
    if code == 401:
        raise DownloadError("access denied (HTTP 401) on the download URL", model=dl.model, url=dl.display,
                            permanent=True, status=401, hint="set HF_TOKEN / credentials with access to the file")
    if code == 404:
        raise DownloadError("the download URL answered 404 (not found)", model=dl.model, url=dl.display,
                            permanent=True, status=404, hint="check the source URI; the file may have been removed")
    if code == 416:
        raise IntegrityError(f"the server cannot serve the asked range (HTTP 416): the file is smaller than "
                             f"{dl.size} bytes", model=dl.model, url=dl.display,
                             hint="the file changed upstream or the manifest pin is wrong")
    raise DownloadError(f"unexpected HTTP {code} on the download URL", model=dl.model, url=dl.display,
                        permanent=True, status=code)


def check_range_response(dl: "FileDownload", resp: http.client.HTTPResponse, start: int, end: int,
                         sent_if_range: bool) -> None:
    """Raise unless `resp` is a 206 for exactly [start, end) of the version this download is on."""
    if resp.status in (200, 206):
        dl.check_validator(resp)
    if resp.status == 200:
        if sent_if_range:
            # same validator, yet not a 206: this server mishandles If-Range; stop sending it
            dl.if_range_refused()
            raise Transient("200 to an If-Range request with an unchanged validator (If-Range turned off)")
        raise RangeIgnored()
    if resp.status != 206:
        raise_for_status(dl, resp)
    cr = _CONTENT_RANGE.match(resp.getheader("content-range") or "")
    if not cr:
        raise Transient(f"206 without a valid Content-Range ({resp.getheader('content-range')!r})")
    a, b, total = int(cr.group(1)), int(cr.group(2)), cr.group(3)
    if total != "*" and int(total) != dl.size:
        raise IntegrityError(f"size mismatch: the server says {total} bytes, expected {dl.size}",
                             model=dl.model, url=dl.display,
                             hint="the file changed upstream or the manifest pin is wrong")
    if (a, b) != (start, end - 1):
        raise Transient(f"asked bytes {start}-{end - 1}, got Content-Range {a}-{b}")
    enc = (resp.getheader("content-encoding") or "identity").lower()
    if enc != "identity":
        raise Transient(f"the server applied Content-Encoding {enc} to a range")
    if resp.length is not None and resp.length != end - start:
        raise Transient(f"Content-Length {resp.length} does not match the range")


def content_range_start(resp: http.client.HTTPResponse) -> int | None:
    cr = _CONTENT_RANGE.match(resp.getheader("content-range") or "")
    return int(cr.group(1)) if cr else None
