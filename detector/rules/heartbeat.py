"""``expect: {every}`` rules — silence detection (heartbeat), one deadline per key.

Sits in the rules stage beside ``window.py`` and ``pair.py``: the service feeds the evaluator the
hits of its rule (``observe``) and wakes it exactly at ``next_deadline()`` (``due``); the signals go
to the alert book. Semantics:

**Heartbeat** (``expect: {every, grace, by, keys}``). A key fires at exactly
``last match + every + grace`` (a key never seen: ``tracking start + every + grace``, where tracking
starts when the agent first ran the rule and survives restarts) and resolves on its next match
("app-alive: back after 17m of silence (expected every 5m)"). With ``by:`` each value of that
field (captured group or journald field) is its own key; with ``keys:`` exactly those values are
tracked (other values are ignored) and one never seen fires too; with ``by:`` but no ``keys:`` a
value is tracked from its first match.

**Downtime.** ``note_downtime(since, until)`` tells the evaluator when the agent was not running.
The service holds ``due()`` back until the sources caught up, so a line written during the downtime
is observed first: a heartbeat is fed by it. A deadline that passed unsatisfied still fires, once,
saying the agent was down for part of the period. A silence that is already over when its line is
read (its exact timestamp is past a deadline that was not yet evaluated) is an ``info``, not a fire:
nothing is left open, yet nothing is swallowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from detector.matching import Hit
from detector.model import HeartbeatSpec, RuleConfig
from detector.rules.base import Signal, When
from detector.rules.common import (
    Hold,
    downtime_note,
    group_key,
    held_deadline,
    hit_fields,
    resolved,
    summarize,
)
from detector.rules.state import KeyCap, KeyedState
from detector.schedule import DeadlineHeap
from detector.sources.base import Line
from detector.timefmt import at_or_none, format_duration, iso_or_none, utc_text


class _Beat:
    __slots__ = ("firing", "labels", "last_at", "since_at")

    def __init__(self, since_at: datetime, labels: dict[str, str]) -> None:
        self.since_at = since_at
        self.last_at: datetime | None = None
        self.firing = False
        self.labels = labels


class HeartbeatEvaluator:
    """At least one match every ``every`` (+ ``grace``), per ``by`` key."""

    wants_all_lines = False

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        assert rule.heartbeat is not None, "HeartbeatEvaluator needs rule.heartbeat"
        self.rule = rule
        self.spec: HeartbeatSpec = rule.heartbeat
        self._period = self.spec.every + self.spec.grace
        self._every_text = format_duration(self.spec.every)
        self._grace_text = format_duration(self.spec.grace)
        self._start_at = now
        self._beats: dict[str, _Beat] = {}
        self._heap = DeadlineHeap()
        self._rows = KeyedState(self._beats, _row)
        self._touch = self._rows.touch
        self._down: tuple[datetime, datetime] | None = None
        self._hold: Hold | None = None
        self.cap = KeyCap(rule, max(rule.max_keys, len(self.spec.keys)))
        """``max_keys``: a ``by`` value first seen past it is not tracked, but counted in the
        rule's digest alert (the ``keys:`` listed are always tracked)."""
        by = self.spec.by
        if by is None:
            self._add("", {}, now)
        else:
            for value in self.spec.keys:
                key, labels = group_key((by,), {by: value})
                self._add(key, labels, now)

    # ---------------------------------------------------------------- helpers

    def _add(self, key: str, labels: dict[str, str], since_at: datetime) -> _Beat:
        beat = self._beats[key] = _Beat(since_at, labels)
        self._schedule(key, beat)
        return beat

    def _deadline(self, beat: _Beat) -> datetime | None:
        if beat.firing:
            return None
        return held_deadline(self._hold, beat.last_at or beat.since_at, self._period)

    def set_maintenance(self, hold: Hold | None) -> None:
        """The rule's maintenance windows: a silence that overlaps one restarts at its end."""
        self._hold = hold
        for key, beat in self._beats.items():
            self._heap.push(key, self._deadline(beat))

    def _schedule(self, key: str, beat: _Beat) -> None:
        self._heap.push(key, self._deadline(beat))
        self._touch(key)

    def _key_for(self, hit: Hit, line: Line) -> tuple[str, dict[str, str]] | None:
        by = self.spec.by
        if by is None:
            return "", {}
        value = hit_fields(hit, line).get(by)
        if value is None or (self.spec.keys and value not in self.spec.keys):
            return None
        return group_key((by,), {by: value})

    def _ctx(self, beat: _Beat, silent_for: timedelta, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **beat.labels,
            "count": 1,
            "silent_for": format_duration(silent_for),
            "last_seen": utc_text(beat.last_at) if beat.last_at else "never",
            "every": self._every_text,
            "grace": self._grace_text,
            **extra,
        }

    def _who(self, beat: _Beat) -> str:
        return "".join(f" [{k}={v}]" for k, v in beat.labels.items())

    # ---------------------------------------------------------------- Evaluator

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role != "match":
            return []
        found = self._key_for(hit, line)
        if found is None:
            return []
        key, labels = found
        beat = self._beats.get(key)
        if beat is None:
            if len(self._beats) >= self.cap.limit:
                return self.cap.fold(key, when.at, "silence")
            beat = self._add(key, labels, when.at)
        out: list[Signal] = []
        base_at = beat.last_at or beat.since_at
        silent_for = max(when.at - base_at, timedelta(0))
        deadline = held_deadline(self._hold, base_at, self._period)
        extra = {"line": line.text, "source": line.source}
        if beat.firing:
            what = (
                f"back after {format_duration(silent_for)} of silence"
                if beat.last_at is not None
                else f"first seen {format_duration(silent_for)} after {utc_text(base_at)}"
            ) + f" (expected every {self._every_text})"
            text = resolved(self.rule, beat.labels, what)
            out.append(
                self._signal(
                    key,
                    beat,
                    "resolve",
                    when.at,
                    text["summary"],
                    description="",
                    line=line,
                    happened=text["happened"],
                )
            )
        elif deadline < when.earliest:
            # The deadline passed before this line was written, but the agent only learns of it
            # now (catching up, or a stalled loop): the silence is over, tell it once.
            note = downtime_note(self._down, base_at, when.at)
            default = (
                f"{self.rule.name}{self._who(beat)}: was silent for {format_duration(silent_for)}"
                f" (from {utc_text(base_at)} to {utc_text(when.at)}); back now"
            )
            ctx = self._ctx(beat, silent_for, {**extra, "agent_down": bool(note)})
            summary, description = summarize(self.rule, default, ctx)
            out.append(
                self._signal(
                    key, beat, "info", when.at, summary, description=description or note, line=line
                )
            )
        if beat.last_at is None or when.at > beat.last_at:
            beat.last_at = when.at
        beat.firing = False
        self._schedule(key, beat)
        return out

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return []

    def next_deadline(self) -> datetime | None:
        return self._heap.next_at()

    def due(self, now: datetime) -> list[Signal]:
        out: list[Signal] = []
        for key in self._heap.pop_due(now):
            beat = self._beats[key]
            base_at = beat.last_at or beat.since_at
            silent_for = now - base_at
            note = downtime_note(self._down, base_at, now)
            if beat.last_at is None:
                default = (
                    f"{self.rule.name}{self._who(beat)}: never seen since "
                    f"{utc_text(beat.since_at)} ({format_duration(silent_for)})"
                )
            else:
                default = (
                    f"{self.rule.name}{self._who(beat)}: no match for "
                    f"{format_duration(silent_for)} (last {utc_text(beat.last_at)})"
                )
            if note:
                default += "; the agent was down for part of it"
            ctx = self._ctx(beat, silent_for, {"agent_down": bool(note)})
            summary, description = summarize(self.rule, default, ctx)
            beat.firing = True
            self._touch(key)
            out.append(
                self._signal(
                    key, beat, "fire", now, summary, description=description or note, line=None
                )
            )
        return out

    def _signal(
        self,
        key: str,
        beat: _Beat,
        action: Literal["fire", "resolve", "info"],
        at: datetime,
        summary: str,
        *,
        description: str,
        line: Line | None,
        happened: str = "",
    ) -> Signal:
        base_at = beat.last_at or beat.since_at
        return Signal(
            rule=self.rule.name,
            kind="silence",
            key=key if action != "info" else f"{key}#late",
            action=action,
            at=at,
            labels=dict(beat.labels),
            summary=summary,
            description=description,
            happened=happened,
            sample=None if line is None else line.text,
            evidence={
                "last_seen_at": iso_or_none(beat.last_at),
                "since_at": iso_or_none(beat.since_at),
                "deadline_at": iso_or_none(base_at + self._period),
                "silent_for_s": (at - base_at).total_seconds(),
                "every_s": self.spec.every.total_seconds(),
                "grace_s": self.spec.grace.total_seconds(),
            },
            source=None if line is None else line.source,
        )

    def note_downtime(self, since: datetime, until: datetime) -> None:
        self._down = (since, until)

    def state_changes(self) -> dict[str, Any | None]:
        return self._rows.changes() | self.cap.changes()

    def load_state(self, items: Mapping[str, Any]) -> None:
        # a row malformed, or from another `by:`/`keys:`, is dropped (or rewritten)
        for key, beat in self._rows.load(self.cap.load(items), self._decode, drop_bad=True):
            self._beats[key] = beat
            self._schedule(key, beat)
        self.cap.restored(len(self._beats))

    def _decode(self, key: str, value: Any) -> _Beat | None:
        by = self.spec.by
        beat = self._restore(value, {by} if by is not None else set())
        return beat if beat is not None and self._applies(key, beat) else None

    def _applies(self, key: str, beat: _Beat) -> bool:
        by = self.spec.by
        if by is None:
            return key == ""
        value = beat.labels[by]
        if self.spec.keys and value not in self.spec.keys:
            return False
        return key == group_key((by,), {by: value})[0]

    @staticmethod
    def _restore(value: Any, want_labels: set[str]) -> _Beat | None:
        if not isinstance(value, Mapping):
            return None
        since_at = at_or_none(value.get("since"))
        labels = value.get("labels")
        if since_at is None or not isinstance(labels, Mapping) or set(labels) != want_labels:
            return None
        beat = _Beat(since_at, {str(k): str(v) for k, v in labels.items()})
        beat.last_at = at_or_none(value.get("last"))
        beat.firing = value.get("firing") is True
        return beat


def _row(_key: str, beat: _Beat) -> dict[str, Any]:
    return {
        "last": iso_or_none(beat.last_at),
        "since": iso_or_none(beat.since_at),
        "firing": beat.firing,
        "labels": beat.labels,
    }
