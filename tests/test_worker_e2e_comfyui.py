"""The worker end to end against the REAL ComfyUI, on the tiny preset.

Every test runs the production path: `Settings` -> `build_worker` (ModelStore.from_settings +
ComfyUIEngine attached to the session's real ComfyUI via COMFYUI_URL) -> `Worker.handle(job)`.
The store root is the session's `comfyui_store` (the folder that ComfyUI reads through its
extra_model_paths.yaml); models come from the manifest's `file://${I2V_TINY_DIR}/...` sources,
so whatever a job needs is fetched on demand by the store. Nothing is faked: images are served by a
real http.server on 127.0.0.1 (with the TEST-ONLY `allow_loopback_images`), videos go to a real
moto S3 server, and `i2v-worker run` is a real subprocess.

Sizes are tiny (64x48, 5 frames, 4 steps) to keep each job a few seconds on CPU.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from i2v_worker.config import Settings
from i2v_worker.engines.base import ModelRole
from i2v_worker.store.records import VerificationRecord, read_record, remove_record, write_record
from i2v_worker.store.types import ModelState
from i2v_worker.worker.app import build_worker
from tests.support.comfyui import STORE_FOLDERS, ComfyUIServer
from tests.support.comfyui_engine import png, probe_mp4

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
W, H, LENGTH, FPS, STEPS = 64, 48, 5, 16, 4
TIMING_KEYS = {"models", "upload", "queue", "inference", "encode", "total"}


# --- helpers ---------------------------------------------------------------------------------------


def job_input(**overrides: Any) -> dict[str, Any]:
    inp: dict[str, Any] = {"prompt": "a red square drifting to the right", "width": W, "height": H,
                           "length": LENGTH, "fps": FPS, "steps": STEPS, "seed": 11}
    if "image_url" not in overrides:
        inp["image_base64"] = base64.b64encode(png(W, H)).decode("ascii")
    inp.update(overrides)
    return {k: v for k, v in inp.items() if v is not None}


@dataclass
class E2E:
    """One test's view of the session ComfyUI and the store root it reads."""

    comfy: ComfyUIServer
    store_root: Path
    tiny_dir: Path
    tmp: Path

    def settings(self, **overrides: Any) -> Settings:
        fields: dict[str, Any] = dict(
            model_dir=self.store_root, preset="tiny", prefetch=False, engine="comfyui",
            manifest_vars={"I2V_TINY_DIR": str(self.tiny_dir)},
            comfyui_url=self.comfy.url,
            # attached: the worker cleans up its files in ComfyUI's folders under COMFYUI_PATH
            comfyui_path=self.comfy.base_dir,
            output_dir=self.tmp / "out", job_deadline_s=300, hf_offline=False,
        )
        fields.update(overrides)
        return Settings(**fields)

    def roles(self) -> dict[ModelRole, Any]:
        from i2v_worker.store.manifest import load_manifest

        return load_manifest(env={"I2V_TINY_DIR": str(self.tiny_dir)}).roles("tiny")

    def model_path(self, role: ModelRole) -> Path:
        entry = self.roles()[role]
        return self.store_root / entry.folder / entry.name

    def empty_store(self) -> None:
        """The store as a fresh volume: no model files, no records, no leases."""
        for folder in STORE_FOLDERS:
            d = self.store_root / folder
            if d.is_dir():
                for p in d.iterdir():
                    if p.is_file() or p.is_symlink():
                        p.unlink()
        shutil.rmtree(self.store_root / ".i2v", ignore_errors=True)

    def comfy_job_files(self, job_id: str) -> list[Path]:
        """This job's files left in ComfyUI's input/output folders (the engine names them
        `<job id>-<random>...`; other tests' jobs on the shared ComfyUI may leave their own)."""
        out = []
        for sub in ("input", "output"):
            d = self.comfy.base_dir / sub / "i2v-worker"
            if d.is_dir():
                out += [p for p in d.rglob(f"{job_id}-*") if p.is_file()]
        return out


