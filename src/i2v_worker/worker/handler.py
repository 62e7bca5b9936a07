"""The job handler: validate -> image -> models -> engine -> interpolate + encode -> delivery,
with progress and timings.

`Worker(settings, store, engine)` holds everything a job needs; `await worker.handle(job)` never
raises (except CancelledError, which it re-raises after the engine stopped): every failure becomes
`{"error", "error_code", "details"}` with a readable message (`error_code`: an ErrorCode).

The job's deadline (I2V_JOB_DEADLINE_S) has one owner: `handle` here. Nothing below it runs a
timer; when the deadline passes, the task running the job is cancelled, which interrupts whatever
stage it is in (a download, ComfyUI, the diffusers sampling loop, the interpolation) and the job
fails with `timeout`, naming that stage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from i2v_worker import __version__
from i2v_worker.config import Settings
from i2v_worker.engines.base import Engine, EngineError, EngineProgress, GenerationRequest, JobLora, ModelRole
from i2v_worker.error_codes import ErrorCode
from i2v_worker.logs import Throttle, log
from i2v_worker.store.errors import (DiskFullError, DownloadError, LeaseTimeout, ManifestError, OfflineError,
                                     StoreError)
from i2v_worker.store.types import ModelState, ProgressEvent
from i2v_worker.worker.deadline import effective_deadline
from i2v_worker.worker.delivery import DeliveryError, check_delivery_possible, deliver
from i2v_worker.worker.finish import InterpolationError, VideoFinisher
from i2v_worker.worker.image import (MAX_PIXELS, ImageInputError, PreparedImage, Resolver, decode_base64, decode_image,
                                     fetch_image)
from i2v_worker.worker.schema import RANDOM_SEED_MAX, InvalidInput, JobInput, parse_job_input, resolve_size

logger = logging.getLogger("i2v_worker.worker")

# (job, payload) -> None; production: runpod.serverless.progress_update (non-blocking: it posts
# from its own thread). Tests pass a list's append.
ProgressSink = Callable[[dict, dict], None]

PROGRESS_INTERVAL_S = 1.0


def _no_progress(job: dict, payload: dict) -> None:
    return None


def error_output(code: ErrorCode, message: str, details: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": message, "error_code": code}
    if details is not None:
        out["details"] = details
    return out


class _JobFailed(Exception):
    def __init__(self, output: dict[str, Any]):
        super().__init__(output["error"])
        self.output = output


class Worker:
    """One worker process: settings, the model store, an engine. Construct directly in tests."""

    def __init__(
        self,
        settings: Settings,
        store: Any,
        engine: Engine,
        *,
        progress_sink: ProgressSink | None = None,
        resolver: Resolver | None = None,
        s3_client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self._progress_sink = progress_sink or _no_progress
        self._resolver = resolver
        self._s3_client = s3_client
        self._clock = clock
        self._engine_started = False
        self._engine_lock: asyncio.Lock | None = None
        self.prefetch_task: asyncio.Task | None = None
        self.finisher = VideoFinisher(settings.device)
        self._job_loras: Any = None  # the store's job-LoRA area, built by the first job that names LoRAs

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self, *, prefetch: bool | None = None) -> None:
        """Start the engine and, at the same moment, prefetch the preset's models in the background.

        A job arriving during the prefetch asks the store for the same models and simply waits for
        them (the store de-duplicates concurrent downloads of a model with its lease). Raises
        EngineError when the engine cannot start (jobs try again)."""
        if (self.settings.prefetch if prefetch is None else prefetch) and self.prefetch_task is None:
            self.prefetch_task = asyncio.create_task(self._prefetch(), name="i2v-prefetch")
        await self._ensure_engine_started()

    async def _prefetch(self) -> None:
        # The interpolation model is only fetched by a job that asks for it (like a LoRA at 0/0).
        names = [e.name for role, e in self._preset_roles().items() if role is not ModelRole.INTERPOLATION]
        t0 = self._clock()
        log(logger, logging.INFO, "prefetch started", preset=self.settings.preset, models=len(names))
        try:
            await self.store.aensure(names, progress=self._throttled(lambda p: None, "prefetch"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job will ask again and report the error to its client
            log(logger, logging.WARNING, "prefetch failed", error=str(exc))
            return
        log(logger, logging.INFO, "prefetch done", seconds=round(self._clock() - t0, 2))

    async def _ensure_engine_started(self) -> None:
        if self._engine_started:
            return
        if self._engine_lock is None:
            self._engine_lock = asyncio.Lock()
        async with self._engine_lock:
            if not self._engine_started:
                await self.engine.start()
                self._engine_started = True

    @staticmethod
    def _background(coro) -> asyncio.Task:
        """A task whose failure is reported by whoever awaits it, or logged if nobody does."""
        task = asyncio.ensure_future(coro)

        def done(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                log(logger, logging.DEBUG, "background engine start failed", error=str(t.exception()))

        task.add_done_callback(done)
        return task

    async def close(self) -> None:
        if self.prefetch_task is not None and not self.prefetch_task.done():
            self.prefetch_task.cancel()
            await asyncio.gather(self.prefetch_task, return_exceptions=True)
        await self.engine.close()

    # --- the job ----------------------------------------------------------------------------------
    async def handle(self, job: dict) -> dict[str, Any]:
        """Run one RunPod job (`{"id", "input"}`); returns the output or an error dict."""
        t0 = self._clock()
        job_id = str(job.get("id") or f"local-{uuid.uuid4().hex[:12]}") if isinstance(job, dict) else "invalid"
        stage = {"name": "validation"}
        try:
            raw = job.get("input") if isinstance(job, dict) else None
            if isinstance(raw, dict) and "action" in raw:
                return await self._action(raw)
            parsed = parse_job_input(raw)
            if parsed.warnings:
                log(logger, logging.INFO, "deprecated input fields", job=job_id, warnings="; ".join(parsed.warnings))
            check_delivery_possible(parsed.input.delivery, self.settings)
            limit = effective_deadline(self.settings, job)
            deadline = asyncio.timeout(limit.seconds)
            try:
                async with deadline:
                    return await self._run(job, job_id, parsed.input, parsed.warnings, t0, stage)
            except TimeoutError:
                if not deadline.expired():  # a TimeoutError from inside, not the deadline
                    raise
                log(logger, logging.WARNING, "job deadline passed", job=job_id, stage=stage["name"],
                    deadline_s=limit.seconds, source=limit.source)
                return error_output(
                    ErrorCode.TIMEOUT, f"the job did not finish within {limit.seconds:g} s "
                    f"({limit.source}): it was stopped during {stage['name']}. Raise the deadline (and the "
                    "endpoint's execution timeout with I2V_EXECUTION_TIMEOUT_S), or ask for fewer frames or steps",
                    {"stage": stage["name"], "deadline_s": limit.seconds, "deadline_source": limit.source,
                     "platform_limit_s": limit.platform_limit_s})
        except InvalidInput as exc:
            return exc.to_output()
        except _JobFailed as exc:
            return exc.output
        except DeliveryError as exc:
            return error_output(exc.code, exc.message, exc.details)
        except asyncio.CancelledError:
            log(logger, logging.INFO, "job cancelled", job=job_id, stage=stage["name"])
            raise
        except Exception as exc:  # noqa: BLE001 - nothing raises out of the handler
            logger.error("internal error", exc_info=True,
                         extra={"fields": {"job": job_id, "stage": stage["name"], "error": f"{type(exc).__name__}: {exc}"}})
            return error_output(ErrorCode.INTERNAL_ERROR, f"internal error during {stage['name']}: {type(exc).__name__}: {exc}",
                                {"stage": stage["name"]})
        finally:
            release = stage.pop("release", None)  # the job's LoRAs may be evicted again
            if release is not None:
                release()

    async def _run(self, job: dict, job_id: str, inp: JobInput, warnings: list[str], t0: float,
                   stage: dict) -> dict[str, Any]:
        timings: dict[str, float] = {}
        # The engine starts (if it has not yet) while the image and the models are prepared.
        engine_start = None if self._engine_started else self._background(self._ensure_engine_started())
        stage["name"] = "image"
        t = self._clock()
        image = await self._load_image(inp)
        width, height = resolve_size(inp, image.width, image.height)
        end_image = await self._load_end_image(inp, width, height)
        timings["image"] = round(self._clock() - t, 4)
        seed = inp.seed if inp.seed is not None else secrets.randbelow(RANDOM_SEED_MAX + 1)

        stage["name"] = "models"
        t = self._clock()
        sink = self._progress_sink
        models, job_loras = await self._ensure_models_and_loras(inp, self._throttled(lambda p: sink(job, p), job_id),
                                                                job_id)
        timings["models"] = round(self._clock() - t, 4)
        if job_loras is not None:
            stage["release"] = job_loras.release  # handle() releases them when the job ends, however it ends
            warnings = [*warnings, *job_loras.warnings]

        stage["name"] = "engine start"
        t = self._clock()
        try:
            if engine_start is not None:
                await asyncio.shield(engine_start)
            await self._ensure_engine_started()  # or waits for a start already under way (boot)
        except EngineError as exc:
            raise _JobFailed(self._engine_error(exc)) from None

        timings["engine_start"] = round(self._clock() - t, 4)  # time this job waited for the engine to start

        stage["name"] = "generation"
        interpolation_model = models.pop(ModelRole.INTERPOLATION, None)  # the worker's, not the engine's
        request = GenerationRequest(
            job_id=job_id, image_png=image.png, prompt=inp.prompt, negative_prompt=inp.negative_prompt,
            width=width, height=height, length=inp.length, fps=inp.fps, steps=inp.steps,
            high_noise_steps=inp.effective_high_noise_steps(), cfg=inp.cfg, shift=inp.shift, seed=seed,
            lora_strength_high=inp.lora_strength_high, lora_strength_low=inp.lora_strength_low,
            models=models, output_dir=Path(self.settings.output_dir),
            end_image_png=end_image.png if end_image is not None else None,
            loras=tuple(JobLora(name=lo.name, path=lo.path, strength_high=lo.strength_high, strength_low=lo.strength_low,
                                label=f"loras[{lo.index}]") for lo in (job_loras.loras if job_loras else [])),
        )
        step_throttle = Throttle(PROGRESS_INTERVAL_S, self._clock)

        def on_engine_progress(p: EngineProgress) -> None:
            if step_throttle.ready(force=p.step >= p.total):
                payload = {"stage": p.stage, "step": p.step, "total": p.total,
                           "percent": round(100 * p.step / p.total, 1) if p.total else None}
                if p.message:
                    payload["message"] = p.message
                sink(job, payload)

        try:
            video = await self.engine.generate(request, on_engine_progress)
        except EngineError as exc:
            raise _JobFailed(self._engine_error(exc)) from None
        for key in ("queue", "inference"):
            timings[key] = round(float(video.timings.get(key, 0.0)), 4)
        stage["name"] = "interpolation" if inp.interpolate > 1 else "encoding"
        try:
            finished = await self.finisher.finish(
                video, job_id=job_id, output_dir=Path(self.settings.output_dir), factor=inp.interpolate,
                format=inp.output.format, quality=inp.output.quality,
                interpolation_model=interpolation_model[1] if interpolation_model else None,
                emit=lambda p: sink(job, p) if step_throttle.ready(force=p.get("step") == p.get("total")) else None)
        except InterpolationError as exc:
            raise _JobFailed(error_output(exc.code, exc.message, {"model": interpolation_model[0]}
                                          if interpolation_model else None)) from None
        encoded = finished.video
        timings["interpolate"] = round(finished.interpolate_s, 4)
        timings["encode"] = round(finished.encode_s, 4)
        try:
            stage["name"] = "delivery"
            result: dict[str, Any] = {
                "mime_type": encoded.mime_type, "format": encoded.format.value, "seed": seed, "width": encoded.width,
                "height": encoded.height, "frames": encoded.frames, "fps": encoded.fps, "timings": timings,
            }
            if warnings:
                result["warnings"] = list(warnings)
            timings.setdefault("upload", 0.0)
            timings["total"] = round(self._clock() - t0, 4)
            out = await asyncio.to_thread(deliver, encoded.path, job_id, inp.delivery, result, self.settings,
                                          self._s3_client, self._clock)
            timings["total"] = round(self._clock() - t0, 4)
        finally:
            encoded.path.unlink(missing_ok=True)
        log(logger, logging.INFO, "job done", job=job_id, seed=seed, size=f"{encoded.width}x{encoded.height}",
            frames=encoded.frames, format=encoded.format.value, delivery="url" if "video_url" in out else "base64",
            **timings)
        return out

    def required_models(self, inp: JobInput) -> dict[ModelRole, Any]:
        """role -> manifest entry for exactly what this job needs (no LoRA at strengths 0/0, no
        interpolation model unless interpolate > 1)."""
        roles = dict(self._preset_roles())
        if inp.lora_strength_high == 0 and inp.lora_strength_low == 0:
            roles.pop(ModelRole.LORA, None)
        if inp.interpolate == 1:
            roles.pop(ModelRole.INTERPOLATION, None)
        return roles

    def _preset_roles(self) -> dict[ModelRole, Any]:
        return self.store.manifest.roles(self.settings.preset)

    async def _load_image(self, inp: JobInput) -> PreparedImage:
        try:
            if inp.image_url is not None:
                field = "image_url"
                data = await fetch_image(
                    inp.image_url, max_bytes=self.settings.image_max_bytes, timeout_s=self.settings.image_fetch_timeout_s,
                    allowlist=self.settings.image_host_allowlist, allow_loopback=self.settings.allow_loopback_images,
                    resolver=self._resolver)
            else:
                field = "image_base64"
                assert inp.image_base64 is not None
                data = decode_base64(inp.image_base64, field, self.settings.image_max_bytes)
            return await asyncio.to_thread(decode_image, data, field, MAX_PIXELS, lambda w, h: resolve_size(inp, w, h))
        except ImageInputError as exc:
            raise InvalidInput([_detail(exc.field, exc.rule, exc.message)]) from None

    async def _ensure_models_and_loras(self, inp: JobInput, progress: Callable[[ProgressEvent], None], job_id: str):
        """The preset's models and the job's LoRAs, fetched at the same time -> (models, PreparedLoras
        or None). On failure nothing stays marked in use."""
        if not inp.loras:
            return await self._ensure_models(inp, progress), None
        model_task = asyncio.ensure_future(self._ensure_models(inp, progress))
        try:
            job_loras = await self._prepare_job_loras(inp, progress, job_id)
        except BaseException:
            model_task.cancel()
            await asyncio.gather(model_task, return_exceptions=True)
            raise
        try:
            return await model_task, job_loras
        except BaseException:
            job_loras.release()
            raise

    async def _load_end_image(self, inp: JobInput, width: int, height: int) -> PreparedImage | None:
        """The last frame of a first-last-frame job (same rules as the start image), decoded for
        the video size the start image set."""
        if inp.end_image_url is None and inp.end_image_base64 is None:
            return None
        try:
            if inp.end_image_url is not None:
                field = "end_image_url"
                data = await fetch_image(
                    inp.end_image_url, max_bytes=self.settings.image_max_bytes,
                    timeout_s=self.settings.image_fetch_timeout_s, allowlist=self.settings.image_host_allowlist,
                    allow_loopback=self.settings.allow_loopback_images, resolver=self._resolver, field=field)
            else:
                field = "end_image_base64"
                assert inp.end_image_base64 is not None
                data = decode_base64(inp.end_image_base64, field, self.settings.image_max_bytes)
            return await asyncio.to_thread(decode_image, data, field, MAX_PIXELS, lambda w, h: (width, height))
        except ImageInputError as exc:
            raise InvalidInput([_detail(exc.field, exc.rule, exc.message)]) from None

    def job_lora_store(self):
        """The store's job-LoRA area (built on the first job that names LoRAs)."""
        if self._job_loras is None:
            from i2v_worker.store.job_loras import JobLoraStore

            self._job_loras = JobLoraStore.from_settings(self.settings, self.store, resolver=self._resolver)
        return self._job_loras

    async def _prepare_job_loras(self, inp: JobInput, progress: Callable[[ProgressEvent], None], job_id: str):
        from i2v_worker.store.job_loras import JobLoraError, LoraRequest

        requests = [LoraRequest(i, lo.source, lo.sha256, lo.strength_high, lo.strength_low)
                    for i, lo in enumerate(inp.loras or []) if lo.strength_high != 0 or lo.strength_low != 0]
        t = self._clock()
        try:
            prepared = await self.job_lora_store().prepare(requests, progress=progress)
        except JobLoraError as exc:
            if exc.code == ErrorCode.INVALID_INPUT:
                raise InvalidInput([_detail(exc.field, exc.rule, str(exc))]) from None
            log(logger, logging.ERROR, "job LoRAs unavailable", job=job_id, code=exc.code, error=str(exc))
            raise _JobFailed(error_output(exc.code, str(exc), {"field": exc.field, "rule": exc.rule})) from None
        except StoreError as exc:
            raise _JobFailed(store_error_output(exc, [r.source for r in requests])) from None
        log(logger, logging.INFO, "job LoRAs ready", job=job_id, loras=len(prepared.loras),
            downloaded=len(prepared.downloaded), seconds=round(self._clock() - t, 4))
        return prepared

    async def _ensure_models(self, inp: JobInput, progress: Callable[[ProgressEvent], None]
                             ) -> dict[ModelRole, tuple[str, Path]]:
        """Exactly the models this job needs, present in the store: role -> (name, path)."""
        names: list[str] = []
        try:
            roles = self.required_models(inp)
            names = [e.name for e in roles.values()]
            paths = await self.store.aensure(names, progress=progress)
        except StoreError as exc:
            raise _JobFailed(store_error_output(exc, names)) from None
        return {role: (e.name, Path(paths[e.name])) for role, e in roles.items()}

    def _throttled(self, emit: Callable[[dict], None], label: str) -> Callable[[ProgressEvent], None]:
        """Download progress (called from the store's threads) -> at most one payload a second,
        plus every phase change of a model (published, failed, ...)."""
        throttle = Throttle(PROGRESS_INTERVAL_S, self._clock)
        lock = threading.Lock()
        last_log = Throttle(10.0, self._clock)

        def on_event(ev: ProgressEvent) -> None:
            # A model's own phase change goes out at once; the store's overall summary event that
            # follows it carries the same totals, so it waits for the throttle like byte progress.
            important = ev.phase in ("published", "failed", "waiting") and ev.model is not None
            with lock:
                if not throttle.ready(force=important):
                    return
                payload = {"stage": "models", "phase": ev.phase, "model": ev.model, "done_bytes": ev.overall_done,
                           "total_bytes": ev.overall_total,
                           "percent": round(100 * ev.overall_done / ev.overall_total, 1) if ev.overall_total else None}
                if ev.message:
                    payload["message"] = ev.message
                if last_log.ready(force=ev.phase == "waiting"):  # the store logs publish/fail itself
                    log(logger, logging.INFO, "models", job=label, phase=ev.phase, model=ev.model,
                        done=ev.overall_done, total=ev.overall_total)
            emit(payload)

        return on_event

    def _engine_error(self, exc: EngineError) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if exc.details is not None:
            details["details"] = exc.details
        if exc.log_tail:
            details["log_tail"] = exc.log_tail
        log(logger, logging.ERROR, "engine error", code=exc.code, error=exc.message)
        return error_output(exc.code, exc.message, details or None)

    # --- actions ----------------------------------------------------------------------------------
    async def _action(self, raw: dict) -> dict[str, Any]:
        action = raw.get("action")
        extra = sorted(set(raw) - {"action"})
        if action != "health" or extra:
            detail = (_detail("action", "one_of", f"unknown action {action!r}: the only action is 'health'")
                      if action != "health" else
                      _detail(extra[0], "unknown_field", f"the health action takes no other field (got {', '.join(extra)})"))
            raise InvalidInput([detail])
        return await self.health()

    async def health(self) -> dict[str, Any]:
        """The worker's state without generating: engine readiness, per-model store state, device."""
        try:
            engine = await asyncio.wait_for(self.engine.health(), timeout=15)
        except Exception as exc:  # noqa: BLE001 - health reports, it does not fail
            engine = {"ready": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            roles = self._preset_roles()
            statuses = {s.name: s for s in await asyncio.to_thread(self.store.status, [e.name for e in roles.values()])}
            models = [{"role": role.value, "name": e.name, "state": statuses[e.name].state.value,
                       "size": statuses[e.name].size, "bytes_on_disk": statuses[e.name].bytes_on_disk,
                       "pinned": statuses[e.name].pinned} for role, e in roles.items()]
            models_ok = all(m["state"] != ModelState.CORRUPT.value for m in models)
        except Exception as exc:  # noqa: BLE001
            models, models_ok = [{"error": f"{type(exc).__name__}: {exc}"}], False
        ready = bool(engine.get("ready", engine.get("ok", False)))
        return {
            "status": "ok" if ready and models_ok else "degraded",
            "worker_version": __version__,
            "preset": self.settings.preset,
            "engine": engine,
            "models": models,
            "prefetch": _task_state(self.prefetch_task),
            "device": await device_summary(self.settings),
        }


def _detail(field: str | None, rule: str, message: str):
    from i2v_worker.worker.schema import ErrorDetail

    return ErrorDetail(field=field, rule=rule, message=message)


def _task_state(task: asyncio.Task | None) -> str:
    if task is None:
        return "off"
    if not task.done():
        return "running"
    return "cancelled" if task.cancelled() else "done"


def store_error_output(exc: StoreError, names: list[str]) -> dict[str, Any]:
    """Store failures -> error dicts that say which model and what to do."""
    code = (ErrorCode.MODELS_OFFLINE if isinstance(exc, OfflineError) else
            ErrorCode.DISK_FULL if isinstance(exc, DiskFullError) else
            ErrorCode.MODELS_BUSY if isinstance(exc, LeaseTimeout) else
            ErrorCode.MODEL_DOWNLOAD_FAILED if isinstance(exc, DownloadError) else
            ErrorCode.MODEL_ERROR if isinstance(exc, ManifestError) else ErrorCode.MODELS_UNAVAILABLE)
    details: dict[str, Any] = {"models": names}
    if exc.model:
        details["model"] = exc.model
    if isinstance(exc, DownloadError) and exc.url:
        details["url"] = exc.url
    log(logger, logging.ERROR, "models unavailable", code=code, error=str(exc))
    return error_output(code, f"models not available: {exc}", details)


async def device_summary(settings: Settings) -> dict[str, Any]:
    """Device facts without importing torch: GPUs from nvidia-smi (absent is fine), CPU, RAM, disk."""
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        with open("/proc/meminfo") as f:
            mem = {line.split(":")[0]: line.split(":")[1].strip() for line in f if ":" in line}
        out["memory_total_mb"] = int(mem["MemTotal"].split()[0]) // 1024
        out["memory_available_mb"] = int(mem["MemAvailable"].split()[0]) // 1024
    except (OSError, KeyError, ValueError):
        pass
    root = Path(settings.model_dir)
    probe = next((p for p in (root, *root.parents) if p.exists()), None)
    if probe is not None:
        du = shutil.disk_usage(probe)
        out["model_dir"] = str(root)
        out["model_dir_free_gb"] = round(du.free / 1e9, 1)
    out["gpus"] = await _nvidia_smi()
    return out


async def _nvidia_smi() -> list[dict[str, Any]]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        proc = await asyncio.create_subprocess_exec(
            exe, "--query-gpu=name,memory.total,memory.used,driver_version", "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    except (OSError, asyncio.TimeoutError):
        return []
    gpus = []
    for line in stdout.decode(errors="replace").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append({"name": parts[0], "memory_total_mb": _int(parts[1]), "memory_used_mb": _int(parts[2]),
                         "driver": parts[3]})
    return gpus


def _int(s: str) -> int | None:
    try:
        return int(float(s))
    except ValueError:
        return None
