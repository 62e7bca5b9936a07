"""The production `serve` path against a real local job API, and the worker's fitness checks.

`i2v-worker serve` is started the way RunPod starts it: RUNPOD_WEBHOOK_GET_JOB / _POST_OUTPUT set
(so the runpod SDK takes its production branch, `run_worker`: fitness checks, then the job loop),
pointed at a small job-take server on 127.0.0.1 that hands out one health job. The worker runs
under `python -X importtime`, which lists every module the worker process imports: torch must not
be among them (ComfyUI, the engine's child process, is the only one that imports torch). The SDK's
own log shows which fitness checks ran: the worker's three, not the SDK's system checks (those
would import torch for their CUDA checks, and their 8.8.8.8:53 probe fails here anyway).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from i2v_worker.config import Settings
from i2v_worker.worker import fitness

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


class JobTakeServer:
    """RunPod's job-take / job-done endpoints, reduced to one queued job (a real HTTP server)."""

    def __init__(self, job: dict) -> None:
        self.queue = [job]
        self.results: list[dict] = []
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # job-take
                if outer.queue and self.path.startswith("/job-take/"):
                    body = json.dumps(outer.queue.pop(0)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(204)
                    self.end_headers()

            def do_POST(self) -> None:  # job-done
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                try:
                    outer.results.append(json.loads(data))
                except ValueError:
                    outer.results.append(json.loads(unquote_plus(data)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.done.set()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "JobTakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _imported_modules(importtime_stderr: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", importtime_stderr, re.M)}


def test_production_serve_never_imports_torch_and_runs_only_the_workers_fitness_checks(tmp_path):
    with JobTakeServer({"id": "health-1", "input": {"action": "health"}}) as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "I2V_", "COMFYUI_"))}
        env.update({
            "PYTHONPATH": str(ROOT / "src"),
            "RUNPOD_WEBHOOK_GET_JOB": f"{api.url}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{api.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
            "RUNPOD_POD_ID": "test-worker",
            "I2V_MODEL_DIR": str(tmp_path / "store"),
            "I2V_PREFETCH": "0",
            "HF_HUB_OFFLINE": "1",
            # production engine and preset; a ComfyUI URL where nothing listens keeps ComfyUI (which
            # imports torch in ITS process) out of this test: the engine's start fails in the background
            "I2V_ENGINE": "comfyui",
            "COMFYUI_URL": "http://127.0.0.1:9",
        })
        out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"  # files: importtime writes a lot
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "i2v_worker", "serve"], env=env,
                                    cwd=tmp_path, stdout=out, stderr=err)
            try:
                done = api.done.wait(120)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        stdout, stderr = out_path.read_text(), err_path.read_text()
        assert done, f"the worker posted no result for the health job:\n{(stdout + stderr)[-3000:]}"
    output = api.results[0].get("output") or {}
    assert output.get("engine", {}).get("engine") == "comfyui", api.results[0]
    modules = _imported_modules(stderr)
    assert "i2v_worker.worker.handler" in modules and "runpod" in modules, "importtime saw the worker"
    torch_like = sorted(m for m in modules if m == "torch" or m.startswith("torch."))
    assert not torch_like, f"the worker process imported {torch_like}"
    logs = stdout + stderr
    assert "Running 3 fitness check(s)" in logs and "All fitness checks passed" in logs, logs[-3000:]


def test_a_failing_fitness_check_ends_the_worker_with_its_message(tmp_path):
    """On the platform a failed check exits 1 before any job; the message says what to do."""
    with JobTakeServer({"id": "never", "input": {"action": "health"}}) as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "I2V_", "COMFYUI_"))}
        env.update({
            "PYTHONPATH": str(ROOT / "src"),
            "RUNPOD_WEBHOOK_GET_JOB": f"{api.url}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{api.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
            "I2V_MODEL_DIR": str(tmp_path / "store"), "I2V_PREFETCH": "0", "HF_HUB_OFFLINE": "1",
            "I2V_ENGINE": "comfyui", "COMFYUI_PATH": str(tmp_path / "no-comfyui"),
        })
        res = subprocess.run([sys.executable, "-m", "i2v_worker", "serve"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert not api.results, "no job ran"
    logs = res.stdout + res.stderr
    assert res.returncode == 1, logs[-2000:]
    assert "Fitness check failed: comfyui_tree_present" in logs and "COMFYUI_PATH" in logs, logs[-2000:]


# --- the checks one by one --------------------------------------------------------------------------
def _settings(tmp_path: Path, **kw) -> Settings:
    kw.setdefault("model_dir", tmp_path / "store")
    return Settings(**kw)


def test_store_root_must_be_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(fitness.FitnessError, match="not writable.*I2V_MODEL_DIR"):
        fitness.check_store_root(_settings(tmp_path, model_dir=blocker / "models"))
    fitness.check_store_root(_settings(tmp_path))  # a plain folder passes
    assert not any(p.name.startswith(".fitness-") for p in (tmp_path / "store").iterdir())


def test_store_root_must_have_room(tmp_path):
    with pytest.raises(fitness.FitnessError, match="GiB free.*models gc"):
        fitness.check_store_root(_settings(tmp_path), min_free_bytes=2**62)


def test_comfyui_tree_is_checked_only_when_the_worker_starts_it(tmp_path):
    with pytest.raises(fitness.FitnessError, match="main.py missing.*COMFYUI_PATH"):
        fitness.check_comfyui_tree(_settings(tmp_path, comfyui_path=tmp_path / "nothing"))
    fitness.check_comfyui_tree(_settings(tmp_path, comfyui_path=tmp_path / "nothing", engine="diffusers"))
    fitness.check_comfyui_tree(_settings(tmp_path, comfyui_path=tmp_path / "nothing", comfyui_url="http://127.0.0.1:1"))
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "main.py").write_text("")
    fitness.check_comfyui_tree(_settings(tmp_path, comfyui_path=tmp_path / "comfy"))


def test_gpu_check_runs_when_the_engine_needs_cuda(tmp_path):
    cuda = _settings(tmp_path, device="cuda")
    with pytest.raises(fitness.FitnessError, match="nvidia-smi is not on PATH"):
        fitness.check_gpu_visible(cuda, nvidia_smi="nvidia-smi-not-installed-here")
    with pytest.raises(fitness.FitnessError, match="lists no GPU.*580"):
        fitness.check_gpu_visible(cuda, nvidia_smi="false")  # a real program that fails like a broken driver
    # auto: only a machine with the NVIDIA driver needs a GPU; cpu never does
    fitness.check_gpu_visible(_settings(tmp_path, device="auto"), nvidia_smi="false", driver_present=lambda: False)
    with pytest.raises(fitness.FitnessError):
        fitness.check_gpu_visible(_settings(tmp_path, device="auto"), nvidia_smi="false", driver_present=lambda: True)
    fitness.check_gpu_visible(_settings(tmp_path, device="cpu"), nvidia_smi="false", driver_present=lambda: True)


def test_checks_have_names_the_sdk_logs(tmp_path):
    names = [c.__name__ for c in fitness.checks(_settings(tmp_path))]
    assert names == ["store_root_writable", "comfyui_tree_present", "gpu_visible_to_nvidia_smi"]
