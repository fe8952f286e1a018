"""timefmt: timestamps written and read back, durations worded one way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.timefmt import (
    at_or_none,
    format_duration,
    iso,
    iso_or_none,
    parse_iso,
    parse_iso_or_none,
    utc_text,
)

offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m))
)
aware = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.one_of(st.just(UTC), offsets),
)


@given(aware)
def test_iso_reads_back_as_the_same_instant_in_utc(at: datetime) -> None:
    text = iso(at)
    assert text.endswith("+00:00")
    back = parse_iso(text)
    assert back == at
    assert back.utcoffset() == timedelta(0)
    assert at_or_none(text) == at


@given(aware)
def test_iso_keeping_the_offset_reads_back_with_that_offset(at: datetime) -> None:
    back = parse_iso(iso(at, keep_offset=True))
    assert back == at
    assert back.utcoffset() == at.utcoffset()


@given(aware)
def test_zulu_milliseconds_read_back_to_the_millisecond(at: datetime) -> None:
    text = iso(at, timespec="milliseconds", zulu=True)
    assert text.endswith("Z")
    assert len(text) == len("2026-03-01T12:00:00.000Z")
    assert parse_iso(text) == at.replace(microsecond=at.microsecond // 1000 * 1000)


def test_iso_examples() -> None:
    at = datetime(2026, 3, 1, 14, 0, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert iso(at) == "2026-03-01T12:00:05.123456+00:00"
    assert iso(at, keep_offset=True) == "2026-03-01T14:00:05.123456+02:00"
    assert iso(at, timespec="milliseconds", zulu=True) == "2026-03-01T12:00:05.123Z"
    assert iso(at, timespec="seconds") == "2026-03-01T12:00:05+00:00"
    assert iso_or_none(None) is None
    assert iso_or_none(at, timespec="seconds", zulu=True) == "2026-03-01T12:00:05Z"
    assert utc_text(at) == "2026-03-01 12:00 UTC"


def test_parse_iso_reads_z_and_takes_a_stamp_without_offset_as_utc() -> None:
    assert parse_iso("2026-03-01T12:00:00Z") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_iso("2026-03-01T12:00:00") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_iso("2026-03-01T14:00:00+02:00").utcoffset() == timedelta(hours=2)
    with pytest.raises(ValueError):
        parse_iso("yesterday")


def test_parse_iso_or_none_passes_absence_through_but_not_garbage() -> None:
    assert parse_iso_or_none(None) is None
    assert parse_iso_or_none("") is None
    assert parse_iso_or_none(17) is None
    assert parse_iso_or_none("2026-03-01T12:00:00Z") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_iso_or_none("not a time")


@pytest.mark.parametrize(
    "value", [None, 17, "", "not a time", "2026-03-01T12:00:00", ["2026-03-01T12:00:00+00:00"]]
)
def test_at_or_none_refuses_what_the_agent_never_writes(value: object) -> None:
    assert at_or_none(value) is None


def test_at_or_none_gives_utc() -> None:
    got = at_or_none("2026-03-01T14:00:00+02:00")
    assert got == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert got is not None and got.tzinfo is UTC


@pytest.mark.parametrize(
    ("d", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=-5), "0s"),
        (timedelta(milliseconds=999), "0s"),
        (timedelta(seconds=1), "1s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(minutes=15), "15m"),
        (timedelta(hours=1, minutes=5), "1h5m"),
        (timedelta(hours=1, seconds=7), "1h7s"),
        (timedelta(days=1), "1d"),
        (timedelta(days=8, hours=3, minutes=2, seconds=1), "8d3h2m1s"),
        (timedelta(seconds=59.9), "59s"),
    ],
)
def test_format_duration_examples(d: timedelta, text: str) -> None:
    assert format_duration(d) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_adds_back_up_to_the_whole_seconds(secs: int) -> None:
    text = format_duration(timedelta(seconds=secs, microseconds=500))
    total, number = 0, ""
    for ch in text:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[ch]
            number = ""
    assert total == secs
    assert number == ""
