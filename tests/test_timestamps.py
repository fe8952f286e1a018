"""Timestamps of replayed lines: every supported format, mixed in one log, cached or not."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

import detector.timestamps as ts
from detector.timestamps import TimeParser, syslog_start_year

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
YEAR = 2026


def test_each_format_reads_the_time_it_shows() -> None:
    p = TimeParser(None, YEAR)
    plus_one = timezone(timedelta(hours=1))
    cases = {
        "2026-03-01 12:00:00,250 INFO x": datetime(2026, 3, 1, 12, 0, 0, 250000, UTC),
        "2026-03-01T12:00:00.123456789Z x": datetime(2026, 3, 1, 12, 0, 0, 123456, UTC),
        "2026-03-01T12:00:00+01:00 x": datetime(2026, 3, 1, 12, tzinfo=plus_one),
        "2026-03-01 12:00:00.5 +0100 x": datetime(2026, 3, 1, 12, 0, 0, 500000, plus_one),
        "Mar  1 12:00:05 host sshd[1]: x": datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC),
        "Mar 1 12:00:05 host x": datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC),
        '1.2.3.4 - - [01/Mar/2026:13:00:10 +0100] "GET /"': datetime(
            2026, 3, 1, 13, 0, 10, tzinfo=plus_one
        ),
        "[01/Mar/2026:13:00:10 +0000] x": datetime(2026, 3, 1, 13, 0, 10, tzinfo=UTC),
        "2026/03/01 12:00:07 [error] 12#0: x": datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC),
        "INFO 2026-03-01T12:00:09Z after a prefix": datetime(2026, 3, 1, 12, 0, 9, tzinfo=UTC),
        "host [info] then [01/Mar/2026:13:00:11 +0000]": datetime(
            2026, 3, 1, 13, 0, 11, tzinfo=UTC
        ),
    }
    for text, expected in cases.items():
        assert p.parse(text) == expected, text
        assert p.parse(text) == expected, f"{text} (cached)"


def test_lines_without_a_valid_stamp_have_no_time() -> None:
    p = TimeParser(None, YEAR)
    for text in [
        "no time here",
        "",
        "2026-02-30 12:00:00 not a day",
        "Foo 12 12:00:00 not a month",
        "Mar  1 12:00:61 no such second",
        "12:00:00 a time without a date",
        "sshd[123]: [bracketed] but no stamp",
    ]:
        assert p.parse(text) is None, text


def test_a_fixed_format_is_read_with_strptime() -> None:
    assert TimeParser("%d.%m.%Y %H:%M", YEAR).parse("01.03.2026 12:01 x") == datetime(
        2026, 3, 1, 12, 1, tzinfo=UTC
    )


OFFSETS = st.sampled_from([None, "Z", "+00:00", "+01:00", "-0530", "+1400"])


def _offset(text: str | None) -> timezone:
    if text in (None, "Z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


@st.composite
def stamped_lines(draw: st.DrawFn) -> tuple[str, datetime]:
    """A line in one of the formats, and the time it must be read as."""
    at = draw(
        st.datetimes(min_value=datetime(YEAR, 1, 1), max_value=datetime(YEAR, 12, 31, 23, 59))
    )
    kind = draw(st.sampled_from(["iso", "syslog", "clf", "slashed"]))
    rest = draw(st.sampled_from([" host app[1]: ERROR x", " x", ""]))
    mon = MONTHS[at.month - 1]
    hms = f"{at:%H:%M:%S}"
    if kind == "iso":
        digits = draw(st.text("0123456789", min_size=1, max_size=9))
        frac = draw(st.sampled_from(["", "." + digits, "," + digits]))
        tz = draw(OFFSETS)
        space = draw(st.sampled_from(["", " "])) if tz else ""
        sep = draw(st.sampled_from(["T", " "]))
        text = f"{at:%Y-%m-%d}{sep}{hms}{frac}{space}{tz or ''}{rest}"
        micro = int(frac[1:7].ljust(6, "0")) if frac else 0
        return text, at.replace(microsecond=micro, tzinfo=_offset(tz))
    if kind == "syslog":
        return f"{mon} {at.day:>2} {hms}{rest}", at.replace(microsecond=0, tzinfo=UTC)
    if kind == "clf":
        tz = draw(st.sampled_from(["+0000", "+0100", "-0700"]))
        text = f'10.0.0.{at.second} - - [{at:%d}/{mon}/{at:%Y}:{hms} {tz}] "GET /"{rest}'
        return text, at.replace(microsecond=0, tzinfo=_offset(tz))
    return f"{at:%Y/%m/%d} {hms} [error] 1#0:{rest}", at.replace(microsecond=0, tzinfo=UTC)


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(stamped_lines(), min_size=1, max_size=30))
def test_a_log_mixing_formats_reads_every_line_exactly_as_alone(
    lines: list[tuple[str, datetime]],
) -> None:
    shared = TimeParser(None, YEAR)  # its caches see the lines in order, repeats included
    for text, expected in lines + lines:
        assert shared.parse(text) == expected, text
        assert TimeParser(None, YEAR).parse(text) == expected, text


def test_the_formats_of_real_logs_are_read() -> None:
    """Stamps from the Loghub logs and other real formats (all were read as "no time")."""
    p = TimeParser(None, YEAR)
    cases = {
        "1117838570 2005.06.03 R02-M1-N0 x": datetime(2005, 6, 3, 22, 42, 50, tzinfo=UTC),
        "1117838570.25 x": datetime(2005, 6, 3, 22, 42, 50, 250000, tzinfo=UTC),
        "1117838570123 x": datetime(2005, 6, 3, 22, 42, 50, 123000, tzinfo=UTC),
        "- 1131566461 2005.11.09 dn228 x": datetime(2005, 11, 9, 20, 1, 1, tzinfo=UTC),
        "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 RAS": datetime(
            2005, 6, 3, 15, 42, 50, 675872, tzinfo=UTC
        ),
        "2005-06-03-15.42.50.675872 RAS KERNEL": datetime(
            2005, 6, 3, 15, 42, 50, 675872, tzinfo=UTC
        ),
        "[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init()": datetime(
            2005, 12, 4, 4, 47, 44, tzinfo=UTC
        ),
        "[Wed Oct 11 14:32:52.123456 2000] [core:error] x": datetime(
            2000, 10, 11, 14, 32, 52, 123456, tzinfo=UTC
        ),
        "17/06/09 20:10:40 INFO executor.CoarseGrainedExecutorBackend": datetime(
            2017, 6, 9, 20, 10, 40, tzinfo=UTC
        ),
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 x": datetime(
            2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC
        ),
        "<34>1 2003-08-24T05:14:15.000003-07:00 host su - - x": datetime(
            2003, 8, 24, 12, 14, 15, 3, tzinfo=UTC
        ),
        "<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!": datetime(YEAR, 2, 5, 17, 32, 18, tzinfo=UTC),
    }
    for text, expected in cases.items():
        assert p.parse(text) == expected, text
    for text in ["12345 not an epoch", "9999999999 too late", "<13>no stamp", "1117838570:1 x"]:
        assert p.parse(text) is None, text


def test_a_source_zone_time_format_and_time_regex() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    p = TimeParser(None, YEAR, zone=berlin)
    assert p.parse("2026-07-01 12:00:00 x") == datetime(2026, 7, 1, 10, tzinfo=UTC)  # CEST
    assert p.parse("2026-01-01 12:00:00 x") == datetime(2026, 1, 1, 11, tzinfo=UTC)  # CET
    assert p.parse("2026-07-01 12:00:00Z x") == datetime(2026, 7, 1, 12, tzinfo=UTC)  # own offset
    fixed = TimeParser("%d.%m.%Y %H:%M", YEAR, zone=berlin)
    assert fixed.parse("01.07.2026 12:01 x") == datetime(2026, 7, 1, 10, 1, tzinfo=UTC)
    rx = TimeParser(None, YEAR, time_regex=r"ts=(?P<time>\S+)")
    assert rx.parse("level=info ts=2026-03-01T12:00:00Z msg=x") == datetime(
        2026, 3, 1, 12, tzinfo=UTC
    )
    assert rx.parse("level=info msg=no stamp 2026-03-01T12:00:00Z") is None
    both = TimeParser("%d/%m/%Y-%H:%M:%S", YEAR, time_regex=r"at (\S+)")
    assert both.parse("job 7 done at 01/03/2026-12:00:05") == datetime(
        2026, 3, 1, 12, 0, 5, tzinfo=UTC
    )


@settings(max_examples=200, deadline=None, database=None)
@given(
    at=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31)),
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"]),
)
def test_a_local_stamp_round_trips_through_its_zone_across_dst(at: datetime, zone: str) -> None:
    """Round trip: an instant written as local wall time (ISO without offset) in a DST zone reads
    back as that instant, except in the hour a DST change repeats (read as its first pass)."""
    tz = ZoneInfo(zone)
    instant = at.replace(microsecond=0, tzinfo=UTC)
    local = instant.astimezone(tz)
    got = TimeParser(None, YEAR, zone=tz).parse(f"{local:%Y-%m-%d %H:%M:%S} x")
    assert got is not None and got.utcoffset() == timedelta(0)
    first_pass = local.replace(tzinfo=None).replace(tzinfo=tz, fold=0).astimezone(UTC)
    assert got == first_pass  # (in UTC: Python never finds an ambiguous local time equal)
    if local.fold == 0:
        assert got == instant


@settings(max_examples=200, deadline=None, database=None)
@given(
    start=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2030, 1, 1)),
    steps=st.lists(st.integers(0, 29 * 86400), min_size=1, max_size=60),
)
def test_syslog_years_are_inferred_monotonically(start: datetime, steps: list[int]) -> None:
    """A syslog file read in order (gaps under 30 days): every stamp gets its true year, given the
    first's; and syslog_start_year finds that first year from a sample of the lines and the
    mtime (the last line's time, or later)."""
    truth = [start.replace(microsecond=0, tzinfo=UTC)]
    for s in steps:
        truth.append(truth[-1] + timedelta(seconds=s))
    truth = [t for t in truth if not (t.month == 2 and t.day == 29)]
    if not truth:
        return
    lines = [f"{MONTHS[t.month - 1]} {t.day:>2} {t:%H:%M:%S} host x" for t in truth]
    p = TimeParser(None, truth[0].year, rolling=True)
    got = [p.parse(x) for x in lines]
    assert got == truth
    assert all(a <= b for a, b in itertools.pairwise(got))
    sample = [lines[0], *lines[:: max(1, len(lines) // 5)], lines[-1]]
    for mtime in (truth[-1], truth[-1] + timedelta(days=20)):
        assert syslog_start_year(sample, mtime) == truth[0].year


def test_a_stamp_after_the_mtime_is_the_year_before() -> None:
    june = datetime(2026, 6, 1, tzinfo=UTC)
    assert syslog_start_year(["Dec 30 10:00:00 h x", "Dec 31 10:00:00 h x"], june) == 2025
    assert syslog_start_year(["May 30 10:00:00 h x"], june) == 2026
    # New Year inside the file: the first line is a year before the last
    assert syslog_start_year(["Dec 30 10:00:00 h x", "Jan  2 10:00:00 h x"], june) == 2025
    assert syslog_start_year(["no syslog stamp"], june) is None
    # a late line out of order across New Year stays in the year before
    p = TimeParser(None, 2025, rolling=True)
    assert [
        p.parse(x) for x in ["Dec 31 23:59:58 a", "Jan  1 00:00:01 b", "Dec 31 23:59:59 c"]
    ] == [
        datetime(2025, 12, 31, 23, 59, 58, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
        datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC),
    ]


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Dec 31 23:59:", "Jan  1 00:00:", "Mar  1 10:00:", "Mar 10 10:00:"]),
            st.sampled_from(["00", "07", "59", "60", "99", "٠٥", "5 "]),
            st.sampled_from(["clf", "syslog"]),
        ),
        min_size=1,
        max_size=40,
    ),
    st.booleans(),
)
def test_new_seconds_of_a_known_minute_read_as_alone(
    stamps: list[tuple[str, str, str]], rolling: bool
) -> None:
    """The minute-prefix caches (a new second of a minute seen before skips the regex) give
    every line the time a fresh parser gives it, also across a New Year and for seconds that
    are no stamp (60, non-ASCII digits); rolling year inference as without them."""
    lines = []
    for prefix, sec, kind in stamps:
        if kind == "syslog":
            lines.append(f"{prefix}{sec} host x")
        else:
            mon, day, hm = prefix[:3], prefix[4:6].strip().zfill(2), prefix[7:13]
            lines.append(f'1.2.3.4 - - [{day}/{mon}/{YEAR}:{hm}{sec} +0100] "GET /"')
    shared = TimeParser(None, YEAR, rolling=rolling)
    slow = TimeParser(None, YEAR, rolling=rolling)
    for text in lines:
        expected = slow.parse(text)
        slow._prefixes.clear()  # the reference never takes the shortcut
        assert shared.parse(text) == expected, text
        if not rolling:
            assert TimeParser(None, YEAR).parse(text) == expected, text


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["2026-03-01T10:00:", "2026-03-01 10:00:", "2025-12-31 23:59:"]),
            st.sampled_from(["00", "07", "59", "60", "99", "٠٥", "5 "]),
            st.sampled_from(["", ".5", ",250", ".123456789", ".x"]),
            st.sampled_from(["", "Z", " Z", "+01:00", " +0100", "-0530", "+2500", " UTC"]),
            st.sampled_from(["iso", "slashed"]),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from(["UTC", "Europe/Berlin"]),
)
def test_new_seconds_of_a_known_dated_minute_read_as_alone(
    stamps: list[tuple[str, str, str, str, str]], zone: str
) -> None:
    """The minute caches of stamps with a year at the line start (ISO 8601 with its fraction
    and offset, nginx's slashed ``2026/03/01 10:00:07``) give every line the time a fresh
    parser gives it, also for seconds that are no stamp and offsets that are none."""
    shared = TimeParser(None, YEAR, zone=ZoneInfo(zone))
    for prefix, sec, frac, tz, kind in stamps:
        head = prefix if kind == "iso" else prefix[:10].replace("-", "/") + " " + prefix[11:]
        text = f"{head}{sec}{frac}{tz} host app: x" if kind == "iso" else f"{head}{sec} [error] x"
        assert shared.parse(text) == TimeParser(None, YEAR, zone=ZoneInfo(zone)).parse(text), text


