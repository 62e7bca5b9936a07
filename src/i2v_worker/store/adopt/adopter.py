"""Adopt one model: find candidates, verify the first that can be, link it, record it.

Called by `ModelStore._ensure_one` with the model's download lease held, just before it would
download. Returns None (after logging each rejected candidate's reason) when nothing can be
adopted; the store then downloads as usual. A failure here never fails the model.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from i2v_worker.logs import log
from i2v_worker.store.adopt import link, verify
from i2v_worker.store.adopt.candidates import Candidate, CandidateFinder
from i2v_worker.store.manifest import ModelEntry
from i2v_worker.store.records import VerificationRecord, write_record

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.config import Settings
    from i2v_worker.store.progress import ProgressTracker

logger = logging.getLogger("i2v_worker.store.adopt")


@dataclass(frozen=True)
class AdoptResult:
    path: Path  # the model's path in the store
    source: Path  # the candidate path it was adopted from
    link: str  # "hardlink" or "symlink"
    size: int
    sha256: str
    basis: str  # what the hash was checked against: "manifest pin", "cache etag", "server etag"


class Adopter:
    def __init__(self, hf_caches: Iterable[Path] = (), comfyui_dirs: Iterable[Path] = (), *,
                 store_root: Path | None = None, hash_threads: int | None = None) -> None:
        self.finder = CandidateFinder(hf_caches, comfyui_dirs, exclude=[store_root] if store_root else [])
        # At most one core less than the machine has hashes at once: the engine starts (imports,
        # ComfyUI) at the same moment, and on a small machine parallel hashing would starve it.
        n = hash_threads if hash_threads is not None else max(1, (os.cpu_count() or 2) - 1)
        self._hash_slots = threading.BoundedSemaphore(n)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Adopter":
        return cls(settings.hf_cache_dirs, settings.comfyui_model_dirs, store_root=settings.model_dir)

    def candidates(self, entry: ModelEntry) -> list[Candidate]:
        return self.finder.find(entry)

    def adopt(self, entry: ModelEntry, *, root: Path, writer_id: str, source_uri: str,
              clock: Callable[[], float], tracker: "ProgressTracker | None" = None,
              cancel: threading.Event | None = None,
              resolve: Callable[[], Any] | None = None) -> AdoptResult | None:
        """Adopt the first candidate that verifies; None when none does (reasons are logged).

        `source_uri` is recorded as the record's source (the entry's source, redacted);
        `resolve()` (None when offline) returns the source's ResolvedSource, used only for an
        unpinned entry found outside a HF cache (one HEAD)."""
        cands = self.finder.find(entry)
        if not cands:
            return None
        learned: list[tuple[int | None, str | None]] = []

        def learn() -> tuple[int | None, str | None]:
            if not learned:
                r = resolve()  # type: ignore[misc]
                learned.append((getattr(r, "size", None), getattr(r, "sha256", None)))
            return learned[0]

        for cand in cands:
            if cancel is not None and cancel.is_set():
                return None
            try:
                result = self._try(entry, cand, root=root, writer_id=writer_id, source_uri=source_uri, clock=clock,
                                   tracker=tracker, cancel=cancel, learn=learn if resolve is not None else None)
            except verify.VerifyCancelled:
                return None
            except OSError as exc:  # e.g. the store folder is not writable: download instead, say why
                result = verify.Rejected(f"could not link it into the store: {exc}")
            if isinstance(result, AdoptResult):
                log(logger, logging.INFO, "model adopted", model=entry.name, source=str(cand.path),
                    link=result.link, bytes=result.size, verified_against=result.basis, path=str(result.path))
                return result
            log(logger, logging.WARNING, "not adopting a candidate copy", model=entry.name,
                candidate=str(cand.path), reason=result.reason)
        return None

    def _try(self, entry: ModelEntry, cand: Candidate, *, root: Path, writer_id: str, source_uri: str,
             clock: Callable[[], float], tracker: "ProgressTracker | None", cancel: threading.Event | None,
             learn: Callable[[], tuple[int | None, str | None]] | None) -> AdoptResult | verify.Rejected:
        src = verify.inspect(cand)
        if isinstance(src, verify.Rejected):
            return src
        want = verify.expected_for(entry, src, learn)
        if isinstance(want, verify.Rejected):
            return want
        bad = verify.check_size(src, want)
        if bad is not None:
            return bad
        folder = root / entry.folder
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / entry.name
        temp = folder / link.temp_name(entry.name, writer_id)
        how = link.make_link(src.real, temp)
        published = False
        try:
            if tracker is not None:
                tracker.update(entry.name, "verifying", 0, src.size, f"adopting {cand.path}", force=True)

            def on_hash(done: int) -> None:
                if tracker is not None:
                    tracker.update(entry.name, "verifying", done, src.size, f"adopting {cand.path}")

            with self._hash_slots:
                size, sha = verify.hash_file(temp, progress=on_hash, cancel=cancel)
            try:
                after = os.stat(src.real)
            except FileNotFoundError:
                return verify.Rejected(f"{src.real} vanished while it was being hashed")
            if not src.same_as(after) or size != src.size:
                return verify.Rejected(f"{src.real} changed while it was being hashed")
            if sha != want.sha256:
                return verify.Rejected(f"sha256 of {src.real} is {sha}, expected {want.sha256} ({want.basis})")
            link.publish(temp, final)
            published = True
        finally:
            if not published:
                link.remove(temp)
        st = os.stat(final)  # follows a symlink: the source's size and mtime are what must not change
        write_record(root, VerificationRecord(
            name=entry.name, folder=entry.folder, size=size, sha256=sha, mtime_ns=st.st_mtime_ns,
            # inode: a source replaced by another file is seen; no ctime: it moves whenever the cache
            # adds or drops a name for the inode (records.matches skips a None field)
            inode=st.st_ino, source=source_uri, pinned=entry.pinned, verified_at=clock(),
            adopted_from=str(cand.path), adopted_link=how,
        ), writer_id=writer_id)
        if tracker is not None:
            tracker.update(entry.name, "published", size, size, f"adopted from {cand.path} ({how})", force=True)
        return AdoptResult(final, cand.path, how, size, sha, want.basis)
