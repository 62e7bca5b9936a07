#!/usr/bin/env python3
# /// script
# requires-python = ">=3.10"
# dependencies = ["httpx>=0.27", "rich>=13"]
# ///
"""Send an image + prompt to the i2v-worker and save the MP4: a standalone, copy-paste-able client.

Standalone on purpose (only httpx and rich, no i2v-worker install): this is the file to copy into
your own application. The same protocol, with more options, is `i2v-worker submit` (its code is
src/i2v_worker/client/); both are tested against the worker in tests/test_client.py.

    # a RunPod serverless endpoint
    export RUNPOD_API_KEY=...
    python examples/client.py --endpoint-id abc123 --image photo.jpg --prompt "the cat turns its head" --out cat.mp4
    # the local API (`make serve`, or `docker compose up`)
    python examples/client.py --url http://127.0.0.1:8000 --image examples/sunrise.png --prompt "sunrise timelapse"

Exit status: 0 saved, 1 the job FAILED / TIMED_OUT / CANCELLED (the worker's message is printed),
130 after Ctrl-C (the job is cancelled on RunPod first).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
console = Console(stderr=True)


def error_message(status: dict) -> str:
    """The worker's error: a plain string, or the SDK's JSON string when a handler raised."""
    err = status.get("error")
    if isinstance(err, str):
        try:
            err = json.loads(err)
        except ValueError:
            return err
    if isinstance(err, dict):
        return str(err.get("error") or err.get("error_message") or err)
    return {"TIMED_OUT": "the job passed the endpoint's execution timeout (raise it in the endpoint settings)",
            "CANCELLED": "the job was cancelled"}.get(status["status"], f"the job ended {status['status']}")


def describe(update: dict) -> tuple[str, float | None]:
    """A progress update of the worker -> (description, fraction or None)."""
    parts = [update.get("stage", "working")]
    for key in ("phase", "model"):
        if update.get(key):
            parts.append(str(update[key]))
    if update.get("total_bytes"):
        parts.append(f"{update.get('done_bytes', 0) / 1e9:.1f}/{update['total_bytes'] / 1e9:.1f} GB")
    if update.get("total") and update.get("step") is not None:
        parts.append(f"{update['step']}/{update['total']}")
    if update.get("message"):
        parts.append(f"— {update['message']}")
    pct = update.get("percent")
    return " ".join(parts), (None if pct is None else float(pct) / 100)


def main() -> int:
    ap = argparse.ArgumentParser(description="i2v-worker client: image + prompt -> MP4")
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint-id", help="RunPod serverless endpoint id (needs RUNPOD_API_KEY)")
    target.add_argument("--url", help="local API base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--image", required=True, help="image file or http(s) URL")
    ap.add_argument("--prompt", required=True)
    for name in ("width", "height", "length", "steps", "seed", "fps"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--out", type=Path, default=Path("video.mp4"))
    args = ap.parse_args()

    job: dict = {"prompt": args.prompt}
    if args.image.startswith(("http://", "https://")):
        job["image_url"] = args.image
    else:
        try:
            job["image_base64"] = base64.b64encode(Path(args.image).read_bytes()).decode()
        except OSError as exc:
            console.print(f"[red]error:[/red] --image {args.image}: {exc.strerror or exc}")
            return 1
    job.update({k: getattr(args, k) for k in ("width", "height", "length", "steps", "seed", "fps") if getattr(args, k) is not None})

    if args.url:  # the SDK's local server: the job runs inside the first POST /status (no read timeout)
        base, headers, local = args.url.rstrip("/"), {}, True
    else:
        key = os.environ.get("RUNPOD_API_KEY")
        if not key:
            console.print("[red]error:[/red] set RUNPOD_API_KEY")
            return 1
        base, headers, local = f"https://api.runpod.ai/v2/{args.endpoint_id}", {"Authorization": f"Bearer {key}"}, False

    t0 = time.monotonic()
    with httpx.Client(headers=headers, timeout=httpx.Timeout(30, read=None if local else 30)) as http:
        r = http.post(f"{base}/run", json={"input": job})
        r.raise_for_status()
        job_id = r.json()["id"]
        console.print(f"job {job_id} submitted")
        try:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                          TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("queued", total=None)
                while True:
                    r = http.request("POST" if local else "GET", f"{base}/status/{job_id}")
                    r.raise_for_status()
                    status = r.json()
                    if status["status"] in TERMINAL:
                        break
                    if status["status"] == "IN_PROGRESS" and isinstance(status.get("output"), dict):
                        desc, frac = describe(status["output"])
                        bar.update(task, description=desc, **({} if frac is None else {"completed": frac * 100, "total": 100}))
                    time.sleep(1)
        except KeyboardInterrupt:
            if not local:
                http.post(f"{base}/cancel/{job_id}")
            console.print(f"[yellow]interrupted:[/yellow] job {job_id} cancelled")
            return 130

        if status["status"] != "COMPLETED" or not isinstance(status.get("output"), dict):
            msg = error_message(status) if status["status"] != "COMPLETED" else \
                "COMPLETED without output: the result was too large (configure a bucket on the worker)"
            console.print(f"[red]job {job_id} {status['status']}:[/red] {msg}")
            return 1
        out = status["output"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if out.get("video"):
            args.out.write_bytes(base64.b64decode(out["video"].split(",")[-1]))
        else:  # presigned URL: no API key there
            with httpx.stream("GET", out["video_url"], timeout=60) as resp:
                resp.raise_for_status()
                with args.out.open("wb") as f:
                    for chunk in resp.iter_bytes():
                        f.write(chunk)

    console.print(f"saved {args.out} ({out['width']}x{out['height']}, {out['frames']} frames @ {out['fps']} fps, "
                  f"seed {out['seed']}) in {time.monotonic() - t0:.1f} s")
    console.print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in out.get("timings", {}).items() if v is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