@pytest.fixture
def e2e(comfyui_server: ComfyUIServer, comfyui_store: Path, tiny_models_dir: Path, tmp_path: Path) -> E2E:
    return E2E(comfyui_server, comfyui_store, tiny_models_dir, tmp_path)


@asynccontextmanager
async def running_worker(settings: Settings, progress: list | None = None):
    """The production wiring (build_worker), closed afterwards (attached: ComfyUI keeps running)."""
    sink = (lambda job, payload: progress.append(payload)) if progress is not None else None
    worker = build_worker(settings, progress_sink=sink)
    try:
        yield worker
    finally:
        await worker.close()


async def handle(settings: Settings, job: dict, progress: list | None = None) -> dict[str, Any]:
    async with running_worker(settings, progress) as worker:
        return await worker.handle(job)


def assert_ok(result: dict[str, Any]) -> None:
    assert "error" not in result, json.dumps(result, indent=1)[:4000]


def check_mp4(path: Path, *, frames: int = LENGTH, fps: int = FPS, size: tuple[int, int] = (W, H)) -> None:
    info = probe_mp4(path)
    assert info["codec"] == "h264", info
    assert info["frames"] == frames, info
    assert info["fps"] == fps, info
    assert (info["width"], info["height"]) == size, info


def check_base64_result(result: dict[str, Any], tmp: Path, *, seed: int | None = None) -> None:
    assert_ok(result)
    assert result["mime_type"] == "video/mp4"
    assert "video_url" not in result
    assert (result["width"], result["height"], result["frames"], result["fps"]) == (W, H, LENGTH, FPS)
    assert isinstance(result["seed"], int) and result["seed"] >= 0
    if seed is not None:
        assert result["seed"] == seed
    assert TIMING_KEYS <= set(result["timings"]), result["timings"]
    assert all(isinstance(v, (int, float)) and v >= 0 for v in result["timings"].values()), result["timings"]
    assert result["timings"]["inference"] > 0 and result["timings"]["total"] >= result["timings"]["inference"]
    mp4 = tmp / "result.mp4"
    mp4.write_bytes(base64.b64decode(result["video"]))
    check_mp4(mp4)


@contextmanager
def image_http_server(body: bytes, content_type: str = "image/png") -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `body` at /start.png; yields the URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/start.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/start.png"
    finally:
        server.shutdown()
        server.server_close()


def free_comfyui_caches(comfy: ComfyUIServer) -> None:
    """POST /free: ComfyUI drops its node-output cache and loaded models, so the next job really
    reads the model files again (its cache is keyed by the loader inputs, i.e. the file name).
    The prompt worker applies the flags as soon as it wakes (idle); give it a moment."""
    r = httpx.post(f"{comfy.url}/free", json={"unload_models": True, "free_memory": True}, timeout=30,
                   trust_env=False)
    r.raise_for_status()
    time.sleep(2.0)


# --- happy paths -------------------------------------------------------------------------------------


async def test_base64_job_returns_an_h264_mp4_with_seed_and_timings(e2e: E2E):
    inp = job_input(seed=None)  # seed absent: a random one is drawn and returned
    progress: list[dict] = []
    result = await handle(e2e.settings(), {"id": "e2e-b64", "input": inp}, progress)
    check_base64_result(result, e2e.tmp)
    assert result["seed"] < 2**53, "a drawn seed stays exact for JavaScript clients"
    # ComfyUI's sampling progress reaches the job's progress updates, ending at the last step
    sampling = [p for p in progress if p.get("stage") == "sampling"]
    assert sampling and sampling[-1]["step"] == sampling[-1]["total"] == STEPS, progress
    assert e2e.comfy_job_files("e2e-b64") == [], "the job's input image and video must not stay in ComfyUI's folders"
    assert list((e2e.tmp / "out").glob("*.mp4")) == [], "the worker keeps no local copy after delivery"


