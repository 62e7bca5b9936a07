"""The in-process diffusers engine on the tiny files (real formats, loaded by the production
loaders): a job yields uint8 frames with the requested count and size (the worker encodes them);
the same seed gives the same frames, bit for bit; LoRA strengths change them; the high-noise
expert runs exactly `high_noise_steps` steps; warm jobs reload nothing; cancellation stops between
steps and the engine keeps no deadline of its own (the worker owns it); memory is released on
request. CPU only, 64x32 pixels, 5 frames, 4 steps."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")
av = pytest.importorskip("av")

from PIL import Image  # noqa: E402

from i2v_worker.config import Settings  # noqa: E402
from i2v_worker.engines.base import EngineError, GenerationRequest, ModelRole  # noqa: E402
from i2v_worker.engines.diffusers import DiffusersEngine, loaders  # noqa: E402
from i2v_worker.engines.diffusers.sampling import HIGH, LOW  # noqa: E402
from i2v_worker.tiny import TINY_FILES  # noqa: E402

pytestmark = pytest.mark.timeout(300)


class SteppableClock:
    """Injected engine clock (monotonic): `jump_after_next_call(s)` makes every later reading `s`
    seconds later (the engine only times its stages with it)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._pending = 0.0

    def jump_after_next_call(self, seconds: float) -> None:
        self._pending = seconds

    def __call__(self) -> float:
        now = time.monotonic() + self.offset
        self.offset += self._pending
        self._pending = 0.0
        return now


@pytest.fixture(scope="module")
def clock() -> SteppableClock:
    return SteppableClock()


@pytest.fixture(scope="module")
def engine(tmp_path_factory, clock):
    from i2v_worker.store.store import ModelStore

    settings = Settings(model_dir=tmp_path_factory.mktemp("store"), device="cpu", engine="diffusers", job_deadline_s=600)
    eng = DiffusersEngine(settings, ModelStore.from_settings(settings), clock=clock)
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.close())


