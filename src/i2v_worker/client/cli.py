"""`i2v-worker submit`: send one image + prompt to a RunPod endpoint or the local API, show the
worker's progress, save the MP4 and print timings.

Exit status: 0 when the video is saved; 1 when the job ends FAILED / TIMED_OUT / CANCELLED (the
worker's error message is printed) or the endpoint cannot be used; 130 after Ctrl-C (the job is
cancelled on RunPod first).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from i2v_worker.client.api import (
    RUNPOD_API_BASE,
    ClientError,
    Endpoint,
    I2VClient,
    JobFailed,
    JobState,
    JobStatus,
    WaitTimeout,
    build_input,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "submit",
        help="send an image + prompt to a RunPod endpoint or the local API and save the MP4",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", required=True, help="local image file (sent as image_base64) or http(s) URL (sent as image_url)")
    p.add_argument("--prompt", required=True, help="what should happen in the video")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint-id", help="RunPod serverless endpoint id (needs RUNPOD_API_KEY or --api-key)")
    target.add_argument("--url", help="local API base URL, e.g. http://127.0.0.1:8000 (`i2v-worker serve --rp_serve_api`)")
    p.add_argument("--api-key", help="RunPod API key (default: RUNPOD_API_KEY)")
    p.add_argument("--api-base", default=RUNPOD_API_BASE, help=f"RunPod API base (default {RUNPOD_API_BASE})")
    p.add_argument("--negative-prompt")
    p.add_argument("--width", type=int, help="multiple of 16 (default: from the image's aspect ratio at 480p)")
    p.add_argument("--height", type=int, help="multiple of 16")
    p.add_argument("--length", type=int, help="frames, 4k+1 (default 81)")
    p.add_argument("--fps", type=int, help="default 16")
    p.add_argument("--steps", type=int, help="default 4")
    p.add_argument("--seed", type=int, help="default: random (always returned)")
    p.add_argument("--interpolate", type=int, choices=[1, 2, 4],
                   help="RIFE frame interpolation factor: (length-1)*k+1 frames at k*fps (default 1, off)")
    p.add_argument("--delivery", choices=["auto", "base64", "url"], help="how the worker returns the video (default auto)")
    p.add_argument("--format", choices=["mp4", "webm", "gif"], help="file format (default mp4)")
    p.add_argument("--quality", type=int, help="crf-like, lower is better (mp4 0..51 default 19, webm 0..63 default 31)")
    p.add_argument("--out", type=Path, default=Path("video.mp4"), help="where to save the video (default video.mp4)")
    p.add_argument("--execution-timeout", type=float, metavar="SECONDS",
                   help="RunPod execution timeout for this job (policy.executionTimeout), e.g. 1800 for a first "
                   "job that downloads the ~27 GB of models; default: the endpoint's setting")
    p.add_argument("--timeout", type=float, help="stop waiting after this many seconds (the job is cancelled)")
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between /status polls (default 1)")
    p.set_defaults(func=run)


def _endpoint(args: argparse.Namespace) -> Endpoint:
    if args.url:
        return Endpoint.local_api(args.url)
    api_key = args.api_key
    if not api_key:
        from i2v_worker.config import Settings

        api_key = Settings.from_env().runpod_api_key
    return Endpoint.runpod(args.endpoint_id, api_key or "", api_base=args.api_base)


def _job_input(args: argparse.Namespace) -> dict[str, Any]:
    return build_input(
        args.image,
        args.prompt,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        length=args.length,
        fps=args.fps,
        steps=args.steps,
        seed=args.seed,
        interpolate=args.interpolate,
        output={k: v for k, v in (("delivery", args.delivery), ("format", args.format), ("quality", args.quality))
                if v is not None} or None,
    )


class _ProgressView:
    """Feeds a rich progress bar from /status answers: queue, then the worker's progress updates
    (one bar per stage: downloading models, sampling, ...)."""

    def __init__(self, progress: Progress, first: str = "submitted"):
        self.progress = progress
        self.task = progress.add_task(first, total=None)
        self.stage: str | None = None

    def __call__(self, st: JobStatus) -> None:
        if st.status is JobState.COMPLETED:
            if self.stage is None:  # no progress was reported (local API): say it ran
                self.progress.update(self.task, description="done")
            self.progress.update(self.task, completed=100, total=100)
            return
        if st.status is JobState.IN_QUEUE:
            self.progress.update(self.task, description="in queue (waiting for a worker)")
            return
        upd = st.progress
        if upd is None:
            if st.status is JobState.IN_PROGRESS:
                self.progress.update(self.task, description="running")
            return
        if upd.stage != self.stage:  # a new stage gets a fresh bar; the old one stays on screen
            if self.stage is not None:
                self.progress.update(self.task, completed=100, total=100)
                self.task = self.progress.add_task(upd.stage, total=None)
            self.stage = upd.stage
        frac = upd.fraction()
        desc = escape(upd.describe())
        if frac is None:
            self.progress.update(self.task, description=desc)
        else:
            self.progress.update(self.task, description=desc, completed=frac * 100, total=100)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        endpoint = _endpoint(args)
        job_input = _job_input(args)
    except ClientError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1

    t0 = time.monotonic()
    job_id: str | None = None
    with I2VClient(endpoint, poll_interval=args.poll_interval) as client:
        try:
            job_id = client.submit(job_input, execution_timeout_s=args.execution_timeout)
            t_submit = time.monotonic()
            console.print(f"job [bold]{job_id}[/bold] submitted to {endpoint.base_url}")
            with Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                TimeElapsedColumn(), console=console, transient=False,
            ) as progress:
                # The local API runs the job inside the first /status call and reports no progress.
                first = "running (the local API reports no progress)" if endpoint.local else "submitted"
                final = client.wait(job_id, on_update=_ProgressView(progress, first), timeout=args.timeout)
            t_done = time.monotonic()
            result = client.save_video(final, args.out)
            t_saved = time.monotonic()
        except KeyboardInterrupt:
            if job_id:
                sent = client.cancel(job_id)
                console.print(f"[yellow]interrupted:[/yellow] job {job_id} " + ("cancelled" if sent else "left running (this target has no /cancel)"))
            return 130
        except JobFailed as exc:
            console.print(f"[red]job {exc.status.id} {exc.status.status.value}:[/red] {escape(exc.message)}")
            return 1
        except ClientError as exc:
            if job_id and isinstance(exc, WaitTimeout):
                console.print(f"[red]error:[/red] {escape(str(exc))}; " + ("cancelled it" if client.cancel(job_id) else "it keeps running"))
                return 1
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            return 1

    _print_summary(console, args.out, final, result, submit=t_submit - t0, wait=t_done - t_submit, save=t_saved - t_done, total=t_saved - t0)
    print(args.out)  # stdout carries only the video's path (for scripts); everything else is on stderr
    return 0


def _print_summary(console: Console, out: Path, final: JobStatus, result, **client_times: float) -> None:
    console.print(
        f"[green]saved[/green] {escape(str(out))} ({out.stat().st_size / 1e6:.2f} MB, {result.width}x{result.height}, "
        f"{result.frames} frames @ {result.fps} fps, seed {result.seed})"
    )
    table = Table(title="timings (s)", show_header=True)
    table.add_column("where")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for name, secs in client_times.items():
        table.add_row("client", name, f"{secs:.2f}")
    if final.delayTime is not None:
        table.add_row("runpod", "queue + cold start", f"{final.delayTime / 1000:.2f}")
    if final.executionTime is not None:
        table.add_row("runpod", "execution", f"{final.executionTime / 1000:.2f}")
    for name, secs in (result.timings or {}).items():
        if secs is not None:
            table.add_row("worker", name, f"{float(secs):.2f}")
    console.print(table)
    for warning in result.warnings or []:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
