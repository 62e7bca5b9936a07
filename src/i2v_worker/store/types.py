"""Typed data crossing the store's boundary (used by the worker, the CLI and the engines)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class ModelState(str, enum.Enum):
    PRESENT = "present"  # published and recorded as verified (size, sha256, mtime match the record)
    MISSING = "missing"  # nothing usable under the model's name
    PARTIAL = "partial"  # a resumable temp file exists (bytes so far are reported)
    DOWNLOADING = "downloading"  # another live process holds the download lease
    UNVERIFIED = "unverified"  # a file of that name without a matching record: will be replaced
    CORRUPT = "corrupt"  # `verify --full` found the content does not match the record/manifest


@dataclass(frozen=True)
class ModelStatus:
    name: str
    folder: str
    size: int | None  # pinned or learned size (None when unknown before the first download)
    state: ModelState
    pinned: bool  # size and sha256 come from the manifest (not learned from the server)
    path: Path
    bytes_on_disk: int = 0  # for PARTIAL: bytes already downloaded
    sha256: str | None = None


@dataclass(frozen=True)
class ProgressEvent:
    """Emitted by `ModelStore.ensure` (throttled by the store to a few per second).

    `model` is None for the overall summary events. `phase` is one of: waiting (another worker
    holds the lease), resolving, downloading, verifying, published, present, failed.
    """

    model: str | None
    phase: str
    done: int
    total: int | None
    overall_done: int
    overall_total: int | None
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]
