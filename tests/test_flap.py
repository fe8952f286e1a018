"""Flap control: ``for:`` (pending until the condition held), ``keep_firing_for:`` (still firing a
while after it cleared) and ``flap:`` (a flapping alert's notifications folded into one until it
settles). Driven like the service: the pipeline on a FakeClock, every deadline woken at its exact
time, each step committed to a real SQLite file, which a restart reopens. No sleeps."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from detector.clock import FakeClock
from detector.config import parse_config
from detector.model import FlapSpec, RuleConfig
from detector.pipeline import Pipeline
from detector.records import Checkpoint
from detector.replay import replay
from detector.rules.base import When
from detector.sources.base import Batch
from detector.store.db import Store
from tests.helpers import T0, at, config, line, rule

MIN = 60


class Agentish:
    """The service's loop, without the service: lines at the clock's time, deadlines at theirs,
    one commit per step to a real state file; ``restart`` reopens it with a new pipeline."""

    def __init__(self, r: RuleConfig, db: Path) -> None:
        self.config = config(r)
        self.db = db
        self.clock = FakeClock(T0)
        self.sent: list[tuple[float, str, str, str]] = []
        """(seconds, notification, status, summary) of every outbox row, in order."""
        self._open()

    def _open(self) -> None:
        self.store = Store(self.db)
        self.pipeline = Pipeline(
            self.config, self.clock.now(), self.store.load_rule_state, self.store.load_alerts()
        )

    def restart(self) -> None:
        self.store.close()
        self._open()

    def _commit(self, commit: Any) -> None:
        self.store.commit(commit, self.clock.now())
        for o in commit.outbox:
            p = o.payload
            secs = (o.created_at - T0).total_seconds()
            self.sent.append((secs, p["notification"], p["status"], p["summary"]))

    def run_to(self, seconds: float) -> None:
        """Wake at every deadline up to ``seconds``, at its exact time, then set the clock."""
        until = at(seconds)
        while (d := self.pipeline.next_deadline()) is not None and d <= until:
            self.clock.set(max(d, self.clock.now()))
            self._commit(self.pipeline.tick(self.clock.now()))
        self.clock.set(until)

    def error(self, seconds: float) -> None:
        self.run_to(seconds)
        batch = Batch("s", [line("ERROR x")], [Checkpoint("s", "1:1", {"offset": seconds})])
        now = self.clock.now()
        self._commit(self.pipeline.process(batch, lambda _ln: When.exact(now), now))

    def alert_rows(self) -> list[dict[str, Any]]:
        return Store(self.db).load_alerts()


def err_rule(**kw: Any) -> RuleConfig:
    return rule("e", resolve_after=timedelta(minutes=1), repeat=None, **kw)


def test_for_fires_only_once_the_alert_has_held_that_long(tmp_path: Path) -> None:
    a = Agentish(err_rule(pending_for=timedelta(minutes=5)), tmp_path / "s.db")
    for t in range(0, 8 * MIN, 30):  # a match every 30 s: the alert stays open
        a.error(t)
        if t < 5 * MIN:
            assert a.sent == [], t
            assert [r["status"] for r in a.alert_rows()] == ["pending"]
    assert a.sent[0][:3] == (5 * MIN, "firing", "firing")  # the first match + for:, exactly
    assert len(a.sent) == 1
    a.run_to(20 * MIN)
    assert [s[:2] for s in a.sent] == [(300, "firing"), (8 * MIN - 30 + MIN, "resolved")]


def test_for_sends_nothing_when_the_condition_ends_before(tmp_path: Path) -> None:
    a = Agentish(err_rule(pending_for=timedelta(minutes=5)), tmp_path / "s.db")
    a.error(0)
    a.error(2 * MIN)  # open until 3m (resolve_after 1m): gone before 2m + ... and 0 + 5m
    a.run_to(2 * 3600)
    assert a.sent == []
    assert a.alert_rows() == []
    assert a.pipeline.next_deadline() is None


def test_a_pending_for_survives_a_restart_and_fires_at_its_time(tmp_path: Path) -> None:
    a = Agentish(err_rule(pending_for=timedelta(minutes=5)), tmp_path / "s.db")
    a.error(0)
    a.error(50)
    a.restart()  # from the state file alone
    assert a.pipeline.next_deadline() == at(50 + MIN)  # the error rule's own resolve first
    for t in (100, 150, 200, 250):
        a.error(t)
    a.restart()
    a.run_to(299)
    assert a.sent == []
    a.run_to(300)
    assert a.sent == [(300, "firing", "firing", "e: ERROR x")]


def test_keep_firing_for_holds_the_alert_and_a_refire_within_sends_nothing(
    tmp_path: Path,
) -> None:
    a = Agentish(err_rule(keep_firing_for=timedelta(minutes=10)), tmp_path / "s.db")
    a.error(0)
    a.run_to(5 * MIN)  # cleared at 1m, still firing
    assert [r["status"] for r in a.alert_rows()] == ["firing"]
    a.error(5 * MIN)  # back within keep_firing_for: nothing new
    a.restart()  # the countdown of the next clear survives a restart too
    a.run_to(6 * MIN + 10 * MIN - 1)
    assert [s[1] for s in a.sent] == ["firing"]
    a.run_to(6 * MIN + 10 * MIN)  # cleared at 6m, + 10m
    assert [s[:3] for s in a.sent] == [(0, "firing", "firing"), (960, "resolved", "resolved")]
    resolved = a.alert_rows()[0]
    assert resolved["resolved_at"].startswith("2026-03-01T12:16:00")
    assert "quiet for 1m" in resolved["summary"]


def test_a_flapping_alert_is_told_once_then_once_more_when_it_settles(tmp_path: Path) -> None:
    a = Agentish(err_rule(flap=FlapSpec(changes=4, within=timedelta(hours=1))), tmp_path / "s.db")
    for t in range(0, 10 * MIN, 2 * MIN):  # fires at t, resolves at t + 1m: 10 changes
        a.error(t)
    a.run_to(10 * MIN)
    assert [s[:3] for s in a.sent] == [
        (0, "firing", "firing"),
        (60, "resolved", "resolved"),
        (120, "firing", "firing"),
        (180, "resolved", "resolved"),
        (240, "flapping", "firing"),  # the 5th change: folded into one notice
    ]
    assert a.sent[-1][3].startswith("flapping: 5 changes in 1h — e: ERROR x")
    a.restart()
    a.run_to(9 * MIN + 3600 - 1)
    assert len(a.sent) == 5
    a.run_to(9 * MIN + 3600)  # no change for 1h since the last one (resolved at 9m)
    assert a.sent[-1][:3] == (9 * MIN + 3600, "settled", "resolved")
    assert a.sent[-1][3].startswith("settled resolved after 10 changes in 1h5m — ")
    a.error(3 * 3600)  # calm again: told as usual
    assert a.sent[-1][:2] == (3 * 3600, "firing")
    assert len(a.sent) == 7


def test_flap_counts_what_for_and_keep_firing_for_let_through(tmp_path: Path) -> None:
    r = err_rule(
        keep_firing_for=timedelta(minutes=2),
        flap=FlapSpec(changes=2, within=timedelta(hours=1)),
    )
    a = Agentish(r, tmp_path / "s.db")
    for t in range(0, 10 * MIN, 2 * MIN):  # each clear is back within keep_firing_for
        a.error(t)
    a.run_to(3 * 3600)
    assert [s[:2] for s in a.sent] == [(0, "firing"), (8 * MIN + MIN + 2 * MIN, "resolved")]


RULES = """\
version: 1
sources:
  app: {file: /var/log/app.log}
