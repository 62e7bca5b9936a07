"""After the engine: interpolate (when the job asks) and encode the file, once, for every engine.

`VideoFinisher.finish(video, ...)` runs RIFE (video/interpolate.py) and the one encoder
(video/encode.py) on a worker thread, streaming frames from one into the other, and reports
progress as `{"stage": "interpolate", "step": pairs done, "total": pairs}` (or one
`{"stage": "encode"}` without interpolation). It runs no timer: the handler owns the deadline and
cancels the awaiting task, which stops the thread before its next frame pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from i2v_worker.engines.base import GeneratedVideo
from i2v_worker.video.encode import EncodedVideo, VideoFormat, encode_video
from i2v_worker.error_codes import ErrorCode
from i2v_worker.video.interpolate import (InterpolationError, InterpolationStats, InterpolationStopped, ModelCache,
                                          interpolate, resolve_device)

# payload -> None, called on the event loop
ProgressEmit = Callable[[dict], None]


@dataclass
class Finished:
    video: EncodedVideo
    interpolate_s: float  # loading RIFE (first use) and computing in-between frames (0 for interpolate 1)
    encode_s: float  # the rest of the pass: encoding (and handing frames over)
    model_pairs: int = 0


def file_stem(job_id: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:80].lstrip(".") or "job"
    return f"{cleaned}-{uuid.uuid4().hex[:8]}"


class VideoFinisher:
    """Holds the RIFE model between jobs (one per file and device)."""

    def __init__(self, device: str = "auto", *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._device_setting = device
        self._clock = clock
        self.models = ModelCache()

    def device(self) -> str:
        return resolve_device(self._device_setting)

    async def finish(self, video: GeneratedVideo, *, job_id: str, output_dir: Path, factor: int,
                     format: VideoFormat | str, quality: int | None, interpolation_model: Path | None,
                     emit: ProgressEmit) -> Finished:
        """Raises InterpolationError (model_error) for an unusable model file, ValueError for bad frames."""
        loop = asyncio.get_running_loop()
        model = None
        load_s = 0.0
        if factor > 1:
            if interpolation_model is None:
                raise InterpolationError("interpolate > 1 but the preset has no interpolation model", code=ErrorCode.MODEL_ERROR)
            t_load = self._clock()
            model = await asyncio.to_thread(self.models.get, interpolation_model, self.device())
            load_s = self._clock() - t_load
        stop = threading.Event()
        total = max(0, video.frames - 1)

        def on_pair(i: int) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(emit, {"stage": "interpolate", "step": i, "total": total,
                                                 "percent": round(100 * i / total, 1) if total else None})

        def work() -> Finished:
            stats = InterpolationStats()
            t0 = self._clock()
            if factor > 1:
                frames = interpolate(video.pixels, factor, model, on_pair=on_pair, should_stop=stop.is_set,
                                     stats=stats, clock=self._clock)
            else:
                frames = iter(video.pixels)
            encoded = encode_video(_until(stop, frames), Path(output_dir) / file_stem(job_id), fps=video.fps * factor,
                                   format=format, quality=quality)
            elapsed = self._clock() - t0
            return Finished(encoded, interpolate_s=load_s + stats.seconds, encode_s=max(0.0, elapsed - stats.seconds),
                            model_pairs=stats.model_pairs)

        if factor == 1:
            emit({"stage": "encode"})
        fut = loop.run_in_executor(None, work)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            stop.set()  # the interpolation stops before its next pair
            await asyncio.wait({fut})
            with contextlib.suppress(BaseException):
                if fut.exception() is None:  # finished before it saw the stop: drop its file
                    fut.result().video.path.unlink(missing_ok=True)
            raise


def _until(stop: threading.Event, frames):
    """The frames, stopping (InterpolationStopped) once `stop` is set: cancellation reaches the encoder too."""
    for frame in frames:
        if stop.is_set():
            raise InterpolationStopped()
        yield frame


__all__ = ["VideoFinisher", "Finished", "InterpolationError", "InterpolationStopped", "file_stem"]
