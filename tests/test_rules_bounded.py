"""Bounded rule state: a threshold's compact window gives the answers of a list of every match
time, a batch writes only the rows it changed, and a restart goes on where the run stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.alerts import AlertBook
from detector.clock import FakeClock
from detector.config.load import parse_config
from detector.config.nodes import ConfigError
from detector.matching import Hit
from detector.model import FlapSpec, ThresholdSpec
from detector.records import Commit
from detector.rules.base import Signal, When
from detector.rules.match import MatchEvaluator
from detector.rules.state import DIGEST_KEY
from detector.rules.threshold import CHUNK, ThresholdEvaluator, _Runs
from detector.sources.base import Line
from detector.store.db import Store
from tests.helpers import T0, at, line, rule
from tests.test_selfmon import monitor_for


class _EveryTime(_Runs):
    """The window as before: one entry per match time, equal times never merged."""

    def add(self, at: datetime, cap: int) -> None:
        self.times.append(at)
        self.counts.append(1)
        self.total += 1
        if self.total > cap:
            self.total -= 1
            self.counts.popleft()
            self.times.popleft()
            self.first += 1


class _ExactEvaluator(ThresholdEvaluator):
    runs = _EveryTime


def _evaluator(
    count: int, within: float, cls: type[ThresholdEvaluator] = ThresholdEvaluator
) -> ThresholdEvaluator:
    spec = ThresholdSpec(count=count, within=timedelta(seconds=within), by=("ip",))
    return cls(rule("t", "threshold", threshold=spec), T0)


def _signals(out: list[Signal]) -> list[tuple[Any, ...]]:
    return [(s.action, s.key, s.at, s.summary, s.count, dict(s.evidence)) for s in out]


def _run(
    ev: ThresholdEvaluator,
    steps: list[tuple[float, str]],
    clock: FakeClock,
    commit: Callable[[ThresholdEvaluator], None] = lambda ev: None,
    restart_at: int | None = None,
    restart: Callable[[ThresholdEvaluator], ThresholdEvaluator] | None = None,
) -> list[Any]:
    """Feed ``(seconds after the previous hit, ip)`` hits in order, waking the evaluator at each
    deadline the clock passes, as the service does; commit after every hit. The signals, and
    after each hit the next deadline (when the key would resolve or be forgotten)."""
    out: list[Signal] = []
    deadlines: list[datetime | None] = []
    for i, (gap, ip) in enumerate(steps):
        if restart_at == i and restart is not None:
            ev = restart(ev)
        clock.advance(timedelta(seconds=gap))
        now = clock.now()
        while (deadline := ev.next_deadline()) is not None and deadline <= now:
            out += ev.due(deadline)
        out += ev.observe(Hit(0, "t", "match", {"ip": ip}), line(f"x {ip}"), When.exact(now))
        commit(ev)
        deadlines.append(ev.next_deadline())
    clock.advance(timedelta(days=1))
    while (deadline := ev.next_deadline()) is not None and deadline <= clock.now():
        out += ev.due(deadline)
    commit(ev)
    return [*_signals(out), *deadlines]


class _Rows:
    """A rule's state rows as the store would hold them (JSON text, as SQLite holds it)."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.written: list[int] = []

    def commit(self, ev: ThresholdEvaluator) -> None:
        changes = ev.state_changes()
        self.written.append(len(changes))
        for key, value in changes.items():
            if value is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = json.dumps(value)

    def restarted(self, ev: ThresholdEvaluator) -> ThresholdEvaluator:
        fresh = _evaluator(ev.spec.count, ev.spec.within.total_seconds(), type(ev))
        fresh.load_state({k: json.loads(v) for k, v in self.rows.items()})
        return fresh


_steps = st.lists(
    st.tuples(
        st.sampled_from([0, 0, 0, 0.5, 1, 3, 10, 40]),  # many equal times: the runs merge
        st.sampled_from(["a", "a", "b"]),
    ),
    min_size=1,
    max_size=400,
)


