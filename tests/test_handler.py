"""The handler: validation -> image -> models (real store, tiny files) -> engine -> delivery.

The engine here is `StandInEngine`, a TEST STAND-IN for the Engine protocol (not a fake of a
server): it returns real uint8 frames of the requested size (as both engines do), records each
request and can block or fail on demand, so the handler's side of the contract is checked on its own: what it passes, the
progress it forwards, cancellation and deadlines reaching the engine call, and error mapping. The
real engines (ComfyUI, diffusers) run the same handler in the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from i2v_worker.config import Settings
from i2v_worker.engines.base import EngineError, EngineProgress, GeneratedVideo, GenerationRequest, ModelRole
from i2v_worker.store import ModelStore
from i2v_worker.store.types import ModelState
from i2v_worker.worker.handler import Worker
from tests.support.s3_server import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

pytestmark = pytest.mark.timeout(120)

EXAMPLE_PNG = Path(__file__).resolve().parent.parent / "examples" / "sunrise.png"


def make_frames(frames: int, width: int, height: int):
    import numpy as np

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (height, width, 3))  # detail, so the encoder's quality matters
    return np.stack([((texture + i * 25) % 255).astype(np.uint8) for i in range(frames)])


class StandInEngine:
    """TEST STAND-IN engine (see the module docstring)."""

    name = "stand-in"

    def __init__(self, *, block: bool = False, error: EngineError | None = None, bad_frames: bool = False,
                 start_error: EngineError | None = None):
        self.block, self.error, self.bad_frames, self.start_error = block, error, bad_frames, start_error
        self.requests: list[GenerationRequest] = []
        self.starts = 0
        self.closed = False
        self.entered = asyncio.Event()
        self.cancelled = False

    async def start(self) -> None:
        self.starts += 1
        if self.start_error is not None:
            raise self.start_error

    async def generate(self, request: GenerationRequest, progress) -> GeneratedVideo:
        self.requests.append(request)
        for i in range(1, request.steps + 1):
            progress(EngineProgress("sampling", i, request.steps))
        self.entered.set()
        if self.error is not None:
            raise self.error
        if self.block:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True  # a real engine interrupts its work here
                raise
        pixels = make_frames(request.length, request.width, request.height)
        if self.bad_frames:
            pixels = pixels.astype("float32")  # not uint8: the encoder refuses it
        return GeneratedVideo(pixels, request.fps, {"queue": 0.001, "inference": 0.01})

    async def health(self) -> dict:
        return {"engine": self.name, "ready": self.starts > 0 and self.start_error is None}

    async def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------------------- fixtures


def make_settings(tmp_path: Path, tiny_dir: Path, **kw) -> Settings:
    kw.setdefault("prefetch", False)
    kw.setdefault("preset", "tiny")
    return Settings(model_dir=tmp_path / "store", manifest_vars={"I2V_TINY_DIR": str(tiny_dir)},
                    output_dir=tmp_path / "out", **kw)


class Harness:
    def __init__(self, tmp_path: Path, tiny_dir: Path, engine: StandInEngine | None = None, **settings_kw):
        self.settings = make_settings(tmp_path, tiny_dir, **settings_kw)
        self.store = ModelStore.from_settings(self.settings)
        self.engine = engine or StandInEngine()
        self.progress: list[dict] = []
        self.worker = Worker(self.settings, self.store, self.engine,
                             progress_sink=lambda job, payload: self.progress.append(payload))

    def states(self) -> dict[str, ModelState]:
        return {s.name: s.state for s in self.store.status([e.name for e in self.store.manifest.preset("tiny")])}


@pytest.fixture
def harness(tmp_path, tiny_models_dir):
    def build(engine: StandInEngine | None = None, **settings_kw) -> Harness:
        return Harness(tmp_path, tiny_models_dir, engine, **settings_kw)

    return build


def image_b64() -> str:
    return base64.b64encode(EXAMPLE_PNG.read_bytes()).decode()


def job(**kw) -> dict:
    inp = {"image_base64": image_b64(), "prompt": "the sun rises", "width": 64, "height": 64, "length": 9,
           "steps": 4, "seed": 42}
    inp.update(kw)
    return {"id": "job-1", "input": {k: v for k, v in inp.items() if v is not ...}}


def probe_mp4(data: bytes) -> tuple[str, int, int, int, float]:
    import av

    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        frames = sum(1 for _ in c.decode(s))
        return s.codec_context.name, frames, s.width, s.height, float(s.average_rate)


# ------------------------------------------------------------------------------------------ tests


async def test_happy_path_base64(harness):
    h = harness()
    out = await h.worker.handle(job())
    assert "error" not in out, out
    assert probe_mp4(base64.b64decode(out["video"])) == ("h264", 9, 64, 64, 16.0)
    assert (out["mime_type"], out["seed"], out["width"], out["height"], out["frames"], out["fps"]) == \
        ("video/mp4", 42, 64, 64, 9, 16)
    assert set(out["timings"]) >= {"models", "upload", "queue", "inference", "interpolate", "encode", "total"}
    assert out["timings"]["interpolate"] == 0 and out["format"] == "mp4"
    assert "warnings" not in out
    req = h.engine.requests[0]
    # every graph role, each a published file in the store; the interpolation model is the worker's
    assert set(req.models) == set(ModelRole) - {ModelRole.INTERPOLATION}
    assert all(path.is_file() and path.parent.parent == h.settings.model_dir for _, path in req.models.values())
    assert (req.high_noise_steps, req.cfg, req.shift, req.negative_prompt[:4]) == (2, 1.0, 8.0, "色调艳丽")
    assert req.image_png.startswith(b"\x89PNG")
    assert not any(h.settings.output_dir.glob("*.mp4"))  # the engine's file is deleted after delivery
    stages = [p["stage"] for p in h.progress]
    assert "models" in stages and stages[-1] == "encode"
    assert [p for p in h.progress if p["stage"] == "sampling"][-1]["step"] == 4


async def test_lora_free_job_never_fetches_the_lora(harness):
    h = harness()
    out = await h.worker.handle(job(lora_strength_high=0, lora_strength_low=0, steps=8))
    assert "error" not in out, out
    assert ModelRole.LORA not in h.engine.requests[0].models
    lora = h.store.manifest.roles("tiny")[ModelRole.LORA].name
    states = h.states()
    rife = h.store.manifest.roles("tiny")[ModelRole.INTERPOLATION].name
    assert states[lora] == states[rife] == ModelState.MISSING
    assert all(s == ModelState.PRESENT for n, s in states.items() if n not in (lora, rife))


async def test_one_lora_strength_keeps_the_lora(harness):
    h = harness()
    assert "error" not in await h.worker.handle(job(lora_strength_high=0, lora_strength_low=1.5))
    req = h.engine.requests[0]
    assert ModelRole.LORA in req.models and (req.lora_strength_high, req.lora_strength_low) == (0, 1.5)


async def test_random_seed_is_returned_and_aliases_warn(harness):
    h = harness()
    out = await h.worker.handle({"id": "j", "input": {"image_path": image_b64(), "prompt": "p", "width": 32,
                                                      "height": 32, "video_length": 5, "frame_rate": 8}})
    assert "error" not in out, out
    assert isinstance(out["seed"], int) and out["seed"] == h.engine.requests[0].seed
    assert (out["frames"], out["fps"]) == (5, 8)
    assert len(out["warnings"]) == 3


class _ImageHandler(BaseHTTPRequestHandler):
    body = b""

    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture
def image_server():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (160, 90), (10, 200, 30)).save(buf, "PNG")
    _ImageHandler.body = buf.getvalue()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/img.png"
    srv.shutdown()
    srv.server_close()


async def test_url_input_with_size_from_the_image_aspect(harness, image_server):
    h = harness(allow_loopback_images=True)
    out = await h.worker.handle(job(image_base64=..., image_url=image_server, width=..., height=..., length=5))
    assert "error" not in out, out
    assert (out["width"], out["height"]) == (848, 480)  # 16:9 at the 480p area


async def test_url_input_on_loopback_is_refused_by_default(harness, image_server):
    h = harness()
    out = await h.worker.handle(job(image_base64=..., image_url=image_server))
    assert out["error_code"] == "invalid_input"
    assert out["details"][0]["field"] == "image_url" and out["details"][0]["rule"] == "blocked_address"
    assert not h.engine.requests


@pytest.mark.parametrize("value,rule", [
    ("definitely not base64!!", "base64"),
    (base64.b64encode(b"just some text, not an image").decode(), "not_an_image"),
])
async def test_bad_image_data_is_invalid_input(harness, value, rule):
    h = harness()
    out = await h.worker.handle(job(image_base64=value))
    assert out["error_code"] == "invalid_input"
    assert out["details"] == [{"field": "image_base64", "rule": rule, "message": out["details"][0]["message"]}]
    assert all(s == ModelState.MISSING for s in h.states().values())  # nothing downloaded for a bad job


async def test_invalid_input_does_no_work(harness):
    h = harness()
    out = await h.worker.handle(job(width=100, length=80, colour="red"))
    assert out["error_code"] == "invalid_input"
    assert {d["field"] for d in out["details"]} == {"width", "length", "colour"}
    assert not h.engine.requests and all(s == ModelState.MISSING for s in h.states().values())


@pytest.mark.parametrize("bad_job", [None, {}, {"id": "x"}, {"id": "x", "input": "a cat"}])
async def test_malformed_jobs_return_errors(harness, bad_job):
    out = await harness().worker.handle(bad_job)
    assert out["error_code"] == "invalid_input"


async def test_url_delivery_without_bucket_fails_before_any_work(harness):
    h = harness()
    out = await h.worker.handle(job(output={"delivery": "url"}))
    assert out["error_code"] == "invalid_input" and "BUCKET_ENDPOINT_URL" in out["error"]
    assert not h.engine.requests and all(s == ModelState.MISSING for s in h.states().values())


async def test_s3_delivery(harness, s3_server):
    s3_server.client().create_bucket(Bucket="videos")
    h = harness(bucket_endpoint_url=s3_server.endpoint_url, bucket_access_key_id=S3_ACCESS_KEY,
                bucket_secret_access_key=S3_SECRET_KEY, bucket_region=S3_REGION, bucket_name="videos")
    out = await h.worker.handle(job())
    assert "video" not in out and out["video_url"].startswith(s3_server.endpoint_url)
    import httpx

    assert probe_mp4(httpx.get(out["video_url"], timeout=10).content)[1:4] == (9, 64, 64)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="videos")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("job-1/job-1-") and keys[0].endswith(".mp4")
    head = s3_server.client().head_object(Bucket="videos", Key=keys[0])
    assert head["ContentType"] == "video/mp4"


@pytest.mark.parametrize("fmt,mime,ext,codec", [("webm", "video/webm", ".webm", "vp9"), ("gif", "image/gif", ".gif", "gif")])
async def test_formats_carry_their_mime_type_and_extension_everywhere(harness, s3_server, fmt, mime, ext, codec):
    """output.format: the S3 key's extension and ContentType, and the base64 result's mime_type."""
    s3_server.client().create_bucket(Bucket="videos")
    h = harness(bucket_endpoint_url=s3_server.endpoint_url, bucket_access_key_id=S3_ACCESS_KEY,
                bucket_secret_access_key=S3_SECRET_KEY, bucket_region=S3_REGION, bucket_name="videos")
    out = await h.worker.handle(job(output={"format": fmt}))
    assert (out["mime_type"], out["format"]) == (mime, fmt), out
    key = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="videos")["Contents"]][0]
    assert key.endswith(ext) and s3_server.client().head_object(Bucket="videos", Key=key)["ContentType"] == mime
    inline = await h.worker.handle(job(output={"format": fmt, "delivery": "base64"}))
    assert inline["mime_type"] == mime
    got = probe_mp4(base64.b64decode(inline["video"]))
    assert got[:4] == (codec, 9, 64, 64)


async def test_quality_changes_the_file_and_is_checked_per_format(harness):
    h = harness()
    best = await h.worker.handle(job(output={"quality": 0}))
    worst = await h.worker.handle(job(output={"quality": 51}))
    assert len(base64.b64decode(best["video"])) > len(base64.b64decode(worst["video"]))
    out = await h.worker.handle(job(output={"format": "gif", "quality": 10}))
    assert out["error_code"] == "invalid_input" and out["details"][0]["field"] == "output.quality"
    out = await h.worker.handle(job(output={"format": "mp4", "quality": 60}))
    assert out["error_code"] == "invalid_input" and "between 0 and 51" in out["error"]
    assert len(h.engine.requests) == 2


async def test_interpolation_fetches_rife_on_demand_and_multiplies_frames_and_fps(harness):
    h = harness()
    rife = h.store.manifest.roles("tiny")[ModelRole.INTERPOLATION].name
    assert "error" not in await h.worker.handle(job())
    assert h.states()[rife] == ModelState.MISSING  # a job without interpolation never fetches it
    out = await h.worker.handle(job(interpolate=2, fps=12))
    assert "error" not in out, out
    assert (out["frames"], out["fps"]) == ((9 - 1) * 2 + 1, 24)
    assert probe_mp4(base64.b64decode(out["video"])) == ("h264", 17, 64, 64, 24.0)
    assert h.states()[rife] == ModelState.PRESENT and out["timings"]["interpolate"] > 0
    assert ModelRole.INTERPOLATION not in h.engine.requests[-1].models
    steps = [p for p in h.progress if p["stage"] == "interpolate"]
    assert steps and steps[-1] == {"stage": "interpolate", "step": 8, "total": 8, "percent": 100.0}
    assert h.worker.finisher.models.loads == 1
    out = await h.worker.handle(job(interpolate=4))
    assert out["frames"] == 33 and out["fps"] == 64 and h.worker.finisher.models.loads == 1  # kept loaded


async def test_output_too_large(harness):
    h = harness(max_base64_result_bytes=2000)
    out = await h.worker.handle(job())
    assert out["error_code"] == "output_too_large" and "bucket" in out["error"]
    assert not any(h.settings.output_dir.glob("*.mp4"))


async def test_engine_error_is_mapped(harness):
    err = EngineError("UnetLoaderGGUF missing: ComfyUI-GGUF is not installed", code="engine_unavailable",
                      details={"node": "1"}, log_tail="Traceback ...\nImportError: gguf")
    h = harness(StandInEngine(error=err))
    out = await h.worker.handle(job())
    assert out["error_code"] == "engine_unavailable" and "ComfyUI-GGUF" in out["error"]
    assert out["details"]["details"] == {"node": "1"} and "ImportError" in out["details"]["log_tail"]


async def test_engine_start_failure_is_reported_and_retried_by_the_next_job(harness):
    h = harness(StandInEngine(start_error=EngineError("ComfyUI exited during start", code="engine_unavailable",
                                                      log_tail="RuntimeError: no CUDA")))
    out = await h.worker.handle(job())
    assert out["error_code"] == "engine_unavailable" and "no CUDA" in out["details"]["log_tail"]
    h.engine.start_error = None
    assert "error" not in await h.worker.handle(job())
    assert h.engine.starts == 2


async def test_store_error_is_mapped(harness, tmp_path):
    empty = tmp_path / "no_models"
    empty.mkdir()
    h = Harness(tmp_path, empty)
    out = await h.worker.handle(job())
    assert out["error_code"] == "model_download_failed", out
    assert out["error"].startswith("models not available:") and "tiny_" in out["error"]
    assert not h.engine.requests


async def test_unexpected_failure_is_internal_error(harness):
    h = harness(StandInEngine(bad_frames=True))  # float frames: a broken engine
    out = await h.worker.handle(job())
    assert out["error_code"] == "internal_error" and "encoding" in out["error"]


async def test_cancellation_reaches_the_engine_call(harness):
    h = harness(StandInEngine(block=True))
    task = asyncio.create_task(h.worker.handle(job()))
    await asyncio.wait_for(h.engine.entered.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.engine.cancelled


async def test_deadline_interrupts_the_engine(harness):
    h = harness(StandInEngine(block=True), job_deadline_s=2)
    await h.worker.start(prefetch=True)
    await h.worker.prefetch_task  # models present: the deadline passes inside the engine call
    out = await h.worker.handle(job())
    assert out["error_code"] == "timeout"
    assert out["details"]["stage"] == "generation" and "I2V_JOB_DEADLINE_S" in out["error"]
    assert h.engine.cancelled
    h.engine.block = False  # the next job runs normally
    assert "error" not in await h.worker.handle(job())


async def test_deadline_never_exceeds_the_jobs_execution_timeout(harness):
    """RunPod's policy.executionTimeout (ms) in the job caps the worker's own deadline, so the job
    ends with a readable timeout error before the platform's TIMED_OUT."""
    h = harness(StandInEngine(block=True), job_deadline_s=570)
    await h.worker.start(prefetch=True)
    await h.worker.prefetch_task
    t0 = time.monotonic()
    out = await h.worker.handle(dict(job(), policy={"executionTimeout": 3000}))
    assert out["error_code"] == "timeout", out
    assert time.monotonic() - t0 < 3.0, "ended before the platform's 3 s limit"
    assert "policy.executionTimeout" in out["error"] and out["details"]["platform_limit_s"] == 3.0
    assert out["details"]["deadline_s"] == pytest.approx(2.7)


