"""The ComfyUI engine: drives a (supervised) ComfyUI server through its HTTP/websocket API."""

from i2v_worker.engines.comfyui.engine import ComfyUIEngine

__all__ = ["ComfyUIEngine"]
