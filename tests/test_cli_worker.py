"""`i2v-worker schema`, `run --test_input`, and `serve --rp_serve_api` as a user runs them."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from i2v_worker.worker.cli import load_job, report_result, settings_table

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_JOB = ROOT / "examples" / "job.json"

pytestmark = pytest.mark.timeout(180)


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "i2v_worker", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)


@pytest.fixture
def worker_env(tmp_path, tiny_models_dir) -> dict[str, str]:
    """A local worker on the tiny preset; no ComfyUI at the configured path (jobs that need the
    engine fail clearly, everything before the engine works)."""
    return {"I2V_MODEL_DIR": str(tmp_path / "store"), "I2V_PRESET": "tiny", "I2V_TINY_DIR": str(tiny_models_dir),
            "I2V_PREFETCH": "0", "I2V_OUTPUT_DIR": str(tmp_path / "out"), "COMFYUI_PATH": str(tmp_path / "none"),
            "I2V_ENGINE": "comfyui"}


def test_schema_prints_the_input_json_schema_and_the_example_matches_it():
    res = cli("schema")
    assert res.returncode == 0, res.stderr
    schema = json.loads(res.stdout)
    assert "prompt" in schema["$defs"]["JobInput"]["properties"]
    jsonschema = pytest.importorskip("jsonschema")
    job = json.loads(EXAMPLE_JOB.read_text())
    jsonschema.validate(job["input"], schema)
    jsonschema.validate({"action": "health"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"prompt": "p", "image_url": "https://x/a.png", "colour": "red"}, schema)


def test_schema_output_and_settings_table():
    out = json.loads(cli("schema", "--output").stdout)
    assert "JobOutput" in out["$defs"] and "ErrorOutput" in out["$defs"]
    table = cli("schema", "--settings").stdout
    for var in ("BUCKET_ENDPOINT_URL", "I2V_JOB_DEADLINE_S", "I2V_MAX_BASE64_BYTES", "I2V_ALLOW_LOOPBACK_IMAGES"):
        assert f"`{var}`" in table
    assert table == settings_table() + "\n"


def test_example_job_is_small_and_runs_on_the_tiny_preset():
    job = json.loads(EXAMPLE_JOB.read_text())
    inp = job["input"]
    assert EXAMPLE_JOB.stat().st_size < 50_000
    assert (inp["width"], inp["height"], inp["length"], inp["steps"], inp["seed"]) == (64, 64, 9, 4, 42)
    from i2v_worker.worker.image import decode_base64, decode_image

    img = decode_image(decode_base64(inp["image_base64"], "image_base64", 1 << 20), "image_base64")
    assert (img.width, img.height) == (128, 128)


def test_load_job_from_json_string_and_file(tmp_path):
    job = load_job('{"input": {"prompt": "p"}}')
    assert job["input"] == {"prompt": "p"} and job["id"].startswith("local-")
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"id": "mine", "input": {"prompt": "q"}}))
    assert load_job(str(path)) == {"id": "mine", "input": {"prompt": "q"}}
    for bad, word in (("{not json", "not valid JSON"), ('{"prompt": "p"}', '"input"'),
                      (str(tmp_path / "missing.json"), "neither JSON nor a readable file")):
        with pytest.raises(SystemExit) as info:
            load_job(bad)
        assert word in str(info.value)


def test_report_result_writes_the_mp4_and_sets_the_exit_status(tmp_path, capsys):
    ok = {"video": base64.b64encode(b"mp4 bytes").decode(), "mime_type": "video/mp4", "seed": 1, "width": 64,
          "height": 64, "frames": 9, "fps": 16, "timings": {"total": 1.0}}
    assert report_result({"id": "j1"}, ok, tmp_path) == 0
    assert (tmp_path / "j1.mp4").read_bytes() == b"mp4 bytes"
    assert str(tmp_path / "j1.mp4") in capsys.readouterr().out
    assert report_result({"id": "j2"}, {"error": "bad", "error_code": "invalid_input"}, tmp_path) == 1
    assert "FAILED [invalid_input] bad" in capsys.readouterr().out
    assert not (tmp_path / "j2.mp4").exists()


def test_run_with_invalid_job_exits_1(worker_env):
    res = cli("run", "--test_input", '{"input": {"prompt": "", "width": 100}}', env=worker_env)
    assert res.returncode == 1
    assert "FAILED [invalid_input]" in res.stdout and "width" in res.stdout and "prompt" in res.stdout


def test_run_without_engine_fails_clearly(worker_env):
    res = cli("run", "--test_input", str(EXAMPLE_JOB), env=worker_env)
    assert res.returncode == 1
    assert "FAILED [engine_unavailable]" in res.stdout or "ComfyUI" in res.stdout, res.stdout + res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_local_api_answers_health_and_validation(worker_env):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "i2v_worker", "serve", "--rp_serve_api", "--rp_api_port", str(port),
         "--rp_api_host", "127.0.0.1"], env={**os.environ, **worker_env}, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                res = client.post("/runsync", json={"input": {"action": "health"}})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the local API did not come up"
                time.sleep(0.3)
        body = res.json()
        assert body["status"] == "COMPLETED", body
        assert body["output"]["status"] == "degraded"  # no ComfyUI configured
        assert {m["state"] for m in body["output"]["models"]} == {"missing"}
        bad = client.post("/runsync", json={"input": {"prompt": "a cat"}}).json()
        assert bad["status"] == "FAILED" and "image_url" in bad["error"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.comfyui
def test_run_example_job_end_to_end_on_real_comfyui(comfyui_server, comfyui_store, tiny_models_dir, tmp_path):
    """`i2v-worker run --test_input examples/job.json` against the real ComfyUI (attached)."""
    env = {"I2V_MODEL_DIR": str(comfyui_store), "I2V_PRESET": "tiny", "I2V_TINY_DIR": str(tiny_models_dir),
           "I2V_OUTPUT_DIR": str(tmp_path / "out"), "COMFYUI_URL": comfyui_server.url, "I2V_ENGINE": "comfyui"}
    job = json.loads(EXAMPLE_JOB.read_text())
    job["id"] = "example-e2e"
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    res = cli("run", "--test_input", str(path), env=env, timeout=170)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    mp4 = tmp_path / "out" / "example-e2e.mp4"
    assert str(mp4) in res.stdout
    import av

    with av.open(str(mp4)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height) == ("h264", 64, 64)
        assert sum(1 for _ in c.decode(s)) == 9


@pytest.mark.slow
def test_run_example_job_on_the_diffusers_engine(tmp_path, tiny_models_dir):
    """`i2v-worker run` with I2V_ENGINE=diffusers (in-process, CPU) on the tiny preset."""
    env = {"I2V_MODEL_DIR": str(tmp_path / "store"), "I2V_PRESET": "tiny", "I2V_TINY_DIR": str(tiny_models_dir),
           "I2V_OUTPUT_DIR": str(tmp_path / "out"), "I2V_ENGINE": "diffusers", "I2V_DEVICE": "cpu"}
    job = json.loads(EXAMPLE_JOB.read_text())
    job["id"] = "example-diffusers"
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    res = cli("run", "--test_input", str(path), env=env, timeout=170)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    import av

    with av.open(str(tmp_path / "out" / "example-diffusers.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height) == ("h264", 64, 64)
        assert sum(1 for _ in c.decode(s)) == 9
