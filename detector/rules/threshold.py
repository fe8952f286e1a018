"""``threshold:`` rules: N matches within a sliding window, per ``by`` key.

Per key only the timestamps of the last ``count`` matches are kept, as runs of equal times (memory
is bounded by ``count`` and by the distinct times among them, whatever the flood: the lines of one
read share their arrival time): the window holds ``count`` matches exactly when the oldest of
those is younger than ``within``. A firing key resolves at the exact moment the count in the window
falls below ``count``, which is ``oldest kept + within``; an idle key is forgotten when all its
matches expire.

While a key fires it also counts its peak, the most matches within ``within`` at any of its matches
("back below 5 in 1m (peak 23)"): in memory it keeps those matches' times (at most ``PEAK_CAP``, a
peak beyond reads ``10000+``), in its state row only the peak. After a restart the count goes on
from the ``count`` times kept; a firing row of an earlier version has no peak, and the resolved
summary then leaves it out. A key's row is rewritten only in a batch that touched it; with
``count`` above ``CHUNK`` its window is kept in chunk rows of ``CHUNK`` runs beside it, so that a
batch rewrites the key's row, its first chunk and the chunks it completed, never the whole window
(a row of an earlier version, with every time in it, loads and is split at its next change).

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
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from detector.matching import Hit
from detector.model import RuleConfig, ThresholdSpec
from detector.rules.base import Signal, When
from detector.rules.common import group_key, hit_fields, resolved, summarize
from detector.rules.state import KeyCap, KeyedState
from detector.sources.base import Line
from detector.timefmt import format_duration, iso, parse_iso

PEAK_CAP = 10_000
"""The most match times a firing key keeps to count its peak (a flood reads ``10000+``)."""

CHUNK = 128
"""Runs per stored chunk row of a window of more than ``CHUNK`` matches (``count > CHUNK``)."""


class _Runs:
    """The times of the last ``cap`` matches, oldest first, as runs of equal times: ``times[i]``
    happened ``counts[i]`` times. The same answers as a list of every match time (oldest, newest,
    how many, what expires), in the memory of its distinct times: the lines of one read share
    their arrival time, the lines of a replay their (second, millisecond) timestamp.

    Run ``i`` has the sequence number ``first + i`` (never reused): a window of more than
    ``CHUNK`` runs is stored in chunk rows of ``CHUNK`` sequence numbers, so that a batch
    rewrites its first and last chunks only."""

    __slots__ = ("counts", "first", "times", "total")

    def __init__(self) -> None:
        self.times: deque[datetime] = deque()
        self.counts: deque[int] = deque()
        self.total = 0
        self.first = 0

    def __len__(self) -> int:
        return self.total

    def add(self, at: datetime, cap: int) -> None:
        times = self.times
        if times and times[-1] == at:
            self.counts[-1] += 1
        else:
            times.append(at)
            self.counts.append(1)
        self.total += 1
        if self.total > cap:
            self.total -= 1
            counts = self.counts
            if counts[0] == 1:
                counts.popleft()
                times.popleft()
                self.first += 1
            else:
                counts[0] -= 1

    def extend(self, times: Iterable[datetime], counts: Iterable[int], cap: int) -> None:
        """Add runs (in time order, after those held), then keep the last ``cap`` matches."""
        for t, n in zip(times, counts, strict=True):
            if self.times and self.times[-1] == t:
                self.counts[-1] += n
            else:
                self.times.append(t)
                self.counts.append(n)
            self.total += n
        self.trim(cap)

    def trim(self, cap: int) -> None:
        """Keep the last ``cap`` matches."""
        times, counts = self.times, self.counts
        while self.total > cap:
            extra = self.total - cap
            if counts[0] > extra:
                counts[0] -= extra
                self.total = cap
                return
            self.total -= counts.popleft()
            times.popleft()
            self.first += 1

    def span(self, lo: int, hi: int) -> tuple[list[datetime], list[int]]:
        """The runs with sequence numbers in ``[lo, hi)`` (within those held), read from the
        nearer end of the deques."""
        first, n = self.first, len(self.times)
        lo, hi = max(lo, first) - first, min(hi, first + n) - first
        if lo >= hi:
            return [], []
        if lo < n - hi:
            times = list(itertools.islice(self.times, lo, hi))
            counts = list(itertools.islice(self.counts, lo, hi))
        else:
            times = list(itertools.islice(reversed(self.times), n - hi, n - lo))[::-1]
            counts = list(itertools.islice(reversed(self.counts), n - hi, n - lo))[::-1]
        return times, counts

    def expire(self, horizon: datetime) -> None:
        """Forget the matches at or before ``horizon``."""
        times, counts = self.times, self.counts
        while times and times[0] <= horizon:
            times.popleft()
            self.total -= counts.popleft()
            self.first += 1

    def oldest(self) -> datetime | None:
        return self.times[0] if self.times else None

    def newest(self) -> datetime | None:
        return self.times[-1] if self.times else None


class _Key:
    __slots__ = ("firing", "labels", "peak", "recent", "seen", "times")

    def __init__(self, count: int, distinct: bool = False, runs: type[_Runs] = _Runs) -> None:
        self.times = runs()
        """The times of the last ``count`` matches (without ``distinct``)."""
        self.seen: OrderedDict[str, datetime] | None = OrderedDict() if distinct else None
        """With ``distinct``: the ``count`` most recently seen values, oldest first, each with
        the last time it was seen."""
        self.firing = False
        self.labels: dict[str, str] = {}
        self.peak: int | None = None
        """While firing: the most matches (distinct values) within ``within`` so far; None:
        unknown."""
        self.recent: _Runs | OrderedDict[str, datetime] | None = None
        """While firing: the matches (values) within ``within`` (memory only)."""

    def size(self) -> int:
        return self.times.total if self.seen is None else len(self.seen)

    def oldest(self) -> datetime | None:
        if self.seen is None:
            return self.times.oldest()
        return next(iter(self.seen.values())) if self.seen else None

    def newest(self) -> datetime | None:
        if self.seen is None:
            return self.times.newest()
        return next(reversed(self.seen.values())) if self.seen else None

    def add(self, at: datetime, value: str, count: int) -> None:
        seen = self.seen
        if seen is None:
            self.times.add(at, count)
            return
        seen[value] = at
        seen.move_to_end(value)
        if len(seen) > count:
            seen.popitem(last=False)

    def expire(self, horizon: datetime) -> None:
        """Forget the matches (values last seen) at or before ``horizon``."""
        seen = self.seen
        if seen is None:
            self.times.expire(horizon)
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
                recent = self.recent = _Runs()
                recent.extend(self.times.times, self.times.counts, PEAK_CAP)
            else:
                recent.add(at, PEAK_CAP)
            recent.expire(horizon)
        if self.peak is not None and len(recent) > self.peak:
            self.peak = len(recent)


class _Applies(Protocol):
    applies: int


class ThresholdEvaluator:
    wants_all_lines = False
    runs: type[_Runs] = _Runs
    """How a key keeps its match times (a test keeps every one, to compare the answers)."""
    fast = True
    """Whether a match of a firing key takes ``_refire`` (a test turns it off, to compare)."""

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        assert rule.threshold is not None
        self.rule = rule
        self.spec: ThresholdSpec = rule.threshold
        self.keys: dict[str, _Key] = {}
        self._rows = KeyedState(self.keys, _row)
        self._touch = self._rows.touch
        self._heap: list[tuple[datetime, str]] = []
        self._chunked = self.spec.count > CHUNK and self.spec.distinct is None
        """The window of a key is stored in chunk rows beside its row (``_chunk_rows``)."""
        self._stored: dict[str, tuple[int, int]] = {}
        """A chunked key's stored chunk rows: ``range(first, last)``."""
        self._within = format_duration(self.spec.within)
        what = "matches" if self.spec.distinct is None else f"distinct {self.spec.distinct}"
        self._default = f"{rule.name}: {self.spec.count} {what} within {self._within}"
        self._evidence: dict[str, Any] = {
            "count": self.spec.count,
            "within_s": self.spec.within.total_seconds(),
        }
        if self.spec.distinct is not None:
            self._evidence["distinct"] = self.spec.distinct
        self.cap = KeyCap(rule)
        """``max_keys``: a new key past it is folded into the rule's digest alert."""
        self._gone: dict[str, None] = {}
        """Chunk rows to delete with the next ``state_changes`` (their key was forgotten)."""
        self._fast = (
            self.fast and self.spec.distinct is None and not (rule.summary or rule.description)
        )
        """``observe`` takes ``_refire`` for a match of a key that fires already."""
        self.fire_open: Callable[[datetime, str, str], bool] | None = None
        """Set by the pipeline (with ``book``): ``AlertBook.fire_open_of`` the alert of key ''
        (a rule without ``group_by``). A ``_refire`` of that key on its open alert updates it at
        once, with no Signal — what the inline path of ``AlertBook.apply`` does with that Signal
        (whose evidence, this rule's constant ``_evidence``, the alert took when it fired) —
        unless a signal this rule returned is still waiting to be applied (``_sent``): it must
        not be overtaken (a reset's resolve, a late match's fire)."""
        self.book: _Applies | None = None
        self.groups_of: Callable[[str], dict[str, str]] | None = None
        """Set by the pipeline when the match hits of this rule carry no groups
        (``pipeline.hits_carry_groups``): the line's groups, for the labels of a Signal."""
        self._sent = -1
        """``book.applies`` when ``observe`` last returned signals: while it is unchanged they
        wait to be applied."""

    # deadline of a key: firing → when the window drops below count; idle → when it empties
    def _deadline(self, k: _Key) -> datetime | None:
        at = k.oldest() if k.firing else k.newest()
        return None if at is None else at + self.spec.within

    def _push(self, key: str, k: _Key) -> None:
        at = self._deadline(k)
        if at is not None:
            heapq.heappush(self._heap, (at, key))

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        role = hit.role
        if role != "match":
            out = self._reset(hit, line, when) if role == "reset" else []
        else:
            spec = self.spec
            fields = hit.groups if not line.fields else hit_fields(hit, line)
            key, labels = group_key(spec.by, fields) if spec.by else ("", {})
            k = self.keys.get(key)
            if (
                k is not None
                and k.firing
                and self._fast
                and k.recent is not None
                and when.at >= k.times.times[-1]  # in time order (else: clamped, generally)
            ):
                out = self._refire(hit, line, when.at, key=key, labels=labels, k=k)
            else:
                out = self._observe_general(
                    hit, line, when, fields=fields, key=key, labels=labels, k=k
                )
        if out and self.book is not None:
            self._sent = self.book.applies
        return out

    def _refire(
        self, hit: Hit, line: Line, at: datetime, *, key: str, labels: dict[str, str], k: _Key
    ) -> list[Signal]:
        """``_observe_general`` for a match of a key that fires already, of a rule without
        ``distinct`` or templates, in time order: the same signal and the same window, peak and
        deadline, with the steps that cannot change anything left out (the window stays full,
        the summary is the default, the deadline moves only if the oldest match went)."""
        spec = self.spec
        r = k.times
        oldest = r.times[0]
        r.add(at, spec.count)
        self._touch(key)
        recent = k.recent
        assert isinstance(recent, _Runs)
        recent.add(at, PEAK_CAP)
        recent.expire(at - spec.within)
        if k.peak is not None and recent.total > k.peak:
            k.peak = recent.total
        if r.times[0] != oldest:  # the deadline moved (else the heap holds it already)
            heapq.heappush(self._heap, (r.times[0] + spec.within, key))
        if labels:
            summary = f"{self._default} ({', '.join(f'{n}={v}' for n, v in labels.items())})"
            signal_labels = {**hit.groups, **labels}
        else:
            summary, signal_labels = self._default, hit.groups
            fire_open, book = self.fire_open, self.book
            if (
                not key
                and fire_open is not None
                and book is not None
                and book.applies != self._sent  # none of this rule's signals waits
                and fire_open(at, summary, line.text)
            ):
                return []
            if self.groups_of is not None:  # the alert's labels, should this open it
                signal_labels = self.groups_of(line.text)
        return [
            Signal(
                self.rule.name,
                "threshold",
                key,
                "fire",
                at,
                signal_labels,
                summary,
                "",
                "",
                line.text,
                1,
                self._evidence,
                line.source,
            )
        ]

    def _observe_general(
        self,
        hit: Hit,
        line: Line,
        when: When,
        *,
        fields: dict[str, str],
        key: str,
        labels: dict[str, str],
        k: _Key | None,
    ) -> list[Signal]:
        spec = self.spec
        value = ""
        if spec.distinct is not None:
            got = fields.get(spec.distinct)
            if got is None:
                return []  # nothing to count distinct values of
            value = got
        if k is None:
            if len(self.keys) >= self.cap.limit:
                return self.cap.fold(key, when.at, "threshold")
            k = self.keys[key] = _Key(spec.count, spec.distinct is not None, self.runs)
            k.labels = labels
        at = when.at
        newest = k.newest()
        if newest is not None and at < newest:
            at = newest  # out-of-order timestamps: never let the window run backwards
        before = self._deadline(k)
        k.add(at, value, spec.count)
        self._touch(key)
        oldest = k.oldest()
        full = k.size() == spec.count and oldest is not None and oldest > at - spec.within
        out: list[Signal] = []
        if full or k.firing:
            rule = self.rule
            by = ", ".join(f"{n}={v}" for n, v in labels.items())
            default = self._default + (f" ({by})" if by else "")
            if rule.summary or rule.description:
                ctx = {
                    **fields,
                    "line": line.text,
                    "count": k.size(),
                    "source": line.source,
                    "within": self._within,
                }
                summary, description = summarize(rule, default, ctx)
            else:
                summary, description = default, ""
            out.append(
                Signal(
                    rule=self.rule.name,
                    kind="threshold",
                    key=key,
                    action="fire",
                    at=at,
                    labels={**self._groups(hit, line), **labels},
                    summary=summary,
                    description=description,
                    sample=line.text,
                    count=spec.count if not k.firing else 1,
                    evidence=self._evidence,  # shared: a signal is read, never changed
                    source=line.source,
                )
            )
            if not k.firing:
                k.firing, k.peak, k.recent = True, 0, None
            k.count_peak(at, value, spec.within)
        if self._deadline(k) != before:  # else the heap holds this deadline already
            self._push(key, k)
        return out

    def _groups(self, hit: Hit, line: Line) -> Mapping[str, str]:
        return hit.groups if self.groups_of is None else self.groups_of(line.text)

    def _reset(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        key, _ = group_key(self.spec.by, hit_fields(hit, line))
        k = self.keys.pop(key, None)
        if k is None:
            return []
        self._touch(key)  # its row is deleted; the heap entry goes stale
        self._forget(key)
        released = self.cap.release(len(self.keys), when.at, "threshold")
        if not k.firing:
            return released
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
            ),
            *released,
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
                self._forget(key)
                out += self.cap.release(len(self.keys), at, "threshold")
            else:
                self._push(key, k)
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        return None

    def state_changes(self) -> dict[str, Any | None]:
        if not self._chunked:
            return self._rows.changes() | self.cap.changes()
        out: dict[str, Any | None] = dict(self._gone) | self.cap.changes()
        self._gone.clear()
        keys = self._rows.touched
        for key in keys:
            k = self.keys.get(key)
            if k is None:
                out[key] = None
            else:
                self._chunk_rows(key, k, out)
        keys.clear()
        return out

    def _forget(self, key: str) -> None:
        stored = self._stored.pop(key, None)
        if stored is not None:
            for c in range(*stored):
                self._gone[_chunk_key(key, c)] = None

    def _chunk_rows(self, key: str, k: _Key, out: dict[str, Any | None]) -> None:
        """A chunked key's rows into ``out``: its row (the last chunk's runs, and which chunk
        rows precede them), the first chunk (it may have lost matches), the chunks completed
        since the last call, and deletions of those gone."""
        r = k.times
        first = r.first // CHUNK
        last = (r.first + len(r.times) - 1) // CHUNK if r.times else first
        was_first, was_last = self._stored.get(key, (first, first))
        for c in range(was_first, was_last):
            if not first <= c < last:
                out[_chunk_key(key, c)] = None
        for c in range(first, last):
            if c == first or c >= was_last or c < was_first:
                times, counts = r.span(c * CHUNK, (c + 1) * CHUNK)
                out[_chunk_key(key, c)] = _runs_row(max(r.first, c * CHUNK), times, counts)
        self._stored[key] = (first, last)
        row = _row(key, k, max(r.first, last * CHUNK))
        row["chunks"] = [first, last]
        out[key] = row

    def load_state(self, items: Mapping[str, Any]) -> None:
        # a row from an older/different rule definition is left out: that key starts afresh
        items = self.cap.load(items)
        chunks = {row: value for row, value in items.items() if row.startswith(_CHUNK_MARK)}
        main = {row: value for row, value in items.items() if not row.startswith(_CHUNK_MARK)}
        used: set[str] = set()
        for key, (k, stored) in self._rows.load(main, lambda key, v: self._decode(key, v, chunks)):
            self.keys[key] = k
            self._push(key, k)
            if stored is not None:
                self._stored[key] = stored
                used.update(_chunk_key(key, c) for c in range(*stored))
        self.cap.restored(len(self.keys))
        for row in chunks:
            if row not in used:  # of a key that starts afresh, or of another rule definition
                self._gone[row] = None

    def _decode(
        self, key: str, value: Any, chunks: Mapping[str, Any]
    ) -> tuple[_Key, tuple[int, int] | None] | None:
        distinct = self.spec.distinct is not None
        if ("values" in value) != distinct:
            return None  # a row of the rule with(out) distinct: counts of another thing
        k = _Key(self.spec.count, distinct, self.runs)
        times = [parse_iso(t) for t in value["times"]]
        stored: tuple[int, int] | None = None
        if k.seen is None:
            r = k.times
            spans = value.get("chunks")
            if spans is not None:  # a window stored in chunk rows (count > CHUNK)
                first, last = int(spans[0]), int(spans[1])
                seq = None
                for c in range(first, last):
                    part = chunks[_chunk_key(key, c)]
                    if seq is None:
                        seq = r.first = int(part["seq"])
                    elif int(part["seq"]) != seq:
                        return None  # a chunk row missing or left from another window
                    got = [parse_iso(t) for t in part["times"]]
                    r.extend(got, _counts(part, len(got)), self.spec.count + CHUNK)
                    seq += len(got)
                if seq is None:
                    r.first = int(value["seq"])
                elif int(value["seq"]) != seq:
                    return None
                if self._chunked:
                    stored = (first, last)
                else:  # the rule's count went down: these chunk rows are deleted
                    for c in range(first, last):
                        self._gone[_chunk_key(key, c)] = None
            r.extend(times, _counts(value, len(times)), self.spec.count + CHUNK)
            first_before = r.first
            r.trim(self.spec.count)
            if stored is not None and r.first != first_before:
                self._touch(key)  # the rule's count went down: rewrite what is kept
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
        return k, stored


