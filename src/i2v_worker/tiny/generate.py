"""Write tiny, random-weight stand-ins of the production model files, in their real formats.

Every file keeps the exact key layout and storage format of its production counterpart (see
../shared/notes/models.md and comfyui.md), only the sizes shrink:

- two Wan2.2 I2V experts as GGUF (arch "wan", original Wan key layout, 2 layers, dim 128, ffn 64,
  in_dim 36, out_dim 16, text_dim 4096); weight matrices Q5_0 via `gguf.quants.quantize`, tensors
  whose last dim is not a multiple of the Q5_0 block (32) F16, the modulation tensors (kept in high
  precision by the production converters) and 1-D tensors F32. The 5-D patch embedding is stored
  with its 5 dims, as the production files carry it after ComfyUI-GGUF's 5-D fix;
- the Wan2.1 VAE (original layout) with base dim 8, bf16 (ComfyUI >= 0.3.7x derives the dim from
  `decoder.head.0.gamma`);
- UMT5 fp8-scaled like `umt5_xxl_fp8_e4m3fn_scaled.safetensors`: linear weights float8_e4m3fn with
  a float32 `<module>.scale_weight` each, a `scaled_fp8` marker, the SentencePiece model embedded as
  `spiece_model` (trained in memory here), d_model 4096, d_ff 8, d_kv 8, 1 head, 2 layers, plus a
  dummy `encoder.block.23.layer.1.DenseReluDense.wi_1.weight` so loaders detect a UMT5-XXL file;
- the lightx2v LoRA in Kijai's layout (lora_down/lora_up, alpha, diff_b, incl. the k_img/v_img keys
  that Wan2.2 lacks), rank 4, bf16;
- RIFE IFNet v4.26 heavy for frame interpolation: cccv's architecture at its one (full) size with
  random weights, as a torch pickle with `module.`-prefixed keys like the public checkpoint.

Weights are drawn with numpy from a fixed seed, so the same seed gives byte-identical files. Files
are written to a temp name in the target folder and renamed into place (atomic); existing files
are kept unless `force=True`.

The shape is a parameter (`TinySpec`; named shapes in `SHAPES`): `production` has the real sizes
(Wan2.2 I2V A14B experts dim 5120, 40 blocks, ffn 13824; UMT5-XXL d_model 4096, 24 layers, d_ff
10240, 64 heads, 256384 embedding rows; the Wan2.1 VAE at dim 96; the LoRA at rank 64), about
27 GB, for `bench/gpu.py`. At such sizes (`random_payload`) the big tensors are not drawn and
quantized: their storage bytes are random with valid scales written directly (Q5_0 blocks get a
valid fp16 scale, fp8 bytes a cleared top exponent bit so no byte is NaN, bf16 a fixed exponent),
which costs what a copy costs; every file is streamed to disk one tensor (or 16 MiB) at a time.
Compute and load cost do not depend on the values.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from i2v_worker.engines.base import ModelRole

# role -> file name; the `tiny` manifest preset points at these names.
TINY_FILES: dict[ModelRole, str] = {
    ModelRole.HIGH_NOISE: "tiny_wan2.2_i2v_high_noise_Q5_0.gguf",
    ModelRole.LOW_NOISE: "tiny_wan2.2_i2v_low_noise_Q5_0.gguf",
    ModelRole.VAE: "tiny_wan_2.1_vae.safetensors",
    ModelRole.TEXT_ENCODER: "tiny_umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    ModelRole.LORA: "tiny_lightx2v_lora.safetensors",
    ModelRole.INTERPOLATION: "tiny_rife_ifnet_v426_heavy.pth",
}

# Per-role sub-seeds, so the two experts (and every file) draw different weights from one seed.
_ROLE_SEED = {
    ModelRole.HIGH_NOISE: 1,
    ModelRole.LOW_NOISE: 2,
    ModelRole.VAE: 3,
    ModelRole.TEXT_ENCODER: 4,
    ModelRole.LORA: 5,
    ModelRole.INTERPOLATION: 6,
}

_Q5_0_BLOCK = 32  # elements per Q5_0 block: the last dim must be a multiple of it


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny stand-ins. Only the fields loaders derive from shapes vary here."""

    dit_dim: int = 128  # ComfyUI: multiple of 128 (heads = dim / 128)
    dit_ffn_dim: int = 64
    dit_layers: int = 2
    dit_in_dim: int = 36  # I2V: 16 latent + 4 mask + 16 image-latent channels
    dit_out_dim: int = 16
    text_dim: int = 4096  # fixed by Wan (= UMT5-XXL d_model)
    freq_dim: int = 256
    vae_dim: int = 8
    vae_z_dim: int = 16
    t5_d_ff: int = 8
    t5_d_kv: int = 8
    t5_heads: int = 1
    t5_layers: int = 2
    t5_vocab: int = 64  # = the SentencePiece model's vocabulary
    t5_buckets: int = 32  # relative_attention_num_buckets of UMT5
    lora_rank: int = 4
    t5_embed_rows: int = 0  # rows of the token embedding; 0 = t5_vocab (real XXL: 256384 > its tokenizer)
    random_payload: bool = False  # big tensors: random storage bytes with valid scales (see module doc)