@settings(max_examples=80, deadline=None)
@given(
    steps=_steps,
    count=st.sampled_from([1, 2, 3, 7, CHUNK + 1, 2 * CHUNK + 5]),
    within=st.sampled_from([1, 5, 30, 120]),
    restart_at=st.one_of(st.none(), st.integers(0, 399)),
)
def test_the_compact_window_fires_and_resolves_when_every_match_time_would(
    steps: list[tuple[float, str]], count: int, within: float, restart_at: int | None
) -> None:
    # both restart at the same hit (a restart forgets the peak's matches: see threshold.py)
    kept = _Rows()
    exact = _run(
        _evaluator(count, within, _ExactEvaluator),
        steps,
        FakeClock(T0),
        kept.commit,
        restart_at,
        kept.restarted,
    )
    rows = _Rows()
    compact = _run(
        _evaluator(count, within), steps, FakeClock(T0), rows.commit, restart_at, rows.restarted
    )
    assert compact == exact
    if restart_at is None:  # everything expired in the end: no row is left behind
        assert rows.rows == {}


class _General(ThresholdEvaluator):
    """Every match the general way (``_observe_general``), never ``_refire``."""

    fast = False


class _Refires(ThresholdEvaluator):
    """Counts the matches that took ``_refire``."""

    refires = 0

    def _refire(self, *args: Any, **kw: Any) -> list[Signal]:
        type(self).refires += 1
        return super()._refire(*args, **kw)


def _replay(
    ev: ThresholdEvaluator,
    book: AlertBook,
    steps: list[tuple[float, str, float, bool]],
    restart_at: int | None,
) -> list[Any]:
    """Feed ``(seconds after the previous hit, ip, seconds its time lies back, journald field)``
    hits through the evaluator into the alert book, waking both at every deadline the clock
    passes and committing after every hit, with a restart (both reloaded from their rows) before
    hit ``restart_at``. Every signal, state row, notification and alert row, step by step."""
    rows: dict[str, str] = {}
    alerts: dict[str, str] = {}
    out: list[Any] = []

    def commit() -> None:
        changes = ev.state_changes()
        for key, value in changes.items():
            if value is None:
                rows.pop(key, None)
            else:
                rows[key] = json.dumps(value)
        changed, outbox = book.take()
        for fp, row in changed.items():
            if row is None:
                alerts.pop(fp, None)
            else:
                alerts[fp] = json.dumps(row)
        told = [{k: v for k, v in o.payload.items() if k != "event_id"} for o in outbox]
        out.append((sorted(changes), sorted(changed), told, ev.next_deadline()))

    def wake(until: datetime) -> None:
        while True:
            due = [d for d in (ev.next_deadline(), book.next_deadline()) if d is not None]
            if not due or min(due) > until:
                return
            now = min(due)
            signals = ev.due(now)
            out.append(_signals_all(signals))
            book.apply(signals, now)
            book.due(now)
            commit()

    now = T0
    for i, (gap, ip, back, journald) in enumerate(steps):
        if i == restart_at:
            fresh = type(ev)(ev.rule, now)
            fresh.load_state({k: json.loads(v) for k, v in rows.items()})
            ev = fresh
            book = AlertBook("h1", {ev.rule.name: ev.rule}, ["hook"])
            book.fast = fresh.fast
            book.load(json.loads(v) for v in alerts.values())
        now += timedelta(seconds=gap)
        wake(now)
        fields = {"ip": ip, "unit": "sshd"} if journald else None
        hit = Hit(0, "t", "match", {"ip": ip, "user": "u"})
        signals = ev.observe(
            hit,
            Line("s", f"x {ip}", fields=fields),
            When.exact(now - timedelta(seconds=back)),
        )
        out.append(_signals_all(signals))
        book.apply(signals, now)
        commit()
    wake(now + timedelta(days=1))
    out.append((sorted(rows.items()), sorted(alerts.items())))
    return out


def _signals_all(out: list[Signal]) -> list[tuple[Any, ...]]:
    return [
        (s.rule, s.kind, s.key, s.action, s.at, dict(s.labels), s.summary, s.description,
         s.happened, s.sample, s.count, dict(s.evidence), s.source)
        for s in out
    ]  # fmt: skip


