"""In-process engine: Wan2.2 I2V on the store's five files with diffusers (see engine.py)."""

from i2v_worker.engines.diffusers.engine import DiffusersEngine

__all__ = ["DiffusersEngine"]
