"""A small deadline heap: which keys are due, and when the next one is.

Sits beside the evaluators and the service's wake-up loop. Evaluators with many keys (heartbeat
``by:`` keys, open pairs) keep one to answer ``next_deadline()`` in O(1) amortised time, and the
service can keep one over rule names so that an idle round touches only the rules that are due
instead of asking every evaluator. ``push`` of a key that is already scheduled supersedes the old
time, ``push(key, None)`` unschedules it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime


class DeadlineHeap:
    """Keys with one deadline each; ``pop_due(now)`` returns the keys whose time ``<= now``
    (earliest first; keys due at one time in the order they were scheduled for it).

    The keys are kept in buckets, one per distinct deadline (``_due``: deadline → the keys due
    then, an insertion-ordered dict), and the heap holds each distinct deadline once. Keys share
    their deadline often (the keys of one read, alerts notified together), so an evaluator with
    100,000 open keys holds two dict entries per key and one datetime per distinct time, not a
    heap entry, a sequence number and a datetime per key (issue 20.6)."""

    __slots__ = ("_at", "_due", "_heap")

    def __init__(self) -> None:
        self._heap: list[datetime] = []
        """The distinct deadlines (a deadline whose bucket emptied stays until it is reached)."""
        self._due: dict[datetime, str | dict[str, None]] = {}
        """Deadline → the one key due then, or the keys (in the order they were scheduled)."""
        self._at: dict[str, datetime] = {}
        """Each key's deadline: the very object that keys its bucket in ``_due``."""

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def get(self, key: str) -> datetime | None:
        return self._at.get(key)

    def push(self, key: str, at: datetime | None) -> None:
        """Schedule ``key`` at ``at`` (replacing any earlier schedule); ``None`` removes it."""
        index = self._at
        old = index.get(key)
        if old is not None:
            if at is not None and (old is at or old == at):
                return
            self._unfile(key, old)
        if at is None:
            return
        due = self._due
        bucket = due.get(at)
        if bucket is None:
            due[at] = key
            heapq.heappush(self._heap, at)
            if len(self._heap) > 2 * len(due) + 64:
                self._compact()
        elif isinstance(bucket, str):
            at = index[bucket]  # the bucket's own datetime: one object for all its keys
            due[at] = {bucket: None, key: None}
        else:
            at = index[next(iter(bucket))]
            bucket[key] = None
        index[key] = at

    def _unfile(self, key: str, at: datetime) -> None:
        del self._at[key]
        due = self._due
        bucket = due.get(at)
        if bucket is None:
            return
        if isinstance(bucket, str):
            if bucket == key:
                del due[at]
            return
        bucket.pop(key, None)
        if len(bucket) == 1:
            due[at] = next(iter(bucket))
        elif not bucket:
            del due[at]

    def remove(self, key: str) -> None:
        old = self._at.get(key)
        if old is not None:
            self._unfile(key, old)

    def next_at(self) -> datetime | None:
        heap, due = self._heap, self._due
        while heap:
            at = heap[0]
            if at in due:
                return at
            heapq.heappop(heap)
        return None

    def pop_due(self, now: datetime) -> list[str]:
        """Remove and return, earliest first, every key whose deadline is ``<= now``."""
        out: list[str] = []
        heap, due, index = self._heap, self._due, self._at
        while heap and heap[0] <= now:
            bucket = due.pop(heapq.heappop(heap), None)
            if bucket is None:
                continue
            if isinstance(bucket, str):
                del index[bucket]
                out.append(bucket)
            else:
                for key in bucket:
                    del index[key]
                out.extend(bucket)
        return out

    def _compact(self) -> None:
        self._heap = list(self._due)
        heapq.heapify(self._heap)


class KeyedDeadlines:
    """Keys due at the deadline their owner keeps for each (``of(key)``), with no per-key entry
    of its own: a list of keys per distinct deadline, and the heap of those deadlines. For an
    owner that holds every key's deadline anyway (an error rule's last match, an alert's next
    repeat): 8 bytes per key here instead of the two dict entries of :class:`DeadlineHeap`
    (issue 20.6). Same order as :class:`DeadlineHeap`: earliest first, keys due at one time in
    the order they were scheduled for it.

    The owner calls :meth:`push` after changing a key's deadline to ``at`` (not when it stays the
    same); the entry left in the old deadline's list is stale and skipped (``of(key)`` no longer
    says that time), and stale entries are dropped once they outnumber the live ones. A key
    :meth:`pop_due` returns is no longer scheduled: the owner forgets its deadline then."""

    __slots__ = ("_due", "_heap", "_live", "_of", "_stale")
    SLACK = 1024
    """Stale entries kept beyond the live ones before a compaction."""

    def __init__(self, of: Callable[[str], datetime | None]) -> None:
        self._of = of
        self._heap: list[datetime] = []
        self._due: dict[datetime, list[str]] = {}
        self._stale = 0
        """Entries pushed since the last compaction, beyond one per distinct key."""
        self._live = 0

    def push(self, key: str, at: datetime, moved: bool) -> None:
        """``key`` is due at ``at`` now (``moved``: it was due at another time before)."""
        bucket = self._due.get(at)
        if bucket is None:
            self._due[at] = [key]
            heapq.heappush(self._heap, at)
        else:
            bucket.append(key)
        if moved:
            self._stale += 1
            if self._stale > self._live + self.SLACK:
                self._compact()
        else:
            self._live += 1

    def forget(self) -> None:
        """The owner dropped one key's deadline without :meth:`pop_due` (its entry is stale)."""
        self._live -= 1
        self._stale += 1

    def _keys(self, at: datetime, bucket: list[str]) -> list[str]:
        """The live keys of ``at``'s bucket, each at its last entry, in order."""
        of = self._of
        if len(bucket) == 1:
            key = bucket[0]
            return bucket if of(key) == at else []
        seen: set[str] = set()
        out: list[str] = []
        for key in reversed(bucket):
            if key not in seen:
                seen.add(key)
                if of(key) == at:
                    out.append(key)
        out.reverse()
        return out

    def next_at(self) -> datetime | None:
        heap, due = self._heap, self._due
        while heap:
            at = heap[0]
            bucket = due[at]
            if self._of(bucket[0]) == at:
                return at
            live = self._keys(at, bucket)
            if live:
                self._stale -= len(bucket) - len(live)
                due[at] = live
                return at
            self._stale -= len(bucket)
            del due[at]
            heapq.heappop(heap)
        return None

    def pop_due(self, now: datetime) -> list[str]:
        """Remove and return, earliest first, every key whose deadline is ``<= now``."""
        out: list[str] = []
        heap, due = self._heap, self._due
        while heap and heap[0] <= now:
            at = heapq.heappop(heap)
            bucket = due.pop(at)
            live = self._keys(at, bucket)
            self._stale -= len(bucket) - len(live)
            self._live -= len(live)
            out += live
        return out

    def _compact(self) -> None:
        due: dict[datetime, list[str]] = {}
        for at, bucket in self._due.items():
            live = self._keys(at, bucket)
            if live:
                due[at] = live
        self._due = due
        self._heap = list(due)
        heapq.heapify(self._heap)
        self._live = sum(map(len, due.values()))
        self._stale = 0
