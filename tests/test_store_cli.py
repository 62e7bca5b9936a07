"""`i2v-worker models ...` as users and scripts run it: real subprocesses, real local servers.
Exit codes: 0 ok, 1 failure with one clear line, 2 usage."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support.store_helpers import REPO, REV, blob, cli_env, hf_source, part_files, run_cli, write_manifest

pytestmark = pytest.mark.timeout(180)

MB = 2**20
TINY = ["tiny_wan2.2_i2v_high_noise_Q5_0.gguf", "tiny_wan2.2_i2v_low_noise_Q5_0.gguf",
        "tiny_umt5_xxl_fp8_e4m3fn_scaled.safetensors", "tiny_wan_2.1_vae.safetensors", "tiny_lightx2v_lora.safetensors",
        "tiny_rife_ifnet_v426_heavy.pth"]


@pytest.fixture
def setup(tmp_path, hf_server):
    data = blob(2 * MB, seed=11)
    sha = hf_server.add_file(REPO, REV, "w/model.bin", data)
    manifest = write_manifest(tmp_path / "m.toml", {
        "model.bin": {"source": hf_source("w/model.bin"), "folder": "loras", "role": "lora"},
        "other.bin": {"source": hf_source("w/other.bin")},
    })
    env = cli_env(tmp_path / "store", hf=hf_server, manifest=manifest)
    return env, data, sha, tmp_path / "store"


def _one_error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[-1]


def test_fetch_then_status_json_and_table(setup):
    env, data, sha, store = setup
    r = run_cli("models", "fetch", "model.bin", env=env)
    assert r.returncode == 0, r.stderr
    assert "model.bin" in r.stdout and "present" in r.stdout
    assert (store / "loras" / "model.bin").read_bytes() == data

    r = run_cli("models", "status", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == ["model.bin", "other.bin"]
    assert set(rows[0]) == {"name", "folder", "size", "state", "pinned", "path", "bytes_on_disk", "sha256", "origin"}
    assert rows[0] | {} == {"name": "model.bin", "folder": "loras", "size": len(data), "state": "present",
                            "pinned": False, "path": str(store / "loras" / "model.bin"),
                            "bytes_on_disk": len(data), "sha256": sha, "origin": "downloaded"}
    assert rows[1]["state"] == "missing" and rows[1]["size"] is None

    r = run_cli("models", "status", env=env)
    assert r.returncode == 0
    for word in ("name", "folder", "size", "state", "pinned", "path", "model.bin", "present", "missing"):
        assert word in r.stdout


def test_fetch_tiny_preset_from_the_packaged_manifest(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for i, n in enumerate(TINY):
        (tiny / n).write_bytes(blob(64 * 1024, seed=100 + i))
    env = cli_env(tmp_path / "store", I2V_TINY_DIR=str(tiny))
    r = run_cli("models", "fetch", "--preset", "tiny", env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("models", "status", "--json", "--preset", "tiny", env=env)
    rows = json.loads(r.stdout)
    assert {row["name"]: row["state"] for row in rows} == {n: "present" for n in TINY}
    assert all(row["pinned"] is False for row in rows)


def test_unknown_model_is_one_line_and_exit_1(setup):
    env, *_ = setup
    r = run_cli("models", "fetch", "nope.bin", env=env)
    assert r.returncode == 1
    line = _one_error_line(r)
    assert "nope.bin" in line and "model.bin" in line  # says what exists


def test_download_failure_names_model_and_url(setup):
    env, *_ = setup
    r = run_cli("models", "fetch", "other.bin", env=env)  # not on the server
    assert r.returncode == 1
    line = _one_error_line(r)
    assert "other.bin" in line and "404" in line and "w/other.bin" in line


def test_debug_log_level_shows_the_traceback(setup):
    env, *_ = setup
    r = run_cli("--log-level", "DEBUG", "models", "fetch", "other.bin", env=env)
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_offline_missing_model(setup):
    env, *_ = setup
    r = run_cli("models", "fetch", "model.bin", env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1
    line = _one_error_line(r)
    assert "model.bin" in line and "HF_HUB_OFFLINE" in line


def test_bad_manifest_names_file_entry_field(tmp_path):
    bad = write_manifest(tmp_path / "bad.toml", {"x.bin": {"source": "https://e.invalid/x", "colour": "red"}})
    r = run_cli("models", "status", "--manifest", str(bad), env=cli_env(tmp_path / "store"))
    assert r.returncode == 1
    line = _one_error_line(r)
    assert str(bad) in line and "x.bin" in line and "colour" in line


def test_usage_errors_exit_2(setup):
    env, *_ = setup
    assert run_cli("models", "fetch", "--bogus", env=env).returncode == 2
    assert run_cli("models", "frobnicate", env=env).returncode == 2
    assert run_cli("models", "get", env=env).returncode == 2


def test_verify_full_and_gc(setup):
    env, data, sha, store = setup
    assert run_cli("models", "fetch", "model.bin", env=env).returncode == 0
    assert run_cli("models", "verify", "--full", env=env).returncode == 0
    path = store / "loras" / "model.bin"
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(1000)
        b = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([b[0] ^ 0x80]))
    import os

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run_cli("models", "verify", "--full", env=env)
    assert r.returncode == 1 and "corrupt" in r.stdout and "model.bin" in r.stderr

    junk = store / "vae" / "leftover.safetensors"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"x")
    r = run_cli("models", "gc", "--dry-run", env=env)
    assert r.returncode == 0 and f"would remove {junk}" in r.stdout and junk.exists()
    r = run_cli("models", "gc", env=env)
    assert r.returncode == 0 and f"removed {junk}" in r.stdout and not junk.exists()
    assert path.exists()


def test_get_hf_url_verifies_and_reports_speed(tmp_path, hf_server):
    data = blob(3 * MB, seed=12)
    sha = hf_server.add_file(REPO, REV, "x/big.bin", data)
    env = cli_env(tmp_path / "store", hf=hf_server)
    dest = tmp_path / "out" / "big.bin"
    r = run_cli("models", "get", hf_source("x/big.bin"), str(dest), "--connections", "4", env=env)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == data
    assert "MB/s" in r.stdout and sha in r.stdout
    assert part_files(tmp_path / "out") == []
    # http(s) URL (the resolve URL itself), into an existing directory, with an explicit pin
    (tmp_path / "out2").mkdir()
    r = run_cli("models", "get", hf_server.resolve_url(REPO, REV, "x/big.bin"), str(tmp_path / "out2"),
                "--sha256", sha, "--size", str(len(data)), env={**env, "I2V_MODEL_DIR": str(tmp_path / "s2")})
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256((tmp_path / "out2" / "big.bin").read_bytes()).hexdigest() == sha


def test_get_with_wrong_sha_publishes_nothing(tmp_path, hf_server):
    data = blob(MB, seed=13)
    hf_server.add_file(REPO, REV, "x/m.bin", data)
    env = cli_env(tmp_path / "store", hf=hf_server)
    dest = tmp_path / "out" / "m.bin"
    r = run_cli("models", "get", hf_source("x/m.bin"), str(dest), "--sha256", "0" * 64, env=env)
    assert r.returncode == 1
    assert "sha256" in _one_error_line(r)
    assert not dest.exists() and part_files(tmp_path / "out") == []


def test_get_into_a_dest_that_already_holds_the_file_fetches_nothing(tmp_path, hf_server):
    """The one publish protocol's recognition, in `models get`: a DEST with the expected size and
    sha256 (a get killed right after its rename) is checked with one hash pass, not downloaded."""
    data = blob(2 * MB, seed=14)
    sha = hf_server.add_file(REPO, REV, "x/again.bin", data)
    env = cli_env(tmp_path / "store", hf=hf_server)
    dest = tmp_path / "out" / "again.bin"
    dest.parent.mkdir()
    dest.write_bytes(data)
    hf_server.reset_log()
    r = run_cli("models", "get", hf_source("x/again.bin"), str(dest), env=env)
    assert r.returncode == 0, r.stderr
    assert sha in r.stdout and hf_server.bytes_served == 0
    dest.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes: downloaded again
    r = run_cli("models", "get", hf_source("x/again.bin"), str(dest), env=env)
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == data and hf_server.bytes_served == len(data)
