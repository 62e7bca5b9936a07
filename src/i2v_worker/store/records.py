"""Verification records: what the store checked about a published file, so presence is a `stat`.

`R/.i2v/records/<name>.json` holds size, sha256, mtime_ns, ctime_ns, inode, source, pinned and
verified_at of the file the store published (or verified with `verify --full`). A model is PRESENT
when its file's size, mtime_ns, ctime_ns and inode still equal the record's (and the record agrees
with the manifest's pins): no network, no rehash. What that fast check sees: any write through the
filesystem (it moves mtime and ctime; restoring mtime with `touch -d`/utime moves ctime, which cannot
be set back), a replacement by another file (new inode), a size change. What it cannot see: bytes
changed below the filesystem (bit rot, a block device written directly, a volume restored with
ctimes preserved); `verify --full` rehashes for those. Records written before ctime/inode were
recorded (None) are checked on size and mtime only. Records are written atomically (temp + rename), so a reader sees an old record,
a new one, or none, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


class VerificationRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    folder: str
    size: int
    sha256: str
    mtime_ns: int
    ctime_ns: int | None = None  # None in records of older versions
    inode: int | None = None
    source: str  # the source URI the bytes came from (no credentials), or "verify" for an adopted file
    pinned: bool  # size and sha256 were pinned by the manifest (else learned from the server)
    verified_at: float  # unix time
    # Adoption (store/adopt/): the file was not downloaded but linked from a file the machine
    # already had. None for a download. `adopted_from` is the path as found (a HF cache snapshot
    # path or a ComfyUI models file); `adopted_link` is "hardlink" or "symlink".
    adopted_from: str | None = None
    adopted_link: str | None = None


def matches(record: VerificationRecord, st: os.stat_result) -> bool:
    """The fast presence check: the file is the one the record describes (see the module doc)."""
    if record.size != st.st_size or record.mtime_ns != st.st_mtime_ns:
        return False
    if record.ctime_ns is not None and record.ctime_ns != st.st_ctime_ns:
        return False
    return record.inode is None or record.inode == st.st_ino


def record_path(root: Path, name: str) -> Path:
    return root / ".i2v" / "records" / f"{name}.json"


def read_record(root: Path, name: str) -> VerificationRecord | None:
    """The record, or None when absent or unreadable (an unreadable record means 'not verified')."""
    try:
        data = record_path(root, name).read_bytes()
    except OSError:
        return None
    try:
        return VerificationRecord.model_validate_json(data)
    except ValidationError:
        return None


def write_record(root: Path, record: VerificationRecord, *, writer_id: str) -> Path:
    path = record_path(root, record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{writer_id}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record.model_dump(), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def remove_record(root: Path, name: str) -> None:
    try:
        record_path(root, name).unlink()
    except FileNotFoundError:
        pass
