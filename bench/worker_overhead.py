#!/usr/bin/env python3
"""The worker's own overhead per job, on the tiny models against the real ComfyUI (issue 3).

Generates the tiny models into a temp dir, fetches them into a temp store (so models are PRESENT),
starts a real ComfyUI (tests/support/comfyui.py's ComfyUIServer: the vendored ComfyUI 0.3.75 with
the two test-only nodes) reading that store, and runs jobs through the production path
(Settings -> build_worker: ModelStore + ComfyUIEngine attached to that ComfyUI -> Worker.handle).
One warm-up job (engine attach, the models' first load) is not counted; then N jobs, each with its
own seed so ComfyUI really samples. From each result's `timings`:

    total      handler: job received -> result ready (incl. delivery as base64)
    models     presence check of the job's models in the store (all present: no download)
    upload     S3 upload (0 here: base64 delivery)
    queue      POST /prompt -> ComfyUI starts executing
    inference  ComfyUI's execution of the graph (its own timestamps; incl. VAE decode and writing
               the lossless frames file)
    encode     the worker's encode of the final file (video/encode.py; the same for both engines)
    overhead   total - inference - encode: everything else the worker adds around ComfyUI's
               execution (image decode and fit, presence check, upload to ComfyUI, websocket, queue
               wait, frames download and read-back, cleanup, base64)

plus the presence check on a warm store, median of 100 calls each: `ModelStore.status(names)` and
`ModelStore.ensure(names)` of the five present models.

Target (issue 3): median worker overhead < 50 ms per job with models present -> PASS/FAIL.

    .venv/bin/python bench/worker_overhead.py [--jobs 10] [--size 64x48] [--length 5] [--steps 4]

Exit status: 0 target met, 1 missed or a job failed, 2 setup failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.support (ComfyUIServer) lives in the repo, not in the package

from i2v_worker.config import Settings  # noqa: E402
from i2v_worker.tiny import generate_tiny_models  # noqa: E402
from i2v_worker.worker.app import build_worker  # noqa: E402
from tests.support.comfyui import ComfyUIServer  # noqa: E402

TARGET_MS = 50.0
COLUMNS = ("total", "models", "upload", "queue", "inference", "encode", "overhead")
# the engine's own timings (its "ComfyUI job done" log line), the parts of the overhead
BREAKDOWN = ("ready_wait", "upload", "prepare", "queue", "download", "read_frames", "cleanup")


def png(width: int, height: int) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (width, height), (200, 40, 40))
    for x in range(width):
        img.putpixel((x, (x * 3) % height), (10, 200, 10))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


class EngineTimings(logging.Handler):
    """Collects the fields of the engine's structured "ComfyUI job done" log line (its finer
    breakdown: ready_wait, upload to ComfyUI, prepare, queue, download, cleanup) and the handler's
    "job done" line (image decode), keyed by job id."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.engine: dict[str, dict[str, Any]] = {}
        self.handler: dict[str, dict[str, Any]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None) or {}
        msg = record.getMessage()
        if msg == "ComfyUI job done" and "job_id" in fields:
            self.engine[str(fields["job_id"])] = dict(fields)
        elif msg == "job done" and "job" in fields:
            self.handler[str(fields["job"])] = dict(fields)


async def run_jobs(settings: Settings, n: int, inp: dict[str, Any]) -> tuple[list[dict[str, float]], dict[str, float]]:
    capture = EngineTimings()
    pkg_logger = logging.getLogger("i2v_worker")
    pkg_logger.addHandler(capture)
    pkg_logger.setLevel(logging.INFO)
    pkg_logger.propagate = False  # the job lines are only collected, not printed
    worker = build_worker(settings)
    try:
        names = [e.name for e in worker.store.manifest.roles(settings.preset).values()]
        await worker.store.aensure(names)  # fetched from file:// into the store: PRESENT from here on
        warm = await worker.handle({"id": "bench-warmup", "input": dict(inp, seed=1)})
        if "error" in warm:
            raise RuntimeError(f"warm-up job failed: [{warm.get('error_code')}] {warm['error']}")
        rows = []
        for i in range(n):
            out = await worker.handle({"id": f"bench-{i}", "input": dict(inp, seed=1000 + i)})
            if "error" in out:
                raise RuntimeError(f"job {i} failed: [{out.get('error_code')}] {out['error']}")
            t = {k: float(out["timings"].get(k, 0.0)) for k in COLUMNS if k != "overhead"}
            t["overhead"] = t["total"] - t["inference"] - t["encode"]
            eng = capture.engine.get(f"bench-{i}", {})
            for key in BREAKDOWN:
                t[f"b_{key}"] = float(eng.get(key, 0.0))
            t["b_image"] = float(capture.handler.get(f"bench-{i}", {}).get("image", 0.0))
            engine_total = float(eng.get("total", 0.0))
            # after ComfyUI's execution_success: waiting for its `executing: null` / history entry
            t["b_finish"] = max(0.0, engine_total - float(eng.get("inference", 0.0))
                                - sum(t[f"b_{k}"] for k in BREAKDOWN))
            # handler total minus (image, models, engine call): engine start check, result, base64
            t["b_handler_rest"] = max(0.0, t["total"] - t["b_image"] - t["models"] - engine_total - t["encode"])
            rows.append(t)
        # presence check on a warm store (what every job does before generating)
        presence: dict[str, float] = {}
        for label, call in (("status", lambda: worker.store.status(names)),
                            ("ensure", lambda: worker.store.ensure(names))):
            samples = []
            for _ in range(100):
                t0 = time.perf_counter()
                call()
                samples.append(time.perf_counter() - t0)
            presence[label] = statistics.median(samples)
        return rows, presence
    finally:
        await worker.close()
        pkg_logger.removeHandler(capture)


