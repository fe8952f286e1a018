"""The problem registry, with exact time: grace, report, new occurrences, adoption, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from detector.problems import ADOPT_GRACE, AGENT_RULE, RENOTIFY_MIN, Problems

T0 = datetime(2026, 6, 9, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=1)


def actions(p: Problems) -> list[tuple[str, str]]:
    return [(s.action, s.key) for s in p.take_signals()]


def test_a_problem_within_its_grace_pages_nobody_and_is_not_unhealthy() -> None:
    p = Problems()
    p.raise_("config", "config", "rules.yaml invalid", T0, grace=GRACE)
    p.due(T0 + GRACE - timedelta(seconds=1))
    assert actions(p) == []
    assert p.reported() == []
    assert [x.key for x in p.pending()] == ["config"]
    assert p.next_deadline() == T0 + GRACE


def test_a_problem_cleared_within_its_grace_is_dropped_without_a_resolve() -> None:
    p = Problems()
    p.raise_("config", "config", "rules.yaml invalid", T0, grace=GRACE)
    assert p.clear("config", T0 + timedelta(seconds=30))
    p.due(T0 + 2 * GRACE)
    assert actions(p) == []
    assert p.next_deadline() is None


def test_past_its_grace_a_problem_fires_once_and_resolves_when_cleared() -> None:
    p = Problems()
    p.raise_("source/app/read", "source", "app: permission denied", T0, grace=GRACE)
    p.due(T0 + GRACE)
    [fire] = p.take_signals()
    assert (fire.rule, fire.kind, fire.action, fire.key) == (
        AGENT_RULE,
        "agent",
        "fire",
        "source/app/read",
    )
    assert fire.summary == "app: permission denied"
    assert [x.key for x in p.reported()] == ["source/app/read"]
    # the same condition still going on: no new notification
    p.raise_("source/app/read", "source", "app: permission denied", T0 + 2 * GRACE, grace=GRACE)
    p.due(T0 + 10 * GRACE)
    assert actions(p) == []
    p.clear("source/app/read", T0 + 11 * GRACE)
    assert actions(p) == [("resolve", "source/app/read")]
    assert p.reported() == []


def test_no_grace_means_reported_at_once() -> None:
    p = Problems()
    p.raise_("loop-lag", "loop", "event loop stalled for 7.0s", T0, fatal=False)
    assert actions(p) == [("fire", "loop-lag")]


def test_a_new_occurrence_notifies_again_but_not_more_often_than_the_minimum() -> None:
    p = Problems()
    p.raise_("dead-letter/ops", "dead-letter", "ops rejected one", T0, occurrence=True)
    assert actions(p) == [("fire", "dead-letter/ops")]
    p.raise_("dead-letter/ops", "dead-letter", "ops rejected two", T0 + timedelta(seconds=10),
             occurrence=True)  # fmt: skip
    p.raise_("dead-letter/ops", "dead-letter", "ops rejected three", T0 + timedelta(seconds=20),
             occurrence=True)  # fmt: skip
    assert p.take_signals() == []  # folded until RENOTIFY_MIN has passed
    assert p.next_deadline() == T0 + RENOTIFY_MIN
    p.due(T0 + RENOTIFY_MIN)
    [again] = p.take_signals()
    assert again.action == "fire" and again.renotify
    assert again.count == 2  # the two occurrences it stands for
    assert again.summary == "ops rejected three"
    assert again.evidence["occurrences"] == 3


def test_an_alert_from_before_a_restart_resolves_unless_raised_again() -> None:
    p = Problems()
    p.adopt(["delivery/ops", "source/app/read"], T0)
    assert p.reported() == []  # not known to be true any more: not unhealthy
    p.raise_("source/app/read", "source", "app: still unreadable", T0 + timedelta(seconds=5))
    assert actions(p) == []  # already firing: no second page for the same problem
    p.due(T0 + ADOPT_GRACE)
    assert actions(p) == [("resolve", "delivery/ops")]
    assert [x.key for x in p.reported()] == ["source/app/read"]


def test_an_adopted_alert_raised_as_a_new_occurrence_notifies_again() -> None:
    p = Problems()
    p.adopt(["restart"], T0)
    p.raise_("restart", "restart", "restarted after an unclean stop", T0, occurrence=True)
    [s] = p.take_signals()
    assert (s.action, s.renotify) == ("fire", True)


def test_an_event_problem_expires_by_itself() -> None:
    p = Problems()
    p.raise_("restart", "restart", "restarted after an unclean stop", T0,
             expires_after=timedelta(minutes=10))  # fmt: skip
    assert actions(p) == [("fire", "restart")]
    assert p.next_deadline() == T0 + timedelta(minutes=10)
    p.due(T0 + timedelta(minutes=10))
    assert actions(p) == [("resolve", "restart")]
    assert p.problems == {}


def test_an_explicit_raise_shortens_a_pending_grace() -> None:
    p = Problems()
    p.raise_("config", "config", "invalid", T0, grace=GRACE)
    p.raise_("config", "config", "invalid", T0 + timedelta(seconds=5))  # no grace: at once
    assert actions(p) == [("fire", "config")]


def test_on_change_is_called_for_every_change() -> None:
    seen: list[int] = []
    p = Problems(on_change=lambda: seen.append(1))
    p.raise_("a", "loop", "x", T0, grace=GRACE)
    p.clear("a", T0)
    assert len(seen) == 2