@settings(max_examples=120, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([0, 0, 0, 0.5, 1, 3, 10, 40]),
            st.sampled_from(["a", "a", "b"]),
            st.sampled_from([0, 0, 0, 0, 2]),  # an out-of-order timestamp now and then
            st.sampled_from([False, False, True]),
        ),
        min_size=1,
        max_size=300,
    ),
    count=st.sampled_from([1, 2, 3, 7, CHUNK + 1]),
    within=st.sampled_from([1, 5, 30, 120]),
    by=st.sampled_from([("ip",), ()]),
    restart_at=st.one_of(st.none(), st.integers(0, 299)),
    timing=st.sampled_from(["", "", "for", "keep", "flap"]),
)
def test_a_match_of_a_firing_key_tells_and_stores_what_the_general_path_does(
    steps: list[tuple[float, str, float, bool]],
    count: int,
    within: float,
    by: tuple[str, ...],
    restart_at: int | None,
    timing: str,
) -> None:
    spec = ThresholdSpec(count=count, within=timedelta(seconds=within), by=by)
    r = rule(
        "t", "threshold", threshold=spec, repeat=timedelta(seconds=60),
        pending_for=timedelta(seconds=5 if timing == "for" else 0),
        keep_firing_for=timedelta(seconds=20 if timing == "keep" else 0),
        flap=FlapSpec(changes=2, within=timedelta(minutes=1)) if timing == "flap" else None,
    )  # fmt: skip
    general_book = AlertBook("h1", {"t": r}, ["hook"])
    general_book.fast = False
    fast = _replay(_Refires(r, T0), AlertBook("h1", {"t": r}, ["hook"]), steps, restart_at)
    general = _replay(_General(r, T0), general_book, steps, restart_at)
    assert fast == general


def test_the_matches_of_a_firing_key_take_refire() -> None:
    _Refires.refires = 0
    ev = _Refires(rule("t", "threshold", threshold=ThresholdSpec(3, timedelta(minutes=1))), T0)
    out = [ev.observe(Hit(0, "t", "match", {}), line("x"), When.exact(at(i))) for i in range(10)]
    assert [len(o) for o in out] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert _Refires.refires == 7  # all but the one that made it fire
    assert ev.keys[""].peak == 10 and ev.next_deadline() == at(7 + 60)


def test_a_flood_keeps_its_window_in_runs_and_writes_a_few_rows_per_batch() -> None:
    count = 100_000
    ev = _evaluator(count, 3600)
    rows = _Rows()
    clock = FakeClock(T0)
    sizes: list[int] = []
    for _batch in range(300):  # a flood: 1,000 lines per read, all at the read's time
        clock.advance(timedelta(milliseconds=500))
        now = When.exact(clock.now())
        for _ in range(1000):
            ev.observe(Hit(0, "t", "match", {"ip": "a"}), line("x"), now)
        changes = ev.state_changes()
        sizes.append(sum(len(json.dumps(v)) for v in changes.values() if v is not None))
        rows.written.append(len(changes))
        for key, value in changes.items():
            if value is None:
                rows.rows.pop(key, None)
            else:
                rows.rows[key] = json.dumps(value)
    k = ev.keys["ip=a"]
    assert len(k.times.times) <= count // 1000 + 1, "one run per read"
    assert k.size() == count
    assert max(rows.written) <= 3, "the key's row, its first chunk, a completed one"
    assert max(sizes) < 40 * CHUNK * 3, "never the whole window"
    restored = rows.restarted(ev)
    r = restored.keys["ip=a"]
    assert (list(r.times.times), list(r.times.counts)) == (
        list(k.times.times),
        list(k.times.counts),
    )
    assert restored.next_deadline() == ev.next_deadline()


