"""The compact forms that keep per-key state light (issue 20.6) say exactly what the plain forms
said: an error rule's group labels read back from its key, rule-state rows decoded as they are
read, alert rows loaded in compressed chunks, the deadline heap's buckets, an alert's labels
rebuilt from its key. Each against a plain model, through a real SQLite file where a restart is
involved."""

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detector.alerts import Alert, AlertBook, KeyLabels, LabelLayout, compact_labels, fingerprint
from detector.config.load import parse_config
from detector.matching import Hit
from detector.model import RuleConfig
from detector.pipeline import Pipeline
from detector.records import Commit
from detector.rules.base import Signal, When
from detector.rules.common import KEY_SEP, group_key, key_text, plural
from detector.rules.match import MatchEvaluator
from detector.rules.state import DIGEST_KEY, KeyCap
from detector.schedule import DeadlineHeap, KeyedDeadlines
from detector.sources.base import Line
from detector.store.db import ALERT_CHUNK, StateRows, Store, alert_rows
from detector.store.runs import all_rule_state
from tests import helpers as rules
from tests.helpers import T0, at

QUIET = timedelta(minutes=15)
FIXTURE = HealthCheck.function_scoped_fixture  # tmp_path_factory: a fresh directory per example
# label values that a key's text garbles or nearly does: the separator, "=", empty, non-ASCII
VALUES = st.text(alphabet=["a", "b", "=", "\x1f", "é", " ", "\n"], max_size=4)
NAMES = st.lists(
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=3),
    min_size=1,
    max_size=3,
    unique=True,
)


def _rule(names: tuple[str, ...]) -> RuleConfig:
    return RuleConfig(
        name="e", kind="error", sources=("s",), notify=("hook",), match="x",
        group_by=names, resolve_after=QUIET, max_keys=1000,
    )  # fmt: skip


def _fresh(rule: RuleConfig, store: Store | None) -> MatchEvaluator:
    ev = MatchEvaluator(rule, T0)
    ev.load_state(store.load_rule_state(rule.name) if store is not None else {})
    return ev


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=NAMES,
    hits=st.lists(st.lists(VALUES, min_size=3, max_size=3), min_size=1, max_size=12),
    restart_after=st.integers(0, 12),
)
def test_an_error_rules_groups_resolve_with_their_labels_across_a_restart(
    tmp_path_factory: Any, names: list[str], hits: list[list[str]], restart_after: int
) -> None:
    """Whatever the values (even ones holding the key's separator), each group resolves with the
    labels of its last match, restarted or not, and its state row says the same labels."""
    rule = _rule(tuple(names))
    db = tmp_path_factory.mktemp("s") / "state.db"
    store = Store(db)
    store.migrate()
    ev = _fresh(rule, None)
    expected: dict[str, dict[str, str]] = {}
    counts: dict[str, int] = {}
    for i, values in enumerate(hits):
        if i == restart_after:
            store.close()
            store = Store(db)
            ev = _fresh(rule, store)
        groups = dict(zip(names, values, strict=False))
        key, labels = group_key(rule.group_by, groups)
        expected[key] = labels
        counts[key] = counts.get(key, 0) + 1
        ev.observe(Hit(0, "e", "match", groups), Line("s", "x"), When.exact(at(i)))
        changes = ev.state_changes()
        row = changes[key]
        assert row is not None and row["labels"] == labels
        store.commit(Commit(rule_state={"e": changes}), at(i))
    store.close()
    store = Store(db)
    ev = _fresh(rule, store)
    resolved: list[Signal] = ev.due(at(len(hits)) + QUIET)
    assert {s.key: s.summary for s in resolved} == {
        key: f"e{key_text(labels)}: quiet for 15m after {plural(counts[key], 'match')}"
        for key, labels in expected.items()
    }
    store.close()


def test_a_row_whose_labels_differ_from_its_key_keeps_them() -> None:
    """A row of an earlier rule definition (its labels not what the key says) resolves with the
    labels it stored, as before."""
    ev = MatchEvaluator(_rule(("ip",)), T0)
    ev.load_state(
        {"ip=a": {"last": T0.isoformat(), "labels": {"ip": "a", "host": "h"}, "count": 2}}
    )
    [s] = ev.due(T0 + QUIET)
    assert s.summary == "e ip=a host=h: quiet for 15m after 2 matches"


