"""An injected store clock for tests: real time, but `wait` records the seconds asked for and
returns at once (True when the cancel signal is already set)."""

from __future__ import annotations

import time


class RecordingClock:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float, cancel=None) -> bool:
        self.calls.append(seconds)
        return cancel is not None and cancel.is_set()
