"""anomaly rules: new kinds of lines (learning, one alert, storm digest, restart) and rate
bursts/drops against a learned, seasonal baseline — all with time passed in, never slept."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from detector.clock import FakeClock
from detector.matching import Hit
from detector.model import AnomalyNewSpec, AnomalyRateSpec, RuleConfig
from detector.records import Commit
from detector.rules.anomaly_new import NewKindEvaluator, list_templates, mark_known
from detector.rules.anomaly_rate import RateEvaluator
from detector.rules.base import Evaluator, Signal, When
from detector.store.db import Store
from tests.helpers import T0, at, line, rule, when

# ====================================================================== anomaly: new


def new_rule(**spec: Any) -> RuleConfig:
    spec.setdefault("learn", timedelta(hours=1))
    return rule(
        "new-errors",
        "anomaly_new",
        match=None,
        anomaly_new=AnomalyNewSpec(**spec),
        resolve_after=timedelta(minutes=15),
    )


LEARNED = [
    "Accepted password for root from 10.0.0.1 port 22 ssh2",
    "Accepted password for root from 10.0.0.2 port 2222 ssh2",
    "session opened for user alice by cron",
    "session opened for user bob by cron",
]


def learn(e: NewKindEvaluator) -> None:
    for i, text in enumerate(LEARNED):
        assert e.observe_line(line(text), when(i)) == []


def test_templates_are_learned_silently_during_the_learning_period() -> None:
    e = NewKindEvaluator(new_rule(), at(0))
    assert e.wants_all_lines
    learn(e)
    assert e.observe_line(line("kernel: disk sda failing"), when(3599)) == []
    assert len(e.miner.templates) == 3


def test_after_learning_a_new_kind_fires_once_with_template_and_first_example() -> None:
    e = NewKindEvaluator(new_rule(), at(0))
    learn(e)
    assert (
        e.observe_line(line("Accepted password for root from 10.0.0.9 port 1 ssh2"), when(4000))
        == []
    )
    out = e.observe_line(line("disk sda failing at sector 1234"), when(4000))
    assert [s.action for s in out] == ["fire"]
    s = out[0]
    assert s.kind == "anomaly"
    assert "disk sda failing at sector <NUM>" in s.summary
    assert s.sample == "disk sda failing at sector 1234"
    assert s.evidence["template"] == "disk sda failing at sector <NUM>"
    # more lines of that template only raise the count of the same alert
    more = e.observe_line(line("disk sda failing at sector 99"), when(4010))
    assert [(m.action, m.key, m.count) for m in more] == [("fire", s.key, 1)]


def test_the_alert_resolves_exactly_when_the_template_was_quiet_for_resolve_after() -> None:
    e = NewKindEvaluator(new_rule(), at(0))
    learn(e)
    key = e.observe_line(line("disk sda failing"), when(4000))[0].key
    e.observe_line(line("disk sda failing"), when(4100))
    assert e.next_deadline() == at(4100 + 900)
    assert e.due(at(4999)) == []
    out = e.due(at(5000))
    assert [(s.action, s.key) for s in out] == [("resolve", key)]
    # after the alert's life the template is known: no new alert, no count signal
    assert e.observe_line(line("disk sda failing"), when(6000)) == []
    assert e.next_deadline() is None


def test_learning_can_be_a_number_of_lines() -> None:
    e = NewKindEvaluator(new_rule(learn=None, learn_lines=4), at(0))
    learn(e)
    out = e.observe_line(line("totally different line"), when(5))
    assert [s.action for s in out] == ["fire"]


def test_with_match_only_matching_lines_are_mined() -> None:
    r = new_rule()
    r = RuleConfig(**{**r.__dict__, "match": "(?i)error"})
    e = NewKindEvaluator(r, at(0))
    assert not e.wants_all_lines
    hit = Hit(0, r.name, "match", {})
    e.observe(hit, line("ERROR db timeout after 5s"), when(0))
    out = e.observe(hit, line("ERROR disk full on /var"), when(4000))
    assert [s.action for s in out] == ["fire"]
    assert e.observe(Hit(0, r.name, "ignore", {}), line("ERROR other thing"), when(4001)) == []


def test_storm_control_sends_at_most_n_alerts_per_hour_and_one_digest_for_the_rest() -> None:
    e = NewKindEvaluator(new_rule(max_alerts_per_hour=2), at(0))
    learn(e)
    novel = [f"{w} subsystem reported a problem" for w in ("cpu", "fan", "psu", "nic", "raid")]
    out: list[Signal] = []
    for i, text in enumerate(novel):
        out += e.observe_line(line(text), when(4000 + i))
    assert [s.action for s in out] == ["fire", "fire"]
    # the two alerts resolve when quiet; the digest waits for the end of the storm hour
    early = e.due(at(4000 + 3599))
    assert [s.action for s in early] == ["resolve", "resolve"]
    assert e.next_deadline() == at(4000 + 3600)
    digest = [s for s in e.due(at(4000 + 3600)) if s.action == "info"]
    assert len(digest) == 1
    assert digest[0].count == 3
    assert "3 more new kinds of lines" in digest[0].summary
    for text in novel[2:]:
        assert text in digest[0].description
    # a new hour has a fresh allowance
    assert [s.action for s in e.observe_line(line("yet another one"), when(9000))] == ["fire"]


def commit(store: Store, e: Any, name: str) -> None:
    store.commit(Commit(rule_state={name: e.state_changes()}), T0)


def test_a_restart_neither_relearns_nor_realerts(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = Store(db)
    r = new_rule()
    e = NewKindEvaluator(r, at(0))
    learn(e)
    commit(store, e, r.name)
    fired = e.observe_line(line("disk sda failing"), when(4000))
    commit(store, e, r.name)
    store.close()

    store = Store(db)
    e2 = NewKindEvaluator(r, at(5000))  # a fresh start time must not restart learning
    e2.load_state(store.load_rule_state(r.name))
    assert e2.observe_line(line("disk sda failing"), when(5001))[0].key == fired[0].key
    assert e2.observe_line(line("session opened for user carol by cron"), when(5002)) == []
    novel = e2.observe_line(line("fan speed critical"), when(5003))
    assert [s.action for s in novel] == ["fire"]
    assert novel[0].key != fired[0].key
    store.close()


def test_a_batch_rewrites_only_the_templates_it_touched() -> None:
    e = NewKindEvaluator(new_rule(), at(0))
    learn(e)
    e.state_changes()
    e.observe_line(line("session opened for user dave by cron"), when(10))
    changes = e.state_changes()
    assert [k for k in changes if k.startswith("t:")] == ["t:t2"]


def test_templates_can_be_listed_and_marked_known_from_the_stored_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    r = new_rule()
    e = NewKindEvaluator(r, at(0))
    learn(e)
    e.observe_line(line("disk sda failing"), when(4000))
    commit(store, e, r.name)

    items = store.load_rule_state(r.name)
    infos = list_templates(items)
    assert (infos[0].template, infos[0].count) == (
        "Accepted password for root from <IP> port <NUM> ssh2",
        2,
    )
    new = next(i for i in infos if i.template == "disk sda failing")
    assert new.alerted and not new.learned and not new.known
    assert new.first_at == at(4000)

    store.commit(Commit(rule_state={r.name: mark_known(items, new.id)}), T0)
    items = store.load_rule_state(r.name)
    assert next(i for i in list_templates(items) if i.id == new.id).known
    e2 = NewKindEvaluator(r, at(4100))
    e2.load_state(items)
    assert e2.observe_line(line("disk sda failing"), when(4200)) == []  # no longer counted
    assert e2.next_deadline() is None
    store.close()


# ====================================================================== anomaly: rate


def rate_rule(**spec: Any) -> RuleConfig:
    spec.setdefault("learn", timedelta(hours=1))
    return rule("syslog-rate", "anomaly_rate", match=None, anomaly_rate=AnomalyRateSpec(**spec))


def feed(e: RateEvaluator, clock: FakeClock, per_bucket: list[int]) -> list[Signal]:
    """Spread each bucket's lines over it and close it at its exact end, like the scheduler."""
    out: list[Signal] = []
    for n in per_bucket:
        deadline = e.next_deadline()
        assert deadline is not None
        start = deadline - e.spec.bucket
        for i in range(n):
            t = start + e.spec.bucket * (i / max(n, 1))
            out += e.observe_line(line("x"), When.exact(max(t, clock.now())))
        clock.set(deadline)
        out += e.due(clock.now())
    return out


