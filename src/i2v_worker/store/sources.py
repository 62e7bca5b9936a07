"""Source URIs (`hf://`, `https://`, `http://`, `file://`, `s3://`): parsing and resolution.

Resolution turns a source into a `ResolvedSource`: the URL the transfer engine GETs ranges from,
with the size and identity (etag / sha256) the server announces, and the headers to send.

Hugging Face semantics (the behaviour of huggingface.co a downloader relies on): one `HEAD {endpoint}/{repo}/resolve/{rev}/
{path}` per file, `Accept-Encoding: identity`, the token sent to the hub only, redirects NOT
followed automatically: the 302 carries `Location` (the signed CDN URL), `X-Linked-Etag` (sha256 of
LFS files), `X-Linked-Size` and `X-Repo-Commit`. `HubConfig.offline` means no network at all.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import httpx

from i2v_worker.egress import EgressPolicy
from i2v_worker.logs import log
from i2v_worker.store.clock import Cancel, Clock, SystemClock
from i2v_worker.store.errors import DownloadError, OfflineError, TransferCancelled
from i2v_worker.store.failures import Failure, classify_exception, classify_status, describe_exception
from i2v_worker.store.retry import RetryPolicy

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.config import Settings

logger = logging.getLogger("i2v_worker.store.sources")

__all__ = [
    "HubConfig", "SourceURI", "ResolvedSource", "SourceResolver", "Validator", "parse_source", "redact_url",
    "split_credentials", "parse_retry_after", "SCHEMES",
]

SCHEMES = ("hf", "https", "http", "file", "s3")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
USER_AGENT = "i2v-worker"


@dataclass(frozen=True)
class HubConfig:
    endpoint: str = "https://huggingface.co"
    token: str | None = None
    offline: bool = False

    @classmethod
    def from_settings(cls, settings: "Settings") -> "HubConfig":
        return cls(endpoint=settings.hf_endpoint.rstrip("/"), token=settings.hf_token or None,
                   offline=bool(settings.hf_offline))


@dataclass(frozen=True)
class SourceURI:
    """A parsed source. Which fields are set depends on `scheme`:

    - hf: `repo` ("org/name"), `revision` (default "main"), `path` (path in the repo)
    - http/https: `url`
    - file: `path` (absolute local path)
    - s3: `bucket`, `path` (the object key)
    """

    scheme: str
    raw: str
    repo: str | None = None
    revision: str | None = None
    path: str | None = None
    bucket: str | None = None
    url: str | None = None

    def __str__(self) -> str:
        return redact_url(self.raw)


@dataclass(frozen=True)
class Validator:
    """What identifies one version of the bytes at a transfer URL: its strong ETag and/or its
    Last-Modified date (RFC 9110 validators). Every range of a download is tied to the validator
    the download started with (`If-Range`, and a check of each response)."""

    etag: str | None = None  # as sent, quotes included ('"abc"'); weak ETags are not kept
    last_modified: str | None = None

    @classmethod
    def from_headers(cls, get: Callable[[str], str | None]) -> "Validator | None":
        etag = (get("etag") or "").strip() or None
        if etag is not None and etag.startswith("W/"):
            etag = None  # a weak ETag does not promise byte equality (and If-Range refuses it)
        lm = (get("last-modified") or "").strip() or None
        return cls(etag, lm) if (etag or lm) else None

    def if_range(self) -> str | None:
        """The If-Range value: the strong ETag, else the date."""
        return self.etag or self.last_modified

    def conflicts(self, other: "Validator | None") -> bool:
        """True when `other` names a different version (unknown fields are not compared)."""
        if other is None:
            return False
        if self.etag and other.etag:
            return self.etag != other.etag
        if self.last_modified and other.last_modified:
            return self.last_modified != other.last_modified
        return False


@dataclass(frozen=True)
class ResolvedSource:
    url: str  # what to GET ranges from (CDN URL; presigned URL for s3; a local path for file)
    size: int | None
    sha256: str | None  # from X-Linked-Etag (or S3's ChecksumSHA256) when it is a sha256, else None
    etag: str | None
    commit: str | None
    headers: dict[str, str] = field(default_factory=dict)  # Authorization only for the hub's own host
    display_url: str = ""  # without credentials or signature query, for errors and logs
    # the transfer URL's own validator when resolution saw it (http(s) HEAD on the final URL);
    # None for hf:// (the hub's X-Linked-Etag is not the CDN's ETag): learnt from the first range
    validator: Validator | None = None
    # job-named URLs (the resolver's egress policy): every connection of the download obeys it
    egress: EgressPolicy | None = None

    @property
    def is_local(self) -> bool:
        return not self.url.startswith(("http://", "https://"))


# ---- parsing ------------------------------------------------------------------------------------

def parse_source(uri: str) -> SourceURI:
    """Parse a source URI; raises ValueError with a readable reason."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("empty source URI")
    if uri != uri.strip() or any(c in uri for c in "\r\n\t"):
        raise ValueError("source URI contains whitespace or control characters")
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme (use one of {', '.join(s + '://' for s in SCHEMES)})")
    if scheme == "hf":
        return _parse_hf(uri, rest)
    if scheme in ("http", "https"):
        parts = urlsplit(uri)
        if not parts.hostname:
            raise ValueError("missing host")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return SourceURI(scheme=scheme, raw=uri, url=uri)
    if scheme == "file":
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise ValueError("file:// URIs need an absolute path (file:///abs/path)")
        path = unquote("/" + path)
        if path == "/" or path.endswith("/"):
            raise ValueError("file:// URI names a directory, not a file")
        if ".." in Path(path).parts:
            raise ValueError("file:// path must not contain '..'")
        return SourceURI(scheme="file", raw=uri, path=path)
    # s3
    bucket, _, key = rest.partition("/")
    if not _S3_BUCKET.match(bucket):
        raise ValueError(f"bad S3 bucket name {bucket!r} (3-63 lower-case letters, digits, '.', '-')")
    if not key or key.endswith("/"):
        raise ValueError("s3:// URI needs an object key (s3://bucket/key)")
    return SourceURI(scheme="s3", raw=uri, bucket=bucket, path=key)


