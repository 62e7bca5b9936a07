"""Progress of `ModelStore.ensure`: one callback API, rendered as rich bars or throttled log lines.

The store feeds a `ProgressTracker` with raw byte counts (many per second); the tracker turns them
into `ProgressEvent`s per model and overall, throttled, and always lets phase changes through.
Callbacks run on the store's download threads: they must be quick and thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, TextIO

from i2v_worker.logs import Throttle, log
from i2v_worker.store.types import ProgressCallback, ProgressEvent

logger = logging.getLogger(__name__)


class ProgressTracker:
    """Per-model byte counts -> throttled ProgressEvents (a model's event, then the overall one:
    `model=None`, the phase of the model event that triggered it, done/total over all models)."""

    def __init__(
        self,
        callback: ProgressCallback | None,
        totals: dict[str, int | None],
        *,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cb = callback
        self._lock = threading.Lock()
        self._totals = dict(totals)
        self._done = {name: 0 for name in totals}
        self._phase: dict[str, str] = {}
        self._throttles = {name: Throttle(interval, clock) for name in totals}
        self._overall = Throttle(interval, clock)

    def set_total(self, model: str, total: int | None) -> None:
        with self._lock:
            self._totals[model] = total

    def overall(self) -> tuple[int, int | None]:
        totals = list(self._totals.values())
        total = None if any(t is None for t in totals) else sum(totals)  # type: ignore[arg-type]
        return sum(self._done.values()), total

    def update(self, model: str, phase: str, done: int | None = None, total: int | None = None,
               message: str = "", *, force: bool = False) -> None:
        if self._cb is None:
            return
        with self._lock:
            if total is not None:
                self._totals[model] = total
            if done is not None:
                self._done[model] = done
            changed = self._phase.get(model) != phase
            self._phase[model] = phase
            if not self._throttles.setdefault(model, Throttle(0)).ready(force=force or changed):
                return
            odone, ototal = self.overall()
            event = ProgressEvent(model, phase, self._done.get(model, 0), self._totals.get(model), odone, ototal, message)
            overall = None
            if self._overall.ready(force=force or changed):
                overall = ProgressEvent(None, phase, odone, ototal, odone, ototal, "")
        self._cb(event)
        if overall is not None:
            self._cb(overall)


class LogProgress:
    """Non-TTY rendering: a structured line when a model starts waiting for another worker, and
    overall byte progress at most every `interval` s. (The store itself logs publish and failure.)"""

    def __init__(self, interval: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 log_to: logging.Logger = logger) -> None:
        self._throttle = Throttle(interval, clock)
        self._logger = log_to
        self._lock = threading.Lock()
        self._last: dict[str | None, tuple[str, str]] = {}

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.model is not None:
                key = (event.phase, event.message)
                if event.phase == "waiting" and self._last.get(event.model) != key:
                    log(self._logger, logging.INFO, "model waiting", model=event.model, detail=event.message)
                self._last[event.model] = key
                return
            if event.overall_done > 0 and self._throttle.ready():
                total = event.overall_total
                pct = f"{100 * event.overall_done / total:.1f}" if total else "?"
                log(self._logger, logging.INFO, "models downloading", done_mb=round(event.overall_done / 1e6, 1),
                    total_mb=round(total / 1e6, 1) if total else "?", percent=pct)


class RichProgress:
    """TTY rendering: one rich progress bar per model plus a total; use as a context manager."""

    def __init__(self, names: Iterable[str], stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._progress = Progress(
            TextColumn("{task.description}", justify="left"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[phase]}"),
            console=Console(file=stream, stderr=stream is None), transient=False,
        )
        self._tasks = {n: self._progress.add_task(n, total=None, phase="", start=True) for n in names}
        self._overall = self._progress.add_task("[bold]total", total=None, phase="")
        self._lock = threading.Lock()

    def __enter__(self) -> "RichProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            if event.model is None:
                self._progress.update(self._overall, completed=event.overall_done, total=event.overall_total)
                return
            task = self._tasks.get(event.model)
            if task is None:
                task = self._tasks[event.model] = self._progress.add_task(event.model, total=None, phase="")
            phase = event.phase if not event.message else f"{event.phase}: {event.message}"
            self._progress.update(task, completed=event.done, total=event.total, phase=phase)