defaults:
  for: 3m
  flap: {changes: 4, within: 1h}
rules:
  - name: held
    source: app
    match: 'ERROR'
    resolve_after: 2m
    repeat: never
  - name: kept
    source: app
    match: 'WARN'
    for: 0s
    keep_firing_for: 5m
    flap: false
"""


def test_the_keys_load_with_defaults_and_per_rule_overrides() -> None:
    cfg = parse_config(RULES)
    held, kept = cfg.rules
    assert (held.pending_for, held.keep_firing_for, held.flap) == (
        timedelta(minutes=3),
        timedelta(0),
        FlapSpec(4, timedelta(hours=1)),
    )
    assert (kept.pending_for, kept.keep_firing_for, kept.flap) == (
        timedelta(0),
        timedelta(minutes=5),
        None,
    )


def test_detector_test_honours_for_with_its_simulated_clock(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    # 12:00 one error (open until 12:02, gone before 12:03); 12:10 to 12:14 an error a minute
    log.write_text(
        "2026-03-01T12:00:00Z ERROR a\n"
        + "".join(f"2026-03-01T12:1{m}:00Z ERROR b\n" for m in range(5))
    )
    cfg = parse_config(RULES.replace("/var/log/app.log", str(log)))
    result = replay(cfg, [(str(log), "app")])
    fired = [(n["rule"], n["notification"], n["created_at"]) for n in result.notifications]
    assert fired == [("held", "firing", "2026-03-01T12:13:00.000Z")]
