"""Load the store's files into diffusers components, offline, with configs shipped in the package.

- Experts: the Q5_0 GGUF files (original Wan key layout) through `WanTransformer3DModel.
  from_single_file` with `GGUFQuantizationConfig`. The architecture config comes from
  `configs/<name>/config.json` (the manifest entry's `config`); diffusers' auto-detection would
  fetch a Wan2.1 config from the hub, which is both a download and wrong for Wan2.2 (no CLIP-vision
  image embedder). Without a named config, the shapes in the file decide.
- VAE: `AutoencoderKLWan.from_single_file` with the shipped Wan2.1 VAE config, its width taken
  from the file (the tiny VAE is narrower).
- LoRA: Kijai/lightx2v layout converted with diffusers' Wan converter, keys for modules Wan2.2
  lacks (the Wan2.1 I2V `k_img`/`v_img` image projections) dropped before loading, so the log stays
  quiet; loaded as a PEFT adapter (unfused: GGUF weights cannot be merged) whose weight is the job's
  strength for that expert.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from i2v_worker.engines.base import EngineError
from i2v_worker.logs import log
from i2v_worker.error_codes import ErrorCode

logger = logging.getLogger("i2v_worker.engines.diffusers")

VAE_CONFIG = "wan21-vae"
ADAPTER = "lightx2v"
HEAD_DIM = 128  # Wan attention head width (heads = dim / 128 for every Wan2.x DiT)


def config_dir(name: str) -> Path:
    """The packaged config folder `configs/<name>` (raises EngineError for an unknown name)."""
    root = resources.files("i2v_worker.engines.diffusers") / "configs"
    path = Path(str(root / name))
    if not (path / "config.json").is_file():
        known = sorted(p.name for p in Path(str(root)).iterdir() if (p / "config.json").is_file())
        raise EngineError(
            f"unknown architecture config {name!r} (shipped: {', '.join(known)}); fix the manifest entry's `config`",
            code=ErrorCode.MODEL_ERROR,
        )
    return path


def _read_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


# ------------------------------------------------------------------------------------------------
# Experts (GGUF)


@dataclass(frozen=True)
class ExpertShape:
    """Architecture facts read from a Wan DiT file's tensor shapes (original Wan key layout)."""

    dim: int
    ffn_dim: int
    num_layers: int
    in_channels: int
    out_channels: int
    text_dim: int
    freq_dim: int
    has_image_embedder: bool

    def as_config(self) -> dict[str, Any]:
        return dict(
            num_attention_heads=self.dim // HEAD_DIM, attention_head_dim=HEAD_DIM, ffn_dim=self.ffn_dim,
            num_layers=self.num_layers, in_channels=self.in_channels, out_channels=self.out_channels,
            text_dim=self.text_dim, freq_dim=self.freq_dim,
        )


def read_gguf(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(name -> logical shape, name -> original shape from ComfyUI-GGUF's `comfy.gguf.orig_shape.*`
    metadata). Reads only the header (memory-mapped)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape.tolist())) for t in reader.tensors}
    orig: dict[str, tuple[int, ...]] = {}
    prefix = "comfy.gguf.orig_shape."
    for name, fld in reader.fields.items():
        if name.startswith(prefix):
            orig[name[len(prefix):]] = tuple(int(fld.parts[i][0]) for i in fld.data)
    return {k: orig.get(k, v) for k, v in shapes.items()}, orig


def expert_shape(shapes: dict[str, tuple[int, ...]], source: str) -> ExpertShape:
    shapes = {k.removeprefix("model.diffusion_model."): v for k, v in shapes.items()}

    def need(key: str) -> tuple[int, ...]:
        if key in shapes:
            return shapes[key]
        raise EngineError(
            f"{source}: tensor {key!r} is missing; not a Wan DiT file in the original Wan key layout",
            code=ErrorCode.MODEL_ERROR,
        )

    layers = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    head = need("head.head.weight")
    patch = need("patch_embedding.weight")
    dim = need("head.modulation")[-1]
    return ExpertShape(
        dim=dim, ffn_dim=need("blocks.0.ffn.0.weight")[0], num_layers=len(layers), in_channels=patch[1],
        out_channels=head[0] // 4, text_dim=need("text_embedding.0.weight")[1],
        freq_dim=need("time_embedding.0.weight")[1],
        has_image_embedder=any(k.startswith("img_emb.") for k in shapes),
    )


