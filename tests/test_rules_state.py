"""Rule state in SQLite: what every evaluator writes stays byte for byte what earlier versions
wrote (plus the fields a version appends, ``ADDED_FIELDS``), an existing state file keeps loading,
and a restored evaluator goes on as if it had never stopped.

``tests/golden/rule_state.json`` holds, per rule kind, the ``rule_state`` rows (key → the exact
JSON text in the ``value`` column) that a scripted run leaves in the state file. They were written
by the code before the evaluators shared their state bookkeeping; regenerate them
(``golden_rows()``) only when the stored format changes on purpose, with a migration.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

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
from detector.rules.state import KeyedState
from detector.sources.base import Line
from detector.store.db import Store
from tests.helpers import T0, at

GOLDEN = Path(__file__).parent / "golden" / "rule_state.json"

Step = tuple[Any, ...]
"""("hit", seconds, role, groups, text) | ("line", seconds, text) | ("due", seconds)"""


def _rule(kind: str, **kw: Any) -> RuleConfig:
    kw.setdefault("match", "x")
    return RuleConfig(name=kind, kind=kind, sources=("s",), notify=("hook",), **kw)  # type: ignore[arg-type]


def _ips(n: int, start: int, every: int, role: str = "match") -> list[Step]:
    return [("hit", start + i * every, role, {"ip": f"10.0.0.{i % 3}"}, f"x {i}") for i in range(n)]


_NEW_LINES = [
    "Accepted password for root from 10.0.0.1 port 22 ssh2",
    "Accepted password for bob from 10.0.0.2 port 2222 ssh2",
    "session opened for user alice by cron",
    "session opened for user bob by cron",
    "kernel: disk sda failing at sector 1234",
    "kernel: disk sdb failing at sector 99",
    "sshd: fatal: cannot bind port 22",
    "cron: job backup exited with status 3",
]

CASES: dict[str, tuple[RuleConfig, list[Step], list[Step]]] = {
    "error": (
        _rule("error", group_by=("ip",), resolve_after=timedelta(minutes=1)),
        [*_ips(5, 0, 7), ("due", 100), *_ips(2, 110, 1)],
        [*_ips(2, 130, 1), ("due", 400)],
    ),
    "threshold": (
        _rule("threshold", threshold=ThresholdSpec(3, timedelta(seconds=60), ("ip",))),
        [*_ips(9, 0, 2), ("due", 30), *_ips(2, 200, 1), ("due", 250)],
        [*_ips(9, 300, 1), ("due", 1000)],
    ),
    "heartbeat": (
        _rule(
            "heartbeat",
            heartbeat=HeartbeatSpec(timedelta(minutes=5), timedelta(seconds=30), "ip"),
        ),
        [*_ips(4, 0, 10), ("due", 400), ("hit", 410, "match", {"ip": "10.0.0.2"}, "x")],
        [("due", 800), *_ips(3, 900, 1), ("due", 2000)],
    ),
    "window": (
        _rule("window", window=WindowSpec("*/10 * * * *", timedelta(minutes=5), min_count=2)),
        [
            ("hit", 30, "match", {}, "x"),
            ("hit", 60, "match", {}, "x"),
            ("due", 300),
            ("due", 660),
            ("hit", 1210, "match", {}, "x"),
            ("due", 1500),
        ],
        [("hit", 1560, "match", {}, "x"), ("hit", 1570, "match", {}, "x"), ("due", 3000)],
    ),
    "pair": (
        _rule(
            "pair",
            match=None,
            pair=PairSpec(
                r"start (?P<job>\w+)",
                r"end (?P<job>\w+)",
                timedelta(minutes=2),
                on_orphan_end="alert",
            ),
        ),
        [
            ("hit", 0, "start", {"job": "a"}, "start a"),
            ("hit", 5, "start", {"job": "b"}, "start b"),
            ("hit", 50, "end", {"job": "a"}, "end a"),
            ("hit", 60, "start", {"job": "c"}, "start c"),
            ("due", 130),
        ],
        [
            ("hit", 140, "end", {"job": "b"}, "end b"),
            ("hit", 150, "end", {"job": "z"}, "end z"),
            ("due", 400),
        ],
    ),
    "anomaly_new": (
        _rule(
            "anomaly_new",
            match=None,
            resolve_after=timedelta(minutes=5),
            anomaly_new=AnomalyNewSpec(learn=None, learn_lines=4, max_alerts_per_hour=2),
        ),
        [("line", i * 10, text) for i, text in enumerate(_NEW_LINES)]
        + [("line", 200, _NEW_LINES[4]), ("due", 500)],
        [("line", 600, "cron: job sync exited with status 1"), ("due", 4000)],
    ),
    "anomaly_rate": (
        _rule(
            "anomaly_rate",
            match=None,
            anomaly_rate=AnomalyRateSpec(
                bucket=timedelta(minutes=1), learn=timedelta(minutes=5), by="ip", min_delta=3
            ),
        ),
        [*_ips(180, 0, 10), *_ips(60, 1800, 1), ("due", 1870)],
        [*_ips(60, 1880, 1), *_ips(90, 1940, 1), ("due", 2100)],
    ),
}


def _feed(ev: Evaluator, steps: list[Step], commit: Callable[[], None]) -> list[Signal]:
    out: list[Signal] = []
    for step in steps:
        if step[0] == "hit":
            _, s, role, groups, text = step
            out += ev.observe(
                Hit(0, ev.rule.name, role, groups), Line("s", text), When.exact(at(s))
            )
        elif step[0] == "line":
            _, s, text = step
            out += ev.observe_line(Line("s", text), When.exact(at(s)))
        else:
            now = at(step[1])
            while (deadline := ev.next_deadline()) is not None and deadline <= now:
                out += ev.due(deadline)
            out += ev.due(now)
        commit()
    return out


def _committer(store: Store, ev: Evaluator) -> Callable[[], None]:
    def commit() -> None:
        store.commit(Commit(rule_state={ev.rule.name: ev.state_changes()}), T0)

    return commit


def _rows(store: Store, rule: str) -> dict[str, str]:
    """The raw ``value`` column of a rule's state rows."""
    got = store.execute("SELECT key, value FROM rule_state WHERE rule=? ORDER BY key", (rule,))
    return {str(k): str(v) for k, v in got}


