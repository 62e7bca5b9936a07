"""Worker settings, read once from the environment into a typed object and passed down.

No module reads `os.environ` on its own: `Settings.from_env(environ)` is the one place, so tests
build a `Settings` directly. Every field documents its variable and default; README's
configuration table is generated from this class (`i2v-worker schema --settings`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

RUNPOD_VOLUME = Path("/runpod-volume")


def default_store_root(environ: Mapping[str, str]) -> Path:
    """`I2V_MODEL_DIR`, else the RunPod network volume when mounted, else a local cache folder."""
    if environ.get("I2V_MODEL_DIR"):
        return Path(environ["I2V_MODEL_DIR"]).expanduser()
    if RUNPOD_VOLUME.is_dir():
        return RUNPOD_VOLUME / "i2v-worker" / "models"
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "i2v-worker" / "models"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- model store -------------------------------------------------------------------------
    model_dir: Path = Field(description="I2V_MODEL_DIR: store root (default: /runpod-volume/i2v-worker/models when that volume is mounted, else ~/.cache/i2v-worker/models)")
    manifest: Path | None = Field(None, description="I2V_MANIFEST: manifest TOML file (default: the packaged production manifest)")
    preset: str = Field("wan22-i2v-lightx2v", description="I2V_PRESET: preset whose models the worker prefetches at boot and generates with")
    prefetch: bool = Field(True, description="I2V_PREFETCH: download the preset's models at boot, before the first job (0 to disable)")
    connections_per_file: int = Field(16, ge=1, le=64, description="I2V_CONNECTIONS: most parallel ranged connections per file (default 16: the store starts with 8 and adds more while the throughput grows; a CDN caps each connection, e.g. ~40 MB/s)")
    max_connections: int = Field(32, ge=1, le=256, description="I2V_MAX_CONNECTIONS: cap on connections across all files (default 32: two big files at full speed; 429s are retried with backoff)")
    lease_wait_s: float = Field(3600.0, description="I2V_LEASE_WAIT_S: longest wait for another worker's download of the same model")
    hf_endpoint: str = Field("https://huggingface.co", description="HF_ENDPOINT: Hugging Face hub or mirror")
    hf_token: str | None = Field(None, description="HF_TOKEN (or the token file under HF_HOME): sent to the hub only")
    hf_offline: bool = Field(False, description="HF_HUB_OFFLINE: 1 means no network at all; only models already in the store are used")
    # adoption of files a machine already has (store/adopt/): searched before downloading
    adopt: bool = Field(True, description="I2V_ADOPT: before downloading a model, adopt a verified copy from a Hugging Face cache or a ComfyUI models folder (0 to disable)")
    hf_cache_dirs: tuple[Path, ...] = Field((), description="I2V_HF_CACHES: more Hugging Face hub caches to adopt from (comma-separated), searched after RunPod's cached models (/runpod-volume/huggingface-cache/hub), HF_HUB_CACHE, HF_HOME/hub and ~/.cache/huggingface/hub")
    comfyui_model_dirs: tuple[Path, ...] = Field((), description="I2V_COMFYUI_MODEL_DIRS: ComfyUI `models` folders to adopt from (comma-separated; default /runpod-volume/ComfyUI/models,/workspace/ComfyUI/models)")
    manifest_vars: dict[str, str] = Field(default_factory=dict, description="I2V_*: every I2V_* environment variable, available as ${VAR} in manifest sources (e.g. I2V_TINY_DIR for the tiny preset)")

    # --- engine --------------------------------------------------------------------------------
    engine: Literal["comfyui", "diffusers"] = Field("comfyui", description="I2V_ENGINE: comfyui (production) or diffusers (in-process)")
    device: str = Field("auto", description="I2V_DEVICE: torch device for the diffusers engine (auto, cpu, cuda)")
    comfyui_path: Path | None = Field(None, description="COMFYUI_PATH: ComfyUI checkout whose main.py the worker starts (default /opt/ComfyUI)")
    comfyui_url: str | None = Field(None, description="COMFYUI_URL: attach to an already running ComfyUI instead of starting one")
    comfyui_port: int = Field(8188, description="COMFYUI_PORT: port of the supervised ComfyUI (127.0.0.1 only)")
    comfyui_args: str = Field("", description="COMFYUI_ARGS: extra arguments for ComfyUI's main.py (e.g. --highvram)")
    job_deadline_s: float = Field(570.0, gt=0, description="I2V_JOB_DEADLINE_S: per-job deadline; ComfyUI is interrupted when it passes (default 570: inside RunPod's default 600 s execution timeout)")
    execution_timeout_s: float | None = Field(None, gt=0, description="I2V_EXECUTION_TIMEOUT_S: the endpoint's execution timeout, when raised above RunPod's 600 s default; the job deadline then ends 15 s before it (a job's own policy.executionTimeout wins)")

    # --- input and output ----------------------------------------------------------------------
    image_max_bytes: int = Field(25 * 2**20, description="I2V_IMAGE_MAX_BYTES: largest accepted input image (download or base64)")
    image_fetch_timeout_s: float = Field(30.0, description="I2V_IMAGE_FETCH_TIMEOUT_S: time cap for fetching image_url")
    image_host_allowlist: tuple[str, ...] = Field((), description="I2V_IMAGE_HOSTS: comma-separated hosts image_url may name (default: any public host)")
    allow_loopback_images: bool = Field(False, description="I2V_ALLOW_LOOPBACK_IMAGES: TEST ONLY, lets image_url reach 127.0.0.1")
    lora_budget_gb: float = Field(20.0, gt=0, description="I2V_LORA_BUDGET_GB: disk budget for job LoRAs (loras/job/ in the store); least recently used ones not in use are evicted to make room")
    lora_max_bytes: int = Field(1536 * 2**20, gt=0, description="I2V_LORA_MAX_BYTES: largest job LoRA file accepted (default 1.5 GiB, room for the largest common Wan LoRAs)")
    lora_host_allowlist: tuple[str, ...] = Field((), description="I2V_LORA_HOSTS: comma-separated hosts an http(s) LoRA source may name (default: any public host; hf:// sources use HF_ENDPOINT)")
    max_base64_result_bytes: int = Field(15 * 2**20, description="I2V_MAX_BASE64_BYTES: largest base64 video returned inline (RunPod's result limit is about 20 MB)")
    output_dir: Path = Field(Path("out"), description="I2V_OUTPUT_DIR: where `run` writes the MP4 of a local job")
    bucket_endpoint_url: str | None = Field(None, description="BUCKET_ENDPOINT_URL: S3-compatible endpoint for video delivery")
    bucket_access_key_id: str | None = Field(None, description="BUCKET_ACCESS_KEY_ID")
    bucket_secret_access_key: str | None = Field(None, description="BUCKET_SECRET_ACCESS_KEY")
    bucket_name: str = Field("i2v-outputs", description="BUCKET_NAME: bucket that receives the videos")
    bucket_region: str | None = Field(None, description="BUCKET_REGION")
    url_expiry_s: int = Field(7 * 24 * 3600, description="I2V_URL_EXPIRY_S: lifetime of a presigned video URL")

    # --- client side (`i2v-worker submit`) -------------------------------------------------------
    runpod_api_key: str | None = Field(None, repr=False, description="RUNPOD_API_KEY: API key `i2v-worker submit` sends to api.runpod.ai (client side only; the worker never uses it)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        truthy = lambda v: v.strip().lower() in ("1", "true", "yes", "on")  # noqa: E731
        values: dict = {"model_dir": default_store_root(env)}
        simple = {
            "I2V_MANIFEST": "manifest", "I2V_PRESET": "preset", "I2V_CONNECTIONS": "connections_per_file",
            "I2V_MAX_CONNECTIONS": "max_connections", "I2V_LEASE_WAIT_S": "lease_wait_s",
            "HF_ENDPOINT": "hf_endpoint", "I2V_ENGINE": "engine", "I2V_DEVICE": "device",
            "COMFYUI_PATH": "comfyui_path", "COMFYUI_URL": "comfyui_url", "COMFYUI_PORT": "comfyui_port",
            "COMFYUI_ARGS": "comfyui_args", "I2V_JOB_DEADLINE_S": "job_deadline_s",
            "I2V_EXECUTION_TIMEOUT_S": "execution_timeout_s",
            "I2V_IMAGE_MAX_BYTES": "image_max_bytes", "I2V_IMAGE_FETCH_TIMEOUT_S": "image_fetch_timeout_s",
            "I2V_MAX_BASE64_BYTES": "max_base64_result_bytes", "I2V_OUTPUT_DIR": "output_dir",
            "BUCKET_ENDPOINT_URL": "bucket_endpoint_url", "BUCKET_ACCESS_KEY_ID": "bucket_access_key_id",
            "BUCKET_SECRET_ACCESS_KEY": "bucket_secret_access_key", "BUCKET_NAME": "bucket_name",
            "BUCKET_REGION": "bucket_region", "I2V_URL_EXPIRY_S": "url_expiry_s",
            "RUNPOD_API_KEY": "runpod_api_key",
            "I2V_LORA_BUDGET_GB": "lora_budget_gb", "I2V_LORA_MAX_BYTES": "lora_max_bytes",
        }
        for var, field in simple.items():
            if env.get(var):
                values[field] = env[var]
        for var, field in {"I2V_PREFETCH": "prefetch", "HF_HUB_OFFLINE": "hf_offline", "I2V_ADOPT": "adopt",
                           "I2V_ALLOW_LOOPBACK_IMAGES": "allow_loopback_images"}.items():
            if env.get(var):
                values[field] = truthy(env[var])
        if env.get("I2V_IMAGE_HOSTS"):
            values["image_host_allowlist"] = tuple(h.strip().lower() for h in env["I2V_IMAGE_HOSTS"].split(",") if h.strip())
        if env.get("I2V_LORA_HOSTS"):
            values["lora_host_allowlist"] = tuple(h.strip().lower() for h in env["I2V_LORA_HOSTS"].split(",") if h.strip())
        values["hf_token"] = env.get("HF_TOKEN") or _token_file(env)
        values["hf_cache_dirs"] = hf_cache_dirs(env)
        values["comfyui_model_dirs"] = _path_list(env.get("I2V_COMFYUI_MODEL_DIRS")) or DEFAULT_COMFYUI_MODEL_DIRS
        values["manifest_vars"] = {k: v for k, v in env.items() if k.startswith("I2V_")}
        values.update(overrides)
        return cls(**values)


RUNPOD_HF_CACHE = RUNPOD_VOLUME / "huggingface-cache" / "hub"
DEFAULT_COMFYUI_MODEL_DIRS = (RUNPOD_VOLUME / "ComfyUI" / "models", Path("/workspace/ComfyUI/models"))


def _path_list(value: str | None) -> tuple[Path, ...]:
    return tuple(Path(p.strip()).expanduser() for p in (value or "").split(",") if p.strip())


def hf_cache_dirs(env: Mapping[str, str]) -> tuple[Path, ...]:
    """The Hugging Face hub caches to adopt from, in search order, without duplicates: RunPod's
    cached models, HF_HUB_CACHE, HF_HOME/hub, the default user cache, then I2V_HF_CACHES."""
    xdg = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    dirs = [RUNPOD_HF_CACHE]
    if env.get("HF_HUB_CACHE"):
        dirs.append(Path(env["HF_HUB_CACHE"]).expanduser())
    if env.get("HF_HOME"):
        dirs.append(Path(env["HF_HOME"]).expanduser() / "hub")
    dirs.append(xdg / "huggingface" / "hub")
    dirs += _path_list(env.get("I2V_HF_CACHES"))
    return tuple(dict.fromkeys(dirs))


def _token_file(env: Mapping[str, str]) -> str | None:
    """huggingface_hub's convention: the token saved by `hf auth login` under HF_HOME."""
    home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    path = Path(env.get("HF_TOKEN_PATH") or home / "token")
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None