def _parse_hf(uri: str, rest: str) -> SourceURI:
    # hf://org/repo@revision/path/in/repo  or  hf://org/repo/path/in/repo (revision "main")
    segs = rest.split("/")
    if len(segs) < 3:
        raise ValueError("expected hf://org/repo[@revision]/path/in/repo")
    org, name = segs[0], segs[1]
    revision = "main"
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = unquote(revision)  # a revision with '/' (refs/pr/1) is written refs%2Fpr%2F1
        if not revision:
            raise ValueError("empty revision after '@'")
    if "@" in org:
        raise ValueError("'@revision' goes after the repo name (hf://org/repo@revision/path)")
    for part, what in ((org, "organisation"), (name, "repo name")):
        if not _REPO_PART.match(part) or ".." in part:
            raise ValueError(f"bad {what} {part!r} (letters, digits, '.', '_', '-')")
    path_segs = [unquote(s) for s in segs[2:]]
    if any(s in ("", ".", "..") for s in path_segs):
        raise ValueError("path in the repo must not be empty or contain '.', '..' or '//'")
    return SourceURI(scheme="hf", raw=uri, repo=f"{org}/{name}", revision=revision, path="/".join(path_segs))


# ---- helpers ------------------------------------------------------------------------------------

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def redact_url(url: str) -> str:
    """The URL without user:password and without the query (signatures, tokens). Never raises,
    whatever the input (a URL that failed to parse is redacted too)."""
    url = _USERINFO.sub(r"\1", url.split("?", 1)[0].split("#", 1)[0])
    try:
        p = urlsplit(url)
    except ValueError:
        return url
    if not p.scheme or not p.netloc:
        return url
    return urlunsplit((p.scheme, p.netloc.rpartition("@")[2], p.path, "", ""))


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """`https://user:pass@host/x` -> (`https://host/x`, {"Authorization": "Basic ..."}): URL
    credentials are sent as a header on every request of the download to that origin (and dropped
    on a redirect to another), never left in a URL that could be logged."""
    p = urlsplit(url)
    if "@" not in p.netloc:
        return url, {}
    userinfo, _, hostport = p.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return urlunsplit((p.scheme, hostport, p.path, p.query, p.fragment)), {"Authorization": f"Basic {token}"}


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now())