@pytest.fixture(scope="module")
def image_png() -> bytes:
    # a non-square gradient, so crop/resize and the first frame carry structure
    y, x = np.mgrid[0:40, 0:72]
    rgb = np.stack([x * 3, y * 6, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def base_request(tiny_models_dir: Path, image_png: bytes, tmp_path_factory) -> GenerationRequest:
    return GenerationRequest(
        job_id="job-a", image_png=image_png, prompt="a cat walks slowly across a sunny garden",
        negative_prompt="blurry, static", width=64, height=32, length=5, fps=12, steps=4,
        high_noise_steps=2, cfg=1.0, shift=8.0, seed=1234, lora_strength_high=1.0, lora_strength_low=1.0,
        models={role: (name, tiny_models_dir / name) for role, name in TINY_FILES.items()
                if role is not ModelRole.INTERPOLATION},  # the worker runs RIFE, not the engine
        output_dir=tmp_path_factory.mktemp("out"),
    )


def _frames(video) -> tuple[dict, np.ndarray]:
    frames = video.pixels
    return {"dtype": str(frames.dtype), "fps": video.fps, "width": video.width, "height": video.height}, frames


async def _job(engine, request, **changes):
    events = []
    video = await engine.generate(replace(request, **changes), events.append)
    return video, events


@pytest.fixture(scope="module")
def first_job(engine, base_request):
    """Job A (cold): its video, progress events and the expert record."""
    video, events = asyncio.run(_job(engine, base_request))
    return video, events, list(engine.last_record.experts), dict(engine.load_counts), engine.last_frames_sha256


def test_job_yields_uint8_frames_with_requested_count_fps_and_size(first_job, base_request):
    video, events, *_ = first_job
    assert (video.frames, video.fps, video.width, video.height) == (5, 12, 64, 32)
    info, frames = _frames(video)
    assert info == {"dtype": "uint8", "fps": 12, "width": 64, "height": 32}
    assert frames.shape == (5, 32, 64, 3)
    assert frames.std() > 1, "decoded video is flat"
    assert [(e.stage, e.step, e.total) for e in events] == [("sampling", i, 4) for i in (1, 2, 3, 4)]
    assert set(video.timings) >= {"load", "inference", "vae_decode"}
    assert not list(base_request.output_dir.iterdir()), "the engine writes no file (the worker encodes)"


def test_high_noise_expert_runs_exactly_high_noise_steps(first_job, engine, base_request):
    assert first_job[2] == [HIGH, HIGH, LOW, LOW]
    asyncio.run(_job(engine, base_request, job_id="job-k3", high_noise_steps=3, cfg=2.5))
    assert engine.last_record.experts == [HIGH, HIGH, HIGH, LOW]
    assert engine.last_record.guidance_passes == 4  # cfg > 1: one unconditional pass per step


def test_same_seed_same_video_and_warm_job_reloads_nothing(first_job, engine, base_request):
    video_a, _, _, counts_after_a, digest_a = first_job
    assert all(counts_after_a.get(str(p), 0) >= 1 for _, p in base_request.models.values())
    before = dict(engine.load_counts)
    video_b, _ = asyncio.run(_job(engine, base_request, job_id="job-b"))
    assert dict(engine.load_counts) == before, "a warm job must not reload any model"
    assert engine.last_frames_sha256 == digest_a, "same seed and settings must give the same frames"
    assert np.array_equal(video_a.pixels, video_b.pixels)


def test_different_seed_or_lora_strengths_give_different_videos(first_job, engine, base_request):
    _, frames_a = _frames(first_job[0])
    video_l, _ = asyncio.run(_job(engine, base_request, job_id="job-lora", lora_strength_high=3.0, lora_strength_low=1.5))
    assert engine.last_frames_sha256 != first_job[4]
    _, frames_l = _frames(video_l)
    assert np.abs(frames_l.astype(int) - frames_a.astype(int)).mean() > 2.0
    video_s, _ = asyncio.run(_job(engine, base_request, job_id="job-seed", seed=99))
    assert engine.last_frames_sha256 != first_job[4]
    _, frames_s = _frames(video_s)
    assert np.abs(frames_s.astype(int) - frames_a.astype(int)).mean() > 2.0


def test_zero_strengths_without_a_lora_file_run_without_lora(first_job, engine, base_request):
    models = {r: m for r, m in base_request.models.items() if r != ModelRole.LORA}
    asyncio.run(_job(engine, base_request, job_id="job-nolora", models=models, lora_strength_high=0.0, lora_strength_low=0.0))
    no_file = engine.last_frames_sha256
    asyncio.run(_job(engine, base_request, job_id="job-zero", lora_strength_high=0.0, lora_strength_low=0.0))
    assert engine.last_frames_sha256 == no_file
    assert no_file != first_job[4]


def test_nonzero_strength_without_a_lora_file_is_refused(engine, base_request):
    models = {r: m for r, m in base_request.models.items() if r != ModelRole.LORA}
    with pytest.raises(EngineError, match="lora") as err:
        asyncio.run(_job(engine, base_request, job_id="job-bad", models=models))
    assert err.value.code == "model_error"


@pytest.mark.parametrize("field,value", [("width", 40), ("length", 6), ("high_noise_steps", 5), ("shift", 0.0)])
def test_bad_shapes_are_refused_naming_the_field(engine, base_request, field, value):
    with pytest.raises(EngineError, match=f"^{field} must be") as err:
        asyncio.run(_job(engine, base_request, job_id="job-invalid", **{field: value}))
    assert err.value.code == "engine_error"


def test_cancelling_the_job_stops_between_steps(engine, base_request):
    async def run():
        task: asyncio.Task | None = None

        def progress(ev):
            if ev.step == 1:
                task.cancel()

        task = asyncio.create_task(engine.generate(replace(base_request, job_id="job-cancel"), progress))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert 1 <= len(engine.last_record.experts) < base_request.steps


def test_a_callers_timeout_stops_between_steps(engine, base_request):
    """The worker's deadline reaches the engine as a cancellation (asyncio.timeout around generate)."""
    async def run():
        started = asyncio.Event()

        def progress(ev):
            started.set()

        async with asyncio.timeout(60):
            task = asyncio.ensure_future(engine.generate(replace(base_request, job_id="job-outer", steps=400,
                                                                 high_noise_steps=200), progress))
            await started.wait()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await task

    asyncio.run(run())
    assert 1 <= len(engine.last_record.experts) < 400


def test_the_engine_keeps_no_deadline_of_its_own(engine, base_request, clock):
    """Its clock jumping far past I2V_JOB_DEADLINE_S does not stop a job: the worker owns the deadline."""
    clock.jump_after_next_call(10_000)
    video, _ = asyncio.run(_job(engine, base_request, job_id="job-late"))
    assert video.frames == 5 and engine.last_record.experts == [HIGH, HIGH, LOW, LOW]


def test_expert_config_is_checked_against_the_file(tiny_models_dir: Path):
    path = tiny_models_dir / TINY_FILES[ModelRole.HIGH_NOISE]
    with pytest.raises(EngineError, match="wan22-i2v-a14b") as err:
        loaders.load_expert(path, config_name="wan22-i2v-a14b", device=torch.device("cpu"), dtype=torch.float32)
    assert "num_layers" in err.value.message and err.value.code == "model_error"
    with pytest.raises(EngineError, match="unknown architecture config"):
        loaders.load_expert(path, config_name="wan-nope", device=torch.device("cpu"), dtype=torch.float32)
    model = loaders.load_expert(path, config_name=None, device=torch.device("cpu"), dtype=torch.float32)
    assert (model.config.num_layers, model.config.num_attention_heads, model.config.in_channels) == (2, 1, 36)
    assert model.config.image_dim is None


def test_shipped_production_config_is_wan22_i2v_a14b():
    cfg = loaders._read_config(loaders.config_dir("wan22-i2v-a14b"))
    assert {k: cfg[k] for k in ("num_attention_heads", "attention_head_dim", "num_layers", "ffn_dim", "in_channels",
                                "out_channels", "text_dim", "freq_dim", "patch_size", "image_dim")} == {
        "num_attention_heads": 40, "attention_head_dim": 128, "num_layers": 40, "ffn_dim": 13824, "in_channels": 36,
        "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "patch_size": [1, 2, 2], "image_dim": None}


def test_health_then_release_frees_models_and_next_job_reloads(engine, base_request):
    health = asyncio.run(engine.health())
    assert health["device"] == "cpu" and health["dtype"] == "float32"
    assert health["torch"] and health["diffusers"]
    assert set(health["loaded"]) == {"high_noise", "low_noise", "text_encoder", "vae"}
    high = str(base_request.models[ModelRole.HIGH_NOISE][1])
    before = engine.load_counts[high]
    asyncio.run(engine.release())
    assert asyncio.run(engine.health())["loaded"] == {}
    asyncio.run(_job(engine, base_request, job_id="job-reload"))
    assert engine.load_counts[high] == before + 1


@pytest.mark.parametrize("strength", [1.0, 2.5, -0.5])
def test_lora_patches_weights_like_comfyui(tiny_models_dir: Path, strength: float):
    """ComfyUI's LoRA patch: W + s * alpha/rank * up @ down and bias + s * diff_b. The adapter on
    the GGUF expert (unfused) must give the same layer output; k_img/v_img keys are skipped."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor
    from safetensors.torch import load_file

    path = tiny_models_dir / TINY_FILES[ModelRole.HIGH_NOISE]
    lora_path = tiny_models_dir / TINY_FILES[ModelRole.LORA]
    model = loaders.load_expert(path, config_name="tiny", device=torch.device("cpu"), dtype=torch.float32)
    skipped = loaders.load_lora_into(model, lora_path, dtype=torch.float32)
    assert skipped > 0  # the Wan2.1 image-attention keys
    loaders.set_lora_strength(model, strength)
    raw = {k: v.float() for k, v in load_file(str(lora_path)).items()}
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
    for module, key in [("blocks.0.attn1.to_q", "blocks.0.self_attn.q"), ("blocks.1.attn2.to_out.0", "blocks.1.cross_attn.o"),
                        ("blocks.1.ffn.net.0.proj", "blocks.1.ffn.0")]:
        layer = model.get_submodule(module)
        base = layer.base_layer
        w = dequantize_gguf_tensor(base.weight).float()
        k = f"diffusion_model.{key}"
        down, up, alpha = raw[f"{k}.lora_down.weight"], raw[f"{k}.lora_up.weight"], raw[f"{k}.alpha"]
        w_patched = w + strength * (alpha / down.shape[0]) * (up @ down)
        b_patched = base.bias.float() + strength * raw[f"{k}.diff_b"]
        with torch.inference_mode():
            expected = torch.nn.functional.linear(x, w_patched, b_patched)
            got = layer(x)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), module
    loaders.set_lora_strength(model, 0.0)
    with torch.inference_mode():
        plain = model.get_submodule("blocks.0.attn1.to_q")
        assert torch.allclose(plain(x), torch.nn.functional.linear(
            x, dequantize_gguf_tensor(plain.base_layer.weight).float(), plain.base_layer.bias), atol=1e-5)


def test_i2v_condition_matches_diffusers_prepare_latents(engine, base_request):
    """[mask 4 | image latent 16] laid out exactly as diffusers' WanImageToVideoPipeline builds it."""
    from types import SimpleNamespace

    from diffusers import WanImageToVideoPipeline

    vae = engine._components[ModelRole.VAE].obj if ModelRole.VAE in engine._components else None
    if vae is None:  # a previous test released the models
        vae = loaders.load_vae(base_request.models[ModelRole.VAE][1], device=torch.device("cpu"), dtype=torch.float32)
    rgb = np.random.default_rng(3).integers(0, 256, (base_request.height, base_request.width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    request = replace(base_request, image_png=buf.getvalue())
    with torch.inference_mode():
        ours = engine._image_condition(request, vae)
        fake_pipe = SimpleNamespace(vae=vae, config=SimpleNamespace(expand_timesteps=False),
                                    vae_scale_factor_temporal=4, vae_scale_factor_spatial=8)
        image = torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        _, theirs = WanImageToVideoPipeline.prepare_latents(
            fake_pipe, image, 1, 16, request.height, request.width, request.length, torch.float32, torch.device("cpu"),
            torch.Generator().manual_seed(0))
    assert ours.shape == theirs.shape == (1, 20, 2, request.height // 8, request.width // 8)
    assert torch.allclose(ours[:, :4], theirs[:, :4])  # mask: first latent frame known
    assert torch.allclose(ours[:, 4:], theirs[:, 4:], atol=1e-5)


def test_i2v_engine_diffusers_selects_this_engine(tmp_path: Path):
    from i2v_worker.engines import Engine, create_engine

    settings = Settings.from_env({"I2V_ENGINE": "diffusers", "I2V_MODEL_DIR": str(tmp_path), "I2V_DEVICE": "cpu"})
    eng = create_engine(settings, None)
    assert isinstance(eng, DiffusersEngine) and isinstance(eng, Engine) and eng.name == "diffusers"


def test_unavailable_device_is_a_clear_start_error(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    eng = DiffusersEngine(Settings(model_dir=tmp_path, device="cuda"))
    with pytest.raises(EngineError, match="I2V_DEVICE=cuda") as err:
        asyncio.run(eng.start())
    assert err.value.code == "engine_unavailable"
    asyncio.run(eng.close())
