"""The line between the worker and an engine (cog's predictor interface, in spirit).

The worker validates a job, fetches and re-encodes the image, makes sure the models the request
needs are in the store, and then hands an engine a `GenerationRequest`. The engine returns a
`GeneratedVideo` (the decoded frames, lossless: uint8 RGB) or raises `EngineError` with a readable
message. The worker then interpolates (when asked) and encodes the file with the one encoder
(`i2v_worker.video`), so both engines' outputs go through the same code. Engines never read the
environment, never download anything and run no timer of their own: the worker owns the job's
deadline and stops an engine by cancelling the task that awaits `generate` (see `Engine`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, runtime_checkable

from i2v_worker.error_codes import ErrorCode


class ModelRole(str, enum.Enum):
    """The five slots of the Wan2.2 I2V graph; a manifest preset maps each to one model entry."""

    HIGH_NOISE = "high_noise"  # expert that runs the first `high_noise_steps` steps
    LOW_NOISE = "low_noise"  # expert that runs the remaining steps
    TEXT_ENCODER = "text_encoder"  # UMT5-XXL fp8-scaled, with embedded SentencePiece model
    VAE = "vae"  # Wan 2.1 VAE
    LORA = "lora"  # lightx2v step-distill LoRA, applied to both experts
    # Not a graph slot: RIFE frame interpolation, run by the worker on the engine's frames (only
    # for jobs with interpolate > 1; never prefetched, never handed to an engine).
    INTERPOLATION = "interpolation"


@dataclass(frozen=True)
class JobLora:
    """A LoRA the job brings (besides the preset's lightx2v), already in the store and checked."""

    name: str  # the file's name in the store's loras folder, as ComfyUI lists it (e.g. job/<sha256>.safetensors)
    path: Path
    strength_high: float  # 0: not applied on the high-noise expert
    strength_low: float  # 0: not applied on the low-noise expert
    label: str = ""  # the job's entry, e.g. "loras[0]" (for error messages)


@dataclass(frozen=True)
class GenerationRequest:
    job_id: str
    image_png: bytes  # the start image: decoded, EXIF-rotated, fitted to width x height (the worker's one resize), PNG
    prompt: str
    negative_prompt: str
    width: int
    height: int
    length: int  # frames, 4k+1
    fps: int
    steps: int
    high_noise_steps: int  # steps [0, high_noise_steps) on the high-noise expert, the rest on the low-noise one
    cfg: float
    shift: float
    seed: int
    lora_strength_high: float
    lora_strength_low: float
    # role -> (model entry name, published path); LORA absent when both strengths are 0
    models: dict[ModelRole, tuple[str, Path]] = field(default_factory=dict)
    output_dir: Path = Path("out")
    # first-last-frame: the last frame, decoded and re-encoded as PNG like image_png (None: image-to-video)
    end_image_png: bytes | None = None
    # job LoRAs, applied after the lightx2v LoRA, in this order
    loras: tuple[JobLora, ...] = ()


@dataclass(frozen=True)
class EngineProgress:
    """Sampling progress: `step` of `total` steps over both experts; `stage` is e.g. 'sampling'."""

    stage: str
    step: int
    total: int
    message: str = ""


@dataclass
class GeneratedVideo:
    """The engine's result before any lossy step: `pixels` is a (T, H, W, 3) uint8 RGB numpy array,
    converted from the decoder's floats with `i2v_worker.video.frames.to_uint8` (ComfyUI's rule)."""

    pixels: Any
    fps: int
    timings: dict[str, float] = field(default_factory=dict)  # engine-side: queue, inference, ... (s)

    @property
    def frames(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[2])


class EngineError(Exception):
    """A failure the user sees: `message` is one readable line, `details` carries the rest.

    `code` is the worker's `error_code` (an ErrorCode: engine_error, engine_unavailable,
    engine_crashed, invalid_graph, cancelled, model_error); `log_tail` holds the last lines of the
    engine's log when it crashed.
    """

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.ENGINE_ERROR, details: Any = None,
                 log_tail: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details
        self.log_tail = log_tail


ProgressFn = Callable[[EngineProgress], None]


@runtime_checkable
class Engine(Protocol):
    name: str

    async def start(self) -> None:
        """Start (or attach to) the engine; returns once it can take a job or raises EngineError."""

    async def generate(self, request: GenerationRequest, progress: ProgressFn) -> GeneratedVideo:
        """Run one job. Cancelling the awaiting task interrupts the engine's work for this job
        (ComfyUI `/interrupt`, diffusers between steps) before CancelledError propagates. That is
        the only stop signal: the caller (the worker's deadline, RunPod's cancel) owns the time."""

    async def health(self) -> dict[str, Any]:
        """Readiness, versions and device, without generating."""

    async def close(self) -> None:
        """Stop child processes and release memory."""
