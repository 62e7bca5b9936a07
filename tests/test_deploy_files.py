"""The deployment files, checked statically (there is no Docker engine on these machines).

What a user relies on: the image builds from pinned inputs (base image, torch, ComfyUI and
ComfyUI-GGUF commits), carries no model weights and no compiler, starts the worker's console
script; the compose file, the RunPod Hub files and the env example name only settings the worker
really reads, with the worker's own defaults; the Hub's test job is a valid job.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from i2v_worker import config
from i2v_worker.config import Settings

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
HEX40 = re.compile(r"^[0-9a-f]{40}$")


# --- a small Dockerfile parser -------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    base: str  # after ARG substitution
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def runs(self) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == "RUN"]

    def args(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for i in self.instructions:
            if i.keyword == "ARG":
                name, _, default = i.args.partition("=")
                out[name.strip()] = default.strip() if _ else None
        return out


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[Stage]

    @classmethod
    def parse(cls, text: str) -> "Dockerfile":
        instructions: list[Instruction] = []
        buf, start = "", 0
        for no, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not buf and (not line or line.startswith("#")):
                continue
            if buf and line.startswith("#"):  # comment lines inside a continuation are dropped
                continue
            if not buf:
                start = no
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            keyword, _, args = buf.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            buf = ""
        global_args: dict[str, str | None] = {}
        stages: list[Stage] = []
        for ins in instructions:
            if ins.keyword == "FROM":
                words = [w for w in ins.args.split() if not w.startswith("--")]
                base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m[1] or m[2]) or "", words[0])
                name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
                stages.append(Stage(base, name))
            elif not stages:
                assert ins.keyword == "ARG", f"line {ins.line}: only ARG may precede the first FROM"
                name, _, default = ins.args.partition("=")
                global_args[name.strip()] = default.strip() if _ else None
            else:
                stages[-1].instructions.append(ins)
        return cls(global_args, stages)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all_args(self) -> dict[str, str | None]:
        out = dict(self.global_args)
        for s in self.stages:
            out.update({k: v for k, v in s.args().items() if v is not None})
        return out


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.parse((ROOT / "Dockerfile").read_text())


# --- the names of the project's settings ---------------------------------------------------------
def _upper_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", n.value)}


def _environ_gets(path: Path) -> set[str]:
    """Names read as os.environ.get("NAME") elsewhere (the log level and format)."""
    return set(re.findall(r"environ\.get\(\s*\"([A-Z0-9_]+)\"", path.read_text()))


def _manifest_vars() -> set[str]:
    text = (ROOT / "src/i2v_worker/store/manifests/models.toml").read_text()
    return set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))


@pytest.fixture(scope="module")
def setting_names() -> set[str]:
    """Every environment variable the worker reads: the names in config.py (Settings.from_env and
    its helpers), the logging switches, and the manifest's ${VAR} placeholders."""
    names = _upper_constants(Path(config.__file__))
    src = ROOT / "src/i2v_worker"
    for path in (src / "cli.py", src / "logs.py"):
        names |= _environ_gets(path)
    names |= _manifest_vars()
    assert {"I2V_MODEL_DIR", "I2V_ENGINE", "COMFYUI_PATH", "BUCKET_ENDPOINT_URL", "I2V_TINY_DIR"} <= names
    return names


def test_setting_names_are_found_in_config(setting_names: set[str]) -> None:
    # Every name is one that Settings.from_env actually reacts to or reads (a guard on the extraction).
    for var in ("I2V_PRESET", "I2V_JOB_DEADLINE_S", "HF_TOKEN", "I2V_IMAGE_HOSTS", "I2V_PREFETCH"):
        assert var in setting_names
    assert "NOT_A_SETTING" not in setting_names