async def test_interpolated_webm_job_end_to_end(e2e: E2E):
    """interpolate 2 + webm on the real ComfyUI: (frames-1)*2+1 frames at 2*fps in a VP9 WebM; the
    tiny RIFE model comes through the store (fetched by this job, not before)."""
    import av

    progress: list[dict] = []
    result = await handle(e2e.settings(), {"id": "e2e-rife", "input": job_input(interpolate=2,
                                                                                 output={"format": "webm"})}, progress)
    assert_ok(result)
    assert (result["mime_type"], result["format"]) == ("video/webm", "webm")
    assert (result["frames"], result["fps"]) == ((LENGTH - 1) * 2 + 1, FPS * 2)
    assert result["timings"]["interpolate"] > 0 and result["timings"]["encode"] > 0
    path = e2e.tmp / "result.webm"
    path.write_bytes(base64.b64decode(result["video"]))
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "vp9" and sum(1 for _ in c.decode(s)) == (LENGTH - 1) * 2 + 1
    assert e2e.model_path(ModelRole.INTERPOLATION).is_file()
    steps = [p for p in progress if p.get("stage") == "interpolate"]
    assert steps and steps[-1]["step"] == steps[-1]["total"] == LENGTH - 1


async def test_image_url_job_on_loopback_with_the_test_only_setting(e2e: E2E):
    with image_http_server(png(128, 96, (30, 30, 220))) as url:
        result = await handle(e2e.settings(allow_loopback_images=True),
                              {"id": "e2e-url", "input": job_input(image_url=url, seed=7)})
    check_base64_result(result, e2e.tmp, seed=7)


async def test_image_url_on_loopback_is_refused_by_default(e2e: E2E):
    with image_http_server(png(64, 48)) as url:
        result = await handle(e2e.settings(), {"id": "e2e-url-refused", "input": job_input(image_url=url)})
    assert result["error_code"] == "invalid_input", result
    assert any(d["field"] == "image_url" for d in result["details"]), result


# --- models on demand, selective download --------------------------------------------------------------


async def test_first_job_fetches_its_models_on_demand_and_never_the_unneeded_lora(e2e: E2E):
    e2e.empty_store()
    lora = e2e.model_path(ModelRole.LORA)
    progress: list[dict] = []
    settings = e2e.settings()
    result = await handle(settings, {"id": "e2e-nolora", "input": job_input(lora_strength_high=0, lora_strength_low=0)},
                          progress)
    check_base64_result(result, e2e.tmp)
    # the four models of a LoRA-free graph were fetched through the store, the LoRA never was
    for role in (ModelRole.HIGH_NOISE, ModelRole.LOW_NOISE, ModelRole.TEXT_ENCODER, ModelRole.VAE):
        path = e2e.model_path(role)
        assert path.is_file() and read_record(e2e.store_root, path.name) is not None, f"{role} not fetched"
    assert not lora.exists(), "a job with both LoRA strengths 0 must not download the LoRA"
    assert not list(lora.parent.glob(f".{lora.name}*")), "no partial LoRA download either"
    published = {p.get("model") for p in progress if p.get("stage") == "models" and p.get("phase") == "published"}
    assert lora.name not in published and published, progress
    assert result["timings"]["models"] > 0

    # the same worker setup with a LoRA: now it is fetched, and the job succeeds
    result = await handle(settings, {"id": "e2e-lora", "input": job_input(lora_strength_high=1.0, lora_strength_low=0.5)})
    check_base64_result(result, e2e.tmp)
    assert lora.is_file() and read_record(e2e.store_root, lora.name) is not None


async def test_health_reports_the_real_engine_and_per_model_states(e2e: E2E):
    e2e.empty_store()
    settings = e2e.settings()
    async with running_worker(settings) as worker:
        await worker.start(prefetch=False)  # as `serve` boots: attach + the /object_info node check
        health = await worker.handle({"id": "h1", "input": {"action": "health"}})
        assert health["engine"]["ready"] is True, health
        assert health["device"]["cpus"] and "gpus" in health["device"], health["device"]
        assert health["engine"]["mode"] == "attached" and health["engine"]["url"] == e2e.comfy.url
        assert health["engine"]["comfyui_version"], health["engine"]
        assert health["engine"]["missing_nodes"] == []
        states = {m["role"]: m["state"] for m in health["models"]}
        assert states == {r.value: "missing" for r in ModelRole}, health["models"]
        assert health["status"] == "ok" and health["preset"] == "tiny" and health["worker_version"]

        await worker.store.aensure([e.name for e in e2e.roles().values()])
        health = await worker.handle({"id": "h2", "input": {"action": "health"}})
        assert {m["role"]: m["state"] for m in health["models"]} == {r.value: "present" for r in ModelRole}
        assert all(m["size"] and m["bytes_on_disk"] == m["size"] for m in health["models"]), health["models"]


