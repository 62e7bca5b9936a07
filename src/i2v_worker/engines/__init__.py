"""Engines turn a validated `GenerationRequest` into an MP4. See `base.Engine`."""

from i2v_worker.engines.base import (
    Engine,
    EngineError,
    EngineProgress,
    GeneratedVideo,
    GenerationRequest,
    ModelRole,
)

__all__ = ["Engine", "EngineError", "EngineProgress", "GeneratedVideo", "GenerationRequest", "ModelRole", "create_engine"]


def create_engine(settings, store) -> Engine:
    """The engine `settings.engine` names (imports lazily: torch is only loaded when needed)."""
    if settings.engine == "diffusers":
        from i2v_worker.engines.diffusers import DiffusersEngine

        return DiffusersEngine(settings, store)
    from i2v_worker.engines.comfyui import ComfyUIEngine

    return ComfyUIEngine(settings, store)
