#!/usr/bin/env python3
"""Takeover benchmark: bytes served when a store's download changes hands between hosts.

A local HF-style server (tests/support/hf_server.py on 127.0.0.1, each connection paced at `--rate`)
serves one random file. Writers are `ModelStore.ensure` processes (tests/support/store_writer.py,
lease stale time 2 s) in their own UTS namespace (`unshare -u`, another hostname), on one store:

- cross-host takeover (killed): writer A on hostA is SIGKILLed after a random 20-80 % of the file;
  writer B on hostB waits for A's lease to turn stale, takes it over, reuses (copies) A's part and
  finishes;
- cross-host takeover (frozen): the same, but A is SIGSTOPped (a VM pause) and resumed after B has
  published; A must stop without touching B's file.

Reported per row: bytes the server sent over both writers divided by the file size (1.00 = no byte
fetched twice), whether the published file's sha256 is right and, for the frozen row, whether the
published file was left untouched (inode, mtime, ctime) after A woke up.

    .venv/bin/python bench/takeover.py [--size-mib 64] [--runs 3] [--rate 8m]

Needs root (unshare). Benchmark, not a test: timings on a shared machine are noisy, byte counts are not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from common import parse_rate, sha256_file  # noqa: E402  (bench/ is sys.path[0])
from tests.support.hf_server import HFServer  # noqa: E402

REPO, REV, NAME = "bench/takeover", "main", "file.bin"
MIB = 2**20


def writer(host: str, store: Path, manifest: Path, hf: HFServer) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.support.store_writer", str(store), str(manifest), NAME, hf.endpoint,
           "--stale", "2", "--beat", "0.2"]
    cmd = ["unshare", "-u", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *cmd]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def run_case(hf: HFServer, work: Path, manifest: Path, sha: str, size: int, frozen: bool,
             rng: random.Random) -> tuple[float, bool, bool, float]:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    hf.reset_log()
    frac = round(rng.uniform(0.2, 0.8), 2)
    a = writer("hostA", store, manifest, hf)
    deadline = time.monotonic() + 600
    while a.poll() is None and time.monotonic() < deadline and hf.bytes_served < frac * size:
        time.sleep(0.01)
    os.kill(a.pid, signal.SIGSTOP if frozen else signal.SIGKILL)
    b = writer("hostB", store, manifest, hf)
    out, _ = b.communicate(timeout=900)
    final = store / "vae" / NAME
    ok = b.returncode == 0 and final.exists() and sha256_file(final) == sha
    untouched = True
    if frozen:
        before = final.stat()
        os.kill(a.pid, signal.SIGCONT)
        a.communicate(timeout=300)
        after = final.stat()
        untouched = (before.st_ino, before.st_mtime_ns, before.st_ctime_ns) == (
            after.st_ino, after.st_mtime_ns, after.st_ctime_ns) and sha256_file(final) == sha
    else:
        a.wait()
    return hf.bytes_served / size, ok, untouched, frac


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", default="8m", help="per-connection pace of the server (default 8m = 8 MiB/s)")
    ap.add_argument("--seed", type=int, default=9)
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("skipped: simulating other hosts needs root and unshare(1)")
        return 0
    rng = random.Random(args.seed)
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="i2v-bench-takeover-"))
    rows = []
    try:
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        manifest = work / "m.toml"
        manifest.write_text(f'[models."{NAME}"]\nfolder = "vae"\nrole = "vae"\n'
                            f'source = "hf://{REPO}@{REV}/{NAME}"\nsize = {size}\nsha256 = "{sha}"\n')
        with HFServer(work / "hf") as hf:
            hf.add_file(REPO, REV, NAME, data)
            del data
            hf.faults.rate_limit_bps = parse_rate(args.rate)
            for label, frozen in (("cross-host takeover (killed writer)", False),
                                  ("cross-host takeover (frozen writer)", True)):
                results = [run_case(hf, work, manifest, sha, size, frozen, rng) for _ in range(args.runs)]
                rows.append((label, results))
                print(f"{label}: " + ", ".join(f"{r:.3f}x{'' if ok and un else ' FAIL'} (at {f})"
                                                 for r, ok, un, f in results), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"file {args.size_mib} MiB, server pace {args.rate} per connection, {args.runs} runs per row")
    print(f"{'case':<40} {'bytes served / file (each run)':<34} {'worst':>7} {'sha256':>7} {'untouched':>9}")
    failed = False
    for label, results in rows:
        worst = max(r for r, *_ in results)
        ok = all(o for _, o, _, _ in results)
        un = all(u for _, _, u, _ in results)
        failed |= not (ok and un)
        print(f"{label:<40} {', '.join(f'{r:.3f}' for r, *_ in results):<34} {worst:>6.3f}x "
              f"{'ok' if ok else 'FAIL':>7} {'yes' if un else 'NO':>9}")
    print(json.dumps({label: [round(r, 3) for r, *_ in results] for label, results in rows}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
