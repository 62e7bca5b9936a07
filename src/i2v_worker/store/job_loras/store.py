"""`JobLoraStore`: LoRAs a job names, fetched on demand into the store's `loras/job/` area.

Layout (a contract with the engines: ComfyUI lists these files as `job/<sha256>.safetensors`):

- `R/loras/job/<sha256>.safetensors`: one copy per content, whatever URL it came from;
- `R/loras/job/.i2v/{records,leases}/`: the verification records and download leases of the
  `ModelStore` that delivers the files (the same engine and guarantees as the manifest's models:
  parallel ranged download, sha256 verified while downloading, atomic publish, resume, lease);
- `R/loras/job/.staging/src-<key>.lora`: a download whose sha256 was not known beforehand (an
  https URL without one); once verified and hashed it is hard-linked to its content name (same
  bytes, no extra disk) and stays a link until that LoRA is evicted;
- `R/loras/job/.i2v/job-loras/`: sources index, last use and in-use markers (see meta.py).

Before any byte is downloaded, each remote LoRA's size and safetensors header are read with two
small ranged GETs (for http(s) through the image rules of worker/image.py: allow-listed host,
public addresses only, every redirect re-checked), so a wrong file (not safetensors, a LoRA for
another model family, over the size cap or the budget) is refused with nothing published. A job
whose LoRAs are all in the store does no network at all: presence is a `stat` plus two small reads.

The disk budget (bytes) covers the files here; room is made by evicting the least recently used
LoRA that no running job uses (in-use markers, across processes). `gc()` trims to the budget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from i2v_worker.egress import EgressPolicy, system_resolve
from i2v_worker.engines.base import ModelRole
from i2v_worker.error_codes import ErrorCode
from i2v_worker.logs import log
from i2v_worker.store import disk
from i2v_worker.store.errors import DownloadError, EgressRefused, IntegrityError, OfflineError, StoreError
from i2v_worker.store.job_loras import header as hdr
from i2v_worker.store.job_loras.meta import Meta, source_key
from i2v_worker.store.manifest import Manifest, ModelEntry
from i2v_worker.store.types import ModelState, ProgressCallback, ProgressEvent

logger = logging.getLogger("i2v_worker.store.job_loras")

JOB_SUBFOLDER = "job"  # under the store's loras folder
STAGING = ".staging"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()+-]*\.safetensors$")


class JobLoraError(StoreError):
    """A job LoRA that cannot be used. `field` names the job entry (e.g. `loras[1].source`),
    `code` is the worker's error code (invalid_input for a wrong file or source)."""

    def __init__(self, message: str, *, field: str, rule: str, code: ErrorCode = ErrorCode.INVALID_INPUT,
                 hint: str | None = None) -> None:
        self.field, self.rule, self.code = field, rule, code
        super().__init__(message, hint=hint)


@dataclass(frozen=True)
class LoraRequest:
    """One entry of a job's `loras` (already validated by the job schema)."""

    index: int
    source: str
    sha256: str | None = None
    strength_high: float = 1.0
    strength_low: float = 1.0

    @property
    def field(self) -> str:
        return f"loras[{self.index}]"


@dataclass(frozen=True)
class ReadyLora:
    """A job LoRA in the store, checked, ready for an engine."""

    index: int
    source: str
    name: str  # the name ComfyUI lists it under in its loras folder (e.g. job/<sha256>.safetensors)
    path: Path
    strength_high: float
    strength_low: float
    sha256: str | None  # None for a LoRA named by file name (the store's own folder; not hashed)
    size: int
    check: hdr.LoraCheck


@dataclass
class PreparedLoras:
    loras: list[ReadyLora] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)  # sources fetched for this job
    _markers: list[Path] = field(default_factory=list, repr=False)

    def release(self) -> None:
        """The job is done with its LoRAs: they may be evicted again."""
        disk.remove_quietly(*self._markers)
        self._markers.clear()


@dataclass(frozen=True)
class JobLoraStatus:
    sha256: str
    size: int
    sources: tuple[str, ...]
    last_used: float
    in_use: bool
    path: Path
    present: bool


