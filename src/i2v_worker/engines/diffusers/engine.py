"""`DiffusersEngine`: the Wan2.2 I2V graph run in-process on the store's five files.

Models load lazily on the first job that names them and stay loaded (cache keyed by file path, so
a warm job reloads nothing and a job naming another file swaps only that component). Each job runs
on one dedicated worker thread; the event loop only awaits it. Cancelling the awaiting task sets a
threading.Event that the sampling loop checks between steps: that is how the worker's deadline
(which the worker owns, see worker/handler.py) and RunPod's cancel stop a job; the engine runs no
timer of its own. The result is the decoded frames (uint8, `video.frames.to_uint8`); the worker
encodes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import io
import logging
import threading
import time
import traceback
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from i2v_worker.engines.base import (
    EngineError,
    EngineProgress,
    GeneratedVideo,
    GenerationRequest,
    ModelRole,
    ProgressFn,
)
from i2v_worker.engines.diffusers import sampling
from i2v_worker.logs import log
from i2v_worker.error_codes import ErrorCode

logger = logging.getLogger("i2v_worker.engines.diffusers")

_REQUIRED = (ModelRole.HIGH_NOISE, ModelRole.LOW_NOISE, ModelRole.TEXT_ENCODER, ModelRole.VAE)
_EXPERT_ROLES = {sampling.HIGH: ModelRole.HIGH_NOISE, sampling.LOW: ModelRole.LOW_NOISE}


@dataclass
class _Loaded:
    name: str
    path: Path
    obj: Any
    lora: Path | None = None  # experts: the LoRA file loaded as adapter, if any


class DiffusersEngine:
    """In-process engine (engines.base.Engine). Attributes tests read: `load_counts` (file path ->
    times loaded), `last_record` (sampling.SamplingRecord of the last job), `last_frames_sha256`
    (the generated frames). `clock` times the stages (injectable, like the store's)."""

    name = "diffusers"

    def __init__(self, settings, store=None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._components: dict[ModelRole, _Loaded] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._device = None
        self._dtype = None
        self.load_counts: Counter[str] = Counter()
        self.last_record: sampling.SamplingRecord | None = None
        self.last_frames_sha256: str | None = None  # digest of the last job's decoded frames (before h264)

    # -- Engine protocol ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._call(self._prepare)

    async def generate(self, request: GenerationRequest, progress: ProgressFn) -> GeneratedVideo:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()

        def emit(event: EngineProgress) -> None:  # progress callbacks run on the event loop
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(progress, event)

        fut = loop.run_in_executor(self._pool(), self._run_job, request, cancel, emit)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancel.set()  # the sampling loop stops before its next step
            await asyncio.wait({fut})
            log(logger, logging.INFO, "job cancelled", job_id=request.job_id)
            raise

    async def health(self) -> dict[str, Any]:
        import diffusers
        import torch

        return {
            "engine": self.name,
            "ready": True,
            "device": str(self._device or self._resolve_device()),
            "dtype": str(self._dtype or self._resolve_dtype(self._device or self._resolve_device())).removeprefix("torch."),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "loaded": {role.value: c.name for role, c in self._components.items()},
        }

    async def release(self) -> None:
        """Drop every loaded model and return the memory (the next job loads again)."""
        await self._call(self._release)

    async def close(self) -> None:
        if self._executor is not None:
            await self._call(self._release)
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- plumbing ------------------------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        # One dedicated thread rather than asyncio.to_thread's shared pool: jobs, loads and
        # releases are serialized (torch state is touched by one thread at a time).
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="i2v-diffusers")
        return self._executor

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool(), fn, *args)

    def _resolve_device(self):
        import torch

        want = (self._settings.device or "auto").strip().lower()
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(want)
        except RuntimeError:
            raise EngineError(f"I2V_DEVICE={want!r} is not a torch device; use auto, cpu or cuda", code=ErrorCode.ENGINE_UNAVAILABLE) from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EngineError("I2V_DEVICE=cuda but torch sees no CUDA device; use auto or cpu", code=ErrorCode.ENGINE_UNAVAILABLE)
        return dev

    @staticmethod
    def _resolve_dtype(device):
        import torch

        return torch.bfloat16 if device.type == "cuda" else torch.float32

    def _prepare(self) -> None:
        with warnings.catch_warnings():  # importing diffusers' models warns about autocast on CPU-only hosts
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*", category=UserWarning)
            from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: F401 - import cost paid at start

        if self._device is None:
            self._device = self._resolve_device()
            self._dtype = self._resolve_dtype(self._device)
            log(logger, logging.INFO, "diffusers engine ready", device=self._device, dtype=self._dtype)

    def _release(self) -> None:
        import torch

        self._components.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- loading -------------------------------------------------------------------------------------

    def _config_name(self, name: str) -> str | None:
        """The manifest entry's `config` (architecture config shipped in the package), if the store
        exposes its manifest; None lets the loader read the architecture from the file."""
        manifest = getattr(self._store, "manifest", None)
        try:
            return manifest.get(name).config if manifest is not None else None
        except Exception:  # noqa: BLE001 - a model outside the manifest: shapes decide
            return None

    def _component(self, role: ModelRole, name: str, path: Path, load: Callable[[], Any]) -> _Loaded:
        current = self._components.get(role)
        if current is not None and current.path == path:
            return current
        if current is not None:  # another file for this role: free the old one first
            self._components.pop(role)
            gc.collect()
        if not path.is_file():
            raise EngineError(f"{role.value} model {name!r} is not at {path}; run `i2v-worker models fetch`", code=ErrorCode.MODEL_ERROR)
        t0 = time.perf_counter()
        try:
            obj = load()
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure names the file
            raise EngineError(
                f"could not load {role.value} model {name!r} ({path}): {type(exc).__name__}: {exc}",
                code=ErrorCode.MODEL_ERROR, details=traceback.format_exc(),
            ) from exc
        self.load_counts[str(path)] += 1
        log(logger, logging.INFO, "model loaded", role=role.value, model=name, seconds=round(time.perf_counter() - t0, 2))
        loaded = _Loaded(name, path, obj)
        self._components[role] = loaded
        return loaded

    def _load_all(self, request: GenerationRequest) -> dict[ModelRole, _Loaded]:
        from i2v_worker.engines.diffusers import loaders
        from i2v_worker.engines.diffusers.text_encoder import load_text_encoder

        missing = [r.value for r in _REQUIRED if r not in request.models]
        if missing:
            raise EngineError(f"the request names no model for role(s) {', '.join(missing)}", code=ErrorCode.MODEL_ERROR)
        dev, dt = self._device, self._dtype
        out: dict[ModelRole, _Loaded] = {}
        for role in (ModelRole.HIGH_NOISE, ModelRole.LOW_NOISE):
            name, path = request.models[role]
            cfg = self._config_name(name)
            out[role] = self._component(role, name, Path(path),
                                        lambda p=Path(path), c=cfg: loaders.load_expert(p, config_name=c, device=dev, dtype=dt))
        name, path = request.models[ModelRole.TEXT_ENCODER]
        out[ModelRole.TEXT_ENCODER] = self._component(
            ModelRole.TEXT_ENCODER, name, Path(path), lambda p=Path(path): load_text_encoder(p, device=dev, dtype=dt))
        name, path = request.models[ModelRole.VAE]
        out[ModelRole.VAE] = self._component(
            ModelRole.VAE, name, Path(path), lambda p=Path(path): loaders.load_vae(p, device=dev, dtype=dt))
        self._apply_lora(request, out)
        return out

    def _apply_lora(self, request: GenerationRequest, comps: dict[ModelRole, _Loaded]) -> None:
        from i2v_worker.engines.diffusers import loaders

        strengths = {ModelRole.HIGH_NOISE: request.lora_strength_high, ModelRole.LOW_NOISE: request.lora_strength_low}
        lora = request.models.get(ModelRole.LORA)
        if lora is None and any(s != 0 for s in strengths.values()):
            raise EngineError("lora_strength_high/low are not 0 but the request names no lora model", code=ErrorCode.MODEL_ERROR)
        for role, strength in strengths.items():
            expert = comps[role]
            want = Path(lora[1]) if (lora is not None and strength != 0) else None
            if want is not None and expert.lora != want:
                if not want.is_file():
                    raise EngineError(f"lora model {lora[0]!r} is not at {want}; run `i2v-worker models fetch`", code=ErrorCode.MODEL_ERROR)
                try:
                    loaders.load_lora_into(expert.obj, want, dtype=self._dtype)
                except EngineError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise EngineError(f"could not apply lora {lora[0]!r} to the {role.value} expert: {type(exc).__name__}: {exc}",
                                      code=ErrorCode.MODEL_ERROR, details=traceback.format_exc()) from exc
                expert.lora = want
                self.load_counts[str(want)] += 1
            loaders.set_lora_strength(expert.obj, strength if want is not None else 0.0)
        self._apply_job_loras(request, comps, strengths if lora is not None else {})

    def _apply_job_loras(self, request: GenerationRequest, comps: dict[ModelRole, _Loaded],
                         lightx2v: dict[ModelRole, float]) -> None:
        """Job LoRAs as named adapters `job<i>` on each expert where their strength is not 0, active
        together with the lightx2v adapter at per-expert weights; `_unload_job_loras` removes them."""
        from i2v_worker.engines.diffusers import loaders

        if not request.loras:
            return
        for role in (ModelRole.HIGH_NOISE, ModelRole.LOW_NOISE):
            model = comps[role].obj
            weights: dict[str, float] = {}
            if loaders.ADAPTER in getattr(model, "peft_config", {}) and lightx2v.get(role, 0) != 0:
                weights[loaders.ADAPTER] = float(lightx2v[role])
            for i, lora in enumerate(request.loras):
                strength = lora.strength_high if role == ModelRole.HIGH_NOISE else lora.strength_low
                if strength == 0:
                    continue
                if not Path(lora.path).is_file():
                    raise EngineError(f"job LoRA {lora.label or lora.name} is not at {lora.path}", code=ErrorCode.MODEL_ERROR)
                try:
                    loaders.load_named_lora(model, Path(lora.path), f"job{i}", dtype=self._dtype)
                except EngineError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise EngineError(f"could not apply job LoRA {lora.label or lora.name} to the {role.value} expert: "
                                      f"{type(exc).__name__}: {exc}", code=ErrorCode.MODEL_ERROR,
                                      details=traceback.format_exc()) from exc
                weights[f"job{i}"] = float(strength)
            loaders.set_adapter_weights(model, weights)

    def _unload_job_loras(self, request: GenerationRequest) -> None:
        """After the job: the job adapters go, so the next job starts with only the preset's LoRA."""
        from i2v_worker.engines.diffusers import loaders

        if not request.loras:
            return
        for role in (ModelRole.HIGH_NOISE, ModelRole.LOW_NOISE):
            comp = self._components.get(role)
            if comp is not None:
                loaders.delete_job_adapters(comp.obj)

    # -- one job -------------------------------------------------------------------------------------

    def _run_job(self, request: GenerationRequest, cancel: threading.Event, emit: Callable[[EngineProgress], None]) -> GeneratedVideo:
        try:
            try:
                return self._generate(request, cancel, emit)
            finally:
                self._unload_job_loras(request)
        except (EngineError, sampling.SamplingCancelled):
            raise
        except Exception as exc:  # noqa: BLE001 - the user sees one readable line
            import torch

            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise EngineError(f"out of GPU memory at {request.width}x{request.height}x{request.length}; "
                                  "lower the size or length", code=ErrorCode.ENGINE_ERROR, details=traceback.format_exc()) from exc
            raise EngineError(f"diffusers engine failed: {type(exc).__name__}: {exc}", details=traceback.format_exc()) from exc

    @staticmethod
    def _check_request(r: GenerationRequest) -> None:
        """The shapes the Wan graph needs (the worker's schema checks these too; an engine used on
        its own must not fail with a tensor error instead)."""
        rules = [
            ("width", r.width > 0 and r.width % 16 == 0, "a positive multiple of 16"),
            ("height", r.height > 0 and r.height % 16 == 0, "a positive multiple of 16"),
            ("length", r.length >= 1 and (r.length - 1) % 4 == 0, "4k+1 frames (1, 5, ..., 81)"),
            ("fps", r.fps >= 1, "at least 1"),
            ("steps", r.steps >= 1, "at least 1"),
            ("high_noise_steps", 0 <= r.high_noise_steps <= r.steps, "between 0 and steps"),
            ("cfg", r.cfg >= 0.0, "at least 0 (1 = no guidance pass)"),
            ("shift", r.shift > 0, "positive"),
        ]
        for field, ok, rule in rules:
            if not ok:
                raise EngineError(f"{field} must be {rule} (got {getattr(r, field)!r})", code=ErrorCode.ENGINE_ERROR)

    def _generate(self, request: GenerationRequest, cancel: threading.Event, emit: Callable[[EngineProgress], None]) -> GeneratedVideo:
        import torch

        self._check_request(request)
        self._prepare()
        t0 = self._clock()
        comps = self._load_all(request)
        t_load = self._clock() - t0
        if cancel.is_set():
            raise sampling.SamplingCancelled()
        dev, dt = self._device, self._dtype
        vae = comps[ModelRole.VAE].obj
        te = comps[ModelRole.TEXT_ENCODER].obj

        marks: dict[str, float] = {}
        t0 = self._clock()

        def mark(stage: str) -> None:  # wall time of each stage, for logs and bench/
            nonlocal t0
            now = self._clock()
            marks[stage] = now - t0
            t0 = now

        with torch.inference_mode():
            context = te.encode([request.prompt]).to(dev, dt)
            negative = te.encode([request.negative_prompt]).to(dev, dt) if request.cfg != 1.0 else None
            mark("text_encode")
            condition = self._image_condition(request, vae)
            mark("image_encode")
            lat_t = (request.length - 1) // 4 + 1
            shape = (1, 16, lat_t, request.height // 8, request.width // 8)
            # ComfyUI's prepare_noise: torch.manual_seed(seed) then randn on the CPU, float32
            noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(request.seed)), dtype=torch.float32).to(dev)
            sigmas = sampling.simple_sigmas(request.steps, request.shift)
            experts = {which: self._denoiser(comps[role].obj) for which, role in _EXPERT_ROLES.items()}
            record = sampling.SamplingRecord()
            self.last_record = record

            def on_step(i: int, total: int, which: str) -> None:
                emit(EngineProgress("sampling", i, total, message=which))

            latents = sampling.sample_euler(
                experts, noise, condition, sigmas, request.high_noise_steps, context, negative, request.cfg,
                cancel=cancel, on_step=on_step, record=record,
            )
            mark("sampling")
            if cancel.is_set():
                raise sampling.SamplingCancelled()
            frames = self._decode(latents, vae)
            mark("vae_decode")
        self.last_frames_sha256 = hashlib.sha256(frames.tobytes()).hexdigest()
        timings = {"load": t_load, "inference": sum(marks.values()), **marks}
        log(logger, logging.INFO, "job done", job_id=request.job_id, experts="".join(e[0] for e in record.experts),
            **{f"{k}_s": round(v, 2) for k, v in timings.items()})
        return GeneratedVideo(pixels=frames, fps=request.fps, timings=timings)

    @staticmethod
    def _denoiser(model):
        def run(x_in, t, context):
            return model(hidden_states=x_in, timestep=t, encoder_hidden_states=context, return_dict=False)[0]

        return run

    def _image_condition(self, request: GenerationRequest, vae):
        """[mask (4) | image latent (16)] over the latent frames, as diffusers' WanImageToVideoPipeline.
        prepare_latents and ComfyUI's WanImageToVideo build it: the start image then gray frames
        encoded by the VAE, normalized with the Wan2.1 latent mean/std; mask 1 on the first latent
        frame (the given image), 0 elsewhere."""
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        dev, dt = self._device, self._dtype
        try:
            img = Image.open(io.BytesIO(request.image_png)).convert("RGB")
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"image_png could not be decoded: {exc}", code=ErrorCode.ENGINE_ERROR) from exc

        def fitted(im):
            # The worker already fitted the images to width x height (worker/image.py: the one resize
            # both engines see; ComfyUI's common_upscale is then the identity). Only an engine used on
            # its own with another size gets this centre-crop fit.
            if im.size != (request.width, request.height):
                im = ImageOps.fit(im, (request.width, request.height), method=Image.BILINEAR, centering=(0.5, 0.5))
            return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)  # 3,H,W in [-1,1]

        pixels = fitted(img)
        video = torch.zeros((1, 3, request.length, request.height, request.width), dtype=torch.float32)
        video[0, :, 0] = pixels  # frames after the first: 0 = ComfyUI's 0.5 gray
        if request.end_image_png is not None:  # WanFirstLastFrameToVideo: the last frame is given too
            try:
                end = Image.open(io.BytesIO(request.end_image_png)).convert("RGB")
            except Exception as exc:  # noqa: BLE001
                raise EngineError(f"end_image_png could not be decoded: {exc}", code=ErrorCode.ENGINE_ERROR) from exc
            video[0, :, -1] = fitted(end)
        enc = vae.encode(video.to(dev, vae.dtype)).latent_dist.mode().float()
        mean = torch.tensor(vae.config.latents_mean, device=dev).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=dev).view(1, -1, 1, 1, 1)
        latent = (enc - mean) / std
        return torch.cat([self._condition_mask(request, latent.shape[2:], dev), latent], dim=1).to(dt)

    @staticmethod
    def _condition_mask(request: GenerationRequest, latent_shape, dev):
        """ComfyUI's layout: a per-pixel-frame mask over 4*T frames (0 = given), start image: frames
        [0, 4); end image: the last frame; viewed as (T, 4) -> 4 channels per latent frame; the
        model then uses 1 - mask (comfy.model_base.WAN21.concat_cond)."""
        import torch

        t = latent_shape[0]
        frames = torch.ones(t * 4)
        frames[:4] = 0.0
        if request.end_image_png is not None:
            frames[-1:] = 0.0
        given = (1.0 - frames).view(t, 4).transpose(0, 1)  # 4, T
        return given.view(1, 4, t, 1, 1).expand(1, 4, t, *latent_shape[1:]).to(dev).contiguous()

    def _decode(self, latents, vae):
        import torch

        mean = torch.tensor(vae.config.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
        from i2v_worker.video.frames import to_uint8

        video = vae.decode((latents * std + mean).to(vae.dtype), return_dict=False)[0]  # 1,3,T,H,W in [-1,1]
        # ComfyUI's VAE.decode: clamp((x + 1) / 2, 0, 1); then the one float -> uint8 rule
        video01 = torch.clamp((video.float() + 1.0) / 2.0, min=0.0, max=1.0)
        return to_uint8(video01[0].permute(1, 2, 3, 0).contiguous())  # T,H,W,3
