"""Job LoRAs and first-last frame through the worker on BOTH engines (issue 11), on the tiny preset.

One real ComfyUI (the session's, reading the session store) and the in-process diffusers engine
serve the same jobs from the same store. The frames are compared BEFORE video encoding: the uint8
frames each engine hands the worker's one encoder (`GeneratedVideo.pixels`). Job LoRAs come from the local HF-style
server (hf://) and a ranged file server on loopback (http://, allowed by the test-only setting).

Measured parity (tiny preset, 64x48, 5 frames, 4 steps, CPU; see the issue-11 notes): the two
engines' frames differ by 0.011 levels on average and 1 level at most (of 255), while the two job
LoRAs change the frames by ~16.6 levels and the end image by ~3.4 (mean over all frames).
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from i2v_worker.config import Settings
from i2v_worker.worker.app import build_worker
from i2v_worker.tiny.generate import write_job_lora
from tests.support.comfyui_engine import png
from tests.support.file_server import FileServer

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(900)]

W, H, LENGTH, FPS, STEPS = 64, 48, 5, 16, 4
REPO = "someone/wan-loras"
# Measured: mean 0.011, max 1 level for the base, two-LoRA and first-last-frame jobs (a pixel on a
# float -> uint8 boundary can land on either side: up to 1 level).
PARITY_MAX_LEVELS = 2  # largest per-pixel difference between the engines' frames (0..255)
PARITY_MEAN_LEVELS = 0.1  # mean absolute difference
EFFECT_MEAN_LEVELS = 3.0  # LoRAs / an end image must change the frames by more than this (mean)


class Env:
    def __init__(self, comfy, store_root: Path, tiny_dir: Path, tmp: Path, hf, files: FileServer, loop) -> None:
        self.comfy, self.store_root, self.tiny_dir, self.tmp, self.hf, self.files = comfy, store_root, tiny_dir, tmp, hf, files
        self.loop = loop
        self.workers: dict[str, Any] = {}
        self.frames: dict[str, np.ndarray] = {}
        self.results: dict[str, dict] = {}
        self.progress: list[dict] = []

    def settings(self, engine: str) -> Settings:
        return Settings(model_dir=self.store_root, preset="tiny", prefetch=False, engine=engine,
                        manifest_vars={"I2V_TINY_DIR": str(self.tiny_dir)}, comfyui_url=self.comfy.url,
                        comfyui_path=self.comfy.base_dir, output_dir=self.tmp / f"out-{engine}", job_deadline_s=600,
                        hf_offline=False, hf_endpoint=self.hf.endpoint, device="cpu", allow_loopback_images=True)

    def worker(self, engine: str):
        if engine not in self.workers:
            self.workers[engine] = build_worker(self.settings(engine),
                                                progress_sink=lambda job, p: self.progress.append({"job": job["id"], **p}))
        return self.workers[engine]


@pytest.fixture(scope="module")
def env(comfyui_server, comfyui_store, tiny_models_dir, tmp_path_factory):
    from tests.support.hf_server import HFServer

    tmp = tmp_path_factory.mktemp("job-loras-engines")
    hf = HFServer(tmp / "hf").start()
    files = FileServer(tmp / "served")
    loop = asyncio.new_event_loop()
    e = Env(comfyui_server, comfyui_store, tiny_models_dir, tmp, hf, files, loop)
    a = write_job_lora(tmp / "made" / "style_a.safetensors", seed=11)
    b = write_job_lora(tmp / "made" / "style_b.safetensors", seed=12, modules="all")
    e.sha_b = hf.add_file(REPO, "main", "wan22/style_b.safetensors", b.read_bytes())
    e.url_a = files.add("style_a.safetensors", a)
    yield e
    for w in e.workers.values():
        loop.run_until_complete(w.close())
    loop.close()
    files.close()
    hf.close()


def run(env: Env, engine: str, key: str, monkeypatch, **overrides) -> np.ndarray:
    """One job on one engine; returns its frames (T, H, W, 3) uint8 before video encoding (what
    the engine hands the worker's one encoder)."""
    w = env.worker(engine)
    sink: dict = {}
    finish = w.finisher.finish

    async def capture(video, **kw):
        sink["frames"] = video.pixels
        return await finish(video, **kw)

    monkeypatch.setattr(w.finisher, "finish", capture)
    inp = {"image_base64": base64.b64encode(png(W, H)).decode(), "prompt": "a red square drifts right",
           "width": W, "height": H, "length": LENGTH, "fps": FPS, "steps": STEPS, "seed": 5, **overrides}
    result = env.loop.run_until_complete(w.handle({"id": f"{engine}-{key}", "input": inp}))
    assert "error" not in result, result
    env.results[f"{engine}-{key}"] = result
    frames = np.stack(sink["frames"]).astype(np.uint8)
    assert frames.shape == (LENGTH, H, W, 3), frames.shape
    env.frames[f"{engine}-{key}"] = frames
    return frames


def diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), int(d.max())


