"""Resolved notices say what happened: per rule kind, the exact summary of the ``resolve`` signal
(its key, the measured duration or count, the limit), the same after a restart between the fire
and the resolve (the state reloaded from a real SQLite file), and for rows of earlier versions,
which lack what this version counts, the same less what they cannot know."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.clock import FakeClock
from detector.matching import Hit
from detector.model import (
    AnomalyNewSpec,
    AnomalyRateSpec,
    HeartbeatSpec,
    PairSpec,
    RuleConfig,
    ThresholdSpec,
    WindowSpec,
)
from detector.records import Commit
from detector.rules.base import Evaluator, Signal, When
from detector.rules.registry import build_evaluator
from detector.rules.threshold import PEAK_CAP, ThresholdEvaluator
from detector.sources.base import Line
from detector.store.db import Store
from tests.helpers import T0, at

MIN = 60
RESTART = ("restart",)
Step = tuple[Any, ...]
"""("hit", seconds, role, groups, text) | ("line", seconds, text) | ("due", seconds) | RESTART"""


def _rule(name: str, kind: str, **kw: Any) -> RuleConfig:
    kw.setdefault("match", "x")
    return RuleConfig(name=name, kind=kind, sources=("s",), notify=("hook",), **kw)  # type: ignore[arg-type]


def _hits(seconds: list[float], **groups: str) -> list[Step]:
    return [("hit", s, "match", groups, "x") for s in seconds]


def _lines(start: float, minutes: list[int]) -> list[Step]:
    """``n`` lines spread over each minute from ``start``, then that minute's bucket closes."""
    out: list[Step] = []
    for i, n in enumerate(minutes):
        begin = start + i * MIN
        out += [("line", begin + j * MIN / n, "x") for j in range(n)]
        out.append(("due", begin + MIN))
    return out


def play(rule: RuleConfig, steps: list[Step], db: Path) -> list[Signal]:
    """Run ``steps`` like the service: the clock set to each step, every deadline woken at its
    exact time, the state committed to ``db`` after each step; at RESTART the store is closed and
    a new evaluator loads the state from the reopened file."""
    clock = FakeClock(T0)
    store = Store(db)
    store.migrate()
    ev: Evaluator = build_evaluator(rule, clock.now())
    ev.load_state({})
    out: list[Signal] = []
    for step in steps:
        if step == RESTART:
            store.close()
            store = Store(db)
            store.migrate()
            ev = build_evaluator(rule, clock.now())
            ev.load_state(store.load_rule_state(rule.name))
            continue
        clock.set(at(step[1]))
        while (deadline := ev.next_deadline()) is not None and deadline <= clock.now():
            out += ev.due(deadline)
        if step[0] == "hit":
            _, _, role, groups, text = step
            hit = Hit(0, rule.name, role, groups)
            out += ev.observe(hit, Line("s", text), When.exact(clock.now()))
        elif step[0] == "line":
            out += ev.observe_line(Line("s", step[2]), When.exact(clock.now()))
        else:
            out += ev.due(clock.now())
        store.commit(Commit(rule_state={rule.name: ev.state_changes()}), clock.now())
    store.close()
    return out


_NEW = [
    "session opened for user alice by cron",
    "session closed for user alice",
    "sshd: Accepted password for root from 10.0.0.1 port 22 ssh2",
]