def test_an_earlier_row_with_every_time_loads_and_is_split_at_its_next_change(
    tmp_path: Path,
) -> None:
    count = 3 * CHUNK
    old = [(T0 + timedelta(seconds=i)).isoformat() for i in range(count)]
    row = {"times": old, "firing": True, "labels": {"ip": "a"}}
    store = Store(tmp_path / "state.db")
    store.migrate()
    store.execute(
        "INSERT INTO rule_state(rule, key, value) VALUES(?,?,?)", ("t", "ip=a", json.dumps(row))
    )
    ev = _evaluator(count, 3600)
    ev.load_state(store.load_rule_state("t"))
    assert ev.keys["ip=a"].size() == count
    assert ev.state_changes() == {}, "loading rewrites nothing"
    now = When.exact(T0 + timedelta(seconds=count))
    out = ev.observe(Hit(0, "t", "match", {"ip": "a"}), line("x"), now)
    assert [s.action for s in out] == ["fire"]
    store.commit(Commit(rule_state={"t": ev.state_changes()}), T0)
    stored = store.load_rule_state("t")
    assert len(stored) == 4, "the key's row and three chunk rows"
    again = _evaluator(count, 3600)
    again.load_state(stored)
    assert list(again.keys["ip=a"].times.times) == list(ev.keys["ip=a"].times.times)
    assert again.next_deadline() == ev.next_deadline() == T0 + timedelta(seconds=1 + 3600)
    store.close()


# ---------------------------------------------------------------- max_keys


def _capped_threshold(cap: int) -> ThresholdEvaluator:
    spec = ThresholdSpec(count=2, within=timedelta(seconds=60), by=("ip",))
    return ThresholdEvaluator(rule("t", "threshold", threshold=spec, max_keys=cap), T0)


def test_keys_past_max_keys_fold_into_one_digest_that_resolves_below_the_cap() -> None:
    ev = _capped_threshold(3)
    out: list[Signal] = []
    for i in range(10):
        for ip in (f"10.0.0.{i}", f"10.0.0.{i}"):  # each ip twice: the first 3 fire
            out += ev.observe(Hit(0, "t", "match", {"ip": ip}), line("x"), When.exact(T0))
    assert len(ev.keys) == 3, "at most max_keys keys are kept"
    fired = [s for s in out if s.action == "fire"]
    assert {s.key for s in fired} == {"ip=10.0.0.0", "ip=10.0.0.1", "ip=10.0.0.2", DIGEST_KEY}
    digest = [s for s in fired if s.key == DIGEST_KEY]
    assert len(digest) == 7, "once per new folded key, not per hit"
    assert digest[-1].summary == "t: … and 7 more keys (max_keys: 3)"
    assert ev.cap.folded == 7
    out = []
    while (deadline := ev.next_deadline()) is not None:
        out += ev.due(deadline)
    resolved = [s for s in out if s.key == DIGEST_KEY]
    assert [s.action for s in resolved] == ["resolve"]
    assert resolved[0].happened == "back below max_keys (3) after 7 more keys"
    assert ev.cap.folded == 0
    # below the cap again: a new key is kept apart
    ev.observe(Hit(0, "t", "match", {"ip": "10.9.9.9"}), line("x"), When.exact(at(600)))
    assert "ip=10.9.9.9" in ev.keys


def test_error_groups_past_max_keys_fold_into_one_digest() -> None:
    ev = MatchEvaluator(rule("e", group_by=("ip",), max_keys=2), T0)
    out: list[Signal] = []
    for i in range(5):
        out += ev.observe(Hit(0, "e", "match", {"ip": str(i)}), line("x"), When.exact(T0))
    assert [s.key for s in out] == ["ip=0", "ip=1", DIGEST_KEY, DIGEST_KEY, DIGEST_KEY]
    assert out[-1].summary == "e: … and 3 more keys (max_keys: 2)"
    out = ev.due(T0 + timedelta(hours=1))
    assert [(s.action, s.key) for s in out][-1] == ("resolve", DIGEST_KEY)


def test_a_rule_past_max_keys_raises_an_agent_alert_that_clears_below_the_cap() -> None:
    clock = FakeClock(T0)
    sent: list[Signal] = []
    monitor = monitor_for(clock, sent)
    monitor.rules_over_cap({"ssh": (93_412, 10_000)})
    monitor.flush()
    assert [(s.action, s.key) for s in sent] == [("fire", "max_keys/ssh")]
    assert "93,412 keys past max_keys (10,000)" in sent[0].summary
    monitor.rules_over_cap({})
    monitor.flush()
    assert [(s.action, s.key) for s in sent][-1] == ("resolve", "max_keys/ssh")