_STAMPS_AFTER_A_PREFIX = [
    "2026-03-01T10:00:07.5Z",
    "2026-03-01 10:00:07",
    "2026-03-01-10.00.07.123",
    "[01/Mar/2026:10:00:07 +0100]",
    "Sun Mar  1 10:00:07 2026",
    "[Sun Mar 01 10:00:07.123 2026]",
    "1772359207",
    "1772359207123",
    "1772359207.25",
]


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.text(st.sampled_from("0123456789٠٥-:./ []+TZ,abcMarSun"), max_size=20),
    st.sampled_from(["", *_STAMPS_AFTER_A_PREFIX]),
    st.integers(0, 30),
    st.text(st.sampled_from("0123456789-:. x"), max_size=3),
    st.text(st.sampled_from("0123456789٠٥-:./ []+TZ,abc"), max_size=20),
)
def test_the_no_stamp_shortcut_changes_no_result(
    before: str, stamp: str, cut: int, spliced: str, after: str
) -> None:
    """A line in which the search after a prefix skips every attempt (``_MAYBE_STAMP`` finds
    nothing) has the time the attempts would give it: none. The lines: a stamp of each format
    after a prefix, damaged at one place, amid digits and separators."""
    text = f"x {before} {stamp[:cut]}{spliced}{stamp[cut + len(spliced) :]} {after}"
    fast = TimeParser(None, YEAR).parse(text)
    saved = ts._MAYBE_STAMP
    ts._MAYBE_STAMP = re.compile("")  # matches everywhere: every attempt is made
    try:
        slow = TimeParser(None, YEAR).parse(text)
    finally:
        ts._MAYBE_STAMP = saved
    assert fast == slow, text
