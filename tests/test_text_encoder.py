"""The UMT5 text encoder from ComfyUI's fp8-scaled file (the tiny stand-in, same format): the
scales are applied (skipping them changes the embeddings), markers and the detection dummy are
dropped, and the tokenizer built from the embedded bytes gives SentencePiece's own ids."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
spm = pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from i2v_worker.engines.base import ModelRole  # noqa: E402
from i2v_worker.engines.diffusers.text_encoder import (  # noqa: E402
    TEXT_LEN,
    SentencePieceT5Tokenizer,
    TextEncoderFormatError,
    convert_scaled_fp8,
    load_text_encoder,
)
from i2v_worker.tiny import TINY_FILES  # noqa: E402

pytestmark = pytest.mark.timeout(300)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def te_path(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / TINY_FILES[ModelRole.TEXT_ENCODER]


@pytest.fixture(scope="module")
def encoder(te_path: Path):
    return load_text_encoder(te_path, device=CPU, dtype=torch.float32)


def test_conversion_applies_each_scale_and_drops_markers(te_path: Path):
    raw = load_file(str(te_path))
    conv = convert_scaled_fp8(raw, source=str(te_path))
    key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    assert raw[key].dtype == torch.float8_e4m3fn
    expected = raw[key].float() * raw[key[: -len("weight")] + "scale_weight"].float()
    assert torch.equal(conv.state_dict[key], expected)
    n_scales = sum(k.endswith(".scale_weight") for k in raw)
    assert conv.scaled == n_scales > 0
    for k in conv.state_dict:
        assert not k.endswith((".scale_weight", ".scale_input")) and k not in ("scaled_fp8", "spiece_model")
    # the shapes decide the config: the block-23 detection dummy is not a layer
    assert conv.config["num_layers"] == 2
    assert (conv.config["d_model"], conv.config["d_ff"], conv.config["d_kv"], conv.config["num_heads"]) == (4096, 8, 8, 1)
    assert conv.config["vocab_size"] == raw["shared.weight"].shape[0]
    assert not any(k.startswith("encoder.block.23.") for k in conv.state_dict)
    assert conv.spiece_model == bytes(raw["spiece_model"].numpy().tobytes())


def test_skipping_the_scales_changes_the_embeddings(te_path: Path, encoder):
    unscaled = load_text_encoder(te_path, device=CPU, dtype=torch.float32, apply_scales=False)
    prompts = ["a cat walks slowly across a sunny garden"]
    good, bad = encoder.encode(prompts), unscaled.encode(prompts)
    assert good.shape == (1, TEXT_LEN, 4096)
    assert torch.isfinite(good).all()
    n = len(encoder.tokenizer.ids(prompts[0]))
    diff = (good[0, :n] - bad[0, :n]).abs().mean() / good[0, :n].abs().mean()
    assert diff > 0.05, f"embeddings barely depend on the scales (relative diff {diff:.4f})"


def test_padding_positions_are_zero_and_prompts_differ(encoder):
    emb = encoder.encode(["a dog runs", "the camera pans left over a quiet lake"])
    n0 = len(encoder.tokenizer.ids("a dog runs"))
    assert emb[0, n0:].abs().max() == 0
    assert emb[0, :n0].abs().max() > 0
    assert not torch.allclose(emb[0, :n0], emb[1, :n0])


@pytest.mark.parametrize("text", [
    "a cat walks slowly across a sunny garden",
    "A Red CAR drives down a wet city street at night!",
    "",
    "zebra über café 🚀 ümlaut",
    "  leading and   repeated spaces  ",
])
def test_tokenizer_ids_equal_sentencepiece(encoder, te_path: Path, text: str):
    sp = spm.SentencePieceProcessor(model_proto=bytes(load_file(str(te_path))["spiece_model"].numpy().tobytes()))
    assert encoder.tokenizer.ids(text) == sp.encode(text) + [sp.eos_id()]
    ids, mask = encoder.tokenizer([text])
    n = len(sp.encode(text)) + 1
    assert ids.shape == mask.shape == (1, TEXT_LEN)
    assert ids[0, :n].tolist() == sp.encode(text) + [sp.eos_id()]
    assert mask[0].tolist() == [1] * n + [0] * (TEXT_LEN - n)
    assert ids[0, n:].eq(sp.pad_id()).all()


def test_long_prompts_are_truncated_with_eos_last(encoder):
    ids, mask = encoder.tokenizer(["a cat walks slowly " * 400])
    assert mask.sum() == TEXT_LEN
    assert ids[0, -1].item() == encoder.tokenizer.eos_id


def test_tokenizer_matches_for_a_small_max_length(te_path: Path):
    proto = bytes(load_file(str(te_path))["spiece_model"].numpy().tobytes())
    tok = SentencePieceT5Tokenizer(proto, max_length=4)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert tok.ids("a cat walks slowly across") == sp.encode("a cat walks slowly across")[:3] + [sp.eos_id()]


def test_a_file_without_the_tokenizer_is_refused_by_name(te_path: Path, tmp_path: Path):
    tensors = load_file(str(te_path))
    tensors.pop("spiece_model")
    broken = tmp_path / "no_tokenizer.safetensors"
    save_file(tensors, str(broken))
    with pytest.raises(TextEncoderFormatError, match="no_tokenizer.safetensors.*spiece_model"):
        load_text_encoder(broken, device=CPU, dtype=torch.float32)
