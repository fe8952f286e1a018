"""The plain ``match:`` rule ("error"): every matching line raises (or updates) an alert.

Alerts are grouped by ``group_by`` fields (default: one alert per rule), deduplicated by the alert
book, and resolved once ``resolve_after`` has passed without a new match for that group ("quiet for
15m after 3 matches": the matches since the group's alert opened, kept in its state row; a row of
an earlier version has no count, and the summary then leaves it out). This is the hottest
evaluator (every hit of every error rule comes here), so it keeps plain datetimes in memory and
serialises only the keys a batch touched, in ``state_changes``.

Per open group it keeps its last match, its count and its resolve deadline, nothing more: a
group's labels are read back from its key (``ip=203.0.113.7``, fields joined by ``\x1f``), and
kept apart only for the rare key they cannot be read back from (a value holding ``\x1f``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from detector.matching import Hit
from detector.model import RuleConfig
from detector.rules.base import Signal, When
from detector.rules.common import KEY_SEP, group_key, hit_fields, plural, resolved, summarize
from detector.rules.state import KeyCap, KeyedState
from detector.schedule import KeyedDeadlines
from detector.sources.base import Line
from detector.timefmt import format_duration, iso, parse_iso


def is_plain(rule: RuleConfig) -> bool:
    """No grouping, no templates (``MatchEvaluator.plain``): the rule reads a hit's captured
    groups only for the labels of the Signal it builds (an alert opening) and, on a line with
    fields of its own, as fields; ``pipeline.hits_carry_groups`` spares the others their ``re``."""
    return not (rule.group_by or rule.summary or rule.description)


class MatchEvaluator:
    wants_all_lines = False

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        self.rule = rule
        self._last: dict[str, datetime] = {}
        self._names = tuple(dict.fromkeys(rule.group_by))
        """The grouping fields, as named in a key."""
        self._odd: dict[str, dict[str, str]] = {}
        """The labels of the keys whose labels are not their key's text split (``labels``)."""
        self._counts: dict[str, int | None] = {}
        """Matches since the key's alert opened, for the keys matched more than once (a key of
        ``_last`` not here has 1); None: unknown (a row of an earlier version)."""
        self._rows = KeyedState(self._last, self._row)
        self._touch = self._rows.touch
        self._deadlines = KeyedDeadlines(self._last.get)
        """The grouped keys by their last match (their deadline less ``resolve_after``): the
        queue keeps no entry per key of its own, ``_last`` says when each is due."""
        self._next: tuple[datetime | None, datetime | None] = (None, None)
        """The last ``(last, last + resolve_after)`` that ``next_deadline`` computed."""
        self.cap = KeyCap(rule)
        """``max_keys``: a new group past it is folded into the rule's digest alert."""
        self.plain = is_plain(rule)
        """No grouping, no templates: ``observe_plain`` takes the hits of lines without
        fields."""
        self.groups_of: Callable[[str], dict[str, str]] | None = None
        """Set by the pipeline when this rule's match hits come without their groups
        (``Matcher.deferred``): the groups of the matched line with this text
        (``Matcher.groups``), read where they are needed, not on every hit."""
        self._prefix = f"{rule.name}: "
        self.fire_open: Callable[[datetime, str, str], bool] | None = None
        """Set by the pipeline: ``AlertBook.fire_open_of`` this rule's one alert (key ''). A
        hit of ``observe_plain`` on an open alert updates it at once, with no Signal; the signals
        this rule returns are applied before anything else touches that alert, so none of its
        own is ever waiting when this is called (see ``fire_open_of``)."""
        self.deadline_delay = rule.resolve_after
        """An ``observe`` at ``when.at`` adds no deadline before ``when.at + deadline_delay``
        and moves none earlier: the pipeline need not ask ``next_deadline`` after a hit when its
        next deadline is already sooner than that."""

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role != "match":
            return []
        if self.plain and not line.fields:
            signal = self.observe_plain(when.at, line.text, hit.groups, line.source)
            return [] if signal is None else [signal]
        if self.groups_of is not None:  # a line with fields: the groups are fields too
            hit = Hit(hit.line, hit.rule, hit.role, self.groups_of(line.text))
        rule = self.rule
        if rule.group_by or rule.summary or rule.description or line.fields:
            fields = hit_fields(hit, line)
            key, group_labels = group_key(rule.group_by, fields)
            labels = {**hit.groups, **group_labels}
        else:
            fields, key, group_labels, labels = hit.groups, "", {}, hit.groups
        if rule.summary or rule.description:
            ctx = {**fields, "line": line.text, "source": line.source}
            summary, description = summarize(rule, "", ctx)
        else:
            summary, description = f"{rule.name}: {line.text[:200]}", ""
        previous = self._last.get(key)
        if previous is None and key and len(self._last) >= self.cap.limit:
            return self.cap.fold(key, when.at, "error")
        at = when.at if previous is None or when.at > previous else previous
        self._last[key] = at
        if key and at is not previous:
            self._deadlines.push(key, at, previous is not None)
        # else: the one key of a rule without group_by, whose deadline next_deadline() derives
        # from _last: no queue work per hit (a replay asks for the next deadline after each hit)
        if previous is None or self._odd:  # labels are kept apart only if the key garbles them
            if key.count(KEY_SEP) != len(self._names) - 1 and key:
                self._odd[key] = group_labels
            elif self._odd:
                self._odd.pop(key, None)
        if previous is not None:
            n = self._counts.get(key, 1)
            self._counts[key] = None if n is None else n + 1
        self._touch(key)
        return [
            Signal(
                rule=rule.name,
                kind="error",
                key=key,
                action="fire",
                at=when.at,
                labels=labels,
                summary=summary,
                description=description,
                sample=line.text,
                source=line.source,
            )
        ]

    def observe_plain(
        self, at: datetime, text: str, groups: Mapping[str, str], source: str
    ) -> Signal | None:
        """``observe`` of a match hit at ``at`` on a line ``text`` without fields, for a
        ``plain`` rule: the common case, kept cheap (the pipeline calls it directly). None: the
        hit went straight to the open alert (``fire_open``), no Signal to apply."""
        last = self._last
        previous = last.get("")
        if previous is None or at > previous:
            last[""] = at
        n = self._counts.get("", 0 if previous is None else 1)
        self._counts[""] = None if n is None else n + 1
        self._touch("")
        summary = self._prefix + text[:200]
        fire_open = self.fire_open
        if fire_open is not None and fire_open(at, summary, text):
            return None
        if self.groups_of is not None:  # the alert's labels (when it opens)
            groups = self.groups_of(text)
        return Signal(
            self.rule.name, "error", "", "fire", at, groups, summary, "", "", text, 1, {}, source
        )

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return []

    def next_deadline(self) -> datetime | None:
        grouped = self._deadlines.next_at()
        if grouped is not None:
            base, deadline = self._next
            if grouped is not base:
                deadline = grouped + self.rule.resolve_after
                self._next = (grouped, deadline)
            grouped = deadline
        last = self._last.get("")
        if last is None:
            return grouped
        single = last + self.rule.resolve_after
        return single if grouped is None or single < grouped else grouped

    def due(self, now: datetime) -> list[Signal]:
        out: list[Signal] = []
        quiet = format_duration(self.rule.resolve_after)
        due = self._deadlines.pop_due(now - self.rule.resolve_after)
        last = self._last.get("")
        if last is not None and last + self.rule.resolve_after <= now:
            due.append("")
        for key in due:
            at = self._last.pop(key) + self.rule.resolve_after
            labels = self.labels(key)
            self._odd.pop(key, None)
            n = self._counts.pop(key, 1)
            self._touch(key)
            what = f"quiet for {quiet}" + ("" if n is None else f" after {plural(n, 'match')}")
            out.append(
                Signal(
                    rule=self.rule.name,
                    kind="error",
                    key=key,
                    action="resolve",
                    at=at,
                    **resolved(self.rule, labels, what),
                )
            )
        if due:
            out += self.cap.release(len(self._last), now, "error")
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        return None

    def state_changes(self) -> dict[str, Any | None]:
        return self._rows.changes() | self.cap.changes()

    def _row(self, key: str, last: datetime) -> dict[str, Any]:
        row: dict[str, Any] = {
            "last": iso(last, keep_offset=True),
            "labels": self.labels(key),
        }
        n = self._counts.get(key, 1)
        if n is not None:
            row["count"] = n
        return row

    def labels(self, key: str) -> dict[str, str]:
        """The labels of an open group: its key's text split, unless kept apart."""
        odd = self._odd.get(key)
        return self._split(key) if odd is None else odd

    def _note_labels(self, key: str, labels: Mapping[str, str]) -> None:
        """Keep ``labels`` apart if ``labels(key)`` would not give them back."""
        if key.count(KEY_SEP) == len(self._names) - 1 and (
            len(labels) == len(self._names) and self._split(key) == labels
        ):
            self._odd.pop(key, None)
        elif key or labels:
            self._odd[key] = dict(labels)

    def _split(self, key: str) -> dict[str, str]:
        """A key's labels as its text says (``group_key`` inverted)."""
        if not key:
            return {}
        parts = key.split(KEY_SEP)  # as many as names, for every key not kept apart
        return {n: part[len(n) + 1 :] for n, part in zip(self._names, parts, strict=False)}

    def load_state(self, items: Mapping[str, Any]) -> None:
        # a row written by another version of the rule is left out: that group starts afresh
        times: dict[str, datetime] = {}
        """Rows of one read share their time: one datetime for all."""

        def decode(_key: str, value: Any) -> tuple[datetime, Any]:
            text = value["last"]
            last = times.get(text)
            if last is None:
                last = times[text] = parse_iso(text)
            return last, value

        for key, (last, value) in self._rows.load(self.cap.load(items), decode):
            self._last[key] = last
            labels = value.get("labels", {})
            self._note_labels(key, labels if isinstance(labels, Mapping) else {})
            n = value.get("count")
            if not (isinstance(n, int) and n > 0):
                self._counts[key] = None
            elif n != 1:
                self._counts[key] = n
            if key:
                self._deadlines.push(key, last, False)
        self.cap.restored(len(self._last))