SCENARIOS: dict[str, tuple[RuleConfig, list[Step], str]] = {
    "error": (
        _rule("disk-errors", "error", group_by=("dev",), resolve_after=timedelta(minutes=15)),
        [*_hits([0, 60], dev="sda"), RESTART, *_hits([120], dev="sda"), ("due", 2000)],
        "disk-errors dev=sda: quiet for 15m after 3 matches",
    ),
    "threshold": (
        _rule(
            "ssh-bruteforce", "threshold", threshold=ThresholdSpec(5, timedelta(minutes=1), ("ip",))
        ),
        [*_hits(list(range(23)), ip="203.0.113.7"), RESTART, ("due", 200)],
        "ssh-bruteforce ip=203.0.113.7: back below 5 in 1m (peak 23)",
    ),
    "heartbeat": (
        _rule("app-alive", "heartbeat", heartbeat=HeartbeatSpec(timedelta(minutes=5))),
        [*_hits([0]), ("due", 5 * MIN), RESTART, *_hits([17 * MIN])],
        "app-alive: back after 17m of silence (expected every 5m)",
    ),
    "window": (
        # 2026-03-02 02:00 Europe/Berlin (CET) is 01:00 UTC, 13 h after T0; it closes 1 h later
        _rule(
            "nightly-backup",
            "window",
            match="backup complete",
            window=WindowSpec("0 2 * * *", timedelta(hours=1), "Europe/Berlin"),
        ),
        [
            ("due", 14 * 3600),
            RESTART,
            ("hit", 14 * 3600 + 37 * MIN, "match", {}, "backup complete"),
        ],
        "nightly-backup: 'backup complete' arrived 37m late (window 02:00–03:00 Europe/Berlin)",
    ),
    "pair": (
        _rule(
            "etl-finishes",
            "pair",
            match=None,
            pair=PairSpec(
                r"etl (?P<job>\w+) started", r"etl (?P<job>\w+) finished", timedelta(minutes=30)
            ),
        ),
        [
            ("hit", 0, "start", {"job": "nightly"}, "etl nightly started"),
            ("due", 30 * MIN),
            RESTART,
            ("hit", 41 * MIN, "end", {"job": "nightly"}, "etl nightly finished"),
        ],
        "etl-finishes job=nightly: finished after 41m (limit 30m)",
    ),
    "anomaly_new": (
        _rule(
            "new-errors",
            "anomaly_new",
            match=None,
            resolve_after=timedelta(minutes=15),
            anomaly_new=AnomalyNewSpec(learn=None, learn_lines=3),
        ),
        [
            *[("line", i, text) for i, text in enumerate(_NEW)],
            ("line", 100, "kernel: disk sda failing at sector 1234"),
            ("line", 200, "kernel: disk sda failing at sector 99"),
            RESTART,
            ("line", 300, "kernel: disk sda failing at sector 7"),
            ("due", 3000),
        ],
        "new-errors: new kind of line quiet for 15m after 3 lines: kernel: disk sda failing at "
        "sector <NUM>",
    ),
    "anomaly_rate": (
        _rule(
            "api-rate",
            "anomaly_rate",
            match=None,
            anomaly_rate=AnomalyRateSpec(bucket=timedelta(minutes=1), learn=timedelta(minutes=5)),
        ),
        # 30 calm minutes, then 40, 50 (fires), 70 lines a minute, then calm again
        [*_lines(0, [6] * 30 + [40, 50]), RESTART, *_lines(32 * MIN, [70, 6, 6])],
        "api-rate: line rate back to normal after a 3m burst: 6 lines per 1m "
        "(usual 7 ± 3, peak 70)",
    ),
}


def _resolves(signals: list[Signal]) -> list[str]:
    return [s.summary for s in signals if s.action == "resolve"]


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_the_resolve_says_what_happened(kind: str, tmp_path: Path) -> None:
    rule, steps, expected = SCENARIOS[kind]
    straight = play(rule, [s for s in steps if s != RESTART], tmp_path / "straight.db")
    assert [s.action for s in straight if s.action != "info"][:1] == ["fire"]
    assert _resolves(straight) == [expected]
    resolve = next(s for s in straight if s.action == "resolve")
    assert resolve.summary.endswith(": " + resolve.happened), "happened is the summary's tail"


@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_a_restart_between_fire_and_resolve_keeps_what_the_resolve_says(
    kind: str, tmp_path: Path
) -> None:
    rule, steps, expected = SCENARIOS[kind]
    fired_before = play(rule, steps[: steps.index(RESTART)], tmp_path / "before.db")
    assert "fire" in [s.action for s in fired_before], "the restart falls while it fires"
    assert _resolves(play(rule, steps, tmp_path / "restarted.db")) == [expected]


# ---------------------------------------------------------------- the other cases, per kind


def test_a_threshold_peak_is_the_busiest_window_not_the_total(tmp_path: Path) -> None:
    rule = _rule("ssh-bruteforce", "threshold", threshold=ThresholdSpec(5, timedelta(minutes=1)))
    # one match every 10 s for 200 s: 21 in all, at most 6 within any minute
    signals = play(rule, [*_hits(list(range(0, 201, 10))), ("due", 400)], tmp_path / "s.db")
    assert _resolves(signals) == ["ssh-bruteforce: back below 5 in 1m (peak 6)"]
    assert next(s for s in signals if s.action == "resolve").evidence == {"peak": 6}


def test_a_threshold_peak_beyond_the_cap_says_so() -> None:
    ev = ThresholdEvaluator(
        _rule("flood", "threshold", threshold=ThresholdSpec(2, timedelta(minutes=1))), T0
    )
    for i in range(PEAK_CAP + 5):
        ev.observe(Hit(0, "flood", "match", {}), Line("s", "x"), When.exact(at(i / 1000)))
    assert _resolves(ev.due(at(100))) == ["flood: back below 2 in 1m (peak 10000+)"]


