"""Issue 11 at the edges: the job fields (loras, lora_pairs alias, end_image_*), the header check
rules, and the ComfyUI graph they produce (LoraLoaderModelOnly chains, WanFirstLastFrameToVideo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from i2v_worker.engines.base import GenerationRequest, JobLora, ModelRole
from i2v_worker.engines.comfyui.graph import build_graph
from i2v_worker.store.job_loras import header as hdr
from i2v_worker.worker.schema import InvalidInput, input_json_schema, input_markdown_table, parse_job_input

ROOT = Path(__file__).resolve().parents[1]
BASE = {"image_base64": "aGVsbG8=", "prompt": "p"}


def fields_of(exc: InvalidInput) -> dict[str, str]:
    return {d.field: d.rule for d in exc.details}


def test_loras_field_validates_each_entry_and_the_count():
    ok = parse_job_input({**BASE, "loras": [
        {"source": "hf://org/repo@abc123/sub/style.safetensors", "sha256": "A" * 64, "strength_high": 0.8},
        {"source": "https://example.com/x.safetensors", "strength_low": 0}, {"source": "local_style.safetensors"}]})
    assert [lo.source for lo in ok.input.loras][0] == "hf://org/repo@abc123/sub/style.safetensors"
    assert ok.input.loras[0].sha256 == "a" * 64 and ok.input.loras[0].strength_low == 1.0
    with pytest.raises(InvalidInput) as info:
        parse_job_input({**BASE, "loras": [{"source": "s3://b/k.safetensors"}, {"source": "../x.safetensors"},
                                           {"source": "hf://org/repo@main/model.ckpt"}, {"source": "a.safetensors",
                                           "sha256": "xyz", "strength_high": 99, "colour": 1}]})
    f = fields_of(info.value)
    assert f["loras.0.source"] == f["loras.1.source"] == f["loras.2.source"] == "lora_source"
    assert f["loras.3.sha256"] == "sha256" and "loras.3.strength_high" in f and f["loras.3.colour"] == "unknown_field"
    with pytest.raises(InvalidInput) as info:
        parse_job_input({**BASE, "loras": [{"source": "a.safetensors"}] * 9})
    assert fields_of(info.value) == {"loras": "max_length"}


def test_lora_pairs_of_the_most_used_wan_worker_are_translated_with_a_warning():
    p = parse_job_input({**BASE, "lora_pairs": [
        {"high": "h.safetensors", "low": "l.safetensors", "high_weight": 0.9, "low_weight": 0.6},
        {"high": "both.safetensors", "low": "both.safetensors"}]})
    got = [(lo.source, lo.strength_high, lo.strength_low) for lo in p.input.loras]
    assert got == [("h.safetensors", 0.9, 0.0), ("l.safetensors", 0.0, 0.6), ("both.safetensors", 1.0, 1.0)]
    assert p.input.lora_pairs is None and any("'lora_pairs' is deprecated" in w for w in p.warnings)
    with pytest.raises(InvalidInput) as info:
        parse_job_input({**BASE, "lora_pairs": [{"high": "a.safetensors"}], "loras": [{"source": "b.safetensors"}]})
    assert fields_of(info.value)["lora_pairs"] == "conflict"
    with pytest.raises(InvalidInput) as info:
        parse_job_input({**BASE, "lora_pairs": [{"high_weight": 1.0}]})
    assert fields_of(info.value) == {"lora_pairs.0": "required"}


def test_end_image_fields_follow_the_start_image_rules():
    p = parse_job_input({**BASE, "end_image_url": " https://example.com/end.png "})
    assert p.input.end_image_url == "https://example.com/end.png"
    with pytest.raises(InvalidInput) as info:
        parse_job_input({**BASE, "end_image_url": "file:///etc/passwd", "end_image_base64": "eA=="})
    f = fields_of(info.value)
    assert f["end_image_url"] == "scheme" and f["end_image_base64"] == "one_image"


def test_schema_readme_table_and_the_example_show_the_new_fields():
    jsonschema = pytest.importorskip("jsonschema")
    schema = input_json_schema()
    props = schema["$defs"]["JobInput"]["properties"]
    assert {"loras", "lora_pairs", "end_image_url", "end_image_base64"} <= set(props)
    table = input_markdown_table()
    for name in ("`loras`", "`loras[].source`", "`loras[].sha256`", "`loras[].strength_high`", "`end_image_url`",
                 "`lora_pairs`"):
        assert name in table
    example = json.loads((ROOT / "examples" / "job_lora_flf.json").read_text())
    jsonschema.validate(example["input"], schema)
    parsed = parse_job_input(example["input"])
    assert parsed.input.end_image_base64 and len(parsed.input.loras) == 2 and not parsed.warnings


# ------------------------------------------------------------------------------- header rules


@pytest.mark.parametrize("key, module", [
    ("diffusion_model.blocks.3.self_attn.q.lora_down.weight", "blocks.3.self_attn.q"),
    ("diffusion_model.blocks.0.ffn.2.diff_b", "blocks.0.ffn.2"),
    ("transformer.blocks.7.attn2.to_out.0.lora_B.weight", "blocks.7.cross_attn.o"),
    ("transformer.blocks.7.ffn.net.0.proj.lora_A.default.weight", "blocks.7.ffn.0"),
    ("lora_unet_blocks_12_cross_attn_v.alpha", "blocks.12.cross_attn.v"),
    ("blocks.39.self_attn.k.lora_up.weight", "blocks.39.self_attn.k"),
])
def test_wan_lora_key_layouts_are_recognised(key, module):
    assert hdr.wan_name(hdr.module_of(key)) == module


@pytest.mark.parametrize("key", [
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",  # SD1.5
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight",  # SDXL
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
    "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight",  # Flux
    "diffusion_model.blocks.40.self_attn.q.lora_down.weight",  # past the 40 blocks of Wan2.2 14B
    "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight",  # Wan2.1 I2V only
])
def test_other_families_keys_match_nothing(key):
    assert hdr.wan_name(hdr.module_of(key)) is None


def test_header_length_explains_common_wrong_files():
    with pytest.raises(hdr.HeaderError, match="HTML"):
        hdr.header_length(b"<!doctype html>")
    with pytest.raises(hdr.HeaderError, match="zip"):
        hdr.header_length(b"PK\x03\x04\x00\x00\x00\x00")
    check = hdr.check_keys(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "lora_te_x.alpha"])
    assert check.matched == 0 and check.family_hint == "SD1.5/SDXL"


# ------------------------------------------------------------------------------------ the graph


def request(**kw) -> GenerationRequest:
    fields = dict(job_id="j", image_png=b"png", prompt="p", negative_prompt="n", width=64, height=48, length=5,
                  fps=16, steps=4, high_noise_steps=2, cfg=1.0, shift=8.0, seed=1, lora_strength_high=1.0,
                  lora_strength_low=0.0)
    fields.update(kw)
    return GenerationRequest(**fields)


NAMES = {ModelRole.HIGH_NOISE: "h.gguf", ModelRole.LOW_NOISE: "l.gguf", ModelRole.TEXT_ENCODER: "t.safetensors",
         ModelRole.VAE: "v.safetensors", ModelRole.LORA: "lightx2v.safetensors"}


def chain(g: dict, start: str) -> list[str]:
    """Node ids from the shift node of an expert back to its loader."""
    out, node = [], start
    while True:
        out.append(node)
        model = g[node]["inputs"].get("model")
        if model is None:
            return out[::-1]
        node = model[0]


def test_job_loras_chain_per_expert_and_strength_zero_adds_no_node():
    loras = (JobLora("job/aaa.safetensors", Path("/s/a"), 0.8, 0.5, "loras[0]"),
             JobLora("job/bbb.safetensors", Path("/s/b"), 0.0, 1.2, "loras[1]"))
    g = build_graph(request(loras=loras), image_name="i.png", filename_prefix="p", model_names=NAMES)
    high, low = chain(g, "shift_high"), chain(g, "shift_low")
    assert high == ["load_high", "lora_high", "lora_job0_high", "shift_high"]
    assert low == ["load_low", "lora_job0_low", "lora_job1_low", "shift_low"]  # lightx2v strength_low 0: no node
    assert g["lora_job0_high"]["inputs"]["lora_name"] == "job/aaa.safetensors"
    assert g["lora_job0_high"]["inputs"]["strength_model"] == 0.8 and g["lora_job1_low"]["inputs"]["strength_model"] == 1.2
    assert all(n["class_type"] == "LoraLoaderModelOnly" for k, n in g.items() if k.startswith("lora_job"))
    assert g["image_to_video"]["class_type"] == "WanImageToVideo" and "load_end_image" not in g


def test_an_end_image_uses_wan_first_last_frame_to_video():
    g = build_graph(request(end_image_png=b"end"), image_name="i.png", filename_prefix="p", model_names=NAMES,
                    end_image_name="i2v-worker/j_end.png")
    node = g["image_to_video"]
    assert node["class_type"] == "WanFirstLastFrameToVideo"
    assert node["inputs"]["start_image"] == ["load_image", 0] and node["inputs"]["end_image"] == ["load_end_image", 0]
    assert g["load_end_image"]["inputs"]["image"] == "i2v-worker/j_end.png"
    assert (node["inputs"]["width"], node["inputs"]["height"], node["inputs"]["length"]) == (64, 48, 5)
    with pytest.raises(ValueError, match="end_image_name"):
        build_graph(request(end_image_png=b"end"), image_name="i.png", filename_prefix="p", model_names=NAMES)
