#!/usr/bin/env python3
"""Seconds and memory per image-to-video job at production shapes, without the real weights (issue 13).

The compute does not depend on the weights' values, so files of the production shapes and formats
with random contents cost what the real ones cost to load, dequantize and run. This script:

1. preflight: checks the device (CUDA for `production`), its memory, free disk in the store dir and
   host RAM, and says what is missing (exit 2) before writing anything;
2. writes the five stand-ins with the tiny generator at `--shape` (i2v_worker.tiny.generate: Q5_0
   GGUF experts, fp8-scaled UMT5 with embedded tokenizer, Wan2.1 VAE, lightx2v-layout LoRA; at the
   production shape about 27 GB of random blocks with valid scales, streamed, in well under a
   minute on NVMe); files already there are reused;
3. runs a cold job (models loaded by the job) and a warm job (models resident) through the
   diffusers engine, and through the ComfyUI engine when a ComfyUI with the real ComfyUI-GGUF node
   is installed (else a skip with the reason);
4. prints a table and writes JSON (`--json`, default `<store>/bench-gpu-<shape>.json`).

Stages per job, from the engine's own `timings` (DiffusersEngine returns load, text_encode,
image_encode, sampling, vae_decode) made exact on a GPU by synchronizing CUDA at the stage
boundaries (a bench-only subclass: the engine itself never synchronizes), plus per-file load time
and per-expert seconds per step (each denoiser call timed between two synchronizations):

    file load       the job's model loads (0 when warm); per file in the JSON, LoRA apply = the rest
    text encode     UMT5 on the prompt (cfg 1: no negative pass)
    image encode    VAE encode of the start image + gray frames (the I2V condition)
    <expert> s/step each expert's denoiser calls, per step
    VAE decode      the engine's; video encode: the worker's one encoder (h264 MP4) on the returned frames
    end to end      engine.generate wall time (generation; the encode is timed after it)
    peak memory     torch.cuda.max_memory_allocated / _reserved (reset per job) and nvidia-smi's
                    highest memory.used while the job ran (all processes on that GPU); on CPU the
                    process's peak RSS

Shapes: `tiny` (CPU, seconds; `make test` runs it: tests/test_bench_gpu.py), `slice` (production
dims and formats, one DiT and one UMT5 block, about 1.3 GB: the production code paths on a CPU in
about a minute), `production` (needs CUDA with about 80 GB or more; about 27 GB of disk).

    .venv/bin/python bench/gpu.py --shape tiny
    I2V_BENCH_DIR=/nvme/i2v-bench .venv/bin/python bench/gpu.py --shape production

Exit status: 0 every engine that ran finished its jobs (skips allowed), 1 a job failed, 2 preflight.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from i2v_worker.engines.base import EngineProgress, GenerationRequest, ModelRole
from i2v_worker.tiny.generate import SHAPES, estimate_bytes, generate_models, shape_files

GIB = 2**30


@dataclass(frozen=True)
class JobShape:
    width: int
    height: int
    length: int
    fps: int = 16
    steps: int = 4
    high_noise_steps: int = 2
    cfg: float = 1.0
    shift: float = 8.0
    lora_strength_high: float = 1.0
    lora_strength_low: float = 1.0


JOBS = {  # production: 480p, 5 s at 16 fps, lightx2v 4 steps (2+2), cfg 1, LoRA on both experts
    "tiny": JobShape(64, 48, 5),
    "slice": JobShape(64, 48, 5),
    "production": JobShape(832, 480, 81),
}
MIN_VRAM_GB = {"production": 80.0}  # the "about 80 GB or more"
MIN_RAM_GB = {"production": 40.0}  # UMT5 is read (6.7 GB) and converted to bf16 (11 GB) on the host
PROMPT = "a cat walks slowly across a sunny garden, the camera pans left"
NEGATIVE = "blurry, static, low quality"
# the real ComfyUI-GGUF node (city96) as production installs it; the test-only stand-in in
# tests/comfyui_nodes dequantizes every tensor at load, so it measures nothing production does
GGUF_NODE_DIRS = ("ComfyUI-GGUF", "comfyui-gguf")

log = logging.getLogger("bench.gpu")


# ------------------------------------------------------------------------------------------------
# preflight


def preflight(shape: str, store: Path, *, device: str, min_vram_gb: float | None, min_free_gb: float | None) -> tuple[dict, list[str]]:
    """What this machine offers and, as readable lines, what it lacks for `shape`."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    problems: list[str] = []
    want_cuda = device == "cuda" or (device == "auto" and shape == "production")
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        info.update(gpu=props.name, gpu_total_gib=round(total / GIB, 1), gpu_free_gib=round(free / GIB, 1),
                    cuda=torch.version.cuda)
        need = MIN_VRAM_GB.get(shape, 0.0) if min_vram_gb is None else min_vram_gb
        if free / 1e9 < need:
            problems.append(f"GPU {props.name} has {free / 1e9:.0f} GB free of {total / 1e9:.0f} GB; the {shape} shape "
                            f"needs about {need:.0f} GB (both experts resident, UMT5, VAE, 480p activations); "
                            "use a bigger GPU, free it, or pass --min-vram-gb to try anyway")
    elif want_cuda:
        problems.append(f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False): the {shape} "
                        "shape needs a GPU with about 80 GB; run it on a GPU machine, or --shape tiny / slice on CPU")
    if shape == "production" and device == "cpu":
        problems.append("the production shape runs on a GPU only (on a CPU one 480p job would take hours); "
                        "use --shape slice for the production code paths on a CPU")
    info["nvidia_smi"] = shutil.which("nvidia-smi") is not None
    store.mkdir(parents=True, exist_ok=True)
    spec = SHAPES[shape]
    sizes = estimate_bytes(spec)
    names = generation_files(shape)
    missing = sum(sizes[r] for r, n in names.items() if not (store / n).is_file())
    free_disk = shutil.disk_usage(store).free
    need_disk = missing + (2 * GIB if shape == "production" else 64 * 2**20) if min_free_gb is None else min_free_gb * 1e9
    info.update(store=str(store), store_free_gb=round(free_disk / 1e9, 1), standins_gb=round(sum(sizes.values()) / 1e9, 2),
                to_write_gb=round(missing / 1e9, 2))
    if free_disk < need_disk:
        problems.append(f"{store}: {free_disk / 1e9:.1f} GB free, the {shape} stand-ins need {need_disk / 1e9:.1f} GB more "
                        "(point I2V_BENCH_DIR or --store at a local disk with room, e.g. NVMe)")
    ram = _mem_available()
    info["ram_available_gb"] = round(ram / 1e9, 1) if ram else None
    need_ram = MIN_RAM_GB.get(shape, 0.0)
    if ram and ram / 1e9 < need_ram:
        problems.append(f"{ram / 1e9:.0f} GB of host RAM available; loading the {shape} text encoder needs about {need_ram:.0f} GB")
    return info, problems


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------------------------
# measurement helpers


