#!/usr/bin/env python3
"""Resume benchmark: bytes served over a kill-and-resume, and over a cross-host takeover.

A local HF-style server (tests/support/hf_server.py, 127.0.0.1, each connection paced at `--rate`
so a download takes a few seconds) serves one random file. For each run:

- kill-and-resume: `i2v-worker models get hf://... DEST --sha256 X` is started, SIGKILLed once the
  server has sent a random 20-80 % of the file, then run again to completion on the same host;
- multi-kill: the same with `--kills` kills in a row before the final run;
- cross-host takeover: the first process runs in its own UTS namespace with another hostname
  (`unshare -u`, root only) and is killed; the final run is on this host (a store on a shared volume
  reusing another host's dead writer's part).

Reported per row: the bytes the server sent over all attempts divided by the file size (1.00 = no
byte fetched twice) and whether the final file's sha256 is right. Target (issue 9): kill-and-resume
<= 1.05x.

    .venv/bin/python bench/resume.py [--size-mib 256] [--runs 3] [--rate 8m] [--kills 3]

Benchmark, not a test: the machine is shared, so timings (not the byte counts) are noisy.
"""

from __future__ import annotations

import argparse
import hashlib
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

from i2v_worker.store.transfer import read_sidecar  # noqa: E402
from common import parse_rate, sha256_file  # noqa: E402  (bench/ is sys.path[0])
from tests.support.hf_server import HFServer  # noqa: E402

REPO, REV, NAME = "bench/resume", "main", "file.bin"
MIB = 2**20


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MIB)
            block = os.urandom(n)
            f.write(block)
            h.update(block)
            left -= n
    return h.hexdigest()


def get_cmd(hf: HFServer, dest: Path, sha: str, other_host: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "i2v_worker", "models", "get", f"hf://{REPO}@{REV}/{NAME}", str(dest), "--sha256", sha]
    if other_host:
        inner = " ".join(f"'{c}'" for c in cmd)
        return ["unshare", "-u", "sh", "-c", f"hostname {other_host} && exec {inner}"]
    return cmd


def env_for(hf: HFServer, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("I2V_", "HF_"))}
    env.update({"HF_ENDPOINT": hf.endpoint, "I2V_MODEL_DIR": str(store), "PYTHONPATH": str(ROOT / "src"),
                "HF_HOME": str(store / "hf-home")})
    return env


def attempt_killed(hf: HFServer, dest: Path, sha: str, size: int, frac: float, env: dict[str, str],
                   other_host: str | None) -> int:
    """Start a download and SIGKILL it once the server has sent `frac` of the file (this attempt)."""
    start = hf.bytes_served
    log = open(os.environ["BENCH_LOG"], "a") if os.environ.get("BENCH_LOG") else subprocess.DEVNULL
    p = subprocess.Popen(get_cmd(hf, dest, sha, other_host), env=env, stdout=subprocess.DEVNULL,
                         stderr=log, start_new_session=True)
    deadline = time.monotonic() + 600
    while p.poll() is None and time.monotonic() < deadline:
        if hf.bytes_served - start >= frac * size:
            break
        time.sleep(0.01)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    time.sleep(0.2)  # let the server notice the closed connections
    served = hf.bytes_served - start
    if os.environ.get("BENCH_VERBOSE"):
        print(f"  killed: the server sent {served / MIB:.1f} MiB in this attempt, the record keeps "
              f"{_kept(dest) / MIB:.1f} MiB", flush=True)
    return served


def _kept(dest: Path) -> int:
    """Bytes the resume records next to DEST keep (0 when none)."""
    recs = [read_sidecar(sc.with_name(sc.name[: -len(".json")])) for sc in dest.parent.glob(".*.part.json")]
    return max((r.verified for r in recs if r is not None), default=0)


def attempt_final(hf: HFServer, dest: Path, sha: str, env: dict[str, str]) -> bool:
    r = subprocess.run(get_cmd(hf, dest, sha, None), env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
    if os.environ.get("BENCH_VERBOSE"):
        for line in r.stderr.splitlines():
            if "resum" in line or "complete" in line:
                print("  final run:", line[:300], flush=True)
    return r.returncode == 0 and dest.exists() and sha256_file(dest) == sha


def run_case(hf: HFServer, work: Path, sha: str, size: int, kills: int, other_host: str | None,
             rng: random.Random) -> tuple[float, bool, list[float]]:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    dest = store / NAME
    env = env_for(hf, store)
    hf.reset_log()
    fracs = []
    wasted = []
    for i in range(kills):
        # kill once this attempt has fetched a random 20-80 % of what is still missing
        kept_before = _kept(dest)
        frac = rng.uniform(0.2, 0.8)
        fracs.append(round(frac, 2))
        served = attempt_killed(hf, dest, sha, size, frac * (size - kept_before) / size, env,
                                other_host if i == 0 else None)
        wasted.append(max(0, served - (_kept(dest) - kept_before)))
    ok = attempt_final(hf, dest, sha, env)
    return hf.bytes_served / size, ok, fracs, wasted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", default="8m", help="per-connection pace of the server (default 8m = 8 MiB/s)")
    ap.add_argument("--kills", type=int, default=3, help="kills in the multi-kill row")
    ap.add_argument("--seed", type=int, default=9)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="i2v-bench-resume-"))
    rows: list[tuple[str, list[tuple[float, bool, list[float], list[int]]]]] = []
    try:
        src = work / "src.bin"
        sha = make_file(src, size)
        with HFServer(work / "hf") as hf:
            hf.add_file(REPO, REV, NAME, src)
            hf.faults.rate_limit_bps = parse_rate(args.rate)
            cases = [("kill-and-resume (1 kill)", 1, None), (f"multi-kill ({args.kills} kills)", args.kills, None)]
            can_unshare = os.geteuid() == 0 and shutil.which("unshare") is not None
            if can_unshare:
                cases.append(("cross-host takeover (1 kill on another host)", 1, "otherhost"))
            for label, kills, host in cases:
                results = [run_case(hf, work, sha, size, kills, host, rng) for _ in range(args.runs)]
                rows.append((label, results))
                print(f"{label}: " + ", ".join(f"{r:.3f}x{'' if ok else ' FAIL'} (killed at {f})"
                                                 for r, ok, f, _ in results), flush=True)
            if not can_unshare:
                rows.append(("cross-host takeover", []))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"file {args.size_mib} MiB, server pace {args.rate} per connection, {args.runs} runs per row")
    print(f"{'case':<46} {'bytes served / file (each run)':<32} {'worst':>7} {'MiB wasted per kill':>20} {'sha256':>7}")
    failed = False
    for label, results in rows:
        if not results:
            print(f"{label:<46} {'skipped (unshare needs root)':<32}")
            continue
        worst = max(r[0] for r in results)
        ok = all(r[1] for r in results)
        per_kill = [w / MIB for r in results for w in r[3]]
        failed |= not ok
        print(f"{label:<46} {', '.join(f'{r[0]:.3f}' for r in results):<32} {worst:>6.3f}x "
              f"{f'{min(per_kill):.1f}-{max(per_kill):.1f}':>20} {'ok' if ok else 'FAIL':>7}")
    kr = next(r for label, r in rows if label.startswith("kill-and-resume"))
    target = max(r[0] for r in kr) <= 1.05
    print(f"target kill-and-resume <= 1.05x the file: {'PASS' if target else 'FAIL'}")
    return 0 if (target and not failed) else 1


if __name__ == "__main__":
    sys.exit(main())