async def test_deadline_is_capped_by_the_stated_endpoint_timeout(harness):
    h = harness(StandInEngine(block=True), job_deadline_s=570, execution_timeout_s=2.5)
    await h.worker.start(prefetch=True)
    await h.worker.prefetch_task
    out = await h.worker.handle(job())
    assert out["error_code"] == "timeout" and "I2V_EXECUTION_TIMEOUT_S" in out["error"], out


async def test_health_action(harness):
    h = harness()
    out = await h.worker.handle({"id": "h", "input": {"action": "health"}})
    assert out["status"] == "degraded"  # engine not started yet
    assert out["worker_version"] and out["engine"]["ready"] is False
    assert {m["role"] for m in out["models"]} == {r.value for r in ModelRole}
    assert all(m["state"] == "missing" for m in out["models"])
    assert "cpus" in out["device"] and isinstance(out["device"]["gpus"], list)
    await h.worker.start(prefetch=True)
    await h.worker.prefetch_task
    out = await h.worker.handle({"id": "h", "input": {"action": "health"}})
    # the prefetch leaves out the interpolation model (only jobs with interpolate > 1 fetch it)
    assert out["status"] == "ok"
    assert {m["role"]: m["state"] for m in out["models"]} == {
        **{r.value: "present" for r in ModelRole}, ModelRole.INTERPOLATION.value: "missing"}
    assert not h.engine.requests  # health never generates