def nvidia_smi_id() -> str:
    """nvidia-smi's id of torch's cuda:0 (its UUID: CUDA_VISIBLE_DEVICES renumbers torch's devices)."""
    try:
        import torch

        if torch.cuda.is_available():
            uuid = str(torch.cuda.get_device_properties(0).uuid)
            if uuid:
                return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    except Exception:  # noqa: BLE001 - an older torch without .uuid: the first visible device
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


class NvidiaSmiPeak:
    """Highest `memory.used` (MiB) nvidia-smi reports for torch's GPU while running (every 100 ms)."""

    def __init__(self, index: str | None = None) -> None:
        self.index = index
        self.peak_mib: int | None = None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "NvidiaSmiPeak":
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return self
        if self.index is None:
            self.index = nvidia_smi_id()
        self._proc = subprocess.Popen([exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                       f"--id={self.index}", "-lms", "100"], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                v = int(line.strip().split()[0])
            except (ValueError, IndexError):
                continue
            self.peak_mib = v if self.peak_mib is None else max(self.peak_mib, v)

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            time.sleep(0.25)  # one more sample after the job
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(2)


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM (ru_maxrss would include a parent's high-water mark on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def start_png(width: int, height: int) -> bytes:
    """A start image with structure (gradients and a disc), PNG."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = (x / max(1, width - 1) * 255)
    g = (y / max(1, height - 1) * 255)
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2) < (min(width, height) / 4) ** 2
    b = np.where(disc, 230.0, 40.0)
    img = Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def generation_files(shape: str) -> dict[ModelRole, str]:
    """The five generation files of `shape` (the RIFE interpolation model is not measured here)."""
    return {r: n for r, n in shape_files(shape).items() if r is not ModelRole.INTERPOLATION}


def encode_timed(video: Any, out_dir: Path, stem: str) -> tuple[float, int]:
    """The worker's one encoder (h264 MP4, default quality) on the engine's frames: (seconds, bytes);
    the file is removed. Engines return frames: encoding is the worker's step, timed here."""
    from i2v_worker.video.encode import encode_video

    t0 = time.perf_counter()
    encoded = encode_video(video.pixels, out_dir / stem, fps=video.fps)
    secs = time.perf_counter() - t0
    encoded.path.unlink(missing_ok=True)
    return round(secs, 4), encoded.size_bytes


def make_request(job: JobShape, paths: dict[ModelRole, Path], *, job_id: str, seed: int, out_dir: Path) -> GenerationRequest:
    return GenerationRequest(
        job_id=job_id, image_png=start_png(job.width, job.height), prompt=PROMPT, negative_prompt=NEGATIVE,
        width=job.width, height=job.height, length=job.length, fps=job.fps, steps=job.steps,
        high_noise_steps=job.high_noise_steps, cfg=job.cfg, shift=job.shift, seed=seed,
        lora_strength_high=job.lora_strength_high, lora_strength_low=job.lora_strength_low,
        models={role: (path.name, path) for role, path in paths.items()}, output_dir=out_dir,
    )


# ------------------------------------------------------------------------------------------------
# diffusers engine


def instrumented_diffusers_engine():
    """DiffusersEngine with bench-only hooks (CUDA synchronization at stage boundaries, per-file
    load and per-denoiser-call timing). Each hook only wraps the engine's own method when it
    exists, so an engine refactor loses a column rather than breaking the bench."""
    import torch

    from i2v_worker.engines.diffusers.engine import DiffusersEngine

    class BenchDiffusersEngine(DiffusersEngine):
        hooks: list[str] = []

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.bench_loads: dict[str, float] = {}
            self.bench_calls: list[tuple[str, float]] = []

        def bench_reset(self) -> None:
            self.bench_loads = {}
            self.bench_calls = []

        def _bench_sync(self) -> None:
            dev = getattr(self, "_device", None)
            if dev is not None and dev.type == "cuda":
                torch.cuda.synchronize(dev)

        if hasattr(DiffusersEngine, "_component"):
            hooks.append("per-file load")

            def _component(self, role, name, path, load, *args, **kwargs):
                def timed():
                    t0 = time.perf_counter()
                    obj = load()
                    self._bench_sync()
                    self.bench_loads[getattr(role, "value", str(role))] = time.perf_counter() - t0
                    return obj

                return super()._component(role, name, path, timed, *args, **kwargs)

        if hasattr(DiffusersEngine, "_denoiser"):
            hooks.append("per-step expert time")

            def _denoiser(self, model, *args, **kwargs):
                run = super()._denoiser(model, *args, **kwargs)
                which = next((r.value for r, c in self._components.items() if c.obj is model), "expert")

                def timed(*a, **kw):
                    self._bench_sync()
                    t0 = time.perf_counter()
                    out = run(*a, **kw)
                    self._bench_sync()
                    self.bench_calls.append((which, time.perf_counter() - t0))
                    return out

                return timed

        if hasattr(DiffusersEngine, "_image_condition"):
            hooks.append("text/image encode sync")

            def _image_condition(self, *args, **kwargs):
                self._bench_sync()  # closes the text-encode stage
                out = super()._image_condition(*args, **kwargs)
                self._bench_sync()
                return out

    return BenchDiffusersEngine


async def run_diffusers(shape: str, paths: dict[ModelRole, Path], job: JobShape, *, device: str, out_dir: Path,
                        jobs: int, on_job: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    import torch

    from i2v_worker.config import Settings

    cls = instrumented_diffusers_engine()
    settings = Settings(model_dir=out_dir, engine="diffusers", device=device, job_deadline_s=7200)
    engine = cls(settings)
    t0 = time.perf_counter()
    await engine.start()
    result: dict[str, Any] = {"status": "ok", "engine_start_s": round(time.perf_counter() - t0, 3),
                              "hooks": list(cls.hooks), "jobs": []}
    health = await engine.health()
    result.update(device=health.get("device"), dtype=health.get("dtype"), diffusers=health.get("diffusers"))
    cuda = str(health.get("device", "")).startswith("cuda")
    try:
        for i in range(jobs):
            label = "cold" if i == 0 else f"warm{'' if jobs == 2 else i}"
            engine.bench_reset()
            req = make_request(job, paths, job_id=f"bench-{shape}-{label}", seed=1000 + i, out_dir=out_dir)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            steps: list[tuple[float, int, str]] = []

            def progress(ev: EngineProgress) -> None:
                steps.append((time.perf_counter(), ev.step, ev.message))
                print(f"  [{label}] step {ev.step}/{ev.total} {ev.message}", file=sys.stderr, flush=True)

            with NvidiaSmiPeak() as smi:
                t_start = time.perf_counter()
                video = await engine.generate(req, progress)
                if cuda:
                    torch.cuda.synchronize()
                e2e = time.perf_counter() - t_start
            t = dict(video.timings)
            record = engine.last_record
            per_expert: dict[str, dict[str, float | int]] = {}
            for which in ("high_noise", "low_noise"):
                n_steps = sum(1 for e in (record.experts if record else []) if e == which)
                secs = sum(s for w, s in engine.bench_calls if w == which)
                per_expert[which] = {"steps": n_steps, "total_s": round(secs, 4),
                                     "s_per_step": round(secs / n_steps, 4) if n_steps and engine.bench_calls else None}
            loads = {k: round(v, 4) for k, v in engine.bench_loads.items()}
            if "load" in t and loads:
                loads["lora_apply_and_rest"] = round(max(0.0, t["load"] - sum(engine.bench_loads.values())), 4)
            mem: dict[str, Any] = {"process_peak_rss_bytes": peak_rss_bytes()}
            if cuda:
                mem.update(torch_peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                           torch_peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                           nvidia_smi_peak_used_mib=smi.peak_mib)
            t["encode"], size = encode_timed(video, out_dir, req.job_id)
            result["jobs"].append({
                "label": label, "end_to_end_s": round(e2e, 4),
                "stages_s": {k: round(float(v), 4) for k, v in t.items()},
                "loads_s": loads, "experts": per_expert, "memory": mem,
                "video": {"bytes": size, "frames": video.frames, "width": video.width, "height": video.height},
            })
            print(f"  [{label}] done in {e2e:.2f} s", file=sys.stderr, flush=True)
            if on_job is not None:
                on_job(result)
    finally:
        await engine.close()
    return result


# ------------------------------------------------------------------------------------------------
# ComfyUI engine


def comfyui_unavailable(shape: str, comfyui_path: Path, comfyui_args: str = "") -> str | None:
    """Why the ComfyUI engine cannot be measured here (None: it can)."""
    import shlex

    if shape == "tiny":
        return ("tiny shape: ComfyUI builds UMT5 from its fixed XXL config, so the tiny encoder loads only "
                "through the test-only patch node (tests/comfyui_nodes), and the test-only GGUF loader stand-in "
                "dequantizes every tensor at load: neither is what production runs")
    if not (comfyui_path / "main.py").is_file():
        return f"no ComfyUI at {comfyui_path} (main.py missing); set COMFYUI_PATH to a ComfyUI with ComfyUI-GGUF installed"
    argv = shlex.split(comfyui_args or "")
    bases = [comfyui_path] + [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "--base-directory"]
    if not any((b / "custom_nodes" / d).is_dir() for b in bases for d in GGUF_NODE_DIRS):
        return (f"{comfyui_path / 'custom_nodes'} has no ComfyUI-GGUF (city96) node: install it as production does; "
                "the test-only stand-in (tests/comfyui_nodes/i2v_test_gguf_loader) dequantizes every tensor at load "
                "and is not representative")
    return None


def comfyui_step_times(steps: list[tuple[float, int]], job: JobShape) -> dict[str, dict[str, Any]]:
    """Seconds per step per expert from the times of ComfyUI's progress messages (step 1..N over both
    samplers): step s took t(s) - t(s-1). Step 1 has no earlier message, and the first low-noise step
    also carries that sampler's model load and LoRA patch, so both are left out."""
    at = {s: t for t, s in steps}
    k, n = job.high_noise_steps, job.steps
    out: dict[str, dict[str, Any]] = {}
    for which, first, last, count in (("high_noise", 2, k, k), ("low_noise", k + 2, n, n - k)):
        gaps = [at[s] - at[s - 1] for s in range(first, last + 1) if s in at and s - 1 in at]
        out[which] = {"steps": count, "s_per_step": round(sum(gaps) / len(gaps), 4) if gaps else None,
                      "measured_steps": len(gaps)}
    return out


class _FolderPaths:
    """What ComfyUIEngine needs from a store: an extra_model_paths.yaml naming the stand-ins' folder
    for every ComfyUI model folder."""

    def __init__(self, folder: Path, work: Path) -> None:
        self.folder, self.work = folder, work

    def comfyui_extra_paths(self) -> Path:
        import yaml

        kinds = ("unet", "diffusion_models", "text_encoders", "clip", "vae", "loras")
        doc = {"i2v_bench": {"base_path": str(self.folder.resolve()), **{k: "." for k in kinds}}}
        path = self.work / "extra_model_paths.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


async def run_comfyui(shape: str, paths: dict[ModelRole, Path], job: JobShape, *, device: str, out_dir: Path,
                      jobs: int, comfyui_path: Path | None = None, comfyui_args: str | None = None,
                      env: dict[str, str] | None = None, test_nodes: bool = False,
                      on_job: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Jobs through ComfyUIEngine (a supervised ComfyUI: COMFYUI_PATH, COMFYUI_ARGS, default
    /opt/ComfyUI and --highvram). `test_nodes` is for this script's own test: it runs a ComfyUI
    whose custom_nodes hold the test-only nodes, and the report says that it is not representative."""
    from i2v_worker.config import Settings
    from i2v_worker.engines.comfyui.engine import ComfyUIEngine

    env_settings = Settings.from_env()
    comfyui_path = Path(comfyui_path or env_settings.comfyui_path or "/opt/ComfyUI")
    args = comfyui_args if comfyui_args is not None else (env_settings.comfyui_args or "--highvram")  # both experts resident
    reason = None if test_nodes else comfyui_unavailable(shape, comfyui_path, args)
    if reason:
        return {"status": "skipped", "reason": reason}
    folder = next(iter(paths.values())).parent
    work = Path(tempfile.mkdtemp(prefix="i2v-bench-comfyui-"))
    settings = Settings(model_dir=out_dir, engine="comfyui", device=device, comfyui_path=comfyui_path,
                        comfyui_args=args, comfyui_port=env_settings.comfyui_port, job_deadline_s=7200)
    engine = ComfyUIEngine(settings, _FolderPaths(folder, work), env=env)
    result: dict[str, Any] = {
        "status": "ok", "comfyui_path": str(comfyui_path), "comfyui_args": args, "jobs": [],
        "gguf_loader": ("TEST-ONLY stand-in (dequantizes every tensor at load): not representative" if test_nodes
                        else "ComfyUI-GGUF"),
    }
    try:
        t0 = time.perf_counter()
        await engine.start()
        result["engine_start_s"] = round(time.perf_counter() - t0, 3)
        for i in range(jobs):
            label = "cold" if i == 0 else f"warm{'' if jobs == 2 else i}"
            req = make_request(job, paths, job_id=f"bench-{shape}-comfyui-{label}", seed=1000 + i, out_dir=out_dir)
            steps: list[tuple[float, int]] = []

            def progress(ev: EngineProgress) -> None:
                steps.append((time.perf_counter(), ev.step))
                print(f"  [comfyui {label}] step {ev.step}/{ev.total}", file=sys.stderr, flush=True)

            with NvidiaSmiPeak() as smi:
                t_start = time.perf_counter()
                video = await engine.generate(req, progress)
                e2e = time.perf_counter() - t_start
            stages = {k: float(v) for k, v in video.timings.items()}
            stages["encode"], size = encode_timed(video, out_dir, req.job_id)
            result["jobs"].append({"label": label, "end_to_end_s": round(e2e, 4), "stages_s": stages,
                                   "experts": comfyui_step_times(steps, job),
                                   "memory": {"nvidia_smi_peak_used_mib": smi.peak_mib},
                                   "video": {"bytes": size}})
            if on_job is not None:
                on_job(result)
    finally:
        await engine.close()
        shutil.rmtree(work, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------
# report


def _fmt(v: Any, unit: str = "s") -> str:
    if v is None:
        return "-"
    if unit == "GiB":
        return f"{v / GIB:.1f}"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def table(report: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = []
    cols: list[str] = []
    per_col: list[dict[str, Any]] = []
    for engine, res in report["engines"].items():
        for j in res.get("jobs", []):  # a failed engine still shows the jobs it finished
            cols.append(f"{engine} {j['label']}")
            per_col.append(j)

    def row(name: str, get, unit: str = "s") -> None:
        rows.append((name, *(_fmt(get(j), unit) for j in per_col)))

    st = lambda key: (lambda j: j.get("stages_s", {}).get(key))  # noqa: E731
    row("file load (s)", st("load"))
    order = ["high_noise", "low_noise", "text_encoder", "vae", "lora_apply_and_rest"]
    roles = sorted({k for j in per_col for k in j.get("loads_s", {})}, key=lambda k: (order.index(k) if k in order else 99, k))
    for k in roles:
        row(f"  {k}", lambda j, k=k: j.get("loads_s", {}).get(k))
    row("text encode (s)", st("text_encode"))
    row("image encode (s)", st("image_encode"))
    for which in ("high_noise", "low_noise"):
        steps = next((j["experts"][which]["steps"] for j in per_col if which in j.get("experts", {})), "?")
        row(f"{which} s/step ({steps} steps)", lambda j, w=which: j.get("experts", {}).get(w, {}).get("s_per_step"))
    row("sampling (s)", st("sampling"))
    row("VAE decode (s)", st("vae_decode"))
    row("video encode (s)", st("encode"))
    if any("ready_wait" in j.get("stages_s", {}) for j in per_col):  # ComfyUI: one number for the graph
        row("ComfyUI inference (s)", st("inference"))
    row("end to end (s)", lambda j: j.get("end_to_end_s"))
    row("torch peak alloc (GiB)", lambda j: j.get("memory", {}).get("torch_peak_allocated_bytes"), "GiB")
    row("torch peak reserved (GiB)", lambda j: j.get("memory", {}).get("torch_peak_reserved_bytes"), "GiB")
    row("nvidia-smi peak (GiB)", lambda j: (lambda m: m * 2**20 if m is not None else None)(
        j.get("memory", {}).get("nvidia_smi_peak_used_mib")), "GiB")
    row("process peak RSS (GiB)", lambda j: j.get("memory", {}).get("process_peak_rss_bytes"), "GiB")
    rows = [r for r in rows if any(c != "-" for c in r[1:])]
    header = ("stage", *cols)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    job = report["job"]
    head = [f"bench/gpu.py --shape {report['shape']}: {job['width']}x{job['height']}, {job['length']} frames, "
            f"{job['steps']} steps ({job['high_noise_steps']}+{job['steps'] - job['high_noise_steps']}), cfg {job['cfg']:g}, "
            f"LoRA {job['lora_strength_high']:g}/{job['lora_strength_low']:g}; device {report['host'].get('gpu') or 'cpu'}"]
    skipped = [f"{e}: skipped: {r['reason']}" for e, r in report["engines"].items() if r.get("status") == "skipped"]
    failed = [f"{e}: FAILED: {r['error']}" for e, r in report["engines"].items() if r.get("status") == "failed"]
    return "\n".join(head + lines + skipped + failed)


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--store", type=Path, default=None,
                    help="folder for the stand-ins (default: $I2V_BENCH_DIR, else a temp dir for tiny/slice; required "
                         "for production: about 28 GB on a local disk)")
    ap.add_argument("--json", type=Path, default=None, help="write the report here (default <store>/bench-gpu-<shape>.json)")
    ap.add_argument("--engines", default="diffusers,comfyui", help="comma-separated: diffusers, comfyui")
    ap.add_argument("--jobs", type=int, default=2, help="jobs per engine: the first cold, the rest warm (default 2)")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--min-vram-gb", type=float, default=None, help="free GPU memory the preflight requires (production: 80)")
    ap.add_argument("--min-free-gb", type=float, default=None, help="free disk the preflight requires (default: what is left to write)")
    ap.add_argument("--force", action="store_true", help="rewrite stand-ins that already exist")
    ap.add_argument("--keep", action="store_true", help="keep a temp store (tiny/slice) instead of deleting it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    shape = args.shape
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in ("diffusers", "comfyui")]
    if unknown or not engines:
        print(f"bench/gpu.py: --engines takes diffusers and/or comfyui (got {args.engines!r})", file=sys.stderr)
        return 2
    store_env = os.environ.get("I2V_BENCH_DIR")
    temp_store = args.store is None and not store_env
    if temp_store and shape == "production":
        print("bench/gpu.py: the production shape writes about 27 GB: pass --store DIR (or I2V_BENCH_DIR) on a local "
              "disk with about 30 GB free", file=sys.stderr)
        return 2
    store = args.store or (Path(store_env) if store_env else Path(tempfile.mkdtemp(prefix=f"i2v-bench-{shape}-")))
    try:
        host, problems = preflight(shape, store, device=args.device, min_vram_gb=args.min_vram_gb, min_free_gb=args.min_free_gb)
        for k, v in host.items():
            print(f"preflight: {k} = {v}", file=sys.stderr)
        if problems:
            for p in problems:
                print(f"preflight FAILED: {p}", file=sys.stderr)
            return 2
        job = JOBS[shape]
        files: dict[str, Any] = {}
        t0 = time.perf_counter()

        def on_file(role: ModelRole, path: Path, secs: float) -> None:
            files[role.value] = {"name": path.name, "bytes": path.stat().st_size, "write_s": round(secs, 3)}
            print(f"generate: {path.name} {path.stat().st_size / 1e9:.2f} GB in {secs:.1f} s", file=sys.stderr, flush=True)

        paths = generate_models(store, SHAPES[shape], names=generation_files(shape), force=args.force, on_file=on_file)
        for role, path in paths.items():
            files.setdefault(role.value, {"name": path.name, "bytes": path.stat().st_size, "write_s": None})
        generate_s = time.perf_counter() - t0
        out_dir = store / "bench-out"
        report: dict[str, Any] = {
            "bench": "gpu", "shape": shape, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": host, "job": asdict(job), "spec": asdict(SHAPES[shape]),
            "generate": {"seconds": round(generate_s, 3), "files": files}, "engines": {},
        }
        dest = args.json or store / f"bench-gpu-{shape}.json"
        if temp_store and args.json is None and not args.keep:
            dest = Path(tempfile.gettempdir()) / f"bench-gpu-{shape}.json"

        def save() -> None:  # after every engine, so a run stopped part way keeps what it measured
            dest.write_text(json.dumps(report, indent=2) + "\n")

        save()
        runners = {"diffusers": run_diffusers, "comfyui": run_comfyui}
        device = "cuda" if (args.device == "auto" and host.get("cuda_available")) else args.device
        for name in engines:
            print(f"{name}: running {args.jobs} job(s)", file=sys.stderr, flush=True)
            def on_job(partial: dict[str, Any], name: str = name) -> None:
                report["engines"][name] = {**partial, "status": "partial"}
                save()

            try:
                report["engines"][name] = asyncio.run(runners[name](shape, paths, job, device=device, out_dir=out_dir,
                                                                    jobs=args.jobs, on_job=on_job))
            except Exception as exc:  # noqa: BLE001 - the report says which engine failed and why (jobs done kept)
                msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                report["engines"][name] = {**report["engines"].get(name, {}), "status": "failed", "error": msg}
                print(f"{name}: FAILED: {msg}", file=sys.stderr, flush=True)
            save()
        report["ok"] = not any(r.get("status") == "failed" for r in report["engines"].values())
        save()
        print(table(report), flush=True)
        print(f"report: {dest}", file=sys.stderr)
        return 0 if report["ok"] else 1
    finally:
        if temp_store and not args.keep:
            shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
