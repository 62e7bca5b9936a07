"""Settings of the transfer engine and the connection cap shared by all downloads of a store."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from i2v_worker.store.clock import Cancel
from i2v_worker.store.retry import RetryPolicy

if TYPE_CHECKING:  # pragma: no cover
    from i2v_worker.config import Settings


@dataclass(frozen=True)
class TransferConfig:
    # Connections per file adapt to the link (see ranged.ConnectionGovernor): start with
    # `initial_connections`, double while the file's aggregate throughput grows, never above
    # `connections_per_file` (a CDN caps each connection at ~40 MB/s: 16 reach aria2c -x16).
    connections_per_file: int = 16
    initial_connections: int = 8
    adapt_interval_s: float = 0.2  # throughput measured over this window before deciding to add
    adapt_gain: float = 1.15  # add connections while a window is this much faster than the last
    max_connections: int = 32  # across all downloads: two big files at full speed at once
    chunk_size: int = 16 * 2**20  # range size
    read_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    # a connection delivering less than this over a window is cut and counted as a failure,
    # whatever it delivered (a 1 byte/s server would otherwise keep a download alive forever)
    min_throughput_bps: int = 256 * 1024
    throughput_window_s: float = 20.0
    max_attempts: int = 8  # consecutive failures of one range (slow windows count) before giving up
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0  # longest Retry-After honoured
    max_reresolves: int = 3  # 403 -> re-resolve rounds without progress before giving up
    preallocate: bool = True  # fallocate the part file (else a sparse truncate)
    # Linux: start writeback (sync_file_range) of the hashed prefix while downloading, so the fsync
    # before publish finds little left to write (it was ~0.5 s per GiB of wall time).
    early_writeback: bool = True
    # hash through mmap windows (hashlib reads the page cache in place: ~0.15 s CPU per GiB less
    # than preadv into a buffer, measured here); preadv where mmap is refused.
    hash_mmap: bool = True

    def __post_init__(self) -> None:
        for name in ("connections_per_file", "initial_connections", "max_connections", "chunk_size",
                     "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransferConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts, backoff_base_s=self.backoff_base_s,
                           backoff_max_s=self.backoff_max_s, retry_after_max_s=self.retry_after_max_s)

    @classmethod
    def from_settings(cls, settings: "Settings", **kw: Any) -> "TransferConfig":
        return cls(connections_per_file=settings.connections_per_file,
                   max_connections=settings.max_connections, **kw)


class ConnectionBudget:
    """The global connection cap shared by all concurrent downloads of one store."""

    def __init__(self, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        self._sem = threading.BoundedSemaphore(max_connections)

    def acquire(self, abort: Cancel | None = None) -> bool:
        """Take a connection slot; False when `abort` was set while waiting."""
        while True:
            if abort is not None and abort.is_set():
                return False
            if self._sem.acquire(timeout=0.1):
                return True

    def release(self) -> None:
        self._sem.release()
