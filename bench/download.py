#!/usr/bin/env python3
"""Download benchmark: the store's `i2v-worker models get` against huggingface_hub, aria2c and curl.

A local nginx emulates a CDN on 127.0.0.1 (one location capped per connection with `limit_rate`,
one uncapped) and the Hugging Face resolve layout (`/{repo}/resolve/{rev}/{path}` -> 302 with
X-Repo-Commit / X-Linked-Etag / X-Linked-Size). Every tool downloads the same random file cold
(output and caches removed, `sync` before each run) N times per location; the median is reported
with the peak RSS and CPU time of the tool's process and a sha256 check of every output.

The source file is served from the page cache for every tool (as a CDN edge serves a hot object from
memory). `--cache drop` drops the page cache before each run instead (root only): nginx then reads
from this machine's disk (about 400 MiB/s here), which caps curl and measures the disk, not the
client.

    .venv/bin/python bench/download.py [--size-mib 1024] [--runs 2]

This is a benchmark, not a test: numbers depend on the machine and on whatever else runs on it
(the load average before and after is printed). Exit status: 0 all targets met, 1 a target
failed or a tool failed, 2 the benchmark could not be set up.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import NginxProcess, nginx_user_line, sha256_file  # noqa: E402  (bench/ is sys.path[0])
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
CHUNK = 8 * 2**20
MIB = 2**20
FILE_NAME = "file.bin"
LOCATIONS = ("throttled", "fast")  # nginx location / HF repo suffix
BASELINE = {"throttled": "aria2c -x16 -s16", "fast": "curl"}  # the baseline per location
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Run:
    seconds: float | None
    rss_kib: int | None
    sha_ok: bool | None
    error: str | None = None
    self_seconds: float | None = None  # the transfer time the tool reports itself (the store's `get` does)
    cpu_s: float | None = None  # user + system CPU seconds of the tool (GNU time %U + %S)


@dataclass
class Row:
    tool: str
    location: str
    runs: list[Run] = field(default_factory=list)

    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.error is None and r.seconds is not None]

    def median_s(self) -> float | None:
        ok = self.ok_runs()
        return statistics.median(r.seconds for r in ok) if ok else None

    def peak_rss_mb(self) -> float | None:
        vals = [r.rss_kib for r in self.runs if r.rss_kib is not None]
        return max(vals) * 1024 / 1e6 if vals else None

    def sha_ok(self) -> bool:
        return bool(self.runs) and all(r.sha_ok for r in self.runs)


# --------------------------------------------------------------------------------------------
# environment checks


def find_binary(name: str) -> str | None:
    # nginx lives in /usr/sbin, which a normal user's PATH may not include.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without any I2V_*/HF_* setting (defaults are what is measured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("I2V_", "HF_", "HUGGINGFACE"))}
    env.update(extra)
    return env


def can_drop_caches() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


# --------------------------------------------------------------------------------------------
# the source file and nginx


def make_source(path: Path, size: int) -> str:
    """Random bytes (incompressible), hashed while written."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    path.chmod(0o644)
    return h.hexdigest()


class Nginx(NginxProcess):
    """One file behind an HF-style resolve redirect (nginx.conf.template), rate-limited per connection."""

    def __init__(self, nginx: str, tmp: Path, data: Path, sha256: str, size: int, rate: str):
        super().__init__(nginx, tmp)
        self.probe, self.ready_status = ("HEAD", f"/bench/fast/resolve/main/{FILE_NAME}"), 302
        values = {
            "WORKERS": str(max(1, min(4, os.cpu_count() or 1))),
            "TMP": str(tmp),
            "DATA": str(data),
            "PORT": str(self.port),
            "RATE": rate,
            "SHA256": sha256,
            "SIZE": str(size),
            "COMMIT": hashlib.sha1(sha256.encode()).hexdigest(),
            "USER_LINE": nginx_user_line(),
        }
        text = (HERE / "nginx.conf.template").read_text()
        for k, v in values.items():
            text = text.replace("{{" + k + "}}", v)
        self.conf.write_text(text)


# --------------------------------------------------------------------------------------------
# running one download


_current: subprocess.Popen | None = None  # the child to kill on Ctrl-C


GNU_TIME = "/usr/bin/time"  # Debian package `time`


