"""Results of the transfer engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transferred:
    size: int
    sha256: str
    resumed_bytes: int  # bytes of the part file kept from an earlier attempt (hashed from disk, not fetched)
    fetched_bytes: int  # body bytes received from the network in this call
    connections: int = 1  # connections the file used at the end (adaptive)
