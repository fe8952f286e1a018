"""Start/end pair rules: deadlines per key, late ends, orphans, double starts, restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from detector.alerts import AlertBook
from detector.matching import Hit
from detector.model import PairSpec, RuleConfig
from detector.rules.base import Signal, When
from detector.rules.pair import PairEvaluator, shared_groups
from detector.sources.base import Line

T0 = datetime(2026, 1, 10, 10, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
MIN = timedelta(minutes=1)
START = r"etl (?P<job>\w+) started on (?P<host>\w+)"
END = r"etl (?P<job>\w+) finished"


def rule(summary: str | None = None, **spec: Any) -> RuleConfig:
    spec.setdefault("start", START)
    spec.setdefault("end", END)
    spec.setdefault("within", 30 * MIN)
    return RuleConfig(
        name="etl-finishes", kind="pair", sources=("s",), summary=summary, pair=PairSpec(**spec)
    )


def ev_at(at: datetime, **spec: Any) -> PairEvaluator:
    return PairEvaluator(rule(**spec), at)


def hit(
    ev: PairEvaluator,
    role: Literal["start", "end"],
    job: str,
    at: datetime,
    earliest: datetime | None = None,
) -> list[Signal]:
    groups = {"job": job, "host": "h1"} if role == "start" else {"job": job}
    line = Line("s", f"etl {job} {role}")
    return ev.observe(Hit(0, "etl-finishes", role, groups), line, When(at, earliest or at))


def acts(signals: list[Signal]) -> list[tuple[str, str]]:
    return [(s.action, s.key) for s in signals]


def test_pairs_are_keyed_by_the_groups_both_patterns_share() -> None:
    assert shared_groups(START, END) == ("job",)
    assert shared_groups("a (?P<x>.)", "b") == ()
    assert shared_groups("(", "b") == ()


def test_start_without_end_fires_exactly_at_start_plus_within() -> None:
    ev = ev_at(T0)
    assert hit(ev, "start", "etl1", T0) == []
    assert ev.next_deadline() == T0 + 30 * MIN
    assert ev.due(T0 + 30 * MIN - US) == []
    fired = ev.due(T0 + 30 * MIN)
    assert acts(fired) == [("fire", "job=etl1")]
    assert fired[0].labels == {"job": "etl1"}
    assert fired[0].kind == "pair"
    assert "started at 2026-01-10 10:00 UTC and not finished within 30m" in fired[0].summary
    assert ev.next_deadline() is None


def test_end_in_time_closes_the_pair_silently() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    assert hit(ev, "end", "etl1", T0 + 30 * MIN) == []
    assert ev.next_deadline() is None
    assert ev.due(T0 + 2 * 30 * MIN) == []


def test_late_end_resolves_with_the_real_duration() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    ev.due(T0 + 30 * MIN)
    done = hit(ev, "end", "etl1", T0 + 47 * MIN)
    assert acts(done) == [("resolve", "job=etl1")]
    assert done[0].summary == "etl-finishes job=etl1: finished after 47m (limit 30m)"
    assert done[0].happened == "finished after 47m (limit 30m)"
    assert done[0].evidence["duration_s"] == 47 * 60


def test_keys_are_independent() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    hit(ev, "start", "etl2", T0 + 5 * MIN)
    hit(ev, "end", "etl1", T0 + 10 * MIN)
    assert ev.next_deadline() == T0 + 35 * MIN
    assert [s.labels for s in ev.due(T0 + 35 * MIN)] == [{"job": "etl2"}]


def test_summary_template_gets_captured_fields_and_duration() -> None:
    r = rule(summary="{job} took {duration} (max {within}) {x}")
    ev, book = PairEvaluator(r, T0), AlertBook("h1", {r.name: r}, ["hook"])
    hit(ev, "start", "etl1", T0)
    fired = ev.due(T0 + 30 * MIN)
    assert fired[0].summary == "etl1 took 30m (max 30m) {x}"
    done = hit(ev, "end", "etl1", T0 + 40 * MIN)
    book.apply(fired + done, T0 + 40 * MIN)
    # the resolved notice: the user's summary as the alert showed it, then what happened
    assert [o.payload["summary"] for o in book.take()[1]] == [
        "etl1 took 30m (max 30m) {x}",
        "etl1 took 30m (max 30m) {x} — finished after 40m (limit 30m)",
    ]


def test_orphan_end_is_reported_only_when_asked() -> None:
    assert hit(ev_at(T0), "end", "etl9", T0) == []
    ev = ev_at(T0, on_orphan_end="alert")
    orphan = hit(ev, "end", "etl9", T0)
    assert acts(orphan) == [("info", "job=etl9#orphan_end")]
    assert "without a recorded start" in orphan[0].summary


def test_end_sooner_than_min_duration_is_reported_as_too_fast() -> None:
    ev = ev_at(T0, min_duration=5 * MIN)
    hit(ev, "start", "etl1", T0)
    fast = hit(ev, "end", "etl1", T0 + 2 * MIN)
    assert acts(fast) == [("info", "job=etl1#too_fast")]
    assert "sooner than the 5m minimum" in fast[0].summary
    hit(ev, "start", "etl1", T0 + 10 * MIN)
    assert hit(ev, "end", "etl1", T0 + 15 * MIN) == [], "exactly the minimum is fine"


def test_second_start_while_open_is_a_double_run_and_restarts_the_clock() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    again = hit(ev, "start", "etl1", T0 + 10 * MIN)
    assert acts(again) == [("info", "job=etl1#double_start")]
    assert "ran twice" in again[0].summary
    assert ev.next_deadline() == T0 + 40 * MIN
    quiet = ev_at(T0, on_double_start="ignore")
    hit(quiet, "start", "etl1", T0)
    assert hit(quiet, "start", "etl1", T0 + MIN) == []


def test_a_new_start_after_an_overdue_one_keeps_the_alert_until_an_end() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    ev.due(T0 + 30 * MIN)
    assert hit(ev, "start", "etl1", T0 + 60 * MIN) == []
    assert ev.next_deadline() is None
    assert acts(hit(ev, "end", "etl1", T0 + 70 * MIN)) == [("resolve", "job=etl1")]


def test_restart_continues_open_and_firing_pairs() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    hit(ev, "start", "etl2", T0 + 20 * MIN)
    ev.due(T0 + 30 * MIN)
    saved = ev.state_changes()
    assert set(saved) == {"job=etl1", "job=etl2"}
    fresh = ev_at(T0 + 31 * MIN)
    fresh.load_state(saved)
    assert fresh.next_deadline() == T0 + 50 * MIN
    assert acts(hit(fresh, "end", "etl1", T0 + 32 * MIN)) == [("resolve", "job=etl1")]
    assert fresh.state_changes() == {"job=etl1": None}


def test_load_state_drops_pairs_keyed_by_other_groups_and_garbage() -> None:
    stale = {
        "run=x": {"started": T0.isoformat(), "labels": {"run": "x"}},
        "job=a": "garbage",
        "job=b": {"started": T0.isoformat(), "labels": {"job": "b"}, "firing": False},
    }
    ev = ev_at(T0)
    ev.load_state(stale)
    assert ev.state_changes() == {"run=x": None, "job=a": None}
    assert ev.next_deadline() == T0 + 30 * MIN


def test_end_read_during_catch_up_prevents_a_false_timeout() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    saved = ev.state_changes()
    down_at, back_at = T0 + 5 * MIN, T0 + 3 * 60 * MIN
    fresh = ev_at(back_at)
    fresh.load_state(saved)
    fresh.note_downtime(down_at, back_at)
    assert hit(fresh, "end", "etl1", back_at, earliest=down_at) == []
    assert fresh.due(back_at) == []


def test_timeout_during_downtime_without_end_fires_once_saying_agent_was_down() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    saved = ev.state_changes()
    fresh = ev_at(T0 + 3 * 60 * MIN)
    fresh.load_state(saved)
    fresh.note_downtime(T0 + 5 * MIN, T0 + 3 * 60 * MIN)
    fired = fresh.due(T0 + 3 * 60 * MIN)
    assert acts(fired) == [("fire", "job=etl1")]
    assert "agent was down" in fired[0].summary
    assert "agent was down from" in fired[0].description


def test_end_known_to_be_late_but_read_only_after_downtime_is_an_info() -> None:
    ev = ev_at(T0)
    hit(ev, "start", "etl1", T0)
    ev.note_downtime(T0 + 5 * MIN, T0 + 3 * 60 * MIN)
    late = hit(ev, "end", "etl1", T0 + 47 * MIN)  # journald timestamp, read while catching up
    assert acts(late) == [("info", "job=etl1#late")]
    assert "17m over the 30m limit" in late[0].summary
    assert "agent was down" in late[0].description
    assert ev.next_deadline() is None