def test_max_keys_is_read_per_rule_and_under_defaults(tmp_path: Path) -> None:
    text = """
webhooks: {hook: {url: "http://127.0.0.1:9/"}}
sources: {s: {file: /var/log/x.log}}
defaults: {max_keys: 500}
rules:
  - {name: a, source: s, match: "x (?P<ip>\\\\S+)", group_by: [ip]}
  - {name: b, source: s, match: "y", max_keys: 20}
"""
    cfg = parse_config(text, str(tmp_path / "rules.yaml"))
    assert {r.name: r.max_keys for r in cfg.rules} == {"a": 500, "b": 20}
    with pytest.raises(ConfigError, match="max_keys"):
        parse_config(text.replace("max_keys: 20", "max_keys: 0"), str(tmp_path / "rules.yaml"))


# ---------------------------------------------------------------- max_keys for every keyed kind


def _kinds() -> dict[str, Callable[[int], tuple[Any, Callable[[int], Hit], str]]]:
    """Per keyed evaluator kind: a factory ``cap -> (evaluator, hit of key i, digest kind)``."""
    from detector.model import AnomalyNewSpec, AnomalyRateSpec, HeartbeatSpec, PairSpec
    from detector.rules.anomaly_new import NewKindEvaluator
    from detector.rules.anomaly_rate import RateEvaluator
    from detector.rules.heartbeat import HeartbeatEvaluator
    from detector.rules.pair import PairEvaluator

    def threshold(cap: int) -> tuple[Any, Callable[[int], Hit], str]:
        spec = ThresholdSpec(count=1, within=timedelta(hours=1), by=("ip",))
        ev = ThresholdEvaluator(rule("k", "threshold", threshold=spec, max_keys=cap), T0)
        return ev, lambda i: Hit(0, "k", "match", {"ip": f"10.0.0.{i}"}), "threshold"

    def error(cap: int) -> tuple[Any, Callable[[int], Hit], str]:
        ev = MatchEvaluator(rule("k", group_by=("ip",), max_keys=cap), T0)
        return ev, lambda i: Hit(0, "k", "match", {"ip": f"10.0.0.{i}"}), "error"

    def heartbeat(cap: int) -> tuple[Any, Callable[[int], Hit], str]:
        spec = HeartbeatSpec(every=timedelta(hours=1), by="host")
        ev = HeartbeatEvaluator(rule("k", "silence", heartbeat=spec, max_keys=cap), T0)
        return ev, lambda i: Hit(0, "k", "match", {"host": f"h{i}"}), "silence"

    def pair(cap: int) -> tuple[Any, Callable[[int], Hit], str]:
        spec = PairSpec(
            start=r"start (?P<job>\S+)", end=r"end (?P<job>\S+)", within=timedelta(hours=1)
        )
        ev = PairEvaluator(rule("k", "pair", pair=spec, match=None, max_keys=cap), T0)
        return ev, lambda i: Hit(0, "k", "start", {"job": f"j{i}"}), "pair"

    def anomaly_new(cap: int) -> tuple[Any, Callable[[int], Hit], str]:
        spec = AnomalyNewSpec(learn=None, max_alerts_per_hour=10_000)
        ev = NewKindEvaluator(rule("k", "anomaly", anomaly_new=spec, max_keys=cap), T0)
        return ev, lambda i: Hit(0, "k", "match", {"n": str(i)}), "anomaly"

    def anomaly_rate(cap: int) -> tuple[Any, Callable[[int], Hit], str]:
        spec = AnomalyRateSpec(by="ip")
        ev = RateEvaluator(rule("k", "anomaly", anomaly_rate=spec, max_keys=cap), T0)
        return ev, lambda i: Hit(0, "k", "match", {"ip": f"10.0.0.{i}"}), "anomaly"

    return {
        "threshold": threshold,
        "error": error,
        "heartbeat": heartbeat,
        "pair": pair,
        "anomaly_new": anomaly_new,
        "anomaly_rate": anomaly_rate,
    }


_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]