# The real sizes (Wan2.2 I2V A14B; UMT5-XXL as ComfyUI's umt5_config_xxl.json: d_model 4096, 24
# layers, d_ff 10240, d_kv 64, 64 heads, vocab 256384; the Wan2.1 VAE at dim 96; lightx2v rank 64).
# The embedded tokenizer stays the small in-memory one: prompts are padded to 512 tokens either way.
PRODUCTION_SPEC = TinySpec(
    dit_dim=5120, dit_ffn_dim=13824, dit_layers=40, vae_dim=96, t5_d_ff=10240, t5_d_kv=64, t5_heads=64,
    t5_layers=24, t5_embed_rows=256384, lora_rank=64, random_payload=True,
)

# Named shapes: `tiny` (tests, `make run`), `production` (about 27 GB, bench/gpu.py on a GPU) and
# `slice`: production dims and formats with one DiT block and one UMT5 block (and 4096 embedding
# rows instead of 256384), about 1 GB, so a CPU checks the production code paths end to end.
SHAPES: dict[str, TinySpec] = {
    "tiny": TinySpec(),
    "slice": replace(PRODUCTION_SPEC, dit_layers=1, t5_layers=1, t5_embed_rows=4096),
    "production": PRODUCTION_SPEC,
}

# The production files' local names (store/manifests/models.toml), for the stand-ins' names.
_PRODUCTION_NAMES: dict[ModelRole, str] = {
    ModelRole.HIGH_NOISE: "wan2.2_i2v_high_noise_14B_Q5_0.gguf",
    ModelRole.LOW_NOISE: "wan2.2_i2v_low_noise_14B_Q5_0.gguf",
    ModelRole.VAE: "wan_2.1_vae.safetensors",
    ModelRole.TEXT_ENCODER: "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    ModelRole.LORA: "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
}


def shape_files(shape: str) -> dict[ModelRole, str]:
    """File names of the stand-ins of a named shape: `TINY_FILES` for tiny, else the production
    name prefixed `standin-<shape>_` (never the real name: a stand-in must not pass for the model)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    if shape == "tiny":
        return dict(TINY_FILES)
    return {role: f"standin-{shape}_{name}" for role, name in _PRODUCTION_NAMES.items()}


# A small built-in English corpus for the in-memory SentencePiece model (prompts look like this).
_CORPUS = (
    "a cat walks slowly across a sunny garden",
    "the camera pans left over a quiet lake at dawn",
    "a woman smiles and turns her head toward the light",
    "waves roll onto the beach while birds fly overhead",
    "a red car drives down a wet city street at night",
    "leaves fall from the trees in a gentle autumn wind",
    "a dog runs through tall green grass and jumps",
    "clouds move fast across the blue sky over the mountains",
    "the girl waves her hand and laughs happily",
    "smoke rises from a small house in the snowy valley",
    "a boat sails on the calm sea under a golden sunset",
    "rain falls on the window while the candle flickers",
    "an old man reads a book by the warm fire",
    "the flowers sway in the breeze and bees fly around them",
    "a bird opens its wings and takes off from the branch",
    "children play in the park and the swing moves back and forth",
    "the city lights shine as the camera zooms out slowly",
    "a horse gallops across the open field with its mane flowing",
    "blurry, static, low quality, worst quality, jpeg artifacts, ugly, deformed",
    "bright colors, overexposed, still picture, extra fingers, poorly drawn hands",
    "high quality, detailed, cinematic lighting, smooth motion, natural movement",
)


def generate_tiny_models(
    out_dir: Path, *, seed: int = 0, force: bool = False, spec: TinySpec = TinySpec()
) -> dict[ModelRole, Path]:
    """Write the tiny files into `out_dir` (created if needed); return role -> path.

    Files already present are kept (idempotent) unless `force`; writes are atomic.
    """
    return generate_models(out_dir, spec, names=TINY_FILES, seed=seed, force=force)


def generate_models(
    out_dir: Path,
    spec: TinySpec,
    *,
    names: dict[ModelRole, str],
    seed: int = 0,
    force: bool = False,
    roles: tuple[ModelRole, ...] | None = None,
    on_file: Callable[[ModelRole, Path, float], None] | None = None,
) -> dict[ModelRole, Path]:
    """Write stand-ins of `spec`'s shape named `names[role]` into `out_dir`; return role -> path.

    `roles` limits which files are written (default: all five). Files already present are kept
    unless `force`; writes are atomic and streamed. `on_file(role, path, seconds)` after each write.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[ModelRole, Callable[[Path, np.random.Generator], None]] = {
        ModelRole.HIGH_NOISE: lambda p, rng: _write_gguf(p, wan_dit_plan(spec), rng, spec.random_payload),
        ModelRole.LOW_NOISE: lambda p, rng: _write_gguf(p, wan_dit_plan(spec), rng, spec.random_payload),
        ModelRole.VAE: lambda p, rng: _write_vae(p, spec, rng),
        ModelRole.TEXT_ENCODER: lambda p, rng: _write_umt5(p, spec, rng),
        ModelRole.LORA: lambda p, rng: _write_lora(p, spec, rng),
        ModelRole.INTERPOLATION: lambda p, rng: _write_rife(p, rng),
    }
    paths: dict[ModelRole, Path] = {}
    for role, name in names.items():
        if roles is not None and role not in roles:
            continue
        path = out_dir / name
        paths[role] = path
        if path.exists() and not force:
            continue
        rng = np.random.default_rng([seed, _ROLE_SEED[role]])
        t0 = time.perf_counter()
        _atomic_write(path, lambda tmp, w=writers[role], r=rng: w(tmp, r))
        if on_file is not None:
            on_file(role, path, time.perf_counter() - t0)
    return paths


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # safetensors writes 0600; a shared store needs readable files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Wan2.2 I2V expert (GGUF)


