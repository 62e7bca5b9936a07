"""Shared pytest fixtures: the local HF-style server and the moto S3 server (tests/support)."""

from tests.support.hf_server import hf_server, hf_server_factory  # noqa: F401
from tests.support.s3_server import s3_server  # noqa: F401
from tests.support.comfyui import comfyui_server, comfyui_store, tiny_models_dir  # noqa: F401
