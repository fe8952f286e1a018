"""threshold rules: N matches within a sliding window per key, exact firing and resolution."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config.load import parse_config
from detector.config.nodes import ConfigError
from detector.matching import Hit, Matcher
from detector.model import ThresholdSpec
from detector.pipeline import pattern_specs
from detector.records import Commit
from detector.rules.threshold import ThresholdEvaluator, _row
from detector.store.db import Store
from tests.helpers import at, line, rule, when
from tests.test_replay_clock import run_cli


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


# ---------------------------------------------------------------- reset_on and distinct

SSH_RULES = """\
version: 1
sources:
  auth: {{file: /var/log/auth.log}}
webhooks:
  ops: {{url: 'http://127.0.0.1:9/'}}
rules:
  - name: ssh-bruteforce
    source: auth
    match: 'Failed password for (?P<user>\\S+) from (?P<ip>\\S+)'
    threshold: {{count: 5, within: 10m, by: [ip]{extra}}}
"""
RESET = ", reset_on: 'Accepted password for \\S+ from (?P<ip>\\S+)'"


def crowdsec_log() -> str:
    """4 failures, a successful login, 3 more failures from one IP."""
    out = [
        f"2026-03-01T12:00:0{i}Z sshd: Failed password for root from 203.0.113.7" for i in range(4)
    ]
    out.append("2026-03-01T12:00:04Z sshd: Accepted password for root from 203.0.113.7")
    out += [
        f"2026-03-01T12:00:0{i}Z sshd: Failed password for root from 203.0.113.7" for i in (5, 6, 7)
    ]
    return "\n".join(out) + "\n"


def reset_hit(ip: str = "1.2.3.4") -> Hit:
    return Hit(0, "t", "reset", {"ip": ip})


def user_hit(user: str, ip: str = "1.2.3.4") -> Hit:
    return Hit(0, "t", "match", {"ip": ip, "user": user})


def ev_spec(**kw: object) -> ThresholdEvaluator:
    spec = ThresholdSpec(within=timedelta(minutes=10), by=("ip",), **kw)  # type: ignore[arg-type]
    return ThresholdEvaluator(rule("t", "threshold", threshold=spec), at(0))


def test_reset_on_clears_the_count_of_its_key_only() -> None:
    e = ev_spec(count=5, reset_on="Accepted")
    out = []
    for t in range(4):
        out += e.observe(hit(), line("fail"), when(t))
        out += e.observe(hit("10.0.0.9"), line("fail"), when(t))
    out += e.observe(reset_hit(), line("Accepted"), when(4))
    assert "ip=1.2.3.4" not in e.keys
    for t in (5, 6, 7):
        out += e.observe(hit(), line("fail"), when(t))
    assert out == []  # 4 + 3 after the reset: never 5
    out += e.observe(hit("10.0.0.9"), line("fail"), when(8))
    assert [(s.action, s.key) for s in out] == [("fire", "ip=10.0.0.9")]  # the other IP: 5


def test_without_reset_on_the_same_lines_fire() -> None:
    e = ev_spec(count=5)
    out = []
    for t in (0, 1, 2, 3, 5):
        out += e.observe(hit(), line("fail"), when(t))
    assert [s.action for s in out] == ["fire"]


def test_a_reset_resolves_a_firing_key_at_the_reset_line() -> None:
    e = ev_spec(count=3, reset_on="Accepted")
    out = []
    for t in range(4):
        out += e.observe(hit(), line("fail"), when(t))
    out += e.observe(reset_hit(), line("Accepted"), when(10))
    assert [s.action for s in out] == ["fire", "fire", "resolve"]
    assert out[-1].at == at(10)
    assert out[-1].happened == "reset by a matching line (peak 4)"
    assert e.keys == {}
    assert e.state_changes() == {"ip=1.2.3.4": None}  # its row is deleted
    assert e.next_deadline() is None  # the stale deadline is dropped
    assert e.due(at(1000)) == []


def test_distinct_counts_distinct_values_per_key() -> None:
    e = ev_spec(count=5, distinct="user")
    out = []
    for i, user in enumerate(["root", "admin", "oracle", "test", "pi", "ubuntu"]):
        out += e.observe(user_hit(user), line("fail"), when(i))
    assert [s.action for s in out] == ["fire", "fire"]  # 5th and 6th distinct user
    assert out[0].summary == "t: 5 distinct user within 10m (ip=1.2.3.4)"
    assert out[0].at == at(4)
    # firing until the 5th most recently seen user (admin, t=1) is 10 min old
    assert e.next_deadline() == at(601)
    resolved = e.due(at(601))
    assert [s.action for s in resolved] == ["resolve"]
    assert resolved[0].happened == "back below 5 distinct user in 10m (peak 6)"


def test_distinct_one_user_many_times_never_fires() -> None:
    e = ev_spec(count=5, distinct="user")
    out = []
    for i in range(6):
        out += e.observe(user_hit("root"), line("fail"), when(i))
    assert out == []
    assert e.keys["ip=1.2.3.4"].size() == 1
    # a repeated value counts at its last sighting: the key lives until 10 min after t=5
    assert e.next_deadline() == at(605)


def test_distinct_a_hit_without_the_field_does_not_count() -> None:
    e = ev_spec(count=2, distinct="user")
    assert e.observe(hit(), line("no user"), when(0)) == []
    assert e.keys == {}


def test_distinct_and_reset_state_survives_a_restart_in_a_real_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store(path)
    store.migrate()
    e = ev_spec(count=5, distinct="user", reset_on="Accepted")
    e.load_state({})
    for i, user in enumerate(["root", "admin", "oracle", "root"]):
        e.observe(user_hit(user), line("fail"), when(i))
    e.observe(hit("10.0.0.9"), line("fail"), when(0))  # no user: no key
    store.commit(Commit(rule_state={"t": e.state_changes()}), at(4))
    store.close()

    store = Store(path)
    e2 = ev_spec(count=5, distinct="user", reset_on="Accepted")
    e2.load_state(store.load_rule_state("t"))
    store.close()
    k = e2.keys["ip=1.2.3.4"]
    assert k.seen is not None and list(k.seen) == ["admin", "oracle", "root"]
    assert list(k.seen.values()) == [at(1), at(2), at(3)]
    assert e2.next_deadline() == at(603)
    out = e2.observe(user_hit("test"), line("fail"), when(5))
    assert out == []  # 4 distinct
    out = e2.observe(user_hit("pi"), line("fail"), when(6))
    assert [s.action for s in out] == ["fire"]  # the 5th: counted across the restart
    # a row of the rule before distinct: was added is left out (another count), and vice versa
    plain = ev_spec(count=5)
    plain.load_state({"ip=1.2.3.4": _row("ip=1.2.3.4", k)})
    assert plain.keys == {}


def test_a_reset_survives_a_restart() -> None:
    e = ev_spec(count=5, reset_on="Accepted")
    for t in range(4):
        e.observe(hit(), line("fail"), when(t))
    e.state_changes()
    e.observe(reset_hit(), line("Accepted"), when(4))
    rows = e.state_changes()
    assert rows == {"ip=1.2.3.4": None}
    e2 = ev_spec(count=5, reset_on="Accepted")
    e2.load_state({})  # the row was deleted
    out = []
    for t in (5, 6, 7):
        out += e2.observe(hit(), line("fail"), when(t))
    assert out == []


@pytest.mark.parametrize(("extra", "firing"), [(RESET, 0), ("", 1)])
def test_detector_test_replays_the_crowdsec_scenario(
    tmp_path: Path, extra: str, firing: int
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(SSH_RULES.format(extra=extra))
    log = tmp_path / "auth.log"
    log.write_text(crowdsec_log())
    out = run_cli("test", "-c", str(rules), "--source", "auth", "--format", "json", str(log))
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert [r["notification"] for r in rows] == ["firing"] * firing, out.stderr
    assert out.returncode == (1 if firing else 0), out.stderr


@pytest.mark.parametrize(("users", "firing"), [(6, True), (1, False)])
def test_detector_test_counts_distinct_users_per_ip(
    tmp_path: Path, users: int, firing: bool
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(SSH_RULES.format(extra=", distinct: user"))
    log = tmp_path / "auth.log"
    log.write_text(
        "".join(
            f"2026-03-01T12:00:0{i}Z sshd: Failed password for u{i % users} from 203.0.113.7\n"
            for i in range(6)
        )
    )
    out = run_cli("test", "-c", str(rules), "--source", "auth", "--format", "json", str(log))
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    got = [(r["notification"], r["time"]) for r in rows]
    assert got == ([("firing", "2026-03-01T12:00:04.000Z")] if firing else []), out.stderr


def test_reset_on_and_distinct_are_checked_in_rules_yaml() -> None:
    cfg = parse_config(SSH_RULES.format(extra=RESET + ", distinct: user"), env={})
    spec = cfg.rules[0].threshold
    assert spec is not None and spec.distinct == "user" and spec.reset_on is not None
    with pytest.raises(ConfigError) as err:
        parse_config(SSH_RULES.format(extra=", reset_on: 'Accepted password'"), env={})
    assert "rules.yaml:10:" in str(err.value)
    assert "reset_on must capture the by: groups" in str(err.value)
    assert "(?P<ip>…)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(SSH_RULES.format(extra=", distinct: usr"), env={})
    assert "'usr' is not captured" in str(err.value) and "user" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(SSH_RULES.format(extra=", reset_on: 'Accepted ('"), env={})
    assert "invalid regular expression" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(SSH_RULES.format(extra=", reset: x"), env={})
    assert "reset_on" in str(err.value)  # did you mean


def test_the_reset_pattern_goes_through_the_matcher() -> None:
    cfg = parse_config(SSH_RULES.format(extra=RESET), env={})
    specs = pattern_specs(cfg.rules)
    assert [(s.role, s.rule) for s in specs] == [
        ("match", "ssh-bruteforce"),
        ("reset", "ssh-bruteforce"),
    ]
    hits = Matcher(specs).match(
        "auth",
        [
            "sshd: Failed password for root from 203.0.113.7",
            "sshd: Accepted password for root from 203.0.113.7",
            "sshd: something else",
        ],
    )
    assert [(h.line, h.role, h.groups.get("ip")) for h in hits] == [
        (0, "match", "203.0.113.7"),
        (1, "reset", "203.0.113.7"),
    ]
