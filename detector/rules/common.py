"""Small pieces every evaluator uses: the fields a hit exposes, grouping keys, summaries and the
note about the agent's downtime in messages (times and durations are written by
``detector.timefmt``, state rows kept by ``rules.state``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypedDict

from detector.matching import Hit
from detector.model import RuleConfig
from detector.sources.base import Line
from detector.templating import render
from detector.timefmt import format_duration, utc_text

Hold = Callable[[datetime, datetime], tuple[datetime, datetime] | None]
"""A rule's maintenance windows (``maintenance.Maintenance.overlapping`` bound to the rule): the
first window overlapping ``[a, b]`` as ``(start, end)``, or None. Set by the pipeline through an
expectation rule's ``set_maintenance``."""


def held_deadline(hold: Hold | None, base: datetime, period: timedelta) -> datetime:
    """``base + period``, except that a maintenance window overlapping that span restarts the
    clock at its end (so nothing fires inside it, nor falsely right after it)."""
    deadline = base + period
    if hold is None:
        return deadline
    for _ in range(100):  # back-to-back windows: a few rounds at most
        span = hold(base, deadline)
        if span is None or span[1] <= base:
            break
        base = span[1]
        deadline = base + period
    return deadline


def hit_fields(hit: Hit | None, line: Line) -> dict[str, str]:
    """A line's structured fields (journald) overlaid with the hit's captured groups."""
    fields: dict[str, str] = dict(line.fields) if line.fields else {}
    if hit is not None:
        fields.update(hit.groups)
    return fields


KEY_SEP = "\x1f"
"""Between the ``name=value`` fields of an alert key."""


def group_key(names: Iterable[str], fields: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The alert key for the grouping fields ``names`` and the labels that name it."""
    if not names:
        return "", {}
    labels = {n: fields.get(n, "") for n in names}
    return KEY_SEP.join(f"{k}={v}" for k, v in labels.items()), labels


def summarize(
    rule: RuleConfig, default: str, fields: Mapping[str, Any], now: datetime | None = None
) -> tuple[str, str]:
    """(summary, description) from the rule's templates, or ``default``."""
    ctx = {"rule": rule.name, **fields}
    summary = render(rule.summary, ctx) if rule.summary else default
    description = render(rule.description, ctx) if rule.description else ""
    return summary, description


def key_text(labels: Mapping[str, str]) -> str:
    """The grouping key as it opens a resolved summary: ``" ip=203.0.113.7"`` ('' for none)."""
    return "".join(f" {k}={v}" for k, v in labels.items())


class ResolvedText(TypedDict):
    summary: str
    happened: str


def resolved(rule: RuleConfig, labels: Mapping[str, str], happened: str) -> ResolvedText:
    """The ``summary`` and ``happened`` of a resolve signal (keyword arguments for ``Signal``):
    ``"<rule> <key>: <what happened>"``, e.g. ``"ssh-bruteforce ip=203.0.113.7: back below 5 in
    1m (peak 23)"``. A rule's own ``summary:`` template is not rendered here: the alert book
    appends ``happened`` to the alert's summary (see ``alerts.AlertBook``)."""
    return ResolvedText(summary=f"{rule.name}{key_text(labels)}: {happened}", happened=happened)


def plural(n: int, word: str) -> str:
    """``1 match``, ``3 matches``, ``2 lines``."""
    if n == 1:
        return f"1 {word}"
    return f"{n} {word}es" if word.endswith(("ch", "sh", "s", "x")) else f"{n} {word}s"


def downtime_note(
    down: tuple[datetime, datetime] | None, start_at: datetime, end_at: datetime
) -> str:
    """A sentence about the agent's downtime if it overlaps ``[start_at, end_at]``, else ''."""
    if down is None:
        return ""
    since, until = down
    if since > end_at or until < start_at:
        return ""
    return (
        f"The agent was down from {utc_text(since)} to {utc_text(until)} "
        f"({format_duration(until - since)}), during part of this period; "
        "the log read since shows no match."
    )