def _check_against(config: dict[str, Any], shape: ExpertShape, name: str, source: str) -> None:
    want = shape.as_config()
    bad = [f"{k}: file {v}, config {config.get(k)}" for k, v in want.items() if config.get(k) != v]
    if bad:
        raise EngineError(
            f"{source}: does not match architecture config {name!r} ({'; '.join(bad)}); "
            "fix the manifest entry's `config` or the file",
            code=ErrorCode.MODEL_ERROR,
        )


def load_expert(path: Path, *, config_name: str | None, device: torch.device, dtype: torch.dtype):
    """One Wan2.2 expert from a GGUF file, quantized weights kept (dequantized per layer at run)."""
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    shapes, orig = read_gguf(path)
    shape = expert_shape(shapes, str(path))
    if shape.has_image_embedder:
        raise EngineError(f"{path}: has a CLIP-vision image embedder (Wan2.1 I2V); this engine runs Wan2.2 I2V experts", code=ErrorCode.MODEL_ERROR)
    if config_name:
        cfg_dir = config_dir(config_name)
        _check_against(_read_config(cfg_dir), shape, config_name, str(path))
        overrides: dict[str, Any] = {}
    else:  # no config named: the production config's defaults, sizes from the file
        cfg_dir = config_dir("wan22-i2v-a14b")
        overrides = shape.as_config()

    checkpoint = load_gguf_checkpoint(str(path))
    for key, shp in orig.items():  # ComfyUI-GGUF stores >4-D tensors flattened, original shape in metadata
        t = checkpoint.get(key)
        if t is not None and not hasattr(t, "quant_type") and tuple(t.shape) != shp:
            checkpoint[key] = t.reshape(shp)
    model = WanTransformer3DModel.from_single_file(
        checkpoint,
        config=str(cfg_dir),
        local_files_only=True,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        torch_dtype=dtype,
        **overrides,
    )
    _dequantize_time_embedder(model)
    return model.to(device).eval().requires_grad_(False)


