"""Frames -> h264 MP4 (yuv420p) with PyAV, as ComfyUI's core CreateVideo + SaveVideo write it."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_mp4(frames: np.ndarray, path: Path, fps: int, *, crf: int = 19) -> Path:
    """Write `frames` (T, H, W, 3) uint8 RGB to `path` atomically (temp name, then rename).

    Encoding settings are fixed (and the encoder single-threaded), so the same frames give the
    same bytes. Caveat seen with PyAV 16.1's libx264: frames narrower than 64 px encoded
    differently from run to run (depending on heap contents); 64 px and wider were stable."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    # PyAV copies planes by row stride: hand it C-contiguous memory (a permuted tensor view is not)
    frames = np.ascontiguousarray(frames)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even width and height, got {w}x{h}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(crf), "preset": "medium"}
            stream.codec_context.thread_count = 1
            for i in range(t):
                frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, int(fps))
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
