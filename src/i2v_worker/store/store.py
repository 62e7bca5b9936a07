"""The model store: verified, atomic, resumable, shared delivery of the manifest's model files.

Layout under the store root R (a contract with the engines and tests):

- `R/<folder>/<name>`: a published model (folder = the manifest's ComfyUI folder).
- `R/<folder>/.<name>.<writer id>.part` (+ `.part.json`, the transfer engine's resume record): a
  writer's own temp file; ComfyUI never lists dot files. Its size (before any byte arrives) is the
  writer's claim on the volume's free space (disk.reserve).
- `R/.i2v/records/<name>.json`: the verification record (size, sha256, mtime_ns, ctime_ns, inode,
  ...), so presence is a `stat` plus a small JSON read: no network, no rehash.
- `R/.i2v/leases/<name>.lease` (+ short-lived `.<name>.lease.*.claim` / `.new` files of a takeover
  or an acquisition): the download lease (see lease.py): one download per model at a time across
  processes and machines. Correctness never depends on it: every writer verifies its own temp file
  and publishes with an atomic rename (publish.py, the one publish protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from i2v_worker.logs import log
from i2v_worker.store import disk, publish
from i2v_worker.store.clock import AnyCancel, Cancel, Clock, SystemClock
from i2v_worker.store.errors import (DiskFullError, DownloadError, IntegrityError, LeaseLost, LeaseTimeout,
                                     OfflineError, StoreError)
from i2v_worker.store.lease import CLAIM_SUFFIX, Lease, LeaseUnreadable
from i2v_worker.store.manifest import FOLDER_ALIASES, FOLDERS, Manifest, ModelEntry, load_manifest
from i2v_worker.store.progress import ProgressTracker
from i2v_worker.store.records import VerificationRecord, matches, read_record, remove_record, write_record
from i2v_worker.store.types import ModelState, ModelStatus, ProgressCallback

if TYPE_CHECKING:  # pragma: no cover
    import httpx

    from i2v_worker.config import Settings
    from i2v_worker.egress import EgressPolicy
    from i2v_worker.store.adopt import Adopter
    from i2v_worker.store.sources import HubConfig
    from i2v_worker.store.transfer import TransferConfig

logger = logging.getLogger(__name__)



class EnsureCancelled(StoreError):
    """`ensure` was cancelled; partial downloads are kept for resume."""


def redact(uri: str) -> str:
    """A source URI without credentials (userinfo and query string removed)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ModelStore:
    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        *,
        hub: "HubConfig",
        transfer: "TransferConfig",
        client: "httpx.Client | None" = None,
        s3_client_factory: Callable[..., Any] | None = None,
        lease_wait_s: float = 3600,
        clock: "Clock | None" = None,
        writer_id: str | None = None,
        lease_poll_s: float = 0.5,
        lease_stale_s: float = 30.0,
        lease_heartbeat_s: float = 5.0,
        adopter: "Adopter | None" = None,
        egress: "EgressPolicy | None" = None,
    ) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.hub = hub
        self.transfer = transfer
        self._client = client
        self._s3_client_factory = s3_client_factory
        self.lease_wait_s = lease_wait_s
        # the one clock of the store (wall time, monotonic, cancellable waits): lease, resolver, downloader
        self.clock: Clock = clock or SystemClock()
        self._clock = self.clock.time
        self.writer_id = writer_id or disk.new_writer_id()
        self.lease_poll_s = lease_poll_s
        self.lease_stale_s = lease_stale_s
        self.lease_heartbeat_s = lease_heartbeat_s
        self._engine_lock = threading.Lock()
        self._engine: tuple[Any, Any] | None = None  # (resolver, downloader), built on first download
        self.adopter = adopter  # store/adopt/: copies the machine already has (None: never adopt)
        # http(s):// sources are job-named URLs under this policy (the job-LoRA store); None: the
        # manifest's own sources, which are configuration and may be private
        self.egress = egress

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: "Settings", manifest: Manifest | None = None, **kw: Any) -> "ModelStore":
        from i2v_worker.store.sources import HubConfig
        from i2v_worker.store.transfer import TransferConfig

        if manifest is None:
            manifest = load_manifest(settings.manifest, env=settings.manifest_vars)
        kw.setdefault("s3_client_factory", _default_s3_client)
        if settings.adopt and "adopter" not in kw:
            from i2v_worker.store.adopt import Adopter

            kw["adopter"] = Adopter.from_settings(settings)
        return cls(
            settings.model_dir, manifest,
            hub=HubConfig.from_settings(settings), transfer=TransferConfig.from_settings(settings),
            lease_wait_s=settings.lease_wait_s, **kw,
        )

    def _transfer_engine(self) -> tuple[Any, Any]:
        """The resolver and downloader (the transfer engine), shared by every download of this
        store so the ConnectionBudget caps connections across all files."""
        with self._engine_lock:
            if self._engine is None:
                from i2v_worker.store.sources import SourceResolver
                from i2v_worker.store.transfer import ConnectionBudget, Downloader

                resolver = SourceResolver(self.hub, client=self._client, s3_client_factory=self._s3_client_factory,
                                          retry=self.transfer.retry, clock=self.clock, egress=self.egress)
                budget = ConnectionBudget(self.transfer.max_connections)
                downloader = Downloader(self.transfer, budget=budget, clock=self.clock)
                self._engine = (resolver, downloader)
            return self._engine

    # --- paths and presence -----------------------------------------------------------------------
    def path(self, name: str) -> Path:
        e = self.manifest.get(name)
        return self.root / e.folder / e.name

    def _lease(self, name: str) -> Lease:
        # Wall time from the store's clock (what leases say and how old they look); the heartbeat's
        # own timing (expiry) stays on the real monotonic clock its thread sleeps on.
        return Lease(self.root / ".i2v" / "leases", name, self.writer_id, clock=self.clock.time,
                     stale_after=self.lease_stale_s, heartbeat_every=self.lease_heartbeat_s)

    def _record_ok(self, entry: ModelEntry, rec: VerificationRecord | None, st: os.stat_result | None) -> bool:
        if rec is None or st is None:
            return False
        if not matches(rec, st) or rec.folder != entry.folder:
            return False
        if entry.sha256 is not None and rec.sha256 != entry.sha256:
            return False
        if entry.size is not None and rec.size != entry.size:
            return False
        if not entry.pinned and entry.source_error is None:
            # Unpinned: the bytes are whatever the source serves; a changed source means new bytes.
            if rec.source not in {redact(s) for s in entry.sources()}:
                return False
        return True

    def _probe(self, entry: ModelEntry) -> tuple[bool, VerificationRecord | None, os.stat_result | None]:
        try:
            st = os.stat(self.root / entry.folder / entry.name)
        except OSError:  # missing, or a folder on the path is a file (ensure names it)
            return False, None, None
        rec = read_record(self.root, entry.name)
        return self._record_ok(entry, rec, st), rec, st

    def _parts(self, entry: ModelEntry) -> list[Path]:
        folder = self.root / entry.folder
        prefix = f".{entry.name}."
        try:
            names = os.listdir(folder)
        except OSError:  # missing, or not a folder
            return []
        return [folder / n for n in names
                if n.startswith(prefix) and n.endswith(disk.PART_SUFFIX)
                and disk.parse_part_name(n, {entry.name}) is not None]

    def status(self, names: Iterable[str] | None = None) -> list[ModelStatus]:
        """State of each model (default: every manifest entry). No network, no hashing."""
        entries = self.manifest.entries if names is None else [self.manifest.get(n) for n in names]
        out = []
        for e in entries:
            ok, rec, st = self._probe(e)
            path = self.root / e.folder / e.name
            if ok:
                assert rec is not None
                out.append(ModelStatus(e.name, e.folder, rec.size, ModelState.PRESENT, e.pinned, path,
                                       rec.size, rec.sha256))
                continue
            if st is not None:
                out.append(ModelStatus(e.name, e.folder, e.size, ModelState.UNVERIFIED, e.pinned, path,
                                       st.st_size, e.sha256))
                continue
            parts = self._parts(e)
            done = max((disk.part_progress(p) for p in parts), default=0)
            lease = self._lease(e.name)
            info = lease.read()
            if info is not None and not lease.is_stale(info):
                state = ModelState.DOWNLOADING
            elif parts:
                state = ModelState.PARTIAL
            else:
                state = ModelState.MISSING
            out.append(ModelStatus(e.name, e.folder, e.size, state, e.pinned, path, done, e.sha256))
        return out

    # --- ensure ---------------------------------------------------------------------------------------
    def ensure(self, names: Iterable[str], *, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> dict[str, Path]:
        """Make exactly these models present (download what is missing); returns name -> path.

        Several models download at once (one thread per model, connections capped by the shared
        ConnectionBudget). Raises the first failure after every model has finished or failed."""
        entries = [self.manifest.get(n) for n in dict.fromkeys(names)]
        cancel = cancel or threading.Event()
        tracker = ProgressTracker(progress, {e.name: e.size for e in entries})
        result: dict[str, Path] = {}
        todo: list[ModelEntry] = []
        for e in entries:
            ok, rec, _ = self._probe(e)
            if ok:
                assert rec is not None
                tracker.update(e.name, "present", rec.size, rec.size)
                result[e.name] = self.root / e.folder / e.name
            else:
                todo.append(e)
        for e in todo:
            e.sources()  # an undefined ${VAR} in a needed source: one clear ManifestError up front
        if todo and self.hub.offline:
            offline = [e for e in todo if not all(s.startswith("file://") for s in e.sources())
                       and not (self.adopter is not None and self.adopter.candidates(e))]  # issue 10: adoptable
            if offline:
                names_txt = " ".join(e.name for e in offline)
                raise OfflineError(
                    f"HF_HUB_OFFLINE=1 and {len(offline)} model(s) are not in the store {self.root}: {names_txt}",
                    hint=f"run `i2v-worker models fetch {names_txt}` with network access (HF_HUB_OFFLINE unset), "
                    "or point I2V_MODEL_DIR at a store that has them",
                )
        if not todo:
            return result
        errors: dict[str, BaseException] = {}
        with ThreadPoolExecutor(max_workers=min(len(todo), 8), thread_name_prefix="store") as pool:
            futures = {e.name: pool.submit(self._ensure_one, e, tracker, cancel) for e in todo}
            try:
                for name, fut in futures.items():
                    try:
                        result[name] = fut.result()
                    except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                        errors[name] = exc
            except BaseException:  # Ctrl-C / SystemExit in the caller: stop the downloads (parts kept)
                cancel.set()
                raise
        if errors:
            # The first failure is raised; the others (if any) are logged so none goes unseen.
            for name, exc in list(errors.items())[1:]:
                log(logger, logging.ERROR, "model failed", model=name, error=str(exc))
            raise next(iter(errors.values()))
        return {e.name: result[e.name] for e in entries}

    async def aensure(self, names: Iterable[str], *, progress: ProgressCallback | None = None,
                      cancel: threading.Event | None = None) -> dict[str, Path]:
        """`ensure` on a thread; cancelling the awaiting task sets `cancel` and waits (briefly) for
        the downloads to stop so leases are released and part files kept for resume."""
        cancel = cancel or threading.Event()
        names = list(names)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, lambda: self.ensure(names, progress=progress, cancel=cancel))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancel.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(fut, timeout=30)
            raise

    def _ensure_one(self, entry: ModelEntry, tracker: ProgressTracker, cancel: threading.Event) -> Path:
        final = self.root / entry.folder / entry.name
        self._prepare_layout(entry)
        deadline = self._clock() + self.lease_wait_s
        while True:  # one lease per round; a writer that loses its lease goes back to waiting
            lease = self._acquire(entry, tracker, cancel, deadline)
            if lease is None:
                return final  # published by someone else meanwhile
            abort = AnyCancel(cancel, lease.stop_signal)  # stop the download when the lease is lost
            lease.start_heartbeat()
            try:
                ok, rec, _ = self._probe(entry)
                if ok:  # published by the previous holder just before we took the lease
                    assert rec is not None
                    tracker.update(entry.name, "present", rec.size, rec.size)
                    return final
                # Adoption (store/adopt/): a verified copy the machine already has, linked instead
                # of downloaded; None when there is none (reasons logged) -> download.
                if self.adopter is not None:
                    adopted = self.adopter.adopt(
                        entry, root=self.root, writer_id=self.writer_id, source_uri=redact(entry.sources()[0]),
                        clock=self._clock, tracker=tracker, cancel=abort,
                        resolve=None if self.hub.offline else (lambda: self._transfer_engine()[0].resolve(
                            entry.sources()[0], model=entry.name, cancel=abort)))
                    if adopted is not None:
                        return adopted.path
                return self._download(entry, tracker, abort, lease)
            except LeaseLost as exc:
                log(logger, logging.WARNING, "stopped a download whose lease was taken over; waiting for "
                    "the new holder", model=entry.name, error=str(exc))
                tracker.update(entry.name, "waiting", message="lease lost; waiting for the new holder", force=True)
            except BaseException as exc:
                tracker.update(entry.name, "failed", message=str(exc), force=True)
                raise
            finally:
                lease.release()

    def _acquire(self, entry: ModelEntry, tracker: ProgressTracker, cancel: threading.Event,
                 deadline: float) -> Lease | None:
        """Wait for and take the model's lease; None when the model turned up present meanwhile."""
        lease = self._lease(entry.name)
        while True:
            if cancel.is_set():
                raise EnsureCancelled("cancelled while waiting for the download lease", model=entry.name)
            ok, rec, _ = self._probe(entry)
            if ok:
                assert rec is not None
                tracker.update(entry.name, "present", rec.size, rec.size)
                return None
            try:
                if lease.try_acquire():
                    return lease
                info = lease.read_strict()
                if info is not None and lease.is_stale(info):
                    if lease.take_over(info):
                        return lease
                    continue
            except LeaseUnreadable as exc:  # a flaky volume (ESTALE, EIO): wait and look again
                if self._clock() >= deadline:
                    raise disk.layout_error(exc, lease.path, model=entry.name) from None
                self._sleep_or_cancel(cancel)
                continue
            except OSError as exc:
                raise disk.layout_error(exc, lease.path.parent, model=entry.name) from None
            if info is None:  # released just now: try again almost at once
                cancel.wait(0.01)
                continue
            if self._clock() >= deadline:
                raise LeaseTimeout(
                    f"another worker ({info.holder} on {info.host}) has been downloading it for longer "
                    f"than the wait limit of {self.lease_wait_s:.0f} s",
                    model=entry.name,
                    hint="raise I2V_LEASE_WAIT_S, or check that worker; its lease turns stale "
                    f"{self.lease_stale_s:.0f} s after its last heartbeat",
                )
            parts = self._parts(entry)
            tracker.update(entry.name, "waiting", max((disk.part_progress(p) for p in parts), default=0),
                           entry.size, f"waiting for {info.holder} on {info.host}")
            self._sleep_or_cancel(cancel)

    def _prepare_layout(self, entry: ModelEntry) -> None:
        """The folders a download writes to; a clear StoreLayoutError (read-only, a file in the way)."""
        for d in (self.root / ".i2v" / "leases", self.root / ".i2v" / "records", self.root / entry.folder):
            disk.make_dirs(d, model=entry.name)

    def _sleep_or_cancel(self, cancel: threading.Event) -> bool:
        """Wait one lease poll on the store's clock; True when `cancel` was set meanwhile."""
        return self.clock.wait(self.lease_poll_s, cancel)

    # --- download and publish ----------------------------------------------------------------------
    def _download(self, entry: ModelEntry, tracker: ProgressTracker, abort: Cancel, lease: Lease) -> Path:
        folder = self.root / entry.folder
        temp = folder / disk.part_name(entry.name, self.writer_id)
        if (folder / entry.name).exists():
            log(logger, logging.WARNING, "a file without a matching verification record is at the model's "
                "path; checking it, else downloading a verified copy to replace it", model=entry.name,
                path=str(folder / entry.name))
            if self._recognise(entry, entry.size, entry.sha256, source="verify"):  # pinned: no network
                return folder / entry.name
        previous = lease.previous.holder if lease.previous is not None else None
        publish.adopt_part(folder, entry.name, temp, now=self._clock(), previous_holder=previous,
                           stale_after=self.lease_stale_s, model=entry.name, cancel=abort)
        sources = entry.sources()
        failures: list[DownloadError] = []
        for i, uri in enumerate(sources):
            try:
                return self._download_from(entry, uri, temp, tracker, abort, lease)
            except DownloadError as exc:
                failures.append(exc)
                if i + 1 < len(sources):
                    # A mirror may serve different bytes for an unpinned entry: start it afresh.
                    _remove_part(temp)
                    log(logger, logging.WARNING, "source failed, trying the next mirror", model=entry.name,
                        source=redact(uri), error=str(exc), next=redact(sources[i + 1]))
        if len(failures) == 1:
            raise failures[0]
        summary = "; ".join(f"{redact(s)}: {e}" for s, e in zip(sources, failures))
        raise DownloadError(f"every source failed ({summary})", model=entry.name,
                            permanent=all(f.permanent for f in failures))

    def _recognise(self, entry: ModelEntry, size: int | None, sha: str | None, *, source: str) -> bool:
        """The file under the model's name already holds the expected bytes (a kill between the
        rename and the record write): record it after one hash pass, no download."""
        final = self.root / entry.folder / entry.name
        st = publish.recognise(final, size, sha)
        if st is None:
            return False
        assert size is not None and sha is not None
        self._write_record(entry, st, size, sha, source)
        log(logger, logging.INFO, "recognised the published file (one hash pass, no download)", model=entry.name,
            path=str(final), bytes=size)
        return True

    def _write_record(self, entry: ModelEntry, st: os.stat_result, size: int, sha: str, source: str, *,
                      adopted_from: str | None = None, adopted_link: str | None = None) -> None:
        write_record(self.root, VerificationRecord(
            name=entry.name, folder=entry.folder, size=size, sha256=sha, mtime_ns=st.st_mtime_ns,
            # an adopted file's ctime moves whenever its cache adds or drops a name for the inode
            ctime_ns=None if adopted_from else st.st_ctime_ns, inode=st.st_ino, source=source,
            pinned=entry.pinned, verified_at=self._clock(), adopted_from=adopted_from, adopted_link=adopted_link,
        ), writer_id=self.writer_id)

    def _download_from(self, entry: ModelEntry, uri: str, temp: Path, tracker: ProgressTracker,
                       abort: Cancel, lease: Lease) -> Path:
        from i2v_worker.store.sources import parse_source
        from i2v_worker.store.transfer import TransferCancelled

        resolver, downloader = self._transfer_engine()
        folder = temp.parent
        final = folder / entry.name
        tracker.update(entry.name, "resolving", 0, entry.size)
        source = parse_source(uri)
        try:
            resolved = resolver.resolve(source, model=entry.name, cancel=abort)
        except TransferCancelled as exc:  # cancelled during a Retry-After wait
            raise self._stopped(exc, lease, entry, temp) from exc
        server_size, server_sha = resolved.size, resolved.sha256
        if entry.size is not None and server_size is not None and server_size != entry.size:
            raise IntegrityError(
                f"the source serves {server_size} bytes but the manifest pins {entry.size}",
                model=entry.name, url=redact(uri),
                hint="the file changed upstream: pin the revision or update size/sha256 in the manifest",
            )
        if entry.sha256 is not None and server_sha is not None and server_sha != entry.sha256:
            raise IntegrityError(
                f"the source's sha256 is {server_sha} but the manifest pins {entry.sha256}",
                model=entry.name, url=redact(uri),
                hint="the file changed upstream: pin the revision or update size/sha256 in the manifest",
            )
        expected_size = entry.size if entry.size is not None else server_size
        expected_sha = entry.sha256 if entry.sha256 is not None else server_sha
        tracker.set_total(entry.name, expected_size)
        if entry.sha256 is None and final.exists() and self._recognise(entry, expected_size, expected_sha,
                                                                     source=redact(uri)):
            _remove_part(temp)
            return final
        if expected_size is not None:
            # Claim the space on the volume before the first byte, next to what other writers
            # (other processes, other hosts) have claimed: one clear DiskFullError up front.
            try:
                disk.reserve(temp, expected_size, [self.root / f for f in FOLDERS], model=entry.name,
                             live_s=self.lease_stale_s, clock=self.clock.time, sleep=self.clock.wait,
                             preallocate=self.transfer.preallocate)
            except OSError as exc:
                raise self._write_failed(exc, temp, entry) from None

        def on_progress(done: int, total: int | None = None) -> None:
            tracker.update(entry.name, "downloading", done, total or expected_size)

        try:
            got = downloader.download(
                resolved, temp, model=entry.name,
                reresolve=lambda: resolver.resolve(source, model=entry.name, cancel=abort),
                progress=on_progress, cancel=abort,
                expected_size=expected_size, expected_sha256=expected_sha,
            )
        except (DiskFullError, IntegrityError):
            _remove_part(temp)
            raise
        except TransferCancelled as exc:  # part and sidecar kept for resume
            raise self._stopped(exc, lease, entry, temp) from exc
        except StoreError as exc:
            if disk.is_enospc(exc):
                raise self._write_failed(exc, temp, entry) from None
            raise
        except OSError as exc:
            raise self._write_failed(exc, temp, entry) from None

        tracker.update(entry.name, "verifying", got.size, expected_size)

        def owns() -> bool:
            try:
                return lease.still_held()
            except OSError:  # cannot tell just now: our bytes are verified, the rename is atomic
                return not lease.lost.is_set()

        publish.publish(
            temp, final, got_size=got.size, got_sha256=got.sha256, expected_size=expected_size,
            expected_sha256=expected_sha, owns=owns, model=entry.name, url=redact(uri),
            record=lambda st: self._write_record(entry, st, got.size, got.sha256, redact(uri)),
        )
        tracker.update(entry.name, "published", got.size, got.size, force=True)
        log(logger, logging.INFO, "model published", model=entry.name, bytes=got.size, path=str(final),
            pinned=entry.pinned, resumed_bytes=got.resumed_bytes)
        return final

    @staticmethod
    def _stopped(exc: BaseException, lease: Lease, entry: ModelEntry, temp: Path) -> StoreError:
        """A cancelled transfer: LeaseLost when the lease was taken over, else EnsureCancelled."""
        if lease.lost.is_set() or lease.expired():
            _drop_orphan_sidecar(temp)
            why = "was taken over" if lease.lost.is_set() else "could not be renewed in time"
            return LeaseLost(f"the download lease {why}; stopped", model=entry.name)
        return EnsureCancelled("cancelled; the partial download is kept and resumes next time", model=entry.name)

    @staticmethod
    def _write_failed(exc: BaseException, temp: Path, entry: ModelEntry) -> BaseException:
        """ENOSPC -> DiskFullError (part removed); a read-only/unusable folder -> StoreLayoutError."""
        if isinstance(exc, DiskFullError):
            _remove_part(temp)
            return exc
        if disk.is_enospc(exc):
            _remove_part(temp)
            return DiskFullError(f"disk full while writing {temp.parent}", model=entry.name,
                                 hint="free some space or point I2V_MODEL_DIR at a larger volume")
        if isinstance(exc, OSError):
            return disk.layout_error(exc, temp.parent, model=entry.name)
        return exc

    # --- verify, gc, ComfyUI paths ---------------------------------------------------------------
    def relinked(self, name: str) -> bool:
        """Re-record `name` after a hard link to its file was added or removed, which moves only the
        inode's ctime: the same inode, size and mtime keep it verified without a rehash. False (and
        nothing written) when the file is anything else than the recorded one."""
        rec = read_record(self.root, name)
        try:
            st = os.stat(self.root / rec.folder / name) if rec is not None else None
        except OSError:
            return False
        if rec is None or st is None or rec.inode != st.st_ino or rec.size != st.st_size or rec.mtime_ns != st.st_mtime_ns:
            return False
        write_record(self.root, rec.model_copy(update={"ctime_ns": st.st_ctime_ns}), writer_id=self.writer_id)
        return True

    def verify(self, *, full: bool = False, names: Iterable[str] | None = None) -> list[ModelStatus]:
        """Status of every model; with `full`, rehash each file on disk and compare with its record
        (or the manifest's pin). A mismatch is CORRUPT and its record is dropped, so the next
        `ensure` replaces the file; a pinned file without a record that hashes right is recorded."""
        statuses = self.status(names)
        if not full:
            return statuses
        out = []
        for s in statuses:
            if s.state not in (ModelState.PRESENT, ModelState.UNVERIFIED):
                out.append(s)
                continue
            entry = self.manifest.get(s.name)
            rec = read_record(self.root, s.name)
            size, sha = publish.hash_file(s.path)
            # The manifest pin, else what we verified when publishing (record may be stale by mtime).
            want_sha = entry.sha256 or (rec.sha256 if rec else None)
            want_size = entry.size or (rec.size if rec else None)
            if want_sha is None:  # unpinned and never recorded: nothing to compare with
                out.append(s)
                continue
            if sha == want_sha and (want_size is None or size == want_size):
                self._write_record(entry, os.stat(s.path), size, sha, rec.source if rec else "verify",
                                   adopted_from=rec.adopted_from if rec else None,  # keep the origin
                                   adopted_link=rec.adopted_link if rec else None)
                out.append(ModelStatus(s.name, s.folder, size, ModelState.PRESENT, entry.pinned, s.path, size, sha))
            else:
                remove_record(self.root, s.name)
                log(logger, logging.ERROR, "model file is corrupt", model=s.name, path=str(s.path),
                    sha256=sha, expected=want_sha, size=size)
                out.append(ModelStatus(s.name, s.folder, want_size, ModelState.CORRUPT, entry.pinned, s.path, size, sha))
        return out

    def gc(self, *, dry_run: bool = False) -> list[Path]:
        """Remove temp files no live download protects, files in the store's folders that no
        manifest entry references, and records of models no longer in the manifest. Returns the paths.

        A temp file (part or resume record) is kept while the lease of ITS model name is live or its
        writer is a live process on this host, whether or not this manifest knows the name: during
        a rolling deploy a worker with an older manifest must not delete a newer worker's download."""
        by_folder: dict[str, set[str]] = {}
        for e in self.manifest.entries:
            by_folder.setdefault(e.folder, set()).add(e.name)
        all_names = {e.name for e in self.manifest.entries}
        removed: list[Path] = []
        live: dict[str, bool] = {}

        def lease_live(name: str) -> bool:
            if name not in live:
                lease = self._lease(name)
                try:
                    info = lease.read_strict()
                except OSError:  # unreadable just now: assume live, never delete on a guess
                    live[name] = True
                else:
                    live[name] = info is not None and not lease.is_stale(info)
            return live[name]

        host = disk.this_host()
        for folder in FOLDERS:
            d = self.root / folder
            try:
                items = list(os.scandir(d))
            except OSError:
                continue
            for it in items:
                if not it.is_file(follow_symlinks=False) and not it.is_symlink():
                    continue
                temp = disk.parse_temp_name(it.name)
                if temp is not None:
                    name, writer = temp
                    w = disk.parse_writer_id(writer)
                    if lease_live(name) or (w is not None and w[0] == host and disk.pid_alive(w[1])):
                        continue
                    removed.append(Path(it.path))
                elif it.name not in by_folder.get(folder, set()) and not lease_live(it.name):
                    removed.append(Path(it.path))
        leases = self.root / ".i2v" / "leases"
        try:
            for it in os.scandir(leases):
                # Lease files themselves stay (harmless; removing one could race a takeover);
                # debris of acquisitions/takeovers interrupted by a crash goes once it is old.
                if it.name.startswith(".") and it.name.endswith((".tmp", ".takeover", ".new", CLAIM_SUFFIX)):
                    try:
                        if self._clock() - it.stat().st_mtime > self.lease_stale_s:
                            removed.append(Path(it.path))
                    except OSError:
                        pass
        except OSError:
            pass
        records = self.root / ".i2v" / "records"
        try:
            for it in os.scandir(records):
                if it.name.endswith(".json") and not it.name.startswith(".") and it.name[:-5] not in all_names:
                    if not lease_live(it.name[:-5]):
                        removed.append(Path(it.path))
                elif it.name.startswith(".") and it.name.endswith(".tmp"):
                    removed.append(Path(it.path))
        except OSError:
            pass
        if not dry_run:
            for p in removed:
                disk.remove_quietly(p)
            if removed:
                log(logger, logging.INFO, "gc removed files", count=len(removed))
        return removed

    def comfyui_extra_paths(self) -> Path:
        """Write `R/extra_model_paths.yaml` so ComfyUI finds every model under its folder name."""
        import yaml

        for folder in FOLDERS:
            disk.make_dirs(self.root / folder)
        doc = {"i2v_worker": {"base_path": str(self.root.resolve()), **FOLDER_ALIASES}}
        path = self.root / "extra_model_paths.yaml"
        tmp = self.root / f".extra_model_paths.yaml.{self.writer_id}.tmp"
        tmp.write_text("# written by i2v-worker: the model store's folders for ComfyUI\n"
                       + yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, path)
        return path


def _default_s3_client() -> Any:
    """boto3's own configuration chain (AWS_* variables, ~/.aws, instance roles) for s3:// sources."""
    import boto3

    return boto3.client("s3")


def _remove_part(temp: Path) -> None:
    from i2v_worker.store.transfer import remove_part

    remove_part(temp)


def _drop_orphan_sidecar(temp: Path) -> None:
    """After losing the lease: when the new holder already adopted (copied and removed) our part,
    the resume record we may have rewritten since describes nothing; remove it."""
    from i2v_worker.store.transfer import sidecar_path, sidecar_tmp_path

    if not temp.exists():
        disk.remove_quietly(sidecar_path(temp), sidecar_tmp_path(temp))