@pytest.mark.parametrize("inp,field", [({"action": "reboot"}, "action"), ({"action": "health", "x": 1}, "x")])
async def test_unknown_actions_are_invalid(harness, inp, field):
    out = await harness().worker.handle({"id": "a", "input": inp})
    assert out["error_code"] == "invalid_input" and out["details"][0]["field"] == field


async def test_boot_starts_engine_and_prefetch_together_and_a_job_waits_for_it(harness):
    h = harness(prefetch=True)
    await h.worker.start()
    assert h.engine.starts == 1 and h.worker.prefetch_task is not None
    out = await h.worker.handle(job())  # may arrive while the prefetch is still running
    assert "error" not in out, out
    await h.worker.prefetch_task
    rife = h.store.manifest.roles("tiny")[ModelRole.INTERPOLATION].name
    assert all(s == ModelState.PRESENT for n, s in h.states().items() if n != rife)
    assert h.engine.starts == 1  # started once
    await h.worker.close()
    assert h.engine.closed


async def test_unknown_preset_is_a_clear_model_error(harness):
    h = harness(preset="no-such-preset")
    out = await h.worker.handle(job())
    assert out["error_code"] == "model_error" and "no-such-preset" in out["error"]


async def test_sdk_handler_runs_jobs_on_the_worker_loop_and_passes_cancellation(harness):
    """serve's wiring: the SDK's async handler submits to the worker's own loop thread."""
    from i2v_worker.worker.app import LoopThread, sdk_handler

    h = harness(StandInEngine(block=True))
    loop = LoopThread()
    try:
        handler = sdk_handler(h.worker, loop)
        task = asyncio.create_task(handler(job()))
        while not h.engine.requests:  # bounded by the test timeout
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while not h.engine.cancelled:
            await asyncio.sleep(0.02)
        h.engine.block = False
        out = await handler(job())
        assert "error" not in out and out["frames"] == 9
    finally:
        loop.stop()


