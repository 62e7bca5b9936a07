#!/usr/bin/env python3
"""How long `models status` takes with every production model present (target: < 50 ms in-process).

Builds a temp store in which each of the production preset's five files is a sparse file of its
size (pinned size, or a made-up ~10 GB for unpinned entries) plus a verification record written
with the store's own records API, exactly as the store writes one after publishing. Then times, as
the median of N runs:

- the in-process call `ModelStore.status(names)` (what the worker does per job), with sockets
  blocked to prove it needs no network;
- the CLI end to end, `i2v-worker models status --preset ... --store DIR` (includes Python
  start-up and imports), with HF_ENDPOINT pointed at a closed port.

    .venv/bin/python bench/status_latency.py [--runs 20]

Exit status: 0 target met, 1 missed or a model not reported present, 2 setup failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from i2v_worker.config import Settings
from i2v_worker.store.manifest import load_manifest
from i2v_worker.store.records import VerificationRecord, write_record
from i2v_worker.store.store import ModelStore, redact
from i2v_worker.store.types import ModelState

PRESET = "wan22-i2v-lightx2v"
UNPINNED_SIZE = 10_000_000_000  # models.md: "about 10.0e9, not pinned"
TARGET_MS = 50.0


@contextmanager
def no_network():
    """Any socket connect during the block raises: status must not touch the network."""
    real = socket.socket.connect, socket.socket.connect_ex

    def refuse(self, *a, **k):
        raise AssertionError(f"models status tried to connect to {a[0] if a else '?'}")

    socket.socket.connect = socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = real  # type: ignore[method-assign]


def populate(root: Path, preset: str) -> list[str]:
    """Sparse files of the right size + a verification record each; returns the model names."""
    manifest = load_manifest()
    names = []
    for e in manifest.preset(preset):
        path = root / e.folder / e.name
        path.parent.mkdir(parents=True, exist_ok=True)
        size = e.size or UNPINNED_SIZE
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: no disk used
        st = path.stat()
        record = VerificationRecord(
            name=e.name, folder=e.folder, size=size,
            sha256=e.sha256 or hashlib.sha256(e.name.encode()).hexdigest(),  # made up for unpinned
            mtime_ns=st.st_mtime_ns, source=redact(e.source), pinned=e.pinned, verified_at=time.time(),
        )
        write_record(root, record, writer_id="bench")
        names.append(e.name)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="timed runs of each (default 20); the median is shown")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the temp store goes (default /tmp)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")

    i2v = str(Path(sys.executable).parent / "i2v-worker")
    if not os.access(i2v, os.X_OK):
        i2v = shutil.which("i2v-worker") or ""
    root = Path(tempfile.mkdtemp(prefix="i2v-status-bench-", dir=args.tmp))
    try:
        names = populate(root, PRESET)
        files = [f for f in root.rglob("*") if f.is_file() and ".i2v" not in f.parts]
        apparent = sum(f.stat().st_size for f in files)
        used = sum(f.stat().st_blocks * 512 for f in files)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("I2V_", "HF_"))}
        env.update({"I2V_MODEL_DIR": str(root), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(root / ".hf")})
        print(f"models status benchmark: {len(names)} models of preset {PRESET} present "
              f""
              f"(sparse files, {apparent / 1e9:.1f} GB apparent, {used / 1e6:.1f} MB on disk), store {root}")
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        # --- in-process ----------------------------------------------------------------------
        t0 = time.perf_counter()
        settings = Settings.from_env(env)
        store = ModelStore.from_settings(settings)
        setup_ms = (time.perf_counter() - t0) * 1000
        with no_network():
            first = store.status(names)
            states = {s.name: s.state for s in first}
            not_present = {n: s.value for n, s in states.items() if s is not ModelState.PRESENT}
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                store.status(names)
                times.append((time.perf_counter() - t0) * 1000)
        inproc = statistics.median(times)

        # --- CLI end to end ------------------------------------------------------------------
        cli_times: list[float] = []
        cli_error = ""
        if not i2v:
            cli_error = "no i2v-worker executable next to this Python or on PATH"
        else:
            argv_ = [i2v, "models", "status", "--preset", PRESET, "--store", str(root)]
            for _ in range(args.runs):
                t0 = time.perf_counter()
                out = subprocess.run(argv_, env=env, capture_output=True, text=True, timeout=120)
                cli_times.append((time.perf_counter() - t0) * 1000)
                if out.returncode != 0:
                    cli_error = f"`{' '.join(argv_)}` exited {out.returncode}: {out.stderr.strip()[-300:]}"
                    break
                if out.stdout.count("present") < len(names):
                    cli_error = f"the CLI did not report all {len(names)} models present:\n{out.stdout}"
                    break
        print(f"  load_manifest + ModelStore construction: {setup_ms:.1f} ms (once per process)")
        print(f"  ModelStore.status() in-process, median of {len(times)}: {inproc:.2f} ms "
              f"(min {min(times):.2f}, max {max(times):.2f})")
        if cli_times and not cli_error:
            print(f"  `i2v-worker models status` CLI end to end (Python start-up included), median of "
                  f"{len(cli_times)}: {statistics.median(cli_times):.0f} ms (min {min(cli_times):.0f})")
        ok = True
        if not_present:
            ok = False
            print(f"  FAIL  not reported present: {not_present}")
        if cli_error:
            ok = False
            print(f"  FAIL  CLI: {cli_error}")
        met = inproc < TARGET_MS
        ok = ok and met
        print(f"  {'PASS' if met else 'FAIL'}  in-process status < {TARGET_MS:.0f} ms, no network: {inproc:.2f} ms")
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
