"""threshold rules: N matches within a sliding window per key, exact firing and resolution."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.matching import Hit
from detector.model import ThresholdSpec
from detector.rules.threshold import ThresholdEvaluator
from tests.helpers import at, line, rule, when


def ev(count: int = 3, within: float = 60, by: tuple[str, ...] = ("ip",)) -> ThresholdEvaluator:
    spec = ThresholdSpec(count=count, within=timedelta(seconds=within), by=by)
    return ThresholdEvaluator(rule("t", "threshold", threshold=spec), at(0))


def hit(ip: str = "1.2.3.4") -> Hit:
    return Hit(0, "t", "match", {"ip": ip})


def test_fires_on_the_nth_match_within_the_window_and_not_before() -> None:
    e = ev()
    assert e.observe(hit(), line("a"), when(0)) == []
    assert e.observe(hit(), line("a"), when(10)) == []
    out = e.observe(hit(), line("a"), when(20))
    assert [s.action for s in out] == ["fire"]
    assert out[0].labels["ip"] == "1.2.3.4"
    assert out[0].count == 3


def test_matches_spread_wider_than_the_window_never_fire() -> None:
    e = ev()
    fired = []
    for t in range(0, 600, 31):
        fired += e.observe(hit(), line("a"), when(t))
        fired += e.due(at(t))
    assert fired == []


def test_keys_are_counted_separately() -> None:
    e = ev()
    out = []
    for i in range(4):
        out += e.observe(hit(f"10.0.0.{i % 2}"), line("a"), when(i))
    assert out == []


def test_resolves_exactly_when_the_window_drops_below_count() -> None:
    e = ev()
    for t in (0, 10, 20, 30):
        e.observe(hit(), line("a"), when(t))
    # the window holds 3 matches until the 3rd most recent (t=10) is 60 s old
    assert e.next_deadline() == at(70)
    assert e.due(at(69.999)) == []
    out = e.due(at(70))
    assert [s.action for s in out] == ["resolve"]
    assert out[0].at == at(70)


def test_state_round_trip_continues_exactly() -> None:
    e = ev()
    for t in (0, 10, 20):
        e.observe(hit(), line("a"), when(t))
    state = e.state_changes()
    e2 = ev()
    e2.load_state({k: v for k, v in state.items() if v is not None})
    assert e2.next_deadline() == at(60)
    assert [s.action for s in e2.due(at(60))] == ["resolve"]


def test_idle_keys_are_forgotten() -> None:
    e = ev()
    e.observe(hit(), line("a"), when(0))
    e.state_changes()
    e.due(at(61))
    assert e.keys == {}
    assert e.state_changes() == {"ip=1.2.3.4": None}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=40))
def test_fires_iff_some_window_holds_count_matches(gaps: list[int]) -> None:
    times = []
    t = 0
    for g in gaps:
        t += g
        times.append(t)
    e = ev(count=3, within=60)
    fired = False
    for x in times:
        e.due(at(x))
        fired |= any(s.action == "fire" for s in e.observe(hit(), line("a"), when(x)))
    expected = any(times[i + 2] - times[i] < 60 for i in range(len(times) - 2))
    assert fired == expected
