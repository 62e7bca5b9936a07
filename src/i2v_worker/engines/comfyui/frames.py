"""Reading the graph's lossless output back: SaveAnimatedPNG's APNG -> (T, H, W, 3) uint8 frames.

Pillow (which ComfyUI's SaveAnimatedPNG writes with) merges a frame that equals the previous one
into it and adds up the delays. The graph writes every frame with a delay of 1000/FRAME_DELAY_FPS
ms, so each stored frame's delay divided by that is how many times it repeats. The count must add
up to the frames the request asked for, or the output is refused (never a silently shorter video).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2v_worker.engines.base import EngineError
from i2v_worker.engines.comfyui.graph import FRAME_DELAY_FPS


def read_frames(path: Path, expected: int) -> np.ndarray:
    from PIL import Image, ImageSequence

    unit_ms = int(1000.0 / FRAME_DELAY_FPS)
    frames: list[np.ndarray] = []
    try:
        with Image.open(path, formats=["PNG"]) as im:
            for frame in ImageSequence.Iterator(im):
                repeat = max(1, round(float(frame.info.get("duration", unit_ms)) / unit_ms))
                arr = np.asarray(frame.convert("RGB"), dtype=np.uint8)
                frames.extend([arr] * repeat)
    except (OSError, ValueError, SyntaxError) as exc:
        raise EngineError(f"ComfyUI's frames file {path.name} could not be read: {exc}") from None
    if len(frames) != expected:
        raise EngineError(f"ComfyUI's frames file {path.name} holds {len(frames)} frames, the job asked for {expected}",
                          details={"file": str(path), "frames": len(frames), "expected": expected})
    return np.stack(frames)
