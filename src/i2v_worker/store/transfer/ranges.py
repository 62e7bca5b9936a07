"""Range scheduling and the completed-ranges record of one file.

`RangeSet` holds the byte ranges already written (half-open `[start, end)`, merged): it is what the
resume record stores, so a resume fetches only what is missing, wherever the gaps are. `Scheduler`
cuts the missing ranges into pieces of at most `chunk_size`, hands them out in file order (so the
contiguous prefix the hasher follows grows steadily), and moves bytes into the RangeSet as they
are written.
"""

from __future__ import annotations

import bisect
import threading
from typing import Iterable


class RangeSet:
    """Disjoint, merged, sorted half-open byte ranges. Not thread-safe (the Scheduler locks)."""

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for a, b in spans:
            self.add(a, b)

    def add(self, a: int, b: int) -> None:
        if b <= a:
            return
        i = bisect.bisect_left(self._ends, a)  # first span that ends at or after a
        j = bisect.bisect_right(self._starts, b)  # spans [i, j) touch [a, b)
        if i < j:
            a = min(a, self._starts[i])
            b = max(b, self._ends[j - 1])
        self._starts[i:j] = [a]
        self._ends[i:j] = [b]

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends))

    def total(self) -> int:
        return sum(b - a for a, b in zip(self._starts, self._ends))

    def prefix(self) -> int:
        """End of the range that starts at 0 (the contiguous written prefix)."""
        return self._ends[0] if self._starts and self._starts[0] == 0 else 0

    def missing(self, size: int) -> list[tuple[int, int]]:
        out, pos = [], 0
        for a, b in zip(self._starts, self._ends):
            if a >= size:
                break
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < size:
            out.append((pos, size))
        return out

    def clipped(self, size: int) -> "RangeSet":
        return RangeSet((a, min(b, size)) for a, b in self.spans() if a < size)


class Piece:
    """A range a worker fetches: `[start, end)`, of which `[start, filled)` is written."""

    __slots__ = ("start", "end", "filled")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.filled = start, end, start

    def __repr__(self) -> str:  # pragma: no cover
        return f"Piece({self.start}, {self.end}, filled={self.filled})"


class Scheduler:
    """Hands out the missing pieces of a file in order and records written bytes (thread-safe)."""

    def __init__(self, size: int, chunk_size: int, done: RangeSet | None = None) -> None:
        self.size = size
        self.done = (done or RangeSet()).clipped(size)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified when the prefix grows
        self.pieces = [Piece(s, min(s + chunk_size, b)) for a, b in self.done.missing(size)
                       for s in range(a, b, chunk_size)]
        self._next = 0
        self.resumed = self.done.total()

    def take(self) -> Piece | None:
        with self.lock:
            if self._next >= len(self.pieces):
                return None
            p = self.pieces[self._next]
            self._next += 1
            return p

    def remaining_pieces(self) -> int:
        with self.lock:
            return len(self.pieces) - self._next

    def advance(self, piece: Piece, n: int) -> None:
        with self.lock:
            old_prefix = self.done.prefix()
            self.done.add(piece.filled, piece.filled + n)
            piece.filled += n
            if self.done.prefix() != old_prefix:
                self.changed.notify_all()

    def prefix(self) -> int:
        with self.lock:
            return self.done.prefix()

    def done_bytes(self) -> int:
        with self.lock:
            return self.done.total()

    def snapshot(self) -> list[tuple[int, int]]:
        with self.lock:
            return self.done.spans()

    def complete(self) -> bool:
        with self.lock:
            return self.done.prefix() >= self.size
