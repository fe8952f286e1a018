"""Routes: ``routes:`` in rules.yaml send alerts to webhooks by their labels, in order, with
``continue``; a rule's own ``notify:`` wins; agent alerts keep selfmon's routing unless a route
names them; ``detector check --routes`` says where each rule's alerts go; config errors name the
place. End to end: the agent in-process posting to one real receiver per webhook."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from detector.alerts import AlertBook
from detector.cli import main
from detector.clock import FakeClock
from detector.config import ConfigError, parse_config
from detector.model import RouteConfig
from detector.problems import AGENT_RULE, agent_signal
from detector.rules.base import Signal
from tests.helpers import at, rule
from tests.receiver import Receiver
from tests.test_service import run_agent

HOOKS = ["ops", "pager", "slack"]
ROUTES = (
    RouteConfig(webhooks=("pager",), match={"severity": "critical"}, continue_=True),
    RouteConfig(webhooks=("slack",), match_re={"rule": "backup-.*"}),
    RouteConfig(webhooks=("slack", "ops"), match={"severity": "critical"}),
)


def routed_book() -> AlertBook:
    rules = {
        "db-down": rule("db-down", severity="critical", notify=("ops",)),
        "backup-nightly": rule("backup-nightly", severity="critical", notify=("ops",)),
        "backup-weekly": rule("backup-weekly", notify=("ops",)),
        "disk": rule("disk", notify=("ops",)),
        "own": rule("own", severity="critical", notify=("ops",), notify_own=True),
    }
    return AlertBook("h1", rules, HOOKS, fallback=["ops"], routes=ROUTES)


def fire(name: str, t: float = 0) -> Signal:
    return Signal(rule=name, kind="error", key="", action="fire", at=at(t), summary=name)


def webhooks_of(book: AlertBook, name: str) -> list[str]:
    book.apply([fire(name)], at(0))
    return [o.webhook for o in book.take()[1]]


def test_the_first_matching_route_wins_and_continue_tries_the_next_ones() -> None:
    b = routed_book()
    # critical: route 1 (continue) adds pager, route 3 adds slack and ops; route 2 is not matched
    assert webhooks_of(b, "db-down") == ["pager", "slack", "ops"]
    # critical backup: route 1 (continue), then route 2 takes it and stops
    assert webhooks_of(b, "backup-nightly") == ["pager", "slack"]
    # a warning backup: route 2 only
    assert webhooks_of(b, "backup-weekly") == ["slack"]
    # no route matches: the rule's default (defaults.notify, else every webhook)
    assert webhooks_of(b, "disk") == ["ops"]


def test_a_rules_own_notify_beats_the_routes() -> None:
    assert webhooks_of(routed_book(), "own") == ["ops"]


def test_the_resolved_notice_and_repeats_go_where_the_firing_went_even_after_a_reload() -> None:
    b = routed_book()
    b.apply([fire("backup-nightly")], at(0))
    b.take()
    b.configure(b.rules, HOOKS, ["ops"], routes=())  # the routes are gone now
    b.due(at(4 * 3600))
    b.apply(
        [Signal(rule="backup-nightly", kind="error", key="", action="resolve", at=at(5))], at(5)
    )
    outbox = b.take()[1]
    assert [(o.payload["notification"], o.webhook) for o in outbox] == [
        ("repeat", "pager"),
        ("repeat", "slack"),
        ("resolved", "pager"),
        ("resolved", "slack"),
    ]


def test_agent_alerts_keep_their_routing_unless_a_route_names_them() -> None:
    def agent_hooks(routes: tuple[RouteConfig, ...], **kw: Any) -> list[str]:
        b = AlertBook("h1", {}, HOOKS, fallback=["ops"], routes=routes)
        b.apply([agent_signal("state", "fire", at(0), "state file failing", **kw)], at(0))
        return [o.webhook for o in b.take()[1]]

    catch_all = (RouteConfig(webhooks=("slack",)),)
    by_regex = (RouteConfig(webhooks=("slack",), match_re={"rule": ".*"}),)
    named = (RouteConfig(webhooks=("pager",), match={"rule": AGENT_RULE}),)
    assert agent_hooks(catch_all) == ["ops"]  # agent.fallback, as without routes
    assert agent_hooks(by_regex) == ["ops"]
    assert agent_hooks(named) == ["pager"]
    # routed around a failing webhook by selfmon: that still wins
    assert agent_hooks(named, notify=("slack",)) == ["slack"]


def test_a_route_matches_grouping_labels_and_a_silence_by_its_rules_one_source() -> None:
    r = rule("ssh", group_by=("ip",), notify=("ops",))
    hb = rule("beat", kind="heartbeat", notify=("ops",), sources=("cron",))
    routes = (
        RouteConfig(webhooks=("pager",), match_re={"ip": r"10\..*"}),
        RouteConfig(webhooks=("slack",), match={"source": "cron"}),
    )
    b = AlertBook("h1", {"ssh": r, "beat": hb}, HOOKS, routes=routes)
    b.apply(
        [
            Signal(
                rule="ssh",
                kind="error",
                key="a",
                action="fire",
                at=at(0),
                labels={"ip": "10.1.2.3"},
            ),
            Signal(
                rule="ssh",
                kind="error",
                key="b",
                action="fire",
                at=at(0),
                labels={"ip": "192.0.2.1"},
            ),
            Signal(rule="beat", kind="silence", key="", action="fire", at=at(0)),  # no line
        ],
        at(0),
    )
    assert [(o.payload["rule"], o.webhook) for o in b.take()[1]] == [
        ("ssh", "pager"),
        ("ssh", "ops"),
        ("beat", "slack"),
    ]


# ---------------------------------------------------------------- rules.yaml

YAML = """\
version: 1
defaults: {owner: me, runbook: "https://rb.example.com"}
sources:
  app: {file: /var/log/app.log}