_CHUNK_MARK = "\x1e"


def _chunk_key(key: str, c: int) -> str:
    """The row of chunk ``c`` of a key's window (no key begins with ``\\x1e``)."""
    return f"{_CHUNK_MARK}{c}{_CHUNK_MARK}{key}"


def _counts(value: Mapping[str, Any], n: int) -> list[int]:
    counts = value.get("n")
    if counts is None:
        return [1] * n
    if len(counts) != n or not all(isinstance(c, int) and c > 0 for c in counts):
        raise ValueError("bad run counts")
    return list(counts)


def _runs_row(seq: int, times: list[datetime], counts: list[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"seq": seq, "times": [iso(t, keep_offset=True) for t in times]}
    if any(n != 1 for n in counts):
        row["n"] = counts
    return row


def _row(_key: str, k: _Key, start: int | None = None) -> dict[str, Any]:
    """A key's row; ``start``: of a chunked window, the first run it holds (the last chunk's)."""
    seen = k.seen
    counts: Iterable[int] = ()
    if seen is not None:
        times: Iterable[datetime] = seen.values()
    elif start is None:
        times, counts = k.times.times, k.times.counts
    else:
        times, counts = k.times.span(start, start + CHUNK)
    row: dict[str, Any] = {
        "times": [iso(t, keep_offset=True) for t in times],
        "firing": k.firing,
        "labels": k.labels,
    }
    if seen is not None:
        row["values"] = list(seen)  # in the order of "times": oldest first
    if k.firing and k.peak is not None:
        row["peak"] = k.peak  # only while firing: a quiet key's row is as before
    if start is not None:
        row["seq"] = start
    if any(n != 1 for n in counts):
        row["n"] = list(counts)  # runs of equal times: how many matches each (after the rest)
    return row
