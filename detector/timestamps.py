"""Timestamps read from log lines, for ``detector test`` (a replay runs on the lines' own time),
and the time of a journal entry (:func:`realtime_at`, which the journald source gives its lines).
The live agent never reads a line's text for its time: it uses arrival (or journald's own stamp).

``TimeParser.parse(text)`` finds the stamp of one line: ISO 8601 / RFC 3339
(``2026-11-25T10:00:00.123Z``, ``2026-11-25 10:00:00,250``, with or without an offset), RFC 5424
(``<165>1 2026-11-25T10:00:00Z …``), BSD syslog (``Nov 25 10:00:00``, optionally after ``<PRI>``;
no year: see below), nginx/Apache access logs (``[25/Nov/2026:10:00:00 +0000]``), Apache error
logs (``[Wed Nov 25 10:00:00.123 2026]``), nginx error logs (``2026/11/25 10:00:00``),
``yy/mm/dd HH:MM:SS`` (Spark, Hadoop), ``2026-11-25-10.00.00.123`` (DB2, BlueGene), epoch seconds
or milliseconds at the start of the line (or after one short first field: ``- 1131566461 …``); or,
given ``time_format``, ``strptime`` at the start of the line; given ``time_regex``, the regex's
``time`` group (or first group) is the stamp, read with ``time_format`` or as above. A stamp
without an offset is in the parser's ``zone`` (a source's ``timezone:``) and is returned in UTC.

A syslog stamp has no year. The parser starts at its ``year`` (:func:`syslog_start_year`: from the
file's mtime, rolled back by the New Years the file spans) and moves to the next year when a
stamp is more than 30 days before the latest one seen; a stamp more than 335 days after it is an
out-of-order line of the year before. So year inference is monotone, and a line is never placed
after the file's mtime.

The shape of the line's start picks the format, so a log that mixes formats (a syslog stream with
nginx and postgres lines) pays for no failed attempts; the stamp text found is then looked up in a
cache, so a stamp seen before costs no ``datetime`` construction. The replay parses only lines a
rule hits, but on a busy log that is most of them, hence the care.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
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
_ISO_TAIL = re.compile(r"(?:[.,](\d{1,9}))?\s?(Z|[+-]\d\d:?\d\d)?")
"""What ``_ISO`` reads after its fixed-width ``yyyy-mm-ddTHH:MM:SS`` (a fraction, an offset)."""
_MAYBE_STAMP = re.compile(r"\d\d(?:[:.]\d\d|\d{8})")
"""Found in every stamp the search after a prefix can read (ISO, access log, ctime: ``HH:MM``;
dashed: ``HH.MM``; epoch: ten digits): a line without it has no stamp, and no attempt is made."""
_SYSLOG = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)")
_CLF = re.compile(r"\[(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-]\d{4})\]")
_SLASHED = re.compile(r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)")
_SHORT = re.compile(r"(\d\d)/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)")
_DASHED = re.compile(r"(\d{4})-(\d\d)-(\d\d)-(\d\d)\.(\d\d)\.(\d\d)(?:\.(\d{1,9}))?")
_CTIME = re.compile(
    r"\[?(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) +(\d{1,2}) "
    r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? (\d{4})"
)
_EPOCH_RE = re.compile(r"(?:\S{1,16} )?(\d{10}|\d{13})(?:\.(\d{1,9}))?(?![\d.:/-])")
_EPOCH_MIN, _EPOCH_MAX = 946684800, 4102444800
"""Epoch stamps are believed between 2000 and 2100 (a 10-digit number outside is something else)."""
_NEW_YEAR = timedelta(days=30)
"""A syslog stamp this far before the latest one seen is in the next year."""
_LAST_YEAR = timedelta(days=335)
"""A syslog stamp this far after the latest one seen is a late line of the year before."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCAN = 64
"""How far into a line a stamp is looked for when the line does not start with one (the stamp
may end 40 characters later)."""
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


_SECS = {f"{n:02d}": timedelta(seconds=n) for n in range(60)}
"""Two ASCII digits of a stamp's seconds → that many seconds (no leap second: see below)."""


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