def two_loras(env: Env) -> list[dict]:
    return [{"source": env.url_a, "strength_high": 1.0, "strength_low": 0.5},
            {"source": f"hf://{REPO}@main/wan22/style_b.safetensors", "sha256": env.sha_b,
             "strength_high": 0.0, "strength_low": 1.5}]


def end_image_b64() -> str:
    img = Image.new("RGB", (90, 40), (20, 60, 220))  # another aspect ratio than the start image
    for x in range(0, 90, 3):
        img.putpixel((x, x % 40), (250, 250, 20))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("engine", ["comfyui", "diffusers"])
def test_two_job_loras_at_different_strengths_change_the_frames(env, engine, monkeypatch):
    base = run(env, engine, "base", monkeypatch)
    with_loras = run(env, engine, "loras", monkeypatch, loras=two_loras(env))
    mean, _ = diff(base, with_loras)
    print(f"\n{engine}: two job LoRAs change the frames by {mean:.2f} levels (mean)")
    assert mean > EFFECT_MEAN_LEVELS
    assert "warnings" not in env.results[f"{engine}-loras"]  # every module of both LoRAs matched
    again = run(env, engine, "base-again", monkeypatch)  # the adapters/patches did not stay behind
    assert diff(base, again) == (0.0, 0)


@pytest.mark.parametrize("engine", ["comfyui", "diffusers"])
def test_first_last_frame_job_conditions_on_the_end_image(env, engine, monkeypatch):
    base = env.frames.get(f"{engine}-base")
    if base is None:
        base = run(env, engine, "base", monkeypatch)
    flf = run(env, engine, "flf", monkeypatch, end_image_base64=end_image_b64())
    mean, _ = diff(base, flf)
    last, _ = diff(base[-1], flf[-1])
    print(f"\n{engine}: the end image changes the frames by {mean:.2f} levels (mean), the last frame by {last:.2f}")
    assert mean > EFFECT_MEAN_LEVELS and last > mean


@pytest.mark.parametrize("key", ["base", "loras", "flf"])
def test_both_engines_give_the_same_frames(env, key, monkeypatch):
    over = {"loras": {"loras": two_loras(env)}, "flf": {"end_image_base64": end_image_b64()}}.get(key, {})
    frames = {}
    for engine in ("comfyui", "diffusers"):
        frames[engine] = env.frames.get(f"{engine}-{key}")
        if frames[engine] is None:
            frames[engine] = run(env, engine, key, monkeypatch, **over)
    mean, mx = diff(frames["comfyui"], frames["diffusers"])
    print(f"\nparity {key}: mean {mean:.3f} levels, max {mx} levels")
    assert mean <= PARITY_MEAN_LEVELS and mx <= PARITY_MAX_LEVELS, (mean, mx)


def test_lora_downloads_show_in_progress_and_present_loras_cost_no_download(env, monkeypatch):
    fresh = env.files.add("style_c.safetensors", write_job_lora(env.tmp / "made" / "style_c.safetensors", seed=13))
    env.progress.clear()
    run(env, "comfyui", "progress", monkeypatch, seed=6, loras=[{"source": fresh, "strength_low": 0.0}])
    lora_events = [p for p in env.progress if p.get("stage") == "models" and p.get("model") == "lora loras[0]"]
    assert any(p["phase"] == "published" for p in lora_events), env.progress
    if "comfyui-loras" not in env.results and "diffusers-loras" not in env.results:
        run(env, "diffusers", "present-first", monkeypatch, seed=6, loras=two_loras(env))  # run alone: fetch first
    env.progress.clear()
    env.files.reset_log()
    env.hf.reset_log()
    run(env, "diffusers", "present", monkeypatch, seed=6, loras=two_loras(env))
    assert env.files.requests == [] and env.hf.requests == [], "present job LoRAs must not touch the network"
    assert not [p for p in env.progress if str(p.get("model", "")).startswith("lora ")]


def test_a_wrong_lora_is_an_invalid_input_naming_the_entry(env, tmp_path):
    sd = write_job_lora(tmp_path / "sd15.safetensors", family="sd15")
    url = env.files.add("sd15.safetensors", sd)
    w = env.worker("diffusers")
    inp = {"image_base64": base64.b64encode(png(W, H)).decode(), "prompt": "p", "width": W, "height": H,
           "length": LENGTH, "steps": STEPS, "loras": [{"source": env.url_a}, {"source": url, "strength_high": 0.5}]}
    out = env.loop.run_until_complete(w.handle({"id": "bad-lora", "input": inp}))
    assert out["error_code"] == "invalid_input", out
    assert out["details"][0]["field"] == "loras[1].source" and "SD1.5/SDXL" in out["error"]
    assert not (env.store_root / "loras" / "job" / f"{_sha(sd)}.safetensors").exists()


def _sha(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()
