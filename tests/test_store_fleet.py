"""Fleet drills on one shared store: writers on other hosts (their own UTS namespace, so another
hostname), frozen writers (SIGSTOP), killed writers, a gc from an older manifest, two writers on a
volume with room for one. Every writer is its own process against the real test hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from i2v_worker.store import ModelState, load_manifest
from tests.support.store_helpers import (REPO, REV, SRC_ROOT, blob, cli_env, hf_source, make_store, part_files,
                                         run_cli, sha256, tmpfs, write_manifest)

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

MB = 2**20
REPO_ROOT = SRC_ROOT.parent


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-u", "sh", "-c", "hostname i2v-probe && hostname"], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "i2v-probe"


needs_hosts = pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -u` (root) to simulate other hosts")


def writer(host: str | None, store: Path, manifest: Path, name: str, hf, *, stale: float = 4.0,
           beat: float = 0.2, start_at: float = 0.0) -> subprocess.Popen:
    """`ModelStore.ensure([name])` in its own process, on host `host` (a UTS namespace)."""
    cmd = [sys.executable, "-m", "tests.support.store_writer", str(store), str(manifest), name, hf.endpoint,
           "--stale", str(stale), "--beat", str(beat), "--start-at", str(start_at)]
    if host is not None:
        cmd = ["unshare", "-u", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *cmd]
    env = {**os.environ, "PYTHONPATH": f"{SRC_ROOT}{os.pathsep}{REPO_ROOT}"}
    return subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 90) -> tuple[dict, str]:
    out, err = p.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"rc={p.returncode} stdout={out!r} stderr={err[-3000:]}"
    return json.loads(lines[-1]), err


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _one_model(tmp_path: Path, hf_server, size: int, seed: int, name: str = "model.bin"):
    data = blob(size, seed=seed)
    sha = hf_server.add_file(REPO, REV, f"fleet/{name}", data)
    manifest = write_manifest(tmp_path / "m.toml", {name: {"source": hf_source(f"fleet/{name}")}})
    return data, sha, manifest


# --- item 2: a frozen writer loses its lease and never touches the taken-over file ------------------

@needs_hosts
def test_paused_writer_loses_its_lease_and_never_touches_the_published_file(tmp_path, hf_server):
    size = 8 * MB
    _, sha, manifest = _one_model(tmp_path, hf_server, size, seed=21)
    store = tmp_path / "store"
    observer = make_store(store, load_manifest(manifest, env={}), hf=hf_server)
    hf_server.faults.rate_limit_bps = 512 * 1024  # per connection: A needs about 8 s
    a = writer("hostA", store, manifest, "model.bin", hf_server)
    try:
        _wait_for(lambda: observer.status()[0].bytes_on_disk >= 2 * MB, 60, "A's first checkpoints")
        [part_a] = [p for p in part_files(store) if p.name.endswith(".part")]
        ino_a = part_a.stat().st_ino
        os.kill(a.pid, signal.SIGSTOP)  # a VM pause, a hung volume
        time.sleep(5.0)  # longer than the stale time (4 s): A's lease and part look abandoned
        hf_server.faults.rate_limit_bps = None
        b = writer("hostB", store, manifest, "model.bin", hf_server)
        res_b, err_b = finish(b)
        assert res_b["ok"], (res_b["error"], err_b[-4000:])
        final = store / "vae" / "model.bin"
        published = final.stat()
        assert published.st_ino != ino_a  # the taken-over part was copied, not renamed
        assert sha256(final) == sha
        time.sleep(0.5)
        served_before_wake = hf_server.bytes_served
    finally:
        os.kill(a.pid, signal.SIGCONT)
    res_a, err_a = finish(a)  # A wakes up with its descriptors still open on its old part
    assert res_a["ok"], (res_a["error"], err_a[-4000:])
    # ... and stops at once (its lease expired while it slept: checked before every write), rather
    # than fetching the rest of the file into a part nobody will publish.
    assert hf_server.bytes_served - served_before_wake < size // 4
    assert res_a["ok"], err_a  # ... finds its lease lost, stops, and uses B's file
    # It noticed (heartbeat: "lost the download lease"; or at publish, its part already adopted):
    assert "lost the download lease" in err_a or "stopped a download whose lease was taken over" in err_a, err_a
    after = final.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        published.st_ino, published.st_mtime_ns, published.st_ctime_ns)  # not one byte written into it
    assert sha256(final) == sha
    assert observer.status()[0].state is ModelState.PRESENT
    assert part_files(store) == []


# --- item 6 (store part): a killed writer's part is reused at a cross-host takeover --------------

def _kill_mid_download(tmp_path, hf_server, size, seed):
    """Writer A on hostA, SIGKILLed mid-way 1 s after one of its heartbeats (every 1.5 s): its part
    was written to after its last heartbeat, so when its lease turns stale (4 s after that
    heartbeat) the part is younger than the stale time, as on a real fleet. Returns what B needs."""
    _, sha, manifest = _one_model(tmp_path, hf_server, size, seed=seed)
    store = tmp_path / "store"
    observer = make_store(store, load_manifest(manifest, env={}), hf=hf_server)
    hf_server.faults.rate_limit_bps = 512 * 1024
    a = writer("hostA", store, manifest, "model.bin", hf_server, beat=1.5)
    lease = store / ".i2v" / "leases" / "model.bin.lease"
    try:
        _wait_for(lambda: observer.status()[0].bytes_on_disk >= size // 3, 60, "a third of the file recorded")
        beat = json.loads(lease.read_bytes())["heartbeat"]
        _wait_for(lambda: json.loads(lease.read_bytes())["heartbeat"] != beat, 10, "A's next heartbeat")
        time.sleep(1.0)
    finally:
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
    verified = observer.status()[0].bytes_on_disk
    time.sleep(0.5)  # let the server finish counting the dead connections
    hf_server.faults.rate_limit_bps = None
    return sha, manifest, store, observer, verified


@needs_hosts
def test_cross_host_takeover_reuses_the_dead_writers_part(tmp_path, hf_server):
    size = 8 * MB
    sha, manifest, store, observer, verified = _kill_mid_download(tmp_path, hf_server, size, seed=22)
    before = hf_server.bytes_served
    b = writer("hostB", store, manifest, "model.bin", hf_server)  # at once: A's part is seconds old
    res, err = finish(b)
    assert res["ok"], (res["error"], err[-4000:])
    served = hf_server.bytes_served - before
    slack = 1 * MB  # what the server had pushed into A's socket buffers when it died, never received
    assert served <= size - verified + slack, (served, verified)
    assert sha256(store / "vae" / "model.bin") == sha
    assert observer.status()[0].state is ModelState.PRESENT
    assert part_files(store) == []  # the dead writer's part is not left on the volume


# --- item 4: gc from a worker with an older manifest ------------------------------------------------

def test_gc_with_an_older_manifest_keeps_a_live_download(tmp_path, hf_server):
    size = 6 * MB
    _, sha, manifest = _one_model(tmp_path, hf_server, size, seed=23, name="new.bin")
    old_manifest = write_manifest(tmp_path / "old.toml", {"old.bin": {"source": hf_source("fleet/old.bin")}})
    store = tmp_path / "store"
    hf_server.faults.rate_limit_bps = 512 * 1024
    a = writer(None, store, manifest, "new.bin", hf_server, stale=30.0)
    try:
        _wait_for(lambda: any(p.name.endswith(".part.json") for p in part_files(store)), 60, "a resume record")
        temps = part_files(store)
        r = run_cli("models", "gc", "--manifest", str(old_manifest), "--store", str(store),
                    env=cli_env(store, hf=hf_server))
        assert r.returncode == 0, r.stderr
        assert not any(str(p) in r.stdout for p in temps), r.stdout
        assert all(p.exists() for p in temps)
        hf_server.faults.rate_limit_bps = None
        res, err = finish(a)
    finally:
        if a.poll() is None:
            a.kill()
    assert res["ok"], err
    assert sha256(store / "vae" / "new.bin") == sha


# --- item 7: two writers, room for one -----------------------------------------------------------

def _needs_free(msg: str) -> tuple[int, int]:
    m = re.search(r"needs (\d+) bytes \([\d.]+ GB\), (?:.*? so )?(\d+) bytes \([\d.]+ GB\) available", msg)
    assert m, msg
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("round_", range(3))
def test_two_processes_with_room_for_one_model_one_succeeds_the_other_fails_cleanly(tmp_path, hf_server, round_):
    """Both start at the same instant (so their space checks and allocations overlap, as on a
    fleet that scales up at once): the one that claims the space first wins, the other reads the
    claim in the winner's part file and fails before fetching anything."""
    size = 48 * MB
    models = {}
    for i, n in enumerate(("a.bin", "b.bin")):
        sha = hf_server.add_file(REPO, REV, f"disk/{n}", blob(size, seed=40 + i))
        models[n] = {"source": hf_source(f"disk/{n}"), "size": size, "sha256": sha}
    manifest = write_manifest(tmp_path / "m.toml", models)
    with tmpfs(tmp_path / "small", 72 * MB) as root:
        start = time.time() + 2.5  # after both interpreters have started
        procs = [writer(None, root, manifest, n, hf_server, stale=30.0, start_at=start) for n in models]
        results = [finish(p) for p in procs]
        oks = [r for r, _ in results if r["ok"]]
        fails = [r for r, _ in results if not r["ok"]]
        assert len(oks) == 1 and len(fails) == 1, results
        msg = fails[0]["error"]
        assert msg.startswith("DiskFullError") and "not enough disk space" in msg, msg
        need, avail = _needs_free(msg)
        assert need == size and avail < need, msg  # the numbers agree with the verdict
        store = make_store(root, load_manifest(manifest, env={}), hf=hf_server)
        assert sorted(s.state.value for s in store.status()) == ["missing", "present"]
        assert part_files(root) == []
    assert hf_server.bytes_served == size  # the loser fetched nothing
