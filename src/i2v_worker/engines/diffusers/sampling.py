"""Sampling with ComfyUI's semantics: the `simple` schedule on a shifted flow model, euler steps,
the expert handover at `high_noise_steps`, and CFG only when cfg > 1.

Hand-written instead of diffusers' `WanImageToVideoPipeline` + `FlowMatchEulerDiscreteScheduler`:
the pipeline takes neither custom sigmas nor a step-based handover (its `boundary_ratio` switches
experts by timestep value, which for the `simple` schedule lands on a different step than the
ComfyUI graph's `end_at_step`), and it gives no hook between steps to stop a job. The loop is a few
lines; matching the graph step for step is what users of both engines rely on.

ComfyUI references (vendored ComfyUI 0.3.75):
- `comfy/model_sampling.py` `ModelSamplingDiscreteFlow` + `time_snr_shift`: the table of 1000
  sigmas `shift*t / (1 + (shift-1)*t)` for t = 1/1000 .. 1, and timestep = sigma * 1000;
- `comfy/samplers.py` `simple_scheduler`: `steps` sigmas taken evenly from the top of that table,
  then 0;
- `comfy/k_diffusion/sampling.py` `sample_euler`: x += (x - denoised) / sigma * (sigma_next - sigma),
  which for a flow (v-prediction, denoised = x - sigma * v) is x += v * (sigma_next - sigma);
- `KSamplerAdvanced` pair: the high-noise expert runs sigmas[0 : K+1], the low-noise one
  sigmas[K:], over ONE schedule of `steps` steps; noise is added once (x = sigma_0 * noise, the
  latent being zeros).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

TIMESTEPS = 1000  # ComfyUI's table size and timestep multiplier for flow models

HIGH = "high_noise"
LOW = "low_noise"


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """Same expression as ComfyUI's `time_snr_shift(alpha, t)`."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flow_sigma_table(shift: float, timesteps: int = TIMESTEPS) -> torch.Tensor:
    """The float32 sigma table of `ModelSamplingDiscreteFlow.set_parameters(shift=...)`, computed with
    the same operations so the values are bit-identical."""
    ts = (torch.arange(1, timesteps + 1, 1) / timesteps) * TIMESTEPS
    return time_snr_shift(shift, ts / TIMESTEPS)


def simple_sigmas(steps: int, shift: float) -> torch.Tensor:
    """ComfyUI's `simple` scheduler on a flow model with `shift`: `steps` + 1 sigmas ending in 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    if shift <= 0:
        raise ValueError(f"shift must be positive (got {shift})")
    table = flow_sigma_table(shift)
    ss = len(table) / steps
    sigs = [float(table[-(1 + int(x * ss))]) for x in range(steps)]
    sigs.append(0.0)
    return torch.FloatTensor(sigs)


def expert_for_step(step: int, high_noise_steps: int) -> str:
    """Steps [0, high_noise_steps) run on the high-noise expert, the rest on the low-noise one."""
    return HIGH if step < high_noise_steps else LOW


class SamplingCancelled(Exception):
    """The job's cancel event was set; raised between steps."""


@dataclass
class SamplingRecord:
    """What ran: the sigmas and, per step, which expert (tests and logs read it)."""

    sigmas: list[float] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)
    guidance_passes: int = 0  # unconditional forward passes (0 when cfg == 1)


# model(x_in, timestep, context) -> velocity, with x_in the 36-channel I2V input
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sample_euler(
    experts: dict[str, DenoiseFn],
    noise: torch.Tensor,
    condition: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    high_noise_steps: int,
    context: torch.Tensor,
    context_negative: torch.Tensor | None,
    cfg: float,
    *,
    cancel: threading.Event | None = None,
    check: Callable[[], None] | None = None,
    on_step: Callable[[int, int, str], None] | None = None,
    record: SamplingRecord | None = None,
) -> torch.Tensor:
    """Euler over `sigmas` with the I2V `condition` (mask 4 + image latent 16 channels) concatenated
    to the 16-channel latent at every step. `cancel` and `check` (e.g. a deadline) are consulted
    before each step; `on_step(i, total, expert)` after each."""
    sig = [float(s) for s in sigmas]
    total = len(sig) - 1
    record = record if record is not None else SamplingRecord()
    record.sigmas = sig
    use_cfg = cfg != 1.0
    if use_cfg and context_negative is None:
        raise ValueError("cfg != 1 needs the negative prompt's embedding")
    x = noise * sig[0]  # CONST noise scaling on a zero latent: sigma * noise + (1 - sigma) * 0
    for i in range(total):
        if cancel is not None and cancel.is_set():
            raise SamplingCancelled()
        if check is not None:
            check()
        which = expert_for_step(i, high_noise_steps)
        model = experts[which]
        sigma, sigma_next = sig[i], sig[i + 1]
        x_in = torch.cat([x, condition], dim=1).to(condition.dtype)
        t = torch.full((x.shape[0],), sigma * TIMESTEPS, device=x.device, dtype=torch.float32)
        v = model(x_in, t, context).float()
        if use_cfg:
            v_neg = model(x_in, t, context_negative).float()
            v = v_neg + cfg * (v - v_neg)
            record.guidance_passes += 1
        x = x + v * (sigma_next - sigma)
        record.experts.append(which)
        if on_step is not None:
            on_step(i + 1, total, which)
    return x
