"""``threshold:`` rules: N matches within a sliding window, per ``by`` key.

Per key only the timestamps of the last ``count`` matches are kept (memory is bounded by ``count``,
whatever the flood): the window holds ``count`` matches exactly when the oldest of those is younger
than ``within``. A firing key resolves at the exact moment the count in the window falls below
``count``, which is ``oldest kept + within``; an idle key is forgotten when all its matches expire.

While a key fires it also counts its peak, the most matches within ``within`` at any of its matches
("back below 5 in 1m (peak 23)"): in memory it keeps those matches' times (at most ``PEAK_CAP``, a
peak beyond reads ``10000+``), in its state row only the peak. After a restart the count goes on
from the ``count`` times kept; a firing row of an earlier version has no peak, and the resolved
summary then leaves it out.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from detector.matching import Hit
from detector.model import RuleConfig, ThresholdSpec
from detector.rules.base import Signal, When
from detector.rules.common import group_key, hit_fields, resolved, summarize
from detector.rules.state import KeyedState
from detector.sources.base import Line
from detector.timefmt import format_duration, iso, parse_iso

PEAK_CAP = 10_000
"""The most match times a firing key keeps to count its peak (a flood reads ``10000+``)."""


class _Key:
    __slots__ = ("firing", "labels", "peak", "recent", "times")

    def __init__(self, count: int) -> None:
        self.times: deque[datetime] = deque(maxlen=count)
        self.firing = False
        self.labels: dict[str, str] = {}
        self.peak: int | None = None
        """While firing: the most matches within ``within`` so far; None: unknown."""
        self.recent: deque[datetime] | None = None
        """While firing: the times of the matches within ``within`` (memory only)."""

    def count_peak(self, at: datetime, within: timedelta) -> None:
        """Count a match at ``at`` (already in ``times``) towards the peak of a firing key."""
        recent = self.recent
        if recent is None:  # just fired, or restored from a state row
            recent = self.recent = deque(self.times, maxlen=PEAK_CAP)
        else:
            recent.append(at)
        horizon = at - within
        while recent[0] <= horizon:
            recent.popleft()
        if self.peak is not None and len(recent) > self.peak:
            self.peak = len(recent)


class ThresholdEvaluator:
    wants_all_lines = False

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        assert rule.threshold is not None
        self.rule = rule
        self.spec: ThresholdSpec = rule.threshold
        self.keys: dict[str, _Key] = {}
        self._rows = KeyedState(self.keys, _row)
        self._touch = self._rows.touch
        self._heap: list[tuple[datetime, str]] = []

    # deadline of a key: firing → when the window drops below count; idle → when it empties
    def _deadline(self, k: _Key) -> datetime | None:
        if not k.times:
            return None
        return (k.times[0] if k.firing else k.times[-1]) + self.spec.within

    def _push(self, key: str, k: _Key) -> None:
        at = self._deadline(k)
        if at is not None:
            heapq.heappush(self._heap, (at, key))

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role != "match":
            return []
        fields = hit_fields(hit, line)
        key, labels = group_key(self.spec.by, fields)
        k = self.keys.get(key)
        if k is None:
            k = self.keys[key] = _Key(self.spec.count)
            k.labels = labels
        at = when.at
        if k.times and at < k.times[-1]:
            at = k.times[-1]  # out-of-order timestamps: never let the window run backwards
        k.times.append(at)
        self._touch(key)
        full = len(k.times) == self.spec.count and k.times[0] > at - self.spec.within
        out: list[Signal] = []
        if full or k.firing:
            ctx = {
                **fields,
                "line": line.text,
                "count": len(k.times),
                "source": line.source,
                "within": format_duration(self.spec.within),
            }
            by = ", ".join(f"{n}={v}" for n, v in labels.items())
            default = (
                f"{self.rule.name}: {self.spec.count} matches within "
                f"{format_duration(self.spec.within)}" + (f" ({by})" if by else "")
            )
            summary, description = summarize(self.rule, default, ctx)
            out.append(
                Signal(
                    rule=self.rule.name,
                    kind="threshold",
                    key=key,
                    action="fire",
                    at=at,
                    labels={**hit.groups, **labels},
                    summary=summary,
                    description=description,
                    sample=line.text,
                    count=self.spec.count if not k.firing else 1,
                    evidence={
                        "count": self.spec.count,
                        "within_s": self.spec.within.total_seconds(),
                    },
                    source=line.source,
                )
            )
            if not k.firing:
                k.firing, k.peak, k.recent = True, 0, None
            k.count_peak(at, self.spec.within)
        self._push(key, k)
        return out

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return []

    def next_deadline(self) -> datetime | None:
        while self._heap:
            at, key = self._heap[0]
            k = self.keys.get(key)
            if k is None or self._deadline(k) != at:
                heapq.heappop(self._heap)
                continue
            return at
        return None

    def due(self, now: datetime) -> list[Signal]:
        out: list[Signal] = []
        while (at := self.next_deadline()) is not None and at <= now:
            _, key = heapq.heappop(self._heap)
            k = self.keys[key]
            horizon = at - self.spec.within
            while k.times and k.times[0] <= horizon:
                k.times.popleft()
            self._touch(key)
            if k.firing:
                peak = k.peak
                what = f"back below {self.spec.count} in {format_duration(self.spec.within)}"
                if peak is not None:
                    what += f" (peak {peak}{'+' if peak >= PEAK_CAP else ''})"
                k.firing, k.peak, k.recent = False, None, None
                out.append(
                    Signal(
                        rule=self.rule.name,
                        kind="threshold",
                        key=key,
                        action="resolve",
                        at=at,
                        labels=k.labels,
                        evidence={} if peak is None else {"peak": peak},
                        **resolved(self.rule, k.labels, what),
                    )
                )
            if not k.times:
                del self.keys[key]
            else:
                self._push(key, k)
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        return None

    def state_changes(self) -> dict[str, Any | None]:
        return self._rows.changes()

    def load_state(self, items: Mapping[str, Any]) -> None:
        # a row from an older/different rule definition is left out: that key starts afresh
        for key, k in self._rows.load(items, self._decode):
            self.keys[key] = k
            self._push(key, k)

    def _decode(self, _key: str, value: Any) -> _Key:
        k = _Key(self.spec.count)
        k.times.extend(parse_iso(t) for t in value["times"])
        k.firing = bool(value["firing"])
        k.labels = dict(value.get("labels", {}))
        peak = value.get("peak")
        if k.firing and isinstance(peak, int) and peak > 0:
            k.peak = peak
        return k


def _row(_key: str, k: _Key) -> dict[str, Any]:
    row: dict[str, Any] = {
        "times": [iso(t, keep_offset=True) for t in k.times],
        "firing": k.firing,
        "labels": k.labels,
    }
    if k.firing and k.peak is not None:
        row["peak"] = k.peak  # only while firing: a quiet key's row is as before
    return row
