"""The per-hit shortcuts of the pipeline tell and store exactly what the general path does: a
plain error rule's hit on its open alert, and a threshold's on the open alert of its one key,
go straight to the alert book (``fire_open``, no Signal), and the replay's per-hit deadline
check skips ``next_deadline`` when no deadline of the rule can come before the next one known
(``deadline_delay``)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from detector.matching import Hit
from detector.model import ThresholdSpec
from detector.pipeline import Pipeline
from detector.rules.base import When
from detector.rules.match import MatchEvaluator
from detector.rules.threshold import ThresholdEvaluator
from detector.sources.base import Line
from tests.helpers import at, config, rule

RULES = (
    rule("a", match=r"ERROR a", resolve_after=timedelta(seconds=30), repeat=timedelta(seconds=50)),
    rule("b", match=r"ERROR b", resolve_after=timedelta(seconds=7)),
    rule(
        "g", match=r"ERROR [ab] (?P<ip>\S+)", group_by=("ip",),
        resolve_after=timedelta(seconds=20),
    ),
    rule(
        "p", match=r"ERROR a", resolve_after=timedelta(seconds=10),
        pending_for=timedelta(seconds=4),
    ),
    rule(
        "k", match=r"ERROR b", resolve_after=timedelta(seconds=5),
        keep_firing_for=timedelta(seconds=6),
    ),
    rule(
        "t", "threshold", match=r"ERROR (?:a|b) (?P<ip>\S+)",
        threshold=ThresholdSpec(count=3, within=timedelta(seconds=15), by=("ip",)),
    ),
    rule(  # one alert (no group_by): its firing key's matches go straight to it
        "u", "threshold", match=r"ERROR a",
        threshold=ThresholdSpec(count=2, within=timedelta(seconds=9), reset_on=r"ERROR b y"),
    ),
    rule(  # the same without a reset, with keep_firing_for
        "v", "threshold", match=r"ERROR a", keep_firing_for=timedelta(seconds=3),
        threshold=ThresholdSpec(count=2, within=timedelta(seconds=9)),
    ),
)  # fmt: skip


def _run(general: bool, batches: list[list[tuple[str, str, float]]]) -> list[Any]:
    """Replay ``batches`` of (rule letter, ip, seconds) lines as ``detector test`` does (each
    line at its own time, deadlines between them); every notification, then every alert row."""
    p = Pipeline(config(*RULES), at(0), lambda _r: {})
    p.signal_time = True
    p.start_at(at(0))
    if general:  # the general path everywhere: Signals through apply's general branch
        p.alerts.fast = False
        p._delays.clear()  # next_deadline after every hit
        for ev in p.evaluators.values():
            if isinstance(ev, MatchEvaluator | ThresholdEvaluator):
                ev.fire_open = None
    told: list[Any] = []
    p.alerts.record = lambda payload, key: told.append(
        {k: v for k, v in payload.items() if k != "event_id"}
    )
    last = at(0)
    for specs in batches:
        texts = [f"ERROR {letter} {ip}" for letter, ip, _ in specs]
        lines = [Line("s", text) for text in texts]
        times = {id(ln): at(t) for ln, (_l, _ip, t) in zip(lines, specs, strict=True)}
        p.process_texts(
            "s",
            texts,
            lines.__getitem__,
            lambda ln, times=times: When.exact(times[id(ln)]),
            last,
            interleave_ticks=True,
        )
        last = max([last, *times.values()])
        p.advance(last)
    p.advance(last + timedelta(minutes=5))
    rows, _ = p.alerts.take()
    return [*told, sorted((fp, json.dumps(r, default=str)) for fp, r in rows.items())]


_line = st.tuples(st.sampled_from(["a", "a", "b"]), st.sampled_from(["x", "y"]), st.floats(0, 4))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_line, min_size=0, max_size=12), min_size=1, max_size=12))
@example(  # "u" fires, then in one batch: a reset (its resolve waits), a new crossing (waits),
    # a match: which must not go straight to the alert the waiting resolve closes
    [
        [("a", "x", 0.5), ("a", "x", 0.5)],
        [("b", "y", 0.5), ("a", "x", 0.5), ("a", "x", 0.5), ("a", "x", 0.5)],
    ]
)
def test_the_hit_shortcuts_tell_and_store_what_the_general_path_does(
    raw: list[list[tuple[str, str, float]]],
) -> None:
    batches, t = [], 0.0
    for specs in raw:  # times mostly in order, with gaps that let alerts resolve and reopen
        out = []
        for letter, ip, step in specs:
            t += step * step * 2
            out.append((letter, ip, round(t - (1 if step < 0.3 else 0), 3)))  # now and then late
        batches.append(out)
    assert _run(False, batches) == _run(True, batches)


def test_a_plain_rule_on_its_open_alert_builds_no_signal() -> None:
    p = Pipeline(config(rule("a", match="ERROR")), at(0), lambda _r: {})
    ev = p.evaluators["a"]
    hit = Hit(0, "a", "match", {})
    [opening] = ev.observe(hit, Line("s", "ERROR 1"), When.exact(at(0)))
    p.alerts.apply([opening], None)  # opens the alert
    assert ev.observe(hit, Line("s", "ERROR 2"), When.exact(at(3))) == []
    [alert] = p.alerts.firing()
    assert (alert.count, alert.samples, alert.summary) == (2, ["ERROR 1", "ERROR 2"], "a: ERROR 2")
    assert alert.last_seen_at == at(3)
