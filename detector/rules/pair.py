"""``start:``/``end:`` pair rules: every start needs its end within ``within``.

Sits in the rules stage beside ``heartbeat.py`` and ``window.py``: it gets the ``start`` and
``end`` hits of its rule and is woken exactly at the earliest open pair's deadline. Semantics:

* Pairs are keyed by the named groups that the start and end patterns share (``job`` in
  ``etl (?P<job>\\w+) started`` / ``etl (?P<job>\\w+) finished``); with none shared, one key.
* A start opens the pair; if its end has not come by ``start + within`` the key fires at exactly
  that instant; the end arriving later resolves it with the real duration ("etl-finishes
  job=nightly: finished after 41m (limit 30m)").
* A second start while the pair is open and not yet overdue is a double run: an ``info`` when
  ``on_double_start: alert`` (the default); the pair then runs from the newer start.
* An end without an open pair is an orphan: an ``info`` when ``on_orphan_end: alert``.
* An end sooner than ``min_duration`` after its start is an ``info`` ("finished too fast").
* An end that the agent reads only after the deadline passed unreported (catching up after a
  downtime) is an ``info`` saying how late it was, since there is nothing left to fire.
* A line with an uncertain time (``When.earliest < When.at``, read while catching up) is judged in
  its favour: a start counts from ``at``, an end is late only if even ``earliest`` is past the
  deadline, and too fast only if even the longest possible duration is short.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from detector.matching import Hit
from detector.model import PairSpec, RuleConfig
from detector.rules.base import Signal, When
from detector.rules.common import (
    Hold,
    downtime_note,
    group_key,
    held_deadline,
    resolved,
    summarize,
)
from detector.rules.state import KeyCap, KeyedState
from detector.schedule import DeadlineHeap
from detector.sources.base import Line
from detector.timefmt import at_or_none, format_duration, iso_or_none, utc_text


def shared_groups(start: str, end: str) -> tuple[str, ...]:
    """The named groups both patterns define, sorted (an uncompilable pattern shares none)."""
    try:
        a, b = re.compile(start).groupindex, re.compile(end).groupindex
    except re.error:
        return ()
    return tuple(sorted(set(a) & set(b)))


class _Open:
    __slots__ = ("earliest_at", "firing", "labels", "started_at")

    def __init__(self, started_at: datetime, earliest_at: datetime, labels: dict[str, str]):
        self.started_at = started_at
        self.earliest_at = earliest_at
        self.labels = labels
        self.firing = False


class PairEvaluator:
    wants_all_lines = False

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        assert rule.pair is not None, "PairEvaluator needs rule.pair"
        self.rule = rule
        self.spec: PairSpec = rule.pair
        self.by = shared_groups(self.spec.start, self.spec.end)
        self._open: dict[str, _Open] = {}
        self._heap = DeadlineHeap()
        self._rows = KeyedState(self._open, _row)
        self._touch = self._rows.touch
        self._down: tuple[datetime, datetime] | None = None
        self._hold: Hold | None = None
        self.cap = KeyCap(rule)
        """``max_keys``: a start of a new key past it is not tracked, but counted in the rule's
        digest alert, which resolves once fewer pairs than that are open."""

    def set_maintenance(self, hold: Hold | None) -> None:
        """The rule's maintenance windows: a pair whose wait overlaps one restarts at its end."""
        self._hold = hold
        for key, pair in self._open.items():
            if not pair.firing:
                self._heap.push(key, held_deadline(hold, pair.started_at, self.spec.within))

    # ---------------------------------------------------------------- helpers

    def _schedule(self, key: str, pair: _Open | None) -> None:
        self._touch(key)
        if pair is None:
            self._heap.remove(key)
        else:
            deadline = held_deadline(self._hold, pair.started_at, self.spec.within)
            self._heap.push(key, None if pair.firing else deadline)

    def _who(self, labels: Mapping[str, str]) -> str:
        return "".join(f" [{k}={v}]" for k, v in labels.items())

    def _signal(
        self,
        key: str,
        action: Literal["fire", "resolve", "info"],
        at: datetime,
        *,
        labels: Mapping[str, str],
        default: str,
        ctx: Mapping[str, Any],
        line: Line | None,
        evidence: Mapping[str, Any],
        description: str = "",
    ) -> Signal:
        summary, desc = summarize(self.rule, default, {"count": 1, **labels, **ctx})
        return Signal(
            rule=self.rule.name,
            kind="pair",
            key=key,
            action=action,
            at=at,
            labels=dict(labels),
            summary=summary,
            description=desc or description,
            sample=None if line is None else line.text,
            evidence={"within_s": self.spec.within.total_seconds(), **evidence},
            source=None if line is None else line.source,
        )

    # ---------------------------------------------------------------- Evaluator

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role not in ("start", "end"):
            return []
        fields = {**(dict(line.fields) if line.fields else {}), **hit.groups}
        key, labels = group_key(self.by, fields)
        ctx = {**fields, "line": line.text, "source": line.source}
        if hit.role == "start":
            return self._start(key, labels, line, when, ctx)
        return self._end(key, labels, line, when, ctx)

    def _start(
        self, key: str, labels: dict[str, str], line: Line, when: When, ctx: dict[str, Any]
    ) -> list[Signal]:
        out: list[Signal] = []
        pair = self._open.get(key)
        if pair is not None and not pair.firing and self.spec.on_double_start == "alert":
            default = (
                f"{self.rule.name}{self._who(labels)}: started again at {utc_text(when.at)} "
                f"while the run started at {utc_text(pair.started_at)} is still open (ran twice?)"
            )
            evidence = {
                "problem": "double_start",
                "previous_start_at": iso_or_none(pair.started_at),
            }
            out.append(
                self._signal(
                    f"{key}#double_start",
                    "info",
                    when.at,
                    labels=labels,
                    default=default,
                    ctx=ctx,
                    line=line,
                    evidence=evidence,
                )
            )
        if pair is None:
            if len(self._open) >= self.cap.limit:
                return out + self.cap.fold(key, when.at, "pair")
            pair = self._open[key] = _Open(when.at, when.earliest, labels)
        else:  # the newer start is the run that counts; an overdue alert stays open
            pair.started_at, pair.earliest_at = when.at, when.earliest
        self._schedule(key, pair)
        return out

    def _end(
        self, key: str, labels: dict[str, str], line: Line, when: When, ctx: dict[str, Any]
    ) -> list[Signal]:
        pair = self._open.pop(key, None)
        if pair is None and self.cap.firing:
            return []  # maybe a folded key's end: not an orphan
        if pair is None:
            if self.spec.on_orphan_end != "alert":
                return []
            default = (
                f"{self.rule.name}{self._who(labels)}: finished at {utc_text(when.at)} "
                "without a recorded start"
            )
            return [
                self._signal(
                    f"{key}#orphan_end",
                    "info",
                    when.at,
                    labels=labels,
                    default=default,
                    ctx=ctx,
                    line=line,
                    evidence={"problem": "orphan_end"},
                )
            ]
        self._schedule(key, None)
        released = self.cap.release(len(self._open), when.at, "pair")
        return released + self._ended(key, pair, labels=labels, line=line, when=when, ctx=ctx)

    def _ended(
        self,
        key: str,
        pair: _Open,
        *,
        labels: dict[str, str],
        line: Line,
        when: When,
        ctx: dict[str, Any],
    ) -> list[Signal]:
        took = max(when.at - pair.started_at, timedelta(0))
        longest = when.at - pair.earliest_at
        deadline = held_deadline(self._hold, pair.started_at, self.spec.within)
        over = max(took - self.spec.within, timedelta(0))
        ctx |= {
            "duration": format_duration(took),
            "within": format_duration(self.spec.within),
            "late_by": format_duration(over),
            "started": utc_text(pair.started_at),
        }
        evidence: dict[str, Any] = {
            "started_at": iso_or_none(pair.started_at),
            "ended_at": iso_or_none(when.at),
            "duration_s": took.total_seconds(),
        }
        limit_text = format_duration(self.spec.within)
        limit = f"{limit_text} limit"
        if pair.firing:
            what = f"finished after {format_duration(took)} (limit {limit_text})"
            return [
                Signal(
                    rule=self.rule.name,
                    kind="pair",
                    key=key,
                    action="resolve",
                    at=when.at,
                    labels=dict(labels),
                    sample=line.text,
                    evidence={"within_s": self.spec.within.total_seconds(), **evidence},
                    source=line.source,
                    **resolved(self.rule, labels, what),
                )
            ]
        if deadline < when.earliest:
            note = downtime_note(self._down, pair.started_at, when.at)
            default = (
                f"{self.rule.name}{self._who(labels)}: finished after {format_duration(took)}, "
                f"{format_duration(over)} over the {limit} (seen late)"
            )
            return [
                self._signal(
                    f"{key}#late",
                    "info",
                    when.at,
                    labels=labels,
                    default=default,
                    ctx=ctx,
                    line=line,
                    evidence={**evidence, "problem": "late_end"},
                    description=note,
                )
            ]
        fast = self.spec.min_duration
        if fast is not None and longest < fast:
            ctx["min_duration"] = format_duration(fast)
            default = (
                f"{self.rule.name}{self._who(labels)}: finished after {format_duration(took)}, "
                f"sooner than the {format_duration(fast)} minimum"
            )
            return [
                self._signal(
                    f"{key}#too_fast",
                    "info",
                    when.at,
                    labels=labels,
                    default=default,
                    ctx=ctx,
                    line=line,
                    evidence={**evidence, "problem": "too_fast"},
                )
            ]
        return []

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return []

    def next_deadline(self) -> datetime | None:
        return self._heap.next_at()

    def due(self, now: datetime) -> list[Signal]:
        out: list[Signal] = []
        for key in self._heap.pop_due(now):
            pair = self._open[key]
            pair.firing = True
            self._touch(key)
            running = now - pair.started_at
            note = downtime_note(self._down, pair.started_at, now)
            default = (
                f"{self.rule.name}{self._who(pair.labels)}: started at "
                f"{utc_text(pair.started_at)} and not finished within "
                f"{format_duration(self.spec.within)}"
            )
            if note:
                default += "; the agent was down for part of it"
            ctx: dict[str, Any] = {
                "duration": format_duration(running),
                "within": format_duration(self.spec.within),
                "started": utc_text(pair.started_at),
                "agent_down": bool(note),
            }
            evidence = {
                "started_at": iso_or_none(pair.started_at),
                "running_s": running.total_seconds(),
            }
            out.append(
                self._signal(
                    key,
                    "fire",
                    now,
                    labels=pair.labels,
                    default=default,
                    ctx=ctx,
                    line=None,
                    evidence=evidence,
                    description=note,
                )
            )
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        self._down = (since, until)

    def state_changes(self) -> dict[str, Any | None]:
        return self._rows.changes() | self.cap.changes()

    def load_state(self, items: Mapping[str, Any]) -> None:
        # a row malformed or keyed by other groups is dropped
        for key, pair in self._rows.load(self.cap.load(items), self._decode, drop_bad=True):
            self._open[key] = pair
            self._schedule(key, pair)
        self._rows.touched.difference_update(self._open)  # loaded as stored: nothing to rewrite
        self.cap.restored(len(self._open))

    def _decode(self, key: str, value: Any) -> _Open | None:
        pair = self._restore(value)
        return pair if pair is not None and group_key(self.by, pair.labels)[0] == key else None

    def _restore(self, value: Any) -> _Open | None:
        if not isinstance(value, Mapping):
            return None
        started_at = at_or_none(value.get("started"))
        labels = value.get("labels")
        if started_at is None or not isinstance(labels, Mapping) or set(labels) != set(self.by):
            return None
        pair = _Open(
            started_at,
            at_or_none(value.get("earliest")) or started_at,
            {str(k): str(v) for k, v in labels.items()},
        )
        pair.firing = value.get("firing") is True
        return pair


def _row(_key: str, pair: _Open) -> dict[str, Any]:
    return {
        "started": iso_or_none(pair.started_at),
        "earliest": iso_or_none(pair.earliest_at),
        "firing": pair.firing,
        "labels": pair.labels,
    }