# --- Dockerfile ------------------------------------------------------------------------------------
def test_dockerfile_is_multi_stage_on_a_pinned_cuda_base(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "builder + runtime stages"
    names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        if stage.base in names:
            continue
        image, _, tag = stage.base.partition(":")
        assert tag, f"FROM {stage.base}: pin a tag"
        assert tag != "latest" and not tag.startswith("latest"), f"FROM {stage.base}: never :latest"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"FROM {stage.base}: use a full version tag (X.Y.Z...)"
    assert dockerfile.final.base.startswith("nvidia/cuda:"), "the final stage runs on an NVIDIA CUDA base"
    assert dockerfile.final.base.split("@")[0].split(":")[1].endswith(("ubuntu24.04", "ubuntu22.04"))


def test_comfyui_and_gguf_are_cloned_at_pinned_commits(dockerfile: Dockerfile) -> None:
    args = dockerfile.all_args()
    for name in ("COMFYUI_COMMIT", "COMFYUI_GGUF_COMMIT"):
        assert args.get(name) and HEX40.match(args[name]), f"ARG {name} must default to a full 40-hex commit"
    for name in ("COMFYUI_REPO", "COMFYUI_GGUF_REPO"):  # substitutable (make image-test serves local repos)
        assert (args.get(name) or "").startswith("https://github.com/"), f"ARG {name} defaults to the GitHub repo"
    runs = " ".join(s for st in dockerfile.stages for s in st.runs())
    assert "${COMFYUI_COMMIT}" in runs and "${COMFYUI_GGUF_COMMIT}" in runs
    assert "${COMFYUI_REPO}" in runs and "${COMFYUI_GGUF_REPO}" in runs
    assert "/opt/ComfyUI/custom_nodes/ComfyUI-GGUF" in runs
    # the checkout is verified to be that exact commit
    assert "rev-parse HEAD" in runs


def test_build_args_agree_across_stages(dockerfile: Dockerfile) -> None:
    seen: dict[str, str] = {k: v for k, v in dockerfile.global_args.items() if v is not None}
    for stage in dockerfile.stages:
        for name, default in stage.args().items():
            if default is not None:
                assert seen.setdefault(name, default) == default, f"ARG {name} has two different defaults"


def test_torch_is_pinned_through_the_constraints_file(dockerfile: Dockerfile) -> None:
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\d+\.\d+\.\d+$", pins, re.M)
    installs = [r for st in dockerfile.stages for r in st.runs() if "pip install" in r]
    torch_install = [r for r in installs if re.search(r"\btorch\b", r)]
    assert torch_install, "torch is installed in the builder"
    for run in installs:
        assert "constraints.txt" in run, f"every pip install is held to constraints.txt: {run[:80]}"
    assert any("--index-url" in r and "TORCH_INDEX_URL" in r for r in torch_install)


MODEL_DOWNLOAD = [
    re.compile(r"huggingface-cli\s+download|\bhf\s+download|hf_hub_download|snapshot_download"),
    re.compile(r"\b(wget|curl)\b[^;&|]*\.(safetensors|gguf|ckpt|pth|pt|bin)\b"),
    re.compile(r"\.(safetensors|gguf|ckpt)\b"),
]


def test_no_model_weights_in_the_image(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for ins in stage.instructions:
            if ins.keyword in ("RUN", "COPY", "ADD"):
                for pattern in MODEL_DOWNLOAD:
                    assert not pattern.search(ins.args), f"line {ins.line}: looks like a model download: {ins.args[:120]}"
            if ins.keyword == "ADD":
                assert "://" not in ins.args, f"line {ins.line}: ADD of a URL"


def test_final_stage_has_no_compiler_no_git(dockerfile: Dockerfile) -> None:
    forbidden = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|git|cmake|[\w.+-]+-dev)\b")
    for run in dockerfile.final.runs():
        if "apt-get install" in run or "apt install" in run:
            pkgs = run.split("install", 1)[1]
            assert not forbidden.search(pkgs), f"final stage installs build tools: {run}"
        assert not re.search(r"\bgit\s+(clone|fetch)|\bpip\s+install\b", run), f"final stage builds or fetches: {run}"
    copies = [i.args for i in dockerfile.final.instructions if i.keyword == "COPY"]
    assert any("/opt/venv" in c and "--from=" in c for c in copies)
    assert any("/opt/ComfyUI" in c and "--from=" in c for c in copies)


def test_entrypoint_is_the_console_script(dockerfile: Dockerfile) -> None:
    entry = [i for i in dockerfile.final.instructions if i.keyword == "ENTRYPOINT"]
    assert entry, "final stage sets ENTRYPOINT"
    assert entry[-1].exec_form() == ["i2v-worker", "serve"], "exec form, so signals reach the worker"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["i2v-worker"].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    assert {"serve", "submit"} <= _subcommands()


def _subcommands() -> set[str]:
    from i2v_worker.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(action.choices)


def test_environment_defaults(dockerfile: Dockerfile, setting_names: set[str]) -> None:
    env: dict[str, str] = {}
    for ins in dockerfile.final.instructions:
        if ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                env[key] = value
    assert env.get("COMFYUI_PATH") == "/opt/ComfyUI"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert "/opt/venv/bin" in env.get("PATH", "")
    assert "I2V_MODEL_DIR" not in env, "unset so the store defaults to the network volume when mounted"
    for key in env:
        if key.startswith(("I2V_", "COMFYUI_", "BUCKET_", "HF_")):
            assert key in setting_names, f"ENV {key} is not a setting of the worker"


# --- .dockerignore ----------------------------------------------------------------------------------
def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder matches
    everything below it; `!` re-includes; `**` spans folders, `*` does not."""

    def rx(pattern: str) -> re.Pattern:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "$")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        body = pat[1:] if negate else pat
        body = body.strip("/")
        r = rx(body)
        if any(r.match(p) for p in prefixes):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", "tests/test_client.py", "tests/data/x.png", ".tiny/tiny_wan_2.1_vae.safetensors",
    ".store/unet/model.gguf", "out/video.mp4", "src/i2v_worker/__pycache__/cli.cpython-311.pyc",
    "src/i2v_worker.egg-info/PKG-INFO", "bench/run.sh", "some/where/model.safetensors",
])
def test_dockerignore_keeps_junk_and_data_out(dockerignore: list[str], path: str) -> None:
    assert _dockerignore_excludes(dockerignore, path), f"{path} would be sent to the Docker build"


def test_dockerignore_keeps_everything_the_dockerfile_copies(dockerfile: Dockerfile, dockerignore: list[str]) -> None:
    for stage in dockerfile.stages:
        for ins in stage.instructions:
            if ins.keyword != "COPY" or "--from=" in ins.args:
                continue
            sources = [w for w in ins.args.split() if not w.startswith("--")][:-1]
            for src in sources:
                target = ROOT / src
                assert target.exists(), f"COPY {src}: missing from the repository"
                files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
                assert files
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" in rel or ".egg-info/" in rel:  # build leftovers, dropped on purpose
                        continue
                    assert not _dockerignore_excludes(dockerignore, rel), f"{rel} is COPYed but .dockerignore drops it"


# --- docker-compose.yml -------------------------------------------------------------------------------
def _env_file_keys(path: Path) -> set[str]:
    keys = set()
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*#?\s*([A-Z][A-Z0-9_]+)=", line)
        if m:
            keys.add(m[1])
    return keys


def test_compose_runs_the_local_api_on_a_gpu_with_a_volume(setting_names: set[str]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]["worker"]
    assert svc["build"]["context"] == "."
    cmd = svc["command"]
    assert cmd[:1] == ["--rp_serve_api"] and "--rp_api_host" in cmd and cmd[cmd.index("--rp_api_host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--rp_api_port") + 1]
    assert any(str(p).endswith(f":{port}") for p in svc["ports"]), "the API port is published"
    assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"]), "published on the host's loopback only"
    assert any(str(v).endswith(":/runpod-volume") for v in svc["volumes"]), "a host folder stands in for the network volume"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    for key in (svc.get("environment") or {}):
        assert key in setting_names, f"compose sets {key}, which the worker does not read"
    for ef in svc.get("env_file") or []:
        path = ROOT / (ef["path"] if isinstance(ef, dict) else ef)
        example = path.with_name(path.name + ".example")
        assert example.exists(), f"ship {example.relative_to(ROOT)} as the template of {path.name}"
        keys = _env_file_keys(example)
        assert keys, "the example names settings"
        assert keys <= setting_names, f"not settings of the worker: {sorted(keys - setting_names)}"


# --- RunPod Hub ---------------------------------------------------------------------------------------
def test_hub_json_describes_a_gpu_video_endpoint_with_real_settings(setting_names: set[str]) -> None:
    hub = json.loads((ROOT / ".runpod/hub.json").read_text())
    assert hub["title"] and hub["description"]
    assert hub["type"] == "serverless" and hub["category"] == "video"
    cfg = hub["config"]
    assert cfg["runsOn"] == "GPU" and cfg["gpuCount"] >= 1 and cfg["gpuIds"]
    # no volume: the ~27 GB of models land on the container disk, plus the image and temp files
    assert cfg["containerDiskInGb"] >= 40
    base = Settings.from_env({})
    for item in cfg["env"]:
        key, inp = item["key"], item["input"]
        assert key in setting_names, f"hub.json offers {key}, which the worker does not read"
        assert inp["name"] and inp["description"] and inp["type"] in ("string", "number", "boolean")
        default = inp.get("default")
        if default not in (None, ""):
            # the Hub's default is the worker's own default: setting it changes nothing
            value = {True: "1", False: "0"}.get(default, str(default)) if isinstance(default, bool) else str(default)
            changed = Settings.from_env({key: value}).model_dump(exclude={"manifest_vars"})
            assert changed == base.model_dump(exclude={"manifest_vars"}), (
                f"hub.json default of {key} ({default!r}) differs from the worker's")


def test_hub_tests_json_is_a_valid_tiny_job() -> None:
    tests = json.loads((ROOT / ".runpod/tests.json").read_text())
    assert tests["tests"]
    env = {e["key"]: e["value"] for e in tests["config"]["env"]}
    settings = Settings.from_env(env)  # every value is valid for its setting
    assert settings.preset == "tiny", "runs with no network volume: the tiny models"
    assert env.get("I2V_TINY_DIR"), "the tiny preset's files are read from I2V_TINY_DIR"
    from i2v_worker.store.manifest import load_manifest

    roles = load_manifest(env=env).roles(settings.preset)
    assert all(entry.source.startswith("file://" + env["I2V_TINY_DIR"]) for entry in roles.values())
    schema = pytest.importorskip("i2v_worker.worker.schema", reason="the job schema (worker package) is not built yet")
    for test in tests["tests"]:
        assert test["name"] and test["timeout"] > 0
        schema.parse_job_input(test["input"])  # raises InvalidInput naming the field otherwise


def test_hub_tests_json_env_names_are_settings(setting_names: set[str]) -> None:
    tests = json.loads((ROOT / ".runpod/tests.json").read_text())
    keys = {e["key"] for e in tests["config"]["env"]}
    assert keys <= setting_names, f"not settings of the worker: {sorted(keys - setting_names)}"


def test_deploy_doc_states_the_real_pins_and_settings(dockerfile: Dockerfile, setting_names: set[str]) -> None:
    doc = (ROOT / "docs/deploy.md").read_text()
    for name in ("BASE_IMAGE", "TORCH_INDEX_URL", "COMFYUI_COMMIT", "COMFYUI_GGUF_COMMIT"):
        default = dockerfile.all_args()[name]
        assert f"`{name}`" in doc and default in doc, f"docs/deploy.md must state {name}={default}"
    hub = json.loads((ROOT / ".runpod/hub.json").read_text())
    assert f"{hub['config']['containerDiskInGb']} GB" in doc
    env_table = doc.split("Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", env_table, re.M)
    assert len(documented) >= 5
    for var in documented:
        assert var in setting_names, f"docs/deploy.md documents {var}, which the worker does not read"


# --- torch, CUDA and every place that states a CUDA version -----------------------------------------
# What the package indexes hold, as checked in December 2026 (docs/deploy.md): torch dropped CUDA
# 12.8 builds after 2.11; the 2.14 release matrix is CUDA 12.6, 13.0 and 13.2; PyPI's default torch
# 2.14.1 wheel is the CUDA 13.0 build (it requires cuda-toolkit==13.0.*, nvidia-cudnn-cu13).
# index URL -> {torch version: CUDA version of that build}
TORCH_INDEXES: dict[str, dict[str, str]] = {
    "https://pypi.org/simple": {"2.14.1": "13.0"},
    "https://download.pytorch.org/whl/cu126": {"2.14.1": "12.6"},
    "https://download.pytorch.org/whl/cu130": {"2.14.1": "13.0"},
    "https://download.pytorch.org/whl/cu132": {"2.14.1": "13.2"},
    "https://download.pytorch.org/whl/cu128": {"2.9.1": "12.8", "2.10.0": "12.8", "2.11.0": "12.8"},
}
# CUDA major -> the oldest NVIDIA driver that runs it (CUDA 13.0 release notes: >= 580)
DRIVER_FOR_CUDA_MAJOR = {13: 580, 12: 525}
STATING_FILES = ("Dockerfile", "README.md", "docs/deploy.md", ".runpod/hub.json", ".runpod/tests.json")


def _torch_pin() -> str:
    return re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)[1]


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _torch_cuda(dockerfile: Dockerfile) -> tuple[int, int]:
    index = dockerfile.all_args()["TORCH_INDEX_URL"]
    builds = TORCH_INDEXES.get(index.rstrip("/"))
    assert builds is not None, f"TORCH_INDEX_URL {index}: an index this test does not know; add what it holds"
    assert _torch_pin() in builds, f"{index} has no torch {_torch_pin()} (it holds {sorted(builds)})"
    return _version(builds[_torch_pin()])


def _base_cuda(dockerfile: Dockerfile) -> tuple[int, int]:
    tag = dockerfile.all_args()["BASE_IMAGE"].split("@")[0].split(":")[1]
    assert "-base-" in tag, f"BASE_IMAGE {tag}: the `base` flavour (torch's wheels carry the CUDA libraries)"
    return _version(tag)


def test_no_index_url_lacks_the_pinned_torch(dockerfile: Dockerfile) -> None:
    """Every PyTorch index named anywhere (build arg default, docs) holds the pinned torch."""
    _torch_cuda(dockerfile)
    for rel in STATING_FILES:
        for url in re.findall(r"https://download\.pytorch\.org/whl/\w+", (ROOT / rel).read_text()):
            builds = TORCH_INDEXES.get(url)
            assert builds is not None and _torch_pin() in builds, (
                f"{rel} names {url}, which has no torch {_torch_pin()}")


def test_base_image_cuda_major_matches_torchs(dockerfile: Dockerfile) -> None:
    base, torch_cuda = _base_cuda(dockerfile), _torch_cuda(dockerfile)
    assert base[0] == torch_cuda[0], f"base image CUDA {base} vs torch's CUDA {torch_cuda}"
    assert base >= torch_cuda, "the base image's CUDA is at least torch's"


def test_every_stated_cuda_version_is_in_step_with_the_dockerfile(dockerfile: Dockerfile) -> None:
    torch_cuda = _torch_cuda(dockerfile)
    driver = DRIVER_FOR_CUDA_MAJOR[torch_cuda[0]]
    for rel in (".runpod/hub.json", ".runpod/tests.json"):
        allowed = json.loads((ROOT / rel).read_text())["config"]["allowedCudaVersions"]
        assert allowed, f"{rel}: allowedCudaVersions"
        for v in allowed:
            assert _version(v)[0] == torch_cuda[0] and _version(v) >= torch_cuda, (
                f"{rel} allows CUDA {v}; the image's torch is the CUDA {torch_cuda[0]}.{torch_cuda[1]} build")
        assert "%d.%d" % torch_cuda in allowed
    for rel in ("README.md", "docs/deploy.md", "Dockerfile"):
        text = (ROOT / rel).read_text()
        stated = re.findall(r"\bCUDA (\d+\.\d+)", text)
        assert f"{torch_cuda[0]}.{torch_cuda[1]}" in stated, f"{rel} states the image's CUDA version"
        for v in stated:
            assert _version(v)[0] == torch_cuda[0], f"{rel} states CUDA {v}; the image is CUDA {torch_cuda[0]}"
        drivers = re.findall(r"driver >= ?(\d+)", text)
        assert drivers and set(drivers) == {str(driver)}, f"{rel} states driver >= {driver} (found {drivers})"
        assert not re.search(r"\bcu12\d\b", text), f"{rel} mentions a CUDA 12 torch build"


def test_pip_downloads_are_cached_between_builds(dockerfile: Dockerfile) -> None:
    installs = [r for st in dockerfile.stages for r in st.runs() if re.search(r"\bpip (install|wheel)\b", r)]
    assert installs
    for run in installs:
        assert run.startswith("--mount=type=cache,target=/root/.cache/pip"), f"no pip cache mount: {run[:80]}"
    env = " ".join(i.args for st in dockerfile.stages for i in st.instructions if i.keyword == "ENV")
    assert "PIP_NO_CACHE_DIR" not in env, "the cache mount needs pip's cache on"


def test_image_skips_the_sdks_torch_importing_system_checks(dockerfile: Dockerfile) -> None:
    env: dict[str, str] = {}
    for ins in dockerfile.final.instructions:
        if ins.keyword == "ENV":
            env.update(w.split("=", 1) for w in shlex.split(ins.args) if "=" in w)
    assert env.get("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS") == "true"


def test_root_handler_is_the_real_entry_point() -> None:
    """RunPod Hub wants handler.py at the root: it must start the same serve path, not copy it."""
    tree = ast.parse((ROOT / "handler.py").read_text())
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("i2v_worker.cli", "main") in imports
    assert '"serve"' in (ROOT / "handler.py").read_text()
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assert not defs, "no handler logic of its own"
    from i2v_worker.cli import build_parser

    args, extra = build_parser(["serve", "--rp_serve_api"]).parse_known_args(["serve", "--rp_serve_api"])
    assert args.command == "serve" and extra == ["--rp_serve_api"]


def test_packaging_metadata() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.11", "asyncio.timeout needs 3.11"
    assert meta["project"]["license"] == "Apache-2.0", "an SPDX expression (PEP 639), not the deprecated table"
    req = next(r for r in meta["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(req.split(">=")[1].split(".")[0]) >= 77, "setuptools 77 reads SPDX license strings"


def test_hub_deadline_fits_the_default_execution_timeout() -> None:
    hub = json.loads((ROOT / ".runpod/hub.json").read_text())
    env = {e["key"]: e["input"] for e in hub["config"]["env"]}
    assert float(env["I2V_JOB_DEADLINE_S"]["default"]) < 600, "RunPod's default execution timeout is 600 s"
    assert "I2V_EXECUTION_TIMEOUT_S" in env


def test_the_workers_code_is_the_last_layer(dockerfile: Dockerfile) -> None:
    """A change of the worker's code must not redo the multi-GB layers: the builder installs every
    dependency and never sees src/; a stage on top of it builds the worker; the runtime copies the
    venv from the builder (so that copy stays cached: a stage's copy is keyed by the stage it comes
    from) and the worker's folder last."""
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    assert any(i.keyword == "RUN" and "-r /build/worker-requirements.txt" in i.args for i in builder.instructions)
    assert not any(i.keyword == "COPY" and i.args.split()[0] == "src" for i in builder.instructions)
    worker = next(s for s in dockerfile.stages if s.base == "builder" and
                  any(i.keyword == "COPY" and i.args.split()[0] == "src" for i in s.instructions))
    copies = [i.args for i in dockerfile.final.instructions if i.keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    assert copies[-1] == f"--from={worker.name} /opt/i2v-worker/lib /opt/i2v-worker/lib"