async def test_progress_is_throttled_and_ends_with_the_last_step(harness):
    h = harness()
    out = await h.worker.handle(job(steps=100, lora_strength_high=0, lora_strength_low=0))
    assert "error" not in out, out
    sampling = [p for p in h.progress if p["stage"] == "sampling"]
    assert 1 <= len(sampling) < 10  # 100 engine steps, a handful of updates to RunPod
    assert sampling[-1] == {"stage": "sampling", "step": 100, "total": 100, "percent": 100.0}
    models = [p for p in h.progress if p["stage"] == "models"]
    assert models and all({"phase", "model", "done_bytes", "total_bytes"} <= set(p) for p in models)


async def test_deadline_stops_the_interpolation_too(harness):
    """The handler is the deadline's one owner: it also stops the worker's own stage (RIFE + encode,
    on a thread) between two frame pairs, and names the stage."""
    import time

    h = harness(job_deadline_s=6)
    await h.worker.start(prefetch=True)
    await h.worker.prefetch_task
    t0 = time.monotonic()
    out = await h.worker.handle(job(interpolate=4, length=161))  # 160 pairs: minutes on this CPU
    elapsed = time.monotonic() - t0
    assert out["error_code"] == "timeout", out
    assert out["details"]["stage"] == "interpolation"
    assert elapsed < 6 + 15, f"the interpolation thread did not stop promptly ({elapsed:.1f}s)"
    assert not list(h.settings.output_dir.glob("*")), "no partial file left behind"
