"""Heartbeat (silence) rules: exact deadlines, per-key tracking, restarts and downtime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from detector.matching import Hit
from detector.model import HeartbeatSpec, RuleConfig
from detector.rules.base import Signal, When
from detector.rules.heartbeat import HeartbeatEvaluator
from detector.schedule import DeadlineHeap
from detector.sources.base import Line

T0 = datetime(2026, 1, 10, 10, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
MIN = timedelta(minutes=1)


def rule(**spec: Any) -> RuleConfig:
    summary = spec.pop("summary", None)
    spec.setdefault("every", timedelta(minutes=5))
    spec.setdefault("grace", MIN)
    return RuleConfig(
        name="app-alive",
        kind="heartbeat",
        sources=("s",),
        match=r"myapp\[\d+\]",
        summary=summary,
        heartbeat=HeartbeatSpec(**spec),
    )


def beat(
    ev: HeartbeatEvaluator, at: datetime, earliest: datetime | None = None, **groups: str
) -> list[Signal]:
    line = Line("s", f"myapp[1]: alive {groups}")
    return ev.observe(Hit(0, "app-alive", "match", groups), line, When(at, earliest or at))


def actions(signals: list[Signal]) -> list[tuple[str, str]]:
    return [(s.action, s.key) for s in signals]


def test_silence_fires_exactly_at_last_match_plus_every_plus_grace() -> None:
    ev = HeartbeatEvaluator(rule(), T0)
    assert beat(ev, T0 + MIN) == []
    deadline = T0 + MIN + 6 * MIN
    assert ev.next_deadline() == deadline
    assert ev.due(deadline - US) == []
    fired = ev.due(deadline)
    assert actions(fired) == [("fire", "")]
    assert fired[0].kind == "silence"
    assert fired[0].at == deadline
    assert "no match for 6m" in fired[0].summary
    assert ev.next_deadline() is None, "a firing key needs no further wake-up"
    assert ev.due(deadline + timedelta(hours=1)) == []


def test_heartbeat_never_seen_fires_at_agent_start_plus_every_plus_grace() -> None:
    ev = HeartbeatEvaluator(rule(), T0)
    assert ev.next_deadline() == T0 + 6 * MIN
    assert ev.due(T0 + 6 * MIN - US) == []
    fired = ev.due(T0 + 6 * MIN)
    assert actions(fired) == [("fire", "")]
    assert "never seen" in fired[0].summary


def test_each_match_pushes_the_deadline_forward() -> None:
    ev = HeartbeatEvaluator(rule(), T0)
    for i in range(1, 10):
        beat(ev, T0 + i * 4 * MIN)
        assert ev.due(T0 + i * 4 * MIN + 6 * MIN - US) == []
    assert ev.next_deadline() == T0 + 36 * MIN + 6 * MIN


def test_next_match_resolves_saying_how_long_it_was_silent() -> None:
    ev = HeartbeatEvaluator(rule(), T0)
    beat(ev, T0)
    assert actions(ev.due(T0 + 6 * MIN)) == [("fire", "")]
    back = beat(ev, T0 + 17 * MIN)
    assert actions(back) == [("resolve", "")]
    assert "back after 17m of silence" in back[0].summary
    assert back[0].sample is not None and "alive" in back[0].sample
    assert ev.next_deadline() == T0 + 23 * MIN
    assert beat(ev, T0 + 18 * MIN) == [], "a second match after the resolve says nothing"


def test_each_expected_key_fires_separately_and_a_never_seen_key_fires_too() -> None:
    ev = HeartbeatEvaluator(rule(by="job", keys=("a", "b", "c")), T0)
    beat(ev, T0 + MIN, job="a")
    beat(ev, T0 + 2 * MIN, job="b")
    first = ev.due(T0 + 6 * MIN)
    assert [s.labels for s in first] == [{"job": "c"}]
    assert "never seen" in first[0].summary
    assert "job=c" in first[0].summary
    assert [s.labels for s in ev.due(T0 + 7 * MIN)] == [{"job": "a"}]
    assert [s.labels for s in ev.due(T0 + 8 * MIN)] == [{"job": "b"}]
    back = beat(ev, T0 + 9 * MIN, job="c")
    assert [(s.action, s.labels) for s in back] == [("resolve", {"job": "c"})]
    assert "first seen 9m after 2026-01-10 10:00 UTC" in back[0].summary


def test_values_outside_the_expected_keys_are_ignored() -> None:
    ev = HeartbeatEvaluator(rule(by="job", keys=("a",)), T0)
    assert beat(ev, T0 + MIN, job="zzz") == []
    assert beat(ev, T0 + MIN) == [], "a match without the by field is ignored"
    fired = ev.due(T0 + 6 * MIN)
    assert [s.labels for s in fired] == [{"job": "a"}]
    assert ev.next_deadline() is None


def test_without_keys_a_value_is_tracked_from_its_first_match() -> None:
    ev = HeartbeatEvaluator(rule(by="host"), T0)
    assert ev.next_deadline() is None, "nothing expected before a host was ever seen"
    beat(ev, T0 + MIN, host="db1")
    beat(ev, T0 + 3 * MIN, host="db2")
    assert [s.labels for s in ev.due(T0 + 7 * MIN)] == [{"host": "db1"}]
    assert ev.next_deadline() == T0 + 9 * MIN


def test_journald_field_can_be_the_by_key() -> None:
    ev = HeartbeatEvaluator(rule(by="_HOSTNAME", keys=("db1",)), T0)
    line = Line("s", "myapp[1]: alive", fields={"_HOSTNAME": "db1"})
    ev.observe(Hit(0, "app-alive", "match", {}), line, When.exact(T0 + MIN))
    assert ev.next_deadline() == T0 + 7 * MIN


def test_summary_template_gets_fields_and_leaves_unknown_placeholders() -> None:
    ev = HeartbeatEvaluator(
        rule(by="job", keys=("etl",), summary="{job} silent {silent_for} {nope}"), T0
    )
    beat(ev, T0, job="etl")
    fired = ev.due(T0 + 6 * MIN)
    assert fired[0].summary == "etl silent 6m {nope}"


def test_restart_continues_exactly_from_saved_state() -> None:
    ev = HeartbeatEvaluator(rule(by="job", keys=("a", "b")), T0)
    beat(ev, T0 + MIN, job="a")
    ev.due(T0 + 6 * MIN)  # b (never seen) fires
    saved = ev.state_changes()
    assert set(saved) == {"job=a", "job=b"}
    assert ev.state_changes() == {}, "changes are reported once"

    fresh = HeartbeatEvaluator(rule(by="job", keys=("a", "b")), T0 + 6 * MIN + 30 * US)
    fresh.load_state(saved)
    assert fresh.next_deadline() == T0 + 7 * MIN
    assert fresh.due(T0 + 7 * MIN - US) == []
    assert [s.labels for s in fresh.due(T0 + 7 * MIN)] == [{"job": "a"}]
    resolved = beat(fresh, T0 + 8 * MIN, job="b")
    assert [(s.action, s.labels) for s in resolved] == [("resolve", {"job": "b"})]


def test_never_seen_deadline_survives_a_restart_instead_of_starting_over() -> None:
    ev = HeartbeatEvaluator(rule(), T0)
    saved = ev.state_changes()
    fresh = HeartbeatEvaluator(rule(), T0 + 3 * MIN)
    fresh.load_state(saved)
    assert fresh.next_deadline() == T0 + 6 * MIN


def test_load_state_drops_state_from_another_by_field_and_garbage() -> None:
    ev = HeartbeatEvaluator(rule(by="host", keys=("db1",)), T0)
    ev.state_changes()
    stale = {
        "job=a": {"last": None, "since": T0.isoformat(), "firing": True, "labels": {"job": "a"}},
        "host=db1": "garbage",
        "host=old": {"since": T0.isoformat(), "labels": {"host": "old"}},
    }
    fresh = HeartbeatEvaluator(rule(by="host", keys=("db1",)), T0 + MIN)
    fresh.load_state(stale)
    changes = fresh.state_changes()
    assert changes["job=a"] is None
    assert changes["host=old"] is None
    assert changes["host=db1"] is not None and changes["host=db1"]["labels"] == {"host": "db1"}
    assert fresh.next_deadline() == T0 + 7 * MIN


def test_match_read_during_catch_up_after_downtime_prevents_a_false_alert() -> None:
    ev = HeartbeatEvaluator(rule(), T0)
    beat(ev, T0)
    saved = ev.state_changes()
    down_at, back_at = T0 + MIN, T0 + 2 * 60 * MIN
    fresh = HeartbeatEvaluator(rule(), back_at)
    fresh.load_state(saved)
    fresh.note_downtime(down_at, back_at)
    # a file line without timestamp: written some time between down_at and now
    assert beat(fresh, back_at, earliest=down_at) == []
    assert fresh.due(back_at) == []
    assert fresh.next_deadline() == back_at + 6 * MIN


def test_without_a_match_in_the_backlog_it_fires_once_saying_the_agent_was_down() -> None:
    ev = HeartbeatEvaluator(rule(), T0)
    beat(ev, T0)
    saved = ev.state_changes()
    down_at, back_at = T0 + MIN, T0 + 2 * 60 * MIN
    fresh = HeartbeatEvaluator(rule(), back_at)
    fresh.load_state(saved)
    fresh.note_downtime(down_at, back_at)
    fired = fresh.due(back_at)
    assert actions(fired) == [("fire", "")]
    assert "agent was down" in fired[0].summary
    assert "agent was down from 2026-01-10 10:01 UTC" in fired[0].description
    assert fresh.due(back_at + MIN) == []


def test_silence_already_over_when_read_late_is_an_info_not_a_fire() -> None:
    ev = HeartbeatEvaluator(rule(), T0)
    beat(ev, T0)
    ev.note_downtime(T0 + MIN, T0 + 60 * MIN)
    late = beat(ev, T0 + 30 * MIN)  # journald timestamp, well past the 10:06 deadline
    assert [s.action for s in late] == ["info"]
    assert "was silent for 30m" in late[0].summary
    assert "agent was down" in late[0].description
    assert ev.next_deadline() == T0 + 36 * MIN


# ---------------------------------------------------------------- the deadline heap


def test_deadline_heap_pops_due_keys_earliest_first_and_honours_replacements() -> None:
    heap = DeadlineHeap()
    heap.push("a", T0 + 3 * MIN)
    heap.push("b", T0 + MIN)
    heap.push("c", T0 + 2 * MIN)
    heap.push("a", T0 + 10 * MIN)  # replaces the earlier schedule of a
    heap.push("c", None)  # unschedules c
    assert heap.next_at() == T0 + MIN
    assert heap.pop_due(T0 + MIN - US) == []
    assert heap.pop_due(T0 + 5 * MIN) == ["b"]
    assert heap.next_at() == T0 + 10 * MIN
    assert len(heap) == 1
    assert heap.pop_due(T0 + 10 * MIN) == ["a"]
    assert heap.next_at() is None


def test_deadline_heap_stays_small_under_constant_rescheduling() -> None:
    heap = DeadlineHeap()
    for i in range(10_000):
        heap.push("k", T0 + i * US)
    assert len(heap._heap) < 200
    assert heap.pop_due(T0 + timedelta(days=1)) == ["k"]
