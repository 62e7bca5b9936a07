"""What a fetch would do, before it does anything (`models fetch --dry-run`), and where each
present model came from (`models status`). No network, no hashing: a candidate listed here is
verified (size, then sha256) when the fetch runs, and downloaded instead if it fails."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from i2v_worker.store.adopt import verify
from i2v_worker.store.records import VerificationRecord, read_record
from i2v_worker.store.types import ModelState

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.store.store import ModelStore


@dataclass(frozen=True)
class PlanItem:
    name: str
    state: str  # the model's state now (ModelState value)
    action: str  # "present", "adopt", "download", "resume"
    source: str  # where from: a local path for adopt, the source URI for download
    bytes_to_download: int | None  # None: unpinned entry, size learned only when it is resolved
    size: int | None
    rejected: tuple[str, ...] = ()  # candidates that cannot be adopted, with the reason


@dataclass(frozen=True)
class FetchPlan:
    items: tuple[PlanItem, ...]

    @property
    def bytes_to_download(self) -> int:
        return sum(i.bytes_to_download or 0 for i in self.items)

    @property
    def unknown_sizes(self) -> list[str]:
        return [i.name for i in self.items if i.action in ("download", "resume") and i.bytes_to_download is None]


def plan_fetch(store: "ModelStore", names: Iterable[str]) -> FetchPlan:
    from i2v_worker.store.store import redact

    items = []
    adopter = getattr(store, "adopter", None)
    for s in store.status(names):
        entry = store.manifest.get(s.name)
        if s.state is ModelState.PRESENT:
            rec = read_record(store.root, s.name)
            items.append(PlanItem(s.name, s.state.value, "present", origin_text(rec), 0, s.size))
            continue
        rejected: list[str] = []
        chosen = None
        for cand in (adopter.candidates(entry) if adopter is not None else []):
            src = verify.inspect(cand)
            if isinstance(src, verify.Rejected):
                rejected.append(f"{cand.path}: {src.reason}")
                continue
            # No network here: an unpinned candidate outside a HF cache is checked against the
            # server's etag when the fetch runs (never when offline).
            want = verify.expected_for(entry, src, learn=None if store.hub.offline else _deferred)
            if isinstance(want, verify.Rejected):
                rejected.append(f"{cand.path}: {want.reason}")
                continue
            bad = verify.check_size(src, want)
            if bad is not None:
                rejected.append(f"{cand.path}: {bad.reason}")
                continue
            chosen = (cand, src)
            break
        if chosen is not None:
            items.append(PlanItem(s.name, s.state.value, "adopt", str(chosen[0].path), 0, chosen[1].size,
                                  tuple(rejected)))
            continue
        source = redact(entry.source) if entry.source_error is None else entry.source
        left = None if entry.size is None else max(0, entry.size - (s.bytes_on_disk if s.state is ModelState.PARTIAL else 0))
        action = "resume" if s.state is ModelState.PARTIAL and s.bytes_on_disk else "download"
        items.append(PlanItem(s.name, s.state.value, action, source, left, entry.size, tuple(rejected)))
    return FetchPlan(tuple(items))


def _deferred() -> tuple[None, str]:
    return None, "(the server's X-Linked-Etag, learned when the fetch runs)"


def origin_text(rec: VerificationRecord | None) -> str:
    """"downloaded", "adopted from PATH (hardlink)", or "" when there is no record."""
    if rec is None:
        return ""
    if rec.adopted_from:
        note = ""
        if rec.adopted_link == "symlink" and not os.path.exists(rec.adopted_from):
            note = ", source gone"
        return f"adopted from {rec.adopted_from} ({rec.adopted_link}{note})"
    return "downloaded" if rec.source != "verify" else "verified in place"


def status_origin(store: "ModelStore", name: str, state: ModelState) -> str:
    """The origin column of `models status`: where a present model came from; for a model that
    is not present but whose record says it was adopted, that its source vanished or changed."""
    rec = read_record(store.root, name)
    if rec is None:
        return ""
    if state is ModelState.PRESENT:
        return origin_text(rec)
    if rec.adopted_from:
        gone = not os.path.exists(rec.adopted_from)
        return f"was adopted from {rec.adopted_from}: source {'gone' if gone else 'changed'}"
    return ""