@dataclass(frozen=True)
class Planned:
    """One tensor of a stand-in file: name, shape (torch order) and how its values are drawn."""

    name: str
    shape: tuple[int, ...]
    init: str = "normal"  # normal (std) | ones | zeros | const (std is the value)
    std: float = 0.0


def _draw(p: Planned, rng: np.random.Generator) -> np.ndarray:
    if p.init == "normal":
        return _normal(rng, p.shape, p.std)
    if p.init == "ones":
        return np.ones(p.shape, np.float32)
    if p.init == "zeros":
        return np.zeros(p.shape, np.float32)
    return np.full(p.shape, p.std, np.float32)


def wan_dit_plan(spec: TinySpec) -> list[Planned]:
    """The Wan DiT tensors in the original Wan key layout, in file order."""
    d, f = spec.dit_dim, spec.dit_ffn_dim
    t: list[Planned] = []

    def linear(name: str, n_out: int, n_in: int) -> None:
        t.append(Planned(f"{name}.weight", (n_out, n_in), "normal", 1.0 / np.sqrt(n_in)))
        t.append(Planned(f"{name}.bias", (n_out,), "normal", 0.02))

    t.append(Planned("patch_embedding.weight", (d, spec.dit_in_dim, 1, 2, 2), "normal", 1.0 / np.sqrt(spec.dit_in_dim * 4)))
    t.append(Planned("patch_embedding.bias", (d,), "normal", 0.02))
    linear("text_embedding.0", d, spec.text_dim)
    linear("text_embedding.2", d, d)
    linear("time_embedding.0", d, spec.freq_dim)
    linear("time_embedding.2", d, d)
    linear("time_projection.1", 6 * d, d)
    for i in range(spec.dit_layers):
        b = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                linear(f"{b}.{attn}.{p}", d, d)
            t.append(Planned(f"{b}.{attn}.norm_q.weight", (d,), "ones"))
            t.append(Planned(f"{b}.{attn}.norm_k.weight", (d,), "ones"))
        t.append(Planned(f"{b}.norm3.weight", (d,), "ones"))
        t.append(Planned(f"{b}.norm3.bias", (d,), "zeros"))
        linear(f"{b}.ffn.0", f, d)
        linear(f"{b}.ffn.2", d, f)
        t.append(Planned(f"{b}.modulation", (1, 6, d), "normal", 1.0 / np.sqrt(d)))
    linear("head.head", spec.dit_out_dim * 4, d)  # out_dim * prod(patch_size (1, 2, 2))
    t.append(Planned("head.modulation", (1, 2, d), "normal", 1.0 / np.sqrt(d)))
    return t


