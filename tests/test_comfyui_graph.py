"""The production ComfyUI graph runs on a real ComfyUI (0.3.75) with the tiny models.

What a user relies on: the one graph template the worker sends is accepted by ComfyUI (every node
and input exists), turns an image into lossless frames (one APNG) with exactly the requested
frame count and size, the LoRA strengths change the result, and a LoRA-free job does not need the
LoRA file. (The worker encodes the video: tests/test_video.py.)
The structural tests at the top need no ComfyUI.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import pytest

from i2v_worker.engines.base import GenerationRequest, ModelRole
from i2v_worker.engines.comfyui.graph import OUTPUT_NODE, REQUIRED_NODES, SAMPLER_NODES, build_graph
from i2v_worker.tiny import TINY_FILES
from tests.support.comfyui import ComfyUIServer, history_error, publish_models

FOLDER = {ModelRole.HIGH_NOISE: "unet", ModelRole.LOW_NOISE: "unet", ModelRole.TEXT_ENCODER: "text_encoders",
          ModelRole.VAE: "vae", ModelRole.LORA: "loras"}
NAMES = {role: name for role, name in TINY_FILES.items() if role is not ModelRole.INTERPOLATION}  # the graph's roles


def request(**overrides) -> GenerationRequest:
    base = dict(job_id="job-1", image_png=b"", prompt="a cat walks slowly across a sunny garden",
                negative_prompt="blurry, static", width=64, height=64, length=5, fps=16, steps=4,
                high_noise_steps=2, cfg=1.0, shift=8.0, seed=1234, lora_strength_high=1.0, lora_strength_low=1.0)
    return GenerationRequest(**{**base, **overrides})


def png(width: int = 80, height: int = 64) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (width, height))
    img.putdata([(x * 3 % 256, y * 4 % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --- the template itself ---------------------------------------------------------------------------


def test_graph_wires_two_experts_with_the_handover():
    g = build_graph(request(steps=6, high_noise_steps=4, seed=7), image_name="in.png", filename_prefix="i2v/x",
                    model_names=NAMES)
    assert {n["class_type"] for n in g.values()} <= set(REQUIRED_NODES)
    high, low = (g[n]["inputs"] for n in SAMPLER_NODES)
    assert (high["add_noise"], high["start_at_step"], high["end_at_step"], high["return_with_leftover_noise"]) == (
        "enable", 0, 4, "enable")
    assert (low["add_noise"], low["start_at_step"], low["end_at_step"], low["return_with_leftover_noise"]) == (
        "disable", 4, 10000, "disable")
    assert low["latent_image"] == [SAMPLER_NODES[0], 0]
    assert high["noise_seed"] == low["noise_seed"] == 7 and high["steps"] == low["steps"] == 6
    assert (high["sampler_name"], high["scheduler"]) == ("euler", "simple")
    # each sampler uses its own expert: shift <- LoRA <- GGUF loader of the right file
    for sampler, tag, role in ((high, "high", ModelRole.HIGH_NOISE), (low, "low", ModelRole.LOW_NOISE)):
        shift = g[sampler["model"][0]]
        assert shift["class_type"] == "ModelSamplingSD3" and shift["inputs"]["shift"] == 8.0
        lora = g[shift["inputs"]["model"][0]]
        assert lora["class_type"] == "LoraLoaderModelOnly" and lora["inputs"]["lora_name"] == NAMES[ModelRole.LORA]
        assert g[lora["inputs"]["model"][0]]["inputs"]["unet_name"] == NAMES[role]
    save = g[OUTPUT_NODE]["inputs"]
    assert g[OUTPUT_NODE]["class_type"] == "SaveAnimatedPNG"
    assert (save["compress_level"], save["filename_prefix"], save["images"]) == (0, "i2v/x", ["decode", 0])
    assert g["load_text_encoder"]["inputs"]["type"] == "wan"


def test_lora_node_skipped_per_expert_and_without_lora_file():
    g = build_graph(request(lora_strength_high=2.0, lora_strength_low=0), image_name="in.png",
                    filename_prefix="p", model_names=NAMES)
    assert g["lora_high"]["inputs"]["strength_model"] == 2.0 and "lora_low" not in g
    assert g["shift_low"]["inputs"]["model"] == ["load_low", 0]
    names = {k: v for k, v in NAMES.items() if k != ModelRole.LORA}
    g = build_graph(request(lora_strength_high=0, lora_strength_low=0), image_name="in.png", filename_prefix="p",
                    model_names=names)
    assert not [n for n in g.values() if n["class_type"] == "LoraLoaderModelOnly"]


def test_missing_model_role_is_a_clear_error():
    names = {k: v for k, v in NAMES.items() if k != ModelRole.VAE}
    with pytest.raises(ValueError, match="vae"):
        build_graph(request(), image_name="in.png", filename_prefix="p", model_names=names)
    with pytest.raises(ValueError, match="high_noise_steps"):
        build_graph(request(steps=4, high_noise_steps=5), image_name="in.png", filename_prefix="p", model_names=NAMES)


# --- against the real ComfyUI ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def published(comfyui_store: Path, tiny_models_dir: Path) -> Path:
    publish_models(comfyui_store, {f"{FOLDER[role]}/{name}": tiny_models_dir / name for role, name in NAMES.items()})
    return comfyui_store


def _combo_options(spec) -> list | None:
    """Options of a combo input in /object_info: old style [[...], {...}] or V3 ["COMBO", {"options": [...]}]."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return spec[1].get("options", []) if len(spec) > 1 else []
    return None