@dataclass(frozen=True)
class _Probe:
    store_source: str  # what the ModelStore downloads from (hf:// as given, or the final http(s) URL)
    size: int
    sha256: str | None  # announced by the server (X-Linked-Etag)
    keys: tuple[str, ...]


def parse_lora_source(source: str) -> tuple[str, str]:
    """(kind, canonical source): kind is hf, url or name. Raises ValueError with the reason."""
    s = source.strip()
    if s.startswith("hf://"):
        from i2v_worker.store.sources import parse_source

        src = parse_source(s)
        if not (src.path or "").endswith(".safetensors"):
            raise ValueError("an hf:// LoRA source must name a .safetensors file (hf://org/repo@revision/path.safetensors)")
        return "hf", f"hf://{src.repo}@{src.revision}/{src.path}"
    if s.lower().startswith(("https://", "http://")):
        from urllib.parse import urlsplit

        if not urlsplit(s).hostname:
            raise ValueError("the URL has no host")
        return "url", s
    if "://" in s:
        raise ValueError(f"unsupported scheme {s.split('://', 1)[0]!r}: use hf://, https:// or a file name")
    if not _NAME.match(s) or ".." in s:
        raise ValueError("a LoRA named by file name must be a plain file name ending in .safetensors "
                         "(no folders), as listed in the store's loras folder")
    return "name", s