rows_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab\n\x1f"\\é{}', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.sampled_from([0, 1, ALERT_CHUNK - 1, ALERT_CHUNK, ALERT_CHUNK + 1, 2 * ALERT_CHUNK + 3]),
    extra=st.dictionaries(st.text(max_size=4), rows_json, max_size=3),
)
def test_alert_rows_in_chunks_are_the_stored_rows_in_order(
    tmp_path_factory: Any, n: int, extra: dict[str, Any]
) -> None:
    db = tmp_path_factory.mktemp("a") / "state.db"
    store = Store(db)
    store.migrate()
    alerts: dict[str, Mapping[str, Any] | None] = {
        f"fp{i:05}": {**extra, "rule": "r", "status": "firing", "n": i, "text": "a\nb"}
        for i in range(n)
    }
    store.commit(Commit(alerts=alerts), at(0))
    chunks = store.load_alert_chunks()
    assert len(chunks) == -(-n // ALERT_CHUNK)
    assert list(alert_rows(chunks)) == store.load_alerts()
    assert chunks == [], "each chunk is let go once read"
    store.close()


def test_rule_state_rows_read_as_the_stored_json(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.migrate()
    rows = {"a": {"v": [1, "x\ny"]}, DIGEST_KEY: {"firing": True, "max_keys": 3}, "b": None}
    store.commit(Commit(rule_state={"r": {"a": rows["a"], DIGEST_KEY: rows[DIGEST_KEY]}}), at(0))
    got = store.load_rule_state("r")
    assert isinstance(got, StateRows)
    assert got == {"a": {"v": [1, "x\ny"]}, DIGEST_KEY: {"firing": True, "max_keys": 3}}
    assert got["a"] is not got["a"], "decoded afresh on each read"
    cap = KeyCap(_rule(("ip",)), limit=3)
    rest = cap.load(got)
    assert dict(rest) == {"a": {"v": [1, "x\ny"]}} and len(rest) == 1
    assert DIGEST_KEY not in rest and cap.firing
    store.close()


def test_alerts_loaded_together_share_their_times_and_label_values() -> None:
    def alert(key: str) -> Alert:
        return Alert(
            fingerprint=key, rule="e", kind="error", key=key, status="firing",
            severity="warning", summary="s", description="", labels={"team": "ops", "ip": key},
            owner=None, runbook=None, host="h", source="s", first_seen_at=at(0),
            last_seen_at=at(0), count=1, changes=(at(1), at(2)),
        )  # fmt: skip

    shared: dict[Any, Any] = {}
    a, b = (Alert.from_row(alert(k).to_row(), shared) for k in ("k1", "k2"))
    assert a == alert("k1") and b == alert("k2")
    assert a.first_seen_at is b.first_seen_at is a.last_seen_at
    assert a.labels["team"] is b.labels["team"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.none() | st.integers(0, 20), st.integers(0, 20)),
        max_size=60,
    )
)
def test_the_deadline_heap_pops_what_a_plain_dict_says_is_due(
    ops: list[tuple[str, int | None, int]],
) -> None:
    """Against a dict model: the due keys, earliest first, ties in the order they were set."""
    heap = DeadlineHeap()
    model: dict[str, tuple[int, int]] = {}
    for seq, (key, when, now) in enumerate(ops):
        heap.push(key, None if when is None else at(when))
        if when is None:
            model.pop(key, None)
        elif key not in model or model[key][0] != when:
            model[key] = (when, seq)
        due = sorted((t, s, k) for k, (t, s) in model.items() if t <= now)
        assert heap.pop_due(at(now)) == [k for _, _, k in due]
        for _, _, k in due:
            del model[k]
        nxt = min(model.values(), default=None)
        assert heap.next_at() == (None if nxt is None else at(nxt[0]))
        assert len(heap) == len(model)


class _Eager(KeyedDeadlines):
    SLACK = 2  # compactions every few moves


@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcd"), st.none() | st.integers(0, 9), st.none() | st.integers(0, 9)
        ),
        max_size=200,
    )
)
@example([("c", 3, None), ("a", 5, None), ("b", 5, None), ("a", 7, None), ("a", 5, 6)])
@settings(max_examples=300)
def test_keyed_deadlines_pop_what_the_deadline_heap_pops(
    ops: list[tuple[str, int | None, int | None]],
) -> None:
    """The queue without an entry per key (its owner keeps the deadlines) pops the same keys in
    the same order as the deadline heap, and says the same next deadline, whatever the moves,
    the keys dropped and the compactions (stale entries past the live ones)."""
    owner: dict[str, Any] = {}
    queue = _Eager(owner.get)
    heap = DeadlineHeap()
    for key, when, now in ops:
        old = owner.get(key)
        new = None if when is None else at(when)
        heap.push(key, new)
        if new is None:
            if old is not None:
                del owner[key]
                queue.forget()
        elif new != old:
            owner[key] = new
            queue.push(key, new, old is not None)
        if now is None:  # no round: moves pile up in the buckets
            assert queue.next_at() == heap.next_at()
            continue
        popped = queue.pop_due(at(now))
        assert popped == heap.pop_due(at(now))
        for k in popped:
            del owner[k]
        assert queue.next_at() == heap.next_at()


