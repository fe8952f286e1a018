"""Maintenance windows (rules.yaml ``maintenance:``): alerts recorded but not notified, and
expectations that neither fire inside a window nor falsely right after it, across DST; the mute
decision of silences with their matchers. The pipeline on a FakeClock, real config parsing."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from detector.clock import FakeClock
from detector.config import ConfigError, parse_config
from detector.pipeline import Pipeline
from detector.rules.base import When
from detector.silences import LabelMatcher, MatcherError, Silence
from detector.sources.base import Batch, Line


def cfg(maintenance: str, rules: str) -> str:
    return (
        textwrap.dedent(
            """\
        version: 1
        agent: {state: /nonexistent/state.db, host: h}
        sources:
          s: {file: /nonexistent/app.log}
        webhooks:
          hook: {url: "http://127.0.0.1:9/hook", format: json}
        rules:
        """
        )
        + textwrap.indent(textwrap.dedent(rules), "  ")
        + textwrap.dedent(maintenance)
    )


HEARTBEAT = """\
- name: alive
  source: s
  match: 'alive'
  expect: {every: 1h}
- name: errors
  source: s
  match: 'ERROR (?P<n>\\d+)'
  group_by: [n]
  repeat: never
  resolve_after: 1d
"""
SUNDAY_2H = """\
maintenance:
  - {cron: "0 2 * * 0", for: 2h, timezone: Europe/Berlin, rules: [alive, errors], comment: patch}