def _run(comfy: ComfyUIServer, req: GenerationRequest, model_names: dict, prefix: str) -> tuple[bytes, dict, float]:
    image_name = comfy.upload_image(png(), f"{req.job_id}.png", subfolder="i2v-test")
    graph = build_graph(req, image_name=image_name, filename_prefix=prefix, model_names=model_names)
    start = time.monotonic()
    entry = comfy.wait_for_history(comfy.queue_prompt(graph), timeout_s=300)
    elapsed = time.monotonic() - start
    assert history_error(entry) is None, f"{history_error(entry)}\n{comfy.log_tail()}"
    out = entry["outputs"][OUTPUT_NODE]["images"][0]
    assert out["type"] == "output" and out["filename"].endswith(".png")
    return comfy.download(out["filename"], subfolder=out["subfolder"], type=out["type"]), out, elapsed


def _video(data: bytes, expected: int = 5):
    import tempfile

    from i2v_worker.engines.comfyui.frames import read_frames

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "frames.png"
        path.write_bytes(data)
        frames = read_frames(path, expected)
    return "apng", None, frames.shape[2], frames.shape[1], frames


@pytest.mark.comfyui
@pytest.mark.timeout(600)
def test_graph_nodes_and_inputs_exist_in_comfyui(comfyui_server: ComfyUIServer, published: Path):
    graph = build_graph(request(), image_name="x.png", filename_prefix="p", model_names=NAMES)
    info = comfyui_server.object_info()
    for node_id, node in graph.items():
        cls = node["class_type"]
        assert cls in info, f"{cls} ({REQUIRED_NODES[cls]}) missing from ComfyUI"
        spec = info[cls]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        assert set(node["inputs"]) <= set(declared), f"{node_id}: unknown inputs {set(node['inputs']) - set(declared)}"
        assert set(spec.get("required", {})) <= set(node["inputs"]), f"{node_id}: missing required inputs"
        for name, value in node["inputs"].items():
            options = _combo_options(declared[name])
            if options is not None and name != "image":  # LoadImage lists the input folder
                assert value in options, f"{node_id}.{name}={value!r} not offered by ComfyUI: {options}"


@pytest.mark.comfyui
@pytest.mark.timeout(600)
def test_tiny_job_writes_lossless_frames_with_requested_count_and_size(comfyui_server: ComfyUIServer, published: Path):
    req = request(job_id="happy", width=64, height=48, length=5, fps=16)
    data, out, elapsed = _run(comfyui_server, req, NAMES, "i2v-test/happy")
    codec, _rate, width, height, frames = _video(data)
    assert codec == "apng"
    assert (width, height) == (64, 48)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype.name == "uint8"
    print(f"comfyui ready after {comfyui_server.ready_seconds:.1f}s; tiny job ran in {elapsed:.2f}s")


