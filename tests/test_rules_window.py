"""Expected-activity windows: exact close, fail, late, min_count, DST, leap days, restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.alerts import AlertBook
from detector.matching import Hit
from detector.model import RuleConfig, WindowSpec
from detector.rules.base import Signal, When
from detector.rules.window import WindowEvaluator
from detector.sources.base import Line

US = timedelta(microseconds=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
BERLIN = ZoneInfo("Europe/Berlin")
# 2026-01-10 is winter: 02:00 Europe/Berlin is 01:00 UTC, the window closes at 02:00 UTC
OPEN = datetime(2026, 1, 10, 1, 0, tzinfo=UTC)
CLOSE = OPEN + HOUR
START = datetime(2026, 1, 10, 0, 0, tzinfo=UTC)


def rule(fail: str | None = None, summary: str | None = None, **spec: Any) -> RuleConfig:
    spec.setdefault("cron", "0 2 * * *")
    spec.setdefault("within", HOUR)
    spec.setdefault("timezone", "Europe/Berlin")
    return RuleConfig(
        name="nightly-backup",
        kind="window",
        sources=("s",),
        match="backup complete",
        fail=fail,
        summary=summary,
        window=WindowSpec(**spec),
    )


def see(
    ev: WindowEvaluator,
    at: datetime,
    role: Literal["match", "fail"] = "match",
    earliest: datetime | None = None,
) -> list[Signal]:
    text = "backup complete" if role == "match" else "backup failed"
    return ev.observe(Hit(0, "nightly-backup", role, {}), Line("s", text), When(at, earliest or at))


def acts(signals: list[Signal]) -> list[str]:
    return [s.action for s in signals]


def run_until(ev: WindowEvaluator, end: datetime) -> list[Signal]:
    """Drive the evaluator like the service: wake at each deadline up to ``end``."""
    out: list[Signal] = []
    while (at := ev.next_deadline()) is not None and at <= end:
        out.extend(ev.due(at))
    return out


def test_window_fires_once_when_backup_never_logs() -> None:
    ev = WindowEvaluator(rule(), START)
    assert ev.next_deadline() == CLOSE
    assert ev.due(CLOSE - US) == []
    fired = ev.due(CLOSE)
    assert acts(fired) == ["fire"]
    assert fired[0].kind == "window"
    assert fired[0].at == CLOSE
    assert fired[0].summary == (
        "nightly-backup: no 'backup complete' between 02:00 and 03:00 Europe/Berlin on 2026-01-10"
    )
    assert fired[0].evidence["window_start_at"] == OPEN.isoformat()
    assert ev.due(CLOSE + MIN) == []
    assert ev.next_deadline() == CLOSE + timedelta(days=1)


def test_match_inside_the_window_satisfies_it() -> None:
    ev = WindowEvaluator(rule(), START)
    assert see(ev, OPEN + 14 * MIN) == []
    assert ev.due(CLOSE) == []
    assert ev.next_deadline() == CLOSE + timedelta(days=1)


def test_both_window_ends_are_inclusive() -> None:
    for at in (OPEN, CLOSE):
        ev = WindowEvaluator(rule(too_early="info"), START)
        assert see(ev, at) == [], at
        assert run_until(ev, CLOSE) == [], at


def test_match_before_the_window_does_not_count() -> None:
    ev = WindowEvaluator(rule(), START)
    assert see(ev, OPEN - US) == []
    assert acts(ev.due(CLOSE)) == ["fire"]


def test_late_match_resolves_saying_how_late() -> None:
    ev = WindowEvaluator(rule(), START)
    ev.due(CLOSE)
    late = see(ev, CLOSE + 37 * MIN)
    assert acts(late) == ["resolve"]
    assert late[0].summary == (
        "nightly-backup: 'backup complete' arrived 37m late (window 02:00–03:00 Europe/Berlin)"
    )
    assert late[0].evidence["late_by_s"] == 37 * 60
    assert see(ev, CLOSE + 38 * MIN) == []


def test_late_summary_template_gets_late_by_and_window_bounds() -> None:
    tpl = "backup {late_by} late for {window_start}-{window_end} {timezone} {missing}"
    ev = WindowEvaluator(rule(summary=tpl), START)
    # a late match the agent reads only after the close was due: an info, rendered from the template
    info = see(ev, CLOSE + 37 * MIN)
    assert [(s.action, s.summary) for s in info] == [
        ("info", "backup 37m late for 02:00-03:00 Europe/Berlin {missing}")
    ]
    # a late match resolving what fired: the alert's summary, then what happened
    r = rule(summary=tpl)
    ev, book = WindowEvaluator(r, START), AlertBook("h1", {r.name: r}, ["hook"])
    book.apply(ev.due(CLOSE) + see(ev, CLOSE + 37 * MIN), CLOSE + 37 * MIN)
    assert [o.payload["summary"] for o in book.take()[1]] == [
        "backup {late_by} late for 02:00-03:00 Europe/Berlin {missing}",
        "backup {late_by} late for 02:00-03:00 Europe/Berlin {missing} — 'backup complete' "
        "arrived 37m late (window 02:00–03:00 Europe/Berlin)",
    ]


def test_missed_window_resolves_at_the_next_good_window() -> None:
    ev = WindowEvaluator(rule(), START)
    ev.due(CLOSE)
    tomorrow = OPEN + timedelta(days=1)
    assert acts(see(ev, tomorrow + 5 * MIN)) == ["resolve"]
    assert run_until(ev, tomorrow + 2 * HOUR) == []


def test_fail_line_inside_the_window_fires_at_once_and_a_later_success_resolves() -> None:
    ev = WindowEvaluator(rule(fail="backup failed"), START)
    failed = see(ev, OPEN + 14 * MIN, role="fail")
    assert acts(failed) == ["fire"]
    assert failed[0].sample == "backup failed"
    assert "failed at 02:14" in failed[0].summary
    assert ev.due(CLOSE) == [], "a failed window does not fire again at its close"
    ok = see(ev, OPEN + 40 * MIN)
    assert acts(ok) == ["resolve"]
    assert "after the failure at 02:14" in ok[0].summary


def test_fail_line_after_success_in_the_same_window_still_fires() -> None:
    ev = WindowEvaluator(rule(fail="backup failed"), START)
    see(ev, OPEN + MIN)
    assert acts(see(ev, OPEN + 2 * MIN, role="fail")) == ["fire"]


def test_fail_line_outside_any_window_is_ignored() -> None:
    ev = WindowEvaluator(rule(fail="backup failed"), START)
    assert see(ev, OPEN - MIN, role="fail") == []


def test_min_count_needs_that_many_matches_in_the_window() -> None:
    ev = WindowEvaluator(rule(min_count=3), START)
    see(ev, OPEN + MIN)
    see(ev, OPEN + 2 * MIN)
    fired = ev.due(CLOSE)
    assert acts(fired) == ["fire"]
    assert "only 2 of 3" in fired[0].summary
    assert acts(see(ev, CLOSE + 5 * MIN)) == ["resolve"]


def test_min_count_reached_inside_the_window_does_not_fire() -> None:
    ev = WindowEvaluator(rule(min_count=2), START)
    see(ev, OPEN + MIN)
    see(ev, OPEN + 2 * MIN)
    assert ev.due(CLOSE) == []


def test_too_early_match_is_an_info_when_asked_for() -> None:
    ev = WindowEvaluator(rule(too_early="info"), START)
    early = see(ev, OPEN - 20 * MIN)
    assert acts(early) == ["info"]
    assert "20m before the window between 02:00 and 03:00" in early[0].summary
    assert (
        WindowEvaluator(rule(), START).observe(
            Hit(0, "nightly-backup", "match", {}), Line("s", "x"), When.exact(OPEN - MIN)
        )
        == []
    )


def test_a_window_already_open_when_the_rule_first_runs_is_not_watched() -> None:
    ev = WindowEvaluator(rule(), OPEN + 30 * MIN)
    assert ev.next_deadline() == CLOSE + timedelta(days=1)


# ---------------------------------------------------------------- DST and calendar

DST_CASES = [
    # zone, the DST day, expected opening instants (UTC) of 02:30 on day-1, day, day+1
    (
        "Europe/Berlin",
        "2026-03-29",  # 02:00 → 03:00: 02:30 does not exist, opens at 03:00 CEST
        ["2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:30"],
    ),
    (
        "Europe/Berlin",
        "2026-10-25",  # 03:00 → 02:00: 02:30 happens twice, opens once at the first (CEST)
        ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"],
    ),
    (
        "America/New_York",
        "2026-03-08",  # 02:00 → 03:00: opens at 03:00 EDT
        ["2026-03-07T07:30", "2026-03-08T07:00", "2026-03-09T06:30"],
    ),
    (
        "America/New_York",
        "2026-11-01",  # 02:00 → 01:00: 02:30 is not ambiguous, EST
        ["2026-10-31T06:30", "2026-11-01T07:30", "2026-11-02T07:30"],
    ),
]


@pytest.mark.parametrize(("zone", "day", "opens"), DST_CASES)
def test_daily_0230_window_on_dst_days(zone: str, day: str, opens: list[str]) -> None:
    d = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone))
    start = d - timedelta(days=1, hours=12)
    ev = WindowEvaluator(rule(cron="30 2 * * *", timezone=zone), start)
    fired = run_until(ev, d + timedelta(days=2))
    expected = [datetime.fromisoformat(o).replace(tzinfo=UTC) for o in opens]
    assert [s.evidence["window_start_at"] for s in fired] == [o.isoformat() for o in expected]
    assert [s.at for s in fired] == [o + HOUR for o in expected], "within is elapsed time"


def test_dst_window_is_satisfied_by_a_match_in_its_real_hour() -> None:
    # Berlin spring-forward: the window is 03:00–04:00 CEST = 01:00–02:00 UTC
    ev = WindowEvaluator(rule(cron="30 2 * * *"), datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert ev.next_deadline() == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)
    see(ev, datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    assert ev.due(datetime(2026, 3, 29, 2, 0, tzinfo=UTC)) == []


def test_fall_back_window_fires_once_and_reads_in_local_time() -> None:
    ev = WindowEvaluator(rule(cron="30 2 * * *"), datetime(2026, 10, 24, 12, tzinfo=UTC))
    fired = run_until(ev, datetime(2026, 10, 25, 12, tzinfo=UTC))
    assert len(fired) == 1
    assert "between 2026-10-25 02:30 CEST and 2026-10-25 02:30 CET (Europe/Berlin)" in (
        fired[0].summary
    )


def test_feb_29_window_opens_only_in_leap_years() -> None:
    ev = WindowEvaluator(rule(cron="0 2 29 2 *", timezone="UTC"), datetime(2026, 3, 1, tzinfo=UTC))
    close = datetime(2028, 2, 29, 3, 0, tzinfo=UTC)
    assert ev.next_deadline() == close
    assert ev.due(close - US) == []
    fired = ev.due(close)
    assert acts(fired) == ["fire"]
    assert "on 2028-02-29" in fired[0].summary
    assert ev.next_deadline() == datetime(2032, 2, 29, 3, 0, tzinfo=UTC)


def test_bad_cron_or_timezone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="bad cron"):
        WindowEvaluator(rule(cron="0 2 30 2 *"), START)
    with pytest.raises(ValueError, match="unknown timezone"):
        WindowEvaluator(rule(timezone="Mars/Olympus"), START)


# ---------------------------------------------------------------- restart and downtime


def test_restart_mid_window_continues_exactly() -> None:
    ev = WindowEvaluator(rule(min_count=2), START)
    see(ev, OPEN + MIN)
    saved = ev.state_changes()
    assert ev.state_changes() == {}
    fresh = WindowEvaluator(rule(min_count=2), OPEN + 30 * MIN)
    fresh.load_state(saved)
    assert fresh.next_deadline() == CLOSE
    see(fresh, OPEN + 31 * MIN)
    assert fresh.due(CLOSE) == []


def test_restart_after_a_miss_still_resolves_on_the_late_match() -> None:
    ev = WindowEvaluator(rule(), START)
    ev.due(CLOSE)
    saved = ev.state_changes()
    fresh = WindowEvaluator(rule(), CLOSE + 10 * MIN)
    fresh.load_state(saved)
    assert acts(see(fresh, CLOSE + 37 * MIN)) == ["resolve"]
    assert fresh.next_deadline() == CLOSE + timedelta(days=1)


def downtime_evaluator(down_at: datetime, back_at: datetime) -> WindowEvaluator:
    ev = WindowEvaluator(rule(), START)
    saved = ev.state_changes()
    fresh = WindowEvaluator(rule(), back_at)
    fresh.load_state(saved)
    fresh.note_downtime(down_at, back_at)
    return fresh


def test_window_closed_during_downtime_with_a_catch_up_match_does_not_fire() -> None:
    down_at, back_at = OPEN - 30 * MIN, CLOSE + 2 * HOUR
    ev = downtime_evaluator(down_at, back_at)
    # a file line without timestamp read while catching up: written between down_at and now
    assert see(ev, back_at, earliest=down_at) == []
    assert ev.due(back_at) == []
    assert ev.next_deadline() == CLOSE + timedelta(days=1)


def test_window_closed_during_downtime_without_a_match_fires_once_saying_agent_was_down() -> None:
    down_at, back_at = OPEN - 30 * MIN, CLOSE + 2 * HOUR
    ev = downtime_evaluator(down_at, back_at)
    fired = ev.due(back_at)
    assert acts(fired) == ["fire"]
    assert "agent was down during part of the window" in fired[0].summary
    assert "agent was down from" in fired[0].description
    assert run_until(ev, back_at + HOUR) == []


def test_late_match_with_exact_time_read_while_catching_up_is_an_info_not_a_fire() -> None:
    back_at = CLOSE + 2 * HOUR
    ev = downtime_evaluator(OPEN - 30 * MIN, back_at)
    late = see(ev, CLOSE + 37 * MIN)  # journald timestamp: the backup came 37 min late
    assert acts(late) == ["info"]
    assert "37m late" in late[0].summary
    assert "agent was down" in late[0].description
    assert ev.due(back_at) == [], "the window is not reported as missed: its backup came"


def test_several_windows_missed_during_a_long_downtime_fire_one_signal() -> None:
    back_at = CLOSE + timedelta(days=2, hours=1)
    ev = downtime_evaluator(OPEN - MIN, back_at)
    fired = ev.due(back_at)
    assert acts(fired) == ["fire"]
    assert fired[0].count == 3
    assert "2 earlier window(s) missed" in fired[0].summary


def test_changed_schedule_drops_old_windows_without_crashing() -> None:
    ev = WindowEvaluator(rule(), START)
    see(ev, OPEN + MIN)
    ev.due(CLOSE)
    ev.due(CLOSE + timedelta(days=1))  # fires: firing state is kept across the change
    saved = ev.state_changes()
    saved["w:not-a-date"] = {"close": 3}
    new = WindowEvaluator(rule(cron="0 4 * * *"), CLOSE + timedelta(days=1, minutes=5))
    new.load_state(saved)
    changes = new.state_changes()
    assert [k for k, v in changes.items() if v is None and k.startswith("w:")]
    assert new.next_deadline() == datetime(2026, 1, 11, 4, 0, tzinfo=UTC)  # 04:00 CET + 1h
    assert acts(see(new, datetime(2026, 1, 11, 3, 10, tzinfo=UTC))) == ["resolve"]


def test_malformed_state_is_ignored() -> None:
    ev = WindowEvaluator(rule(), START)
    spec = ev.state_changes()["spec"]
    ev2 = WindowEvaluator(rule(), START)
    ev2.load_state({"spec": spec, "next_open": "nonsense", "w:2026-01-10T01:00:00+00:00": [1]})
    assert ev2.next_deadline() == CLOSE


def test_a_year_of_minutely_windows_after_downtime_is_bounded() -> None:
    ev = WindowEvaluator(rule(cron="* * * * *", within=MIN), START)
    saved = ev.state_changes()
    back_at = START + timedelta(days=365, seconds=30)
    fresh = WindowEvaluator(rule(cron="* * * * *", within=MIN), back_at)
    fresh.load_state(saved)
    fresh.note_downtime(START, back_at)
    fired = fresh.due(back_at)
    assert acts(fired) == ["fire"]
    half = timedelta(seconds=30)
    assert fired[0].evidence["window_end_at"] == (back_at - half).isoformat()
    assert 900 <= fired[0].count <= 1000
    assert fresh.next_deadline() == back_at + half, "the window open at restart is watched"
    assert len(fresh.state_changes()) < 1100


def test_overlapping_windows_each_count_a_match() -> None:
    # hourly windows 90 minutes long: a match at 01:15 UTC is in the 00:00 and the 01:00 window
    ev = WindowEvaluator(rule(cron="0 * * * *", within=90 * MIN, timezone="UTC"), START)
    see(ev, START + 75 * MIN)
    assert run_until(ev, START + 150 * MIN) == []
    fired = ev.due(START + 210 * MIN)
    assert [s.evidence["window_start_at"] for s in fired] == [(START + 2 * HOUR).isoformat()]


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "UTC"]),
    start_day=st.integers(min_value=0, max_value=364),
    offsets=st.lists(  # minutes after midnight UTC, mostly around 02:30 local time
        st.tuples(st.integers(0, 3), st.integers(0, 8 * 60)).map(lambda d: d[0] * 1440 + d[1]),
        max_size=8,
    ),
)
def test_fires_exactly_for_the_windows_without_a_match(
    zone: str, start_day: int, offsets: list[int]
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=start_day)
    end = start + timedelta(days=4)
    ev = WindowEvaluator(rule(cron="30 2 * * *", within=HOUR, timezone=zone), start)
    matches = sorted(start + m * MIN for m in offsets)
    fired: list[str] = []
    for at in [*matches, end]:
        while (d := ev.next_deadline()) is not None and d < at:
            fired += [s.evidence["window_start_at"] for s in ev.due(d) if s.action == "fire"]
        if at != end:
            assert all(s.action in ("resolve", "info") for s in see(ev, at))
    opens = []
    it = ev.opens(start - US)
    while (o := next(it)) + HOUR < end:
        opens.append(o)
    expected = [o.isoformat() for o in opens if not any(o <= m <= o + HOUR for m in matches)]
    assert fired == expected