def _feed(ev: Any, hit: Callable[[int], Hit], keys: range) -> list[Signal]:
    out: list[Signal] = []
    for i in keys:
        # anomaly_new tells kinds of lines apart by their words, not by captured groups
        text = " ".join(_WORDS[(i >> s) % len(_WORDS)] for s in (0, 2, 4, 6)) + f" kind{i}x"
        text = f"{_WORDS[i % 9]} {_WORDS[(i // 9) % 9]} {'zulu ' * (i % 5)}{text}"
        out += ev.observe(hit(i), line(text), When.exact(T0 + timedelta(seconds=1)))
    return out


@pytest.mark.parametrize("kind", list(_kinds()))
def test_every_keyed_kind_folds_past_max_keys_and_a_restart_keeps_the_count(
    kind: str, tmp_path: Path
) -> None:
    from detector.rules.state import KeyCap

    make = _kinds()[kind]
    ev, hit, alert_kind = make(3)
    out = _feed(ev, hit, range(12))
    assert isinstance(ev.cap, KeyCap)  # what Pipeline.over_cap reads for the agent alert
    folded = ev.cap.folded
    assert folded >= 5, f"{kind}: keys past the cap are counted ({folded})"
    digest = [s for s in out if s.key == DIGEST_KEY]
    if kind != "anomaly_rate":  # its "(other)" key is its digest, counted together
        assert digest and {s.kind for s in digest} == {alert_kind}
        assert digest[-1].summary == f"k: … and {folded} more keys (max_keys: 3)"
    store = Store(tmp_path / "state.db")
    store.migrate()
    store.commit(Commit(rule_state={"k": ev.state_changes()}), T0)
    again, _, _ = make(3)
    again.load_state(store.load_rule_state("k"))
    assert (again.cap.folded, again.cap.firing) == (folded, True), "the digest is exact"
    rewritten = again.state_changes()
    assert not [k for k in rewritten if k.startswith(DIGEST_KEY)], "the digest is not rewritten"
    more = _feed(again, hit, range(12))  # the same keys again: none is counted twice
    assert again.cap.folded == folded
    assert [s for s in more if s.key == DIGEST_KEY] == []
    _feed(again, hit, range(12, 14))
    assert again.cap.folded == folded + 2
    store.commit(Commit(rule_state={"k": again.state_changes()}), T0)
    third, _, _ = make(3)
    third.load_state(store.load_rule_state("k"))
    assert third.cap.folded == folded + 2
    store.close()


def test_a_resolved_digest_is_deleted_from_the_state_file(tmp_path: Path) -> None:
    ev = MatchEvaluator(rule("e", group_by=("ip",), max_keys=2), T0)
    for i in range(70):
        ev.observe(Hit(0, "e", "match", {"ip": str(i)}), line("x"), When.exact(T0))
    store = Store(tmp_path / "state.db")
    store.migrate()
    store.commit(Commit(rule_state={"e": ev.state_changes()}), T0)
    assert any(k.startswith(DIGEST_KEY) for k in store.load_rule_state("e"))
    out = ev.due(T0 + timedelta(hours=1))
    assert (out[-1].action, out[-1].key) == ("resolve", DIGEST_KEY)
    store.commit(Commit(rule_state={"e": ev.state_changes()}), T0)
    assert store.load_rule_state("e") == {}
    again = MatchEvaluator(rule("e", group_by=("ip",), max_keys=2), T0)
    again.load_state(store.load_rule_state("e"))
    assert (again.cap.folded, again.cap.firing) == (0, False)
    store.close()


def test_rows_of_an_earlier_version_without_a_digest_row_take_it_as_open_at_the_cap() -> None:
    ev = MatchEvaluator(rule("e", group_by=("ip",), max_keys=2), T0)
    rows = {
        f"ip={i}": {"last": T0.isoformat(), "labels": {"ip": str(i)}, "count": 1} for i in (1, 2)
    }
    ev.load_state(rows)
    assert ev.cap.firing and ev.cap.folded == 0
    out = ev.due(T0 + timedelta(hours=1))
    assert (out[-1].action, out[-1].key) == ("resolve", DIGEST_KEY)
