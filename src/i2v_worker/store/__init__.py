"""The model store: on-demand, verified, parallel, resumable delivery of model files.

Public API (imported lazily so `i2v-worker models get` starts fast):

    from i2v_worker.store import load_manifest, ModelStore
    manifest = load_manifest()                      # packaged production manifest
    store = ModelStore.from_settings(settings, manifest)
    paths = store.ensure([e.name for e in manifest.preset("wan22-i2v-lightx2v")], progress=cb)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "Manifest", "ModelEntry", "load_manifest", "ModelStore", "ModelStatus", "ModelState", "ProgressEvent",
    "ProgressCallback", "StoreError", "ManifestError", "DownloadError", "IntegrityError", "OfflineError",
    "DiskFullError", "LeaseTimeout", "EnsureCancelled", "StoreLayoutError", "LeaseLost",
]

_WHERE = {
    "Manifest": "manifest", "ModelEntry": "manifest", "load_manifest": "manifest",
    "ModelStore": "store", "EnsureCancelled": "store",
    "ModelStatus": "types", "ModelState": "types", "ProgressEvent": "types", "ProgressCallback": "types",
    "StoreError": "errors", "ManifestError": "errors", "DownloadError": "errors", "IntegrityError": "errors",
    "OfflineError": "errors", "DiskFullError": "errors", "LeaseTimeout": "errors",
    "StoreLayoutError": "errors", "LeaseLost": "errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.store.errors import (DiskFullError, DownloadError, IntegrityError, LeaseLost, LeaseTimeout,
                                         ManifestError, OfflineError, StoreError, StoreLayoutError)
    from i2v_worker.store.manifest import Manifest, ModelEntry, load_manifest
    from i2v_worker.store.store import EnsureCancelled, ModelStore
    from i2v_worker.store.types import ModelState, ModelStatus, ProgressCallback, ProgressEvent


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"i2v_worker.store.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'i2v_worker.store' has no attribute {name!r}")
