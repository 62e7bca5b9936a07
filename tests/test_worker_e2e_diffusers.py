"""The worker end to end on the in-process diffusers engine (issue 4), on the tiny preset.

The production path with `I2V_ENGINE=diffusers`: `Settings` -> `build_worker` (ModelStore from the
manifest's `file://${I2V_TINY_DIR}` sources, DiffusersEngine) -> `Worker.handle(job)`. One worker
serves every test of the module, as one serverless worker serves a burst of jobs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from i2v_worker.config import Settings
from i2v_worker.worker.app import build_worker
from tests.support.comfyui_engine import png, probe_mp4

pytestmark = pytest.mark.timeout(600)

W, H, LENGTH, FPS = 48, 32, 5, 12


@pytest.fixture(scope="module")
def worker(tiny_models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers-worker")
    settings = Settings.from_env(
        {"I2V_ENGINE": "diffusers", "I2V_PRESET": "tiny", "I2V_TINY_DIR": str(tiny_models_dir),
         "I2V_MODEL_DIR": str(root / "store"), "I2V_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"},
        output_dir=root / "out")
    w = build_worker(settings)
    loop = asyncio.new_event_loop()
    yield w, loop
    loop.run_until_complete(w.close())
    loop.close()


def run_job(worker, **overrides: Any) -> dict[str, Any]:
    w, loop = worker
    inp = {"image_base64": base64.b64encode(png(W, H)).decode(), "prompt": "a red square drifts right",
           "width": W, "height": H, "length": LENGTH, "fps": FPS, "steps": 4, "seed": 7, **overrides}
    result = loop.run_until_complete(w.handle({"id": f"job-{len(inp)}-{overrides}", "input": inp}))
    assert "error" not in result, result
    return result


def frames_digest(result: dict[str, Any], tmp_path: Path) -> tuple[str, dict[str, Any]]:
    path = tmp_path / f"{result['seed']}-{hashlib.sha1(result['video'][:64].encode()).hexdigest()}.mp4"
    path.write_bytes(base64.b64decode(result["video"]))
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return hashlib.sha256(np.stack(frames).tobytes()).hexdigest(), probe_mp4(path)


def test_job_yields_mp4_with_requested_frames_and_fps(worker, tmp_path):
    result = run_job(worker)
    _, info = frames_digest(result, tmp_path)
    assert info == {"codec": "h264", "frames": LENGTH, "fps": FPS, "width": W, "height": H}
    assert (result["frames"], result["fps"], result["width"], result["height"]) == (LENGTH, FPS, W, H)
    assert result["mime_type"] == "video/mp4" and result["seed"] == 7


def test_same_seed_gives_the_same_video(worker, tmp_path):
    # Decoded frames, not MP4 bytes: libx264 may pack identical frames differently between runs.
    a, _ = frames_digest(run_job(worker, seed=123), tmp_path)
    b, _ = frames_digest(run_job(worker, seed=123), tmp_path)
    assert a == b


def test_different_lora_strengths_give_different_videos(worker, tmp_path):
    a, _ = frames_digest(run_job(worker, lora_strength_high=1.0, lora_strength_low=1.0), tmp_path)
    b, _ = frames_digest(run_job(worker, lora_strength_high=3.0, lora_strength_low=1.5), tmp_path)
    assert a != b


def test_lora_free_job_does_not_download_the_lora(tiny_models_dir, tmp_path):
    settings = Settings.from_env(
        {"I2V_ENGINE": "diffusers", "I2V_PRESET": "tiny", "I2V_TINY_DIR": str(tiny_models_dir),
         "I2V_MODEL_DIR": str(tmp_path / "store"), "I2V_DEVICE": "cpu"}, output_dir=tmp_path / "out")
    w = build_worker(settings)
    loop = asyncio.new_event_loop()
    try:
        result = run_job((w, loop), lora_strength_high=0, lora_strength_low=0)
        assert result["frames"] == LENGTH
        assert not any((tmp_path / "store" / "loras").glob("*")), "the LoRA was fetched for a LoRA-free job"
        assert any((tmp_path / "store" / "unet").glob("*.gguf"))
    finally:
        loop.run_until_complete(w.close())
        loop.close()
