"""Whether a candidate holds an entry's bytes: verification before trust.

What the bytes must be (`expected_for`), in order of authority:

1. the manifest's pin (size and sha256);
2. for an unpinned entry, the cache's etag: a HF cache blob is named by the etag the hub sent,
   which for LFS files (every model file) is the sha256 of the content (`X-Linked-Etag`);
3. for an unpinned entry found outside a HF cache (a ComfyUI folder), the server's
   `X-Linked-Size` / `X-Linked-Etag` from one HEAD (no body bytes; not when HF_HUB_OFFLINE=1).

Without any of these there is nothing to compare with and the candidate is rejected.

The blob name is a claim, not a proof, so the bytes are rehashed once, at adoption:
huggingface_hub names the blob after the etag the server announced and does not hash what it
received, a cache copied between volumes can be truncated or damaged, and a ComfyUI file is just a
name. One pass costs about as much as the hash the store computes while downloading (see
bench/hash_pass.py and docs/deploy.md); afterwards the verification record (size, mtime) makes
presence a `stat` again. The size is checked first, so a truncated copy costs nothing to reject.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from i2v_worker.store.adopt.candidates import SHA256_RE, Candidate
from i2v_worker.store.manifest import ModelEntry

CHUNK = 8 * 2**20


@dataclass(frozen=True)
class Expected:
    size: int | None
    sha256: str
    basis: str  # "manifest pin", "cache etag" or "server etag"


@dataclass(frozen=True)
class Rejected:
    reason: str


@dataclass(frozen=True)
class SourceFile:
    """The real file behind a candidate (symlinks followed) and its identity when inspected."""

    real: Path
    size: int
    mtime_ns: int
    ino: int
    dev: int
    etag: str | None  # the blob name when the file is a HF cache blob

    def same_as(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) == (self.size, self.mtime_ns, self.ino, self.dev)


class VerifyCancelled(Exception):
    pass


def inspect(cand: Candidate) -> SourceFile | Rejected:
    """Follow the candidate to its real file; reject what cannot be a finished model file."""
    real = Path(os.path.realpath(cand.path))
    if real.name.endswith(".incomplete"):
        return Rejected(f"{real} is an unfinished download (.incomplete)")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return Rejected(f"broken symlink: {cand.path} points to {real}, which does not exist")
    except OSError as exc:
        return Rejected(f"cannot stat {real}: {exc.strerror or exc}")
    if not stat_mod.S_ISREG(st.st_mode):
        return Rejected(f"{real} is not a regular file")
    if not os.access(real, os.R_OK):
        return Rejected(f"{real} is not readable")
    etag = real.name if real.parent.name == "blobs" else None
    return SourceFile(real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, etag)


def expected_for(entry: ModelEntry, src: SourceFile,
                 learn: Callable[[], tuple[int | None, str | None]] | None) -> Expected | Rejected:
    etag_sha = src.etag if src.etag and SHA256_RE.match(src.etag) else None
    if entry.sha256 is not None:
        if etag_sha is not None and etag_sha != entry.sha256:
            return Rejected(f"the cache blob is named {etag_sha} but the manifest pins sha256 {entry.sha256}")
        return Expected(entry.size, entry.sha256, "manifest pin")
    if etag_sha is not None:
        return Expected(entry.size, etag_sha, "cache etag")
    if src.etag is not None:
        return Rejected(f"unpinned entry and the cache blob's etag {src.etag} is not a sha256 (not an LFS file)")
    if learn is None:
        return Rejected("unpinned entry outside a Hugging Face cache and no network (HF_HUB_OFFLINE=1) to learn "
                        "its sha256; pin size and sha256 in the manifest to adopt it offline")
    try:
        size, sha = learn()
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot verify, download instead
        return Rejected(f"could not learn the sha256 from the source: {exc}")
    if sha is None:
        return Rejected("the source announces no sha256 (X-Linked-Etag) to verify against")
    return Expected(entry.size if entry.size is not None else size, sha, "server etag")


def check_size(src: SourceFile, want: Expected) -> Rejected | None:
    if want.size is not None and src.size != want.size:
        return Rejected(f"{src.real} has {src.size} bytes, expected {want.size} ({want.basis})")
    return None


def hash_file(path: Path, *, progress: Callable[[int], None] | None = None,
              cancel: threading.Event | None = None) -> tuple[int, str]:
    """(size, sha256) of the file at `path` (one sequential pass, read-only)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            done += n
            if progress is not None:
                progress(done)
            if cancel is not None and cancel.is_set():
                raise VerifyCancelled()
    return done, h.hexdigest()