"""


def feed(p: Pipeline, text: str, at: datetime) -> list[str]:
    c = p.process(Batch("s", [Line("s", text)]), lambda _l: When.exact(at), at)
    return [r.payload["notification"] + ":" + r.payload["rule"] for r in c.outbox]


def run_until(p: Pipeline, clock: FakeClock, until: datetime) -> list[tuple[datetime, str]]:
    """Every deadline up to ``until``, each at its own instant (the clock set to it)."""
    sent: list[tuple[datetime, str]] = []
    while (d := p.next_deadline()) is not None and d <= until:
        clock.set(max(d, clock.now()))
        c = p.tick(clock.now())
        sent += [
            (clock.now(), f"{r.payload['notification']}:{r.payload['rule']}") for r in c.outbox
        ]
    clock.set(until)
    return sent


@pytest.mark.parametrize(
    ("last_beat", "opens", "ends"),
    [
        # spring forward: 02:00 Berlin does not exist on 2026-03-29; the window opens at 03:00
        # CEST (01:00 UTC) and lasts two real hours
        ("2026-03-29T00:30:00+00:00", "2026-03-29T01:00:00+00:00", "2026-03-29T03:00:00+00:00"),
        # fall back: 02:00 Berlin happens twice on 2026-10-25; the window opens once, at the
        # first (CEST, 00:00 UTC)
        ("2026-10-24T23:30:00+00:00", "2026-10-25T00:00:00+00:00", "2026-10-25T02:00:00+00:00"),
    ],
)
def test_a_heartbeat_does_not_fire_inside_a_window_across_dst_nor_right_after(
    last_beat: str, opens: str, ends: str
) -> None:
    config = parse_config(cfg(SUNDAY_2H, HEARTBEAT))
    start = datetime.fromisoformat(last_beat)
    clock = FakeClock(start)
    p = Pipeline(config, start, lambda _r: {})
    feed(p, "alive", start)
    begin, end = datetime.fromisoformat(opens), datetime.fromisoformat(ends)
    assert p.muter.maintenance.active("alive", begin) is not None
    assert p.muter.maintenance.active("alive", begin - timedelta(microseconds=1)) is None
    assert p.muter.maintenance.active("alive", end) is None
    # the silence would have fired 1h after the beat, inside the window: its clock restarts at
    # the window's end, so it fires exactly one period after that, not before
    assert p.evaluators["alive"].next_deadline() == end + timedelta(hours=1)
    sent = run_until(p, clock, end + timedelta(hours=1) - timedelta(microseconds=1))
    assert sent == []
    assert not p.alerts.firing()
    sent = run_until(p, clock, end + timedelta(hours=1))
    assert sent == [(end + timedelta(hours=1), "firing:alive")]


def test_an_alert_inside_a_window_is_recorded_not_notified_and_notified_at_its_end() -> None:
    config = parse_config(cfg(SUNDAY_2H, HEARTBEAT))
    begin = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    end = begin + timedelta(hours=2)
    clock = FakeClock(begin)
    p = Pipeline(config, begin, lambda _r: {})
    feed(p, "alive", begin)
    assert feed(p, "ERROR 1", begin + timedelta(minutes=10)) == []
    feed(p, "ERROR 2", begin + timedelta(minutes=20))
    [a1, a2] = sorted(p.alerts.firing(), key=lambda a: a.key)
    assert a1.muted is not None and a1.muted["by"] == "maintenance #1"
    assert a1.muted["until"] == end.isoformat() and a1.muted["comment"] == "patch"
    assert a1.owed == "firing"
    p.alerts._resolve("errors", a2.key, begin + timedelta(minutes=30), clock.now(), None)
    # at the window's end, exactly, the alert still firing is notified; the resolved one, whose
    # firing never went out, is not
    sent = run_until(p, clock, end)
    assert sent == [(end, "firing:errors")]
    assert a1.muted is None and a1.owed is None
    assert feed(p, "ERROR 3", end + timedelta(minutes=1)) == ["firing:errors"]


def test_a_daily_window_slot_that_overlaps_maintenance_is_skipped_that_day() -> None:
    rules = """\
    - name: backup
      source: s
      match: 'backup done'
      expect: {cron: "0 1 * * *", within: 1h, timezone: UTC}
      repeat: never
    """
    one_off = """\
    maintenance:
      - {start: "2026-05-02T00:30:00Z", end: "2026-05-02T01:30:00Z", rules: [backup]}
    """
    config = parse_config(cfg(one_off, rules))
    start = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    clock = FakeClock(start)
    p = Pipeline(config, start, lambda _r: {})
    # 2 May's slot (01:00-02:00) overlaps the maintenance: no fire then, nor at its close
    assert run_until(p, clock, datetime(2026, 5, 2, 12, 0, tzinfo=UTC)) == []
    # 3 May's slot is watched again
    sent = run_until(p, clock, datetime(2026, 5, 3, 12, 0, tzinfo=UTC))
    assert sent == [(datetime(2026, 5, 3, 2, 0, tzinfo=UTC), "firing:backup")]


def test_a_pair_started_before_a_window_times_out_only_after_it() -> None:
    rules = """\
    - name: job
      source: s
      start: 'job start'
      end: 'job end'
      within: 30m
    """
    one_off = """\
    maintenance: [{start: "2026-05-02T01:00:00Z", end: "2026-05-02T02:00:00Z"}]
    """
    config = parse_config(cfg(one_off, rules))
    start = datetime(2026, 5, 2, 0, 45, tzinfo=UTC)
    clock = FakeClock(start)
    p = Pipeline(config, start, lambda _r: {})
    feed(p, "job start", start)
    end = datetime(2026, 5, 2, 2, 0, tzinfo=UTC)
    assert run_until(p, clock, end + timedelta(minutes=29)) == []
    assert run_until(p, clock, end + timedelta(minutes=30)) == [
        (end + timedelta(minutes=30), "firing:job")
    ]


def silence(*matchers: str, start: datetime, hours: float = 2) -> Silence:
    return Silence(
        id="s1",
        matchers=tuple(LabelMatcher.parse(m) for m in matchers),
        starts_at=start,
        ends_at=start + timedelta(hours=hours),
        comment="reboot",
        author="ops",
        created_at=start,
    )


@pytest.mark.parametrize(
    ("matchers", "muted"),
    [
        (["n=1"], {"1"}),
        (["n!=1"], {"2", "10"}),
        (["n=~1.*"], {"1", "10"}),
        (["n=~1"], {"1"}),  # anchored at both ends, as in Alertmanager
        (["n!~1.*"], {"2"}),
        (["rule=errors", "severity=warning"], {"1", "2", "10"}),
        (["host=~'other|h'", "n='2'"], {"2"}),
        (["source=s", "kind=error", "n=~2|10"], {"2", "10"}),
        (["nolabel="], {"1", "2", "10"}),  # a missing label is the empty string
    ],
)
def test_silence_matchers_on_the_alert_labels(matchers: list[str], muted: set[str]) -> None:
    config = parse_config(cfg("", HEARTBEAT))
    now = datetime(2026, 5, 2, 0, 0, tzinfo=UTC)
    p = Pipeline(config, now, lambda _r: {})
    p.set_silences([silence(*matchers, start=now)], now)
    sent = [feed(p, f"ERROR {n}", now) for n in ("1", "2", "10")]
    notified = {n for n, out in zip(("1", "2", "10"), sent, strict=True) if out}
    assert notified == {"1", "2", "10"} - muted
    got = {a.labels["n"] for a in p.alerts.firing() if a.muted}
    assert got == muted


def test_a_silence_ends_exactly_and_the_still_firing_alert_is_notified_then() -> None:
    config = parse_config(cfg("", HEARTBEAT))
    now = datetime(2026, 5, 2, 0, 0, tzinfo=UTC)
    clock = FakeClock(now)
    p = Pipeline(config, now, lambda _r: {})
    p.set_silences([silence("rule=errors", start=now, hours=1)], now)
    assert feed(p, "ERROR 1", now) == []
    ends = now + timedelta(hours=1)
    before = run_until(p, clock, ends - timedelta(microseconds=1))
    assert [s for s in before if s[1].endswith(":errors")] == []
    assert [s for s in run_until(p, clock, ends) if s[1].endswith(":errors")] == [
        (ends, "firing:errors")
    ]


def test_agent_alerts_are_silenced_only_by_an_explicit_rule_matcher() -> None:
    now = datetime(2026, 5, 2, 0, 0, tzinfo=UTC)
    labels = {"rule": "detector-agent", "kind": "agent", "severity": "error", "host": "h"}
    assert not silence("host=h", start=now).matches("detector-agent", labels)
    assert not silence("rule=~detector-.*", start=now).matches("detector-agent", labels)
    assert silence("rule=detector-agent", start=now).matches("detector-agent", labels)


@pytest.mark.parametrize("bad", ["n", "=x", "n=~(", "n~x"])
def test_a_bad_matcher_is_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(MatcherError, match=r"matcher|bad regex"):
        LabelMatcher.parse(bad)


@pytest.mark.parametrize(
    ("entry", "where", "message"),
    [
        ('{cron: "0 2 * *", for: 2h}', "maintenance[0].cron", "expected 5"),
        ('{cron: "0 2 * * 0"}', "maintenance[0]", "needs for:"),
        ('{cron: "0 2 * * 0", for: 2h, timezone: Europe/Berln}', "timezone", "Europe/Berlin"),
        ('{cron: "0 2 * * 0", for: 2h, rules: [alvie]}', "maintenance[0].rules", "alive"),
        ('{start: "2026-05-02T01:00:00Z"}', "maintenance[0]", "end: is missing"),
        ('{start: "2026-05-02T01:00:00", end: "2026-05-02T02:00:00Z"}', "start", "offset"),
        ('{start: "2026-05-02T03:00:00Z", end: "2026-05-02T02:00:00Z"}', "end", "after start"),
        ('{cron: "0 2 * * 0", fro: 2h}', "unknown key 'fro'", "'for'"),
    ],
)
def test_maintenance_config_errors_name_file_line_column(
    entry: str, where: str, message: str
) -> None:
    text = cfg(f"maintenance:\n  - {entry}\n", HEARTBEAT)
    line = text.splitlines().index(f"  - {entry}") + 1
    with pytest.raises(ConfigError) as e:
        parse_config(text, "rules.yaml")
    problem = next(p for p in str(e.value).splitlines() if where in p)
    assert problem.startswith(f"rules.yaml:{line}:")
    assert message in problem
