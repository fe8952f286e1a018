"""``anomaly: new`` rules: one alert per kind of line never seen before (after learning).

Sits with the other evaluators between matching and the alert book. Without ``match:`` the rule
sees every line of its sources (``observe_line``), with it only the matching lines (``observe``).
:class:`NewKindEvaluator` mines templates online (``detector.templates``). During the learning
period (a duration, or ``learn_lines`` lines) templates are learned silently; afterwards a line
that starts a new template fires one alert (key = template id) showing the template and the first
example. Further lines of that template raise the alert's count until the template has been quiet
for ``resolve_after``, when the alert resolves ("new kind of line quiet for 15m after 4 lines:
<template>", the template's count). At most ``max_alerts_per_hour`` such alerts per hour; the rest
go into one digest (an ``info``) at the end of that hour. Every template is one state key
(``t:<id>``), so a batch rewrites only the templates it touched; ``detector templates`` lists them
(:func:`list_templates`) and marks them known (:func:`mark_known`).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from detector.matching import Hit
from detector.model import AnomalyNewSpec, RuleConfig
from detector.rules.base import Signal, When
from detector.rules.common import plural, resolved, summarize
from detector.rules.state import META_KEY, KeyCap, KeyedState
from detector.sources.base import Line
from detector.templates import Template, TemplateMiner
from detector.timefmt import format_duration, iso, iso_or_none, parse_iso_or_none

HOUR = timedelta(hours=1)
MAX_TEMPLATES = 5000  # per rule; beyond, the templates unseen for longest are forgotten
DIGEST_LIST = 20  # templates named in a digest's description
TEMPLATE_KEY = "t:"
KNOWN_KEY = "known:"
"""Marks written by ``detector templates --known``. The agent never writes these keys, so a mark
made while it runs cannot be overwritten by the agent's own update of the template row."""


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class TemplateInfo:
    """One learned template, as ``detector templates`` lists it."""

    id: str
    template: str
    count: int
    first_at: datetime | None
    last_at: datetime | None
    example: str
    known: bool
    learned: bool
    """Created during the learning period (never alerted)."""
    alerted: bool


def _template(tid: str, value: Any) -> Template | None:
    return Template.from_json(tid, value) if isinstance(value, Mapping) else None


def _template_row(_tid: str, t: Template) -> dict[str, Any]:
    return t.to_json()


def list_templates(items: Mapping[str, Any]) -> list[TemplateInfo]:
    """The templates in a rule's stored state (``rule_state`` rows of one rule), most frequent
    first."""
    out = []
    for _, t in KeyedState[Template]({}, _template_row, TEMPLATE_KEY).load(items, _template):
        out.append(
            TemplateInfo(
                id=t.id,
                template=t.text,
                count=t.count,
                first_at=t.first_at,
                last_at=t.last_at,
                example=t.example,
                known=t.known,
                learned=bool(t.extra.get("learned", False)),
                alerted=bool(t.extra.get("alerted", False)),
            )
        )
    out.sort(key=lambda i: (-i.count, i.id))
    return out


def mark_known(items: Mapping[str, Any], template_id: str, known: bool = True) -> dict[str, Any]:
    """The state change that marks a template as known (the CLI commits it into ``rule_state``).

    A known template never alerts and does not raise an open alert's count. The running agent
    reads it at its next start or reload. Raises ``KeyError`` for an unknown template id.
    """
    key = TEMPLATE_KEY + template_id
    value = items.get(key)
    if not isinstance(value, Mapping):
        raise KeyError(template_id)
    return {key: {**value, "known": known}, KNOWN_KEY + template_id: known}


@dataclass
class _Storm:
    """The current hour of new-template alerts: how many went out, which wait for the digest."""

    started_at: datetime | None = None
    sent: int = 0
    digest: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": iso_or_none(self.started_at, keep_offset=True),
            "sent": self.sent,
            "digest": self.digest,
        }

    @staticmethod
    def from_json(value: Any) -> _Storm:
        if not isinstance(value, Mapping):
            return _Storm()
        digest = value.get("digest")
        return _Storm(
            parse_iso_or_none(value.get("started_at")),
            int(value.get("sent", 0)),
            [str(d) for d in digest] if isinstance(digest, list) else None,
        )


