"""Errors of the model store. Each says what failed, for which model and URL, and what to do."""

from __future__ import annotations


class StoreError(Exception):
    """Base class. `model` is the manifest entry name when one is concerned."""

    def __init__(self, message: str, *, model: str | None = None, hint: str | None = None):
        self.model = model
        self.hint = hint
        text = message if model is None or model in message else f"{model}: {message}"
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)


class ManifestError(StoreError):
    """A manifest problem, located by file, entry and field."""

    def __init__(self, message: str, *, file: str, entry: str | None = None, field: str | None = None):
        self.file, self.entry, self.field = file, entry, field
        where = file + (f": models.{entry}" if entry else "") + (f".{field}" if field else "")
        super().__init__(f"{where}: {message}")


class DownloadError(StoreError):
    """A transfer failed. `permanent` errors (401, 404, size or hash mismatch) are not retried."""

    def __init__(self, message: str, *, model: str | None = None, url: str | None = None,
                 hint: str | None = None, permanent: bool = False, status: int | None = None,
                 retry_after: float | None = None):
        self.url, self.permanent, self.status = url, permanent, status
        self.retry_after = retry_after  # seconds the server asked to wait (transient errors)
        if url and url not in message:
            message = f"{message} [{url}]"
        super().__init__(message, model=model, hint=hint)


class IntegrityError(DownloadError):
    """Downloaded bytes do not match the expected size or sha256; nothing was published."""

    def __init__(self, message: str, **kw):
        kw.setdefault("permanent", True)
        super().__init__(message, **kw)


class EgressRefused(DownloadError):
    """A job-named URL (or one of its redirects) leads where the egress rule forbids
    (i2v_worker/egress.py): `rule` is blocked_address, host_not_allowed, unresolvable or scheme.
    Never retried; nothing was downloaded from it."""

    def __init__(self, rule: str, message: str, **kw):
        kw.setdefault("permanent", True)
        kw.setdefault("hint", "only public internet hosts (and the allow-list's, when one is set) are fetched")
        super().__init__(message, **kw)
        self.rule = rule


class SourceChangedError(DownloadError):
    """The file changed upstream during the download (its ETag / Last-Modified / sha256 differ from
    the ones the download started with): nothing mixed is published; the next attempt starts over."""

    def __init__(self, message: str, **kw):
        kw.setdefault("permanent", True)
        super().__init__(message, **kw)


class TransferCancelled(StoreError):
    """The cancel event was set (or the lease was lost): the part file and its sidecar are kept for
    a later resume."""


class OfflineError(StoreError):
    """HF_HUB_OFFLINE=1 and the model is not in the store."""


class DiskFullError(StoreError):
    """Not enough free space (before starting, or ENOSPC while writing); temp files were removed.

    `needed`: bytes this download still had to allocate; `available`: bytes it could have had (free
    on the volume minus `reserved`); `reserved`: bytes other writers' part files had claimed but not
    yet allocated. Raised before starting, needed > available always holds."""

    def __init__(self, message: str, *, model: str | None = None, hint: str | None = None,
                 needed: int | None = None, available: int | None = None, reserved: int = 0):
        self.needed, self.available, self.reserved = needed, available, reserved
        super().__init__(message, model=model, hint=hint)


class StoreLayoutError(StoreError):
    """The store root or one of its folders cannot be used (read-only, a file, permissions).
    `path` is the offending path."""

    def __init__(self, message: str, *, path: str, hint: str | None = None, model: str | None = None):
        self.path = path
        super().__init__(message, model=model, hint=hint)


class LeaseLost(StoreError):
    """This writer's download lease was taken over (it was frozen or cut off longer than the stale
    time): it stopped without publishing; the new holder finishes the download."""


class LeaseTimeout(StoreError):
    """Another worker holds the download lease and did not finish within the wait limit."""
