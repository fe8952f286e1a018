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

``distinct: FIELD`` counts distinct values of a captured group instead of matches (distinct users
per IP): per key the last time each of the ``count`` most recently seen values was seen, in that
order, takes the place of the match times, and everything above holds with "value" for "match".
A hit without that group (an optional group that did not take part) does not count.

``reset_on: REGEX`` (its hits come from the matcher with role ``reset``) clears a key's count: the
key is forgotten, as if its matches had expired. A key that was firing resolves at the reset line
("reset by a matching line"). A line matching both ``match`` and ``reset_on`` counts, then resets.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
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
    __slots__ = ("firing", "labels", "peak", "recent", "seen", "times")

    def __init__(self, count: int, distinct: bool = False) -> None:
        self.times: deque[datetime] = deque(maxlen=count)
        """The times of the last ``count`` matches (without ``distinct``)."""
        self.seen: OrderedDict[str, datetime] | None = OrderedDict() if distinct else None
        """With ``distinct``: the ``count`` most recently seen values, oldest first, each with
        the last time it was seen."""
        self.firing = False
        self.labels: dict[str, str] = {}
        self.peak: int | None = None
        """While firing: the most matches (distinct values) within ``within`` so far; None:
        unknown."""
        self.recent: deque[datetime] | OrderedDict[str, datetime] | None = None
        """While firing: the matches (values) within ``within`` (memory only)."""

    def size(self) -> int:
        return len(self.times) if self.seen is None else len(self.seen)

    def oldest(self) -> datetime | None:
        if self.seen is None:
            return self.times[0] if self.times else None
        return next(iter(self.seen.values())) if self.seen else None

    def newest(self) -> datetime | None:
        if self.seen is None:
            return self.times[-1] if self.times else None
        return next(reversed(self.seen.values())) if self.seen else None

    def add(self, at: datetime, value: str, count: int) -> None:
        seen = self.seen
        if seen is None:
            self.times.append(at)
            return
        seen[value] = at
        seen.move_to_end(value)
        if len(seen) > count:
            seen.popitem(last=False)

    def expire(self, horizon: datetime) -> None:
        """Forget the matches (values last seen) at or before ``horizon``."""
        seen = self.seen
        if seen is None:
            times = self.times
            while times and times[0] <= horizon:
                times.popleft()
            return
        while seen and next(iter(seen.values())) <= horizon:
            seen.popitem(last=False)

    def count_peak(self, at: datetime, value: str, within: timedelta) -> None:
        """Count a match at ``at`` (already added) towards the peak of a firing key."""
        horizon = at - within
        recent = self.recent
        if isinstance(recent, OrderedDict) or (recent is None and self.seen is not None):
            if recent is None:  # just fired, or restored from a state row
                assert self.seen is not None
                recent = self.recent = OrderedDict(self.seen)
            assert isinstance(recent, OrderedDict)
            recent[value] = at
            recent.move_to_end(value)
            if len(recent) > PEAK_CAP:
                recent.popitem(last=False)
            while next(iter(recent.values())) <= horizon:
                recent.popitem(last=False)
        else:
            if recent is None:
                recent = self.recent = deque(self.times, maxlen=PEAK_CAP)
            else:
                recent.append(at)
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
        at = k.oldest() if k.firing else k.newest()
        return None if at is None else at + self.spec.within

    def _push(self, key: str, k: _Key) -> None:
        at = self._deadline(k)
        if at is not None:
            heapq.heappush(self._heap, (at, key))

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role == "reset":
            return self._reset(hit, line, when)
        if hit.role != "match":
            return []
        fields = hit_fields(hit, line)
        spec = self.spec
        value = ""
        if spec.distinct is not None:
            got = fields.get(spec.distinct)
            if got is None:
                return []  # nothing to count distinct values of
            value = got
        key, labels = group_key(spec.by, fields)
        k = self.keys.get(key)
        if k is None:
            k = self.keys[key] = _Key(spec.count, spec.distinct is not None)
            k.labels = labels
        at = when.at
        newest = k.newest()
        if newest is not None and at < newest:
            at = newest  # out-of-order timestamps: never let the window run backwards
        k.add(at, value, spec.count)
        self._touch(key)
        oldest = k.oldest()
        full = k.size() == spec.count and oldest is not None and oldest > at - spec.within
        out: list[Signal] = []
        if full or k.firing:
            ctx = {
                **fields,
                "line": line.text,
                "count": k.size(),
                "source": line.source,
                "within": format_duration(spec.within),
            }
            by = ", ".join(f"{n}={v}" for n, v in labels.items())
            what = "matches" if spec.distinct is None else f"distinct {spec.distinct}"
            default = (
                f"{self.rule.name}: {spec.count} {what} within "
                f"{format_duration(spec.within)}" + (f" ({by})" if by else "")
            )
            summary, description = summarize(self.rule, default, ctx)
            evidence: dict[str, Any] = {
                "count": spec.count,
                "within_s": spec.within.total_seconds(),
            }
            if spec.distinct is not None:
                evidence["distinct"] = spec.distinct
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
                    count=spec.count if not k.firing else 1,
                    evidence=evidence,
                    source=line.source,
                )
            )
            if not k.firing:
                k.firing, k.peak, k.recent = True, 0, None
            k.count_peak(at, value, spec.within)
        self._push(key, k)
        return out

    def _reset(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        key, _ = group_key(self.spec.by, hit_fields(hit, line))
        k = self.keys.pop(key, None)
        if k is None:
            return []
        self._touch(key)  # its row is deleted; the heap entry goes stale
        if not k.firing:
            return []
        newest = k.newest()
        at = when.at if newest is None or when.at >= newest else newest
        peak = k.peak
        what = "reset by a matching line"
        if peak is not None:
            what += f" (peak {peak}{'+' if peak >= PEAK_CAP else ''})"
        return [
            Signal(
                rule=self.rule.name,
                kind="threshold",
                key=key,
                action="resolve",
                at=at,
                labels=k.labels,
                evidence={"reset": True} if peak is None else {"reset": True, "peak": peak},
                source=line.source,
                **resolved(self.rule, k.labels, what),
            )
        ]

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
            k.expire(at - self.spec.within)
            self._touch(key)
            if k.firing:
                peak = k.peak
                what = f"back below {self.spec.count}"
                if self.spec.distinct is not None:
                    what += f" distinct {self.spec.distinct}"
                what += f" in {format_duration(self.spec.within)}"
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
            if not k.size():
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

    def _decode(self, _key: str, value: Any) -> _Key | None:
        distinct = self.spec.distinct is not None
        if ("values" in value) != distinct:
            return None  # a row of the rule with(out) distinct: counts of another thing
        k = _Key(self.spec.count, distinct)
        times = [parse_iso(t) for t in value["times"]]
        if k.seen is None:
            k.times.extend(times)
        else:
            values = value["values"]
            if len(values) != len(times):
                return None
            for v, t in zip(values, times, strict=True):
                k.add(t, str(v), self.spec.count)
        k.firing = bool(value["firing"])
        k.labels = dict(value.get("labels", {}))
        peak = value.get("peak")
        if k.firing and isinstance(peak, int) and peak > 0:
            k.peak = peak
        return k


def _row(_key: str, k: _Key) -> dict[str, Any]:
    seen = k.seen
    times = k.times if seen is None else seen.values()
    row: dict[str, Any] = {
        "times": [iso(t, keep_offset=True) for t in times],
        "firing": k.firing,
        "labels": k.labels,
    }
    if seen is not None:
        row["values"] = list(seen)  # in the order of "times": oldest first
    if k.firing and k.peak is not None:
        row["peak"] = k.peak  # only while firing: a quiet key's row is as before
    return row