class JobLoraStore:
    def __init__(
        self,
        store: Any,  # the worker's ModelStore (public API: root, hub, transfer, lease_wait_s)
        *,
        budget_bytes: int,
        max_bytes: int,
        allowlist: tuple[str, ...] = (),
        allow_loopback: bool = False,
        fetch_timeout_s: float = 30.0,
        resolver: Callable | None = None,  # async (host, port) -> addresses, for http(s) sources
        clock: Callable[[], float] = time.time,
    ) -> None:
        from i2v_worker.store.store import ModelStore

        self.models_root = Path(store.root)
        self.root = self.models_root / "loras" / JOB_SUBFOLDER
        self.budget_bytes = int(budget_bytes)
        self.max_bytes = int(max_bytes)
        self.allowlist = tuple(allowlist)
        self.allow_loopback = allow_loopback
        self.fetch_timeout_s = fetch_timeout_s
        self._resolver = resolver
        self._clock = clock
        self.hub = store.hub
        self.meta = Meta(self.root / ".i2v" / "job-loras", clock=clock)
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()
        self._room = asyncio.Lock()
        self._reserved: dict[str, int] = {}
        # The ModelStore that delivers the files: same transfer engine, hub and lease settings as
        # the worker's; its manifest is the set of job-LoRA entries seen so far (grows per job).
        # https:// LoRAs are job input: every connection of their download, redirects included, obeys
        # the image rules (egress.py) and goes to the checked address, as the probe's did.
        self.files = ModelStore(self.root, self._manifest(), hub=store.hub, transfer=store.transfer,
                                lease_wait_s=store.lease_wait_s, egress=self._egress_policy())

    @classmethod
    def from_settings(cls, settings: Any, store: Any, **kw: Any) -> "JobLoraStore":
        """I2V_LORA_BUDGET_GB, I2V_LORA_MAX_BYTES, I2V_LORA_HOSTS; loopback only with the test
        setting I2V_ALLOW_LOOPBACK_IMAGES (the image rules)."""
        return cls(store, budget_bytes=int(settings.lora_budget_gb * 1e9), max_bytes=settings.lora_max_bytes,
                   allowlist=settings.lora_host_allowlist, allow_loopback=settings.allow_loopback_images,
                   fetch_timeout_s=settings.image_fetch_timeout_s, **kw)

    def _egress_policy(self) -> EgressPolicy:
        resolve = system_resolve
        if self._resolver is not None:  # the injected async resolver, called from transfer threads
            async_resolve = self._resolver

            def resolve(host: str, port: int) -> list[str]:
                return asyncio.run(async_resolve(host, port))
        return EgressPolicy(self.allowlist, self.allow_loopback, "I2V_LORA_HOSTS", resolve)

    # -- entries -------------------------------------------------------------------------------------
    def _manifest(self) -> Manifest:
        return Manifest(file="<job loras>", entries=tuple(self._entries.values()), presets={})

    def _entry(self, name: str, folder: str, source: str, size: int | None, sha: str | None) -> ModelEntry:
        e = ModelEntry(name=name, folder=folder, role=ModelRole.LORA, source=source, size=size, sha256=sha)
        with self._lock:
            if self._entries.get(name) != e:
                self._entries[name] = e
                self.files.manifest = self._manifest()
        return e

    def _content_entry(self, sha: str, size: int, source: str) -> ModelEntry:
        return self._entry(f"{sha}.safetensors", "", source, size, sha)

    def content_path(self, sha: str) -> Path:
        return self.root / f"{sha}.safetensors"

    def _present(self, sha: str, size: int) -> bool:
        e = self._content_entry(sha, size, f"file://{self.content_path(sha)}")
        return self.files.status([e.name])[0].state == ModelState.PRESENT

    # -- the job ---------------------------------------------------------------------------------------
    async def prepare(self, requests: list[LoraRequest], *, progress: ProgressCallback | None = None,
                      writer_id: str = "") -> PreparedLoras:
        """Make every LoRA of a job present and checked. Raises JobLoraError (naming the entry) or
        the store's errors (download failures); on failure nothing stays marked in use."""
        out = PreparedLoras()
        writer = writer_id or disk.new_writer_id()
        try:
            await self._prepare(requests, progress, writer, out)
        except BaseException:
            out.release()
            raise
        return out

    async def _prepare(self, requests, progress, writer, out: PreparedLoras) -> None:
        ready: dict[int, ReadyLora] = {}
        remote: list[tuple[LoraRequest, str]] = []
        for req in requests:
            try:
                kind, canon = parse_lora_source(req.source)
            except ValueError as exc:
                raise JobLoraError(f"{req.field}.source: {exc}", field=f"{req.field}.source", rule="source") from None
            if kind == "name":
                ready[req.index] = self._by_name(req, canon)
                continue
            known = (req.sha256, None) if req.sha256 else None
            hit = self.meta.lookup(canon)
            if known is None and hit is not None:
                known = hit
            if known is not None:
                sha = known[0]
                marker = self.meta.mark_in_use(sha, writer)  # before the presence check: eviction respects it
                out._markers.append(marker)
                size = known[1] if known[1] is not None else (self.meta.content(sha).size if self.meta.content(sha) else None)
                if size is not None and self._present(sha, size):
                    ready[req.index] = self._ready(req, canon, sha, size)
                    continue
            remote.append((req, canon))
        if remote:
            if self.hub.offline:
                names = ", ".join(f"{r.field} ({c})" for r, c in remote)
                raise OfflineError(f"HF_HUB_OFFLINE=1 and job LoRA(s) not in the store: {names}",
                                   hint="fetch them once with network access, or name LoRAs already in the store")
            probes = await asyncio.gather(*(self._probe(r, c) for r, c in remote))
            for (req, canon), probe in zip(remote, probes):
                self._check_probe(req, probe)
            fetched = await self._fetch(list(zip(remote, probes)), progress, writer, out)
            for (req, canon), (sha, size) in zip(remote, fetched):
                ready[req.index] = self._ready(req, canon, sha, size)
                out.downloaded.append(canon)
        out.loras = [ready[r.index] for r in requests]
        for lora in out.loras:
            c = lora.check
            if c.unmatched:
                out.warnings.append(
                    f"loras[{lora.index}] ({_short(lora.source)}): {c.matched} of {c.modules} modules match the "
                    f"Wan2.2 model and are applied; {c.unmatched} match nothing and are ignored "
                    f"(e.g. {', '.join(c.unmatched_examples)})")

    def _by_name(self, req: LoraRequest, name: str) -> ReadyLora:
        path = self.models_root / "loras" / name
        if not path.is_file():
            try:
                known = sorted(n for n in os.listdir(self.models_root / "loras") if n.endswith(".safetensors"))
            except FileNotFoundError:
                known = []
            raise JobLoraError(
                f"{req.field}.source: no LoRA named {name!r} in the store's loras folder "
                f"({self.models_root / 'loras'}; it has: {', '.join(known) or 'none'})",
                field=f"{req.field}.source", rule="not_found",
                hint="give an hf:// or https:// source to have it downloaded, or copy the file there")
        check = self._check_local(req, path)
        return ReadyLora(req.index, req.source, name, path, req.strength_high, req.strength_low, None,
                         path.stat().st_size, check)

    def _ready(self, req: LoraRequest, canon: str, sha: str, size: int) -> ReadyLora:
        path = self.content_path(sha)
        check = self._check_local(req, path)
        self.meta.record_use(sha, size, canon)
        self.meta.remember(canon, sha, size)
        return ReadyLora(req.index, canon, f"{JOB_SUBFOLDER}/{sha}.safetensors", path, req.strength_high,
                         req.strength_low, sha, size, check)

    def _check_local(self, req: LoraRequest, path: Path) -> hdr.LoraCheck:
        try:
            keys = hdr.read_header(path)
        except hdr.HeaderError as exc:
            raise JobLoraError(f"{req.field}: {_short(req.source)} is not a safetensors LoRA: {exc}",
                               field=f"{req.field}.source", rule="not_safetensors") from None
        check = hdr.check_keys(keys)
        self._raise_if_no_match(req, check)
        return check

    def _raise_if_no_match(self, req: LoraRequest, check: hdr.LoraCheck) -> None:
        if check.matched == 0:
            family = f" It looks like a {check.family_hint} LoRA." if check.family_hint else ""
            raise JobLoraError(
                f"{req.field}: none of the {check.modules} modules of {_short(req.source)} exists in the Wan2.2 "
                f"model (e.g. {', '.join(check.unmatched_examples)}).{family} Use a LoRA trained for Wan2.2 "
                "(or Wan2.1) 14B", field=f"{req.field}.source", rule="wrong_model_family")

    def _check_probe(self, req: LoraRequest, probe: _Probe) -> None:
        if probe.size > self.max_bytes:
            raise JobLoraError(
                f"{req.field}: {_short(req.source)} is {probe.size} bytes ({probe.size / 1e9:.2f} GB), over the "
                f"per-file limit of {self.max_bytes} bytes (I2V_LORA_MAX_BYTES)", field=f"{req.field}.source",
                rule="too_large")
        if probe.size > self.budget_bytes:
            raise JobLoraError(
                f"{req.field}: {_short(req.source)} is {probe.size / 1e9:.2f} GB, larger than the whole job-LoRA "
                f"disk budget of {self.budget_bytes / 1e9:.2f} GB (I2V_LORA_BUDGET_GB)",
                field=f"{req.field}.source", rule="over_budget", hint="raise I2V_LORA_BUDGET_GB")
        if req.sha256 and probe.sha256 and req.sha256 != probe.sha256:
            raise JobLoraError(
                f"{req.field}.sha256: the source announces sha256 {probe.sha256}, the job gives {req.sha256}; "
                "nothing was downloaded", field=f"{req.field}.sha256", rule="sha256_mismatch")
        self._raise_if_no_match(req, hdr.check_keys(probe.keys))

    # -- probing (size + header, before any download) ----------------------------------------------
    async def _probe(self, req: LoraRequest, canon: str) -> _Probe:
        if canon.startswith("hf://"):
            return await asyncio.to_thread(self._probe_hf, req, canon)
        return await self._probe_url(req, canon)

    def _probe_hf(self, req: LoraRequest, canon: str) -> _Probe:
        import httpx

        from i2v_worker.store.sources import SourceResolver

        with httpx.Client(timeout=httpx.Timeout(self.fetch_timeout_s)) as client:
            resolver = SourceResolver(self.hub, client=client)
            resolved = resolver.resolve(canon, model=req.field)
            if req.sha256 and resolved.sha256 and req.sha256 != resolved.sha256:  # no need to read further
                self._check_probe(req, _Probe(canon, resolved.size or 0, resolved.sha256, ()))
            if resolved.size is None:
                raise JobLoraError(f"{req.field}: the hub did not announce the size of {canon}",
                                   field=f"{req.field}.source", rule="no_size", code=ErrorCode.MODEL_DOWNLOAD_FAILED)

            def get(a: int, b: int) -> bytes:
                r = client.get(resolved.url, headers={**resolved.headers, "Range": f"bytes={a}-{b}"},
                               follow_redirects=True)
                if r.status_code not in (200, 206):
                    raise JobLoraError(f"{req.field}: reading the header of {canon} answered HTTP {r.status_code}",
                                       field=f"{req.field}.source", rule="fetch_failed", code=ErrorCode.MODEL_DOWNLOAD_FAILED)
                return r.content[a:b + 1] if r.status_code == 200 else r.content

            keys = self._header_from(req, resolved.size, get)
        return _Probe(canon, resolved.size, resolved.sha256, keys)

    async def _probe_url(self, req: LoraRequest, canon: str) -> _Probe:
        from i2v_worker.worker.image import ImageInputError, fetch_range

        fld = f"{req.field}.source"

        async def rng(url: str, a: int, b: int):
            try:
                return await fetch_range(url, a, b, field=fld, timeout_s=self.fetch_timeout_s, allowlist=self.allowlist,
                                         allow_loopback=self.allow_loopback, resolver=self._resolver)
            except ImageInputError as exc:
                raise JobLoraError(f"{fld}: {exc.message}", field=fld, rule=exc.rule) from None

        first = await rng(canon, 0, 7)
        if first.total_size is None:
            raise JobLoraError(f"{fld}: the server did not say how large {_short(canon)} is (no Content-Range or "
                               "Content-Length), so the size limit cannot be checked", field=fld, rule="no_size")
        final = first.final_url
        try:
            n = hdr.header_length(first.body)
        except hdr.HeaderError as exc:
            raise JobLoraError(f"{req.field}: {_short(canon)} is not a safetensors LoRA: {exc}", field=fld,
                               rule="not_safetensors") from None
        if 8 + n > first.total_size:
            raise JobLoraError(f"{req.field}: {_short(canon)} is not a safetensors LoRA: its header length {n} is "
                               f"beyond the file's {first.total_size} bytes", field=fld, rule="not_safetensors")
        second = await rng(final, 8, 8 + n - 1)  # the final URL is checked again, hop by hop
        try:
            keys = tuple(hdr.parse_header(second.body))
        except hdr.HeaderError as exc:
            raise JobLoraError(f"{req.field}: {_short(canon)} is not a safetensors LoRA: {exc}", field=fld,
                               rule="not_safetensors") from None
        linked = first.headers.get("x-linked-etag", "").strip('"').lower()
        return _Probe(final, first.total_size, linked if _SHA256.match(linked) else None, keys)

    def _header_from(self, req: LoraRequest, size: int, get: Callable[[int, int], bytes]) -> tuple[str, ...]:
        fld = f"{req.field}.source"
        try:
            n = hdr.header_length(get(0, 7))
            if 8 + n > size:
                raise hdr.HeaderError(f"its header length {n} is beyond the file's {size} bytes")
            return tuple(hdr.parse_header(get(8, 8 + n - 1)))
        except hdr.HeaderError as exc:
            raise JobLoraError(f"{req.field}: {_short(req.source)} is not a safetensors LoRA: {exc}", field=fld,
                               rule="not_safetensors") from None

    # -- fetching --------------------------------------------------------------------------------------
    async def _fetch(self, items, progress, writer: str, out: PreparedLoras) -> list[tuple[str, int]]:
        """Download the probed LoRAs (one ModelStore.ensure, in parallel) after making room."""
        need = sum(p.size for _, p in items)
        keys = [(req.sha256 or p.sha256 or f"src-{source_key(canon)}") for (req, canon), p in items]
        async with self._room:
            await asyncio.to_thread(self._make_room, need, set(keys))
            for k, (_, p) in zip(keys, items):
                self._reserved[k] = p.size
        try:
            entries: list[ModelEntry] = []
            labels: dict[str, str] = {}
            for (req, canon), p in items:
                sha = req.sha256 or p.sha256
                if sha:
                    e = self._content_entry(sha, p.size, p.store_source)
                    out._markers.append(self.meta.mark_in_use(sha, writer))
                else:
                    e = self._entry(f"src-{source_key(canon)}.lora", STAGING, p.store_source, p.size, None)
                entries.append(e)
                labels[e.name] = f"lora {req.field}"
            sink = _relabel(progress, labels)
            try:
                paths = await self.files.aensure([e.name for e in entries], progress=sink)
            except DownloadError as exc:
                raise self._download_error(exc, items, entries) from None
            result = []
            for ((req, canon), p), e in zip(items, entries):
                if e.sha256:
                    result.append((e.sha256, p.size))
                    continue
                status = self.files.status([e.name])[0]
                sha = status.sha256
                assert sha is not None
                out._markers.append(self.meta.mark_in_use(sha, writer))
                self.meta.remember(canon, sha, status.size or p.size)
                await self._publish_content(Path(paths[e.name]), sha, status.size or p.size, sink)
                result.append((sha, status.size or p.size))
                log(logger, logging.INFO, "job LoRA stored", source=_short(canon), sha256=sha, bytes=p.size)
            return result
        finally:
            for k in keys:
                self._reserved.pop(k, None)

    async def _publish_content(self, staging: Path, sha: str, size: int, sink) -> None:
        """A verified staging download -> its content name. A hard link (no copy, no extra disk)
        that the ModelStore then verifies and records (`verify(full=True)`); the staging name stays
        a link to the same bytes, so another worker waiting on the same source finds it present
        (it goes when the content is evicted). Without hard links (some network filesystems) the
        ModelStore copies it (file:// source) and the staging file is removed."""
        if self._present(sha, size):  # the same bytes came earlier by another source: one copy
            if not _same_file(staging, self.content_path(sha)):
                disk.remove_quietly(staging)
            return
        entry = self._content_entry(sha, size, f"file://{staging}")
        try:
            os.link(staging, self.content_path(sha))
        except FileExistsError:
            pass
        except OSError:
            await self.files.aensure([entry.name], progress=sink)
            disk.remove_quietly(staging)
            return
        else:  # the new name moved the inode's ctime: the staging record follows (no rehash)
            self.files.relinked(staging.name)
        [st] = await asyncio.to_thread(self.files.verify, full=True, names=[entry.name])
        if st.state != ModelState.PRESENT:  # a foreign file was at the content name: replace it by a copy
            disk.remove_quietly(self.content_path(sha))
            await self.files.aensure([entry.name], progress=sink)

    @staticmethod
    def _download_error(exc: DownloadError, items, entries: list[ModelEntry]) -> JobLoraError:
        """A failed download, named by the job's entry and source (not the store's file name)."""
        for ((req, canon), _p), e in zip(items, entries):
            if exc.model == e.name:
                break
        else:
            (req, canon), _p = items[0]
        text = str(exc).replace(f"{exc.model}: ", "") if exc.model else str(exc)
        if isinstance(exc, EgressRefused):  # a redirect or a DNS answer that changed since the probe
            return JobLoraError(f"{req.field}.source: downloading {_short(canon)}: {text}", field=f"{req.field}.source",
                                rule=exc.rule)
        if isinstance(exc, IntegrityError) and req.sha256:
            return JobLoraError(f"{req.field}.sha256: {_short(canon)}: {text}", field=f"{req.field}.sha256",
                                rule="sha256_mismatch", hint="check the sha256 given for this LoRA")
        return JobLoraError(f"{req.field}: downloading {_short(canon)} failed: {text}", field=f"{req.field}.source",
                            rule="download_failed", code=ErrorCode.MODEL_DOWNLOAD_FAILED)

    def _stored(self) -> list[tuple[str, int, float]]:
        """(sha, size, last_used) of each LoRA file in the area."""
        out = []
        meta = {c.sha256: c for c in self.meta.all_content()}
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        for n in names:
            if not n.endswith(".safetensors") or n.startswith("."):
                continue
            sha = n[: -len(".safetensors")]
            try:
                size = os.stat(self.root / n).st_size
            except OSError:
                continue
            info = meta.get(sha)
            out.append((sha, size, info.last_used if info else 0.0))
        return out

    def _make_room(self, need: int, keep: set[str]) -> list[str]:
        """Evict least recently used LoRAs (never one in use, reserved or about to be used) until
        `need` more bytes fit in the budget. Raises JobLoraError(models_busy) when they cannot."""
        stored = self._stored()
        reserved = sum(v for k, v in self._reserved.items())
        total = sum(s for _, s, _ in stored) + reserved
        evicted: list[str] = []
        for sha, size, _used in sorted(stored, key=lambda t: t[2]):
            if total + need <= self.budget_bytes:
                break
            if sha in keep or sha in self._reserved or self.meta.in_use(sha):
                continue
            self._evict(sha)
            total -= size
            evicted.append(sha)
        if total + need > self.budget_bytes:
            raise JobLoraError(
                f"the job-LoRA disk budget of {self.budget_bytes / 1e9:.2f} GB (I2V_LORA_BUDGET_GB) cannot fit "
                f"{need / 1e9:.3f} GB more: {total / 1e9:.3f} GB are held by LoRAs running jobs use",
                field="loras", rule="budget_full", code=ErrorCode.MODELS_BUSY,
                hint="try again when the running jobs finish, or raise I2V_LORA_BUDGET_GB")
        return evicted

    def _evict(self, sha: str) -> None:
        info = self.meta.content(sha)
        for src in (info.sources if info else []):  # staging links to the same bytes
            disk.remove_quietly(self.root / STAGING / f"src-{source_key(src)}.lora")
        disk.remove_quietly(self.content_path(sha))
        self.meta.forget_content(sha)
        log(logger, logging.INFO, "job LoRA evicted (least recently used)", sha256=sha)

    # -- status and gc ---------------------------------------------------------------------------------
    def status(self) -> list[JobLoraStatus]:
        meta = {c.sha256: c for c in self.meta.all_content()}
        out = []
        for sha, size, used in self._stored():
            info = meta.get(sha)
            out.append(JobLoraStatus(sha, size, tuple(info.sources if info else ()), used, self.meta.in_use(sha),
                                     self.content_path(sha), True))
        return sorted(out, key=lambda s: -s.last_used)

    def gc(self, *, dry_run: bool = False) -> list[Path]:
        """Trim the area to the budget (LRU first, never a LoRA in use) and remove leftover staging
        copies. Returns the paths removed (or that would be)."""
        removed: list[Path] = []
        stored = self._stored()
        total = sum(s for _, s, _ in stored)
        for sha, size, _ in sorted(stored, key=lambda t: t[2]):
            if total <= self.budget_bytes:
                break
            if self.meta.in_use(sha):
                continue
            removed.append(self.content_path(sha))
            if not dry_run:
                self._evict(sha)
            total -= size
        staging = self.root / STAGING
        try:
            for it in os.scandir(staging):
                # a staging file that is not (or no longer) a link to a stored LoRA
                if it.is_file() and not it.name.startswith(".") and it.name.endswith(".lora") and it.stat().st_nlink < 2:
                    removed.append(Path(it.path))
                    if not dry_run:
                        disk.remove_quietly(Path(it.path))
        except FileNotFoundError:
            pass
        return removed


def _short(source: str) -> str:
    from i2v_worker.store.store import redact

    return redact(source) if "://" in source else source


def _relabel(progress: ProgressCallback | None, labels: dict[str, str]) -> ProgressCallback | None:
    if progress is None:
        return None

    def on(ev: ProgressEvent) -> None:
        progress(replace(ev, model=labels.get(ev.model, ev.model) if ev.model else None))

    return on


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
