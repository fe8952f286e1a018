"""Silences and the mute decision: whether an alert's notifications are held back right now.

Sits beside the alert book (``alerts.py`` asks :meth:`Muter.mute` before it queues a notification)
and below the pipeline, which keeps the Muter's silences (the ``silences`` table, written by
``detector silence``, polled by the agent) and maintenance windows (rules.yaml) up to date. A
silence matches an alert by Alertmanager-style matchers on the alert's labels (``=``, ``!=``,
``=~``, ``!~``; regexes are anchored at both ends): the rule's own ``labels:``, the ``group_by``
keys and captured fields, and ``rule``, ``severity``, ``kind``, ``host`` and ``source``. Agent
alerts (rule ``detector-agent``) are matched only by a silence with the explicit matcher
``rule=detector-agent`` and are never muted by maintenance. A muted alert is still recorded; the
alert book owes it the notification and sends it once the mute lifts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from detector.frozen import Frozen
from detector.maintenance import Maintenance
from detector.timefmt import iso_or_none, parse_iso_or_none

AGENT_RULE_NAME = "detector-agent"
"""``problems.AGENT_RULE`` (not imported: this module sits below ``problems``)."""
OPS = ("=~", "!~", "!=", "=")
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


class MatcherError(ValueError):
    pass


class LabelMatcher(Frozen):
    """One matcher of a silence: ``name op value``."""

    name: str
    op: str  # = != =~ !~
    value: str

    @staticmethod
    def parse(text: str) -> LabelMatcher:
        m = _MATCHER.match(text)
        if m is None:
            raise MatcherError(
                f"{text!r} is not a matcher — write label=value, label!=value, label=~regex or "
                "label!~regex (e.g. severity=critical, host=~'web-.*')"
            )
        name, op, value = m.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as e:
                raise MatcherError(f"{text!r}: bad regex {value!r}: {e}") from None
        return LabelMatcher(name, op, value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.name, "")  # a missing label is the empty string (Alertmanager)
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = re.fullmatch(self.value, got) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


class Silence(Frozen):
    """A silence: alerts its matchers all match are recorded but not notified."""

    id: str
    matchers: tuple[LabelMatcher, ...]
    starts_at: datetime
    ends_at: datetime
    comment: str
    author: str
    created_at: datetime
    expired_at: datetime | None = None  # set by `detector silence expire`

    @property
    def until(self) -> datetime:
        return min(self.ends_at, self.expired_at) if self.expired_at else self.ends_at

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.until

    def matches(self, rule: str, labels: Mapping[str, str]) -> bool:
        if rule == AGENT_RULE_NAME and not any(
            m.name == "rule" and m.op == "=" and m.value == AGENT_RULE_NAME for m in self.matchers
        ):
            return False
        merged = {**labels, "rule": rule}
        return all(m.matches(merged) for m in self.matchers)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": [str(m) for m in self.matchers],
            "starts_at": iso_or_none(self.starts_at),
            "ends_at": iso_or_none(self.ends_at),
            "expired_at": iso_or_none(self.expired_at),
            "comment": self.comment,
            "author": self.author,
            "created_at": iso_or_none(self.created_at),
        }

    @staticmethod
    def from_json(row: Mapping[str, Any]) -> Silence | None:
        """None for a row that cannot be read (written by a newer detector, or damaged)."""
        try:
            starts = parse_iso_or_none(row["starts_at"])
            ends = parse_iso_or_none(row["ends_at"])
            created = parse_iso_or_none(row.get("created_at")) or starts
            if starts is None or ends is None or created is None:
                return None
            return Silence(
                id=str(row["id"]),
                matchers=tuple(LabelMatcher.parse(m) for m in row["matchers"]),
                starts_at=starts,
                ends_at=ends,
                comment=str(row.get("comment") or ""),
                author=str(row.get("author") or ""),
                created_at=created,
                expired_at=parse_iso_or_none(row.get("expired_at")),
            )
        except (KeyError, TypeError, ValueError):
            return None


class Muter:
    """The mute decision over the current silences and the config's maintenance windows."""

    def __init__(self, maintenance: Maintenance | None = None) -> None:
        self.maintenance = maintenance or Maintenance(())
        self.silences: tuple[Silence, ...] = ()

    def set_silences(self, silences: Iterable[Silence]) -> None:
        self.silences = tuple(silences)

    def mute(self, rule: str, labels: Mapping[str, str], now: datetime) -> dict[str, Any] | None:
        """Why an alert of ``rule`` with ``labels`` is not to be notified at ``now`` (a JSON-able
        record: ``by``, ``until``, ``comment``; the silence ending last wins), or None."""
        best: dict[str, Any] | None = None
        best_until: datetime | None = None
        for s in self.silences:
            later = best_until is None or s.until > best_until
            if later and s.active(now) and s.matches(rule, labels):
                best_until = s.until
                best = {"by": f"silence {s.id}", "until": iso_or_none(s.until)}
                best |= {"comment": s.comment, "author": s.author}
        if rule != AGENT_RULE_NAME and self.maintenance:
            found = self.maintenance.active(rule, now)
            if found is not None:
                (_start, end), index = found
                if best_until is None or end > best_until:
                    m = self.maintenance.entries[index]
                    best = {"by": f"maintenance #{index + 1}", "until": iso_or_none(end)}
                    best |= {"comment": m.comment or m.describe()}
        return best

    def next_change(self, now: datetime) -> datetime | None:
        """The next instant a mute may begin or end (a silence starting or ending, a maintenance
        window opening or closing): the alert book looks again then."""
        edges = [e for s in self.silences for e in (s.starts_at, s.until) if e > now]
        if self.maintenance:
            m = self.maintenance.next_change(now)
            if m is not None:
                edges.append(m)
        return min(edges, default=None)
