"""TEST-ONLY patch: ComfyUI's Wan text encoder builds a tiny UMT5 for the tiny stand-in file.

ComfyUI always builds UMT5 from its fixed XXL config (comfy/text_encoders/umt5_config_xxl.json,
5.7B parameters), whatever the file holds. The i2v-worker test suite ships a tiny fp8-scaled UMT5
(d_model 4096, d_ff 8, d_kv 8, 1 head, 2 layers, vocab of its embedded SentencePiece model). This
node wraps `comfy.sd.load_text_encoder_state_dicts`: when a state dict has the tiny shapes (the
`encoder.block.23...wi_1` detection key with a d_ff far below XXL's 10240), it passes the config
derived from the tensor shapes as `model_options["umt5xxl_model_config"]`, which ComfyUI's
SDClipModel merges into the JSON config. Any other file loads exactly as before. The tokenizer needs
no patch: ComfyUI's Wan tokenizer already reads the embedded `spiece_model`.
Never ship this node.
"""

from __future__ import annotations

import functools
import logging

import comfy.sd

_DETECT_KEY = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"
_MAX_TINY_D_FF = 1024  # production UMT5-XXL: 10240


def tiny_umt5_config(sd: dict) -> dict | None:
    """The UMT5 config of a tiny stand-in state dict, or None for any other file."""
    detect = sd.get(_DETECT_KEY)
    shared = sd.get("shared.weight")
    q = sd.get("encoder.block.0.layer.0.SelfAttention.q.weight")
    rel = sd.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    wi_0 = sd.get("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
    if any(t is None for t in (detect, shared, q, rel, wi_0)) or detect.shape[0] > _MAX_TINY_D_FF:
        return None
    heads = int(rel.shape[1])
    layers = 0
    while f"encoder.block.{layers}.layer.0.SelfAttention.q.weight" in sd:
        layers += 1
    return {
        "d_model": int(shared.shape[1]),
        "vocab_size": int(shared.shape[0]),
        "d_ff": int(wi_0.shape[0]),
        "num_heads": heads,
        "d_kv": int(q.shape[0]) // heads,
        "num_layers": layers,
        "num_decoder_layers": layers,
    }


def _patch() -> None:
    original = comfy.sd.load_text_encoder_state_dicts
    if getattr(original, "_i2v_tiny_umt5", False):
        return

    @functools.wraps(original)
    def load_text_encoder_state_dicts(state_dicts=[], *args, **kwargs):
        for sd in state_dicts:
            config = tiny_umt5_config(sd)
            if config is not None:
                if len(args) >= 3:  # (embedding_directory, clip_type, model_options) positionally
                    args = (*args[:2], {**args[2], "umt5xxl_model_config": config}, *args[3:])
                else:
                    kwargs["model_options"] = {**kwargs.get("model_options", {}), "umt5xxl_model_config": config}
                logging.info("i2v test tiny-UMT5 patch: building a tiny UMT5 %s", config)
                break
        return original(state_dicts, *args, **kwargs)

    load_text_encoder_state_dicts._i2v_tiny_umt5 = True
    comfy.sd.load_text_encoder_state_dicts = load_text_encoder_state_dicts


_patch()

NODE_CLASS_MAPPINGS: dict = {}  # a patch only: no nodes