async def test_supervised_boot_prefetches_while_comfyui_starts_then_serves_a_job(
    tiny_models_dir: Path, tmp_path: Path, tmp_path_factory
):
    """`serve`'s composition without the SDK: the worker STARTS ComfyUI itself (COMFYUI_PATH, port,
    extra args) on the store's extra_model_paths.yaml, prefetches the preset into an empty store at
    the same moment, runs a job, and stops its ComfyUI on close. (One more ComfyUI start: the
    other tests attach to the session's.)"""
    from tests.support.comfyui import _free_port

    comfy = ComfyUIServer(tmp_path_factory.mktemp("supervised-comfy"))
    comfy.prepare()  # the code copy + a base dir with the test-only nodes; the ENGINE starts it
    store_root = tmp_path / "store"
    settings = Settings(
        model_dir=store_root, preset="tiny", prefetch=True, engine="comfyui",
        manifest_vars={"I2V_TINY_DIR": str(tiny_models_dir)}, comfyui_path=comfy.code_dir,
        comfyui_port=_free_port(), comfyui_args=f"--base-directory {comfy.base_dir} --disable-api-nodes",
        device="cpu", output_dir=tmp_path / "out", job_deadline_s=300,
    )
    async with running_worker(settings) as worker:
        await worker.start()  # engine start and prefetch at the same moment
        assert worker.engine.ready and worker.engine.process.alive
        proc = worker.engine.process
        await asyncio.wait_for(asyncio.shield(worker.prefetch_task), 120)
        assert all(s.state == ModelState.PRESENT for s in worker.store.status()
                   if s.name in {e.name for r, e in worker.store.manifest.roles("tiny").items()
                       if r is not ModelRole.INTERPOLATION})  # RIFE waits for a job that asks for it
        result = await worker.handle({"id": "e2e-supervised", "input": job_input()})
        check_base64_result(result, tmp_path)
        health = await worker.handle({"id": "h", "input": {"action": "health"}})
        assert health["engine"]["mode"] == "supervised" and health["engine"]["pid"] == proc.pid
        assert health["prefetch"] == "done"
    assert not proc.alive, "closing the worker stops the ComfyUI it started"


# --- delivery ------------------------------------------------------------------------------------------


async def test_s3_delivery_returns_a_presigned_url_to_the_mp4(e2e: E2E, s3_server):
    from tests.support.s3_server import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

    settings = e2e.settings(bucket_endpoint_url=s3_server.endpoint_url, bucket_access_key_id=S3_ACCESS_KEY,
                            bucket_secret_access_key=S3_SECRET_KEY, bucket_region=S3_REGION,
                            bucket_name="e2e-videos")
    s3_server.client().create_bucket(Bucket="e2e-videos")
    result = await handle(settings, {"id": "e2e-s3", "input": job_input()})
    assert_ok(result)
    assert "video" not in result and result["mime_type"] == "video/mp4"
    url = result["video_url"]
    assert url.startswith(s3_server.endpoint_url + "/e2e-videos/e2e-s3/"), url
    assert result["timings"]["upload"] > 0
    r = httpx.get(url, timeout=30, trust_env=False)
    assert r.status_code == 200, r.text[:500]
    mp4 = e2e.tmp / "from-s3.mp4"
    mp4.write_bytes(r.content)
    check_mp4(mp4)
    key = url.split("/e2e-videos/", 1)[1].split("?", 1)[0]
    head = s3_server.client().head_object(Bucket="e2e-videos", Key=key)
    assert head["ContentType"] == "video/mp4"