@settings(max_examples=150, deadline=None, suppress_health_check=[FIXTURE])
@given(
    names=NAMES,
    extra=st.dictionaries(st.sampled_from(["user", "ip", "a"]), VALUES, max_size=2),
    hits=st.lists(st.lists(VALUES, min_size=3, max_size=3), min_size=1, max_size=8),
)
def test_alert_labels_rebuilt_from_the_key_are_the_labels_in_order_across_a_restart(
    tmp_path_factory: Any, names: list[str], extra: dict[str, str], hits: list[list[str]]
) -> None:
    """An alert's labels (kept as a layout and its key where that gives them back) are, in
    their order, the labels a dict would hold; stored and loaded again through SQLite the alerts
    are equal, with the same labels and payload."""
    cfg = rules.rule("e", group_by=tuple(names), labels={"team": "ops"})
    book = AlertBook("h", {"e": cfg}, ["hook"])
    expected: dict[str, list[tuple[str, str]]] = {}
    for i, values in enumerate(hits):
        key, group = group_key(names, dict(zip(names, values, strict=False)))
        own = {**extra, **group}
        book.apply(
            [Signal("e", "error", key, "fire", at(i), own, "s", source="src", sample="x")], at(i)
        )
        alert = book.alerts[fingerprint("e", key)]
        if key not in expected:  # the labels of the fire that opened the alert
            labels = {"team": "ops", **own}
            labels |= {"host": "h", "rule": "e", "severity": "warning", "kind": "error"}
            expected[key] = list((labels | {"source": "src"}).items())
        assert list(alert.labels.items()) == expected[key]
        assert dict(alert.labels) == alert.to_row()["labels"]
    db = tmp_path_factory.mktemp("s") / "state.db"
    store = Store(db)
    store.migrate()
    rows, _ = book.take()
    store.commit(Commit(alerts=rows), at(0))
    again = AlertBook("h", {"e": cfg}, ["hook"])
    again.load(alert_rows(store.load_alert_chunks()))
    store.close()
    assert again.alerts == book.alerts
    for fp, alert in again.alerts.items():
        assert list(alert.labels.items()) == list(book.alerts[fp].labels.items())
        assert alert.payload("firing", "id", at(0)) == book.alerts[fp].payload(
            "firing", "id", at(0)
        )


def test_labels_that_vary_beyond_the_key_stay_a_dict_and_layouts_are_shared() -> None:
    layouts: dict[Any, LabelLayout] = {}
    a = compact_labels({"ip": "1", "host": "h"}, "ip=1", layouts)
    b = compact_labels({"ip": "2", "host": "h"}, "ip=2", layouts)
    assert isinstance(a, KeyLabels) and isinstance(b, KeyLabels) and len(layouts) == 1
    assert a == {"ip": "1", "host": "h"} and b != a and dict(b) == {"ip": "2", "host": "h"}
    odd = {"ip": "1", "host": "h"}
    assert compact_labels(odd, "ip=2", layouts) is odd  # the key says otherwise: kept as given
    assert compact_labels(odd, "ip=1\x1fx=y", layouts) is odd
    assert KEY_SEP == "\x1f"


def test_after_a_restart_an_error_rules_groups_hold_their_alerts_key_strings(
    tmp_path: Path,
) -> None:
    """The groups loaded from the state file keep the very key strings of their alerts (one
    copy per key, as before the restart), and are the groups from before it."""
    state = tmp_path / "state.db"
    config = parse_config(
        f"""
agent: {{state: {state}}}
webhooks: {{hook: {{url: "http://127.0.0.1:9/"}}}}
sources: {{s: {{file: /var/log/x.log}}}}
rules:
  - {{name: r, source: s, match: "failed for (?P<ip>\\\\S+)", group_by: [ip], resolve_after: 1h}}
""",
        "t.yaml",
    )
    store = Store(state)
    first = Pipeline(config, T0, lambda r: {}, ())
    texts = [f"failed for 10.0.0.{i % 7}" for i in range(20)]
    when = When.exact(T0)
    store.commit(
        first.process_texts("s", texts, lambda i: Line("s", texts[i]), lambda _l: when, T0), T0
    )
    states = all_rule_state(store)
    again = Pipeline(config, T0, lambda r: states.get(r, {}), alert_rows(store.load_alert_chunks()))
    store.close()
    before, after = first.evaluators["r"], again.evaluators["r"]
    assert isinstance(before, MatchEvaluator) and isinstance(after, MatchEvaluator)
    assert after._last == before._last and len(after._last) == 7
    assert after._counts == before._counts and after._counts
    held = {k: k for k in after._last}
    alerts = list(again.alerts.alerts.values())
    assert len(alerts) == 7 and all(held[a.key] is a.key for a in alerts)
    assert again.alerts.loaded_keys == {}
