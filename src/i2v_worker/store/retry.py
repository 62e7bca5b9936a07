"""The one retry/backoff policy of the store (resolution and transfer alike).

Exponential backoff with jitter between attempts; a server's `Retry-After` is honoured up to
`retry_after_max_s` (a hub answering `Retry-After: 3600` must not hold a lease for an hour: the
wait is capped, and every wait is cancellable through the store's `Clock.wait`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8  # consecutive failed attempts (without useful progress) before giving up
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0  # longest Retry-After honoured (longer ones are capped)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.retry_after_max_s) + random.uniform(0, 0.1 * self.backoff_base_s)
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** (max(1, attempt) - 1)) * random.uniform(0.5, 1.0)