def host_zone() -> tzinfo:
    """The host's time zone (``$TZ``, else ``/etc/localtime``), with its DST rules; UTC if none
    can be found. The default ``timezone:`` of a source's stamps without an offset."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415 - a source's stamps only

    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return UTC


def zone_named(name: str | None) -> tzinfo:
    """A source's ``timezone:`` (an IANA name, ``UTC`` or ``local``; None: the host's zone)."""
    if name is None or name == "local":
        return host_zone()
    if name.upper() == "UTC":
        return UTC
    from zoneinfo import ZoneInfo  # noqa: PLC0415

    return ZoneInfo(name)


class TimeParser:
    """Finds the timestamp of a line (module docstring); None if it has none."""

    def __init__(
        self,
        time_format: str | None = None,
        year: int | None = None,
        *,
        zone: tzinfo = UTC,
        time_regex: str | None = None,
        rolling: bool = False,
    ) -> None:
        self.year = year if year is not None else datetime.now(UTC).year
        self._year = str(self.year)
        self.fixed = time_format
        self.zone = zone
        self._utc_out = zone is not UTC
        """Offset-less stamps are built in ``zone`` and converted to UTC (a DST zone compares and
        adds by wall clock when both sides share it)."""
        self.regex = re.compile(time_regex) if time_regex is not None else None
        self.group: int | str = (
            "time" if self.regex is not None and "time" in self.regex.groupindex else 1
        )
        self.rolling = rolling
        """Year inference for syslog stamps (module docstring); else every one is in ``year``."""
        self._latest: datetime | None = None
        """The latest syslog stamp seen (year inference)."""
        self._stamps: dict[str, datetime] = {}
        """Whole stamp texts (syslog, access log, slashed) → their time: no regex at all."""
        self._minutes: dict[tuple[str, str, str, str, str, str], datetime] = {}
        """(year, month, day, hour, minute, offset) → that minute: one datetime a minute."""
        self._prefixes: dict[str, datetime] = {}
        """A stamp's text without its seconds (``"Nov 25 10:00:"``; ``"[25/Nov/2026:10:00:"``
        and its offset) → that minute, for stamps that parsed before: a new second of a known
        minute costs a slice and two lookups, no regex. Cleared with ``_stamps``."""
        self._dated: dict[str, datetime] = {}
        """The same for stamps with a year at the line start: ``"2026-11-25T10:00:"`` plus a
        NUL and the offset text (ISO 8601), ``"2026/11/25 10:00:"`` (slashed) → that minute."""

    def parse(self, text: str) -> datetime | None:
        if self.regex is not None:
            m = self.regex.search(text)
            if m is None or m.group(self.group) is None:
                return None
            text = m.group(self.group)
        if self.fixed is not None:
            return self._strptime(text)
        at: datetime | None = self._stamps.get(text[:15])  # a syslog stamp seen before: as
        # _syslog returns it, without the dispatch below (most lines of most logs)
        if at is not None and text[15:16] == " " and text[:1].isupper():
            return at
        first = text[:1]
        at = None
        if first.isdigit():
            c4 = text[4:5]
            if c4 == "-":
                at = self._iso_start(text) or self._dashed(_DASHED.match(text))
            elif c4 == "/":
                at = self._slashed(text)
            elif text[2:3] == "/":
                at = self._short(text)
            else:
                at = self._clf(text) or self._epoch(text)
        elif first.isupper():
            at = self._syslog(text) or self._ctime(_CTIME.match(text))
        elif first == "[":
            at = self._clf(text) or self._ctime(_CTIME.match(text))
        elif first == "<":
            return self._pri(text)
        if at is not None:
            return at
        # no stamp at the start: a stamp after a prefix (host, level…)
        if _MAYBE_STAMP.search(text) is None:  # none of them can match: no attempt
            return None
        return (
            self._iso(_ISO.search(text, 0, _SCAN + 40))
            or self._dashed(_DASHED.search(text, 0, _SCAN + 40))
            or self._clf(text)
            or self._ctime(_CTIME.search(text, 0, _SCAN))
            or self._epoch(text)
        )

    def _pri(self, text: str) -> datetime | None:
        """``<PRI>`` then an RFC 5424 (``1 `` and ISO) or BSD syslog stamp."""
        end = text.find(">", 1, 5)
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest[:2] == "1 ":
            rest = rest[2:]
        if rest[:1].isdigit() or rest[:1].isupper():
            return self.parse(rest) if self.regex is None else None
        return None

    def _minute(self, key: tuple[str, str, str, str, str, str], s: str) -> datetime | None:
        """The time of ``key`` = (year, month, day, hour, minute, offset) plus ``s`` seconds."""
        at = self._minutes.get(key)
        if at is None:
            y, mo, d, h, mi, tz = key
            try:
                if tz:
                    at = datetime(int(y), int(mo), int(d), int(h), int(mi), tzinfo=_tz(tz))
                else:
                    at = datetime(int(y), int(mo), int(d), int(h), int(mi), tzinfo=self.zone)
                    if self._utc_out:
                        at = at.astimezone(UTC)
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

    def _iso_start(self, text: str) -> datetime | None:
        """``_iso(_ISO.match(text))``, without the regex for a new second of a known minute."""
        sec = _SECS.get(text[17:19])
        if sec is not None:
            tail = _ISO_TAIL.match(text, 19)
            assert tail is not None  # it matches the empty string
            frac, tz = tail.groups()
            minute = self._dated.get(text[:17] + "\0" + tz if tz else text[:17])
            if minute is not None:
                return minute + sec + _fraction(frac) if frac else minute + sec
        m = _ISO.match(text)
        if m is None:
            return None
        y, mo, d, h, mi, s, frac, tz = m.groups()
        key = (y, mo, d, h, mi, tz or "")
        at = self._minute(key, s)
        if at is not None and sec is not None:
            self._date(text[:17] + "\0" + tz if tz else text[:17], self._minutes[key])
        return at + _fraction(frac) if frac and at is not None else at

    def _date(self, prefix: str, minute: datetime) -> None:
        if len(self._dated) >= _CACHE_MAX:
            self._dated.clear()
        self._dated[prefix] = minute

    def _dashed(self, m: re.Match[str] | None) -> datetime | None:
        if m is None:
            return None
        y, mo, d, h, mi, s, frac = m.groups()
        at = self._minute((y, mo, d, h, mi, ""), s)
        return at + _fraction(frac) if frac and at is not None else at

    def _ctime(self, m: re.Match[str] | None) -> datetime | None:
        if m is None or m.group(1) not in _MONTHS_TEXT:
            return None
        mon, d, h, mi, s, frac, y = m.groups()
        at = self._minute((y, _MONTHS_TEXT[mon], d, h, mi, ""), s)
        return at + _fraction(frac) if frac and at is not None else at

    def _short(self, text: str) -> datetime | None:
        """``yy/mm/dd HH:MM:SS`` (Spark, Hadoop): 20yy."""
        at = self._stamps.get(text[:17])
        if at is not None:
            return at
        m = _SHORT.match(text)
        if m is None:
            return None
        y, mo, d, h, mi, s = m.groups()
        return self._remember(m.group(0), self._minute(("20" + y, mo, d, h, mi, ""), s))

    def _epoch(self, text: str) -> datetime | None:
        m = _EPOCH_RE.match(text)
        if m is None:
            return None
        digits, frac = m.groups()
        n = int(digits)
        if len(digits) == 13:
            seconds, micro = divmod(n, 1000)
            micro *= 1000
        else:
            seconds = n
            micro = int(frac[:6].ljust(6, "0")) if frac else 0
        if not _EPOCH_MIN <= seconds < _EPOCH_MAX:
            return None
        return _EPOCH + timedelta(seconds=seconds, microseconds=micro)

    def _syslog(self, text: str) -> datetime | None:
        if text[15:16] == " ":  # "Nov 25 10:00:00 ": a stamp of the usual width, maybe known
            at = self._stamps.get(text[:15])
            if at is not None:
                return at
            minute = self._prefixes.get(text[:13])  # a known minute, a new second
            sec = _SECS.get(text[13:15]) if minute is not None else None
            if minute is not None and sec is not None:
                at = minute + sec
                latest = self._latest
                if not self.rolling or latest is None:
                    if self.rolling:
                        self._latest = at
                    return self._remember(text[:15], at)
                if latest - _NEW_YEAR <= at <= latest + _LAST_YEAR:  # no year change: as below
                    if at > latest:
                        self._latest = at
                    return self._remember(text[:15], at)
        m = _SYSLOG.match(text)
        if m is None or m.group(1) not in _MONTHS_TEXT:
            return None
        mon, day, h, mi, s = m.groups()
        at = self._minute((self._year, _MONTHS_TEXT[mon], day, h, mi, ""), s)
        if at is None:
            return None
        latest = self._latest
        if self.rolling and latest is not None:
            if at < latest - _NEW_YEAR:  # into the next year
                self._set_year(self.year + 1)
                at = self._minute((self._year, _MONTHS_TEXT[mon], day, h, mi, ""), s)
                if at is None:
                    return None
            elif at > latest + _LAST_YEAR:  # a late line of the year before: not remembered
                return self._minute((str(self.year - 1), _MONTHS_TEXT[mon], day, h, mi, ""), s)
        if self.rolling and (latest is None or at > latest):
            self._latest = at
        sec = _SECS.get(s)  # None: not ASCII digits (re's \d takes any digit)
        if m.end() == 15 and sec is not None:
            self._prefix(text[:13], at - sec)
        return self._remember(m.group(0), at)

    def _prefix(self, prefix: str, minute: datetime) -> None:
        if len(self._prefixes) >= _CACHE_MAX:
            self._prefixes.clear()
        self._prefixes[prefix] = minute

    def _set_year(self, year: int) -> None:
        self.year = year
        self._year = str(year)
        self._stamps.clear()  # syslog stamps of the year before are cached there
        self._prefixes.clear()

    def _clf(self, text: str) -> datetime | None:
        start = text.find("[", 0, _SCAN)
        if start < 0:
            return None
        stamp = text[start : start + 28]  # "[25/Nov/2026:10:00:00 +0000]"
        at = self._stamps.get(stamp)
        if at is not None:
            return at
        minute = self._prefixes.get(stamp[:19] + stamp[21:])  # a known minute, a new second
        if minute is not None:
            sec = _SECS.get(stamp[19:21])
            if sec is not None:
                return self._remember(stamp, minute + sec)
        m = _CLF.match(text, start) or _CLF.search(text, start + 1)
        if m is None or m.group(2) not in _MONTHS_TEXT:
            return None
        d, mon, y, h, mi, s, tz = m.groups()
        at = self._minute((y, _MONTHS_TEXT[mon], d, h, mi, tz), s)
        whole = m.group(0)
        sec = _SECS.get(s)
        if at is not None and sec is not None:
            self._prefix(whole[:19] + whole[21:], at - sec)
        return self._remember(whole, at)

    def _slashed(self, text: str) -> datetime | None:
        sec = _SECS.get(text[17:19])
        if sec is not None:
            minute = self._dated.get(text[:17])  # a known minute (``_SLASHED`` is fixed-width)
            if minute is not None:
                return minute + sec
        m = _SLASHED.match(text)
        if m is None:
            return None
        y, mo, d, h, mi, s = m.groups()
        key = (y, mo, d, h, mi, "")
        at = self._minute(key, s)
        if at is not None and sec is not None:
            self._date(text[:17], self._minutes[key])
        return at

    def _strptime(self, text: str) -> datetime | None:
        assert self.fixed is not None
        for cut in range(min(len(text), 64), 5, -1):
            try:
                at = datetime.strptime(text[:cut], self.fixed)  # noqa: DTZ007 - tz set below
            except ValueError:
                continue
            if at.tzinfo is not None:
                return at
            if "%Y" not in self.fixed and "%y" not in self.fixed:
                at = at.replace(year=self.year)
            at = at.replace(tzinfo=self.zone)
            return at.astimezone(UTC) if self._utc_out else at
        return None


def syslog_start_year(samples: Iterable[str], latest: datetime, zone: tzinfo = UTC) -> int | None:
    """The year of the first syslog stamp of a file whose lines ``samples`` are, in order (a
    few lines spread over the file, its last line last), and whose mtime is ``latest``: the last
    line is in ``latest``'s year, or the year before if its date is later than ``latest``; the
    first is as many years earlier as the New Years the samples cross. None: no syslog stamp."""
    probe = TimeParser(None, 2000, rolling=True)  # a leap year: Feb 29 fits
    last: datetime | None = None
    for text in samples:
        at = probe._syslog(text)  # the same rule the replay applies
        if at is not None:
            last = at
    if last is None:
        return None
    rolls = probe.year - 2000
    local = latest.astimezone(zone)
    # the last line's wall clock against the mtime's, in 2000 (leap: Feb 29 fits)
    mtime_wall = local.replace(year=2000, tzinfo=UTC)
    last_wall = last.replace(year=2000)
    year = local.year - (1 if last_wall > mtime_wall + timedelta(minutes=1) else 0)
    return year - rolls