def print_table(rows: list[dict[str, float]], presence: dict[str, float], header: str) -> bool:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header, title_justify="left")
    table.add_column("ms", justify="left")
    for c in COLUMNS:
        table.add_column(c, justify="right")
    for label, fn in (("median", statistics.median), ("p90", p90), ("min", min), ("max", max)):
        table.add_row(label, *(f"{1000 * fn([r[c] for r in rows]):.1f}" for c in COLUMNS))
    console = Console(width=120)
    console.print(table)
    parts = [("image", "b_image"), ("models", "models"), ("ready wait", "b_ready_wait"),
             ("img upload", "b_upload"), ("prepare", "b_prepare"), ("queue", "b_queue"),
             ("download", "b_download"), ("read back", "b_read_frames"), ("cleanup", "b_cleanup"), ("finish", "b_finish"),
             ("rest", "b_handler_rest")]
    sub = Table(title="where the overhead goes (ms): image decode, presence check, engine: wait for ComfyUI "
                "ready, image upload to ComfyUI, prepare (graph, model check, websocket), queue, /view "
                "download, read back (frames file -> uint8), cleanup, finish (execution_success -> history), rest (handler: result, base64)",
                title_justify="left")
    for label, _ in parts:
        sub.add_column(label, justify="right")
    sub.add_column("", justify="left")
    sub.add_row(*(f"{1000 * statistics.median(r[key] for r in rows):.1f}" for _, key in parts), "median")
    sub.add_row(*(f"{1000 * max(r[key] for r in rows):.1f}" for _, key in parts), "max")
    console.print(sub)
    med = 1000 * statistics.median(r["overhead"] for r in rows)
    ok = med < TARGET_MS
    console.print(f"presence check, warm store, 5 models (median of 100): "
                  f"ModelStore.status {1000 * presence['status']:.2f} ms, ModelStore.ensure {1000 * presence['ensure']:.2f} ms")
    console.print(f"worker overhead (total - inference - encode): median {med:.1f} ms, p90 "
                  f"{1000 * p90([r['overhead'] for r in rows]):.1f} ms; target median < {TARGET_MS:.0f} ms: "
                  f"{'PASS' if ok else 'FAIL'}", markup=False)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10, help="measured jobs (after one warm-up job)")
    ap.add_argument("--size", default="64x48", help="WIDTHxHEIGHT, multiples of 16")
    ap.add_argument("--length", type=int, default=5, help="frames (4k+1)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (ComfyUI log, store)")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    tmp = Path(tempfile.mkdtemp(prefix="i2v-bench-overhead-"))
    load_before = loadavg()
    try:
        try:
            tiny = tmp / "tiny"
            generate_tiny_models(tiny, seed=0)
            store_root = tmp / "store"
            settings = Settings(
                model_dir=store_root, preset="tiny", prefetch=False, engine="comfyui",
                manifest_vars={"I2V_TINY_DIR": str(tiny)}, output_dir=tmp / "out", job_deadline_s=600,
            )
            from i2v_worker.store import ModelStore

            extra = ModelStore.from_settings(settings).comfyui_extra_paths()
            comfy = ComfyUIServer(tmp / "comfy", extra_model_paths=extra)
            comfy.start()
        except Exception as exc:  # noqa: BLE001
            print(f"bench setup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
        try:
            settings = settings.model_copy(update={"comfyui_url": comfy.url, "comfyui_path": comfy.base_dir})
            inp = {"image_base64": base64.b64encode(png(width, height)).decode("ascii"),
                   "prompt": "a red square drifting to the right", "width": width, "height": height,
                   "length": args.length, "fps": 16, "steps": args.steps}
            print(f"ComfyUI ready after {comfy.ready_seconds:.1f} s; {args.jobs} jobs of {width}x{height}, "
                  f"{args.length} frames, {args.steps} steps (+1 warm-up) ...", flush=True)
            try:
                rows, presence = asyncio.run(run_jobs(settings, args.jobs, inp))
            except Exception as exc:  # noqa: BLE001
                print(f"FAIL: {exc}\n--- ComfyUI log tail ---\n{comfy.log_tail(30)}", file=sys.stderr)
                return 1
        finally:
            comfy.close()
        header = (f"worker overhead per job, tiny preset, {args.jobs} jobs, {width}x{height}x{args.length}, "
                  f"{args.steps} steps, {os.cpu_count()} CPUs, load average {load_before} -> {loadavg()}")
        return 0 if print_table(rows, presence, header) else 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
