"""Timestamps and durations as text: the one place the agent writes and reads them.

A bottom-layer module (it imports nothing from ``detector``): rule evaluators use it for their
stored state and evidence, the alert book and the webhook formats for payload times, ``detector
status`` for its table. Times are aware datetimes written as ISO 8601 in UTC (``iso``); stored or
received text comes back through ``parse_iso`` (strict) or ``at_or_none`` (lenient, for state that
may be malformed). Durations are written one way everywhere, ``1h5m`` (``format_duration``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso(
    at: datetime, *, timespec: str = "auto", zulu: bool = False, keep_offset: bool = False
) -> str:
    """``at`` as ISO 8601, converted to UTC: ``2026-03-01T12:00:00+00:00``.

    ``timespec`` as for :meth:`datetime.isoformat` (alert payloads use ``"milliseconds"``);
    ``zulu`` writes UTC as ``Z``; ``keep_offset`` writes ``at`` in its own offset (a line's own
    timestamp as the line gave it).
    """
    if not keep_offset:
        at = at.astimezone(UTC)
    text = at.isoformat(timespec=timespec)
    return text.replace("+00:00", "Z") if zulu else text


def iso_or_none(
    at: datetime | None, *, timespec: str = "auto", zulu: bool = False, keep_offset: bool = False
) -> str | None:
    """:func:`iso`, or None for None."""
    if at is None:
        return None
    return iso(at, timespec=timespec, zulu=zulu, keep_offset=keep_offset)


def parse_iso(text: str) -> datetime:
    """An ISO 8601 timestamp (``Z`` or an offset; without one it is UTC) as an aware datetime, in
    the offset it was written with. Raises ``ValueError`` if ``text`` is not one."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def parse_iso_or_none(value: object) -> datetime | None:
    """:func:`parse_iso` for a string; None for None, an empty string or any other value. A
    malformed string still raises ``ValueError``."""
    if not isinstance(value, str) or not value:
        return None
    return parse_iso(value)


def at_or_none(value: object) -> datetime | None:
    """A timestamp from stored state, as aware UTC; None if absent, malformed or without an
    offset (the agent always writes one)."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return at.astimezone(UTC)


def utc_text(at: datetime) -> str:
    """``at`` to the minute for people: ``2026-03-01 12:00 UTC``."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_duration(d: timedelta) -> str:
    """A duration for people, in whole seconds: ``timedelta(hours=1, minutes=5)`` → ``"1h5m"``,
    ``timedelta(seconds=90)`` → ``"1m30s"``, zero (or less) → ``"0s"``."""
    secs = int(d.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts) or "0s"
