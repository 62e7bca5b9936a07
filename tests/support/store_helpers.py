"""Helpers for the model-store tests: synthetic model bytes, manifests, stores, tmpfs mounts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = "org/models"
REV = "main"
SRC_ROOT = Path(__file__).resolve().parents[2] / "src"


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (incompressible, so no accidental shortcut helps)."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes | Path) -> str:
    if isinstance(data, Path):
        h = hashlib.sha256()
        with open(data, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    return hashlib.sha256(data).hexdigest()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def write_manifest(path: Path, models: dict[str, dict[str, Any]], presets: dict[str, str] | None = None) -> Path:
    """models: name -> fields (folder, role, source, ...). Roles default to 'vae' (no preset needs
    them complete unless `presets` is given)."""
    lines = []
    for p, desc in (presets or {}).items():
        lines += [f"[presets.{p}]", f"description = {_toml_value(desc)}", ""]
    for name, fields in models.items():
        fields = {"folder": "vae", "role": "vae", **fields}
        lines.append(f"[models.{_toml_value(name)}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def hf_source(path: str, repo: str = REPO, rev: str = REV) -> str:
    return f"hf://{repo}@{rev}/{path}"


def make_store(root: Path, manifest, *, hf=None, offline: bool = False, connections: int = 4,
               s3=None, **kw):
    """A ModelStore on `root` talking to the test HF server `hf` (and moto `s3`), fast retries."""
    from i2v_worker.store.sources import HubConfig
    from i2v_worker.store.store import ModelStore
    from i2v_worker.store.transfer import TransferConfig

    hub = HubConfig(endpoint=hf.endpoint if hf is not None else "http://127.0.0.1:9", token=None, offline=offline)
    transfer = _transfer_config(TransferConfig, connections)
    if s3 is not None:
        kw.setdefault("s3_client_factory", s3.client)
    return ModelStore(root, manifest, hub=hub, transfer=transfer, **kw)


def _transfer_config(cls, connections: int):
    """Small chunks and short backoffs so a few-MB file still uses several ranges and tests are quick."""
    import dataclasses

    wanted = {"connections_per_file": connections, "max_connections": max(8, connections),
              "chunk_size": 256 * 1024, "min_chunk_size": 64 * 1024, "backoff_base_s": 0.05,
              "backoff_max_s": 0.5, "max_retries": 4}
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
    else:  # pydantic
        names = set(getattr(cls, "model_fields", {}))
    return cls(**{k: v for k, v in wanted.items() if k in names})


def part_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.part*") if p.is_file())


def cli_env(store: Path, *, hf=None, manifest: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for an `i2v-worker` subprocess pointed at the test servers (nothing else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("I2V_", "HF_"))}
    env.update({"I2V_MODEL_DIR": str(store), "HF_HOME": str(store.parent / "hf-home"),
                "PYTHONPATH": str(SRC_ROOT), "NO_COLOR": "1", "COLUMNS": "250"})
    if hf is not None:
        env["HF_ENDPOINT"] = hf.endpoint
    if manifest is not None:
        env["I2V_MANIFEST"] = str(manifest)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "i2v_worker", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """A real tmpfs of `size_bytes` at `path` (root only); skips the test where mount is refused."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_bytes}"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, f"i2vtest-{uuid.uuid4().hex[:6]}", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