def _unquote_etag(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"') or None


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port or _default_port(pa.scheme)) == (
        pb.scheme, pb.hostname, pb.port or _default_port(pb.scheme))


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    v = headers.get(name)
    if v is None:
        return None
    try:
        n = int(v.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


# ---- resolution ---------------------------------------------------------------------------------

class SourceResolver:
    """Resolves sources to `ResolvedSource`. Failures are classified by the store's one table
    (failures.py): transient ones (429, 5xx, network) are retried by the one RetryPolicy with the
    injected clock (Retry-After honoured up to its cap; the wait ends at once when `cancel` is
    set); the others raise `DownloadError(permanent=True)`."""

    def __init__(self, hub: HubConfig, client: httpx.Client | None = None, *,
                 s3_client_factory: Callable[[], Any] | None = None, presign_expiry_s: int = 3600,
                 retry: RetryPolicy | None = None, clock: Clock | None = None,
                 egress: EgressPolicy | None = None) -> None:
        self.hub = hub
        self._client = client if client is not None else httpx.Client(
            timeout=httpx.Timeout(30.0, connect=10.0), headers={"User-Agent": USER_AGENT})
        # http(s):// sources are job-named URLs when an egress policy is given (the job-LoRA store):
        # their HEAD goes through a client that connects to checked addresses only, no proxy
        self.egress = egress
        self._egress_client: httpx.Client | None = None
        if egress is not None:
            from i2v_worker.store.transfer.http import EgressHTTPXTransport

            self._egress_client = httpx.Client(transport=EgressHTTPXTransport(egress), trust_env=False,
                                               timeout=self._client.timeout, headers={"User-Agent": USER_AGENT})
        self._s3_client_factory = s3_client_factory
        self._s3_client: Any = None
        self.presign_expiry_s = presign_expiry_s
        self.retry = retry or RetryPolicy(max_attempts=4)
        self.clock = clock or SystemClock()

    def resolve(self, uri: str | SourceURI, *, model: str | None = None, cancel: Cancel | None = None) -> ResolvedSource:
        src = parse_source(uri) if isinstance(uri, str) else uri
        if src.scheme == "file":
            return self._resolve_file(src, model)
        if self.hub.offline:
            raise OfflineError(
                f"offline mode (HF_HUB_OFFLINE=1) forbids network access to {redact_url(src.raw)}",
                model=model, hint="the model must already be in the store; unset HF_HUB_OFFLINE to download it")
        resolve = {"hf": self._resolve_hf, "http": self._resolve_http, "https": self._resolve_http,
                   "s3": self._resolve_s3}[src.scheme]
        return self._with_retries(lambda: resolve(src, model), src, model, cancel)

    # retries for transient errors (rate limits on the resolve endpoint, 5xx, network)
    def _with_retries(self, fn: Callable[[], ResolvedSource], src: SourceURI, model: str | None,
                      cancel: Cancel | None) -> ResolvedSource:
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except DownloadError as exc:
                if exc.permanent or attempt >= self.retry.max_attempts:
                    raise
                delay = self.retry.delay(attempt, exc.retry_after)
                log(logger, logging.WARNING, "resolve failed, retrying", model=model, source=str(src),
                    error=str(exc), attempt=attempt, wait_s=round(delay, 2))
                if self.clock.wait(delay, cancel):
                    raise TransferCancelled(f"cancelled while waiting to retry the resolution of {src}",
                                            model=model) from None

    def _transient(self, message: str, *, model: str | None, url: str, status: int | None = None,
                   retry_after: float | None = None, hint: str | None = None) -> DownloadError:
        return DownloadError(message, model=model, url=url, status=status, hint=hint, permanent=False,
                             retry_after=retry_after)

    def _status_error(self, r: httpx.Response, message: str, *, model: str | None, url: str,
                      hint: str | None = None) -> DownloadError:
        """The error for a failed response, as the one table classifies its status (for the
        resolver an EXPIRED status is final: it is the place fresh URLs come from)."""
        kind = classify_status(r.status_code)
        return DownloadError(message, model=model, url=url, status=r.status_code, hint=hint,
                             permanent=kind is not Failure.TRANSIENT,
                             retry_after=parse_retry_after(r.headers.get("retry-after"), now=self.clock.time))

    # -- hf:// --------------------------------------------------------------------------------------
    def _resolve_hf(self, src: SourceURI, model: str | None) -> ResolvedSource:
        assert src.repo and src.revision and src.path
        endpoint = self.hub.endpoint.rstrip("/")
        url = f"{endpoint}/{src.repo}/resolve/{quote(src.revision, safe='')}/{quote(src.path)}"
        display = redact_url(url)
        auth = {"Authorization": f"Bearer {self.hub.token}"} if self.hub.token else {}
        headers = {"Accept-Encoding": "identity", **auth}
        # Relative redirects without X-Linked-* (renamed repos) stay on the hub: follow them
        # ourselves so the final 302 (to the CDN) and its headers are seen.
        for _hop in range(5):
            try:
                r = self._client.head(url, headers=headers, follow_redirects=False)
            except httpx.TransportError as exc:
                if classify_exception(exc) is Failure.PERMANENT:
                    raise DownloadError(f"cannot reach the hub: {describe_exception(exc)}", model=model,
                                        url=display, permanent=True) from None
                raise self._transient(f"cannot reach the hub: {exc.__class__.__name__}: {exc}",
                                      model=model, url=display) from None
            h = r.headers
            linked = "x-linked-etag" in h or "x-linked-size" in h
            if r.is_redirect and not linked and "location" in h:
                nxt = urljoin(url, h["location"])
                if _same_origin(nxt, url):
                    url, display = nxt, redact_url(nxt)
                    continue
            break
        else:
            raise DownloadError("too many redirects while resolving", model=model, url=display, permanent=True)
        self._raise_for_hf(r, src, model, display)
        commit = h.get("x-repo-commit")
        etag = _unquote_etag(h.get("x-linked-etag")) or _unquote_etag(h.get("etag"))
        sha = etag.lower() if etag and _SHA256.match(etag.lower()) and h.get("x-linked-etag") else None
        size = _int_header(h, "x-linked-size")
        if r.is_redirect and "location" in h:
            target = urljoin(url, h["location"])
        else:  # small (non-LFS) files are answered directly by the hub
            target = url
            if size is None:
                size = _int_header(h, "content-length")
        out_headers = {"Accept-Encoding": "identity"}
        if auth and _same_origin(target, endpoint):
            out_headers.update(auth)
        return ResolvedSource(url=target, size=size, sha256=sha, etag=etag, commit=commit,
                              headers=out_headers, display_url=display)

    def _raise_for_hf(self, r: httpx.Response, src: SourceURI, model: str | None, display: str) -> None:
        code = r.status_code
        if classify_status(code) is None:
            return
        err_code = r.headers.get("x-error-code", "")
        what = f"{src.repo}@{src.revision}/{src.path}"
        if code in (401, 403):
            if self.hub.token:
                hint = (f"HF_TOKEN was sent but refused or lacks access: check the token and accept the "
                        f"model's licence at {self.hub.endpoint}/{src.repo}")
            else:
                hint = (f"set HF_TOKEN (or log in with `huggingface-cli login`) and accept the model's "
                        f"licence at {self.hub.endpoint}/{src.repo}")
            raise self._status_error(r, f"access denied by the hub (HTTP {code}{', ' + err_code if err_code else ''}) "
                                        f"for {what}", model=model, url=display, hint=hint)
        if code in (404, 410):
            reason = {"RepoNotFound": f"repository {src.repo} not found",
                      "RevisionNotFound": f"revision {src.revision!r} not found in {src.repo}",
                      "EntryNotFound": f"file {src.path!r} not found in {src.repo}@{src.revision}",
                      }.get(err_code, f"{what} not found")
            raise self._status_error(r, f"{reason} (HTTP {code})", model=model, url=display,
                                     hint="check the repo, revision and path of the source URI in the manifest; "
                                          "a private repo also answers 404 without HF_TOKEN")
        raise self._status_error(r, f"the hub answered HTTP {code} while resolving {what}", model=model, url=display)

    # -- http(s):// ------------------------------------------------------------------------------------
    def _resolve_http(self, src: SourceURI, model: str | None) -> ResolvedSource:
        assert src.url
        display = redact_url(src.url)
        url, auth = split_credentials(src.url)
        headers = {"Accept-Encoding": "identity"}
        try:
            # httpx drops Authorization itself on a redirect to another origin
            client = self._egress_client or self._client
            r = client.head(url, headers={**headers, **auth}, follow_redirects=True)
            if r.status_code in (405, 501):  # HEAD not allowed: ask for one byte instead
                with client.stream("GET", url, headers={**headers, **auth, "Range": "bytes=0-0"},
                                   follow_redirects=True) as r:
                    r.close()
        except httpx.TransportError as exc:
            if classify_exception(exc) is Failure.PERMANENT:
                raise DownloadError(f"cannot reach the server: {describe_exception(exc)}", model=model, url=display,
                                    permanent=True) from None
            raise self._transient(f"cannot reach the server: {exc.__class__.__name__}: {exc}",
                                  model=model, url=display) from None
        code = r.status_code
        if code in (401, 403):
            hint = ("the user:password in the URL was refused; fix them" if auth else
                    "the URL needs credentials or has expired; fix the source URI")
            raise self._status_error(r, f"access denied (HTTP {code})", model=model, url=display, hint=hint)
        if code in (404, 410):
            raise self._status_error(r, f"not found (HTTP {code})", model=model, url=display,
                                     hint="check the source URI in the manifest")
        if classify_status(code) is not None:
            raise self._status_error(r, f"the server answered HTTP {code}", model=model, url=display)
        h = r.headers
        size = None
        if code == 206:
            m = re.match(r"bytes \d+-\d+/(\d+)", h.get("content-range", ""))
            size = int(m.group(1)) if m else None
        elif h.get("content-encoding", "identity") == "identity":
            size = _int_header(h, "content-length")
        # an HF resolve URL given as https:// still carries X-Linked-* on the hop that redirected
        linked = next((x.headers for x in [*r.history, r] if "x-linked-etag" in x.headers), None)
        etag = _unquote_etag(h.get("etag"))
        sha = None
        commit = None
        validator = Validator.from_headers(h.get)
        if linked is not None:
            le = _unquote_etag(linked.get("x-linked-etag"))
            if le and _SHA256.match(le.lower()):
                sha = le.lower()
            etag = le or etag
            size = _int_header(linked, "x-linked-size") or size
            commit = linked.get("x-repo-commit")
        final = str(r.url)
        out_headers = dict(headers)
        if auth and _same_origin(final, url):
            out_headers.update(auth)  # every range request of this download carries them
        return ResolvedSource(url=final, size=size, sha256=sha, etag=etag, commit=commit,
                              headers=out_headers, display_url=display, validator=validator, egress=self.egress)

    # -- s3:// -----------------------------------------------------------------------------------------
    def _resolve_s3(self, src: SourceURI, model: str | None) -> ResolvedSource:
        display = src.raw
        if self._s3_client_factory is None:
            raise DownloadError("no S3 client is configured for s3:// sources", model=model, url=display,
                                permanent=True, hint="set AWS_*/BUCKET_* credentials and endpoint for the store")
        try:
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:  # pragma: no cover - boto3 is a core dependency
            raise DownloadError("boto3 is not installed", model=model, url=display, permanent=True) from None
        if self._s3_client is None:
            self._s3_client = self._s3_client_factory()
        s3 = self._s3_client
        try:
            head = s3.head_object(Bucket=src.bucket, Key=src.path, ChecksumMode="ENABLED")
            url = s3.generate_presigned_url("get_object", Params={"Bucket": src.bucket, "Key": src.path},
                                            ExpiresIn=self.presign_expiry_s)
        except ClientError as exc:
            meta = exc.response.get("ResponseMetadata", {})
            status = meta.get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code", "")
            if status in (404,) or code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                raise DownloadError(f"object not found in bucket {src.bucket!r} (HTTP 404)", model=model,
                                    url=display, permanent=True, status=404,
                                    hint="check the bucket and key of the source URI") from None
            if status in (401, 403):
                raise DownloadError(f"access denied by S3 (HTTP {status} {code})", model=model, url=display,
                                    permanent=True, status=status,
                                    hint="check the AWS_*/BUCKET_* credentials and the bucket policy") from None
            kind = classify_status(status) if isinstance(status, int) else Failure.TRANSIENT
            raise DownloadError(f"S3 error {status} {code}", model=model, url=display, status=status,
                                permanent=kind is not Failure.TRANSIENT) from None
        except BotoCoreError as exc:
            raise self._transient(f"cannot reach S3: {exc}", model=model, url=display) from None
        etag = _unquote_etag(head.get("ETag"))
        sha = None
        checksum = head.get("ChecksumSHA256")
        if checksum and "-" not in checksum and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            try:
                sha = base64.b64decode(checksum).hex()
            except (binascii.Error, ValueError):
                sha = None
            if sha and not _SHA256.match(sha):
                sha = None
        return ResolvedSource(url=url, size=int(head["ContentLength"]), sha256=sha, etag=etag, commit=None,
                              headers={"Accept-Encoding": "identity"}, display_url=display)

    # -- file:// ----------------------------------------------------------------------------------------
    def _resolve_file(self, src: SourceURI, model: str | None) -> ResolvedSource:
        assert src.path
        p = Path(src.path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise DownloadError(f"local file {p} does not exist", model=model, url=src.raw, permanent=True,
                                status=404, hint="check the path (for the tiny preset: set I2V_TINY_DIR and run "
                                                 "`i2v-worker tiny generate --out DIR`)") from None
        except OSError as exc:
            raise DownloadError(f"cannot read local file {p}: {exc.strerror}", model=model, url=src.raw,
                                permanent=True) from None
        if not p.is_file():
            raise DownloadError(f"{p} is not a regular file", model=model, url=src.raw, permanent=True)
        return ResolvedSource(url=str(p), size=st.st_size, sha256=None, etag=f"{st.st_size}-{st.st_mtime_ns}",
                              commit=None, headers={}, display_url=src.raw)
