"""Silences, routes, flap control and maintenance together, and what ``detector status`` and
``detector check`` say about them: a silenced alert routed to two webhooks is sent to both when
the silence lifts, a flap under a silence is one notice after it, maintenance holds a ``for:``
alert that is pending, ``status`` shows pending, clearing and flapping alerts with their times,
and ``check`` warns about a ``for:`` that an error rule's ``resolve_after`` makes unreachable.
The pipeline on a FakeClock, each step committed to a real SQLite file; no sleeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detector.clock import FakeClock
from detector.config import parse_config
from detector.pipeline import Pipeline
from detector.records import Checkpoint
from detector.rules.base import When
from detector.silences import LabelMatcher, Silence
from detector.sources.base import Batch, Line
from detector.status import phase, render
from detector.store.db import Store
from tests.helpers import T0, at

MIN = 60

HEAD = """\
version: 1
agent: {state: /nonexistent/state.db, host: db1}
defaults: {owner: ops, runbook: https://runbooks.example/x}
sources:
  s: {file: /nonexistent/s.log}
webhooks:
  chat: {url: "http://127.0.0.1:9/chat", format: slack}
  pager: {url: "http://127.0.0.1:9/pager", format: json}
  mail: {url: "http://127.0.0.1:9/mail", format: json}
routes:
  - {match: {severity: critical}, webhooks: [pager], continue: true}
  - {match: {team: db}, webhooks: [chat]}
  - {webhooks: [mail]}
"""


class Agentish:
    """The service's loop without the service (as ``test_flap.py``): lines at the clock's
    time, deadlines at theirs, one commit per step to a real state file."""

    def __init__(self, body: str, db: Path) -> None:
        self.config = parse_config(HEAD + body)
        self.clock = FakeClock(T0)
        self.store = Store(db)
        self.pipeline = Pipeline(self.config, T0, self.store.load_rule_state)
        self.sent: list[tuple[float, str, str, str]] = []
        """(seconds, webhook, notification, summary) of every outbox row."""

    def _commit(self, commit: Any) -> None:
        self.store.commit(commit, self.clock.now())
        for o in commit.outbox:
            secs = (o.created_at - T0).total_seconds()
            self.sent.append((secs, o.webhook, o.payload["notification"], o.payload["summary"]))

    def run_to(self, seconds: float) -> None:
        until = at(seconds)
        while (d := self.pipeline.next_deadline()) is not None and d <= until:
            self.clock.set(max(d, self.clock.now()))
            self._commit(self.pipeline.tick(self.clock.now()))
        self.clock.set(until)

    def line(self, seconds: float, text: str) -> None:
        self.run_to(seconds)
        now = self.clock.now()
        batch = Batch("s", [Line("s", text)], [Checkpoint("s", "1:1", {"offset": seconds})])
        self._commit(self.pipeline.process(batch, lambda _ln: When.exact(now), now))

    def silence(self, seconds: float, until: float, *matchers: str) -> None:
        self.run_to(seconds)
        s = Silence(
            "abc123",
            tuple(LabelMatcher.parse(m) for m in matchers),
            at(seconds),
            at(until),
            "swap disk",
            "me",
            at(seconds),
        )
        self._commit(self.pipeline.set_silences([s], self.clock.now()))

    def since(self, seconds: float) -> list[tuple[float, str, str, str]]:
        return [s for s in self.sent if s[0] >= seconds]


DB_RULE = """\
rules:
  - name: db-down
    source: s
    match: 'ERROR db'
    severity: critical
    labels: {team: db}
    resolve_after: 10m
    repeat: never
"""


def test_a_silenced_alert_routed_to_two_webhooks_goes_to_both_when_the_silence_lifts(
    tmp_path: Path,
) -> None:
    a = Agentish(DB_RULE, tmp_path / "s.db")
    a.silence(0, 30 * MIN, "team=db")
    for t in range(MIN, 30 * MIN, 5 * MIN):  # 1m … 26m: it keeps firing
        a.line(t, "ERROR db connection refused")
    assert a.sent == []  # recorded, not told
    a.run_to(31 * MIN)  # the silence ended at 30m; the alert still fires
    assert sorted((w, n) for _s, w, n, _sum in a.sent) == [
        ("chat", "firing"),
        ("pager", "firing"),
    ]
    assert {s for s, *_ in a.sent} == {30 * MIN}  # at the silence's end, not a repeat later
    a.run_to(40 * MIN)  # quiet for 10m after the last match at 26m: resolved at 36m, to both
    assert sorted((s, w, n) for s, w, n, _sum in a.since(31 * MIN)) == [
        (36 * MIN, "chat", "resolved"),
        (36 * MIN, "pager", "resolved"),
    ]


def test_resolve_held_by_a_silence_is_sent_to_both_routes_after_it(tmp_path: Path) -> None:
    a = Agentish(DB_RULE, tmp_path / "s.db")
    a.line(0, "ERROR db connection refused")  # told at once, to pager and chat
    assert sorted(w for _s, w, _n, _sum in a.sent) == ["chat", "pager"]
    a.silence(MIN, 30 * MIN, "team=db")
    a.run_to(31 * MIN)  # resolved at 10m inside the silence: the resolve is sent at 30m
    after = sorted((s, w, n) for s, w, n, _sum in a.since(MIN))
    assert after == [(30 * MIN, "chat", "resolved"), (30 * MIN, "pager", "resolved")]


FLAPPY = """\
rules:
  - name: flappy
    source: s
    match: 'ERROR flap'
    resolve_after: 1m
    repeat: never
    flap: {changes: 3, within: 1h}
"""


def test_an_alert_flapping_under_a_silence_sends_one_notice_after_it(tmp_path: Path) -> None:
    a = Agentish(FLAPPY, tmp_path / "s.db")
    a.silence(0, 30 * MIN, "rule=flappy")
    for t in (1, 5, 9, 13, 17):  # fires and resolves five times inside the silence
        a.line(t * MIN, "ERROR flap")
    a.run_to(29 * MIN)
    assert a.sent == []
    a.line(29 * MIN + 30, "ERROR flap")  # still firing when the silence lifts at 30m
    a.run_to(31 * MIN)
    told = [(s, w, n, summary) for s, w, n, summary in a.sent]
    # one notice that it flaps and fires now, not a burst of the changes it made meanwhile
    assert told == [
        (30 * MIN, "mail", "flapping", "flapping: 11 changes in 1h — flappy: ERROR flap")
    ]
    a.run_to(2 * 60 * MIN)  # no change for the flap window after 30m30s: settled, once
    assert [(n, summary.split(" — ")[0]) for _s, _w, n, summary in a.since(31 * MIN)] == [
        ("settled", "settled resolved after 12 changes in 1h24m30s")  # flapping since 6m
    ]


FOR_RULE = """\
maintenance:
  - {start: "2026-03-01T12:10:00+00:00", end: "2026-03-01T12:40:00+00:00", rules: [slow]}
rules:
  - name: slow
    source: s
    match: 'ERROR slow'
    resolve_after: 5m
    for: 15m
    repeat: never
"""


def test_maintenance_holds_a_pending_for_alert_and_tells_it_after_if_it_still_fires(
    tmp_path: Path,
) -> None:
    a = Agentish(FOR_RULE, tmp_path / "s.db")
    for t in range(0, 50 * MIN, 2 * MIN):  # errors every 2m from 12:00 to 12:48
        a.line(t, "ERROR slow")
        if t == 5 * MIN:
            rows = Store(tmp_path / "s.db").load_alerts()
            assert [r["status"] for r in rows] == ["pending"]
    a.run_to(50 * MIN)
    # pending 12:00 → fires 12:15, inside the window (12:10–12:40): held, told at 12:40
    assert [(s, w, n) for s, w, n, _sum in a.sent] == [(40 * MIN, "mail", "firing")]


def test_maintenance_does_not_tell_a_for_alert_that_cleared_inside_it(tmp_path: Path) -> None:
    a = Agentish(FOR_RULE, tmp_path / "s.db")
    for t in range(0, 24 * MIN, 2 * MIN):  # 12:00–12:22, fires at 12:15, resolves at 12:27
        a.line(t, "ERROR slow")
    a.run_to(60 * MIN)
    assert a.sent == []


# ---------------------------------------------------------------- detector status


STATUS_RULES = """\
rules:
  - name: pending-one
    source: s
    match: 'ERROR p'
    resolve_after: 30m
    for: 10m
  - name: clearing-one
    source: s
    match: 'ERROR c'
    resolve_after: 1m
    keep_firing_for: 20m
  - name: flapping-one
    source: s
    match: 'ERROR f'
    resolve_after: 1m
    flap: {changes: 2, within: 1h}
"""


def test_status_shows_pending_clearing_and_flapping_alerts_with_their_times(
    tmp_path: Path,
) -> None:
    a = Agentish(STATUS_RULES, tmp_path / "s.db")
    a.line(0, "ERROR c")
    for t in (0, 3, 6):
        a.line(t * MIN, "ERROR f")
    a.line(7 * MIN, "ERROR p")
    a.run_to(8 * MIN)
    snap = Store(tmp_path / "s.db").snapshot()
    snap["agent_status"] = {"at": at(8 * MIN).isoformat()}
    text = render(snap, [(r.name, r.kind) for r in a.config.rules])
    assert "PENDING ALERTS (for:)" in text
    assert "pending-one" in text and "fires at 2026-03-01 12:17 UTC (in 9m) if still open" in text
    assert "condition cleared: resolves at 2026-03-01 12:21 UTC (in 13m)" in text
    assert "flapping since 2026-03-01 12:" in text
    phases = {r["rule"]: phase(r) for r in snap["alerts"]}
    assert phases["pending-one"] == {
        "phase": "pending",
        "next_change_at": "2026-03-01T12:17:00.000Z",
    }
    assert phases["clearing-one"]["phase"] == "clearing"
    assert phases["flapping-one"]["phase"] == "flapping"


# ---------------------------------------------------------------- detector check


def test_check_warns_when_for_is_not_shorter_than_resolve_after() -> None:
    cfg = parse_config(
        HEAD
        + """\
rules:
  - name: never-fires
    source: s
    match: 'ERROR'
    for: 20m
    resolve_after: 15m
  - name: fine
    source: s
    match: 'WARN'
    for: 5m
"""
    )
    found = [w for w in cfg.warnings if "never-fires" in w]
    assert len(found) == 1, cfg.warnings
    assert (
        "rules.yaml:" in found[0] and "for: 20m is not shorter than resolve_after: 15m" in found[0]
    )
    assert "raise resolve_after (e.g. resolve_after: 40m)" in found[0]
    assert not [w for w in cfg.warnings if "'fine'" in w]
