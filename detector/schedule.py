"""A small deadline heap: which keys are due, and when the next one is.

Sits beside the evaluators and the service's wake-up loop. Evaluators with many keys (heartbeat
``by:`` keys, open pairs) keep one to answer ``next_deadline()`` in O(1) amortised time, and the
service can keep one over rule names so that an idle round touches only the rules that are due
instead of asking every evaluator. Entries are replaced lazily: ``push`` of a key that is already
scheduled supersedes the old time, ``push(key, None)`` unschedules it.
"""

from __future__ import annotations

import heapq
from datetime import datetime


class DeadlineHeap:
    """Keys with one deadline each; ``pop_due(now)`` returns the keys whose time ``<= now``.

    One tuple ``(at, seq, key)`` per scheduled key, held both by the heap and by the index
    ``_at`` (an entry in the heap is current iff it *is* the key's entry in the index): an
    evaluator with 100,000 open keys keeps one such tuple per key, not two."""

    __slots__ = ("_at", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, str]] = []
        self._at: dict[str, tuple[datetime, int, str]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def get(self, key: str) -> datetime | None:
        entry = self._at.get(key)
        return None if entry is None else entry[0]

    def push(self, key: str, at: datetime | None) -> None:
        """Schedule ``key`` at ``at`` (replacing any earlier schedule); ``None`` removes it."""
        if at is None:
            self._at.pop(key, None)
            return
        old = self._at.get(key)
        if old is not None and old[0] == at:
            return
        self._seq += 1
        entry = (at, self._seq, key)
        self._at[key] = entry
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._at) + 64:
            self._compact()

    def remove(self, key: str) -> None:
        self._at.pop(key, None)

    def next_at(self) -> datetime | None:
        heap = self._heap
        while heap:
            entry = heap[0]
            if self._at.get(entry[2]) is entry:
                return entry[0]
            heapq.heappop(heap)
        return None

    def pop_due(self, now: datetime) -> list[str]:
        """Remove and return, earliest first, every key whose deadline is ``<= now``."""
        out: list[str] = []
        heap = self._heap
        index = self._at
        while heap:
            entry = heap[0]
            key = entry[2]
            if index.get(key) is not entry:
                heapq.heappop(heap)
                continue
            if entry[0] > now:
                break
            heapq.heappop(heap)
            del index[key]
            out.append(key)
        return out

    def _compact(self) -> None:
        self._heap = list(self._at.values())
        heapq.heapify(self._heap)
