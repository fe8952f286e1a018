"""Hits without their groups where no rule reads them on every hit (issue 20): the ``match:`` hits
of a plain error rule come without their named groups, so that ``re`` does not run where
Hyperscan's verdict is exact, and the rule still gets every captured field it does read (the
labels of an alert a hit opens, the fields of a line that has fields of its own) exactly as
``re`` gives them. Rules that read their groups on every hit keep them on every hit."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.matching import MAX_OVERRUNS_PER_CALL, Hit, Matcher, PatternSpec
from detector.model import PairSpec, RuleConfig, ThresholdSpec
from detector.pipeline import Pipeline, hits_carry_groups, pattern_specs
from detector.rules.base import When
from detector.sources.base import Batch, Line
from tests.helpers import at, config, rule
from tests.test_matching import LINES, SRC, _mutate, naive, regexes

# ---------------------------------------------------------------- the matcher


@settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    rules=st.lists(
        st.tuples(regexes(), st.one_of(st.none(), regexes()), st.booleans()),
        min_size=1,
        max_size=5,
    ),
    picks=st.lists(st.tuples(st.integers(0, len(LINES) - 1), st.integers(0, 5)), max_size=40),
)
def test_hits_without_groups_are_re_s_hits_and_groups_gives_re_s_groups(
    rules: list[tuple[str, str | None, bool]], picks: list[tuple[int, int]]
) -> None:
    specs: list[PatternSpec] = []
    for k, (match, ignore, carry) in enumerate(rules):
        specs.append(PatternSpec(f"r{k}", "match", match, SRC, groups=carry))
        if ignore is not None:
            specs.append(PatternSpec(f"r{k}", "ignore", ignore, SRC, groups=carry))
    texts = [_mutate(LINES[i], how) for i, how in picks]
    carried = {s.rule for s in specs if s.groups}
    expected = naive(specs, "s", texts)
    without = [h if h.rule in carried else h._replace(groups={}) for h in expected]
    matcher = Matcher(specs, budget_s=10.0)  # armed, never reached here
    assert matcher.deferred == {
        (s.rule, "match")
        for s in specs
        if s.role == "match" and not s.groups and re.compile(s.regex).groupindex
    }
    assert matcher.match("s", texts) == without
    if texts:
        data = "".join(t + "\n" for t in texts).encode()
        assert matcher.match_block("s", data) == (len(texts), without)
    for h in expected:  # what a rule that reads them gets, line by line
        if (h.rule, h.role) in matcher.deferred:
            assert matcher.groups(h.rule, h.role, texts[h.line]) == h.groups
    assert matcher.take_abandoned() == {}
    # a cold start's skeleton database (re confirms there), then the full one
    quick = Matcher(specs, budget_s=10.0)
    quick.warm(["s"], quick=True)
    for _stage in ("skeleton", "full"):
        assert quick.match("s", texts) == without
        quick.upgrade()
    assert quick.stage == {"s": "full"} and quick.take_abandoned() == {}


def test_a_cold_start_finds_them_with_their_skeleton_then_with_their_exact_translation() -> None:
    pattern = r"Out of memory: (?P<what>\w+) process (?P<pid>\d+)"
    specs = [PatternSpec("r", "match", pattern, SRC, groups=False)]
    lines = ["Out of memory: Killed process 12", "Out of memory: Killed a process 3", "ok"]
    want = [Hit(0, "r", "match", {})]
    m = Matcher(specs)
    m.warm(["s"], quick=True)
    assert m.stage == {"s": "skeleton"}  # the skeleton holds the second line: re says no
    assert m.match("s", lines) == want
    assert m.match_block("s", "".join(x + "\n" for x in lines).encode()) == (3, want)
    [report] = m.report()
    assert report.engine == "hyperscan (exact on ASCII lines)"
    assert "a hyperscan literal skeleton (1 required literals) finds" in report.note
    assert "named groups are not read on every hit" in report.note
    assert m.upgrade() == ["s"]
    assert m.match("s", lines) == want and m.stage == {"s": "full"}
    assert m.groups("r", "match", lines[0]) == {"what": "Killed", "pid": "12"}


CATASTROPHIC = r"(?P<x>(a+)+)b"
"""Exact (a Hyperscan verdict that is the answer) but risky: ``re`` backtracks exponentially on
the line below before it finds the match at its end."""
LINE = "a" * 28 + "c ab"


def test_an_exact_verdict_decides_a_line_re_would_not_decide_in_time() -> None:
    def matcher(carry: bool) -> Matcher:
        spec = PatternSpec("r", "match", CATASTROPHIC, SRC, groups=carry)
        # no Pike VM time at all: a confirmation over the budget is abandoned, untried
        return Matcher([spec], budget_s=0.01, pike_s_per_call=0.0)

    with_re = matcher(True)
    assert with_re.match("s", [LINE]) == []
    [abandoned] = with_re.take_abandoned().values()
    assert (abandoned.rule, abandoned.lines, abandoned.untried) == ("r", 1, 1)

    exact = matcher(False)
    assert exact.match("s", [LINE]) == [Hit(0, "r", "match", {})]  # the true answer
    assert exact.take_abandoned() == {} and exact.take_slow() == {}


def test_groups_on_demand_take_the_pike_vm_past_the_budget() -> None:
    m = Matcher([PatternSpec("r", "match", CATASTROPHIC, SRC, groups=False)], budget_s=0.01)
    assert m.match("s", [LINE]) == [Hit(0, "r", "match", {})]
    assert m.groups("r", "match", LINE) == {"x": "a"} == re.search(CATASTROPHIC, LINE).groupdict()
    assert m.take_slow() == {"r": 1} and m.take_abandoned() == {}


# ---------------------------------------------------------------- who reads the groups

IP = r"ERROR (?P<what>[a-z]+) (?P<ip>\S+)"


def test_only_plain_error_and_one_count_threshold_match_hits_go_without_their_groups() -> None:
    rules = [
        rule("plain", match=IP, ignore=r"(?P<q>quiet)"),
        rule("keyed", match=IP, group_by=("ip",)),
        rule("told", match=IP, summary="{what} broke"),
        rule("described", match=IP, description="on {ip}"),
        rule("fielded", match=IP, fields={"unit": "x"}),
        rule("counted", "threshold", match=IP, threshold=ThresholdSpec(3, timedelta(1), ())),
        rule("by-ip", "threshold", match=IP, threshold=ThresholdSpec(3, timedelta(1), ("ip",))),
        rule(
            "distinct", "threshold", match=IP,
            threshold=ThresholdSpec(3, timedelta(1), distinct="ip"),
        ),
        rule(
            "told-count", "threshold", match=IP, summary="{what}",
            threshold=ThresholdSpec(3, timedelta(1)),
        ),
        rule("paired", "pair", match=None, pair=PairSpec(IP, IP, timedelta(1), ("ip",))),
    ]  # fmt: skip
    carry = {(s.rule, s.role): s.groups for s in pattern_specs(rules)}
    unread = {("plain", "match"), ("counted", "match")}  # no by:, distinct or templates
    assert {k for k, v in carry.items() if not v} == unread
    assert Matcher(pattern_specs(rules)).deferred == unread
    assert all(hits_carry_groups(r, "ignore") for r in rules)


def _payloads(p: Pipeline, texts: list[str], t: float) -> list[dict[str, Any]]:
    told: list[dict[str, Any]] = []
    p.alerts.record = lambda payload, _key: told.append(payload)
    p.process(Batch("s", [], block="".join(x + "\n" for x in texts).encode()), _at(t), at(t))
    return told


def _at(t: float):  # type: ignore[no-untyped-def]
    return lambda _line: When.exact(at(t))


def test_a_plain_rule_s_alert_is_labelled_with_the_groups_of_the_hit_that_opens_it() -> None:
    r = rule("plain", match=IP, resolve_after=timedelta(seconds=10))
    p = Pipeline(config(r), at(0), lambda _r: {})
    assert p.matcher.deferred == {("plain", "match")}
    [first] = _payloads(p, ["ERROR disk 10.0.0.1", "ERROR cpu 10.0.0.2"], 0)
    assert first["labels"]["what"] == "disk" and first["labels"]["ip"] == "10.0.0.1"
    assert [o.payload["notification"] for o in p.tick(at(10)).outbox] == ["resolved"]
    [again] = _payloads(p, ["ERROR net 10.0.0.3"], 20)  # resolved at 10: a new alert opens
    assert (again["labels"]["what"], again["labels"]["ip"]) == ("net", "10.0.0.3")


def test_a_rule_that_reads_its_fields_gets_its_groups_on_every_hit() -> None:
    rules = (
        rule("keyed", match=IP, group_by=("ip",)),
        rule("told", match=IP, summary="{what} broke on {ip}"),
    )
    p = Pipeline(config(*rules), at(0), lambda _r: {})
    assert p.matcher.deferred == frozenset()
    told = _payloads(p, ["ERROR disk 10.0.0.1", "ERROR cpu 10.0.0.2", "ERROR net 10.0.0.1"], 0)
    keyed = [n["labels"]["ip"] for n in told if n["rule"] == "keyed"]
    assert keyed == ["10.0.0.1", "10.0.0.2"]  # one alert per ip
    [summary] = [n["summary"] for n in told if n["rule"] == "told"]
    assert summary == "disk broke on 10.0.0.1"
    assert [a.summary for a in p.alerts.firing() if a.rule == "told"] == ["net broke on 10.0.0.1"]


def test_a_line_with_fields_gives_a_plain_rule_its_groups_as_fields() -> None:
    p = Pipeline(config(rule("plain", match=IP)), at(0), lambda _r: {})
    told: list[dict[str, Any]] = []
    p.alerts.record = lambda payload, _key: told.append(payload)
    lines = [Line("s", "ERROR disk 10.0.0.1", at(0), None, {"unit": "db.service"})]
    p.process(Batch("s", lines), _at(0), at(0))
    [n] = told
    assert (n["labels"]["what"], n["labels"]["ip"]) == ("disk", "10.0.0.1")


def test_rules_that_still_need_re_report_the_lines_it_cannot_decide() -> None:
    # a lookbehind: inexact, no Pike VM; whether or not the rule reads its groups, re decides
    slow = r"word (?P<w>\w+\s?)+$(?<=z)"
    p = Pipeline(
        config(rule("plain", match=slow), rule("keyed", match=slow, group_by=("w",))),
        at(0),
        lambda _r: {},
    )
    assert p.matcher.deferred == {("plain", "match")}
    undecided = "word " * 8 + "wordy"
    c = p.process(Batch("s", [Line("s", undecided)] * 20), _at(0), at(0))
    agent = sorted(
        (o.payload["summary"].split(":")[0], o.payload["count"], o.payload["description"])
        for o in c.outbox
        if o.payload["rule"] == "detector-agent"
    )
    assert [a[:2] for a in agent] == [("rule keyed", 20), ("rule plain", 20)]
    # each rule's re ran over the budget MAX_OVERRUNS_PER_CALL times, then gave up untried
    untried = f"{20 - MAX_OVERRUNS_PER_CALL} of them were not even tried"
    assert all(untried in description for *_a, description in agent)
    assert p.lines_undecided == {"plain": 20, "keyed": 20} and p.lines_matched == {}


# ---------------------------------------------------------------- the same alerts as with re

RULES = (
    rule("plain", match=IP, resolve_after=timedelta(seconds=8)),
    rule("look", match=r"ERROR (?P<what>[a-z]+)(?= )", resolve_after=timedelta(seconds=5)),
    rule("wide", match=r"ERROR (?P<what>\w+) ", resolve_after=timedelta(seconds=6)),
    rule("calm", match=IP, ignore=r"cpu", resolve_after=timedelta(seconds=3)),
    rule("keyed", match=IP, group_by=("ip",), resolve_after=timedelta(seconds=4)),
    rule(
        "counted", "threshold", match=IP,
        threshold=ThresholdSpec(count=2, within=timedelta(seconds=5), by=("ip",)),
    ),
    rule(  # one count, no by: its groups only label the alert it opens
        "flood", "threshold", match=IP,
        threshold=ThresholdSpec(count=3, within=timedelta(seconds=6), reset_on=r"ERROR net"),
    ),
)  # fmt: skip

_event = st.tuples(
    st.sampled_from(["disk", "cpu", "dïsk", "net"]),
    st.sampled_from(["10.0.0.1", "10.0.0.2", "fe80::é"]),
    st.floats(0, 4),
    st.booleans(),
)


def _replay(rules: tuple[RuleConfig, ...], carry: bool, batches: list[list[Any]]) -> list[Any]:
    """``batches`` of (what, ip, seconds, fields) lines through a pipeline whose hits carry
    their groups as ``pattern_specs`` says (``carry`` False) or always (every hit through
    ``re``); every notification (labels and all), then every alert row. Batches alternate:
    raw blocks (the tailer's, ``match_block``), then Lines (with fields where asked)."""
    cfg = config(*rules)
    specs = pattern_specs(cfg.rules)
    if carry:
        specs = [replace(s, groups=True) for s in specs]
    p = Pipeline(cfg, at(0), lambda _r: {}, matcher=Matcher(specs))
    p.signal_time = True
    p.start_at(at(0))
    told: list[Any] = []
    p.alerts.record = lambda payload, key: told.append(
        {k: v for k, v in payload.items() if k != "event_id"}
    )
    last = at(0)
    for k, events in enumerate(batches):
        texts = [f"{t:09.3f} ERROR {what} {ip} x" for what, ip, t, _f in events]
        when = lambda line: When.exact(at(float(line.text[:9])))  # noqa: E731
        if k % 2 == 0:
            batch = Batch("s", [], block="".join(x + "\n" for x in texts).encode())
        else:
            lines = [
                Line("s", x, None, None, {"unit": "u"} if e[3] else None)
                for x, e in zip(texts, events, strict=True)
            ]
            batch = Batch("s", lines)
        p.process(batch, when, last, interleave_ticks=True)
        last = max([last, *(at(t) for _w, _ip, t, _f in events)])
        p.advance(last)
    p.advance(last + timedelta(minutes=5))
    rows, _ = p.alerts.take()
    return [*told, sorted((fp, json.dumps(r, default=str)) for fp, r in rows.items())]


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(_event, max_size=10), min_size=1, max_size=10))
def test_rules_whose_groups_go_unread_alert_exactly_as_with_re(raw: list[list[Any]]) -> None:
    batches, t = [], 0.0
    for events in raw:  # in time order, with gaps that let alerts resolve and open again
        out = []
        for what, ip, step, fields in events:
            t += step * step * 2
            out.append((what, ip, round(t, 3), fields))
        batches.append(out)
    assert _replay(RULES, False, batches) == _replay(RULES, True, batches)