def _first_run(kind: str, path: Path) -> tuple[Store, Evaluator]:
    rule, first, _ = CASES[kind]
    store = Store(path)
    store.migrate()
    ev = build_evaluator(rule, T0)
    ev.load_state({})
    _feed(ev, first, _committer(store, ev))
    return store, ev


def golden_rows(tmp: Path) -> dict[str, dict[str, str]]:
    """What ``tests/golden/rule_state.json`` holds (call it to regenerate the file)."""
    out = {}
    for kind in CASES:
        store, _ = _first_run(kind, tmp / f"{kind}.db")
        out[kind] = _rows(store, kind)
        store.close()
    return out


def _signals(signals: list[Signal]) -> list[tuple[Any, ...]]:
    return [(s.action, s.key, s.at, s.summary, s.count, dict(s.evidence)) for s in signals]


ADDED_FIELDS: dict[str, tuple[str, ...]] = {"error": ("count",)}
"""Fields this version appends to rows that the golden run writes (an error group's matches since
its alert opened, for the resolved summary). Everything else stays byte for byte; a golden row,
without them, still loads (its resolve then leaves out what it cannot know, below)."""

UNKNOWN_IN_OLD_ROWS: dict[str, str] = {"error": r" after \d+ match(es)?$"}
"""What a resolve cannot say for a key restored from a golden row: it is left out."""


def _without_added(kind: str, rows: dict[str, str]) -> dict[str, str]:
    added = ADDED_FIELDS.get(kind, ())
    out = {}
    for key, text in rows.items():
        value = json.loads(text)
        out[key] = text
        if isinstance(value, dict) and added:
            assert all(name in value for name in added), (key, "the added fields are written")
            assert list(value)[-len(added) :] == list(added), (key, "appended at the end")
            out[key] = json.dumps({k: v for k, v in value.items() if k not in added})
    return out


