"""Where a copy of a manifest entry might already be on this machine (finding only: no hashing).

Hugging Face hub cache layout (what `hf_hub_download` / `snapshot_download` and RunPod's cached
models leave)::

    <cache>/models--ORG--NAME/refs/<branch>                 the commit the branch pointed to
    <cache>/models--ORG--NAME/snapshots/<commit>/<path>     a symlink to ../../blobs/<etag>
    <cache>/models--ORG--NAME/blobs/<etag>                  the bytes (etag = sha256 for LFS files)
    <cache>/models--ORG--NAME/blobs/<etag>.incomplete       a download in progress (or killed)

An `hf://ORG/NAME@REV/PATH` entry is looked up by repo, revision (a commit directly, a branch or
tag through `refs/`) and path; any entry with a pinned sha256 also by content (`blobs/<sha256>` in
any repo of any cache). A ComfyUI `models` folder is searched by the entry's folder, under each of
ComfyUI's names for it (unet/diffusion_models, text_encoders/clip), for the local name and for the
upstream file name. Candidates come in search order, one per real file (two caches holding the
same file by a link are one candidate; two separate copies are two, tried in order).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from i2v_worker.store.manifest import FOLDER_ALIASES, ModelEntry

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Candidate:
    """A file that may hold an entry's bytes."""

    path: Path  # as found: a snapshot path (usually a symlink into blobs/), a blob, a ComfyUI file
    kind: str  # "hf-cache" or "comfyui"
    root: Path  # the cache or models folder that was searched
    match: str  # how it matched, for logs: "repo ORG/NAME@REV/PATH", "blob sha256", "folder unet/NAME"

    def describe(self) -> str:
        return f"{self.path} ({self.kind}, {self.match})"


def aliases(folder: str) -> list[str]:
    """ComfyUI's names for a canonical store folder, the canonical one first."""
    return [folder] + [a for a, canon in FOLDER_ALIASES.items() if canon == folder and a != folder]


def repo_dir(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def snapshot_commit(repo_path: Path, revision: str) -> str | None:
    """The commit a revision names in a cache: itself when it is a commit with a snapshot, else
    the content of refs/<revision>."""
    if _COMMIT.match(revision) and (repo_path / "snapshots" / revision).is_dir():
        return revision
    try:
        commit = (repo_path / "refs" / revision).read_text().strip()
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return commit if _COMMIT.match(commit) else None


class CandidateFinder:
    """Finds candidates for an entry in the configured caches and ComfyUI folders."""

    def __init__(self, hf_caches: Iterable[Path] = (), comfyui_dirs: Iterable[Path] = (),
                 exclude: Iterable[Path] = ()) -> None:
        self.hf_caches = tuple(dict.fromkeys(Path(p) for p in hf_caches))
        self.comfyui_dirs = tuple(dict.fromkeys(Path(p) for p in comfyui_dirs))
        self._exclude = tuple(Path(p) for p in exclude)  # the store's own root: never a source

    def find(self, entry: ModelEntry) -> list[Candidate]:
        out: list[Candidate] = []
        seen: set[str] = set()
        for cand in self._all(entry):
            try:
                real = os.path.realpath(cand.path)
            except (OSError, ValueError):
                continue
            if real in seen or any(_inside(Path(real), ex) for ex in self._exclude):
                continue
            seen.add(real)
            out.append(cand)
        return out

    def _all(self, entry: ModelEntry) -> Iterator[Candidate]:
        hf_sources = _hf_sources(entry)
        for cache in self.hf_caches:
            for repo, rev, path in hf_sources:
                rp = repo_dir(cache, repo)
                commit = snapshot_commit(rp, rev)
                if commit is None:
                    continue
                p = rp / "snapshots" / commit / PurePosixPath(path)
                if os.path.lexists(p):  # a broken symlink is still a candidate: verify says why not
                    yield Candidate(p, "hf-cache", cache, f"repo {repo}@{rev}/{path}")
            if entry.sha256 is not None:
                yield from self._by_content(cache, entry.sha256)
        names = [entry.name] + [PurePosixPath(p).name for _, _, p in hf_sources]
        for models in self.comfyui_dirs:
            for folder in aliases(entry.folder):
                for name in dict.fromkeys(names):
                    p = models / folder / name
                    if os.path.lexists(p):
                        yield Candidate(p, "comfyui", models, f"folder {folder}/{name}")

    @staticmethod
    def _by_content(cache: Path, sha256: str) -> Iterator[Candidate]:
        try:
            repos = sorted(d for d in os.listdir(cache) if d.startswith(("models--", "datasets--", "spaces--")))
        except OSError:
            return
        for d in repos:
            p = cache / d / "blobs" / sha256
            if os.path.lexists(p):
                yield Candidate(p, "hf-cache", cache, "blob sha256")


def _hf_sources(entry: ModelEntry) -> list[tuple[str, str, str]]:
    """(repo, revision, path) of the entry's hf:// source and mirrors (none when undefined)."""
    from i2v_worker.store.sources import parse_source

    if entry.source_error is not None:
        return []
    out = []
    for uri in entry.sources():
        if not uri.startswith("hf://"):
            continue
        try:
            src = parse_source(uri)
        except ValueError:
            continue
        if src.repo and src.path:
            out.append((src.repo, src.revision or "main", src.path))
    return out


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False
