"""Shared setup of the ComfyUI engine tests: a real model store with the tiny models, a prepared
ComfyUI tree (code + base dir with the test-only nodes, from tests/support/comfyui.py), and a
`ComfyUIEngine` that SUPERVISES that ComfyUI itself (so tests can kill and restart it)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
from PIL import Image

from i2v_worker.config import Settings
from i2v_worker.engines.base import GenerationRequest, ModelRole
from i2v_worker.engines.comfyui import ComfyUIEngine
from i2v_worker.engines.comfyui.graph import OUTPUT_NODE
from tests.support.comfyui import ComfyUIServer, _free_port

# Child environment of the test ComfyUI: strictly offline.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"}


def png(width: int = 64, height: int = 64, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", (width, height), color)
    for x in range(width // 2):  # a bit of structure
        img.putpixel((x, x % height), (10, 200, 10))
    img.save(buf, "PNG")
    return buf.getvalue()


def make_store(root: Path, tiny_dir: Path):
    """The real ModelStore with the packaged manifest's `tiny` preset (file:// sources)."""
    from i2v_worker.store.manifest import load_manifest
    from i2v_worker.store.sources import HubConfig
    from i2v_worker.store.store import ModelStore
    from i2v_worker.store.transfer import TransferConfig

    manifest = load_manifest(env={"I2V_TINY_DIR": str(tiny_dir)})
    return ModelStore(root, manifest, hub=HubConfig(offline=False), transfer=TransferConfig())


@dataclass
class EngineEnv:
    """One supervised ComfyUI + engine for a test module."""

    engine: ComfyUIEngine
    settings: Settings
    store: Any
    comfy: ComfyUIServer  # only its prepared tree is used; the ENGINE starts ComfyUI
    models: dict[ModelRole, tuple[str, Path]]
    out_dir: Path

    def request(self, job_id: str, **overrides: Any) -> GenerationRequest:
        fields: dict[str, Any] = dict(
            job_id=job_id, image_png=png(), prompt="a red square drifting", negative_prompt="blurry",
            width=64, height=64, length=5, fps=16, steps=4, high_noise_steps=2, cfg=1.0, shift=8.0,
            seed=7, lora_strength_high=1.0, lora_strength_low=1.0, models=dict(self.models),
            output_dir=self.out_dir,
        )
        fields.update(overrides)
        return GenerationRequest(**fields)

    def slow_request(self, job_id: str, **overrides: Any) -> GenerationRequest:
        """Long enough on CPU to be cancelled or killed mid-sampling (never meant to finish): on an
        idle machine the tiny model takes a few ms per step at 64x64x9, so 400 steps could finish
        inside a test's 4 s deadline. 4000 steps at 96x96x17 take minutes."""
        return self.request(job_id, steps=4000, high_noise_steps=2000, length=17, width=96, height=96, **overrides)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.engine.base_url, timeout=30, trust_env=False)

    def history_of_job(self, job_id: str) -> dict[str, Any] | None:
        """ComfyUI's history entry of the prompt whose output prefix names `job_id`."""
        with self.http() as h:
            for entry in h.get("/history").json().values():
                graph = entry.get("prompt", [None, None, {}])[2]
                prefix = (graph.get(OUTPUT_NODE) or {}).get("inputs", {}).get("filename_prefix", "")
                if f"/{job_id}-" in prefix:
                    return entry
        return None

    def queue_ids(self) -> set[str]:
        with self.http() as h:
            q = h.get("/queue").json()
        return {item[1] for key in ("queue_running", "queue_pending") for item in q.get(key, [])}


async def start_engine_env(workdir: Path, tiny_dir: Path, **settings_overrides: Any) -> EngineEnv:
    import asyncio

    store_root = workdir / "store"
    store = make_store(store_root, tiny_dir)
    manifest = store.manifest
    roles = manifest.roles("tiny")
    await asyncio.to_thread(store.ensure, [e.name for e in roles.values()])
    models = {role: (entry.name, store.path(entry.name)) for role, entry in roles.items()}
    comfy = ComfyUIServer(workdir / "comfy")
    comfy.prepare()
    settings = Settings(
        model_dir=store_root, comfyui_path=comfy.code_dir, comfyui_port=_free_port(),
        comfyui_args=f"--base-directory {comfy.base_dir} --disable-api-nodes", device="cpu",
        job_deadline_s=600, **settings_overrides,
    )
    engine = ComfyUIEngine(settings, store, work_dir=workdir / "engine", env=OFFLINE_ENV, stop_grace_s=5)
    await engine.start()
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    return EngineEnv(engine=engine, settings=settings, store=store, comfy=comfy, models=models, out_dir=out)


def probe_mp4(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "frames": frames,
            "fps": float(stream.average_rate) if stream.average_rate else None,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
        }


def files_under(path: Path | None) -> list[Path]:
    if path is None or not path.exists():
        return []
    return [p for p in path.rglob("*") if p.is_file()]


__all__ = ["EngineEnv", "start_engine_env", "png", "probe_mp4", "files_under", "make_store", "OFFLINE_ENV"]
