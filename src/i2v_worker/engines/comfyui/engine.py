"""`ComfyUIEngine`: runs one job on ComfyUI, supervising the ComfyUI child (or attaching to one).

Per job: upload the image under a unique name -> build the graph (graph.build_graph, unique output
prefix) -> check the model names against /object_info -> open the websocket -> `POST /prompt` with
our own prompt id -> follow progress until a terminal message (falling back to polling /history if
the socket drops) -> confirm with /history -> fetch the lossless frames file (SaveAnimatedPNG) via
/view -> read it back as uint8 frames (comfyui/frames.py) -> delete the job's input and output
files in ComfyUI's folders. The worker encodes the video (i2v_worker.video.encode).

Fast path (supervised only): when the websocket itself delivered `execution_success` and the
SaveAnimatedPNG output (`executed`), the file is moved straight out of ComfyUI's output folder and
the /history confirmation is skipped: ComfyUI runs gc.collect() after a prompt at most every 10 s,
which holds the GIL and stalls its HTTP server for up to ~1 s on CPU. Every other case (socket
dropped, errors, interruptions, attached mode) is confirmed with /history and downloaded via /view.

Deadline: not here. The worker owns the job's deadline (worker/handler.py); it, RunPod's cancel or
any caller's own `asyncio.timeout` stop a job by cancelling the task awaiting `generate`, which
interrupts ComfyUI for this prompt (and waits briefly until ComfyUI no longer runs it) before
`CancelledError` propagates. `clock` (injectable) times the stages.

Crash: while a job runs, the child's exit (or a refused connection) fails the job at once with
`EngineError(code=ErrorCode.ENGINE_CRASHED)` carrying the log tail; the supervisor restarts ComfyUI in the
background for the next job.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol

import aiohttp

from i2v_worker.config import Settings
from i2v_worker.engines.base import EngineError, EngineProgress, GeneratedVideo, GenerationRequest, ProgressFn
from i2v_worker.engines.comfyui import errors, graph as graph_mod
from i2v_worker.engines.comfyui.client import (
    ComfyUIClient,
    ComfyUIHTTPError,
    ComfyUIUnreachable,
    PromptRejected,
)
from i2v_worker.engines.comfyui.frames import read_frames
from i2v_worker.engines.comfyui.job import PromptState, check_outcome, follow, inference_seconds
from i2v_worker.engines.comfyui.process import (ComfyUIProcess, ProcessSpec, build_argv, describe_exit,
                                                 stray_extra_model_paths)
from i2v_worker.logs import log
from i2v_worker.error_codes import ErrorCode

logger = logging.getLogger("i2v_worker.engines.comfyui")

DEFAULT_COMFYUI_PATH = Path("/opt/ComfyUI")
UPLOAD_SUBFOLDER = "i2v-worker"  # our files in ComfyUI's input/ and output/ live under this
ATTACH_WAIT_S = 60.0
MAX_EAGER_RESTARTS, CRASH_WINDOW_S = 5, 600.0  # background restarts allowed per window
INTERRUPT_CONFIRM_S = 5.0
POLL_S = 0.25


class ExtraPathsProvider(Protocol):
    def comfyui_extra_paths(self) -> Path: ...


def _cuda_present() -> bool:
    """Cheap check without importing torch: the NVIDIA driver's device nodes."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def safe_name(job_id: str) -> str:
    """A job id as a file-name fragment (RunPod ids are safe already; anything else is mapped)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:80].lstrip(".") or "job"
    return f"{cleaned}-{uuid.uuid4().hex[:8]}"


def combo_options(object_info: dict[str, Any], class_type: str, input_name: str) -> list[Any] | None:
    """Options of a combo input in /object_info: old `[[...], {...}]` or V3 `["COMBO", {"options": [...]}]`."""
    node = object_info.get(class_type) or {}
    inputs = node.get("input") or {}
    for group in ("required", "optional"):
        spec = (inputs.get(group) or {}).get(input_name)
        if not spec:
            continue
        head = spec[0] if isinstance(spec, (list, tuple)) else None
        if isinstance(head, list):
            return head
        if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
            options = spec[1].get("options")
            return list(options) if isinstance(options, (list, tuple)) else None
    return None


class ComfyUIEngine:
    """See the module docstring. `store` provides `comfyui_extra_paths()` (the model store)."""

    name = "comfyui"

    def __init__(
        self,
        settings: Settings,
        store: ExtraPathsProvider | None,
        *,
        work_dir: Path | None = None,
        python: str = sys.executable,
        cuda_available: Callable[[], bool] = _cuda_present,
        env: dict[str, str] | None = None,
        stop_grace_s: float = 10.0,
        required_nodes: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.settings = settings
        self.store = store
        # node class -> providing package (graph.REQUIRED_NODES); checked against /object_info
        self.required_nodes = dict(required_nodes if required_nodes is not None else graph_mod.REQUIRED_NODES)
        self.attached = bool(settings.comfyui_url)
        self.base_url = (settings.comfyui_url or f"http://127.0.0.1:{settings.comfyui_port}").rstrip("/")
        self.comfyui_path = Path(settings.comfyui_path or DEFAULT_COMFYUI_PATH)
        self._python = python
        self._cuda_available = cuda_available
        self._env = dict(env or {})
        self._stop_grace_s = stop_grace_s
        self._extra_args = shlex.split(settings.comfyui_args or "")
        self._work_dir = Path(work_dir) if work_dir else None
        self._own_work_dir = work_dir is None
        self.input_dir, self.output_dir = self._comfyui_dirs()

        self._session: aiohttp.ClientSession | None = None
        self._client: ComfyUIClient | None = None
        self._proc: ComfyUIProcess | None = None
        self._ready_proc: ComfyUIProcess | None = None  # the process that passed readiness + node check
        self._attached_ready = False
        self._start_lock = asyncio.Lock()
        self._monitor: asyncio.Task | None = None
        self._restart_task: asyncio.Task | None = None
        self._closing = False
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None
        self._stats: dict[str, Any] = {}
        self._object_info: dict[str, Any] = {}
        self.missing_nodes: list[str] = []
        self._start_error: EngineError | None = None
        self._background: set[asyncio.Task] = set()
        self._recent_exits: list[float] = []  # monotonic times of unexpected exits (crash-loop guard)

    # --- directories ---------------------------------------------------------------------------
    def _comfyui_dirs(self) -> tuple[Path | None, Path | None]:
        """ComfyUI's input and output folders, when this worker can know them."""
        given_in = _flag_value(self._extra_args, "--input-directory")
        given_out = _flag_value(self._extra_args, "--output-directory")
        if self.attached:
            # Attached: only a best guess (COMFYUI_PATH's folders, when set), for best-effort cleanup.
            base = Path(self.settings.comfyui_path) if self.settings.comfyui_path else None
            return (Path(given_in) if given_in else base / "input" if base else None,
                    Path(given_out) if given_out else base / "output" if base else None)
        if self._work_dir is None:
            return None, None  # created with the first child (_spawn), so an unused engine leaves nothing
        return (Path(given_in) if given_in else self._work_dir / "input",
                Path(given_out) if given_out else self._work_dir / "output")

    @property
    def log_file(self) -> Path | None:
        return None if self.attached or self._work_dir is None else self._work_dir / "comfyui.log"

    @property
    def process(self) -> ComfyUIProcess | None:
        return self._proc

    # --- lifecycle -----------------------------------------------------------------------------
    def _http(self) -> ComfyUIClient:
        if self._session is None or self._session.closed:
            # trust_env off: ComfyUI is on loopback; an HTTP(S)_PROXY must never capture it.
            self._session = aiohttp.ClientSession(trust_env=False)
            self._client = ComfyUIClient(self.base_url, self._session)
        assert self._client is not None
        return self._client

    @property
    def ready(self) -> bool:
        if self.attached:
            return self._attached_ready
        return self._ready_proc is not None and self._ready_proc is self._proc and self._proc.alive

    async def start(self) -> None:
        """Start (or attach to) ComfyUI and check its node classes. Missing nodes do not raise here
        (health shows them; every job fails with the install hint); a ComfyUI that cannot start does."""
        async with self._start_lock:
            if self._closing:
                raise EngineError("the ComfyUI engine is closed", code=ErrorCode.ENGINE_UNAVAILABLE)
            if self.ready:
                return
            client = self._http()
            if self.attached:
                await self._attach(client)
            else:
                await self._spawn(client)
            await self._after_ready(client)

    async def _attach(self, client: ComfyUIClient) -> None:
        deadline = self._clock() + ATTACH_WAIT_S
        while not await client.ping():
            if self._clock() > deadline:
                raise EngineError(
                    f"ComfyUI at {self.base_url} (COMFYUI_URL) did not answer /system_stats for "
                    f"{ATTACH_WAIT_S:.0f}s; check that it runs and the URL is right",
                    code=ErrorCode.ENGINE_UNAVAILABLE,
                )
            await asyncio.sleep(POLL_S)
        self._attached_ready = True

    async def _spawn(self, client: ComfyUIClient) -> None:
        if self._proc is not None and self._proc.alive:  # started but not ready (e.g. a failed check)
            await self._proc.stop(self._stop_grace_s)
        if not (self.comfyui_path / "main.py").is_file():
            raise EngineError(
                f"no ComfyUI at {self.comfyui_path} (main.py missing); set COMFYUI_PATH to a ComfyUI "
                "checkout or COMFYUI_URL to attach to a running ComfyUI",
                code=ErrorCode.ENGINE_UNAVAILABLE,
            )
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="i2v-comfyui-"))
            self.input_dir, self.output_dir = self._comfyui_dirs()
        assert self.input_dir and self.output_dir
        for d in (self.input_dir, self.output_dir, self._work_dir / "temp", self._work_dir / "user"):
            d.mkdir(parents=True, exist_ok=True)
        stray = stray_extra_model_paths(self.comfyui_path)
        if stray is not None:
            log(logger, logging.WARNING, "ComfyUI will also load model folders from a config in its tree "
                "(it reads that file on every start); remove it, or use a copy without it "
                "(python deploy/local_comfyui.py DIR for the vendored tree)", file=str(stray))
        extra_paths = self.store.comfyui_extra_paths() if self.store is not None else None
        if self.settings.device == "cpu":
            cpu = True
        elif self.settings.device.startswith("cuda"):
            cpu = False
        else:
            cpu = not self._cuda_available()
        argv = build_argv(
            python=self._python, comfyui_path=self.comfyui_path, port=self.settings.comfyui_port,
            extra_model_paths=extra_paths, input_dir=self.input_dir, output_dir=self.output_dir,
            temp_dir=self._work_dir / "temp", cpu=cpu, extra_args=self._extra_args,
            user_dir=self._work_dir / "user",
        )
        assert self.log_file is not None
        proc = ComfyUIProcess(ProcessSpec(argv=argv, cwd=self.comfyui_path, log_file=self.log_file,
                                          port=self.settings.comfyui_port, env=self._env))
        self._proc = proc
        await proc.start()
        t0 = self._clock()
        await proc.wait_ready(client.ping)
        log(logger, logging.INFO, "ComfyUI ready", pid=proc.pid, ready_s=round(self._clock() - t0, 2),
            restarts=self.restarts)
        self._monitor = asyncio.create_task(self._watch(proc), name="comfyui-monitor")

    async def _after_ready(self, client: ComfyUIClient) -> None:
        try:
            self._stats = await client.system_stats()
            self._object_info = await client.object_info()
        except (ComfyUIUnreachable, ComfyUIHTTPError) as exc:
            raise self._unreachable(exc) from exc
        self.missing_nodes = [cls for cls in self.required_nodes if cls not in self._object_info]
        if self.missing_nodes:
            log(logger, logging.ERROR, "ComfyUI lacks node classes the graph needs",
                missing=",".join(self.missing_nodes), hint=self._missing_nodes_error().message)
        self._ready_proc = self._proc

    async def _watch(self, proc: ComfyUIProcess) -> None:
        """Restart ComfyUI once, in the background, when it exits unexpectedly."""
        code = await proc.wait_exit()
        if self._closing or proc.stopping or proc is not self._proc:
            return
        now = self._clock()
        self.last_exit = {"how": describe_exit(code), "at": time.time(), "log_tail": proc.log_tail(40)}
        self._recent_exits = [t for t in self._recent_exits if now - t < CRASH_WINDOW_S] + [now]
        if len(self._recent_exits) > MAX_EAGER_RESTARTS:
            # A crash loop: stop restarting on our own; the next job tries again (and reports).
            log(logger, logging.ERROR, "ComfyUI keeps exiting; not restarting it until the next job",
                exits=len(self._recent_exits), window_s=CRASH_WINDOW_S)
            return
        self._restart_task = asyncio.create_task(self._restart(), name="comfyui-restart")

    async def _restart(self) -> None:
        self.restarts += 1
        log(logger, logging.WARNING, "restarting ComfyUI", restarts=self.restarts)
        try:
            await self.start()
            self._start_error = None
        except EngineError as exc:
            self._start_error = exc
            log(logger, logging.ERROR, "ComfyUI restart failed", error=exc.message)

    async def _ensure_ready(self) -> None:
        restart = self._restart_task
        if restart is not None and not restart.done():
            await asyncio.shield(restart)
        if not self.ready:
            await self.start()
        if self.missing_nodes:
            raise self._missing_nodes_error()

    def _missing_nodes_error(self) -> EngineError:
        failures = []
        if self._proc is not None:
            failures = [line.strip() for line in self._proc.tail_lines() if "IMPORT FAILED" in line][:5]
        return errors.missing_nodes_error(self.missing_nodes, self.required_nodes, failures)

    async def close(self) -> None:
        self._closing = True
        for task in (self._restart_task, self._monitor):
            if task is not None and not task.done():
                task.cancel()
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)
        if self._proc is not None:
            await self._proc.stop(self._stop_grace_s)
        if self._session is not None:
            await self._session.close()
        self._ready_proc = None
        if self._own_work_dir and self._work_dir is not None:
            self._remove_work_dir_keeping_log()

    def _remove_work_dir_keeping_log(self) -> None:
        """The work folder goes (inputs, outputs, temp, ComfyUI's user folder and database); the
        ComfyUI log stays where the start line said it is, for reading after the run."""
        assert self._work_dir is not None
        log_file = self.log_file
        if log_file is None or not log_file.is_file():
            shutil.rmtree(self._work_dir, ignore_errors=True)
            return
        for entry in self._work_dir.iterdir():
            if entry == log_file:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        log(logger, logging.INFO, "ComfyUI log kept", log_file=str(log_file))

    async def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "engine": self.name,
            "mode": "attached" if self.attached else "supervised",
            "url": self.base_url,
            "ready": False,
            "comfyui_version": None,
            "pid": self._proc.pid if self._proc and self._proc.alive else None,
            "uptime_s": round(self._proc.uptime_s() or 0.0, 1) if self._proc and self._proc.alive else None,
            "started_at": self._proc.started_at if self._proc and self._proc.alive else None,  # epoch s
            "devices": [],
            "missing_nodes": list(self.missing_nodes),
            "restarts": self.restarts,
        }
        if self.last_exit:
            info["last_exit"] = {k: v for k, v in self.last_exit.items() if k != "log_tail"}
        if self._start_error:
            info["error"] = self._start_error.message
        if self.log_file:
            info["log_file"] = str(self.log_file)
        if not self.ready and not self.attached:
            return info
        try:
            stats = await self._http().system_stats()
        except (ComfyUIUnreachable, ComfyUIHTTPError) as exc:
            info["error"] = f"ComfyUI at {self.base_url} does not answer: {exc}"
            return info
        self._stats = stats
        system = stats.get("system") or {}
        info["comfyui_version"] = system.get("comfyui_version")
        info["devices"] = [
            {k: d.get(k) for k in ("name", "type", "index", "vram_total", "vram_free")}
            for d in stats.get("devices") or []
        ]
        info["ready"] = self.ready or self.attached
        return info

    # --- one job -------------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest, progress: ProgressFn) -> GeneratedVideo:
        t_begin = self._clock()
        await self._ensure_ready()
        client = self._http()
        proc = self._proc
        t_ready = self._clock()
        stem = safe_name(request.job_id)
        uploaded: str | None = None
        state = PromptState(prompt_id=str(uuid.uuid4()))
        queued = False
        history: dict[str, Any] | None = None
        try:
            try:
                up = await client.upload_image(f"{stem}.png", request.image_png, subfolder=UPLOAD_SUBFOLDER)
            except (ComfyUIUnreachable, ComfyUIHTTPError) as exc:
                raise await self._transport_failure(exc, proc)
            uploaded = f"{up['subfolder']}/{up['name']}" if up.get("subfolder") else up["name"]
            end_uploaded = None
            if request.end_image_png is not None:
                try:
                    up = await client.upload_image(f"{stem}_end.png", request.end_image_png, subfolder=UPLOAD_SUBFOLDER)
                except (ComfyUIUnreachable, ComfyUIHTTPError) as exc:
                    raise await self._transport_failure(exc, proc)
                end_uploaded = f"{up['subfolder']}/{up['name']}" if up.get("subfolder") else up["name"]
            t_uploaded = self._clock()

            model_names = {role: path.name for role, (_entry, path) in request.models.items()}
            model_paths = {path.name: path for _entry, path in request.models.values()}
            model_paths.update({lora.name: lora.path for lora in request.loras})
            try:
                graph = graph_mod.build_graph(request, image_name=uploaded,
                                              filename_prefix=f"{UPLOAD_SUBFOLDER}/{stem}", model_names=model_names,
                                              end_image_name=end_uploaded)
            except ValueError as exc:
                raise EngineError(f"cannot build the ComfyUI graph: {exc}", code=ErrorCode.INVALID_GRAPH) from None
            await self._check_models(client, graph, model_paths)

            client_id = uuid.uuid4().hex
            ws = None
            try:
                ws = await client.connect_ws(client_id)
            except ComfyUIUnreachable as exc:
                log(logger, logging.WARNING, "websocket unavailable, polling /history", error=str(exc))
            try:
                state.submitted = self._clock()
                queued = True  # from here on a cancellation must reach ComfyUI
                try:
                    await client.queue_prompt(graph, client_id=client_id, prompt_id=state.prompt_id)
                except PromptRejected as rej:
                    raise errors.prompt_rejected_error(rej.body, graph, model_paths) from None
                except (ComfyUIUnreachable, ComfyUIHTTPError) as exc:
                    raise await self._transport_failure(exc, proc)
                emit = lambda event: self._emit(progress, event)  # noqa: E731
                try:
                    history = await self._race_exit(
                        follow(client, ws, state, graph, total_steps=request.steps, emit=emit,
                               fast_path=not self.attached, clock=self._clock), proc)
                except (ComfyUIUnreachable, ComfyUIHTTPError) as exc:
                    raise await self._transport_failure(exc, proc)
            finally:
                if ws is not None:
                    self._close_in_background(ws)
            queued = False
            t_done = self._clock()

            saved = check_outcome(history, graph)
            request.output_dir.mkdir(parents=True, exist_ok=True)
            dest = request.output_dir / f"{stem}.png"
            try:
                if not await asyncio.to_thread(self._take_local_output, saved, dest):
                    try:
                        await client.download(filename=saved["filename"], subfolder=saved.get("subfolder", ""),
                                              type_=saved.get("type", "output"), dest=dest)
                    except (ComfyUIUnreachable, ComfyUIHTTPError) as exc:
                        raise await self._transport_failure(exc, proc)
                t_downloaded = self._clock()
                pixels = await asyncio.to_thread(read_frames, dest, request.length)
            finally:
                dest.unlink(missing_ok=True)
            t_read = self._clock()
        except asyncio.CancelledError:
            if queued:
                await asyncio.shield(self._abandon(client, state.prompt_id))
            raise
        finally:
            t_clean = self._clock()
            self._cleanup(uploaded, stem, history)
            t_cleaned = self._clock()

        inference = inference_seconds(state, history)
        queue_s = (state.started - state.submitted) if state.started else max(0.0, (t_done - state.submitted) - inference)
        total = t_cleaned - t_begin
        timings = {
            "ready_wait": round(t_ready - t_begin, 4),
            "upload": round(t_uploaded - t_ready, 4),
            "prepare": round(state.submitted - t_uploaded, 4),  # graph, model check, websocket
            "queue": round(queue_s, 4),
            "inference": round(inference, 4),  # ComfyUI's execution (incl. VAE decode and the frames file)
            "save_frames": round((state.finished - state.save_started) if state.finished and state.save_started else 0.0, 4),
            # from ComfyUI's "success" message to its /history entry (ComfyUI's bookkeeping and gc)
            "confirm": round((t_done - state.finished) if state.finished else 0.0, 4),
            "download": round(t_downloaded - t_done, 4),
            "read_frames": round(t_read - t_downloaded, 4),
            "cleanup": round(t_cleaned - t_clean, 4),
            "total": round(total, 4),
        }
        timings["overhead"] = round(max(0.0, total - inference - timings["ready_wait"]), 4)
        log(logger, logging.INFO, "ComfyUI job done", job_id=request.job_id, prompt_id=state.prompt_id,
            ws_dropped=state.ws_dropped, confirmed_by_history=state.from_history, **timings)
        return GeneratedVideo(pixels=pixels, fps=request.fps, timings=timings)

    def _close_in_background(self, ws) -> None:
        """A graceful websocket close waits for ComfyUI's reply, which stalls while ComfyUI runs its
        post-prompt gc; the job need not wait for it (close() awaits the stragglers)."""
        task = asyncio.create_task(ws.close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- steps -----------------------------------------------------------------------------------
    async def _check_models(self, client: ComfyUIClient, graph: dict[str, Any], model_paths: dict[str, Path]) -> None:
        """Every model file the graph names must be in its loader's list; refresh a loader's
        /object_info once when a name is missing (the model may have just been published)."""
        for node_id, node in graph.items():
            cls = node.get("class_type", "")
            for (mcls, input_name), folder in errors.MODEL_INPUT_FOLDERS.items():
                if mcls != cls or input_name not in node.get("inputs", {}):
                    continue
                value = node["inputs"][input_name]
                options = combo_options(self._object_info, cls, input_name)
                if options is None or value in options:
                    continue
                try:
                    fresh = await client.object_info(cls)
                except (ComfyUIUnreachable, ComfyUIHTTPError) as exc:
                    raise await self._transport_failure(exc, self._proc)
                if cls in fresh:
                    self._object_info[cls] = fresh[cls]
                options = combo_options(self._object_info, cls, input_name) or []
                if value not in options:
                    path = model_paths.get(value)
                    where = f"expected at {path}" if path else f"expected in the store's {folder} folder"
                    raise EngineError(
                        f"{cls} (node {node_id}) input {input_name}: model file {value!r} is not in "
                        f"ComfyUI's {folder} list ({where}; ComfyUI lists {len(options)} file(s) there). "
                        "Check that the model is downloaded and that ComfyUI was started with the "
                        "store's extra_model_paths.yaml",
                        code=ErrorCode.MODEL_ERROR,
                        details={"node": node_id, "class_type": cls, "input": input_name, "value": value,
                                 "folder": folder, "listed": options[:50]},
                    )

    def _take_local_output(self, video: dict[str, Any], dest: Path) -> bool:
        """Supervised: move the video out of ComfyUI's output folder (no HTTP round trip)."""
        if self.attached or self.output_dir is None or video.get("type", "output") != "output":
            return False
        root = self.output_dir.resolve()
        src = (root / video.get("subfolder", "") / video.get("filename", "")).resolve()
        if not src.is_relative_to(root) or not src.is_file():
            return False
        shutil.move(src, dest)
        return True

    def _emit(self, progress: ProgressFn, event: EngineProgress) -> None:
        try:
            progress(event)
        except Exception as exc:  # a broken progress sink must not fail the job
            log(logger, logging.WARNING, "progress callback failed", error=repr(exc))

    async def _race_exit(self, coro, proc: ComfyUIProcess | None):
        """Await `coro`, failing at once with engine_crashed if the supervised child exits."""
        task = asyncio.ensure_future(coro)
        if self.attached or proc is None:
            return await task
        exit_wait = asyncio.ensure_future(proc.wait_exit())
        try:
            done, _ = await asyncio.wait({task, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            exit_wait.cancel()
            await asyncio.gather(task, exit_wait, return_exceptions=True)
            raise
        if task in done:
            exit_wait.cancel()
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise self._crash_error(proc)

    def _crash_error(self, proc: ComfyUIProcess) -> EngineError:
        how = describe_exit(proc.returncode)
        return EngineError(
            f"ComfyUI exited during the job ({how}); it is being restarted for the next job. "
            f"See log_tail (full log: {proc.spec.log_file})",
            code=ErrorCode.ENGINE_CRASHED,
            log_tail=proc.log_tail(),
            details={"pid": proc.pid, "returncode": proc.returncode},
        )

    async def _transport_failure(self, exc: Exception, proc: ComfyUIProcess | None) -> EngineError:
        """A request failed: a crash if the child died (give it a moment to be reaped), else unavailable."""
        if not self.attached and proc is not None:
            try:
                await asyncio.wait_for(proc.wait_exit(), timeout=3.0)
            except asyncio.TimeoutError:
                pass
            if not proc.alive:
                return self._crash_error(proc)
        return self._unreachable(exc)

    def _unreachable(self, exc: Exception) -> EngineError:
        where = "COMFYUI_URL" if self.attached else "the supervised ComfyUI"
        return EngineError(f"ComfyUI at {self.base_url} ({where}) failed a request: {exc}",
                           code=ErrorCode.ENGINE_UNAVAILABLE)

    async def _abandon(self, client: ComfyUIClient, prompt_id: str) -> None:
        """The awaiting task was cancelled: drop the prompt from the queue or interrupt it, and wait
        briefly until ComfyUI no longer runs it (so the next job starts on an idle ComfyUI)."""
        try:
            await asyncio.wait_for(self._interrupt_and_confirm(client, prompt_id), timeout=INTERRUPT_CONFIRM_S)
        except (asyncio.TimeoutError, ComfyUIUnreachable, ComfyUIHTTPError) as exc:
            log(logger, logging.WARNING, "could not confirm the interrupt", prompt_id=prompt_id, error=repr(exc))

    async def _interrupt_and_confirm(self, client: ComfyUIClient, prompt_id: str) -> None:
        await client.delete_queued([prompt_id])
        await client.interrupt(prompt_id)
        log(logger, logging.INFO, "interrupted ComfyUI", prompt_id=prompt_id)
        while True:
            q = await client.queue()
            ids = {item[1] for key in ("queue_running", "queue_pending") for item in q.get(key) or []
                   if isinstance(item, list) and len(item) > 1}
            if prompt_id not in ids:
                return
            await asyncio.sleep(0.1)

    def _cleanup(self, uploaded: str | None, stem: str, history: dict[str, Any] | None) -> None:
        """Delete this job's input image and outputs from ComfyUI's folders (best effort)."""
        targets: list[Path] = []
        if uploaded and self.input_dir is not None:
            targets.append(self.input_dir / uploaded)
            end = self.input_dir / UPLOAD_SUBFOLDER
            targets += list(end.glob(f"{glob.escape(stem)}_end*")) if end.is_dir() else []  # first-last frame
        if self.output_dir is not None:
            sub = self.output_dir / UPLOAD_SUBFOLDER
            targets += list(sub.glob(f"{glob.escape(stem)}*")) if sub.is_dir() else []
            for out in ((history or {}).get("outputs") or {}).values():
                for key in ("images", "gifs", "videos"):
                    for item in (out or {}).get(key) or []:
                        if isinstance(item, dict) and item.get("type", "output") == "output":
                            targets.append(self.output_dir / item.get("subfolder", "") / item.get("filename", ""))
        for path in targets:
            try:
                resolved = path.resolve()
                roots = [r.resolve() for r in (self.input_dir, self.output_dir) if r is not None]
                if not any(resolved.is_relative_to(r) and resolved != r for r in roots):
                    continue  # never delete outside ComfyUI's input/output folders
                resolved.unlink(missing_ok=True)
            except OSError as exc:
                log(logger, logging.DEBUG, "cleanup failed", path=str(path), error=repr(exc))

