"""The job-LoRA area's own bookkeeping, next to the files it describes (under `.i2v/job-loras/`):

- `content/<sha256>.json`: one per stored LoRA: size, the sources it came from, added, last_used
  (what LRU eviction orders by and `models status` shows);
- `sources/<key>.json`: source -> sha256 and size, so a job naming a source again (without a
  sha256) finds its file with a `stat` and a small read: no network;
- `in-use/<sha256>.<writer id>.<n>`: one marker per running job that uses a LoRA; eviction never
  removes a LoRA with a live marker (a marker of a dead process on this host is stale; one from
  another host is trusted for `IN_USE_STALE_S`).

Every file is written atomically (temp + rename); a reader sees the old or the new version.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from i2v_worker.store import disk

IN_USE_STALE_S = 6 * 3600.0  # a marker from another host older than this is ignored (a crashed worker)
_counter = itertools.count(1)


@dataclass
class ContentInfo:
    sha256: str
    size: int
    sources: list[str] = field(default_factory=list)
    added: float = 0.0
    last_used: float = 0.0


def source_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:32]


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_counter)}.tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class Meta:
    def __init__(self, base: Path, *, clock=time.time) -> None:
        self.base = base
        self._clock = clock

    # -- content -----------------------------------------------------------------------------------
    def content(self, sha: str) -> ContentInfo | None:
        doc = _read_json(self.base / "content" / f"{sha}.json")
        if doc is None:
            return None
        try:
            return ContentInfo(**{k: doc[k] for k in ("sha256", "size", "sources", "added", "last_used") if k in doc})
        except TypeError:
            return None

    def all_content(self) -> list[ContentInfo]:
        out = []
        try:
            names = os.listdir(self.base / "content")
        except FileNotFoundError:
            return []
        for n in names:
            if n.endswith(".json") and not n.startswith("."):
                info = self.content(n[:-5])
                if info is not None:
                    out.append(info)
        return out

    def record_use(self, sha: str, size: int, source: str | None) -> ContentInfo:
        now = self._clock()
        info = self.content(sha) or ContentInfo(sha, size, [], now, now)
        info.size = size
        info.last_used = now
        if source and source not in info.sources:
            info.sources.append(source)
        _write_json(self.base / "content" / f"{sha}.json", asdict(info))
        return info

    def forget_content(self, sha: str) -> None:
        info = self.content(sha)
        for src in (info.sources if info else []):
            p = self.base / "sources" / f"{source_key(src)}.json"
            doc = _read_json(p)
            if doc and doc.get("sha256") == sha:
                disk.remove_quietly(p)
        disk.remove_quietly(self.base / "content" / f"{sha}.json")

    # -- sources -----------------------------------------------------------------------------------
    def lookup(self, source: str) -> tuple[str, int] | None:
        doc = _read_json(self.base / "sources" / f"{source_key(source)}.json")
        if not doc or doc.get("source") != source:
            return None
        try:
            return str(doc["sha256"]), int(doc["size"])
        except (KeyError, ValueError, TypeError):
            return None

    def remember(self, source: str, sha: str, size: int) -> None:
        _write_json(self.base / "sources" / f"{source_key(source)}.json",
                    {"source": source, "sha256": sha, "size": size})

    # -- in use ------------------------------------------------------------------------------------
    def mark_in_use(self, sha: str, writer_id: str) -> Path:
        d = self.base / "in-use"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{sha}.{writer_id}.{next(_counter)}"
        p.touch()
        return p

    def in_use(self, sha: str) -> bool:
        d = self.base / "in-use"
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return False
        host, now = disk.this_host(), self._clock()
        for n in names:
            if not n.startswith(sha + "."):
                continue
            writer = n[len(sha) + 1:].rsplit(".", 1)[0]
            parsed = disk.parse_writer_id(writer)
            if parsed is not None and parsed[0] == host:
                if disk.pid_alive(parsed[1]):
                    return True
                disk.remove_quietly(d / n)  # its process is gone
                continue
            try:
                if now - os.stat(d / n).st_mtime < IN_USE_STALE_S:
                    return True
            except OSError:
                continue
        return False
