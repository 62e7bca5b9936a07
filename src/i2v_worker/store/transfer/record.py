"""The resume record ("sidecar") of a part file: which byte ranges are durably written, and for
which version of the file.

It lives next to the part as `sidecar_path(part)` (`part + ".json"`, the ONE place that name is
built), written atomically (temp + fsync + rename) after an fdatasync of the part, so every range
it lists is on disk. Any part file with a valid record resumes, whoever wrote it: a store that
adopts a dead writer's part moves the part and its sidecar to its own name and calls `download`.

Format (JSON, version 2): `{"v": 2, "size", "sha256", "etag", "validator": {"etag", "last_modified"},
"done": [[start, end], ...], "verified": <bytes in done>}`. `verified` is kept for readers that only
want progress (`disk.part_progress`). Version 1 records (prefix only) are not resumed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from i2v_worker.store.sources import Validator

VERSION = 2


def sidecar_path(part_path: Path | str) -> Path:
    return Path(str(part_path) + ".json")


def sidecar_tmp_path(part_path: Path | str) -> Path:
    return Path(str(part_path) + ".json.tmp")


@dataclass(frozen=True)
class ResumeRecord:
    size: int
    sha256: str | None
    etag: str | None  # the source's identity at resolution (hub X-Linked-Etag, S3 ETag, ...)
    validator: Validator | None = None  # what the transfer URL answered (ETag / Last-Modified)
    done: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    @property
    def verified(self) -> int:
        """Bytes recorded as written (anywhere in the file)."""
        return sum(b - a for a, b in self.done)

    def same_file(self, size: int | None, sha256: str | None, etag: str | None) -> bool:
        """Whether this record is about the file the caller is about to download."""
        if size is None or self.size != size:
            return False
        if sha256 is not None:
            return self.sha256 == sha256
        return etag is not None and self.etag == etag

    def to_json(self) -> dict[str, Any]:
        v = self.validator
        return {"v": VERSION, "size": self.size, "sha256": self.sha256, "etag": self.etag,
                "validator": None if v is None else {"etag": v.etag, "last_modified": v.last_modified},
                "done": [list(s) for s in self.done], "verified": self.verified}


def read_sidecar(part_path: Path | str) -> ResumeRecord | None:
    """The resume record of a part file, or None when absent, unreadable or of another version."""
    try:
        data = json.loads(sidecar_path(part_path).read_text())
    except (OSError, ValueError):
        return None
    try:
        if not isinstance(data, dict) or data.get("v") != VERSION:
            return None
        size = data["size"]
        if not isinstance(size, int) or size < 0:
            return None
        done = []
        for a, b in data.get("done") or []:
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b <= size):
                return None
            done.append((a, b))
        v = data.get("validator")
        validator = Validator(etag=v.get("etag"), last_modified=v.get("last_modified")) if isinstance(v, dict) else None
        return ResumeRecord(size=size, sha256=data.get("sha256"), etag=data.get("etag"), validator=validator,
                            done=tuple(sorted(done)))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def write_sidecar(part_path: Path | str, record: ResumeRecord) -> None:
    tmp = sidecar_tmp_path(part_path)
    with open(tmp, "w") as f:
        json.dump(record.to_json(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, sidecar_path(part_path))


def drop_sidecar(part_path: Path | str) -> None:
    """Forget the resume state (the bytes of the part must never be reused)."""
    for p in (sidecar_path(part_path), sidecar_tmp_path(part_path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def remove_part(part_path: Path | str) -> None:
    """Delete a part file and its sidecar (the caller's cleanup after DiskFullError/IntegrityError)."""
    try:
        Path(part_path).unlink()
    except FileNotFoundError:
        pass
    drop_sidecar(part_path)
