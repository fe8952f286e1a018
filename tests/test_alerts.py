"""The alert lifecycle: open once, deduplicate, repeat on schedule, resolve, route."""

from __future__ import annotations

import inspect
from datetime import timedelta

from detector.alerts import FIELDS, Alert, AlertBook, fingerprint
from detector.problems import AGENT_RULE
from detector.rules.base import Signal
from tests.helpers import at, rule


def book(**kw: object) -> AlertBook:
    r = rule("r", repeat=timedelta(hours=1), owner="team", runbook="http://rb", **kw)  # type: ignore[arg-type]
    return AlertBook("h1", {"r": r}, ["hook", "other"], fallback=["other"])


def fire(t: float, key: str = "", sample: str = "x") -> Signal:
    return Signal(
        rule="r", kind="error", key=key, action="fire", at=at(t), summary=f"s{t}", sample=sample
    )


def test_first_fire_opens_an_alert_and_notifies_each_webhook_of_the_rule() -> None:
    b = book()
    b.apply([fire(0)], at(0))
    rows, outbox = b.take()
    assert [o.webhook for o in outbox] == ["hook"]
    p = outbox[0].payload
    assert p["notification"] == "firing" and p["status"] == "firing"
    assert p["labels"]["host"] == "h1" and p["labels"]["rule"] == "r"
    assert p["owner"] == "team" and p["runbook"] == "http://rb"
    assert p["fingerprint"] == fingerprint("r", "")
    assert list(rows) == [fingerprint("r", "")]


def test_more_fires_only_raise_the_count_and_keep_five_samples() -> None:
    b = book()
    for i in range(10):
        b.apply([fire(i, sample=f"line {i}")], at(i))
    _, outbox = b.take()
    assert len(outbox) == 1
    alert = b.firing()[0]
    assert alert.count == 10
    assert alert.samples == [f"line {i}" for i in range(5)]
    assert alert.last_seen_at == at(9)


def test_repeat_goes_out_exactly_at_the_repeat_interval() -> None:
    b = book()
    b.apply([fire(0)], at(0))
    b.take()
    assert b.next_deadline() == at(3600)
    b.due(at(3599))
    assert b.take()[1] == []
    b.due(at(3600))
    outbox = b.take()[1]
    assert [o.payload["notification"] for o in outbox] == ["repeat"]
    assert b.next_deadline() == at(7200)


def test_resolve_notifies_once_and_a_new_fire_reopens_with_a_new_event_id() -> None:
    b = book()
    b.apply([fire(0)], at(0))
    first = b.take()[1][0].event_id
    resolve = Signal(rule="r", kind="error", key="", action="resolve", at=at(5))
    b.apply([resolve, resolve], at(5))
    outbox = b.take()[1]
    assert [o.payload["notification"] for o in outbox] == ["resolved"]
    assert outbox[0].payload["resolved_at"].startswith("2026-03-01T12:00:05")
    assert b.next_deadline() is None
    b.apply([fire(10)], at(10))
    again = b.take()[1]
    assert again[0].payload["notification"] == "firing"
    assert again[0].event_id != first


def test_agent_alerts_go_to_the_fallback_webhooks() -> None:
    b = book()
    s = Signal(rule=AGENT_RULE, kind="agent", key="source:x", action="fire", at=at(0), summary="x")
    b.apply([s], at(0))
    outbox = b.take()[1]
    assert [o.webhook for o in outbox] == ["other"]
    assert outbox[0].payload["kind"] == "agent"


def test_alerts_survive_a_reload_from_rows() -> None:
    b = book()
    b.apply([fire(0)], at(0))
    rows, _ = b.take()
    b2 = book()
    b2.load(r for r in rows.values() if r is not None)
    assert b2.next_deadline() == at(3600)
    b2.apply([fire(1)], at(1))
    assert b2.take()[1] == []  # still the same open alert: no new notification
    assert b2.firing()[0].count == 2


def test_an_alert_row_holds_every_field_and_loads_back_equal_and_independent() -> None:
    b = book()
    s = fire(0, key="k", sample="first")
    s.evidence = {"window": {"from": "02:00"}}
    b.apply([s], at(0))
    alert = b.firing()[0]
    alert.resolved_at = at(5)
    row = alert.to_row()
    # every field but the repeat's schedule, which the book derives again when it loads the row
    assert set(row) == set(FIELDS) == set(inspect.signature(Alert).parameters)
    assert Alert.from_row(row) == alert
    row["labels"]["rule"] = "changed"
    row["samples"].append("more")
    row["evidence"]["window"]["from"] = "03:00"
    assert alert.labels["rule"] == "r"
    assert alert.samples == ["first"]
    assert alert.evidence == {"window": {"from": "02:00"}}


def test_info_signals_notify_without_opening_an_alert() -> None:
    b = book()
    s = Signal(rule="r", kind="window", key="k", action="info", at=at(0), summary="too early")
    b.apply([s], at(0))
    outbox = b.take()[1]
    assert outbox[0].payload["notification"] == "info"
    assert b.firing() == []


def test_resolved_alerts_are_forgotten_after_a_week_and_their_rows_deleted() -> None:
    b = book()
    b.apply([fire(0)], at(0))
    b.apply([Signal(rule="r", kind="error", key="", action="resolve", at=at(5))], at(5))
    b.take()
    b.due(at(6 * 86400))
    assert b.take()[0] == {}  # still kept
    b.due(at(8 * 86400))
    rows, outbox = b.take()
    assert rows == {fingerprint("r", ""): None} and outbox == []
    assert b.alerts == {}


def _resolved_summary(b: AlertBook, resolve: Signal) -> str:
    b.apply([resolve], resolve.at)
    outbox = b.take()[1]
    assert [o.payload["notification"] for o in outbox] == ["resolved"]
    return str(outbox[0].payload["summary"])


def test_a_resolve_says_what_happened_in_the_evaluators_words() -> None:
    b = book()
    b.apply([fire(0)], at(0))
    b.take()
    resolve = Signal(
        rule="r",
        kind="error",
        key="",
        action="resolve",
        at=at(900),
        summary="r: quiet for 15m after 1 match",
        happened="quiet for 15m after 1 match",
    )
    assert _resolved_summary(b, resolve) == "r: quiet for 15m after 1 match"


def test_a_rules_own_summary_is_kept_and_what_happened_follows_it() -> None:
    b = book(summary="disk {dev} failing")
    b.apply([fire(0)], at(0))  # its summary, "s0", stands for the rendered template
    b.take()
    resolve = Signal(
        rule="r",
        kind="error",
        key="",
        action="resolve",
        at=at(900),
        summary="r: quiet for 15m after 1 match",
        happened="quiet for 15m after 1 match",
    )
    assert _resolved_summary(b, resolve) == "s0 — quiet for 15m after 1 match"
    assert b.alerts[fingerprint("r", "")].summary == "s0 — quiet for 15m after 1 match"


def test_a_resolve_without_what_happened_keeps_its_summary_or_the_alerts() -> None:
    b = book(summary="disk {dev} failing")
    b.apply([fire(0, key="a"), fire(1, key="b")], at(1))
    b.take()
    plain = Signal(rule="r", kind="error", key="a", action="resolve", at=at(5), summary="gone")
    assert _resolved_summary(b, plain) == "gone"
    bare = Signal(rule="r", kind="error", key="b", action="resolve", at=at(5))
    assert _resolved_summary(b, bare) == "s1"