def wan_dit_tensors(spec: TinySpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The Wan DiT state dict in the original Wan key layout, float32."""
    return {p.name: _draw(p, rng) for p in wan_dit_plan(spec)}


def gguf_tensor_type(name: str, shape: tuple[int, ...]):
    """The storage type a production Q5_0 conversion uses for this tensor (llama.cpp's rules)."""
    import gguf

    if len(shape) < 2 or name.endswith("modulation"):
        return gguf.GGMLQuantizationType.F32
    if shape[-1] % _Q5_0_BLOCK != 0:
        return gguf.GGMLQuantizationType.F16
    return gguf.GGMLQuantizationType.Q5_0


def _write_gguf(path: Path, plan: list[Planned], rng: np.random.Generator, random_payload: bool = False) -> None:
    """Stream a GGUF file: all tensor infos first, then each tensor's data as it is made (one tensor
    in memory at a time). Q5_0 tensors are quantized from drawn weights, or with `random_payload`
    written as random blocks with a valid fp16 scale (`_random_q5_0`)."""
    import gguf

    q = gguf.GGMLQuantizationType
    writer = gguf.GGUFWriter(str(path), arch="wan")  # sets general.architecture = "wan"
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q5_0)
    types = [gguf_tensor_type(p.name, p.shape) for p in plan]
    for p, qtype in zip(plan, types):
        if qtype == q.Q5_0:
            byte_shape = (*p.shape[:-1], p.shape[-1] // _Q5_0_BLOCK * _Q5_0_BYTES)
            writer.add_tensor_info(p.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)
        else:
            dtype = np.dtype(np.float16 if qtype == q.F16 else np.float32)
            writer.add_tensor_info(p.name, p.shape, dtype, int(np.prod(p.shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    payload = _Payload(rng) if random_payload else None
    for p, qtype in zip(plan, types):
        if qtype == q.Q5_0:
            data = _random_q5_0(payload, p) if payload is not None else gguf.quants.quantize(_draw(p, rng), qtype)
        elif qtype == q.F16:
            data = _draw(p, rng).astype(np.float16)
        else:
            data = _draw(p, rng)
        writer.write_tensor_data(data)
    writer.close()


_Q5_0_BYTES = 22  # one Q5_0 block: fp16 scale d, 4 bytes of high bits, 16 bytes of nibbles
_Q5_0_VALUE_STD = float(np.sqrt((32 ** 2 - 1) / 12))  # std of (q - 16) for q uniform in 0..31


def _random_q5_0(payload: "_Payload", p: Planned) -> np.ndarray:
    """Random Q5_0 blocks whose dequantized values d * (q - 16) have about `p.std`."""
    n_blocks = int(np.prod(p.shape)) // _Q5_0_BLOCK
    blocks = payload.take(n_blocks * _Q5_0_BYTES).reshape(n_blocks, _Q5_0_BYTES)
    blocks[:, :2] = np.array([p.std / _Q5_0_VALUE_STD], np.float16).view(np.uint8)
    return blocks.reshape(*p.shape[:-1], p.shape[-1] // _Q5_0_BLOCK * _Q5_0_BYTES)


class _Payload:
    """Random bytes at copy speed: slices at random offsets of one random pool per file."""

    POOL = 64 * 2**20

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._pool = np.frombuffer(rng.bytes(self.POOL), np.uint8)

    def take(self, n: int) -> np.ndarray:
        """`n` random bytes (a fresh writable array)."""
        out = np.empty(n, np.uint8)
        for start in range(0, n, self.POOL):
            k = min(self.POOL, n - start)
            off = int(self._rng.integers(0, self.POOL - k + 1))
            out[start: start + k] = self._pool[off: off + k]
        return out


# ---------------------------------------------------------------------------------------------
# Wan2.1 VAE (safetensors, original layout)


def wan_vae_shapes(dim: int, z_dim: int = 16) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the Wan2.1 VAE (dim_mult 1,2,4,4; 2 res blocks; temporal down F,T,T)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv3d(p: str, cin: int, cout: int, k: tuple[int, int, int]) -> None:
        shapes[f"{p}.weight"] = (cout, cin, *k)
        shapes[f"{p}.bias"] = (cout,)

    def conv2d(p: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{p}.weight"] = (cout, cin, k, k)
        shapes[f"{p}.bias"] = (cout,)

    def rms(p: str, c: int, images: bool) -> None:
        shapes[f"{p}.gamma"] = (c, 1, 1) if images else (c, 1, 1, 1)

    def resblock(p: str, cin: int, cout: int) -> None:
        rms(f"{p}.residual.0", cin, False)
        conv3d(f"{p}.residual.2", cin, cout, (3, 3, 3))
        rms(f"{p}.residual.3", cout, False)
        conv3d(f"{p}.residual.6", cout, cout, (3, 3, 3))
        if cin != cout:
            conv3d(f"{p}.shortcut", cin, cout, (1, 1, 1))

    def attention(p: str, c: int) -> None:
        rms(f"{p}.norm", c, True)
        conv2d(f"{p}.to_qkv", c, 3 * c, 1)
        conv2d(f"{p}.proj", c, c, 1)

    def resample(p: str, c: int, mode: str) -> None:
        if mode.startswith("upsample"):
            conv2d(f"{p}.resample.1", c, c // 2, 3)
            if mode == "upsample3d":
                conv3d(f"{p}.time_conv", c, 2 * c, (3, 1, 1))
        else:
            conv2d(f"{p}.resample.1", c, c, 3)
            if mode == "downsample3d":
                conv3d(f"{p}.time_conv", c, c, (3, 1, 1))

    mult, n_res = [1, 2, 4, 4], 2
    temporal_down = [False, True, True]
    dims = [dim * u for u in [1] + mult]
    conv3d("encoder.conv1", 3, dims[0], (3, 3, 3))
    idx = 0
    cout = dims[0]
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(n_res):
            resblock(f"encoder.downsamples.{idx}", cin, cout)
            idx, cin = idx + 1, cout
        if i != len(mult) - 1:
            resample(f"encoder.downsamples.{idx}", cout, "downsample3d" if temporal_down[i] else "downsample2d")
            idx += 1
    resblock("encoder.middle.0", cout, cout)
    attention("encoder.middle.1", cout)
    resblock("encoder.middle.2", cout, cout)
    rms("encoder.head.0", cout, False)
    conv3d("encoder.head.2", cout, z_dim * 2, (3, 3, 3))
    conv3d("conv1", z_dim * 2, z_dim * 2, (1, 1, 1))
    conv3d("conv2", z_dim, z_dim, (1, 1, 1))

    temporal_up = temporal_down[::-1]
    dims = [dim * u for u in [mult[-1]] + mult[::-1]]
    conv3d("decoder.conv1", z_dim, dims[0], (3, 3, 3))
    resblock("decoder.middle.0", dims[0], dims[0])
    attention("decoder.middle.1", dims[0])
    resblock("decoder.middle.2", dims[0], dims[0])
    idx = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        if i in (1, 2, 3):
            cin //= 2  # the previous upsample halved the channels
        for _ in range(n_res + 1):
            resblock(f"decoder.upsamples.{idx}", cin, cout)
            idx, cin = idx + 1, cout
        if i != len(mult) - 1:
            resample(f"decoder.upsamples.{idx}", cout, "upsample3d" if temporal_up[i] else "upsample2d")
            idx += 1
    rms("decoder.head.0", cout, False)
    conv3d("decoder.head.2", cout, 3, (3, 3, 3))
    return shapes


def wan_vae_plan(spec: TinySpec) -> list[Planned]:
    plan = []
    for key, shape in wan_vae_shapes(spec.vae_dim, spec.vae_z_dim).items():
        if key.endswith(".gamma"):
            plan.append(Planned(key, shape, "ones"))
        elif key.endswith(".bias"):
            plan.append(Planned(key, shape, "zeros"))
        else:  # conv weight: fan-in scaling keeps activations O(1) through the stack
            plan.append(Planned(key, shape, "normal", 1.0 / np.sqrt(int(np.prod(shape[1:])))))
    return plan


def _write_vae(path: Path, spec: TinySpec, rng: np.random.Generator) -> None:
    _write_planned(path, [(p, "BF16") for p in wan_vae_plan(spec)], rng, spec.random_payload)


# ---------------------------------------------------------------------------------------------
# UMT5 text encoder (safetensors, fp8 e4m3fn scaled, embedded SentencePiece model)

_FP8_E4M3_MAX = 448.0


def train_spiece_model(vocab_size: int) -> bytes:
    """Train a unigram SentencePiece model in memory on `_CORPUS`, with T5's special ids."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS),
        model_writer=buf,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=0,  # T5/UMT5: pad 0, eos 1, unk 2, no bos
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc_cf",  # case-fold, so capitals are not unknown
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return buf.getvalue()


def umt5_plan(spec: TinySpec) -> list[Planned]:
    """The UMT5 encoder tensors in the Hugging Face / ComfyUI key layout, in draw order."""
    d, inner, ff = spec.text_dim, spec.t5_d_kv * spec.t5_heads, spec.t5_d_ff
    t: list[Planned] = [Planned("shared.weight", (spec.t5_embed_rows or spec.t5_vocab, d), "normal", 1.0)]
    for i in range(spec.t5_layers):
        b = f"encoder.block.{i}.layer"
        for p in ("q", "k", "v"):
            t.append(Planned(f"{b}.0.SelfAttention.{p}.weight", (inner, d), "normal", 1.0 / np.sqrt(d)))
        t.append(Planned(f"{b}.0.SelfAttention.o.weight", (d, inner), "normal", 1.0 / np.sqrt(inner)))
        # UMT5 (unlike T5) has a relative attention bias in every block
        t.append(Planned(f"{b}.0.SelfAttention.relative_attention_bias.weight", (spec.t5_buckets, spec.t5_heads), "normal", 0.1))
        t.append(Planned(f"{b}.0.layer_norm.weight", (d,), "ones"))
        t.append(Planned(f"{b}.1.DenseReluDense.wi_0.weight", (ff, d), "normal", 1.0 / np.sqrt(d)))
        t.append(Planned(f"{b}.1.DenseReluDense.wi_1.weight", (ff, d), "normal", 1.0 / np.sqrt(d)))
        t.append(Planned(f"{b}.1.DenseReluDense.wo.weight", (d, ff), "normal", 1.0 / np.sqrt(ff)))
        t.append(Planned(f"{b}.1.layer_norm.weight", (d,), "ones"))
    t.append(Planned("encoder.final_layer_norm.weight", (d,), "ones"))
    if spec.t5_layers <= 23:
        # Dummy: ComfyUI detects a UMT5-XXL file by this key (block 23 of 24); a smaller model ignores it.
        t.append(Planned(UMT5_DETECT_KEY, (ff, d), "normal", 1.0 / np.sqrt(d)))
    return t


def umt5_tensors(spec: TinySpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The UMT5 encoder state dict in the Hugging Face / ComfyUI key layout, float32."""
    return {p.name: _draw(p, rng) for p in umt5_plan(spec)}


UMT5_DETECT_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"
_UMT5_LINEARS = (".SelfAttention.q.weight", ".SelfAttention.k.weight", ".SelfAttention.v.weight",
                 ".SelfAttention.o.weight", ".DenseReluDense.wi_0.weight", ".DenseReluDense.wi_1.weight",
                 ".DenseReluDense.wo.weight")


def _write_umt5(path: Path, spec: TinySpec, rng: np.random.Generator) -> None:
    import torch

    spiece = train_spiece_model(spec.t5_vocab)
    markers = [
        _stored_tensor("scaled_fp8", torch.empty(0, dtype=torch.float8_e4m3fn)),  # marker: dtype of the scaled weights
        _stored_tensor("spiece_model", torch.frombuffer(bytearray(spiece), dtype=torch.uint8)),
    ]
    if spec.random_payload:  # real sizes: fp8 bytes straight from the payload, one scale per weight
        payload = _Payload(rng)
        items: list[_Stored] = []
        for p in umt5_plan(spec):
            if p.name.endswith(_UMT5_LINEARS):
                items.append(_Stored(p.name, "F8_E4M3", p.shape, lambda p=p: _random_chunks(payload, "F8_E4M3", p)))
                scale = np.float32(p.std / _FP8_PAYLOAD_STD)
                items.append(_Stored(p.name[: -len("weight")] + "scale_weight", "F32", (), lambda v=scale: [np.array(v)]))
            else:
                items.append(_planned_item(p, "BF16", rng, payload))
        _write_safetensors(path, items + markers)
        return
    items = []
    for key, arr in umt5_tensors(spec, rng).items():
        if key.endswith(_UMT5_LINEARS):
            scale = np.float32(np.abs(arr).max() / _FP8_E4M3_MAX)
            items.append(_stored_tensor(key, torch.from_numpy(arr / scale).to(torch.float8_e4m3fn)))
            items.append(_stored_tensor(key[: -len("weight")] + "scale_weight", torch.tensor(scale, dtype=torch.float32)))
        else:
            items.append(_stored_tensor(key, torch.from_numpy(arr).to(torch.bfloat16)))
    _write_safetensors(path, items + markers)


# ---------------------------------------------------------------------------------------------
# lightx2v LoRA (Kijai layout, bf16)


def lora_plan(spec: TinySpec) -> list[Planned]:
    d, f, r = spec.dit_dim, spec.dit_ffn_dim, spec.lora_rank
    t: list[Planned] = []

    def lora(module: str, n_in: int, n_out: int) -> None:
        k = f"diffusion_model.{module}"
        t.append(Planned(f"{k}.lora_down.weight", (r, n_in), "normal", 1.0 / np.sqrt(n_in)))
        t.append(Planned(f"{k}.lora_up.weight", (n_out, r), "normal", 0.1))  # non-zero: strengths matter
        t.append(Planned(f"{k}.alpha", (), "const", float(r)))
        t.append(Planned(f"{k}.diff_b", (n_out,), "normal", 0.01))

    for i in range(spec.dit_layers):
        for p in ("q", "k", "v", "o"):
            lora(f"blocks.{i}.self_attn.{p}", d, d)
        for p in ("q", "k", "v", "o", "k_img", "v_img"):  # k_img/v_img: Wan2.1 I2V only
            lora(f"blocks.{i}.cross_attn.{p}", d, d)
        lora(f"blocks.{i}.ffn.0", d, f)
        lora(f"blocks.{i}.ffn.2", f, d)
    return t


def lora_tensors(spec: TinySpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {p.name: _draw(p, rng) for p in lora_plan(spec)}


def _write_lora(path: Path, spec: TinySpec, rng: np.random.Generator) -> None:
    _write_planned(path, [(p, "BF16") for p in lora_plan(spec)], rng, spec.random_payload)


# ---------------------------------------------------------------------------------------------
# Streaming safetensors


@dataclass(frozen=True)
class _Stored:
    """A tensor to write: safetensors dtype name, shape, and a callable giving its bytes in order."""

    name: str
    dtype: str  # F32, BF16, F16, F8_E4M3, U8
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[np.ndarray]]


_ST_ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "U8": 1}
# safetensors' own write order (its Dtype enum, descending, then the name): kept so the files
# come out as `safetensors.torch.save_file` would write them.
_ST_RANK = {"F32": 0, "BF16": 1, "F16": 2, "F8_E4M3": 3, "U8": 4}
_ST_TORCH = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float8_e4m3fn": "F8_E4M3", "uint8": "U8"}


def _write_safetensors(path: Path, items: list[_Stored]) -> None:
    """Write a safetensors file one tensor (or chunk) at a time: the header (offsets from the
    shapes), then each tensor's bytes. Never holds more than one chunk in memory."""
    items = sorted(items, key=lambda it: (_ST_RANK[it.dtype], it.name))
    header: dict[str, dict] = {}
    offset = 0
    for it in items:
        n = int(np.prod(it.shape, dtype=np.int64)) * _ST_ITEMSIZE[it.dtype]
        header[it.name] = {"dtype": it.dtype, "shape": list(it.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for it in items:
            start, end = header[it.name]["data_offsets"]
            written = 0
            for chunk in it.chunks():
                buf = memoryview(np.ascontiguousarray(chunk)).cast("B")
                f.write(buf)
                written += len(buf)
            if written != end - start:
                raise ValueError(f"{it.name}: wrote {written} bytes, the header says {end - start}")


def _stored_tensor(name: str, tensor) -> _Stored:
    """A torch tensor as a `_Stored` (its bytes taken when written)."""
    import torch

    dtype = _ST_TORCH[str(tensor.dtype).removeprefix("torch.")]
    t = tensor.contiguous()
    return _Stored(name, dtype, tuple(t.shape), lambda t=t: [t.reshape(-1).view(torch.uint8).numpy()])


def _planned_item(p: Planned, dtype: str, rng: np.random.Generator, payload: "_Payload | None") -> _Stored:
    """`p` stored as `dtype`; big normal tensors from `payload` when given, others drawn when written."""
    if payload is not None and p.init == "normal" and int(np.prod(p.shape)) >= _PAYLOAD_MIN_ELEMENTS:
        return _Stored(p.name, dtype, p.shape, lambda: _random_chunks(payload, dtype, p))
    return _Stored(p.name, dtype, p.shape, lambda: [_as_dtype(_draw(p, rng), dtype)])


def _write_planned(path: Path, items: list[tuple[Planned, str]], rng: np.random.Generator, random_payload: bool) -> None:
    if random_payload:
        payload = _Payload(rng)
        _write_safetensors(path, [_planned_item(p, dt, rng, payload) for p, dt in items])
        return
    values = {p.name: _draw(p, rng) for p, _ in items}  # drawn in plan order: the seed fixes every value
    _write_safetensors(path, [_Stored(p.name, dt, p.shape, lambda v=values[p.name], dt=dt: [_as_dtype(v, dt)])
                              for p, dt in items])


def _as_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    import torch

    if dtype == "F32":
        return arr.astype(np.float32)
    if dtype == "F16":
        return arr.astype(np.float16)
    if dtype == "BF16":
        return torch.from_numpy(np.ascontiguousarray(arr, np.float32)).to(torch.bfloat16).view(torch.int16).numpy()
    raise ValueError(f"no conversion to {dtype}")


_PAYLOAD_MIN_ELEMENTS = 1 << 16  # smaller tensors are drawn (cheap, and norms/biases keep their values)
_PAYLOAD_CHUNK = 16 * 2**20
_BF16_PAYLOAD_RMS = 1.53  # rms of (1 + m/128) for a uniform 7-bit mantissa m
_FP8_PAYLOAD_STD = 0.5996  # std of float8_e4m3fn over the 128 byte values with bit 6 clear


def _random_chunks(payload: "_Payload", dtype: str, p: Planned) -> Iterable[np.ndarray]:
    """Random storage bytes for `p` in `dtype`, finite everywhere, in chunks: bf16 with one
    exponent giving about `p.std`; fp8 e4m3fn with bit 6 (the top exponent bit) cleared, so no
    byte is NaN and |x| <= 1.875 (the file's scale_weight sets the magnitude)."""
    total = int(np.prod(p.shape)) * _ST_ITEMSIZE[dtype]
    if dtype == "BF16":
        exp = int(np.clip(np.round(np.log2(p.std / _BF16_PAYLOAD_RMS)) + 127, 1, 254))
    for start in range(0, total, _PAYLOAD_CHUNK):
        chunk = payload.take(min(_PAYLOAD_CHUNK, total - start))
        if dtype == "F8_E4M3":
            chunk &= 0xBF
        elif dtype == "BF16":
            u = chunk.view(np.uint16)
            u &= 0x807F
            u |= exp << 7
        else:
            raise ValueError(f"no random payload for {dtype}")
        yield chunk


def rife_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """cccv's IFNet (RIFE v4.26 heavy; the architecture has no size knobs, so this is full size,
    about 23 MB) with random weights: std 1/sqrt(fan_in) for weights, small biases, the ResConv
    `beta` scales near 1 (as initialised)."""
    from cccv.arch.vfi.ifnet_arch import IFNet

    out: dict[str, np.ndarray] = {}
    for name, t in IFNet().state_dict().items():
        shape = tuple(t.shape)
        if name.endswith(".beta"):
            out[name] = (1.0 + _normal(rng, shape, 0.01)).astype(np.float32)
        elif name.endswith(".bias") or len(shape) < 2:
            out[name] = _normal(rng, shape, 0.01)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = _normal(rng, shape, 1.0 / np.sqrt(fan_in))
    return out


def _write_rife(path: Path, rng: np.random.Generator) -> None:
    """The public RIFE checkpoints' layout: a torch pickle of the state dict, keys prefixed `module.`
    (a DataParallel save), float32."""
    import torch

    state = {f"module.{k}": torch.from_numpy(v) for k, v in rife_tensors(rng).items()}
    with open(path, "wb") as f:
        torch.save(state, f)


# ---------------------------------------------------------------------------------------------


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)


def _save_safetensors(path: Path, tensors: dict) -> None:
    """A dict of torch tensors, through the streaming writer (same layout as safetensors' save_file)."""
    _write_safetensors(path, [_stored_tensor(k, v) for k, v in tensors.items()])


def estimate_bytes(spec: TinySpec) -> dict[ModelRole, int]:
    """About how many bytes each file of `spec` takes (from the same plans the writers use; headers
    and the embedded tokenizer add well under 1 MB), e.g. to check free disk space first."""
    import gguf

    q = gguf.GGMLQuantizationType
    per = {q.Q5_0: _Q5_0_BYTES / _Q5_0_BLOCK, q.F16: 2, q.F32: 4}
    expert = sum(int(np.prod(p.shape) * per[gguf_tensor_type(p.name, p.shape)]) for p in wan_dit_plan(spec))
    umt5 = sum(int(np.prod(p.shape)) * (1 if p.name.endswith(_UMT5_LINEARS) else 2) for p in umt5_plan(spec))
    return {
        ModelRole.HIGH_NOISE: expert,
        ModelRole.LOW_NOISE: expert,
        ModelRole.VAE: sum(int(np.prod(p.shape)) * 2 for p in wan_vae_plan(spec)),
        ModelRole.TEXT_ENCODER: umt5,
        ModelRole.LORA: sum(int(np.prod(p.shape)) * 2 for p in lora_plan(spec)),
    }


# ---------------------------------------------------------------------------------------------
# Job LoRAs (what users bring): the Wan key layout, or another family's for the negative tests


def job_lora_tensors(spec: TinySpec, rng: np.random.Generator, *, modules: str = "attn",
                     extra_unmatched: int = 0) -> dict[str, np.ndarray]:
    """A user LoRA for the tiny experts in Kijai's Wan layout (`diffusion_model.blocks.N...`,
    lora_down/lora_up/alpha). `modules`: "attn" (self/cross attention q,k,v,o) or "all" (also
    the ffn). `extra_unmatched` adds that many modules the Wan2.2 model lacks (Wan2.1 I2V's
    cross_attn.k_img/v_img, block by block): a partial match."""
    d, f, r = spec.dit_dim, spec.dit_ffn_dim, spec.lora_rank
    t: dict[str, np.ndarray] = {}

    def lora(module: str, n_in: int, n_out: int) -> None:
        k = f"diffusion_model.{module}"
        t[f"{k}.lora_down.weight"] = _normal(rng, (r, n_in), 1.0 / np.sqrt(n_in))
        t[f"{k}.lora_up.weight"] = _normal(rng, (n_out, r), 0.2)
        t[f"{k}.alpha"] = np.array(float(r), np.float32)

    for i in range(spec.dit_layers):
        for a in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                lora(f"blocks.{i}.{a}.{p}", d, d)
        if modules == "all":
            lora(f"blocks.{i}.ffn.0", d, f)
            lora(f"blocks.{i}.ffn.2", f, d)
    extra = [f"blocks.{i}.cross_attn.{p}" for i in range(spec.dit_layers) for p in ("k_img", "v_img")]
    for m in extra[:extra_unmatched]:
        lora(m, d, d)
    return t


def sd15_lora_tensors(rng: np.random.Generator, rank: int = 4) -> dict[str, np.ndarray]:
    """A small LoRA in the kohya SD1.5 layout (what a user may send by mistake)."""
    t: dict[str, np.ndarray] = {}
    for blk in ("down_blocks_0_attentions_0", "up_blocks_1_attentions_0"):
        for p in ("to_q", "to_k", "to_v"):
            k = f"lora_unet_{blk}_transformer_blocks_0_attn1_{p}"
            t[f"{k}.lora_down.weight"] = _normal(rng, (rank, 32), 0.1)
            t[f"{k}.lora_up.weight"] = _normal(rng, (32, rank), 0.1)
            t[f"{k}.alpha"] = np.array(float(rank), np.float32)
    t["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = _normal(rng, (rank, 32), 0.1)
    return t


def write_job_lora(path: Path, *, seed: int = 0, spec: TinySpec = TinySpec(), family: str = "wan", **kw) -> Path:
    """Write a tiny job LoRA (family "wan": job_lora_tensors(**kw); "sd15": sd15_lora_tensors)."""
    import torch

    rng = np.random.default_rng([seed, 101])
    tensors = job_lora_tensors(spec, rng, **kw) if family == "wan" else sd15_lora_tensors(rng)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: _save_safetensors(tmp, {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}))
    return path
