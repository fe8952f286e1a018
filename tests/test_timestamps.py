"""Timestamps of replayed lines: every supported format, mixed in one log, cached or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.timestamps import TimeParser

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
