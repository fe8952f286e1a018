"""The synchronous core: batch in, one Commit out (state + alerts + outbox + checkpoint)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from detector.matching import MAX_OVERRUNS_PER_CALL
from detector.model import ThresholdSpec
from detector.pipeline import Pipeline
from detector.records import Checkpoint, Commit
from detector.replay import replay
from detector.rules.base import When
from detector.sources.base import Batch, Line
from detector.timefmt import iso
from tests.helpers import at, config, line, rule


def batch(*texts: str, offset: int = 0) -> Batch:
    return Batch("s", [line(t) for t in texts], [Checkpoint("s", "1:1", {"offset": offset})])


def exact(t: float):  # type: ignore[no-untyped-def]
    return lambda _line: When.exact(at(t))


def test_a_batch_yields_one_commit_with_its_checkpoint_and_one_alert() -> None:
    p = Pipeline(
        config(rule("e", match="ERROR (?P<what>\\w+)", ignore="ignored")), at(0), lambda r: {}
    )
    c = p.process(
        batch("ok", "ERROR disk", "ERROR disk ignored", "ERROR cpu", offset=42), exact(0), at(0)
    )
    assert c.checkpoints[0].value == {"offset": 42}
    assert len(c.outbox) == 1  # one alert (no group_by), the second match only raised its count
    assert c.outbox[0].payload["samples"] == ["ERROR disk"]
    assert p.alerts.firing()[0].count == 2
    assert p.lines_read["s"] == 4 and p.lines_matched["e"] == 2
    assert c.rule_state["e"]


def test_group_by_splits_alerts_and_the_summary_template_uses_captures() -> None:
    r = rule(
        "e", match="ERROR (?P<what>\\w+)", group_by=("what",), summary="{what} broke on {host}"
    )
    p = Pipeline(config(r), at(0), lambda r: {})
    c = p.process(batch("ERROR disk", "ERROR cpu", "ERROR disk"), exact(0), at(0))
    assert sorted(o.payload["summary"] for o in c.outbox) == [
        "cpu broke on {host}",
        "disk broke on {host}",
    ]


def test_error_alert_resolves_after_resolve_after_without_match() -> None:
    p = Pipeline(config(rule("e", resolve_after=timedelta(minutes=15))), at(0), lambda r: {})
    p.process(batch("ERROR x"), exact(0), at(0))
    assert p.next_deadline() == at(900)
    c = p.tick(at(900))
    assert [o.payload["notification"] for o in c.outbox] == ["resolved"]


def test_a_new_match_moves_the_resolve_deadline_exactly() -> None:
    p = Pipeline(config(rule("e", resolve_after=timedelta(minutes=15))), at(0), lambda r: {})
    p.process(batch("ERROR x"), exact(0), at(0))
    p.process(batch("ERROR y"), exact(600), at(600))
    assert p.next_deadline() == at(1500)
    assert p.tick(at(1499)).outbox == []
    assert p.alerts.firing()[0].count == 2
    c = p.tick(at(1500))
    assert [o.payload["notification"] for o in c.outbox] == ["resolved"]
    assert c.outbox[0].payload["resolved_at"] == iso(at(1500), timespec="milliseconds", zulu=True)


def test_reconfigure_keeps_unchanged_rules_and_resolves_removed_ones() -> None:
    keep = rule("keep", kind="threshold", threshold=ThresholdSpec(2, timedelta(minutes=1)))
    gone = rule("gone")
    p = Pipeline(config(keep, gone), at(0), lambda r: {})
    p.process(batch("ERROR 1"), exact(0), at(0))
    kept_ev = p.evaluators["keep"]
    c = p.reconfigure(config(keep), at(1), lambda r: {})
    assert p.evaluators["keep"] is kept_ev
    assert [(o.payload["rule"], o.payload["notification"]) for o in c.outbox] == [
        ("gone", "resolved")
    ]
    # the kept threshold still remembers its first match: one more fires it
    c = p.process(batch("ERROR 2"), exact(2), at(2))
    assert [o.payload["rule"] for o in c.outbox] == ["keep"]


def test_changed_rule_restarts_from_its_stored_state() -> None:
    r1 = rule("t", kind="threshold", threshold=ThresholdSpec(2, timedelta(minutes=1)))
    p = Pipeline(config(r1), at(0), lambda r: {})
    c = p.process(batch("ERROR 1"), exact(0), at(0))
    stored = {k: v for k, v in c.rule_state["t"].items() if v is not None}
    r2 = replace(r1, severity="critical")
    p.reconfigure(config(r2), at(1), lambda r: stored)
    c = p.process(batch("ERROR 2"), exact(2), at(2))
    assert c.outbox[0].payload["severity"] == "critical"


def test_replay_runs_deadlines_between_hits_in_time_order(tmp_path: Path) -> None:
    r = rule("t", kind="threshold", threshold=ThresholdSpec(2, timedelta(minutes=1)))
    log = tmp_path / "x.log"
    log.write_text(
        "2026-03-01T12:00:00Z ERROR a\n"
        "2026-03-01T12:00:10Z ERROR b\n"  # fires
        "2026-03-01T12:05:00Z ERROR c\n"  # the window emptied at 12:01:00: resolved before this
        "2026-03-01T12:05:30Z ERROR d\n"  # fires again
    )
    res = replay(config(r), [(str(log), "s")])
    kinds = [
        (
            n["notification"],
            n["last_seen_at"] if n["notification"] != "resolved" else n["resolved_at"],
        )
        for n in res.notifications
    ]
    assert kinds == [
        ("firing", "2026-03-01T12:00:10.000Z"),
        ("resolved", "2026-03-01T12:01:00.000Z"),
        ("firing", "2026-03-01T12:05:30.000Z"),
    ]
    assert res.lines == 4


def test_lines_of_other_sources_are_not_seen_by_a_rule() -> None:
    p = Pipeline(config(rule("e", sources=("other",))), at(0), lambda r: {})
    c = p.process(batch("ERROR x"), exact(0), at(0))
    assert c.outbox == [] and p.lines_matched["e"] == 0
    assert isinstance(line("x"), Line)


class _Broken:
    """An evaluator with a bug: it raises on one kind of line."""

    wants_all_lines = False

    def __init__(self, rule):  # type: ignore[no-untyped-def]
        self.rule = rule

    def observe(self, hit, line, when):  # type: ignore[no-untyped-def]
        if "poison" in line.text:
            raise ValueError("cannot handle this line")
        return []

    def next_deadline(self):  # type: ignore[no-untyped-def]
        return None

    def state_changes(self):  # type: ignore[no-untyped-def]
        return {}


def test_a_rule_that_raises_skips_the_event_and_raises_an_agent_alert_instead_of_crashing(
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    good = rule("good")
    p = Pipeline(config(good, rule("bad")), at(0), lambda r: {})
    p.evaluators["bad"] = _Broken(p.evaluators["bad"].rule)  # type: ignore[assignment]
    c = p.process(batch("ERROR poison", "ERROR fine"), exact(0), at(0))
    kinds = sorted((o.payload["rule"], o.payload["kind"]) for o in c.outbox)
    assert kinds == [("detector-agent", "agent"), ("good", "error")]
    agent = next(o.payload for o in c.outbox if o.payload["kind"] == "agent")
    assert "rule bad failed: ValueError: cannot handle this line" in agent["summary"]
    assert p.rule_errors["bad"] == 1
    assert "ERROR poison" in caplog.text


def test_replay_keeps_the_first_notifications_of_each_rule_and_counts_all(tmp_path: Path) -> None:
    from detector.replay import KEEP_PER_RULE

    r = rule("e", match="ERROR (?P<n>\\d+)", group_by=("n",))
    log = tmp_path / "x.log"
    log.write_text("".join(f"2026-03-01T12:00:00Z ERROR {i}\n" for i in range(KEEP_PER_RULE + 30)))
    res = replay(config(r), [(str(log), "s")])
    assert res.firing == KEEP_PER_RULE + 30
    assert len(res.notifications) == KEEP_PER_RULE
    assert res.counts[("e", "firing")] == KEEP_PER_RULE + 30


def test_a_batch_full_of_undecidable_lines_is_cut_short_and_the_alert_says_how() -> None:
    p = Pipeline(config(rule("slow", match=r"word (\w+\s?)+$(?<=z)")), at(0), lambda r: {})
    undecided = "word " * 8 + "wordy"
    c = p.process(batch(*[undecided] * 40), exact(0), at(0))
    (agent,) = [o.payload for o in c.outbox if o.payload["rule"] == "detector-agent"]
    assert agent["count"] == 40 and p.lines_undecided == {"slow": 40}
    untried = 40 - MAX_OVERRUNS_PER_CALL
    assert f"{untried} of them were not even tried" in agent["description"]


def test_undecided_lines_raise_one_agent_alert_that_resolves_after_a_quiet_hour() -> None:
    p = Pipeline(
        config(rule("slow", match=r"word (\w+\s?)+$(?<=z)"), rule("e", match="ERROR")),
        at(0),
        lambda r: {},
    )
    undecided = "word " * 8 + "wordy"
    c = p.process(batch(undecided, "ERROR x", undecided), exact(0), at(0))
    agent = [o.payload for o in c.outbox if o.payload["rule"] == "detector-agent"]
    assert [(a["notification"], a["count"], a["samples"]) for a in agent] == [
        ("firing", 2, [undecided])
    ]
    assert p.lines_undecided == {"slow": 2} and p.lines_matched == {"e": 1}
    p.process(batch(undecided), exact(1800), at(1800))  # the quiet hour starts again
    assert next(a for a in p.alerts.firing() if a.rule == "detector-agent").count == 3

    def agent_rows(c: Commit) -> list[str]:
        return [
            o.payload["notification"] for o in c.outbox if o.payload["rule"] == "detector-agent"
        ]

    assert agent_rows(p.tick(at(1800 + 3599))) == []
    assert agent_rows(p.tick(at(1800 + 3600))) == ["resolved"]
