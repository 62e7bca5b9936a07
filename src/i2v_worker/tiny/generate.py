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
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[ModelRole, Callable[[Path, np.random.Generator], None]] = {
        ModelRole.HIGH_NOISE: lambda p, rng: _write_gguf(p, wan_dit_tensors(spec, rng)),
        ModelRole.LOW_NOISE: lambda p, rng: _write_gguf(p, wan_dit_tensors(spec, rng)),
        ModelRole.VAE: lambda p, rng: _write_vae(p, spec, rng),
        ModelRole.TEXT_ENCODER: lambda p, rng: _write_umt5(p, spec, rng),
        ModelRole.LORA: lambda p, rng: _write_lora(p, spec, rng),
        ModelRole.INTERPOLATION: lambda p, rng: _write_rife(p, rng),
    }
    paths: dict[ModelRole, Path] = {}
    for role, name in TINY_FILES.items():
        path = out_dir / name
        paths[role] = path
        if path.exists() and not force:
            continue
        rng = np.random.default_rng([seed, _ROLE_SEED[role]])
        _atomic_write(path, lambda tmp, w=writers[role], r=rng: w(tmp, r))
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


def wan_dit_tensors(spec: TinySpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The Wan DiT state dict in the original Wan key layout, float32."""
    d, f = spec.dit_dim, spec.dit_ffn_dim
    t: dict[str, np.ndarray] = {}

    def linear(name: str, n_out: int, n_in: int) -> None:
        t[f"{name}.weight"] = _normal(rng, (n_out, n_in), 1.0 / np.sqrt(n_in))
        t[f"{name}.bias"] = _normal(rng, (n_out,), 0.02)

    t["patch_embedding.weight"] = _normal(rng, (d, spec.dit_in_dim, 1, 2, 2), 1.0 / np.sqrt(spec.dit_in_dim * 4))
    t["patch_embedding.bias"] = _normal(rng, (d,), 0.02)
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
            t[f"{b}.{attn}.norm_q.weight"] = np.ones(d, np.float32)
            t[f"{b}.{attn}.norm_k.weight"] = np.ones(d, np.float32)
        t[f"{b}.norm3.weight"] = np.ones(d, np.float32)
        t[f"{b}.norm3.bias"] = np.zeros(d, np.float32)
        linear(f"{b}.ffn.0", f, d)
        linear(f"{b}.ffn.2", d, f)
        t[f"{b}.modulation"] = _normal(rng, (1, 6, d), 1.0 / np.sqrt(d))
    linear("head.head", spec.dit_out_dim * 4, d)  # out_dim * prod(patch_size (1, 2, 2))
    t["head.modulation"] = _normal(rng, (1, 2, d), 1.0 / np.sqrt(d))
    return t


def gguf_tensor_type(name: str, shape: tuple[int, ...]):
    """The storage type a production Q5_0 conversion uses for this tensor (llama.cpp's rules)."""
    import gguf

    if len(shape) < 2 or name.endswith("modulation"):
        return gguf.GGMLQuantizationType.F32
    if shape[-1] % _Q5_0_BLOCK != 0:
        return gguf.GGMLQuantizationType.F16
    return gguf.GGMLQuantizationType.Q5_0


def _write_gguf(path: Path, tensors: dict[str, np.ndarray]) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="wan")  # sets general.architecture = "wan"
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q5_0)
    for name, arr in tensors.items():
        qtype = gguf_tensor_type(name, arr.shape)
        if qtype == gguf.GGMLQuantizationType.Q5_0:
            writer.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, arr.astype(np.float16))
        else:
            writer.add_tensor(name, arr.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


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


def _write_vae(path: Path, spec: TinySpec, rng: np.random.Generator) -> None:
    import torch

    tensors = {}
    for key, shape in wan_vae_shapes(spec.vae_dim, spec.vae_z_dim).items():
        if key.endswith(".gamma"):
            arr = np.ones(shape, np.float32)
        elif key.endswith(".bias"):
            arr = np.zeros(shape, np.float32)
        else:  # conv weight: fan-in scaling keeps activations O(1) through the stack
            arr = _normal(rng, shape, 1.0 / np.sqrt(int(np.prod(shape[1:]))))
        tensors[key] = torch.from_numpy(arr).to(torch.bfloat16)
    _save_safetensors(path, tensors)


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


def umt5_tensors(spec: TinySpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The UMT5 encoder state dict in the Hugging Face / ComfyUI key layout, float32."""
    d, inner, ff = spec.text_dim, spec.t5_d_kv * spec.t5_heads, spec.t5_d_ff
    t: dict[str, np.ndarray] = {}
    t["shared.weight"] = _normal(rng, (spec.t5_vocab, d), 1.0)
    for i in range(spec.t5_layers):
        b = f"encoder.block.{i}.layer"
        for p in ("q", "k", "v"):
            t[f"{b}.0.SelfAttention.{p}.weight"] = _normal(rng, (inner, d), 1.0 / np.sqrt(d))
        t[f"{b}.0.SelfAttention.o.weight"] = _normal(rng, (d, inner), 1.0 / np.sqrt(inner))
        # UMT5 (unlike T5) has a relative attention bias in every block
        t[f"{b}.0.SelfAttention.relative_attention_bias.weight"] = _normal(rng, (spec.t5_buckets, spec.t5_heads), 0.1)
        t[f"{b}.0.layer_norm.weight"] = np.ones(d, np.float32)
        t[f"{b}.1.DenseReluDense.wi_0.weight"] = _normal(rng, (ff, d), 1.0 / np.sqrt(d))
        t[f"{b}.1.DenseReluDense.wi_1.weight"] = _normal(rng, (ff, d), 1.0 / np.sqrt(d))
        t[f"{b}.1.DenseReluDense.wo.weight"] = _normal(rng, (d, ff), 1.0 / np.sqrt(ff))
        t[f"{b}.1.layer_norm.weight"] = np.ones(d, np.float32)
    t["encoder.final_layer_norm.weight"] = np.ones(d, np.float32)
    # Dummy: ComfyUI detects a UMT5-XXL file by this key (block 23 of 24); a tiny model ignores it.
    t[UMT5_DETECT_KEY] = _normal(rng, (ff, d), 1.0 / np.sqrt(d))
    return t


UMT5_DETECT_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"
_UMT5_LINEARS = (".SelfAttention.q.weight", ".SelfAttention.k.weight", ".SelfAttention.v.weight",
                 ".SelfAttention.o.weight", ".DenseReluDense.wi_0.weight", ".DenseReluDense.wi_1.weight",
                 ".DenseReluDense.wo.weight")


def _write_umt5(path: Path, spec: TinySpec, rng: np.random.Generator) -> None:
    import torch

    spiece = train_spiece_model(spec.t5_vocab)
    out: dict[str, "torch.Tensor"] = {}
    for key, arr in umt5_tensors(spec, rng).items():
        if key.endswith(_UMT5_LINEARS):
            scale = np.float32(np.abs(arr).max() / _FP8_E4M3_MAX)
            out[key] = torch.from_numpy(arr / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = torch.tensor(scale, dtype=torch.float32)
        else:
            out[key] = torch.from_numpy(arr).to(torch.bfloat16)
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)  # marker: dtype of the scaled weights
    out["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    _save_safetensors(path, out)


# ---------------------------------------------------------------------------------------------
# lightx2v LoRA (Kijai layout, bf16)


def lora_tensors(spec: TinySpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    d, f, r = spec.dit_dim, spec.dit_ffn_dim, spec.lora_rank
    t: dict[str, np.ndarray] = {}

    def lora(module: str, n_in: int, n_out: int) -> None:
        k = f"diffusion_model.{module}"
        t[f"{k}.lora_down.weight"] = _normal(rng, (r, n_in), 1.0 / np.sqrt(n_in))
        t[f"{k}.lora_up.weight"] = _normal(rng, (n_out, r), 0.1)  # non-zero: strengths matter
        t[f"{k}.alpha"] = np.array(float(r), np.float32)
        t[f"{k}.diff_b"] = _normal(rng, (n_out,), 0.01)

    for i in range(spec.dit_layers):
        for p in ("q", "k", "v", "o"):
            lora(f"blocks.{i}.self_attn.{p}", d, d)
        for p in ("q", "k", "v", "o", "k_img", "v_img"):  # k_img/v_img: Wan2.1 I2V only
            lora(f"blocks.{i}.cross_attn.{p}", d, d)
        lora(f"blocks.{i}.ffn.0", d, f)
        lora(f"blocks.{i}.ffn.2", f, d)
    return t


def _write_lora(path: Path, spec: TinySpec, rng: np.random.Generator) -> None:
    import torch

    _save_safetensors(path, {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in lora_tensors(spec, rng).items()})


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
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