def _as_if_restored_from_old_rows(
    kind: str, signals: list[Signal], old_keys: set[str]
) -> list[tuple[Any, ...]]:
    """What a rule restored from the golden rows says: the same, less what they do not hold."""
    out = _signals(signals)
    unknown = UNKNOWN_IN_OLD_ROWS.get(kind)
    if unknown is None:
        return out
    return [
        (*s[:3], re.sub(unknown, "", s[3]), *s[4:]) if s[0] == "resolve" and s[1] in old_keys else s
        for s in out
    ]


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads(GOLDEN.read_text())
    return data


@pytest.mark.parametrize("kind", list(CASES))
def test_state_rows_are_byte_for_byte_what_earlier_versions_wrote(
    kind: str, tmp_path: Path, golden: dict[str, dict[str, str]]
) -> None:
    store, _ = _first_run(kind, tmp_path / "state.db")
    assert golden[kind], "the scripted run leaves state to compare"
    assert _without_added(kind, _rows(store, kind)) == golden[kind]
    store.close()


@pytest.mark.parametrize("kind", list(CASES))
def test_a_state_file_written_earlier_loads_and_the_rule_goes_on_as_if_never_stopped(
    kind: str, tmp_path: Path, golden: dict[str, dict[str, str]]
) -> None:
    rule, _, then = CASES[kind]
    # the rule that never stopped
    kept_store, kept = _first_run(kind, tmp_path / "kept.db")
    kept_signals = _feed(kept, then, _committer(kept_store, kept))
    # a fresh agent on a state file holding the golden rows, as earlier versions wrote them
    store = Store(tmp_path / "restored.db")
    store.migrate()
    for key, value in golden[kind].items():
        store.execute(
            "INSERT INTO rule_state(rule, key, value) VALUES(?,?,?)", (rule.name, key, value)
        )
    restored = build_evaluator(rule, at(CASES[kind][1][-1][1]))  # when the first run ended
    restored.load_state(store.load_rule_state(rule.name))
    rewritten = restored.state_changes()
    for key, value in rewritten.items():  # what a restart rewrites, it rewrites unchanged
        assert value is not None and json.dumps(value) == golden[kind][key], key
    store.commit(Commit(rule_state={rule.name: rewritten}), T0)
    assert _rows(store, kind) == golden[kind]
    restored_signals = _feed(restored, then, _committer(store, restored))
    assert _signals(restored_signals) == _as_if_restored_from_old_rows(
        kind, kept_signals, set(golden[kind])
    )
    assert kept_signals, "the second half of the run raises signals to compare"
    assert _rows(store, kind) == _rows(kept_store, kind)
    store.close()
    kept_store.close()


# ---------------------------------------------------------------- KeyedState itself


def test_keyed_state_writes_the_touched_keys_once_and_deletes_the_gone_ones() -> None:
    values = {"a": 1, "b": 2}
    rows = KeyedState(values, lambda key, v: {"key": key, "v": v}, "n:")
    rows.touch("a")
    del values["b"]
    rows.touch("b")
    assert rows.changes() == {"n:a": {"key": "a", "v": 1}, "n:b": None}
    assert rows.changes() == {}, "changes are reported once"


def test_keyed_state_sync_touches_only_rows_that_differ() -> None:
    rows = KeyedState[Any]({"spec": "x", "w:1": {"n": 1}}, lambda _, v: v)
    rows.sync({"spec": "x", "w:1": {"n": 2}, "w:2": {"n": 0}})
    assert rows.changes() == {"w:1": {"n": 2}, "w:2": {"n": 0}}
    rows.sync({"spec": "x", "w:2": {"n": 0}})
    assert rows.changes() == {"w:1": None}


def test_keyed_state_loads_its_own_rows_and_drops_unreadable_ones_if_asked() -> None:
    items = {"n:a": {"v": 1}, "n:b": "garbage", "n:c": {}, "other": {"v": 9}}
    kept = KeyedState[int]({}, lambda _, v: v, "n:")
    assert kept.load(items, lambda _, value: int(value["v"])) == [("a", 1)]
    assert kept.changes() == {}, "without drop_bad an unreadable row stays as it is"
    dropping = KeyedState[int]({}, lambda _, v: v, "n:")
    assert dropping.load(items, lambda _, value: int(value["v"]), drop_bad=True) == [("a", 1)]
    assert dropping.changes() == {"n:b": None, "n:c": None}
