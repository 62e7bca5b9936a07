"""Frames as the worker passes them around: (T, H, W, 3) uint8 RGB, and the one float -> uint8 rule.

`to_uint8` is THE conversion of decoded pixels in [0, 1] to bytes, used by the diffusers engine's
VAE output and by the interpolator: floor(clip(255 * x, 0, 255)), which is what ComfyUI's image
savers do (`np.clip(255. * i, 0, 255).astype(np.uint8)`), so both engines' frames agree byte for
byte where their floats do. (Truncation biases by -0.5/255 on average; no lossy encode shows it.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def to_uint8(x01: Any) -> np.ndarray:
    """Pixels in [0, 1] (numpy array or torch tensor, any float dtype) -> uint8, ComfyUI's rule."""
    if hasattr(x01, "detach"):  # a torch tensor: the same arithmetic in float32 on its device
        import torch

        t = x01.detach().float()
        return (t * 255.0).clamp(0, 255).to(torch.uint8).cpu().numpy()
    arr = np.asarray(x01, dtype=np.float32)
    return np.clip(arr * np.float32(255.0), 0, 255).astype(np.uint8)


def check_frames(frames: np.ndarray) -> tuple[int, int, int]:
    """(T, H, W) of a valid frame stack, or ValueError naming what is wrong."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {shape} {getattr(frames, 'dtype', type(frames))}")
    t, h, w, _ = frames.shape
    if t < 1:
        raise ValueError("frames must hold at least one frame")
    return t, h, w


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 frame stacks (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
