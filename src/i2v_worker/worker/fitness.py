"""The worker's own start-up fitness checks, in place of the runpod SDK's automatic system checks.

runpod 1.12 (`serverless/worker.py:run_worker` -> `rp_fitness.run_fitness_checks`) runs, on the
platform only (not with --rp_serve_api or --test_input), every registered fitness check before the
first job; a failing one logs `Fitness check failed: <name> | <error>` and `os._exit(1)`s. Besides
the checks a worker registers, it auto-registers:
- system checks (`rp_system_fitness.py`): memory >= 4 GB, 10 % of `/` free, a TCP connection to
  8.8.8.8:53, the CUDA version, and, with a GPU, `import torch`, an allocation on every CUDA device
  and a timed 2048x2048 matmul that must finish within RUNPOD_GPU_BENCHMARK_TIMEOUT (2 s). That
  puts torch and a CUDA context into the worker process, beside ComfyUI's, and can kill a worker
  whose GPU is busy loading a 14B expert. `serve` therefore sets RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true
  (unless the environment says otherwise); the image sets it too.
- the GPU check (`rp_gpu_fitness.py`, only when `nvidia-smi` answers): the SDK's `gpu_test` binary
  allocates on each GPU in a short-lived CHILD process. It is kept: no torch, no context left in
  the worker (RUNPOD_SKIP_GPU_CHECK=true turns it off).

The checks here are cheap and say what to do: the store root is writable and has room, the ComfyUI
tree the engine will start is there, and a GPU is visible to nvidia-smi when the engine needs CUDA.
None imports torch. `checks(settings)` returns them (tests call them directly); `register` hands
them to the SDK.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Callable

from i2v_worker.config import Settings

MIN_FREE_BYTES = 2 * 2**30  # ComfyUI temp files and a job's video; each model download checks its own size
NVIDIA_SMI_TIMEOUT_S = 10.0
DEFAULT_COMFYUI_PATH = Path("/opt/ComfyUI")

FitnessCheck = Callable[[], None]


class FitnessError(RuntimeError):
    """A failed check; the message names what failed and what to do."""


def nvidia_driver_present() -> bool:
    """The NVIDIA driver's device nodes, without importing torch."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def engine_needs_cuda(settings: Settings, driver_present: Callable[[], bool] = nvidia_driver_present) -> bool:
    """Explicit I2V_DEVICE=cuda*, or `auto` on a machine with the NVIDIA driver (where the engines
    choose the GPU). `cpu`, or `auto` without a driver, runs on the CPU."""
    if settings.device.startswith("cuda"):
        return True
    return settings.device == "auto" and driver_present()


def check_store_root(settings: Settings, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    root = Path(settings.model_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".fitness-{uuid.uuid4().hex[:8]}"
        with open(probe, "wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        raise FitnessError(f"the model store {root} (I2V_MODEL_DIR) is not writable: {exc.strerror or exc}; "
                           "attach the network volume read-write or point I2V_MODEL_DIR at a writable folder") from None
    free = shutil.disk_usage(root).free
    if free < min_free_bytes:
        raise FitnessError(f"the model store {root} has {free / 2**30:.1f} GiB free, at least "
                           f"{min_free_bytes / 2**30:.0f} GiB are needed; use a larger network volume or "
                           "container disk, or free space with `i2v-worker models gc`")


def check_comfyui_tree(settings: Settings) -> None:
    if settings.engine != "comfyui" or settings.comfyui_url:
        return  # diffusers runs in-process; an attached ComfyUI is checked when the engine starts
    path = Path(settings.comfyui_path or DEFAULT_COMFYUI_PATH)
    if not (path / "main.py").is_file():
        raise FitnessError(f"no ComfyUI at {path} (main.py missing); set COMFYUI_PATH to the ComfyUI checkout "
                           "(the image has it at /opt/ComfyUI) or COMFYUI_URL to attach to a running ComfyUI")


def check_gpu_visible(settings: Settings, *, nvidia_smi: str = "nvidia-smi",
                      driver_present: Callable[[], bool] = nvidia_driver_present) -> None:
    if not engine_needs_cuda(settings, driver_present):
        return
    exe = shutil.which(nvidia_smi)
    if exe is None:
        raise FitnessError(f"I2V_DEVICE={settings.device} needs a GPU, but nvidia-smi is not on PATH: the container "
                           "was started without the NVIDIA runtime; use a GPU endpoint (or I2V_DEVICE=cpu for tests)")
    try:
        res = subprocess.run([exe, "--list-gpus"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FitnessError(f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S:g} s: the GPU or its driver "
                           "is hung; the worker exits so RunPod replaces it") from None
    gpus = [line for line in res.stdout.splitlines() if line.strip().startswith("GPU ")]
    if res.returncode != 0 or not gpus:
        detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [f"exit code {res.returncode}"]
        raise FitnessError(f"nvidia-smi lists no GPU ({detail[0]}); the image needs a driver >= 580 (CUDA 13.0): "
                           "set the endpoint's allowed CUDA versions to 13.0 and newer")


def checks(settings: Settings) -> list[FitnessCheck]:
    """The checks for `settings`, as named zero-argument functions (the SDK logs the name)."""

    def store_root_writable() -> None:
        check_store_root(settings)

    def comfyui_tree_present() -> None:
        check_comfyui_tree(settings)

    def gpu_visible_to_nvidia_smi() -> None:
        check_gpu_visible(settings)

    return [store_root_writable, comfyui_tree_present, gpu_visible_to_nvidia_smi]


def register(settings: Settings) -> None:
    """Hand the checks to the runpod SDK (run before the first job, on the platform only)."""
    import runpod

    for check in checks(settings):
        runpod.serverless.register_fitness_check(check)