@pytest.mark.comfyui
@pytest.mark.timeout(600)
def test_lora_free_job_runs_without_the_lora_file_and_lora_changes_the_video(
    comfyui_server: ComfyUIServer, published: Path, tmp_path: Path
):
    with_lora, _, _ = _run(comfyui_server, request(job_id="with-lora", seed=99), NAMES, "i2v-test/with-lora")
    lora_path = published / "loras" / NAMES[ModelRole.LORA]
    parked = tmp_path / lora_path.name
    shutil.move(lora_path, parked)  # the LoRA file is absent from the store for this job
    try:
        names = {k: v for k, v in NAMES.items() if k != ModelRole.LORA}
        req = request(job_id="no-lora", seed=99, lora_strength_high=0.0, lora_strength_low=0.0)
        without, _, _ = _run(comfyui_server, req, names, "i2v-test/no-lora")
    finally:
        shutil.move(parked, lora_path)
    _, _, _, _, a = _video(with_lora)
    _, _, _, _, b = _video(without)
    assert a.shape == b.shape == (5, 64, 64, 3)
    assert abs(a.astype(int) - b.astype(int)).mean() > 0.5, "the LoRA strengths should change the video"


def test_tiny_umt5_patch_leaves_production_umt5_alone(monkeypatch):
    """The test-only patch must only change how the tiny file loads (shapes checked on meta tensors)."""
    import importlib.util
    import sys
    import types

    import torch

    # the node module needs only `comfy.sd.load_text_encoder_state_dicts` at import
    comfy_pkg, comfy_sd = types.ModuleType("comfy"), types.ModuleType("comfy.sd")
    comfy_sd.load_text_encoder_state_dicts = lambda *a, **k: None
    comfy_pkg.sd = comfy_sd
    monkeypatch.setitem(sys.modules, "comfy", comfy_pkg)
    monkeypatch.setitem(sys.modules, "comfy.sd", comfy_sd)
    path = Path(__file__).parent / "comfyui_nodes" / "i2v_test_tiny_umt5" / "__init__.py"
    spec = importlib.util.spec_from_file_location("i2v_test_tiny_umt5_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def sd(d_model: int, d_ff: int, heads: int, d_kv: int, layers: int, vocab: int) -> dict:
        meta = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
        out = {"shared.weight": meta(vocab, d_model),
               "encoder.block.23.layer.1.DenseReluDense.wi_1.weight": meta(d_ff, d_model)}
        for i in range(layers):
            out[f"encoder.block.{i}.layer.0.SelfAttention.q.weight"] = meta(heads * d_kv, d_model)
            out[f"encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"] = meta(32, heads)
            out[f"encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"] = meta(d_ff, d_model)
        return out

    assert module.tiny_umt5_config(sd(4096, 10240, 64, 64, 24, 256384)) is None  # umt5_xxl_fp8_e4m3fn_scaled
    assert module.tiny_umt5_config({"encoder.final_layer_norm.weight": torch.empty(4096, device="meta")}) is None
    assert module.tiny_umt5_config(sd(4096, 8, 1, 8, 2, 64)) == {
        "d_model": 4096, "vocab_size": 64, "d_ff": 8, "num_heads": 1, "d_kv": 8, "num_layers": 2,
        "num_decoder_layers": 2}


@pytest.mark.comfyui
@pytest.mark.timeout(600)
def test_missing_model_file_is_a_node_error_naming_the_input(comfyui_server: ComfyUIServer, published: Path):
    names = {**NAMES, ModelRole.LOW_NOISE: "not_in_store.gguf"}
    graph = build_graph(request(), image_name=comfyui_server.upload_image(png(), "missing.png"),
                        filename_prefix="i2v-test/missing", model_names=names)
    r = comfyui_server.post_prompt_raw(graph)
    assert r.status_code == 400
    errors = r.json()["node_errors"]["load_low"]["errors"]
    assert errors[0]["type"] == "value_not_in_list"
    assert errors[0]["extra_info"]["input_name"] == "unet_name"
    assert errors[0]["extra_info"]["received_value"] == "not_in_store.gguf"


@pytest.mark.comfyui
@pytest.mark.timeout(600)
def test_corrupt_model_file_is_an_execution_error_naming_the_loader(comfyui_server: ComfyUIServer, published: Path):
    corrupt = published / "unet" / "corrupt_for_test.gguf"
    good = (published / "unet" / NAMES[ModelRole.HIGH_NOISE]).read_bytes()
    corrupt.write_bytes(good[: len(good) // 3])  # a truncated download
    try:
        names = {**NAMES, ModelRole.HIGH_NOISE: corrupt.name}
        graph = build_graph(request(seed=5), image_name=comfyui_server.upload_image(png(), "corrupt.png"),
                            filename_prefix="i2v-test/corrupt", model_names=names)
        entry = comfyui_server.wait_for_history(comfyui_server.queue_prompt(graph), timeout_s=300)
    finally:
        corrupt.unlink()
    error = history_error(entry)
    assert error is not None and "UnetLoaderGGUF (load_high)" in error