def run_child(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float, int, float]:
    """Run argv to completion; returns (exit code, wall seconds, peak RSS KiB, CPU seconds) of the tool.

    Linux carries the forking process's RSS high-water mark into a child (fork copies it, exec keeps
    the maximum), so wait4() on a child of this ~50 MB Python would report at least 50 MB for curl.
    GNU time is a ~2 MB process that forks the tool and reports its ru_maxrss (%M): exact enough.
    Without it, os.wait4's figure (an upper bound including this process) is used.
    """
    global _current
    rss_file = log.with_suffix(".rss")
    use_time = os.access(GNU_TIME, os.X_OK)
    full = [GNU_TIME, "-f", "%M %U %S", "-o", str(rss_file), "--", *argv] if use_time else argv
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        _current = proc
        timer = threading.Timer(timeout, lambda: _killpg(proc))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        _current = None
    rss, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    if use_time:
        try:
            fields = rss_file.read_text().split()[-3:]  # a non-zero exit adds a line before them
            rss, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
        except (OSError, ValueError, IndexError):
            pass
    return proc.returncode, elapsed, rss, cpu


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def warm_up(path: Path) -> None:
    """Read the source once so nginx serves it from the page cache (cheap when it already is)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        while f.readinto(buf):
            pass


def tail(path: Path, n: int = 6) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


HF_SCRIPT = """
import os, sys
from huggingface_hub import hf_hub_download
path = hf_hub_download(repo_id=sys.argv[1], filename=sys.argv[2], revision="main", cache_dir=sys.argv[3])
print("OUTPUT=" + os.path.realpath(path))
"""


def tool_specs(args, i2v: str | None, base: str, sha: str) -> list[tuple[str, str, object]]:
    """Each tool: (key, name, function(location, work_dir) -> (argv, env, output path or None))."""

    def store(conns: int | None):
        def build(loc: str, work: Path):
            dest = work / FILE_NAME
            argv = [i2v, "models", "get", f"hf://bench/{loc}@main/{FILE_NAME}", str(dest), "--sha256", sha]
            if conns:
                argv += ["--connections", str(conns)]
            env = clean_env({"HF_ENDPOINT": base, "HF_HOME": str(work / "hf-home"),
                             "I2V_MODEL_DIR": str(work / "store"), "I2V_LOG_LEVEL": "WARNING"})
            return argv, env, dest
        return build

    def hf(loc: str, work: Path):
        argv = [sys.executable, "-c", HF_SCRIPT, f"bench/{loc}", FILE_NAME, str(work / "hf-cache")]
        env = clean_env({"HF_ENDPOINT": base, "HF_HOME": str(work / "hf-home"),
                         "HF_HUB_ENABLE_HF_TRANSFER": "0", "HF_HUB_DISABLE_XET": "1",
                         "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
        return argv, env, None  # printed by the child

    def aria2(loc: str, work: Path):
        argv = [find_binary("aria2c"), "-x16", "-s16", "--file-allocation=falloc", "-d", str(work), "-o", FILE_NAME,
                "--allow-overwrite=true", "--auto-file-renaming=false", "--console-log-level=warn",
                "--summary-interval=0", "--download-result=hide", f"{base}/files/{loc}/{FILE_NAME}"]
        return argv, clean_env({}), work / FILE_NAME

    def curl(loc: str, work: Path):
        dest = work / FILE_NAME
        argv = [find_binary("curl"), "--fail", "--silent", "--show-error", "--http1.1", "-o", str(dest),
                f"{base}/files/{loc}/{FILE_NAME}"]
        return argv, clean_env({}), dest

    def curl_verified(loc: str, work: Path):
        # What a user needs to match the store's guarantee with curl: download, then hash the file
        # (hashlib, the fastest sha256 here) and compare. Context for the targets, not a baseline.
        dest = work / FILE_NAME
        script = (f'"$1" --fail --silent --show-error --http1.1 -o "$2" "$3" && "$4" -c '
                  f'"import hashlib,sys; h=hashlib.file_digest(open(sys.argv[1],\'rb\'),\'sha256\').hexdigest(); '
                  f'sys.exit(h != sys.argv[2])" "$2" "$5"')
        argv = ["/bin/sh", "-c", script, "sh", find_binary("curl"), str(dest), f"{base}/files/{loc}/{FILE_NAME}",
                sys.executable, sha]
        return argv, clean_env({}), dest

    specs = []
    if i2v:
        specs.append(("store", "i2v-worker models get", store(None)))
        if args.connections:
            specs.append(("store", f"i2v-worker models get --connections {args.connections}", store(args.connections)))
    specs += [("hf", "hf_hub_download", hf), ("aria2c", "aria2c -x16 -s16", aria2), ("curl", "curl", curl),
              ("curl", "curl, then sha256 check", curl_verified)]
    return specs


def store_cli_problem(i2v: str | None) -> str | None:
    """None when `i2v-worker models get --help` works, else what went wrong."""
    if not i2v:
        return "no i2v-worker executable next to this Python or on PATH (run `make test` or `pip install -e .`)"
    try:
        out = subprocess.run([i2v, "models", "get", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{i2v} models get --help` failed: {exc}"
    if out.returncode != 0:
        return f"`{i2v} models get --help` exited {out.returncode}: {(out.stderr or out.stdout).strip()[-400:]}"
    return None


def startup_seconds(argv: list[str], env: dict[str, str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, timeout=120)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=1024, help="size of the generated file (default 1024)")
    p.add_argument("--runs", type=int, default=2, help="cold runs per tool and location; the median is shown (default 2)")
    p.add_argument("--rate", default="40m", help="nginx limit_rate per connection for the capped location (default 40m = 40 MiB/s)")
    p.add_argument("--connections", type=int, default=16,
                   help="also run the store with --connections N (default 16; 0 to skip)")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the temp dir goes (default /tmp)")
    p.add_argument("--cache", choices=("drop", "warm"), default="warm",
                   help="warm (default): the source file is in the page cache for every tool; "
                        "drop: drop the page cache before every run (root only; nginx then reads from disk)")
    p.add_argument("--only", default="", help="comma-separated: run only these tools (store, hf, aria2c, curl, or a "
                                             "substring of the name)")
    a = p.parse_args(argv)
    if a.size_mib < 1 or a.runs < 1:
        p.error("--size-mib and --runs must be at least 1")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = args.size_mib * MIB

    missing = [b for b in ("nginx", "aria2c", "curl") if not find_binary(b)]
    if missing:
        console.print(f"[red]missing: {', '.join(missing)}[/red]. Install with:  "
                      "apt-get install -y nginx aria2 curl   (or run `make bench`, which does)")
        return 2
    i2v = str(Path(sys.executable).parent / "i2v-worker")
    if not os.access(i2v, os.X_OK):
        i2v = shutil.which("i2v-worker")
    problem = store_cli_problem(i2v)
    if problem:
        console.print(f"[red]store CLI unavailable: {problem}[/red]\n"
                      "  the store rows are skipped and its targets reported as FAIL")

    tmp_root = Path(args.tmp)
    free = shutil.disk_usage(tmp_root).free
    need = 2 * size + 512 * MIB  # source + one output (+ slack for logs, aria2's control file)
    if free < need:
        console.print(f"[red]not enough free disk under {tmp_root}: need {need / MIB:.0f} MiB, "
                      f"have {free / MIB:.0f} MiB[/red] (use --tmp DIR or a smaller --size-mib)")
        return 2

    cache_mode = args.cache
    if cache_mode == "drop" and not can_drop_caches():
        console.print("[red]--cache drop: /proc/sys/vm/drop_caches is not writable (needs root)[/red]")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="i2v-bench-", dir=tmp_root))
    nginx: Nginx | None = None
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    old_hup = signal.signal(signal.SIGHUP, _raise_interrupt)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    try:
        tmp.chmod(0o755)  # nginx workers (nobody when started as root) read data/ below it
        data = tmp / "data"
        data.mkdir(mode=0o755)
        work = tmp / "work"
        work.mkdir(mode=0o700)

        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        load_before = loadavg()
        console.print(f"[bold]i2v-worker download benchmark[/bold]  {started}")
        console.print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), "
                      f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
                      f"{platform.system()} {platform.release()}")
        console.print(f"load average before: {load_before}  (other processes may be running: numbers are noisy)")
        console.print(f"tools: {first_line([find_binary('nginx'), '-v'])}; {first_line([find_binary('aria2c'), '--version'])}; "
                      f"{first_line([find_binary('curl'), '--version'])[:40]}; "
                      f"huggingface_hub {first_line([sys.executable, '-c', 'import huggingface_hub as h; print(h.__version__)'])}"
                      + (f"; {first_line([i2v, '--version'])}" if not problem else ""))
        console.print(f"file: {args.size_mib} MiB random, runs per cell: {args.runs}, cap: limit_rate {args.rate} "
                      f"per connection, temp dir: {tmp}")
        console.print("cache: " + ("page cache dropped before every run (source read from disk by nginx)"
                                   if cache_mode == "drop" else
                                   "source file kept in the page cache for every tool (no drop_caches)"))

        console.print(f"generating {args.size_mib} MiB of random data ...")
        sha = make_source(data / FILE_NAME, size)
        nginx = Nginx(find_binary("nginx"), tmp, data, sha, size, args.rate)
        nginx.start()
        console.print(f"nginx on {nginx.base} (pid {nginx.proc.pid}); sha256 {sha[:16]}...")

        specs = tool_specs(args, None if problem else i2v, nginx.base, sha)
        if args.only:
            wanted = [w.strip() for w in args.only.split(",") if w.strip()]
            specs = [s for s in specs if any(w == s[0] or w in s[1] for w in wanted)]

        # Python start-up (interpreter + imports) is part of each Python tool's wall time: shown apart.
        startup: dict[str, float] = {}
        if not problem:
            startup["store"] = startup_seconds([i2v, "models", "get", "--help"], clean_env({}))
        startup["hf"] = startup_seconds([sys.executable, "-c", "import huggingface_hub.file_download"], clean_env({}))
        console.print(f"python start-up (median of 3): "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()))

        timeout = max(120.0, 4 * size / (40 * MIB))
        rows: list[Row] = []
        total = len(specs) * len(LOCATIONS) * args.runs
        n = 0
        for loc in LOCATIONS:
            for _key, name, build in specs:
                row = Row(name, loc)
                rows.append(row)
                for i in range(args.runs):
                    n += 1
                    run_dir = work / f"run{n}"
                    run_dir.mkdir()
                    argv_, env, dest = build(loc, run_dir)
                    os.sync()
                    if cache_mode == "drop":
                        drop_caches()
                    else:
                        warm_up(data / FILE_NAME)
                    log = tmp / f"run{n}.log"
                    rc, secs, rss, cpu = run_child(argv_, env, log, timeout)
                    if dest is None:  # hf_hub_download prints where it put the file
                        out = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("OUTPUT=")]
                        dest = Path(out[-1][7:]) if out else None
                    error = None
                    sha_ok: bool | None = None
                    if rc != 0:
                        error = f"exit {rc}" + (" (timed out)" if secs >= timeout else "") + f": {tail(log)}"
                    elif dest is None or not dest.is_file():
                        error = f"no output file: {tail(log)}"
                    else:
                        sha_ok = dest.stat().st_size == size and sha256_file(dest) == sha
                    own = re.search(r" bytes in ([0-9.]+) s", log.read_text(errors="replace"))
                    row.runs.append(Run(secs if error is None else None, rss, sha_ok, error,
                                        float(own.group(1)) if own and error is None else None, cpu))
                    shutil.rmtree(run_dir, ignore_errors=True)
                    label = f"[{n}/{total}] {name:<40} {loc:<9} run {i + 1}/{args.runs}"
                    if error:
                        console.print(f"{label}  [red]FAILED {error}[/red]")
                    else:
                        console.print(f"{label}  {secs:6.2f} s {size / MIB / secs:8.1f} MiB/s "
                                      f"RSS {rss * 1024 / 1e6:6.1f} MB CPU {cpu:5.2f} s "
                                      f"sha256 {'ok' if sha_ok else 'MISMATCH'}")
        load_after = loadavg()
        return report(rows, args, size, startup, load_before, load_after, problem)
    except KeyboardInterrupt:
        console.print("[red]interrupted: cleaning up[/red]")
        return 130
    finally:
        if _current is not None:
            _killpg(_current)
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)
        signal.signal(signal.SIGINT, old_int)


def _raise_interrupt(signum, frame):  # SIGTERM/SIGHUP clean up like Ctrl-C
    raise KeyboardInterrupt


def report(rows: list[Row], args, size: int, startup: dict[str, float], load_before: str, load_after: str,
           problem: str | None) -> int:
    def mibs(row: Row | None) -> float | None:
        s = row.median_s() if row else None
        return size / MIB / s if s else None

    def find(tool: str, loc: str) -> Row | None:
        return next((r for r in rows if r.tool == tool and r.location == loc), None)

    loc_label = {"throttled": f"{args.rate}/conn cap", "fast": "unthrottled"}
    table = Table(title=f"cold download of {args.size_mib} MiB, median of {args.runs} run(s)")
    for col, just in (("tool", "left"), ("location", "left"), ("MiB/s", "right"), ("s per run", "right"),
                      ("MiB/s excl. start-up*", "right"), ("peak RSS MB", "right"), ("CPU s/GiB", "right"),
                      ("ratio vs baseline", "right"), ("sha256", "center")):
        table.add_column(col, justify=just)
    for row in rows:
        base = find(BASELINE[row.location], row.location)
        m, bm = mibs(row), mibs(base)
        ok = row.ok_runs()
        excl = ""
        own = [r.self_seconds for r in ok if r.self_seconds]
        if own and len(own) == len(ok):  # the store's `get` prints its own transfer time
            excl = f"{size / MIB / statistics.median(own):.1f}"
        elif row.tool == "hf_hub_download" and row.median_s() and row.median_s() > startup.get("hf", 0):
            excl = f"{size / MIB / (row.median_s() - startup['hf']):.1f}"
        sha = "OK" if row.sha_ok() else "[red]FAIL[/red]"
        table.add_row(
            row.tool, loc_label[row.location],
            f"{m:.1f}" if m else "[red]failed[/red]",
            ", ".join(f"{r.seconds:.2f}" for r in ok) or "-",
            excl,
            f"{row.peak_rss_mb():.1f}" if row.peak_rss_mb() else "-",
            f"{statistics.median(r.cpu_s for r in ok) * 2**30 / size:.2f}" if ok and ok[0].cpu_s is not None else "-",
            "baseline" if row is base else (f"{m / bm:.2f}x vs {BASELINE[row.location].split()[0]}" if m and bm else "-"),
            sha,
        )
    console.print(table)
    console.print("* store: the transfer time `models get` reports itself; hf_hub_download: wall time minus "
                  f"the median Python + import time ({startup.get('hf', 0):.2f} s). MiB/s is end-to-end wall "
                  "time of the process (what a user waits for); the targets use it. CPU s/GiB: user+system CPU "
                  "of the tool per GiB, start-up included (less sensitive to other load than MiB/s).")
    for row in rows:
        for r in row.runs:
            if r.error:
                console.print(f"[red]{row.tool} / {row.location}: {r.error}[/red]")
    console.print(f"load average after: {load_after} (before: {load_before})")

    # Targets from issue 9 (issue 2 asked capped >= 1.0x aria2c; issue 9 raised it to 1.2x).
    checks: list[tuple[str, bool, str]] = []
    store_rows = [r for r in rows if r.tool.startswith("i2v-worker")]
    if problem or not store_rows:
        checks.append(("store available", False, problem or "store rows not run (--only?)"))
    store_names = sorted({r.tool for r in store_rows})
    for tool in store_names:
        short = tool.replace("i2v-worker models get", "store").strip()
        s, a = mibs(find(tool, "throttled")), mibs(find(BASELINE["throttled"], "throttled"))
        checks.append((f"{short}: capped >= 1.2x aria2c", bool(s and a and s >= 1.2 * a),
                       f"{s or 0:.1f} vs 1.2 x {a or 0:.1f} = {1.2 * (a or 0):.1f} MiB/s"))
        s, c = mibs(find(tool, "fast")), mibs(find("curl", "fast"))
        checks.append((f"{short}: unthrottled >= 0.8x curl", bool(s and c and s >= 0.8 * c),
                       f"{s or 0:.1f} vs 0.8 x {c or 0:.1f} = {0.8 * (c or 0):.1f} MiB/s"))
    if store_rows:
        peak = max((r.peak_rss_mb() or 0) for r in store_rows)
        ran = any(r.ok_runs() for r in store_rows)
        checks.append(("store peak RSS < 200 MB", ran and 0 < peak < 200,
                       f"{peak:.1f} MB" + ("" if ran else " (no successful store run)")))
        bad = [f"{r.tool}/{r.location}" for r in store_rows if not r.sha_ok()]
        checks.append(("store outputs sha256 verified", not bad, "all runs" if not bad else "FAILED: " + ", ".join(bad)))
    others_bad = [f"{r.tool}/{r.location}" for r in rows if not r.tool.startswith("i2v-worker") and not r.sha_ok()]
    checks.append(("other tools' outputs sha256 verified", not others_bad,
                   "all runs" if not others_bad else "FAILED: " + ", ".join(others_bad)))
    console.print("[bold]targets (issue 9)[/bold]")
    for name, ok, detail in checks:
        console.print(f"  {'[green]PASS[/green]' if ok else '[red]FAIL[/red]'}  {name:<50} {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
