"""Follow one queued prompt to its end and read its outcome (websocket first, /history as fallback).

`follow` reads the job's websocket messages (progress, outputs, terminal message) and returns a
history-shaped entry `{"status": {...}, "outputs": {...}}`; if the socket drops before a terminal
message it polls `/history/{id}` instead. `check_outcome` turns that entry into the video's file
reference or a readable `EngineError`. Transport failures (`ComfyUIUnreachable`,
`ComfyUIHTTPError`) propagate: the engine decides whether ComfyUI crashed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

from i2v_worker.engines.base import EngineError, EngineProgress
from i2v_worker.engines.comfyui import errors, graph as graph_mod
from i2v_worker.engines.comfyui.client import ComfyUIClient, iter_messages
from i2v_worker.logs import log
from i2v_worker.error_codes import ErrorCode

logger = logging.getLogger("i2v_worker.engines.comfyui")

POLL_MAX_S = 0.25
TERMINAL = frozenset({"execution_success", "execution_error", "execution_interrupted"})
FRAMES_SUFFIXES = (".png",)  # the graph's SaveAnimatedPNG output


@dataclass
class PromptState:
    """What the engine saw of one ComfyUI prompt while following it (times are time.monotonic()).

    Not the RunPod job status (that is `i2v_worker.client.JobState`)."""

    prompt_id: str
    submitted: float = 0.0
    started: float | None = None
    finished: float | None = None
    save_started: float | None = None  # when ComfyUI began writing the frames file
    last_step: int = 0
    terminal: str | None = None  # the message type that ended it
    ws_dropped: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)  # node -> ui output, from `executed`
    from_history: bool = True  # False when the websocket alone proved success (fast path)


async def follow(
    client: ComfyUIClient,
    ws: aiohttp.ClientWebSocketResponse | None,
    state: PromptState,
    graph: dict[str, Any],
    *,
    total_steps: int,
    emit: Callable[[EngineProgress], None],
    fast_path: bool,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Follow the prompt to its end; returns its history entry.

    Progress: ComfyUI's `progress` max is per sampler segment (2 + 2 for a 4-step split), so each
    sampler's value is offset by its `start_at_step` to give 1..total over both experts.
    `fast_path`: on `execution_success` with the video already named by `executed`, return at once
    instead of confirming with /history (ComfyUI's post-prompt gc.collect() holds the GIL and can
    stall its HTTP server for up to ~1 s; the socket has already told us everything).
    """
    offsets = {nid: int(graph[nid]["inputs"].get("start_at_step", 0))
               for nid in graph_mod.SAMPLER_NODES if nid in graph}
    if ws is not None:
        try:
            async for msg in iter_messages(ws):
                data = msg.data
                if data.get("prompt_id") not in (None, state.prompt_id):
                    continue
                now = clock()
                if msg.type == "execution_start":
                    state.started = now
                elif msg.type == "progress" and data.get("node") in offsets:
                    step = offsets[data["node"]] + int(data.get("value", 0))
                    if step > state.last_step:
                        state.last_step = step
                        emit(EngineProgress("sampling", min(step, total_steps), total_steps))
                elif msg.type == "executed" and isinstance(data.get("output"), dict):
                    state.outputs[str(data.get("node"))] = data["output"]
                elif msg.type == "executing":
                    node = data.get("node")
                    if node is None and data.get("prompt_id") == state.prompt_id:
                        state.terminal = state.terminal or "executing_null"
                        break
                    if node == graph_mod.OUTPUT_NODE:
                        state.save_started = state.save_started or now
                elif msg.type in TERMINAL:
                    state.finished = now
                    state.terminal = msg.type
                    if msg.type == "execution_success" and fast_path and find_frames_file(state.outputs):
                        state.from_history = False
                        return {"status": {"status_str": "success", "completed": True, "messages": []},
                                "outputs": dict(state.outputs)}
                    # ComfyUI stores the history entry right after this and then sends
                    # executing{node: null}: wait briefly for that instead of polling.
                    await _await_executing_null(ws, state.prompt_id)
                    break
        except (aiohttp.ClientError, ConnectionError) as exc:
            log(logger, logging.WARNING, "websocket failed mid-job", error=repr(exc))
        if state.terminal is None:
            state.ws_dropped = True
            log(logger, logging.WARNING, "websocket closed before the job ended, polling /history",
                prompt_id=state.prompt_id)
    return await poll_history(client, state.prompt_id)


async def _await_executing_null(ws: aiohttp.ClientWebSocketResponse, prompt_id: str, grace_s: float = 2.0) -> None:
    async def wait() -> None:
        async for msg in iter_messages(ws):
            if msg.type == "executing" and msg.data.get("node") is None and msg.data.get("prompt_id") == prompt_id:
                return

    try:
        await asyncio.wait_for(wait(), timeout=grace_s)
    except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
        pass


async def poll_history(client: ComfyUIClient, prompt_id: str) -> dict[str, Any]:
    """Poll /history/{id} (20 ms doubling to 250 ms) until the prompt has an entry."""
    delay = 0.02
    while True:
        entry = await client.history(prompt_id)
        status = (entry or {}).get("status") or {}
        if entry and (status.get("completed") or status.get("status_str") in ("success", "error")):
            return entry
        await asyncio.sleep(delay)
        delay = min(POLL_MAX_S, delay * 2)


def check_outcome(history: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """The frames file's `{filename, subfolder, type}`, or the readable error of a failed prompt."""
    status = history.get("status") or {}
    messages = status.get("messages") or []
    for kind, data in messages:
        if kind == "execution_error":
            raise errors.execution_error(data, graph)
    for kind, _data in messages:
        if kind == "execution_interrupted":
            raise EngineError("ComfyUI interrupted the job (an /interrupt that did not come from this worker?)",
                              code=ErrorCode.CANCELLED)
    if status.get("status_str") == "error":
        raise EngineError(f"ComfyUI reported an error without details: {status}", code=ErrorCode.ENGINE_ERROR, details=status)
    found = find_frames_file(history.get("outputs") or {})
    if found is None:
        raise EngineError("ComfyUI finished but listed no frames file (SaveAnimatedPNG node "
                          f"{graph_mod.OUTPUT_NODE!r})", code=ErrorCode.ENGINE_ERROR, details=history.get("outputs"))
    return found


def find_frames_file(outputs: dict[str, Any]) -> dict[str, Any] | None:
    """SaveAnimatedPNG lists its one file under `images` (with `animated`)."""
    out = outputs.get(graph_mod.OUTPUT_NODE) or {}
    for item in out.get("images") or []:
        if isinstance(item, dict) and str(item.get("filename", "")).lower().endswith(FRAMES_SUFFIXES):
            return item
    return None


def inference_seconds(state: PromptState, history: dict[str, Any] | None) -> float:
    """ComfyUI's own timestamps (ms) from the history status, else what the websocket showed."""
    stamps: dict[str, float] = {}
    for kind, data in ((history or {}).get("status") or {}).get("messages") or []:
        if isinstance(data, dict) and "timestamp" in data:
            stamps[kind] = float(data["timestamp"])
    if "execution_start" in stamps and "execution_success" in stamps:
        return max(0.0, (stamps["execution_success"] - stamps["execution_start"]) / 1000.0)
    if state.started is not None and state.finished is not None:
        return state.finished - state.started
    return 0.0
