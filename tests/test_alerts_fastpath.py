"""The alert book's inline path for a fire on an open alert tells and stores exactly what the
general path (``AlertBook._fire``) does, whatever the timing keys, mutes and order of signals;
and the resolved alerts it keeps are bounded (``MAX_RESOLVED``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.alerts import MAX_RESOLVED, AlertBook, fingerprint
from detector.model import FlapSpec, RuleConfig
from detector.rules.base import Signal
from detector.silences import LabelMatcher, Muter, Silence
from tests.helpers import at, rule


class _Counting(AlertBook):
    """An alert book that counts the signals that went the general way."""

    def __init__(self, rules: dict[str, RuleConfig], *, fast: bool) -> None:
        super().__init__("h1", rules, ["hook", "other"])
        self.fast = fast
        self.general = 0
        self.muter = Muter()

    def _fire(self, s: Signal, now: datetime) -> None:
        self.general += 1
        super()._fire(s, now)


def _told(book: AlertBook) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What ``take()`` hands the store: the rows, and every outbox row (its event id aside,
    a random one per notification)."""
    rows, outbox = book.take()
    told = []
    for o in outbox:
        payload = {k: v for k, v in o.payload.items() if k != "event_id"}
        told.append({"webhook": o.webhook, "status": o.status, "at": o.created_at, **payload})
    return dict(rows), told


_fire = st.tuples(
    st.just("fire"),
    st.sampled_from(["", "a", "b"]),
    st.sampled_from([0, 0, 0, 1, 5]),  # seconds before now: out-of-order signal times
    st.sampled_from([None, "line", "x" * 2100]),  # a sample, one clipped
    st.sampled_from(["", "s1", "s2"]),  # summary
    st.sampled_from(["", "d"]),  # description
    st.sampled_from([1, 1, 0, 3, -1]),  # count
    st.sampled_from([{}, {"n": 1}, {"peak": 7}]),  # evidence
    st.sampled_from([False, False, False, True]),  # renotify
)
_resolve = st.tuples(st.just("resolve"), st.sampled_from(["", "a", "b"]), st.sampled_from([0, 2]))
_op = st.one_of(
    st.tuples(
        st.just("batch"),
        st.sampled_from([0, 1, 7, 30, 61]),  # seconds to advance first
        st.booleans(),  # stamped with now (live) or with each signal's time (a replay)
        st.lists(st.one_of(_fire, _fire, _fire, _resolve), min_size=1, max_size=8),
    ),
    st.tuples(st.just("due"), st.sampled_from([1, 20, 45, 90, 400])),
    st.tuples(st.just("silence"), st.sampled_from([0, 10]), st.booleans()),
)


def _signal(spec: tuple[Any, ...], now: datetime) -> Signal:
    if spec[0] == "resolve":
        _, key, back = spec
        return Signal(
            rule="r", kind="error", key=key, action="resolve", at=now - timedelta(seconds=back),
            summary=f"r {key}: quiet", happened="quiet",
        )  # fmt: skip
    _, key, back, sample, summary, description, count, evidence, renotify = spec
    return Signal(
        rule="r", kind="error", key=key, action="fire", at=now - timedelta(seconds=back),
        labels={"k": key}, summary=summary, description=description, sample=sample, count=count,
        evidence=evidence, renotify=renotify,
    )  # fmt: skip