def _dequantize_time_embedder(model) -> None:
    """diffusers casts the timestep to the time embedder's parameter dtype, skipping only int8: with
    a GGUF-quantized (uint8) time embedder the timestep turns into bytes. The embedder is small and
    kept in float32 anyway (`_keep_in_fp32_modules`), so it is dequantized once here."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    emb = model.condition_embedder.time_embedder
    for name, child in list(emb.named_children()):
        if isinstance(child, torch.nn.Linear) and hasattr(child.weight, "quant_type"):
            lin = torch.nn.Linear(child.in_features, child.out_features, child.bias is not None, device=child.weight.device)
            lin.weight = torch.nn.Parameter(dequantize_gguf_tensor(child.weight).to(torch.float32), requires_grad=False)
            if child.bias is not None:
                lin.bias = torch.nn.Parameter(child.bias.detach().to(torch.float32), requires_grad=False)
            setattr(emb, name, lin)
    emb.to(torch.float32)


# ------------------------------------------------------------------------------------------------
# VAE


def _vae_overrides(tensors_keys: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    conv1 = tensors_keys.get("encoder.conv1.weight")
    post = tensors_keys.get("conv2.weight")
    if conv1 is None or post is None:
        raise EngineError("VAE file has no encoder.conv1/conv2 weights; not a Wan2.1 VAE in the original layout", code=ErrorCode.MODEL_ERROR)
    return {"base_dim": int(conv1[0]), "z_dim": int(post[0])}


def load_vae(path: Path, *, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if "decoder.middle.0.residual.0.gamma" not in shapes:
        raise EngineError(f"{path}: not a Wan2.1 VAE (no decoder.middle.0.residual.0.gamma)", code=ErrorCode.MODEL_ERROR)
    overrides = _vae_overrides(shapes)
    if overrides["z_dim"] != 16:
        raise EngineError(f"{path}: latent channels {overrides['z_dim']}, the Wan2.1 VAE has 16 (the Wan2.2 5B VAE is not supported)", code=ErrorCode.MODEL_ERROR)
    vae = AutoencoderKLWan.from_single_file(
        str(path), config=str(config_dir(VAE_CONFIG)), local_files_only=True, torch_dtype=dtype, **overrides
    )
    return vae.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# LoRA


def lora_state_for(model, path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The LoRA file converted to diffusers keys, restricted to modules `model` has; returns
    (state dict without the `transformer.` prefix, number of keys skipped)."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers
    from safetensors.torch import load_file

    raw = load_file(str(path))
    if any(k.startswith("diffusion_model.") for k in raw):
        converted = _convert_non_diffusers_wan_lora_to_diffusers(raw)
    else:  # already diffusers/PEFT layout
        converted = raw
    modules = {n for n, _ in model.named_modules()}
    keep: dict[str, torch.Tensor] = {}
    skipped = 0
    for key, value in converted.items():
        k = key.removeprefix("transformer.")
        module = k.split(".lora_", 1)[0] if ".lora_" in k else None
        if module is None or module not in modules:
            skipped += 1  # e.g. Wan2.1 I2V k_img/v_img projections: Wan2.2 has no image cross-attention
            continue
        keep[k] = value
    if not keep:
        raise EngineError(f"{path}: no LoRA weights match the expert's layers; not a Wan LoRA?", code=ErrorCode.MODEL_ERROR)
    return keep, skipped


def load_lora_into(model, path: Path, *, dtype: torch.dtype) -> int:
    """Add the LoRA at `path` to `model` as adapter `lightx2v` (replacing a previous one)."""
    state, skipped = lora_state_for(model, path)
    state = {k: v.to(dtype) for k, v in state.items()}
    if ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapters([ADAPTER])
    model.load_lora_adapter(state, adapter_name=ADAPTER, prefix=None)
    log(logger, logging.DEBUG, "lora loaded", file=path.name, tensors=len(state), skipped=skipped)
    return skipped


def set_lora_strength(model, strength: float) -> None:
    """Apply the adapter with `strength` (0 disables it) for the next forward passes."""
    if ADAPTER not in getattr(model, "peft_config", {}):
        return
    if strength == 0:
        model.disable_adapters()
    else:
        model.enable_adapters()
        model.set_adapters([ADAPTER], weights=[float(strength)])


JOB_ADAPTER_PREFIX = "job"


def load_named_lora(model, path: Path, adapter_name: str, *, dtype: torch.dtype) -> int:
    """Add the LoRA at `path` to `model` as adapter `adapter_name` (replacing one of that name)."""
    state, skipped = lora_state_for(model, path)
    state = {k: v.to(dtype) for k, v in state.items()}
    if adapter_name in getattr(model, "peft_config", {}):
        model.delete_adapters([adapter_name])
    model.load_lora_adapter(state, adapter_name=adapter_name, prefix=None)
    log(logger, logging.DEBUG, "lora loaded", file=path.name, adapter=adapter_name, tensors=len(state), skipped=skipped)
    return skipped


def set_adapter_weights(model, weights: dict[str, float]) -> None:
    """Exactly these adapters active at these weights (none: adapters disabled)."""
    if not getattr(model, "peft_config", {}):
        return
    if not weights:
        model.disable_adapters()
        return
    model.enable_adapters()
    model.set_adapters(list(weights), weights=[float(w) for w in weights.values()])


def delete_job_adapters(model) -> None:
    names = [n for n in getattr(model, "peft_config", {}) if n.startswith(JOB_ADAPTER_PREFIX)]
    if names:
        model.delete_adapters(names)
