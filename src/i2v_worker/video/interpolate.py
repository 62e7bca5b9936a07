"""Frame interpolation with RIFE (IFNet v4.26 "heavy", the architecture `cccv` ships).

`interpolate(frames, k, model)` turns T frames into (T-1)*k+1: the originals stay at every k-th
position, byte for byte, and the k-1 frames between two neighbours come from IFNet at timesteps
1/k, ..., (k-1)/k (one batch per pair). Two equal neighbours give copies without running the model
(a still shot stays exactly still); k=1 is the identity. It is a generator, so the encoder can
consume frames while later pairs are still being computed.

`RifeModel.load(path, device)` builds cccv's `IFNet` and loads the checkpoint STRICTLY: every key
of the architecture must be in the file (cccv's own loader loads with strict=False, where a wrong
file would silently run on random weights). The checkpoint is the public RIFE v4.26 heavy file
in its published layout (a torch pickle of the state dict with `module.` prefixes, as cccv's
model zoo serves it); the worker gets it from the model store, never from cccv's downloader.

Inference follows cccv's `RIFEModel.inference`: frames resized (bilinear) to a multiple of 64,
flow scales 16/8/4/2/1, the result resized back; fp16 on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from i2v_worker.video.frames import to_uint8
from i2v_worker.error_codes import ErrorCode

FACTORS = (1, 2, 4)
SCALE_LIST = (16.0, 8.0, 4.0, 2.0, 1.0)  # RIFEModel.inference with scale=1.0


class InterpolationError(Exception):
    """The interpolation model could not be loaded or run; `message` names the file and the fix."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.MODEL_ERROR):
        super().__init__(message)
        self.message = message
        self.code = code


class InterpolationStopped(Exception):
    """`should_stop` returned True between two pairs (deadline or cancellation)."""


@dataclass
class RifeModel:
    net: object
    device: object
    dtype: object
    path: Path

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> "RifeModel":
        import torch

        try:
            from cccv.arch.vfi.ifnet_arch import IFNet
        except ImportError as exc:  # cccv absent, or OpenCV's system libraries missing
            raise InterpolationError(
                f"frame interpolation needs the cccv package and OpenCV's system libraries (Debian: libgl1 "
                f"libglib2.0-0): {exc}. Install i2v-worker[diffusers], or send interpolate 1",
                code=ErrorCode.ENGINE_UNAVAILABLE) from exc

        path = Path(path)
        dev = torch.device(device)
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file names itself
            raise InterpolationError(f"interpolation model {path.name} ({path}) is not a readable torch checkpoint: "
                                     f"{type(exc).__name__}: {exc}. Check it with `i2v-worker models verify`") from exc
        if not isinstance(raw, dict):
            raise InterpolationError(f"interpolation model {path.name} holds a {type(raw).__name__}, not a state dict")
        state = {k.removeprefix("module."): v for k, v in raw.items()}
        net = IFNet()
        expected = set(net.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise InterpolationError(
                f"interpolation model {path.name} does not match RIFE IFNet v4.26 heavy: {len(missing)} key(s) missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); the manifest entry "
                "must point at RIFE_IFNet_v426_heavy.pth or a file in its layout")
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # shapes
            raise InterpolationError(f"interpolation model {path.name} has tensors of the wrong shape: {exc}") from None
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
        net = net.eval().to(dev, dtype)
        return cls(net=net, device=dev, dtype=dtype, path=path)

    def between(self, a: np.ndarray, b: np.ndarray, k: int) -> list[np.ndarray]:
        """The k-1 frames between `a` and `b` ((H, W, 3) uint8), at timesteps i/k."""
        import torch
        from cccv.util.misc import de_resize, resize

        n = k - 1
        with torch.inference_mode():
            pair = torch.from_numpy(np.stack([a, b])).to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 255.0
            h, w = pair.shape[-2:]
            i0 = resize(pair[0:1], 1.0).expand(n, -1, -1, -1)
            i1 = resize(pair[1:2], 1.0).expand(n, -1, -1, -1)
            t = torch.tensor([i / k for i in range(1, k)], device=self.device, dtype=self.dtype).view(n, 1, 1, 1)
            t = t.expand(n, 1, *i0.shape[-2:])
            try:
                out = self.net(torch.cat([i0, i1], dim=1), t, list(SCALE_LIST))
            except torch.cuda.OutOfMemoryError:
                raise InterpolationError(
                    f"out of GPU memory interpolating {w}x{h} frames ({n} at a time) on {self.device}; "
                    "ask for interpolate 2 instead of 4, a smaller size, or run on a larger GPU",
                    code=ErrorCode.ENGINE_ERROR) from None
            out = de_resize(out, h, w) if out.shape[-2:] != (h, w) else out
            return list(to_uint8(out.float().clamp(0, 1).permute(0, 2, 3, 1)))


@dataclass
class InterpolationStats:
    pairs: int = 0
    model_pairs: int = 0  # pairs that ran the model (the rest were equal neighbours)
    seconds: float = 0.0  # time spent computing in-between frames
    extra: dict = field(default_factory=dict)


def output_length(frames: int, k: int) -> int:
    return (frames - 1) * k + 1


def interpolate(frames: Iterable[np.ndarray], k: int, model: RifeModel | None, *,
                on_pair: Callable[[int], None] | None = None, should_stop: Callable[[], bool] | None = None,
                stats: InterpolationStats | None = None,
                clock: Callable[[], float] = time.perf_counter) -> Iterator[np.ndarray]:
    """Yield the interpolated video frame by frame (see the module docstring).

    `on_pair(i)` is called after pair i (1-based) is done; `should_stop()` is checked before each
    pair and raises InterpolationStopped when true; `stats` collects counts and compute time."""
    if k not in FACTORS:
        raise ValueError(f"interpolation factor must be one of {FACTORS}, got {k}")
    stats = stats if stats is not None else InterpolationStats()
    prev: np.ndarray | None = None
    for cur in frames:
        if prev is not None and k > 1:
            if should_stop is not None and should_stop():
                raise InterpolationStopped()
            t0 = clock()
            if np.array_equal(prev, cur):
                mids = [prev] * (k - 1)
            else:
                if model is None:
                    raise InterpolationError("interpolation asked for but no model was loaded", code=ErrorCode.INTERNAL_ERROR)
                mids = model.between(prev, cur, k)
                stats.model_pairs += 1
            stats.seconds += clock() - t0
            stats.pairs += 1
            yield from mids
            if on_pair is not None:
                on_pair(stats.pairs)
        yield cur
        prev = cur


class ModelCache:
    """One loaded RIFE model per (file, device), kept between jobs; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], RifeModel] = {}
        self.loads = 0

    def get(self, path: Path, device: str) -> RifeModel:
        key = (str(Path(path)), str(device))
        with self._lock:
            model = self._models.get(key)
            if model is None:
                self._models.clear()  # another file or device: drop the old one first
                model = RifeModel.load(Path(path), device)
                self._models[key] = model
                self.loads += 1
            return model


def resolve_device(setting: str) -> str:
    """The worker's device setting (auto/cpu/cuda[:N]) -> a torch device string for the model."""
    want = (setting or "auto").strip().lower()
    if want == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return want
