"""Building the Worker from Settings and handing it to the runpod SDK.

The Worker lives on its own event loop in a background thread (`LoopThread`): the engine start and
the model prefetch begin at boot, before `runpod.serverless.start` (whose loop only exists once it
runs), and every job submitted by the SDK's async handler runs on that same loop, so the store,
the engine's connections and the prefetch task are shared across jobs. Cancelling the SDK's
handler task cancels the job's task on the worker loop, which interrupts the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
from typing import Any, Awaitable, Callable, TypeVar

from i2v_worker.config import Settings
from i2v_worker.logs import log
from i2v_worker.worker.handler import ProgressSink, Worker

logger = logging.getLogger("i2v_worker.worker")
T = TypeVar("T")
# runpod 1.12 rp_fitness: "true" skips the automatic system checks (memory, disk, network, torch CUDA).
SKIP_SDK_SYSTEM_CHECKS = "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"


def build_worker(settings: Settings, *, progress_sink: ProgressSink | None = None) -> Worker:
    """The production wiring: the store of `settings`, the engine `settings.engine` names."""
    from i2v_worker.engines import create_engine
    from i2v_worker.store import ModelStore

    if settings.preset == "tiny":
        _ensure_tiny_sources(settings)
    store = ModelStore.from_settings(settings)
    engine = create_engine(settings, store)
    return Worker(settings, store, engine, progress_sink=progress_sink)


def _ensure_tiny_sources(settings: Settings) -> None:
    """The `tiny` preset's sources are files the project generates (`file://${I2V_TINY_DIR}/...`):
    write them when missing, so a container without a network volume (RunPod Hub's test job)
    runs the tiny job too. A few seconds, a few MB; existing files are kept."""
    tiny_dir = settings.manifest_vars.get("I2V_TINY_DIR")
    if not tiny_dir:
        return  # the store reports the undefined ${I2V_TINY_DIR} with the entry that needs it
    from pathlib import Path

    from i2v_worker.tiny import generate_tiny_models

    generate_tiny_models(Path(tiny_dir))


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str = "i2v-worker-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    async def run(self, coro: Awaitable[T]) -> T:
        """Await `coro` on this loop from another loop; cancelling the caller cancels it here."""
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def sdk_handler(worker: Worker, loop: LoopThread) -> Callable[[dict], Awaitable[dict]]:
    async def handler(job: dict) -> dict:
        return await loop.run(worker.handle(job))

    return handler


def _log_boot(fut: concurrent.futures.Future) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        log(logger, logging.ERROR, "engine did not start at boot; each job will try again", error=str(exc))
    else:
        log(logger, logging.INFO, "engine ready")


def serve(settings: Settings, sdk_args: list[str]) -> int:
    """The container's entry: boot the worker (engine + prefetch), then run the runpod SDK loop.

    The SDK's automatic system checks are skipped (they import torch and time a matmul in THIS
    process, beside ComfyUI's CUDA context); the worker's own cheap checks (worker/fitness.py) are
    registered instead. RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=false in the environment brings them back."""
    os.environ.setdefault(SKIP_SDK_SYSTEM_CHECKS, "true")  # read by the SDK when its checks run
    import runpod

    from i2v_worker.worker import fitness

    fitness.register(settings)

    local_api = "--rp_serve_api" in sdk_args
    # progress_update posts to RunPod's job API; the local FastAPI has none to post to.
    sink: ProgressSink | None = None if local_api else runpod.serverless.progress_update
    worker = build_worker(settings, progress_sink=sink)
    loop = LoopThread()
    log(logger, logging.INFO, "worker booting", engine=settings.engine, preset=settings.preset,
        prefetch=settings.prefetch, store=str(settings.model_dir))
    loop.submit(worker.start()).add_done_callback(_log_boot)
    sys.argv = [sys.argv[0], *sdk_args]  # the SDK parses its own arguments from sys.argv
    try:
        runpod.serverless.start({"handler": sdk_handler(worker, loop)})
    finally:
        try:
            loop.submit(worker.close()).result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log(logger, logging.WARNING, "worker close failed", error=str(exc))
        loop.stop()
    return 0


async def run_one(worker: Worker, job: dict[str, Any]) -> dict[str, Any]:
    """One local job through the same `Worker.handle`: no boot prefetch (only what the job needs
    is fetched); the handler starts the engine while it prepares the image and the models."""
    try:
        return await worker.handle(job)
    finally:
        await worker.close()