class NewKindEvaluator:
    """``anomaly: new``: one alert per kind of line never seen before (after learning)."""

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        self.rule = rule
        self.spec: AnomalyNewSpec = rule.anomaly_new or AnomalyNewSpec()
        self.wants_all_lines = rule.match is None and not rule.fields
        self.miner = TemplateMiner(similarity=self.spec.similarity, masks=self.spec.masks)
        self.started_at = now
        self.lines = 0
        self.learning = self.spec.learn_lines is not None or self.spec.learn is not None
        self.storm = _Storm()
        self._open: dict[str, datetime] = {}  # template id -> resolve at (quiet until)
        self._heap: list[tuple[datetime, str]] = []  # (resolve at, id); stale entries skipped
        self._rows = KeyedState(self.miner.templates, _template_row, TEMPLATE_KEY)
        self._touch = self._rows.touch
        self._meta_dirty = True
        self.cap = KeyCap(rule, min(rule.max_keys, MAX_TEMPLATES // 2))
        """Open new-kind alerts: ``max_keys``, at most half of ``MAX_TEMPLATES`` (so that
        forgetting templates always finds closed ones); past it a new kind is counted in the
        rule's digest alert, which resolves once fewer are open."""

    # ------------------------------------------------------------------ lines

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role != "match":
            return []
        return self._line(line, when)

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return self._line(line, when)

    def _still_learning(self, at: datetime) -> bool:
        if self.spec.learn_lines is not None:
            done = self.lines >= self.spec.learn_lines
        else:
            done = self.spec.learn is None or at >= self.started_at + self.spec.learn
        if done:
            self.learning = False
            self._meta_dirty = True
        return not done

    def _line(self, line: Line, when: When) -> list[Signal]:
        at = when.at
        learning = self.learning and self._still_learning(at)
        res = self.miner.add(line.text)
        t = res.template
        t.count += 1
        t.last_at = at
        self._touch(t.id)
        if learning:
            self.lines += 1
            self._meta_dirty = True
        if res.created:
            t.first_at = at
            t.example = line.text[:2000]
            if learning:
                t.extra["learned"] = True
            if len(self.miner.templates) > MAX_TEMPLATES:
                self._forget_oldest()
            if not learning and not t.known:
                return self._new_kind(t, line, at)
            return []
        if t.id in self._open and not t.known:
            return self._more(t, line, at)
        return []

    def _signal_ctx(self, t: Template, line: Line) -> dict[str, Any]:
        return {
            "template": t.text,
            "template_id": t.id,
            "line": line.text,
            "count": t.count,
            "source": line.source,
        }

    def _new_kind(self, t: Template, line: Line, at: datetime) -> list[Signal]:
        out = self._roll_storm(at)
        if self.storm.started_at is None:
            self.storm.started_at = at
        self._meta_dirty = True
        if self.storm.sent >= self.spec.max_alerts_per_hour:
            self.storm.digest = [*(self.storm.digest or []), t.id]
            t.extra["alerted"] = "digest"
            return out
        if len(self._open) >= self.cap.limit:
            t.extra["alerted"] = "digest"
            return out + self.cap.fold(t.id, at, "anomaly")
        self.storm.sent += 1
        t.extra["alerted"] = True
        self._keep_open(t, at)
        default = f"{self.rule.name}: new kind of line: {_short(t.text)}"
        summary, description = summarize(self.rule, default, self._signal_ctx(t, line))
        first_at = iso(at, keep_offset=True)
        out.append(
            Signal(
                rule=self.rule.name,
                kind="anomaly",
                key=t.id,
                action="fire",
                at=at,
                labels={"template_id": t.id},
                summary=summary,
                description=description
                or f"Template: {t.text}\nFirst example: {t.example}\nFirst seen: {first_at}",
                sample=t.example,
                count=1,
                evidence={
                    "template": t.text,
                    "template_id": t.id,
                    "first_at": iso(at, keep_offset=True),
                },
                source=line.source,
            )
        )
        return out

    def _more(self, t: Template, line: Line, at: datetime) -> list[Signal]:
        self._keep_open(t, at)
        return [
            Signal(
                rule=self.rule.name,
                kind="anomaly",
                key=t.id,
                action="fire",
                at=at,
                labels={"template_id": t.id},
                sample=line.text,
                count=1,
                evidence={"template": t.text},
                source=line.source,
            )
        ]

    def _keep_open(self, t: Template, at: datetime) -> None:
        until = at + self.rule.resolve_after
        self._open[t.id] = until
        t.extra["open_until"] = iso(until, keep_offset=True)
        heapq.heappush(self._heap, (until, t.id))

    def _forget_oldest(self) -> None:
        """Bound the state: drop the tenth of the templates unseen for longest (never open ones)."""
        far = datetime.max.replace(tzinfo=UTC)
        victims = sorted(
            (t for t in self.miner.templates.values() if t.id not in self._open),
            key=lambda t: t.last_at or far,
        )[: MAX_TEMPLATES // 10]
        for t in victims:
            self.miner.remove(t.id)
            self._touch(t.id)

    # ------------------------------------------------------------------ time

    def _roll_storm(self, now: datetime) -> list[Signal]:
        """End the storm hour if it is over, with the digest of what it held back."""
        s = self.storm
        if s.started_at is None or now < s.started_at + HOUR:
            return []
        end = s.started_at + HOUR
        held = [self.miner.templates[i] for i in s.digest or [] if i in self.miner.templates]
        self.storm = _Storm()
        self._meta_dirty = True
        if not held:
            return []
        lines = [f"- {t.id}: {_short(t.text)} (e.g. {_short(t.example, 200)})" for t in held]
        more = len(held) - DIGEST_LIST
        return [
            Signal(
                rule=self.rule.name,
                kind="anomaly",
                key=f"digest:{iso(end, keep_offset=True)}",
                action="info",
                at=end,
                summary=f"{self.rule.name}: {len(held)} more new kinds of lines in the last hour",
                description="\n".join(lines[:DIGEST_LIST])
                + (f"\n… and {more} more (see `detector templates`)" if more > 0 else ""),
                sample=held[0].example,
                count=len(held),
                evidence={"template_ids": [t.id for t in held]},
            )
        ]

    def held(self) -> list[Signal]:
        """The digest of the templates held back this hour, sent now rather than at the hour's
        end (``detector test`` reports them when its input ends)."""
        if self.storm.started_at is None or not self.storm.digest:
            return []
        return self._roll_storm(self.storm.started_at + HOUR)

    def next_deadline(self) -> datetime | None:
        while self._heap and self._open.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        candidates = [self._heap[0][0]] if self._heap else []
        if self.storm.started_at is not None and self.storm.digest:
            candidates.append(self.storm.started_at + HOUR)
        return min(candidates, default=None)

    def due(self, now: datetime) -> list[Signal]:
        out = self._roll_storm(now)
        while self._heap and self._heap[0][0] <= now:
            at, tid = heapq.heappop(self._heap)
            if self._open.get(tid) != at:
                continue  # kept open by a later line: a later entry stands for it
            del self._open[tid]
            t = self.miner.templates.get(tid)
            if t is None:
                continue
            t.extra.pop("open_until", None)
            self._touch(tid)
            out.append(
                Signal(
                    rule=self.rule.name,
                    kind="anomaly",
                    key=tid,
                    action="resolve",
                    at=at,
                    labels={"template_id": tid},
                    **resolved(
                        self.rule,
                        {},
                        f"new kind of line quiet for {format_duration(self.rule.resolve_after)} "
                        f"after {plural(t.count, 'line')}: {_short(t.text)}",
                    ),
                )
            )
            out += self.cap.release(len(self._open), now, "anomaly")
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        return None

    # ------------------------------------------------------------------ state

    def state_changes(self) -> dict[str, Any | None]:
        out = self._rows.changes() | self.cap.changes()
        if self._meta_dirty:
            out[META_KEY] = {
                "started_at": iso(self.started_at, keep_offset=True),
                "lines": self.lines,
                "learning": self.learning,
                "next_id": self.miner.next_id,
                "storm": self.storm.to_json(),
            }
            self._meta_dirty = False
        return out

    def load_state(self, items: Mapping[str, Any]) -> None:
        items = self.cap.load(items)
        meta = items.get(META_KEY)
        next_id = None
        if isinstance(meta, Mapping):
            self.started_at = parse_iso_or_none(meta.get("started_at")) or self.started_at
            self.lines = int(meta.get("lines", 0))
            self.learning = bool(meta.get("learning", self.learning))
            next_id = int(meta.get("next_id", 1))
            self.storm = _Storm.from_json(meta.get("storm"))
        # an unreadable row (older format) is left out: that kind of line will be learned afresh
        templates = [t for _, t in self._rows.load(items, _template)]
        for t in templates:
            mark = items.get(KNOWN_KEY + t.id)
            if isinstance(mark, bool):
                t.known = mark
        self.miner.load(templates, next_id)
        for t in templates:
            until = parse_iso_or_none(t.extra.get("open_until"))
            if until is not None and not t.known:
                self._open[t.id] = until
                heapq.heappush(self._heap, (until, t.id))
        self.cap.restored(len(self._open))
        self._meta_dirty = False
