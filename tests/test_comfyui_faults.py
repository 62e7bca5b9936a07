"""Faults around a REAL ComfyUI that the engine supervises: a caller's timeout (how the worker's
deadline reaches the engine: the engine has none of its own), cancellation, ComfyUI killed mid-job,
and the websocket dropping mid-job (through a loopback proxy that cuts it).

Slow jobs (hundreds of steps) are never meant to finish: each is stopped once sampling has begun.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
import pytest_asyncio

from i2v_worker.engines.base import EngineError, EngineProgress
from i2v_worker.engines.comfyui import ComfyUIEngine
from tests.support.comfyui import tiny_models_dir  # noqa: F401  (session fixture)
from tests.support.comfyui_engine import OFFLINE_ENV, EngineEnv, files_under, start_engine_env
from tests.support.ws_proxy import WebsocketCuttingProxy

pytestmark = [pytest.mark.comfyui, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory, tiny_models_dir) -> EngineEnv:  # noqa: F811
    env = await start_engine_env(tmp_path_factory.mktemp("comfyui_faults"), tiny_models_dir)
    try:
        # warm the model cache, so the slow jobs below reach sampling quickly
        await env.engine.generate(env.request("warmup"), lambda e: None)
        yield env
    finally:
        await env.engine.close()


def sampling_started() -> tuple[asyncio.Event, list[EngineProgress], callable]:
    started = asyncio.Event()
    events: list[EngineProgress] = []

    def on_progress(e: EngineProgress) -> None:
        events.append(e)
        started.set()

    return started, events, on_progress


async def assert_next_job_succeeds(env: EngineEnv, job_id: str) -> None:
    video = await env.engine.generate(env.request(job_id), lambda e: None)
    assert video.frames == 5


def interrupted(entry: dict | None) -> bool:
    messages = (entry or {}).get("status", {}).get("messages", [])
    return any(kind == "execution_interrupted" for kind, _ in messages)


def assert_stopped_in_comfyui(env: EngineEnv, job_id: str) -> None:
    """A 400-step job is neither queued nor running any more: ComfyUI interrupted it (history
    says so) or, when the deadline hit before it started, dropped it from the queue (no history)."""
    assert env.queue_ids() == set()
    entry = env.history_of_job(job_id)
    assert entry is None or interrupted(entry), entry["status"]


@pytest.mark.timeout(300)
async def test_cancellation_interrupts_comfyui_and_next_job_runs(env: EngineEnv):
    started, events, on_progress = sampling_started()
    task = asyncio.create_task(env.engine.generate(env.slow_request("cancel-1"), on_progress))
    await asyncio.wait_for(started.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the interrupt reached ComfyUI: the prompt is no longer queued or running, and its history
    # records the interruption long before its 400 steps could have finished
    entry = None
    for _ in range(100):
        entry = env.history_of_job("cancel-1")
        if entry:
            break
        await asyncio.sleep(0.1)
    assert interrupted(entry), entry and entry.get("status")
    assert env.queue_ids() == set()
    assert files_under(env.engine.input_dir) == []
    await assert_next_job_succeeds(env, "after-cancel-1")


@pytest.mark.timeout(300)
async def test_cancellation_while_queued_removes_the_prompt(env: EngineEnv):
    """Job B waits in ComfyUI's queue behind job A; cancelling B deletes it from the queue."""
    started, _, on_progress = sampling_started()
    task_a = asyncio.create_task(env.engine.generate(env.slow_request("queued-a"), on_progress))
    await asyncio.wait_for(started.wait(), 120)
    task_b = asyncio.create_task(env.engine.generate(env.slow_request("queued-b"), lambda e: None))
    for _ in range(100):  # until B is in ComfyUI's pending queue
        await asyncio.sleep(0.1)
        if len(env.queue_ids()) == 2:
            break
    assert len(env.queue_ids()) == 2
    task_b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task_b
    assert len(env.queue_ids()) == 1  # only A remains, still running
    assert env.history_of_job("queued-b") is None  # B never ran
    task_a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task_a
    assert env.queue_ids() == set()
    await assert_next_job_succeeds(env, "after-queued")


@pytest.mark.timeout(300)
async def test_callers_timeout_interrupts(env: EngineEnv):
    """The worker's deadline (worker/handler.py, its one owner) is an asyncio.timeout around
    generate: ComfyUI is interrupted for the prompt and the next job runs normally."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(4):
            await env.engine.generate(env.slow_request("outer-timeout-1"), lambda e: None)
    assert_stopped_in_comfyui(env, "outer-timeout-1")
    await assert_next_job_succeeds(env, "after-outer-timeout-1")


@pytest.mark.timeout(300)
async def test_websocket_drop_falls_back_to_history_polling(env: EngineEnv, caplog):
    """A second engine attached to the same real ComfyUI through a proxy that cuts the websocket
    once sampling has started: the job still completes via /history polling."""
    port = int(env.engine.base_url.rsplit(":", 1)[1])
    proxy = await WebsocketCuttingProxy("127.0.0.1", port).start()
    # attached: it cannot know ComfyUI's folders unless told (here, for its best-effort cleanup)
    folders = f"--input-directory {env.engine.input_dir} --output-directory {env.engine.output_dir}"
    settings = env.settings.model_copy(update={"comfyui_url": proxy.url, "comfyui_args": folders})
    engine = ComfyUIEngine(settings, None, env=OFFLINE_ENV)
    cut = asyncio.Event()

    def on_progress(e: EngineProgress) -> None:
        if not cut.is_set() and proxy.cut_websockets():
            cut.set()

    try:
        await engine.start()
        caplog.set_level(logging.WARNING, logger="i2v_worker")
        req = env.request("wsdrop-1", steps=12, high_noise_steps=6, length=9)
        video = await asyncio.wait_for(engine.generate(req, on_progress), 240)
        assert cut.is_set() and proxy.cuts == 1
        assert any("polling /history" in r.getMessage() for r in caplog.records)
        assert video.frames == 9
        assert files_under(env.engine.input_dir) == [] and files_under(env.engine.output_dir) == []
    finally:
        await engine.close()
        await proxy.close()


@pytest.mark.timeout(420)
async def test_comfyui_killed_mid_job_gives_crash_error_then_restarts(env: EngineEnv):
    engine = env.engine
    old_pid = engine.process.pid
    started, _, on_progress = sampling_started()
    task = asyncio.create_task(engine.generate(env.slow_request("kill-1"), on_progress))
    await asyncio.wait_for(started.wait(), 120)
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(EngineError) as info:
        await asyncio.wait_for(task, 30)
    err = info.value
    assert err.code == "engine_crashed"
    assert "ComfyUI exited during the job (killed by signal SIGKILL)" in err.message
    assert err.log_tail and "got prompt" in err.log_tail  # ComfyUI's own log lines
    # restarted for the next job (waits for the new child to be ready)
    await assert_next_job_succeeds(env, "after-kill-1")
    assert engine.process.pid != old_pid
    health = await engine.health()
    assert health["ready"] is True and health["restarts"] == 1
    assert health["last_exit"]["how"] == "killed by signal SIGKILL"


@pytest.mark.timeout(120)
async def test_close_terminates_the_child(env: EngineEnv):
    """Last test of the module: close() stops ComfyUI (SIGTERM, SIGKILL after the grace period)."""
    proc = env.engine.process
    assert proc.alive
    await env.engine.close()
    assert not proc.alive
    assert proc.returncode in (0, -signal.SIGTERM, -signal.SIGKILL)
    health = await env.engine.health()
    assert health["ready"] is False and health["pid"] is None
