"""The transfer engine: parallel ranged downloads into a preallocated part file, hashed in order,
resumable from a record of completed ranges. One concern per module:

- `config`:    TransferConfig, ConnectionBudget (the connection cap shared by a store's downloads)
- `http`:      Transport (opens connections: the seam a test may replace) and Connection (keep-alive
               GET, redirects, Authorization dropped on another origin)
- `responses`: the checks every response passes (status via the store's one table, failures.py;
               Content-Range; the file's validator) and the internal outcomes of a request
- `ranges`:    RangeSet (completed ranges) and Scheduler (missing pieces, handed out in order)
- `hasher`:    the in-order hasher (follows the contiguous written prefix, page cache, one pass)
- `record`:    the resume record next to the part (sidecar_path: the one place its name is built)
- `state`:     FileDownload, the shared state of one file (URL renewal, validator, stop signal)
- `ranged`:    the workers, the adaptive connection count and the supervisor of a ranged download
- `stream`:    one stream (size unknown, or Range ignored)
- `local`:     file:// copies
- `download`:  Downloader, which puts them together and maps outcomes to the public errors

Cleanup contract (for the caller): the engine never renames or deletes the part file. On
`DiskFullError` / `IntegrityError` the caller deletes the part and its record (`remove_part`); on
`TransferCancelled` or a transient `DownloadError` it keeps them so the next call resumes; on
`SourceChangedError` the record is already gone (the part is useless: delete it).
"""

from __future__ import annotations

from typing import Any

import httpx

from i2v_worker.store.errors import SourceChangedError, TransferCancelled
from i2v_worker.store.transfer.config import ConnectionBudget, TransferConfig
from i2v_worker.store.transfer.download import Downloader
from i2v_worker.store.transfer.http import Transport, make_ssl_context
from i2v_worker.store.transfer.record import (ResumeRecord, drop_sidecar, read_sidecar, remove_part, sidecar_path,
                                              sidecar_tmp_path)
from i2v_worker.store.transfer.types import Transferred

__all__ = [
    "TransferConfig", "ConnectionBudget", "Transferred", "Downloader", "Transport", "TransferCancelled",
    "SourceChangedError", "ResumeRecord", "make_client", "make_ssl_context", "remove_part", "sidecar_path",
    "sidecar_tmp_path", "read_sidecar", "drop_sidecar",
]


def make_client(config: TransferConfig | None = None, **kw: Any) -> httpx.Client:
    """An httpx client for resolution, sized for the engine (pool >= the connection cap, our timeouts)."""
    cfg = config or TransferConfig()
    limits = httpx.Limits(max_connections=cfg.max_connections + 8,
                          max_keepalive_connections=cfg.max_connections + 8)
    timeout = httpx.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s, write=30.0, pool=None)
    return httpx.Client(limits=limits, timeout=timeout, headers={"User-Agent": "i2v-worker"}, **kw)
