"""The UMT5 text encoder from ComfyUI's fp8-scaled single file, and its embedded tokenizer.

`umt5_xxl_fp8_e4m3fn_scaled.safetensors` stores each linear weight as float8_e4m3fn with a float32
`<module>.scale_weight` (real weight = w_fp8 * scale), a `scaled_fp8` marker tensor and the
SentencePiece model as a `spiece_model` uint8 tensor. Transformers cannot read that layout, so this
module converts it: scales applied, markers dropped, a `UMT5Config` derived from the tensor shapes
(the same file layout serves the real 24-layer XXL model and the tiny test model), and a tokenizer
built from the embedded bytes with SentencePiece itself (a T5 tokenizer is ids + eos, padded).

Text length and masking follow diffusers' Wan pipelines (`_get_t5_prompt_embeds`): 512 tokens,
encoded with the attention mask, positions past the prompt zeroed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TEXT_LEN = 512  # Wan's text length (max_sequence_length in diffusers, min_length in ComfyUI)
SPIECE_KEY = "spiece_model"
MARKER_KEYS = ("scaled_fp8",)  # dtype markers of ComfyUI's scaled-fp8 format
_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")


class TextEncoderFormatError(ValueError):
    """The file is not a UMT5 encoder in the expected layout (message names the file and key)."""


@dataclass(frozen=True)
class ConvertedUMT5:
    state_dict: dict[str, torch.Tensor]  # transformers' UMT5EncoderModel keys
    config: dict[str, Any]  # UMT5Config keyword arguments derived from the shapes
    spiece_model: bytes | None
    scaled: int  # how many weights had a scale applied
    dropped: list[str]  # keys left out (markers, scales, tensors of incomplete blocks)


def convert_scaled_fp8(
    tensors: dict[str, torch.Tensor], *, apply_scales: bool = True, source: str = "", dtype: torch.dtype = torch.float32
) -> ConvertedUMT5:
    """Turn ComfyUI's scaled-fp8 UMT5 tensors into a transformers state dict in `dtype` (each
    weight is scaled in float32, then cast, one tensor at a time: no full float32 copy of the XXL).

    `apply_scales=False` exists for the test that proves the scales matter (never use it otherwise).
    """
    tensors = dict(tensors)
    spiece = tensors.pop(SPIECE_KEY, None)
    spiece_bytes = bytes(spiece.to(torch.uint8).cpu().numpy().tobytes()) if spiece is not None else None
    dropped: list[str] = [k for k in MARKER_KEYS if k in tensors]
    for k in dropped:
        tensors.pop(k)
    scales = {k[: -len("scale_weight")]: tensors.pop(k) for k in list(tensors) if k.endswith(".scale_weight")}
    dropped += [p + "scale_weight" for p in scales]
    # `scale_input` (activation scales for fp8 matmuls) only matters to fp8 compute: dropped.
    for k in [k for k in tensors if k.endswith(".scale_input")]:
        tensors.pop(k)
        dropped.append(k)

    out: dict[str, torch.Tensor] = {}
    scaled = 0
    for key, w in tensors.items():
        w = w.to(torch.float32)
        prefix = key[: -len("weight")] if key.endswith(".weight") else None
        if prefix is not None and prefix in scales:
            if apply_scales:
                w = w * scales[prefix].to(torch.float32)
            scaled += 1
        out[key] = w.to(dtype)
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    if "shared.weight" not in out:
        raise TextEncoderFormatError(f"{source or 'text encoder'}: no `shared.weight` token embedding; not a UMT5 encoder file")

    # Complete blocks are those with self-attention; others (like the tiny file's dummy
    # block-23 tensor that lets ComfyUI detect an XXL file) are dropped.
    blocks = sorted({int(m.group(1)) for k in out if (m := _BLOCK.match(k)) and ".SelfAttention.q." in k})
    if not blocks or blocks != list(range(len(blocks))):
        raise TextEncoderFormatError(f"{source or 'text encoder'}: encoder blocks are missing or not numbered 0..N-1 ({blocks[:5]}...)")
    n_layers = len(blocks)
    for k in list(out):
        m = _BLOCK.match(k)
        if m and int(m.group(1)) >= n_layers:
            dropped.append(k)
            out.pop(k)

    vocab, d_model = out["shared.weight"].shape
    q = out["encoder.block.0.layer.0.SelfAttention.q.weight"]
    rel = out.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if rel is None:
        raise TextEncoderFormatError(f"{source or 'text encoder'}: missing relative_attention_bias in block 0")
    buckets, heads = rel.shape
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in out
    d_ff = out["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"].shape[0]
    config = dict(
        vocab_size=int(vocab), d_model=int(d_model), d_kv=int(q.shape[0]) // int(heads), d_ff=int(d_ff),
        num_layers=n_layers, num_heads=int(heads), relative_attention_num_buckets=int(buckets),
        relative_attention_max_distance=128, feed_forward_proj="gated-gelu" if gated else "relu",
        dropout_rate=0.0, layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False,
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return ConvertedUMT5(out, config, spiece_bytes, scaled, dropped)


class SentencePieceT5Tokenizer:
    """T5-style tokenizer over a SentencePiece model given as bytes: ids + eos, truncated and padded
    to `max_length` with an attention mask. Hand-written (a few lines) because transformers'
    T5Tokenizer wants a file and its fast variant converts the model; SentencePiece itself is the
    reference a test compares against."""

    def __init__(self, model_proto: bytes, *, max_length: int = TEXT_LEN) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.max_length = max_length
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else 1
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0

    def ids(self, text: str) -> list[int]:
        """Token ids with the trailing eos, truncated to `max_length` (eos kept last)."""
        ids = list(self.sp.encode(text))[: self.max_length - 1]
        return ids + [self.eos_id]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both (batch, max_length) int64."""
        rows = [self.ids(t) for t in texts]
        ids = torch.full((len(rows), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), self.max_length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids, mask


class UMT5TextEncoder:
    """Encodes prompts to (batch, 512, d_model) embeddings for the Wan DiT."""

    def __init__(self, model: Any, tokenizer: SentencePieceT5Tokenizer, *, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenizer(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)  # zero past the prompt, as diffusers' Wan does
        return hidden.to(self.dtype)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def load_text_encoder(path: Path, *, device: torch.device, dtype: torch.dtype, apply_scales: bool = True) -> UMT5TextEncoder:
    """Load ComfyUI's fp8-scaled UMT5 file as transformers' UMT5EncoderModel plus its tokenizer."""
    from transformers import UMT5Config, UMT5EncoderModel

    conv = convert_scaled_fp8(read_safetensors(path), apply_scales=apply_scales, source=str(path), dtype=dtype)
    if conv.spiece_model is None:
        raise TextEncoderFormatError(f"{path}: no embedded `{SPIECE_KEY}` tokenizer tensor")
    config = UMT5Config(**conv.config)
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    result = model.load_state_dict(conv.state_dict, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("embed_tokens.weight")]
    if missing:
        raise TextEncoderFormatError(f"{path}: tensors missing for UMT5 encoder: {', '.join(missing[:5])}")
    model.tie_weights()
    model = model.to(device=device, dtype=dtype).eval()
    return UMT5TextEncoder(model, SentencePieceT5Tokenizer(conv.spiece_model), device=device, dtype=dtype)
