"""`i2v-worker submit` and examples/client.py: what a user of a deployed endpoint relies on.

- Against the REAL local API (`i2v-worker serve --rp_serve_api`, the runpod SDK's FastAPI server)
  running the worker on the tiny models with the diffusers engine: a job ends as an MP4 on disk
  (checked with PyAV) and the timings are printed; an invalid job ends with the worker's own error
  message (naming the field and the rule) and exit status 1.
- Against `FakeRunpodCloudApi`, a scripted stand-in for api.runpod.ai (which cannot be reached
  from here, and whose TIMED_OUT / CANCELLED states and progress stream the local API never
  produces): the bearer key, the progress bar fed by the worker's progress updates, a video
  delivered as `video_url` (downloaded WITHOUT the API key), FAILED / TIMED_OUT / CANCELLED with
  their messages, and Ctrl-C sending /cancel.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "client.py"
CLI = [sys.executable, "-m", "i2v_worker"]

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("I2V_", "RUNPOD_", "COMFYUI_", "BUCKET_"))}
    env.update(COLUMNS="200", PYTHONUNBUFFERED="1", **extra)
    return env


def _image(tmp_path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    from PIL import Image

    img = Image.new("RGB", size)
    img.putdata([(x * 4 % 256, y * 4 % 256, 128) for y in range(size[1]) for x in range(size[0])])
    path = tmp_path / "start.png"
    img.save(path)
    return path


def _tiny_mp4(path: Path, frames: int = 5, size: int = 64) -> bytes:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), i * 40, dtype=np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.read_bytes()


# --- the real local API on the tiny models ---------------------------------------------------------
def _diffusers_engine_present() -> bool:
    spec = importlib.util.find_spec("i2v_worker.engines.diffusers")
    return spec is not None and spec.origin is not None  # a folder with only configs/ is not the engine


needs_engine = pytest.mark.skipif(
    not _diffusers_engine_present(),
    reason="i2v_worker.engines.diffusers (the in-process engine the local API runs here) is not in the tree yet",
)


@dataclass
class LocalApi:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def _serve_local_api(base: Path, **settings: str) -> Iterator[LocalApi]:
    """`i2v-worker serve --rp_serve_api` on a free loopback port, until the API answers."""
    port = _free_port()
    log = base / "serve.log"
    with log.open("wb") as log_f:
        proc = subprocess.Popen(
            [*CLI, "serve", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
            cwd=base, env=_clean_env(I2V_MODEL_DIR=str(base / "store"), I2V_OUTPUT_DIR=str(base / "out"), **settings),
            stdout=log_f, stderr=subprocess.STDOUT,
        )
    api = LocalApi(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`i2v-worker serve --rp_serve_api` exited with {proc.returncode}:\n{api.log_tail()}")
            try:
                if httpx.get(f"{api.url}/docs", timeout=2).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the local API did not answer within 180 s:\n{api.log_tail()}")
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def local_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    """The worker on the tiny models with the in-process diffusers engine (CPU)."""
    if not _diffusers_engine_present():
        pytest.skip("i2v_worker.engines.diffusers is not in the tree yet")
    from i2v_worker.tiny import generate_tiny_models

    base = tmp_path_factory.mktemp("local_api")
    generate_tiny_models(base / "tiny")
    with _serve_local_api(base, I2V_ENGINE="diffusers", I2V_PRESET="tiny", I2V_DEVICE="cpu",
                          I2V_TINY_DIR=str(base / "tiny")) as api:
        yield api


@pytest.fixture(scope="module")
def handler_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    """The worker's real handler behind the local API, for jobs that never reach an engine:
    no prefetch, and the ComfyUI engine attached to a closed port (never used by invalid jobs)."""
    base = tmp_path_factory.mktemp("handler_api")
    with _serve_local_api(base, I2V_ENGINE="comfyui", COMFYUI_URL=f"http://127.0.0.1:{_free_port()}",
                          I2V_PREFETCH="0", I2V_PRESET="tiny", I2V_TINY_DIR=str(base / "tiny")) as api:
        yield api


def _submit_cmd(tool: str) -> list[str]:
    return [*CLI, "submit"] if tool == "cli" else [sys.executable, str(EXAMPLE)]


def _check_mp4(path: Path, *, frames: int, width: int, height: int) -> None:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = sum(1 for _ in container.decode(stream))
        assert (decoded, stream.codec_context.width, stream.codec_context.height) == (frames, width, height)


@needs_engine
@pytest.mark.parametrize("tool", ["cli", "example"])
def test_local_api_job_saves_an_mp4_and_prints_timings(local_api: LocalApi, tmp_path: Path, tool: str) -> None:
    out = tmp_path / "nested" / "video.mp4"
    cmd = [*_submit_cmd(tool), "--url", local_api.url, "--image", str(_image(tmp_path)),
           "--prompt", "a slow pan over a gradient", "--width", "64", "--height", "64", "--length", "5",
           "--steps", "2", "--seed", "7", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_clean_env(), cwd=tmp_path)
    text = res.stdout + res.stderr
    assert res.returncode == 0, f"{text}\n--- server log ---\n{local_api.log_tail()}"
    _check_mp4(out, frames=5, width=64, height=64)
    assert "seed 7" in text
    for timing in ("models", "inference", "total"):
        assert timing in text, f"timings table lacks {timing}:\n{text}"


@pytest.mark.parametrize("tool", ["cli", "example"])
def test_local_api_invalid_job_shows_the_workers_error(handler_api: LocalApi, tmp_path: Path, tool: str) -> None:
    out = tmp_path / "video.mp4"
    cmd = [*_submit_cmd(tool), "--url", handler_api.url, "--image", str(_image(tmp_path)),
           "--prompt", "x", "--length", "6", "--width", "70", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_clean_env(), cwd=tmp_path)
    text = " ".join((res.stdout + res.stderr).split())  # rich may wrap long lines
    assert res.returncode == 1, text
    assert "FAILED" in text
    # the worker's own message: each bad field with its rule
    assert "length" in text and "4k+1" in text, text
    assert "width" in text and "multiple of 16" in text, text
    assert not out.exists()


def test_unreadable_image_is_a_clear_error_before_anything_is_sent(tmp_path: Path) -> None:
    res = subprocess.run([*CLI, "submit", "--url", "http://127.0.0.1:9", "--image", str(tmp_path / "missing.png"),
                          "--prompt", "x"], capture_output=True, text=True, timeout=60, env=_clean_env())
    assert res.returncode == 1
    assert "--image" in res.stderr and "missing.png" in res.stderr


# --- FakeRunpodCloudApi: a scripted stand-in for api.runpod.ai -------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    auth: str | None
    body: Any = None


@dataclass
class FakeRunpodCloudApi:
    """Real HTTP on 127.0.0.1 speaking RunPod's job API for endpoint `ep-test`. `script` is the
    sequence of /status answers (the last one repeats); `video` is served at /files/video.mp4."""

    api_key: str = "rp-test-key"
    script: list[dict] = field(default_factory=list)
    video: bytes = b""
    seen: list[Seen] = field(default_factory=list)
    # path suffix -> faults consumed one per request: "drop" closes the connection without an
    # answer, a number answers with that HTTP status
    faults: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fake = self
        self._lock = threading.Lock()
        self._polls = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _reply(self, code: int, body: Any = None, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake._lock:
                    fake.seen.append(Seen(self.command, self.path, self.headers.get("Authorization"), body))
                    suffix = next((k for k in fake.faults if self.path.endswith(k) and fake.faults[k]), None)
                    fault = fake.faults[suffix].pop(0) if suffix else None
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault:
                    return self._reply(int(fault), {"error": "injected"})
                if self.path == "/files/video.mp4" and self.command == "GET":
                    return self._reply(200, raw=fake.video)
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    return self._reply(401, {"error": "Unauthorized"})
                if self.path == "/v2/ep-test/run" and self.command == "POST":
                    return self._reply(200, {"id": "job-1", "status": "IN_QUEUE"})
                if self.path == "/v2/ep-test/status/job-1" and self.command == "GET":
                    with fake._lock:
                        answer = fake.script[min(fake._polls, len(fake.script) - 1)]
                        fake._polls += 1
                    return self._reply(200, {"id": "job-1", **answer})
                if self.path == "/v2/ep-test/cancel/job-1" and self.command == "POST":
                    return self._reply(200, {"id": "job-1", "status": "CANCELLED"})
                return self._reply(404, {"error": "not found"})

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self, method: str, suffix: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and s.path.endswith(suffix)]

    def cli(self, tmp_path: Path, *args: str, api_key: str | None = "env") -> list[str]:
        cmd = [*CLI, "submit", "--endpoint-id", "ep-test", "--api-base", f"{self.base}/v2",
               "--image", str(_image(tmp_path)), "--prompt", "waves", "--poll-interval", "0.05", *args]
        if api_key not in (None, "env"):
            cmd += ["--api-key", api_key]
        return cmd


@pytest.fixture
def cloud() -> Iterator[FakeRunpodCloudApi]:
    fake = FakeRunpodCloudApi()
    try:
        yield fake
    finally:
        fake.close()


PROGRESS_SCRIPT = [
    {"status": "IN_QUEUE"},
    {"status": "IN_PROGRESS", "output": {"stage": "models", "phase": "downloading", "model": "wan_2.1_vae.safetensors",
                                          "done_bytes": 13_500_000_000, "total_bytes": 27_000_000_000, "percent": 50.0}},
    {"status": "IN_PROGRESS", "output": {"stage": "sampling", "step": 1, "total": 4, "percent": 25.0}},
    {"status": "IN_PROGRESS", "output": {"stage": "sampling", "step": 4, "total": 4, "percent": 100.0}},
]


def test_cloud_job_with_progress_and_video_url(cloud: FakeRunpodCloudApi, tmp_path: Path) -> None:
    cloud.video = _tiny_mp4(tmp_path / "served.mp4")
    cloud.script = [*PROGRESS_SCRIPT, {
        "status": "COMPLETED", "delayTime": 1234, "executionTime": 5678,
        "output": {"video_url": f"{cloud.base}/files/video.mp4", "mime_type": "video/mp4", "seed": 42, "width": 64,
                   "height": 64, "frames": 5, "fps": 8,
                   "timings": {"models": 0.5, "inference": 3.25, "encode": 0.1, "upload": 0.2, "total": 4.0}},
    }]
    out = tmp_path / "video.mp4"
    res = subprocess.run(cloud.cli(tmp_path, "--out", str(out), "--length", "5", "--execution-timeout", "1800"),
                         capture_output=True, text=True,
                         timeout=60, env=_clean_env(RUNPOD_API_KEY=cloud.api_key))
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    assert out.read_bytes() == cloud.video
    assert res.stdout.strip() == str(out), "stdout carries only the saved path"
    _check_mp4(out, frames=5, width=64, height=64)
    # the key from RUNPOD_API_KEY on every API call, never on the presigned download
    run = cloud.requests("POST", "/run")
    assert len(run) == 1 and run[0].auth == f"Bearer {cloud.api_key}"
    assert run[0].body["input"]["prompt"] == "waves" and run[0].body["input"]["length"] == 5
    assert run[0].body["policy"] == {"executionTimeout": 1_800_000}  # ms, RunPod's per-request timeout
    assert base64.b64decode(run[0].body["input"]["image_base64"]).startswith(b"\x89PNG")
    assert all(s.auth == f"Bearer {cloud.api_key}" for s in cloud.requests("GET", "/status/job-1"))
    download = cloud.requests("GET", "/files/video.mp4")
    assert len(download) == 1 and download[0].auth is None
    # the progress bar showed the worker's stages; the timings table RunPod's and the worker's times
    assert "downloading wan_2.1_vae.safetensors" in text and "13.5/27.0 GB" in text
    assert "sampling 4/4" in text
    assert "5.68" in text and "1.23" in text and "3.25" in text, text


@pytest.mark.parametrize("final, expected", [
    ({"status": "FAILED", "error": "wan_2.1_vae.safetensors could not be downloaded [403 from the hub, 3 tries]; set HF_TOKEN"},
     "wan_2.1_vae.safetensors could not be downloaded [403 from the hub, 3 tries]"),  # brackets shown as sent
    # what the SDK sends when a handler raised: the error as a JSON string
    ({"status": "FAILED", "error": json.dumps({"error_type": "<class 'RuntimeError'>", "error_message": "CUDA out of memory",
                                               "error_traceback": "Traceback ..."})},
     "CUDA out of memory"),
    ({"status": "TIMED_OUT"}, "execution timeout"),
    ({"status": "CANCELLED"}, "cancelled"),
    # RunPod drops a result over its size limit: COMPLETED without output
    ({"status": "COMPLETED"}, "BUCKET_ENDPOINT_URL"),
])
def test_cloud_job_that_does_not_complete_exits_1_with_the_message(
    cloud: FakeRunpodCloudApi, tmp_path: Path, final: dict, expected: str
) -> None:
    cloud.script = [PROGRESS_SCRIPT[0], PROGRESS_SCRIPT[2], final]
    out = tmp_path / "video.mp4"
    res = subprocess.run(cloud.cli(tmp_path, "--out", str(out), api_key=cloud.api_key), capture_output=True,
                         text=True, timeout=60, env=_clean_env())
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 1, text
    assert expected in text, text
    if final["status"] != "COMPLETED":
        assert final["status"] in text
    assert not out.exists()


def test_ctrl_c_cancels_the_job(cloud: FakeRunpodCloudApi, tmp_path: Path) -> None:
    cloud.script = [PROGRESS_SCRIPT[0], PROGRESS_SCRIPT[2]]  # running forever
    proc = subprocess.Popen(cloud.cli(tmp_path, api_key=cloud.api_key), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_clean_env())
    try:
        deadline = time.monotonic() + 60
        while len(cloud.requests("GET", "/status/job-1")) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the client never polled /status"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, stdout + stderr
    cancels = cloud.requests("POST", "/cancel/job-1")
    assert len(cancels) == 1 and cancels[0].auth == f"Bearer {cloud.api_key}"
    assert "cancelled" in stderr


def test_missing_or_rejected_api_key(cloud: FakeRunpodCloudApi, tmp_path: Path) -> None:
    res = subprocess.run(cloud.cli(tmp_path, api_key=None), capture_output=True, text=True, timeout=60, env=_clean_env())
    assert res.returncode == 1 and "RUNPOD_API_KEY" in res.stderr
    assert not cloud.seen, "nothing is sent without a key"
    res = subprocess.run(cloud.cli(tmp_path, api_key="wrong"), capture_output=True, text=True, timeout=60,
                         env=_clean_env())
    assert res.returncode == 1 and "401" in res.stderr and "RUNPOD_API_KEY" in res.stderr


def test_flaky_status_polls_are_retried(cloud: FakeRunpodCloudApi, tmp_path: Path) -> None:
    cloud.script = [PROGRESS_SCRIPT[2], {"status": "COMPLETED", "output": {
        "video": base64.b64encode(b"mp4-bytes").decode(), "seed": 1, "width": 64, "height": 64, "frames": 5, "fps": 8,
        "timings": {"total": 1.0}}}]
    cloud.faults = {"/status/job-1": ["drop", "503", "drop", "429"]}
    out = tmp_path / "video.mp4"
    res = subprocess.run(cloud.cli(tmp_path, "--out", str(out), api_key=cloud.api_key), capture_output=True,
                         text=True, timeout=120, env=_clean_env())
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == b"mp4-bytes"
    assert len(cloud.requests("GET", "/status/job-1")) >= 6


def test_a_lost_run_answer_is_not_resent(cloud: FakeRunpodCloudApi, tmp_path: Path) -> None:
    # the request reached the server, the answer was lost: resending could start the job twice
    cloud.faults = {"/run": ["drop"]}
    res = subprocess.run(cloud.cli(tmp_path, api_key=cloud.api_key), capture_output=True, text=True, timeout=120,
                         env=_clean_env())
    assert res.returncode == 1
    assert "/run" in res.stderr
    assert len(cloud.requests("POST", "/run")) == 1


def test_submit_flags_map_to_the_job_fields(tmp_path):
    """--interpolate/--format/--quality reach the job input (output.* only when given)."""
    from i2v_worker.cli import build_parser
    from i2v_worker.client.cli import _job_input

    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG fake")
    argv = ["submit", "--url", "http://127.0.0.1:1", "--image", str(img), "--prompt", "p", "--interpolate", "2",
            "--format", "webm", "--quality", "28"]
    inp = _job_input(build_parser(argv).parse_args(argv))
    assert inp["interpolate"] == 2 and inp["output"] == {"format": "webm", "quality": 28}
    argv = ["submit", "--url", "http://127.0.0.1:1", "--image", str(img), "--prompt", "p"]
    inp = _job_input(build_parser(argv).parse_args(argv))
    assert "output" not in inp and "interpolate" not in inp