def steady(n: int, k: int = 100) -> list[int]:
    return [k + (i % 5) - 2 for i in range(n)]  # 98..102


def test_buckets_close_at_exact_boundaries() -> None:
    clock = FakeClock(T0 + timedelta(seconds=30))
    e = RateEvaluator(rate_rule(), clock.now())
    assert e.next_deadline() == T0 + timedelta(minutes=1)
    feed(e, clock, [5, 5])
    assert e.next_deadline() == T0 + timedelta(minutes=3)


def test_a_burst_fires_after_for_buckets_and_resolves_when_back() -> None:
    clock = FakeClock(T0)
    e = RateEvaluator(rate_rule(for_buckets=2), clock.now())
    assert feed(e, clock, steady(70)) == []
    assert feed(e, clock, [400]) == []  # one anomalous bucket is not enough
    out = feed(e, clock, [400])
    assert [s.action for s in out] == ["fire"]
    assert out[0].evidence["direction"] == "up"
    assert out[0].at == clock.now()  # at the end of the second burst bucket
    assert "burst" in out[0].summary
    assert feed(e, clock, [400]) == []  # still firing: nothing new
    back = feed(e, clock, [100])
    assert [s.action for s in back] == ["resolve"]


def test_a_drop_to_zero_on_a_busy_source_fires() -> None:
    clock = FakeClock(T0)
    e = RateEvaluator(rate_rule(for_buckets=3), clock.now())
    feed(e, clock, steady(70))
    out = feed(e, clock, [0, 0, 0])
    assert [s.action for s in out] == ["fire"]
    assert out[0].evidence["direction"] == "down"
    assert "drop" in out[0].summary


