"""A LoRA's safetensors header, checked against the Wan2.2 model before it reaches an engine.

A safetensors file starts with an 8-byte little-endian header length N and N bytes of JSON (tensor
name -> dtype, shape, offsets; plus an optional `__metadata__`). Only that header is read: from
the first bytes of a download (a ranged GET, so a wrong file is refused before it is fetched), or
from the file in the store.

Key layouts recognised (each reduced to a Wan module name such as `blocks.3.self_attn.q`):
- Kijai / ComfyUI / original Wan: `diffusion_model.blocks.N.self_attn.q.lora_down.weight`, `.alpha`,
  `.diff`, `.diff_b` (also with `model.diffusion_model.` or no prefix);
- diffusers / PEFT: `transformer.blocks.N.attn1.to_q.lora_A.weight` (attn1/attn2, to_q/k/v,
  to_out.0, ffn.net.0.proj, ffn.net.2, ...);
- kohya: `lora_unet_blocks_N_self_attn_q.lora_down.weight`.
A LoRA for another family (SD1.5/SDXL `lora_unet_down_blocks_...`, `lora_te_...`, Flux
`double_blocks`) reduces to names the Wan2.2 model does not have.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own cap
WAN22_LAYERS = 40  # Wan2.2 I2V A14B experts (the tiny stand-ins have fewer: a subset matches)

_PER_BLOCK = (
    [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in ("q", "k", "v", "o", "norm_q", "norm_k")]
    + ["norm3", "ffn.0", "ffn.2", "modulation"]
)
_TOP = ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
        "time_projection.1", "head.head", "head.modulation")


def wan22_modules(layers: int = WAN22_LAYERS) -> frozenset[str]:
    """The module names of a Wan2.2 I2V expert that a LoRA can patch (original Wan layout)."""
    return frozenset([*_TOP, *(f"blocks.{i}.{m}" for i in range(layers) for m in _PER_BLOCK)])


_WAN = wan22_modules()
_WAN_KOHYA = {m.replace(".", "_"): m for m in _WAN}

_SUFFIX = re.compile(
    r"\.(?:lora_down|lora_up|lora_A|lora_B|lora_mid|lora\.down|lora\.up)(?:\.[A-Za-z0-9_]+)?\.weight$"
    r"|\.(?:alpha|diff|diff_b|dora_scale|lora_magnitude_vector(?:\.[A-Za-z0-9_]+)?)$")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "model.")
# diffusers' Wan names -> the original Wan names
_DIFFUSERS = [
    (re.compile(r"\.attn1\.to_out\.0$"), ".self_attn.o"), (re.compile(r"\.attn2\.to_out\.0$"), ".cross_attn.o"),
    (re.compile(r"\.attn1\.to_([qkv])$"), r".self_attn.\1"), (re.compile(r"\.attn2\.to_([qkv])$"), r".cross_attn.\1"),
    (re.compile(r"\.attn1\.norm_([qk])$"), r".self_attn.norm_\1"), (re.compile(r"\.attn2\.norm_([qk])$"), r".cross_attn.norm_\1"),
    (re.compile(r"\.attn2\.add_k_proj$"), ".cross_attn.k_img"), (re.compile(r"\.attn2\.add_v_proj$"), ".cross_attn.v_img"),
    (re.compile(r"\.ffn\.net\.0\.proj$"), ".ffn.0"), (re.compile(r"\.ffn\.net\.2$"), ".ffn.2"),
    (re.compile(r"\.norm2$"), ".norm3"), (re.compile(r"\.scale_shift_table$"), ".modulation"),
    (re.compile(r"^condition_embedder\.text_embedder\.linear_1$"), "text_embedding.0"),
    (re.compile(r"^condition_embedder\.text_embedder\.linear_2$"), "text_embedding.2"),
    (re.compile(r"^condition_embedder\.time_embedder\.linear_1$"), "time_embedding.0"),
    (re.compile(r"^condition_embedder\.time_embedder\.linear_2$"), "time_embedding.2"),
    (re.compile(r"^condition_embedder\.time_proj$"), "time_projection.1"),
    (re.compile(r"^proj_out$"), "head.head"),
]


class HeaderError(Exception):
    """Not a safetensors file (the message says what was found instead)."""


@dataclass(frozen=True)
class LoraCheck:
    """What a LoRA's keys patch: module counts against the Wan2.2 model."""

    modules: int  # distinct modules the file patches
    matched: int  # of those, modules the Wan2.2 model has
    unmatched_examples: tuple[str, ...]  # a few unmatched module names, as written in the file
    family_hint: str | None = None  # e.g. "SD1.5/SDXL" when the keys look like another family's

    @property
    def unmatched(self) -> int:
        return self.modules - self.matched


def header_length(first8: bytes) -> int:
    """The JSON header's length from the file's first 8 bytes; HeaderError when it cannot be one."""
    if len(first8) < 8:
        raise HeaderError(f"the file is only {len(first8)} bytes long")
    if first8.startswith(b"PK\x03\x04"):
        raise HeaderError("it is a zip archive (e.g. a PyTorch .pt/.ckpt), not safetensors: convert it to safetensors")
    (n,) = struct.unpack("<Q", first8[:8])
    if n < 2 or n > MAX_HEADER_BYTES:
        what = first8[:8]
        hint = " (it looks like HTML: a web page, not the file?)" if what.lstrip()[:1] == b"<" else ""
        raise HeaderError(f"its first 8 bytes {what!r} are not a safetensors header length{hint}")
    return n


def parse_header(data: bytes) -> dict[str, dict]:
    """Tensor name -> info from the header JSON (without `__metadata__`); HeaderError if malformed."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"its header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise HeaderError("its header is not a JSON object")
    tensors = {k: v for k, v in doc.items() if k != "__metadata__"}
    for k, v in tensors.items():
        if not isinstance(v, dict) or "dtype" not in v or "shape" not in v:
            raise HeaderError(f"its header entry {k!r} is not a tensor description")
    if not tensors:
        raise HeaderError("it holds no tensors")
    return tensors


def read_header(path: Path) -> dict[str, dict]:
    with open(path, "rb") as f:
        n = header_length(f.read(8))
        data = f.read(n)
    if len(data) < n:
        raise HeaderError(f"the header is cut short ({len(data)} of {n} bytes)")
    return parse_header(data)


def module_of(key: str) -> str:
    """The module a LoRA tensor key patches, as written (suffix removed, prefix kept)."""
    return _SUFFIX.sub("", key)


def wan_name(module: str) -> str | None:
    """The Wan2.2 module a LoRA module name means, or None when it means none."""
    if module.startswith("lora_unet_"):
        return _WAN_KOHYA.get(module[len("lora_unet_"):])
    name = module
    for p in _PREFIXES:
        if name.startswith(p):
            name = name[len(p):]
            break
    if name in _WAN:
        return name
    for pattern, repl in _DIFFUSERS:
        new = pattern.sub(repl, name)
        if new != name:
            return new if new in _WAN else None
    return None


def check_keys(keys) -> LoraCheck:
    modules = sorted({module_of(k) for k in keys})
    unmatched = [m for m in modules if wan_name(m) is None]
    joined = " ".join(unmatched[:50])
    hint = None
    if re.search(r"(down_blocks|up_blocks|input_blocks|output_blocks|mid_block|middle_block)", joined) or "lora_te" in joined:
        hint = "SD1.5/SDXL"
    elif "double_blocks" in joined or "single_blocks" in joined:
        hint = "Flux"
    return LoraCheck(len(modules), len(modules) - len(unmatched), tuple(unmatched[:3]), hint)