async def test_too_large_for_base64_says_to_configure_a_bucket(e2e: E2E):
    result = await handle(e2e.settings(max_base64_result_bytes=1000), {"id": "e2e-big", "input": job_input()})
    assert result["error_code"] == "output_too_large", result
    assert "BUCKET_ENDPOINT_URL" in result["error"] and "video" not in result
    assert list((e2e.tmp / "out").glob("*.mp4")) == []


# --- a model file corrupt on disk ----------------------------------------------------------------------


async def test_silently_corrupted_model_file_gives_a_readable_error_and_recovers(e2e: E2E):
    settings = e2e.settings()
    async with running_worker(settings) as worker:
        await worker.store.aensure([e.name for e in e2e.roles().values()])
    path = e2e.model_path(ModelRole.HIGH_NOISE)
    rec = read_record(e2e.store_root, path.name)
    assert rec is not None
    # Silent disk corruption: the file loses two thirds of its bytes and the record is updated to
    # match, so the store's cheap presence check (size, mtime, ctime, inode) still says PRESENT.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    st = path.stat()
    write_record(e2e.store_root, VerificationRecord(**{**rec.model_dump(), "size": st.st_size,
                                                       "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}), writer_id="e2e-test")
    try:
        free_comfyui_caches(e2e.comfy)  # else ComfyUI reuses the expert it loaded for an earlier job
        result = await handle(settings, {"id": "e2e-corrupt", "input": job_input(seed=5)})
        assert result.get("error_code") == "model_error", result
        assert "UnetLoaderGGUF" in result["error"] and "load_high" in result["error"], result["error"]
        assert "Traceback" not in result["error"] and len(result["error"]) < 500, result["error"]
        assert result["details"]["details"]["traceback"], "the traceback goes to details"
    finally:
        path.unlink(missing_ok=True)
        remove_record(e2e.store_root, path.name)
    # the next job fetches a good copy (the file is missing now) and succeeds
    result = await handle(settings, {"id": "e2e-after-corrupt", "input": job_input(seed=6)})
    check_base64_result(result, e2e.tmp, seed=6)


# --- `i2v-worker run` as a user runs it ------------------------------------------------------------------


def run_cli(e2e: E2E, job: dict, *, timeout: float = 300) -> subprocess.CompletedProcess:
    path = e2e.tmp / "job.json"
    path.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("I2V_", "BUCKET_", "COMFYUI_", "HF_"))}
    env.update({"I2V_ENGINE": "comfyui", "COMFYUI_URL": e2e.comfy.url, "COMFYUI_PATH": str(e2e.comfy.base_dir),
                "I2V_MODEL_DIR": str(e2e.store_root), "I2V_PRESET": "tiny", "I2V_TINY_DIR": str(e2e.tiny_dir),
                "I2V_PREFETCH": "0", "I2V_OUTPUT_DIR": str(e2e.tmp / "cli-out"), "HF_HOME": str(e2e.tmp / "hf"),
                "NO_COLOR": "1", "COLUMNS": "250"})
    return subprocess.run([sys.executable, "-m", "i2v_worker", "run", "--test_input", str(path)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_run_cli_with_a_job_file_writes_the_mp4_at_the_printed_path(e2e: E2E):
    res = run_cli(e2e, {"id": "e2e-cli", "input": job_input()})
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    m = re.search(r"^video: (.+\.mp4)$", res.stdout, re.M)
    assert m, res.stdout
    mp4 = Path(m.group(1))
    assert mp4.is_file() and mp4.parent == e2e.tmp / "cli-out"
    check_mp4(mp4)


def test_run_cli_with_an_invalid_job_exits_1_naming_the_field(e2e: E2E):
    res = run_cli(e2e, {"id": "e2e-cli-bad", "input": job_input(width=50)}, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr[-4000:]
    assert "invalid_input" in res.stdout and "width" in res.stdout and "multiple of 16" in res.stdout, res.stdout
    assert not (e2e.tmp / "cli-out").exists() or not list((e2e.tmp / "cli-out").iterdir())