def test_small_absolute_changes_stay_below_min_delta() -> None:
    clock = FakeClock(T0)
    e = RateEvaluator(rate_rule(min_delta=10), clock.now())
    feed(e, clock, [2] * 70)
    assert feed(e, clock, [9, 9, 9]) == []  # many deviations, but only +7 lines


def test_nothing_fires_during_learning() -> None:
    clock = FakeClock(T0)
    e = RateEvaluator(rate_rule(learn=timedelta(hours=1)), clock.now())
    assert feed(e, clock, steady(30) + [1000] * 10) == []


def test_direction_up_ignores_drops() -> None:
    clock = FakeClock(T0)
    e = RateEvaluator(rate_rule(direction="up"), clock.now())
    feed(e, clock, steady(70))
    assert feed(e, clock, [0] * 5) == []


def test_the_usual_daily_peak_does_not_fire_after_a_day_of_learning() -> None:
    bucket = timedelta(minutes=10)
    clock = FakeClock(T0.replace(hour=0))

    def day() -> list[int]:  # 6 buckets an hour; 12:00-14:00 is the daily peak
        return [300 if 12 <= b // 6 < 14 else 20 for b in range(144)]

    e = RateEvaluator(rate_rule(bucket=bucket, learn=timedelta(days=1)), clock.now())
    assert feed(e, clock, day()) == []  # day 1: learning
    assert feed(e, clock, day()) == []  # day 2: the peak hours already have a baseline
    # but a peak at an unusual hour still fires
    odd = [300 if 3 <= b // 6 < 4 else 20 for b in range(48)]
    out = feed(e, clock, odd)
    assert [s.action for s in out] == ["fire", "resolve"]
    assert out[0].evidence["baseline"] == "hour-of-day"


def test_rates_are_counted_per_by_field() -> None:
    clock = FakeClock(T0)
    r = rate_rule(by="host")
    r = RuleConfig(**{**r.__dict__, "match": "."})
    e = RateEvaluator(r, clock.now())
    out: list[Signal] = []
    for b in range(80):
        deadline = e.next_deadline()
        assert deadline is not None
        for host in ("a", "b"):
            n = 0 if (host == "b" and b >= 75) else 50
            for _ in range(n):
                out += e.observe(
                    Hit(0, r.name, "match", {"host": host}), line("x"), When.exact(clock.now())
                )
        clock.set(deadline)
        out += e.due(clock.now())
    assert [(s.action, s.key, dict(s.labels)) for s in out] == [("fire", "b", {"host": "b"})]


def test_baseline_and_open_bucket_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    r = rate_rule()
    clock = FakeClock(T0)
    e = RateEvaluator(r, clock.now())
    feed(e, clock, steady(70))
    for _ in range(40):
        e.observe_line(line("x"), When.exact(clock.now()))
    commit(store, e, r.name)
    store.close()

    store = Store(tmp_path / "state.db")
    e2 = RateEvaluator(r, clock.now())
    e2.load_state(store.load_rule_state(r.name))
    assert e2.counts == {"": 40}
    assert e2.keys[""].overall.n == e.keys[""].overall.n
    # a restarted agent is past learning and still knows what a burst is
    out = feed(e2, clock, [60, 500, 500])
    assert [s.action for s in out] == ["fire"]
    store.close()


def test_downtime_is_neither_judged_nor_learned() -> None:
    clock = FakeClock(T0)
    e = RateEvaluator(rate_rule(), clock.now())
    feed(e, clock, steady(70))
    n_before = e.keys[""].overall.n
    down_until = clock.now() + timedelta(minutes=30, seconds=20)
    e.note_downtime(clock.now(), down_until)
    clock.set(down_until)
    assert e.due(clock.now()) == []
    # the bucket the agent came back in is partial: not judged even though it is almost empty
    assert feed(e, clock, [3]) == []
    assert e.keys[""].overall.n == n_before
    assert feed(e, clock, steady(3)) == []


def test_a_key_seen_late_learns_before_it_can_fire() -> None:
    clock = FakeClock(T0)
    r = rate_rule(by="host", learn=timedelta(minutes=30))
    r = RuleConfig(**{**r.__dict__, "match": "."})
    e = RateEvaluator(r, clock.now())
    out: list[Signal] = []
    for b in range(60):
        deadline = e.next_deadline()
        assert deadline is not None
        hosts = {"old": 50} if b < 40 else {"old": 50, "new": 5 if b % 2 else 500}
        for host, n in hosts.items():
            hit = Hit(0, r.name, "match", {"host": host})
            for _ in range(n):
                out += e.observe(hit, line("x"), When.exact(clock.now()))
        clock.set(deadline)
        out += e.due(clock.now())
    assert out == []  # "new" is wild, but has not been watched for 30 buckets yet


def test_both_evaluators_satisfy_the_evaluator_protocol() -> None:
    evaluators: list[Evaluator] = [
        NewKindEvaluator(new_rule(), at(0)),
        RateEvaluator(rate_rule(), at(0)),
    ]
    assert all(e.rule.kind.startswith("anomaly") for e in evaluators)


def test_a_quiet_weekend_is_usual_once_a_week_has_been_learned() -> None:
    hour = timedelta(hours=1)
    clock = FakeClock(T0.replace(day=2, hour=0))  # Monday 2 March 2026
    assert clock.now().weekday() == 0

    def day(weekday: int) -> list[int]:
        return [400 if 8 <= h < 18 else 40 for h in range(24)] if weekday < 5 else [40] * 24

    e = RateEvaluator(rate_rule(bucket=hour, learn=timedelta(days=1)), clock.now())
    first_week: list[Signal] = []
    for d in range(7):
        first_week += feed(e, clock, day(d))
    # the first Saturday is unusual against the hour-of-day baseline: a drop fires (and resolves)
    assert [s.action for s in first_week] == ["fire", "resolve"]
    assert first_week[0].evidence["direction"] == "down"
    second_week: list[Signal] = []
    for d in range(7):
        second_week += feed(e, clock, day(d))
    assert second_week == []
