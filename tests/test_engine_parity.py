"""The two engines agree: the same jobs through the ComfyUI engine (a real ComfyUI 0.3.75 with the
ComfyUI-GGUF stand-in node) and the in-process diffusers engine, on the tiny models, give the same
frames BEFORE encoding (both return uint8 frames; the worker then encodes them with one encoder).

What is compared: the engines' `GeneratedVideo.pixels`, per case, by PSNR over all frames and the
largest per-pixel difference. Threshold: PSNR >= MIN_PSNR_DB and max |diff| <= MAX_ABS_DIFF. The
engines' floats agree to ~3e-5 (noise and sigmas bit-identical; DiT outputs within 3e-5), so after
the common float -> uint8 rule only a pixel sitting on a rounding boundary can differ, by 1; a
regression in sampling, conditioning, LoRA application or the start-image resize moves frames by
many levels (a one-step change of the seed gives about 15-25 dB; see the last test).

Measured here (CPU, tiny models): 66.9-67.7 dB, max |diff| 1, 98.7-98.9 % of pixels identical in
every case below (the table is printed at the end of the module with `-s`).

The start image is prepared as the worker prepares it (worker/image.py `decode_image`, the one
resize), so both engines see the same image of the video's size.

Extending: add a `Case` to CASES (images prepared by `prepared()`, as the worker prepares them).
Job LoRAs are compared through the whole worker in tests/test_job_loras_engines.py.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from i2v_worker.engines.base import GenerationRequest, ModelRole
from i2v_worker.video.frames import psnr
from i2v_worker.worker.image import decode_image
from tests.support.comfyui import tiny_models_dir  # noqa: F401  (session fixture)
from tests.support.comfyui_engine import EngineEnv, start_engine_env

pytest.importorskip("diffusers")
pytestmark = [pytest.mark.comfyui, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(600)]

MIN_PSNR_DB = 55.0
MAX_ABS_DIFF = 2


def source_image(width: int, height: int) -> bytes:
    """A structured, non-uniform picture (gradients and a disc), as a PNG of the given size."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    disc = ((x - width * 0.6) ** 2 + (y - height * 0.4) ** 2) < (min(width, height) * 0.3) ** 2
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), np.where(disc, 230, 40)], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def prepared(image_png: bytes, width: int, height: int) -> bytes:
    """The start image exactly as the worker hands it to an engine."""
    return decode_image(image_png, "image_base64", size_for=lambda w, h: (width, height)).png


@dataclass(frozen=True)
class Case:
    name: str
    request: dict[str, Any] = field(default_factory=dict)  # GenerationRequest fields over the base
    image_size: tuple[int, int] = (80, 64)  # the source image (before the worker's fit)
    no_lora_file: bool = False  # the request names no LoRA model (both strengths 0)


CASES: list[Case] = [
    Case("base: seed 7, LoRA 1/1, image larger than the video"),
    Case("another seed, LoRA 3/1.5", {"seed": 12345, "lora_strength_high": 3.0, "lora_strength_low": 1.5}),
    Case("LoRA off (no LoRA file)", {"lora_strength_high": 0.0, "lora_strength_low": 0.0}, no_lora_file=True),
    Case("non-square 96x32", {"width": 96, "height": 32}),
    Case("image smaller than the video (upscaled)", {"width": 64, "height": 64}, image_size=(24, 20)),
    Case("6 steps, 4 high-noise, cfg 2.5", {"steps": 6, "high_noise_steps": 4, "cfg": 2.5}),
    Case("first-last frame, end image of another aspect", {"end_image_png": prepared(source_image(90, 40), 64, 48)}),
]

RESULTS: list[tuple[str, float, int, float]] = []


@dataclass
class Engines:
    comfy: EngineEnv
    diffusers: Any


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(tmp_path_factory, tiny_models_dir) -> Engines:  # noqa: F811
    from i2v_worker.engines.diffusers import DiffusersEngine

    env = await start_engine_env(tmp_path_factory.mktemp("parity"), tiny_models_dir)
    diffusers = DiffusersEngine(env.settings.model_copy(update={"engine": "diffusers"}), env.store)
    try:
        await diffusers.start()
        yield Engines(env, diffusers)
    finally:
        await diffusers.close()
        await env.engine.close()
    if RESULTS:
        print("\nengine parity (frames before encoding)\n| case | PSNR dB | max abs diff | equal pixels |\n|---|---|---|---|")
        for name, p, m, eq in RESULTS:
            print(f"| {name} | {'inf' if p == float('inf') else f'{p:.1f}'} | {m} | {eq:.4%} |")


def build_request(env: EngineEnv, case: Case) -> GenerationRequest:
    base = env.request(f"parity-{CASES.index(case)}", width=64, height=48, length=5, fps=16, steps=4,
                       high_noise_steps=2, seed=7)
    req = replace(base, **case.request)
    models = {r: m for r, m in env.models.items() if r is not ModelRole.INTERPOLATION}
    if case.no_lora_file:
        models.pop(ModelRole.LORA, None)
    return replace(req, models=models, image_png=prepared(source_image(*case.image_size), req.width, req.height))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_both_engines_give_the_same_frames(engines: Engines, case: Case):
    req = build_request(engines.comfy, case)
    comfy = await engines.comfy.engine.generate(req, lambda e: None)
    diff = await engines.diffusers.generate(req, lambda e: None)
    a, b = comfy.pixels, diff.pixels
    assert a.shape == b.shape == (req.length, req.height, req.width, 3)
    p = psnr(a, b)
    max_abs = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    equal = float(np.mean(a == b))
    RESULTS.append((case.name, p, max_abs, equal))
    assert a.std() > 1, "flat frames would make the comparison meaningless"
    assert p >= MIN_PSNR_DB and max_abs <= MAX_ABS_DIFF, (
        f"{case.name}: the engines' frames differ: PSNR {p:.1f} dB (need >= {MIN_PSNR_DB}), max |diff| {max_abs} "
        f"(need <= {MAX_ABS_DIFF}), {equal:.2%} of pixels equal")


async def test_a_changed_input_is_caught_by_the_threshold(engines: Engines):
    """The threshold is not vacuous: a different seed through one engine fails it clearly."""
    req = build_request(engines.comfy, CASES[0])
    a = (await engines.comfy.engine.generate(req, lambda e: None)).pixels
    b = (await engines.diffusers.generate(replace(req, seed=8), lambda e: None)).pixels
    assert psnr(a, b) < MIN_PSNR_DB - 20
