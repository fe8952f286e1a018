"""Timestamps read from log lines, for ``detector test`` (a replay runs on the lines' own time),
and the time of a journal entry (:func:`realtime_at`, which the journald source gives its lines).

``TimeParser.parse(text)`` finds the stamp of one line: ISO 8601 (``2026-11-25T10:00:00.123Z``,
``2026-11-25 10:00:00,250``, with or without an offset), syslog (``Nov 25 10:00:00``, no year: the
parser's ``year``), nginx/Apache access logs (``[25/Nov/2026:10:00:00 +0000]``), nginx error logs
(``2026/11/25 10:00:00``), or, given ``time_format``, ``strptime`` at the start of the line. A
stamp without an offset is UTC.

The shape of the line's start picks the format, so a log that mixes formats (a syslog stream with
nginx and postgres lines) pays for no failed attempts; the stamp text found is then looked up in a
cache, so a stamp seen before costs no ``datetime`` construction. The replay parses only lines a
rule hits, but on a busy log that is most of them, hence the care.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_MONTHS_TEXT = {name: str(number) for name, number in _MONTHS.items()}
_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?\s?(Z|[+-]\d\d:?\d\d)?"
)
_SYSLOG = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)")
_CLF = re.compile(r"\[(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-]\d{4})\]")
_SLASHED = re.compile(r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCAN = 64
"""How far into a line a stamp is looked for when the line does not start with one."""
_CACHE_MAX = 4096
"""Entries per cache: minutes and whole stamps of a replay come in order, so old ones are
simply dropped when a cache is full."""


@lru_cache(maxsize=64)
def _tz(text: str | None) -> tzinfo:
    if not text or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4])))


@lru_cache(maxsize=64)
def _seconds(digits: str) -> timedelta | None:
    """``"07"`` → 7 s; None past 59 (``datetime`` knows no leap second either)."""
    n = int(digits)
    return timedelta(seconds=n) if n < 60 else None


@lru_cache(maxsize=4096)
def _fraction(digits: str) -> timedelta:
    """``"123"`` (of ``10:00:00.123``) → 123 ms; nanoseconds are cut to microseconds."""
    return timedelta(microseconds=int(digits[:6].ljust(6, "0")))


def realtime_at(value: object) -> datetime | None:
    """The time of a journal entry: its ``__REALTIME_TIMESTAMP`` (microseconds since the epoch,
    as journalctl's JSON gives it: a string of digits, or an int once stored), aware UTC; None if
    ``value`` is not one. The one definition of a journald line's time (``Line.event_at``)."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            return None
        value = int(value)
    if type(value) is not int:
        return None
    return _EPOCH + timedelta(microseconds=value)


class TimeParser:
    """Finds the timestamp of a line (module docstring); None if it has none."""

    def __init__(self, time_format: str | None, year: int) -> None:
        self.year = year
        self._year = str(year)
        self.fixed = time_format
        self._stamps: dict[str, datetime] = {}
        """Whole stamp texts (syslog, access log, slashed) → their time: no regex at all."""
        self._minutes: dict[tuple[str, str, str, str, str, str], datetime] = {}
        """(year, month, day, hour, minute, offset) → that minute: one datetime a minute."""

    def parse(self, text: str) -> datetime | None:
        if self.fixed is not None:
            return self._strptime(text)
        first = text[:1]
        at: datetime | None = None
        if first.isdigit():
            if text[4:5] == "-":
                at = self._iso(_ISO.match(text))
            elif text[4:5] == "/":
                at = self._slashed(text)
            else:
                at = self._clf(text)
        elif first.isupper():
            at = self._syslog(text)
        elif first == "[":
            at = self._clf(text)
        if at is not None:
            return at
        # no stamp at the start: an ISO or access-log stamp after a prefix (host, level…)
        return self._iso(_ISO.search(text, 0, _SCAN)) or self._clf(text)

    def _minute(self, key: tuple[str, str, str, str, str, str], s: str) -> datetime | None:
        """The time of ``key`` = (year, month, day, hour, minute, offset) plus ``s`` seconds."""
        at = self._minutes.get(key)
        if at is None:
            y, mo, d, h, mi, tz = key
            try:
                at = datetime(int(y), int(mo), int(d), int(h), int(mi), tzinfo=_tz(tz))
            except ValueError:
                return None
            if len(self._minutes) >= _CACHE_MAX:
                self._minutes.clear()
            self._minutes[key] = at
        sec = _seconds(s)
        return None if sec is None else at + sec

    def _remember(self, stamp: str, at: datetime | None) -> datetime | None:
        if at is not None:
            if len(self._stamps) >= _CACHE_MAX:
                self._stamps.clear()
            self._stamps[stamp] = at
        return at

    def _iso(self, m: re.Match[str] | None) -> datetime | None:
        if m is None:
            return None
        y, mo, d, h, mi, s, frac, tz = m.groups()
        at = self._minute((y, mo, d, h, mi, tz or ""), s)
        return at + _fraction(frac) if frac and at is not None else at

    def _syslog(self, text: str) -> datetime | None:
        if text[15:16] == " ":  # "Nov 25 10:00:00 ": a stamp of the usual width, maybe known
            at = self._stamps.get(text[:15])
            if at is not None:
                return at
        m = _SYSLOG.match(text)
        if m is None or m.group(1) not in _MONTHS_TEXT:
            return None
        mon, day, h, mi, s = m.groups()
        return self._remember(
            m.group(0), self._minute((self._year, _MONTHS_TEXT[mon], day, h, mi, ""), s)
        )

    def _clf(self, text: str) -> datetime | None:
        start = text.find("[", 0, _SCAN)
        if start < 0:
            return None
        at = self._stamps.get(text[start : start + 28])  # "[25/Nov/2026:10:00:00 +0000]"
        if at is not None:
            return at
        m = _CLF.match(text, start) or _CLF.search(text, start + 1)
        if m is None or m.group(2) not in _MONTHS_TEXT:
            return None
        d, mon, y, h, mi, s, tz = m.groups()
        return self._remember(m.group(0), self._minute((y, _MONTHS_TEXT[mon], d, h, mi, tz), s))

    def _slashed(self, text: str) -> datetime | None:
        at = self._stamps.get(text[:19])
        if at is not None:
            return at
        m = _SLASHED.match(text)
        if m is None:
            return None
        y, mo, d, h, mi, s = m.groups()
        return self._remember(m.group(0), self._minute((y, mo, d, h, mi, ""), s))

    def _strptime(self, text: str) -> datetime | None:
        assert self.fixed is not None
        for cut in range(min(len(text), 64), 5, -1):
            try:
                at = datetime.strptime(text[:cut], self.fixed)  # noqa: DTZ007 - tz set below
            except ValueError:
                continue
            return at if at.tzinfo else at.replace(tzinfo=UTC)
        return None