webhooks:
  ops: {url: "http://127.0.0.1:9/ops"}
  pager: {url: "http://127.0.0.1:9/pager"}
  slack: {url: "http://127.0.0.1:9/slack"}
rules:
  - name: db-down
    source: app
    match: 'db down'
    severity: critical
  - name: backup-nightly
    source: app
    match: 'backup failed'
  - name: ssh
    source: app
    match: 'Failed password from (?P<ip>\\S+)'
    group_by: ip
  - name: own
    source: app
    match: 'own'
    severity: critical
    notify: ops
routes:
  - match: {severity: critical}
    webhooks: [pager]
    continue: true
  - match_re: {rule: 'backup-.*'}
    webhooks: slack
  - match_re: {ip: '10\\..*'}
    webhooks: [pager]
"""


def test_routes_load_in_order_with_their_positions() -> None:
    cfg = parse_config(YAML)
    assert [
        (r.webhooks, r.continue_, r.location.line if r.location else 0) for r in cfg.routes
    ] == [
        (("pager",), True, 27),
        (("slack",), False, 30),
        (("pager",), False, 32),
    ]
    assert dict(cfg.routes[1].match_re) == {"rule": "backup-.*"}
    assert [r.notify_own for r in cfg.rules] == [False, False, False, True]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("webhooks: slack", "webhooks: [slak]"),
            "rules.yaml:31:16: route #2: webhooks: unknown webhook 'slak' — did you mean 'slack'?",
        ),
        (
            ("{severity: critical}", "{severity: crit}"),
            "rules.yaml:27:23: route #1: match.severity: 'crit' is not a severity — did you mean "
            "'critical'?",
        ),
        (
            ("{rule: 'backup-.*'}", "{rule: 'backup-(.*'}"),
            "rules.yaml:30:",
        ),
        (
            ("continue: true", "continu: true"),
            "rules.yaml:29:5: route #1: unknown key 'continu' — did you mean 'continue'?",
        ),
        (
            (
                "    continue: true\n",
                "    continue: true\n  - match: {rule: db-donw}\n    webhooks: ops\n",
            ),
            "rules.yaml:30:19: route #2: match.rule: no rule is named 'db-donw' — did you mean "
            "'db-down'?",
        ),
        (
            (
                "  - match_re: {rule: 'backup-.*'}\n    webhooks: slack\n",
                "  - match: {rule: own}\n",
            ),
            "rules.yaml:30:5: route #2: missing required key 'webhooks'",
        ),
    ],
)
def test_a_bad_route_is_an_error_at_its_place_with_a_fix(
    edit: tuple[str, str], message: str
) -> None:
    old, new = edit
    assert old in YAML
    with pytest.raises(ConfigError) as e:
        parse_config(YAML.replace(old, new, 1))
    assert any(err.startswith(message) for err in e.value.errors), e.value.errors


def test_a_route_on_a_label_no_rule_carries_is_a_warning_with_a_hint() -> None:
    cfg = parse_config(YAML.replace("{ip: '10\\..*'}", "{ipp: '10\\..*'}"))
    assert any(
        "rules.yaml:32:16: route #3: match_re: no rule's alerts carry the label 'ipp', so this "
        "never matches — did you mean 'ip'?" in w
        for w in cfg.warnings
    ), cfg.warnings


def test_check_routes_prints_where_each_rules_alerts_go_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(YAML)
    assert main(["check", "--routes", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    f = str(path)
    assert "routes (first match wins unless continue: true):" in out
    assert f"  rule db-down → pager — route #1 ({f}:27:5: severity=critical); continue\n" in out
    assert f"  rule backup-nightly → slack — route #2 ({f}:30:5: rule=~'backup-.*')\n" in out
    assert "  rule own → ops — its own notify: (wins over routes:)" in out
    assert "  rule ssh → ops, pager, slack — defaults.notify (no route matches)" in out
    assert (
        f"      if ip=~'10\\..*': pager — route #3 ({f}:32:5: ip=~'10\\..*'), and no later route"
        in out
    )
    assert (
        "  agent alerts → ops, pager, slack — every webhook that is not failing (no agent.fallback)"
        in out
    )


# ---------------------------------------------------------------- end to end


async def test_the_agent_posts_each_alert_to_the_receivers_its_route_names(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("db down\nbackup failed\nFailed password from 10.0.0.9\nown\n")
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    async with Receiver() as ops, Receiver() as pager, Receiver() as slack:
        text = YAML.replace("/var/log/app.log", f"{log}, start_at: beginning")
        for name, rx in (("ops", ops), ("pager", pager), ("slack", slack)):
            text = text.replace(f"http://127.0.0.1:9/{name}", rx.url + "/" + name)
        cfg = tmp_path / "rules.yaml"
        cfg.write_text(
            text.replace("version: 1\n", f"version: 1\nagent: {{state: {tmp_path / 's.db'}}}\n")
        )

        async def delivered(_agent: object) -> None:
            await ops.wait_for(1)
            await pager.wait_for(2)
            await slack.wait_for(1)

        await run_agent(cfg, clock, delivered)
        got = {
            name: sorted(a["labels"]["rule"] for b in rx.bodies() for a in b["alerts"])
            for name, rx in (("ops", ops), ("pager", pager), ("slack", slack))
        }
    assert got == {
        "ops": ["own"],  # its own notify: beats route #1 (severity critical)
        "pager": ["db-down", "ssh"],  # route #1; route #3 (ip 10.0.0.9)
        "slack": ["backup-nightly"],  # route #2
    }
