"""ModelStore semantics against real local servers: atomic verified publish, fast presence check,
replacement of unverified files, offline mode, leases, full disks, mirrors, S3, gc and verify."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from i2v_worker.store import (DiskFullError, DownloadError, IntegrityError, LeaseTimeout, ModelState, OfflineError,
                              load_manifest)
from i2v_worker.store.records import read_record
from tests.support.store_helpers import (REPO, REV, blob, cli_env, hf_source, make_store, part_files, sha256, tmpfs,
                                         run_cli, write_manifest)

pytestmark = pytest.mark.timeout(120)

MB = 2**20


@pytest.fixture
def model(hf_server):
    """One 3 MiB model on the HF server: (data, sha256)."""
    data = blob(3 * MB, seed=1)
    sha = hf_server.add_file(REPO, REV, "weights/model.bin", data)
    return data, sha


def _manifest(tmp_path: Path, **models):
    return load_manifest(write_manifest(tmp_path / "manifest.toml", models), env={})


def _one(tmp_path, *, pinned: tuple[int, str] | None = None, **fields):
    f = {"source": hf_source("weights/model.bin"), **fields}
    if pinned:
        f["size"], f["sha256"] = pinned
    return _manifest(tmp_path, **{"model.bin": f})


def test_fetch_unpinned_learns_size_and_sha_from_the_server(tmp_path, hf_server, model):
    data, sha = model
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server)
    paths = store.ensure(["model.bin"])
    assert paths["model.bin"] == tmp_path / "store" / "vae" / "model.bin"
    assert paths["model.bin"].read_bytes() == data
    rec = read_record(store.root, "model.bin")
    assert (rec.size, rec.sha256, rec.pinned) == (len(data), sha, False)
    assert rec.mtime_ns == paths["model.bin"].stat().st_mtime_ns
    [st] = store.status()
    assert st.state is ModelState.PRESENT and st.pinned is False and st.size == len(data)
    assert part_files(store.root) == []
    assert len(hf_server.resolve_requests()) == 1  # one HEAD per file


def test_presence_check_needs_no_network_and_no_rehash(tmp_path, hf_server, model):
    data, sha = model
    manifest = _one(tmp_path, pinned=(len(data), sha))
    store = make_store(tmp_path / "store", manifest, hf=hf_server)
    path = store.ensure(["model.bin"])["model.bin"]
    again = make_store(tmp_path / "store", manifest, hf=hf_server)
    hf_server.close()  # no server any more: any network use would fail
    assert again.ensure(["model.bin"]) == {"model.bin": path}
    assert again.status()[0].state is ModelState.PRESENT


def test_fast_presence_check_sees_same_size_tampering_with_mtime_restored(tmp_path, hf_server, model):
    """Item 11: the record also holds ctime and inode (still no hash): rewriting bytes and putting
    the mtime back moves the ctime, which cannot be set back, so the fast check notices."""
    data, sha = model
    manifest = _one(tmp_path, pinned=(len(data), sha))
    path = make_store(tmp_path / "store", manifest, hf=hf_server).ensure(["model.bin"])["model.bin"]
    again = make_store(tmp_path / "store", manifest, hf=hf_server)
    hf_server.close()
    st = path.stat()
    time.sleep(0.01)
    with open(path, "r+b") as fh:
        fh.write(b"\x00" * 16)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    assert again.status()[0].state is ModelState.UNVERIFIED
    [v] = again.verify(full=True)
    assert v.state is ModelState.CORRUPT


def test_replaced_file_with_the_same_mtime_is_not_taken_for_the_recorded_one(tmp_path, hf_server, model):
    data, sha = model
    manifest = _one(tmp_path, pinned=(len(data), sha))
    store = make_store(tmp_path / "store", manifest, hf=hf_server)
    path = store.ensure(["model.bin"])["model.bin"]
    st = path.stat()
    other = path.with_name("other")
    other.write_bytes(b"\x01" * len(data))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # same size and mtime, another inode
    assert store.status()[0].state is ModelState.UNVERIFIED


def test_wrong_size_file_at_the_final_path_is_replaced(tmp_path, hf_server, model):
    data, sha = model
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server)
    final = store.path("model.bin")
    final.parent.mkdir(parents=True)
    final.write_bytes(data[: len(data) // 2])  # a truncated download left by another tool
    assert store.status()[0].state is ModelState.UNVERIFIED
    store.ensure(["model.bin"])
    assert final.read_bytes() == data
    assert store.status()[0].state is ModelState.PRESENT


def test_file_without_record_is_replaced(tmp_path, hf_server, model):
    data, sha = model
    store = make_store(tmp_path / "store", _one(tmp_path, pinned=(len(data), sha)), hf=hf_server)
    final = store.path("model.bin")
    final.parent.mkdir(parents=True)
    final.write_bytes(bytes(len(data)))  # right size, wrong content, no record
    assert store.status()[0].state is ModelState.UNVERIFIED
    store.ensure(["model.bin"])
    assert final.read_bytes() == data
    assert hf_server.bytes_served >= len(data)


def test_record_with_wrong_mtime_means_unverified(tmp_path, hf_server, model):
    data, sha = model
    store = make_store(tmp_path / "store", _one(tmp_path, pinned=(len(data), sha)), hf=hf_server)
    path = store.ensure(["model.bin"])["model.bin"]
    os.utime(path, ns=(0, 10**18))  # touched by someone else: no longer what we verified
    assert store.status()[0].state is ModelState.UNVERIFIED


def test_corrupt_download_publishes_nothing_and_leaves_no_temp(tmp_path, hf_server, model):
    data, sha = model
    hf_server.faults.corrupt_offsets = (12345, 2 * MB + 7)
    store = make_store(tmp_path / "store", _one(tmp_path, pinned=(len(data), sha)), hf=hf_server)
    with pytest.raises(IntegrityError) as info:
        store.ensure(["model.bin"])
    assert "model.bin" in str(info.value) and "sha256" in str(info.value)
    assert not store.path("model.bin").exists()
    assert part_files(store.root) == []
    assert read_record(store.root, "model.bin") is None
    assert store.status()[0].state is ModelState.MISSING


def test_corrupt_download_of_unpinned_model_is_caught_by_the_server_etag(tmp_path, hf_server, model):
    hf_server.faults.corrupt_offsets = (100,)
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server)
    with pytest.raises(IntegrityError):
        store.ensure(["model.bin"])
    assert not store.path("model.bin").exists() and part_files(store.root) == []


def test_manifest_pin_differing_from_the_server_fails_fast(tmp_path, hf_server, model):
    data, sha = model
    store = make_store(tmp_path / "store", _one(tmp_path, pinned=(len(data), "0" * 64)), hf=hf_server)
    with pytest.raises(IntegrityError, match="manifest pins"):
        store.ensure(["model.bin"])
    assert hf_server.bytes_served == 0 and part_files(store.root) == []


def test_offline_with_model_present(tmp_path, hf_server, model):
    data, sha = model
    manifest = _one(tmp_path)
    make_store(tmp_path / "store", manifest, hf=hf_server).ensure(["model.bin"])
    hf_server.reset_log()
    offline = make_store(tmp_path / "store", manifest, hf=hf_server, offline=True)
    assert offline.ensure(["model.bin"])["model.bin"].read_bytes() == data
    assert hf_server.requests == []


def test_offline_with_model_missing_names_it_and_how_to_fetch(tmp_path, hf_server, model):
    offline = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server, offline=True)
    with pytest.raises(OfflineError) as info:
        offline.ensure(["model.bin"])
    msg = str(info.value)
    assert "model.bin" in msg and "HF_HUB_OFFLINE" in msg and "models fetch" in msg
    assert hf_server.requests == []


def test_selective_ensure_fetches_exactly_the_names_asked(tmp_path, hf_server):
    for i in range(3):
        hf_server.add_file(REPO, REV, f"m{i}.bin", blob(MB, seed=10 + i))
    manifest = _manifest(tmp_path, **{f"m{i}.bin": {"source": hf_source(f"m{i}.bin")} for i in range(3)})
    store = make_store(tmp_path / "store", manifest, hf=hf_server)
    store.ensure(["m0.bin", "m2.bin"])
    states = {s.name: s.state for s in store.status()}
    assert states == {"m0.bin": ModelState.PRESENT, "m1.bin": ModelState.MISSING, "m2.bin": ModelState.PRESENT}
    assert len(hf_server.resolve_requests()) == 2


def test_several_models_at_once_report_per_model_and_overall_progress(tmp_path, hf_server):
    sizes = {"a.bin": 2 * MB, "b.bin": 3 * MB}
    for i, (name, size) in enumerate(sizes.items()):
        hf_server.add_file(REPO, REV, name, blob(size, seed=20 + i))
    manifest = _manifest(tmp_path, **{n: {"source": hf_source(n), "folder": "loras", "role": "lora"} for n in sizes})
    store = make_store(tmp_path / "store", manifest, hf=hf_server)
    events = []
    lock = threading.Lock()

    def cb(e):
        with lock:
            events.append(e)

    store.ensure(list(sizes), progress=cb)
    published = {e.model for e in events if e.phase == "published" and e.model}
    assert published == set(sizes)
    overall = [e for e in events if e.model is None]
    assert overall and overall[-1].overall_done == overall[-1].overall_total == sum(sizes.values())
    assert len(events) < 200  # throttled, not one per chunk
    # second call: everything present, reported as such
    events.clear()
    store.ensure(list(sizes), progress=cb)
    assert {e.model for e in events if e.phase == "present" and e.model} == set(sizes)


def test_mirror_is_used_when_the_source_fails(tmp_path, hf_server, model):
    data, sha = model
    manifest = _manifest(tmp_path, **{"model.bin": {
        "source": hf_source("weights/missing.bin"), "mirrors": [hf_source("weights/model.bin")],
        "size": len(data), "sha256": sha}})
    store = make_store(tmp_path / "store", manifest, hf=hf_server)
    assert store.ensure(["model.bin"])["model.bin"].read_bytes() == data
    assert read_record(store.root, "model.bin").source == hf_source("weights/model.bin")


def test_all_sources_failing_is_one_clear_error(tmp_path, hf_server, model):
    manifest = _manifest(tmp_path, **{"model.bin": {
        "source": hf_source("weights/missing.bin"), "mirrors": [hf_source("weights/gone.bin")]}})
    store = make_store(tmp_path / "store", manifest, hf=hf_server)
    with pytest.raises(DownloadError) as info:
        store.ensure(["model.bin"])
    msg = str(info.value)
    assert "model.bin" in msg and "missing.bin" in msg and "gone.bin" in msg and "404" in msg
    assert info.value.permanent


def test_file_source(tmp_path):
    src = tmp_path / "src" / "tiny.safetensors"
    src.parent.mkdir()
    src.write_bytes(blob(MB, seed=3))
    manifest = load_manifest(write_manifest(tmp_path / "m.toml", {"tiny.safetensors": {
        "source": "file://${I2V_TINY_DIR}/tiny.safetensors"}}), env={"I2V_TINY_DIR": str(src.parent)})
    store = make_store(tmp_path / "store", manifest, offline=True)  # local files need no network
    assert store.ensure(["tiny.safetensors"])["tiny.safetensors"].read_bytes() == src.read_bytes()
    assert read_record(store.root, "tiny.safetensors").sha256 == sha256(src)


def test_s3_source_via_moto(tmp_path, s3_server):
    data = blob(2 * MB, seed=4)
    client = s3_server.client()
    client.create_bucket(Bucket="models")
    client.put_object(Bucket="models", Key="vae/model.bin", Body=data)
    manifest = _manifest(tmp_path, **{"model.bin": {"source": "s3://models/vae/model.bin",
                                                    "size": len(data), "sha256": sha256(data)}})
    store = make_store(tmp_path / "store", manifest, s3=s3_server)
    assert store.ensure(["model.bin"])["model.bin"].read_bytes() == data
    assert store.status()[0].state is ModelState.PRESENT


# --- leases -----------------------------------------------------------------------------------------

def _write_lease(store, name, *, pid, heartbeat, holder="ghost-1-abc", host=None):
    import socket

    d = store.root / ".i2v" / "leases"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.lease").write_text(json.dumps({
        "holder": holder, "host": host or socket.gethostname(), "pid": pid,
        "started": heartbeat - 10, "heartbeat": heartbeat}))


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lease_of_a_dead_holder_is_taken_over(tmp_path, hf_server, model):
    data, _ = model
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server, lease_wait_s=30)
    _write_lease(store, "model.bin", pid=_dead_pid(), heartbeat=time.time() - 3600)
    assert store.ensure(["model.bin"])["model.bin"].read_bytes() == data
    assert not (store.root / ".i2v" / "leases" / "model.bin.lease").exists()  # released after publish


def test_stale_lease_on_another_host_is_taken_over_after_its_heartbeat_ages(tmp_path, hf_server, model):
    data, _ = model
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server, lease_wait_s=30)
    _write_lease(store, "model.bin", pid=1, host="other-machine", heartbeat=time.time() - 31)
    assert store.ensure(["model.bin"])["model.bin"].read_bytes() == data


def test_live_lease_makes_others_wait_bounded_and_reported(tmp_path, hf_server, model):
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server, lease_wait_s=1.0, lease_poll_s=0.1)
    _write_lease(store, "model.bin", pid=os.getpid(), holder="busy-worker", heartbeat=time.time() + 3600)
    events = []
    with pytest.raises(LeaseTimeout) as info:
        store.ensure(["model.bin"], progress=events.append)
    assert "busy-worker" in str(info.value) and "I2V_LEASE_WAIT_S" in str(info.value)
    assert any(e.phase == "waiting" and "busy-worker" in e.message for e in events)
    assert store.status()[0].state is ModelState.DOWNLOADING
    assert hf_server.bytes_served == 0


def test_waiter_uses_the_model_once_the_holder_publishes(tmp_path, hf_server, model):
    data, _ = model
    manifest = _one(tmp_path)
    holder = make_store(tmp_path / "store", manifest, hf=hf_server)
    waiter = make_store(tmp_path / "store", manifest, hf=hf_server, lease_poll_s=0.05)
    _write_lease(holder, "model.bin", pid=os.getpid(), holder=holder.writer_id, heartbeat=time.time())
    result = {}
    t = threading.Thread(target=lambda: result.update(waiter.ensure(["model.bin"])))
    t.start()
    time.sleep(0.5)
    assert t.is_alive()  # waiting for the lease
    (holder.root / ".i2v" / "leases" / "model.bin.lease").unlink()
    holder.ensure(["model.bin"])
    t.join(30)
    assert result["model.bin"].read_bytes() == data


# --- disk -------------------------------------------------------------------------------------------

def test_disk_too_small_before_starting(tmp_path, hf_server):
    data = blob(6 * MB, seed=5)
    hf_server.add_file(REPO, REV, "big.bin", data)
    with tmpfs(tmp_path / "small", 4 * MB) as root:
        manifest = _manifest(tmp_path, **{"big.bin": {"source": hf_source("big.bin")}})
        store = make_store(root, manifest, hf=hf_server)
        with pytest.raises(DiskFullError) as info:
            store.ensure(["big.bin"])
        err = info.value
        assert "big.bin" in str(err) and str(len(data)) in str(err) and "available" in str(err)
        assert err.needed == len(data) and 0 < err.available < len(data)
        assert part_files(root) == [] and not store.path("big.bin").exists()
        assert hf_server.bytes_served == 0


def test_disk_full_during_download_removes_the_temp_files(tmp_path, hf_server):
    # Two models each fit alone; together they do not: one of them runs out of space mid-way.
    sizes = {"a.bin": 5 * MB, "b.bin": 5 * MB}
    for i, (n, s) in enumerate(sizes.items()):
        hf_server.add_file(REPO, REV, n, blob(s, seed=30 + i))
    hf_server.faults.rate_limit_bps = 8 * MB
    with tmpfs(tmp_path / "small", 8 * MB) as root:
        manifest = _manifest(tmp_path, **{n: {"source": hf_source(n)} for n in sizes})
        store = make_store(root, manifest, hf=hf_server)
        with pytest.raises(DiskFullError) as info:
            store.ensure(list(sizes))
        assert "no space" in str(info.value) or "not enough disk space" in str(info.value)
        assert part_files(root) == []
        states = sorted(s.state.value for s in store.status())
        assert states == ["missing", "present"]


def test_enospc_while_writing_fails_cleanly(tmp_path, hf_server):
    """Space taken by someone else after the free-space check: the write itself hits ENOSPC."""
    data = blob(4 * MB, seed=6)
    hf_server.add_file(REPO, REV, "m.bin", data)
    with tmpfs(tmp_path / "small", 6 * MB) as root:
        from i2v_worker.store.transfer import TransferConfig

        manifest = _manifest(tmp_path, **{"m.bin": {"source": hf_source("m.bin")}})
        store = make_store(root, manifest, hf=hf_server)
        # no preallocation: space is consumed as bytes arrive
        store.transfer = TransferConfig(**{**store.transfer.__dict__, "preallocate": False})
        filler = root / "vae" / "filler"
        hf_server.faults.rate_limit_bps = 2 * MB

        def fill(e):
            if e.model == "m.bin" and e.phase == "downloading" and not filler.exists():
                with open(filler, "wb") as fh:
                    try:
                        while True:
                            fh.write(b"\xff" * 65536)
                    except OSError:
                        pass

        with pytest.raises(DiskFullError):
            store.ensure(["m.bin"], progress=fill)
        assert part_files(root) == [] and not store.path("m.bin").exists()


# --- verify, gc, ComfyUI paths, cancel ----------------------------------------------------------------

def test_verify_full_detects_a_flipped_byte(tmp_path, hf_server, model):
    data, _ = model
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server)
    path = store.ensure(["model.bin"])["model.bin"]
    assert store.verify(full=True)[0].state is ModelState.PRESENT
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(MB)
        b = fh.read(1)
        fh.seek(MB)
        fh.write(bytes([b[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.verify(full=False)[0].state is ModelState.UNVERIFIED  # the fast check sees the rewrite (ctime)
    [v] = store.verify(full=True)
    assert v.state is ModelState.CORRUPT
    assert store.status()[0].state is ModelState.UNVERIFIED  # record dropped: next ensure replaces it
    store.ensure(["model.bin"])
    assert path.read_bytes() == data


def test_verify_full_adopts_a_correct_pinned_file_without_record(tmp_path, hf_server, model):
    data, sha = model
    store = make_store(tmp_path / "store", _one(tmp_path, pinned=(len(data), sha)), hf=hf_server)
    store.path("model.bin").parent.mkdir(parents=True)
    store.path("model.bin").write_bytes(data)
    assert store.verify(full=True)[0].state is ModelState.PRESENT
    hf_server.reset_log()
    store.ensure(["model.bin"])
    assert hf_server.requests == []


def test_gc_removes_stale_temps_and_unreferenced_files(tmp_path, hf_server, model):
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server)
    kept = store.ensure(["model.bin"])["model.bin"]
    vae = store.root / "vae"
    stale = [vae / ".model.bin.deadhost-1-aaaaaa.part", vae / ".model.bin.deadhost-1-aaaaaa.part.json"]
    junk = [vae / "old-model.safetensors", store.root / "loras" / "unknown.safetensors"]
    for p in stale + junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert sorted(store.gc(dry_run=True)) == sorted(stale + junk)
    assert all(p.exists() for p in stale + junk)
    assert sorted(store.gc()) == sorted(stale + junk)
    assert not any(p.exists() for p in stale + junk)
    assert kept.exists() and store.status()[0].state is ModelState.PRESENT


def test_gc_keeps_the_temp_file_of_a_live_download(tmp_path, hf_server, model):
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server)
    part = store.root / "vae" / ".model.bin.otherhost-7-bbbbbb.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x")
    _write_lease(store, "model.bin", pid=7, host="otherhost", holder="otherhost-7-bbbbbb", heartbeat=time.time())
    assert store.gc() == []
    assert part.exists()


def test_comfyui_extra_paths_maps_folder_names(tmp_path):
    store = make_store(tmp_path / "store", _manifest(tmp_path, **{"m.bin": {"source": "https://x.invalid/m"}}))
    doc = yaml.safe_load(store.comfyui_extra_paths().read_text())
    cfg = doc["i2v_worker"]
    assert Path(cfg["base_path"]) == (tmp_path / "store").resolve()
    assert (cfg["unet"], cfg["diffusion_models"], cfg["text_encoders"], cfg["clip"], cfg["vae"], cfg["loras"]) == (
        "unet", "unet", "text_encoders", "text_encoders", "vae", "loras")
    assert all((tmp_path / "store" / f).is_dir() for f in ("unet", "text_encoders", "vae", "loras"))


def test_status_reports_partial_downloads(tmp_path, hf_server, model):
    data, sha = model
    hf_server.faults.rate_limit_bps = 400 * 1024  # about 8 s for the 3 MiB model
    store = make_store(tmp_path / "store", _one(tmp_path, pinned=(len(data), sha)), hf=hf_server, connections=1)
    cancel = threading.Event()
    err: list[BaseException] = []

    def run():
        try:
            store.ensure(["model.bin"], cancel=cancel)
        except BaseException as exc:  # noqa: BLE001
            err.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 30
    while time.time() < deadline and store.status()[0].bytes_on_disk == 0:
        time.sleep(0.1)
    assert store.status()[0].state is ModelState.DOWNLOADING
    cancel.set()
    t.join(30)
    assert err and "cancel" in str(err[0])
    st = store.status()[0]
    assert st.state is ModelState.PARTIAL and 0 < st.bytes_on_disk < len(data)
    hf_server.faults.rate_limit_bps = None
    served = hf_server.bytes_served
    store.ensure(["model.bin"])  # resumes
    assert store.path("model.bin").read_bytes() == data
    assert hf_server.bytes_served - served < len(data)


async def test_aensure_cancellation_stops_the_download_and_keeps_the_part(tmp_path, hf_server, model):
    data, sha = model
    hf_server.faults.rate_limit_bps = 512 * 1024
    store = make_store(tmp_path / "store", _one(tmp_path, pinned=(len(data), sha)), hf=hf_server, connections=1)
    task = asyncio.ensure_future(store.aensure(["model.bin"]))
    for _ in range(300):
        await asyncio.sleep(0.05)
        if store.status()[0].bytes_on_disk:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.status()[0].state is ModelState.PARTIAL
    assert not (store.root / ".i2v" / "leases" / "model.bin.lease").exists()


def test_from_settings_reads_store_manifest_and_tiny_dir_from_the_environment(tmp_path):
    from i2v_worker.config import Settings
    from i2v_worker.store import ModelStore

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "tiny_wan_2.1_vae.safetensors").write_bytes(blob(1000, seed=7))
    settings = Settings.from_env({"I2V_MODEL_DIR": str(tmp_path / "store"), "I2V_TINY_DIR": str(tiny),
                                  "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    store = ModelStore.from_settings(settings)
    assert store.root == tmp_path / "store" and store.hub.offline
    path = store.ensure(["tiny_wan_2.1_vae.safetensors"])["tiny_wan_2.1_vae.safetensors"]
    assert path == tmp_path / "store" / "vae" / "tiny_wan_2.1_vae.safetensors"
    assert path.read_bytes() == (tiny / "tiny_wan_2.1_vae.safetensors").read_bytes()


# --- item 10: stores that cannot be used -------------------------------------------------------------

def test_store_root_that_is_a_file_is_a_store_error_naming_it(tmp_path, hf_server, model):
    from i2v_worker.store.errors import StoreLayoutError

    root = tmp_path / "store"
    root.write_text("not a folder")
    store = make_store(root, _one(tmp_path), hf=hf_server)
    with pytest.raises(StoreLayoutError) as info:
        store.ensure(["model.bin"])
    assert info.value.path == str(root) and str(root) in str(info.value) and "is a file" in str(info.value)
    assert "I2V_MODEL_DIR" in str(info.value)
    assert store.status()[0].state is ModelState.MISSING  # status does not crash either


def test_store_folder_that_is_a_file_is_a_store_error_and_status_still_works(tmp_path, hf_server, model):
    from i2v_worker.store.errors import StoreLayoutError

    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server)
    (store.root).mkdir()
    (store.root / "vae").write_text("oops")
    with pytest.raises(StoreLayoutError) as info:
        store.ensure(["model.bin"])
    assert info.value.path == str(store.root / "vae") and "move or delete" in str(info.value)
    assert info.value.model == "model.bin"
    assert store.status()[0].state is ModelState.MISSING
    env = cli_env(store.root, hf=hf_server)
    r = run_cli("models", "status", "--manifest", str(tmp_path / "manifest.toml"), env=env)
    assert r.returncode == 0, r.stderr
    assert "missing" in r.stdout
    r = run_cli("models", "fetch", "model.bin", "--manifest", str(tmp_path / "manifest.toml"), env=env)
    assert r.returncode == 1 and f"{store.root / 'vae'} is a file" in r.stderr and "Traceback" not in r.stderr


def test_read_only_store_is_a_store_error_naming_it(tmp_path, hf_server, model):
    import subprocess

    from i2v_worker.store.errors import StoreLayoutError

    with tmpfs(tmp_path / "ro", 4 * MB) as root:
        r = subprocess.run(["mount", "-o", "remount,ro", str(root)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
        store = make_store(root, _one(tmp_path), hf=hf_server)
        with pytest.raises(StoreLayoutError) as info:
            store.ensure(["model.bin"])
        assert str(root) in str(info.value) and "not writable" in str(info.value)
        assert "read-write" in str(info.value)
        assert store.status()[0].state is ModelState.MISSING
        assert hf_server.bytes_served == 0


# --- item 6 (store part): a kill between the rename and the record write ----------------------------

def test_published_file_without_record_is_recognised_by_one_hash_pass_pinned(tmp_path, hf_server, model):
    data, sha = model
    store = make_store(tmp_path / "store", _one(tmp_path, pinned=(len(data), sha)), hf=hf_server)
    final = store.path("model.bin")
    final.parent.mkdir(parents=True)
    final.write_bytes(data)  # renamed into place, then killed before the record was written
    hf_server.reset_log()
    assert store.ensure(["model.bin"]) == {"model.bin": final}
    assert hf_server.requests == []  # pinned: no network at all
    assert store.status()[0].state is ModelState.PRESENT


def test_published_file_without_record_is_recognised_by_one_hash_pass_unpinned(tmp_path, hf_server, model):
    data, sha = model
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server)
    final = store.path("model.bin")
    final.parent.mkdir(parents=True)
    final.write_bytes(data)
    hf_server.reset_log()
    assert store.ensure(["model.bin"]) == {"model.bin": final}
    assert hf_server.bytes_served == 0 and hf_server.cdn_requests() == []  # one resolve (HEAD) for the sha
    [st] = store.status()
    assert st.state is ModelState.PRESENT and st.sha256 == sha


def test_two_threads_of_one_store_ensure_the_same_model_at_once(tmp_path, hf_server, model):
    """The worker's boot prefetch and a first job ask for the same models on one store (one writer
    id): one downloads, the other waits for it; neither trips over the other's lease files."""
    data, _ = model
    hf_server.faults.rate_limit_bps = 2 * MB
    store = make_store(tmp_path / "store", _one(tmp_path), hf=hf_server, lease_poll_s=0.05)
    results, errors = [], []

    def run():
        try:
            results.append(store.ensure(["model.bin"])["model.bin"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 4
    assert results[0].read_bytes() == data
    assert hf_server.bytes_served <= len(data) + 512 * 1024
