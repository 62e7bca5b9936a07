"""The one table of what an HTTP status or a network failure means to the store.

Used by resolution (sources.py) and by the transfer engine alike (model: huggingface_hub's single
`hf_raise_for_status`):

- TRANSIENT: try the same URL again after a backoff (Retry-After honoured, capped by RetryPolicy);
- EXPIRED: this URL is refused but a fresh resolution may give one that works (a signed CDN URL
  past its expiry answers 403; some CDNs answer 410 Gone for an expired link). For the resolver,
  which is where fresh URLs come from, EXPIRED is final: its message says access denied / gone;
- PERMANENT: retrying cannot help (401, 404, 416, other 4xx, a refused TLS certificate).
"""

from __future__ import annotations

import enum
import http.client
import ssl


class Failure(str, enum.Enum):
    TRANSIENT = "transient"
    EXPIRED = "expired"
    PERMANENT = "permanent"


_TRANSIENT_4XX = frozenset({408, 425, 429})
_EXPIRED = frozenset({403, 410})
_PERMANENT_5XX = frozenset({501, 505})  # the server will never do it (method / HTTP version)


def classify_status(code: int) -> Failure | None:
    """None for a success or redirect (< 400), else what the failure means."""
    if code < 400:
        return None
    if code in _TRANSIENT_4XX:
        return Failure.TRANSIENT
    if code in _EXPIRED:
        return Failure.EXPIRED
    if code >= 500 and code not in _PERMANENT_5XX:
        return Failure.TRANSIENT
    return Failure.PERMANENT


def classify_exception(exc: BaseException) -> Failure:
    """A network-level failure: a refused certificate is permanent, everything else (resets,
    timeouts, refused connections, DNS hiccups, malformed responses) is transient."""
    if _refused_certificate(exc):
        return Failure.PERMANENT
    try:
        import httpx
    except ImportError:  # pragma: no cover
        httpx = None  # type: ignore[assignment]
    if isinstance(exc, (OSError, http.client.HTTPException, TimeoutError)):
        return Failure.TRANSIENT
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return Failure.TRANSIENT
    return Failure.PERMANENT


def _refused_certificate(exc: BaseException) -> bool:
    """The failure is, or was caused by, a refused TLS certificate. httpx wraps it twice
    (httpx.ConnectError from httpcore.ConnectError from ssl.SSLCertVerificationError)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe_exception(exc: BaseException) -> str:
    text = str(exc)
    name = exc.__class__.__name__
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return f"read timeout ({name})"
    return f"{name}: {text}" if text else name
