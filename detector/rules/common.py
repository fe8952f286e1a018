"""Small pieces every evaluator uses: the fields a hit exposes, grouping keys, summaries, and the
timestamps and downtime notes of stored state and messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from detector.matching import Hit
from detector.model import RuleConfig
from detector.sources.base import Line
from detector.templating import render


def hit_fields(hit: Hit | None, line: Line) -> dict[str, str]:
    """A line's structured fields (journald) overlaid with the hit's captured groups."""
    fields: dict[str, str] = dict(line.fields) if line.fields else {}
    if hit is not None:
        fields.update(hit.groups)
    return fields


def group_key(names: Iterable[str], fields: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The alert key for the grouping fields ``names`` and the labels that name it."""
    if not names:
        return "", {}
    labels = {n: fields.get(n, "") for n in names}
    return "\x1f".join(f"{k}={v}" for k, v in labels.items()), labels


def summarize(
    rule: RuleConfig, default: str, fields: Mapping[str, Any], now: datetime | None = None
) -> tuple[str, str]:
    """(summary, description) from the rule's templates, or ``default``."""
    ctx = {"rule": rule.name, **fields}
    summary = render(rule.summary, ctx) if rule.summary else default
    description = render(rule.description, ctx) if rule.description else ""
    return summary, description


def human_duration(d: timedelta) -> str:
    """``timedelta(hours=1, minutes=5)`` → ``"1h5m"``."""
    secs = int(d.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts) or "0s"


def utc_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def parse_at(value: Any) -> datetime | None:
    """An ISO timestamp from stored state, as aware UTC; None if absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return at.astimezone(UTC)


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


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
        f"({human_duration(until - since)}), during part of this period; "
        "the log read since shows no match."
    )