def test_a_firing_threshold_row_of_an_earlier_version_resolves_without_a_peak() -> None:
    rule = _rule(
        "ssh-bruteforce", "threshold", threshold=ThresholdSpec(5, timedelta(minutes=1), ("ip",))
    )
    ev = build_evaluator(rule, at(10))
    times = [at(s).isoformat() for s in range(5)]
    ev.load_state(
        {"ip=203.0.113.7": {"times": times, "firing": True, "labels": {"ip": "203.0.113.7"}}}
    )
    ev.observe(
        Hit(0, rule.name, "match", {"ip": "203.0.113.7"}), Line("s", "x"), When.exact(at(10))
    )
    assert _resolves(ev.due(at(100))) == ["ssh-bruteforce ip=203.0.113.7: back below 5 in 1m"]


def test_an_error_rule_counts_one_match_and_an_earlier_row_without_a_count(tmp_path: Path) -> None:
    rule = _rule("disk-errors", "error", resolve_after=timedelta(minutes=15))
    assert _resolves(play(rule, [*_hits([0]), ("due", 2000)], tmp_path / "s.db")) == [
        "disk-errors: quiet for 15m after 1 match"
    ]
    ev = build_evaluator(rule, at(0))
    ev.load_state({"": {"last": at(0).isoformat(), "labels": {}}})
    assert _resolves(ev.due(at(900))) == ["disk-errors: quiet for 15m"]


def _backup(**spec: Any) -> RuleConfig:
    fail = spec.pop("fail", None)
    spec.setdefault("within", timedelta(hours=1))
    spec.setdefault("timezone", "Europe/Berlin")
    return _rule(
        "nightly-backup", "window", match="backup complete", fail=fail, window=WindowSpec(**spec)
    )


OPEN = 13 * 3600
"""2026-03-02 02:00 Europe/Berlin, the first window after T0, in seconds after T0."""


def test_a_window_that_failed_resolves_saying_how_long_after_the_failure(tmp_path: Path) -> None:
    steps: list[Step] = [
        ("hit", OPEN + 14 * MIN, "fail", {}, "backup failed"),
        ("hit", OPEN + 40 * MIN, "match", {}, "backup complete"),
    ]
    rule = _backup(cron="0 2 * * *", fail="backup failed")
    assert _resolves(play(rule, steps, tmp_path / "s.db")) == [
        "nightly-backup: succeeded at 02:40, 26m after the failure at 02:14 "
        "(window 02:00–03:00 Europe/Berlin)"
    ]


def test_a_missed_window_resolves_when_the_next_one_is_on_time(tmp_path: Path) -> None:
    steps: list[Step] = [
        ("due", OPEN + 3600),
        ("hit", OPEN + 86400 + 5 * MIN, "match", {}, "backup complete"),
    ]
    assert _resolves(play(_backup(cron="0 2 * * *"), steps, tmp_path / "s.db")) == [
        "nightly-backup: 'backup complete' on time again at 02:05 "
        "(window 02:00–03:00 Europe/Berlin)"
    ]


def test_a_window_across_the_fall_back_hour_names_both_offsets() -> None:
    # 2026-10-25: 02:30 Europe/Berlin opens once, in CEST (00:30 UTC); an hour later is 02:30 CET
    start = T0.replace(month=10, day=24, hour=23)
    ev = build_evaluator(_backup(cron="30 2 * * *"), start)
    close = T0.replace(month=10, day=25, hour=1, minute=30)
    assert [s.action for s in ev.due(close)] == ["fire"]
    late = ev.observe(
        Hit(0, "nightly-backup", "match", {}),
        Line("s", "backup complete"),
        When.exact(close + timedelta(minutes=10)),
    )
    assert _resolves(late) == [
        "nightly-backup: 'backup complete' arrived 10m late (window 02:30 CEST–02:30 CET "
        "Europe/Berlin)"
    ]


def test_a_key_never_seen_resolves_saying_when_it_was_first_seen(tmp_path: Path) -> None:
    spec = HeartbeatSpec(timedelta(minutes=5), timedelta(0), "job", ("c",))
    rule = _rule("app-alive", "heartbeat", heartbeat=spec)
    steps: list[Step] = [("due", 5 * MIN), *_hits([9 * MIN], job="c")]
    assert _resolves(play(rule, steps, tmp_path / "s.db")) == [
        "app-alive job=c: first seen 9m after 2026-03-01 12:00 UTC (expected every 5m)"
    ]


def test_a_rate_drop_resolves_with_its_length_and_lowest_bucket(tmp_path: Path) -> None:
    rule = _rule(
        "api-rate",
        "anomaly_rate",
        match=None,
        anomaly_rate=AnomalyRateSpec(
            bucket=timedelta(minutes=1), learn=timedelta(minutes=5), by="source"
        ),
    )
    # fires at the end of the second low bucket; the drop began with the first
    steps = _lines(0, [20] * 30 + [2, 0, 1, 20])
    assert _resolves(play(rule, steps, tmp_path / "s.db")) == [
        "api-rate source=s: line rate back to normal after a 3m drop: 20 lines per 1m "
        "(usual 18 ± 5, low 0)"
    ]
