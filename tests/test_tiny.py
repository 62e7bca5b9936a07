"""The tiny stand-in model files: real formats, the production key layout, deterministic per seed.

Every engine test (ComfyUI and diffusers) and `make run` rely on these files loading through the
production loaders, so this checks what those loaders look at: GGUF arch and Q5_0 tensors, the
fp8-scaled UMT5 with its scales, marker and embedded tokenizer, the VAE layout, the LoRA keys.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
spm = pytest.importorskip("sentencepiece")

from i2v_worker.engines.base import ModelRole  # noqa: E402
from i2v_worker.tiny import TINY_FILES, TinySpec, generate_tiny_models  # noqa: E402

pytestmark = pytest.mark.timeout(300)

SPEC = TinySpec()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate_tiny_models(out, seed=0)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writes_the_five_files_small(tiny_dir: Path):
    paths = {role: tiny_dir / name for role, name in TINY_FILES.items()}
    assert set(paths) == set(ModelRole)
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    total = sum(p.stat().st_size for p in paths.values())
    assert total < 50 * 1024 * 1024, f"tiny files should stay small, got {total} bytes"
    assert not [p for p in tiny_dir.iterdir() if p.name.startswith(".")], "no temp files left behind"


@pytest.mark.parametrize("role", [ModelRole.HIGH_NOISE, ModelRole.LOW_NOISE])
def test_experts_are_q5_0_gguf_in_wan_layout(tiny_dir: Path, role: ModelRole):
    reader = gguf.GGUFReader(tiny_dir / TINY_FILES[role])
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "wan"
    tensors = {t.name: t for t in reader.tensors}
    q = gguf.GGMLQuantizationType
    # what ComfyUI's and diffusers' detection read
    for key in ("head.modulation", "head.head.weight", "patch_embedding.weight", "blocks.0.ffn.0.weight",
                "text_embedding.0.weight", "time_projection.1.weight", "blocks.1.cross_attn.norm_k.weight"):
        assert key in tensors, key
    assert not any(k.startswith("img_emb") for k in tensors), "Wan2.2 I2V has no CLIP-vision projection"

    def shape(name: str) -> tuple[int, ...]:  # torch order = reversed GGUF order
        return tuple(int(x) for x in reversed(tensors[name].shape))

    assert shape("patch_embedding.weight") == (SPEC.dit_dim, 36, 1, 2, 2)
    assert shape("head.modulation") == (1, 2, SPEC.dit_dim)
    assert shape("head.head.weight") == (16 * 4, SPEC.dit_dim)
    assert shape("blocks.0.ffn.0.weight") == (SPEC.dit_ffn_dim, SPEC.dit_dim)
    assert shape("text_embedding.0.weight") == (SPEC.dit_dim, 4096)
    assert tensors["blocks.0.self_attn.q.weight"].tensor_type == q.Q5_0
    assert tensors["text_embedding.0.weight"].tensor_type == q.Q5_0
    assert tensors["blocks.0.self_attn.q.bias"].tensor_type == q.F32
    assert tensors["patch_embedding.weight"].tensor_type in (q.F16, q.F32)
    assert sum(t.tensor_type == q.Q5_0 for t in tensors.values()) >= 20
    # dequantizes to finite numbers of the right size
    t = tensors["blocks.0.self_attn.q.weight"]
    w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape(t.name))
    assert np.isfinite(w).all() and w.std() > 0


def test_experts_differ(tiny_dir: Path):
    assert _sha(tiny_dir / TINY_FILES[ModelRole.HIGH_NOISE]) != _sha(tiny_dir / TINY_FILES[ModelRole.LOW_NOISE])


def test_text_encoder_is_fp8_scaled_umt5_with_embedded_tokenizer(tiny_dir: Path):
    sd = safetensors_torch.load_file(tiny_dir / TINY_FILES[ModelRole.TEXT_ENCODER])
    assert sd["scaled_fp8"].dtype == torch.float8_e4m3fn
    q = "encoder.block.0.layer.0.SelfAttention.q"
    assert sd[f"{q}.weight"].dtype == torch.float8_e4m3fn
    assert sd[f"{q}.weight"].shape == (SPEC.t5_d_kv * SPEC.t5_heads, 4096)
    assert sd[f"{q}.scale_weight"].dtype == torch.float32
    for i in range(SPEC.t5_layers):
        for p in ("q", "k", "v", "o"):
            assert f"encoder.block.{i}.layer.0.SelfAttention.{p}.scale_weight" in sd
        for p in ("wi_0", "wi_1", "wo"):
            assert sd[f"encoder.block.{i}.layer.1.DenseReluDense.{p}.weight"].dtype == torch.float8_e4m3fn
        assert f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight" in sd  # UMT5: every block
        assert f"encoder.block.{i}.layer.0.layer_norm.weight" in sd
    assert "encoder.final_layer_norm.weight" in sd
    assert sd["encoder.block.23.layer.1.DenseReluDense.wi_1.weight"].shape == (SPEC.t5_d_ff, 4096)  # detection
    # applying the scale gives back weights of normal magnitude (the scales matter)
    w = sd[f"{q}.weight"].float() * sd[f"{q}.scale_weight"]
    assert torch.isfinite(w).all() and 0 < w.abs().max() < 1
    assert sd[f"{q}.weight"].float().abs().max() > 100  # raw fp8 values are pre-scaled
    # the embedded SentencePiece model: T5 ids (pad 0, eos 1, unk 2), vocab = embedding rows
    assert sd["spiece_model"].dtype == torch.uint8
    sp = spm.SentencePieceProcessor(model_proto=sd["spiece_model"].numpy().tobytes())
    assert sp.get_piece_size() == sd["shared.weight"].shape[0] == SPEC.t5_vocab
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
    ids = sp.encode("A Cat walks slowly across the garden")
    assert ids and max(ids) < SPEC.t5_vocab and 2 not in ids


def test_vae_has_wan21_layout_with_tiny_dim(tiny_dir: Path):
    sd = safetensors_torch.load_file(tiny_dir / TINY_FILES[ModelRole.VAE])
    assert sd["decoder.head.0.gamma"].shape[0] == SPEC.vae_dim  # ComfyUI derives the dim from this
    assert "decoder.middle.0.residual.0.gamma" in sd
    assert "decoder.upsamples.0.upsamples.0.residual.2.weight" not in sd  # that would mean Wan2.2 VAE
    assert sd["conv2.weight"].shape == (16, 16, 1, 1, 1)
    assert sd["encoder.head.2.weight"].shape[0] == 32
    assert sd["decoder.conv1.weight"].dtype == torch.bfloat16
    assert all(torch.isfinite(v.float()).all() for v in sd.values())


def test_lora_has_kijai_layout(tiny_dir: Path):
    sd = safetensors_torch.load_file(tiny_dir / TINY_FILES[ModelRole.LORA])
    k = "diffusion_model.blocks.0.self_attn.q"
    assert sd[f"{k}.lora_down.weight"].shape == (SPEC.lora_rank, SPEC.dit_dim)
    assert sd[f"{k}.lora_up.weight"].shape == (SPEC.dit_dim, SPEC.lora_rank)
    assert sd[f"{k}.lora_up.weight"].abs().sum() > 0
    assert sd[f"{k}.lora_down.weight"].dtype == torch.bfloat16
    assert f"{k}.alpha" in sd and f"{k}.diff_b" in sd
    assert "diffusion_model.blocks.1.cross_attn.k_img.lora_down.weight" in sd
    assert "diffusion_model.blocks.1.cross_attn.v_img.lora_up.weight" in sd


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_dir: Path, tmp_path: Path):
    again = generate_tiny_models(tmp_path / "a", seed=0)
    other = generate_tiny_models(tmp_path / "b", seed=1)
    for role, name in TINY_FILES.items():
        assert _sha(again[role]) == _sha(tiny_dir / name), f"{name} is not deterministic"
        if role != ModelRole.TEXT_ENCODER:  # (its tokenizer does not depend on the seed)
            assert _sha(other[role]) != _sha(tiny_dir / name)


def test_idempotent_unless_forced(tmp_path: Path):
    paths = generate_tiny_models(tmp_path, seed=0)
    vae = paths[ModelRole.VAE]
    vae.write_bytes(b"keep me")
    generate_tiny_models(tmp_path, seed=0)
    assert vae.read_bytes() == b"keep me", "existing files are kept"
    generate_tiny_models(tmp_path, seed=0, force=True)
    assert vae.read_bytes() != b"keep me", "--force rewrites"


def test_cli_generates(tmp_path: Path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "i2v_worker", "tiny", "generate", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(TINY_FILES.values())
