"""The one injectable clock of the store: wall time, monotonic time and a cancellable wait.

`ModelStore` builds one (`SystemClock()` unless a test passes its own) and hands it to the lease,
the resolver and the downloader, so every wait in the store (lease polls, backoff, Retry-After) goes
through `wait(seconds, cancel)`: it returns early, True, as soon as `cancel` is set. A test clock
records the waits and returns at once; nothing compares against `time.sleep`.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Cancel(Protocol):
    """What the store accepts as a cancel signal (a `threading.Event` is one)."""

    def is_set(self) -> bool: ...


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds (lease heartbeats, records, HTTP dates)."""

    def monotonic(self) -> float:
        """Seconds for measuring intervals (throughput windows, throttles)."""

    def wait(self, seconds: float, cancel: Cancel | None = None) -> bool:
        """Wait `seconds`, or less when `cancel` is set: True when cancelled."""


class SystemClock:
    """The real clock; `wait` sleeps on the cancel event itself when it has `wait` (an Event),
    else polls it every 0.1 s."""

    _POLL_S = 0.1

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float, cancel: Cancel | None = None) -> bool:
        if cancel is None:
            time.sleep(max(0.0, seconds))
            return False
        if isinstance(cancel, threading.Event):
            return cancel.wait(max(0.0, seconds))
        end = time.monotonic() + seconds
        while not cancel.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, self._POLL_S))
        return True


class AnyCancel:
    """Set when any of its parts is (e.g. the caller's cancel and a download's own abort)."""

    def __init__(self, *parts: Cancel | None) -> None:
        self.parts = [p for p in parts if p is not None]

    def is_set(self) -> bool:
        return any(p.is_set() for p in self.parts)