def _drive(book: AlertBook, ops: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``ops`` on ``book`` with a fake clock; everything it told and stored, step by step."""
    now = at(0)
    out: list[Any] = []
    for op in ops:
        if op[0] == "batch":
            _, gap, live, specs = op
            now += timedelta(seconds=gap)
            book.apply([_signal(s, now) for s in specs], now if live else None)
        elif op[0] == "due":
            until = now + timedelta(seconds=op[1])
            while (d := book.next_deadline()) is not None and d <= until:
                now = max(now, d)
                book.due(now)
            now = until
            book.due(now)
        else:
            _, gap, on = op
            now += timedelta(seconds=gap)
            assert book.muter is not None
            matcher = LabelMatcher.parse("rule=r")
            silence = Silence(
                id="s1", matchers=(matcher,), starts_at=now, ends_at=now + timedelta(minutes=2),
                comment="c", author="a", created_at=now,
            )  # fmt: skip
            book.muter.set_silences([silence] if on else [])
            book.recheck_mutes(now)
        out.append((_told(book), book.next_deadline()))
    out.append(sorted((fp, a.to_row()) for fp, a in book.alerts.items()))
    return out


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(_op, min_size=1, max_size=40),
    pending=st.sampled_from([0, 0, 30]),
    keep=st.sampled_from([0, 0, 20]),
    flap=st.sampled_from([None, None, FlapSpec(changes=2, within=timedelta(minutes=2))]),
    max_resolved=st.sampled_from([MAX_RESOLVED, 1, 0]),
)
def test_a_fire_on_an_open_alert_tells_and_stores_what_the_general_path_does(
    ops: list[tuple[Any, ...]], pending: int, keep: int, flap: FlapSpec | None, max_resolved: int
) -> None:
    r = rule(
        "r", repeat=timedelta(seconds=60), pending_for=timedelta(seconds=pending),
        keep_firing_for=timedelta(seconds=keep), flap=flap, notify=("hook", "other"),
    )  # fmt: skip
    fast, general = _Counting({"r": r}, fast=True), _Counting({"r": r}, fast=False)
    fast.max_resolved = general.max_resolved = max_resolved
    assert _drive(fast, ops) == _drive(general, ops)
    assert fast.general <= general.general


def test_fires_on_an_open_alert_take_the_inline_path() -> None:
    book = _Counting({"r": rule("r")}, fast=True)
    book.apply(
        [_signal(("fire", "", 0, "l", "s", "", 1, {}, False), at(i)) for i in range(10)], None
    )
    assert book.general == 1  # the opening fire only
    [alert] = book.firing()
    assert alert.count == 10 and len(alert.samples) == 5 and alert.last_seen_at == at(9)


def _close(book: AlertBook, key: str, t: float) -> None:
    book.apply([_signal(("fire", key, 0, "l", "s", "", 1, {}, False), at(t))], at(t))
    book.apply([_signal(("resolve", key, 0), at(t + 1))], at(t + 1))


def test_resolved_alerts_past_the_cap_are_forgotten_longest_resolved_first() -> None:
    book = AlertBook("h1", {"r": rule("r")}, ["hook"])
    book.max_resolved = 3
    for i in range(10):
        _close(book, f"k{i}", 10 * i)
    rows, _ = book.take()
    kept = {a.key for a in book.alerts.values()}
    assert kept == {"k7", "k8", "k9"}
    for i in range(7):  # forgotten in the state file too: a restart keeps the same three
        assert rows[fingerprint("r", f"k{i}")] is None
    restarted = AlertBook("h1", {"r": rule("r")}, ["hook"])
    restarted.max_resolved = 2
    restarted.load(row for row in rows.values() if row is not None)
    assert {a.key for a in restarted.alerts.values()} == {"k8", "k9"}
    assert restarted.take()[0] == {fingerprint("r", "k7"): None}


def test_a_resolved_alert_that_still_owes_its_notice_is_kept_past_the_cap() -> None:
    book = AlertBook("h1", {"r": rule("r")}, ["hook"])
    book.max_resolved = 1
    book.muter = Muter()
    _close(book, "owed", 0)  # firing told, then resolved ...
    book.take()
    book.apply([_signal(("fire", "held", 0, "l", "s", "", 1, {}, False), at(10))], at(10))
    silence = Silence(
        id="s1", matchers=(LabelMatcher.parse("rule=r"),), starts_at=at(20),
        ends_at=at(100), comment="c", author="a", created_at=at(20),
    )  # fmt: skip
    book.muter.set_silences([silence])
    book.recheck_mutes(at(20))
    book.apply([_signal(("resolve", "held", 0), at(21))], at(21))  # ... its resolved is held
    for i in range(5):
        _close(book, f"k{i}", 30 + 10 * i)
    keys = {a.key for a in book.alerts.values()}
    assert keys == {"held"}  # the others, longest resolved first, went at once
    book.take()
    book.due(at(100))  # the silence ends: the held notice goes out
    _, outbox = book.take()
    assert [(o.payload["notification"], o.payload["fingerprint"]) for o in outbox] == [
        ("resolved", fingerprint("r", "held"))
    ]


def test_distinct_keys_over_time_keep_at_most_max_resolved_alerts() -> None:
    book = AlertBook("h1", {"r": rule("r")}, ["hook"])
    signals = []
    for i in range(MAX_RESOLVED + 500):
        signals.append(_signal(("fire", f"ip{i}", 0, "l", "s", "", 1, {}, False), at(i)))
        signals.append(_signal(("resolve", f"ip{i}", 0), at(i + 0.5)))
    book.apply(signals, None)
    assert len(book.alerts) == MAX_RESOLVED
    assert fingerprint("r", "ip0") not in book.alerts
    assert fingerprint("r", f"ip{MAX_RESOLVED + 499}") in book.alerts
