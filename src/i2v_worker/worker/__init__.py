"""The RunPod worker: job API (schema), image input, delivery, the handler, and the SDK wiring.

    from i2v_worker.worker import Worker
    worker = Worker(settings, store, engine)      # tests build it directly
    result = await worker.handle({"id": "j1", "input": {...}})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Worker", "parse_job_input", "JobInput", "InvalidInput", "build_worker"]

_WHERE = {"Worker": "handler", "parse_job_input": "schema", "JobInput": "schema", "InvalidInput": "schema",
          "build_worker": "app"}

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.worker.app import build_worker
    from i2v_worker.worker.handler import Worker
    from i2v_worker.worker.schema import InvalidInput, JobInput, parse_job_input


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"i2v_worker.worker.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'i2v_worker.worker' has no attribute {name!r}")
