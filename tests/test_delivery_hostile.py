"""Every receiver accepts every alert, end to end: the agent in-process (real files, real SQLite,
only the clock fake) posts alerts made of hostile log lines through every format to loopback
receivers that enforce their service's documented limits (tests/limit_receivers.py), and a real
Alertmanager behind the ``alertmanager`` one. Then two agents with different ``host:`` values and
one PagerDuty receiver: two incidents, resolved independently."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.clock import FakeClock
from detector.service import Agent
from detector.store import outbox
from tests.agent_inproc import running, until
from tests.limit_receivers import LimitReceiver, am_alerts, real_alertmanager
from tests.receiver import Receiver

MAX_LINE = 64 * 1024  # the tailer cuts longer lines (max_line_bytes): stay under it
HOSTILE_BITS = [
    "<!channel>",
    "<!here|here>",
    "<@U123>",
    "@everyone",
    "@here",
    "<at>x</at>",
    "[click](http://evil.example)",
    '"quoted" \\back\\slash\\',
    "😀🎉𝄞",
    "**bold** _it_ ~s~ `code` ```block```",
    "# heading > quote",
    "&amp; &lt;b&gt;",
    "{line} {0} {{x}} %s ${HOME}",
    "tab\tnul\x00bell\x07",
]
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
FORMATS = ("slack", "discord", "teams", "ntfy", "pagerduty", "alertmanager", "json")
PATHS = {  # the path of each service's webhook URL
    "slack": "/services/T0/B0/x",
    "discord": "/api/webhooks/1/tok",
    "teams": "/workflows/1/triggers/manual/paths/invoke",
    "ntfy": "/ops-alerts",
    "pagerduty": "/v2/enqueue",
    "alertmanager": "",
    "json": "/hook",
}


def sized(piece: str, n_bytes: int) -> str:
    """``piece`` repeated to about ``n_bytes`` bytes of UTF-8."""
    return piece * (n_bytes // len(piece.encode()))


def hostile_lines() -> list[str]:
    """Log lines: three of ~60 KB (mixed, emoji only, ``<!channel>`` only: escaping grows it), one
    per hostile piece, one whose summary renders empty, one for a rule with only a description,
    and a pair end without a start (an informational notice)."""
    mixed = "".join(HOSTILE_BITS) + " "
    lines = [
        f"HOSTILE 1 {sized(mixed, 60_000)}",
        f"HOSTILE 2 {sized('😀𝄞', 60_000)}",
        f"HOSTILE 3 {sized('<!channel>', 60_000)}",
    ]
    lines += [f"HOSTILE {10 + i} {bit}" for i, bit in enumerate(HOSTILE_BITS)]
    lines += [
        "HOSTILE 99",  # an empty payload: the summary template renders empty
        "DESCRIBED <!channel> @everyone [click](http://evil.example) 😀",
        f"JOB END nightly {sized(mixed, 20_000)}",
    ]
    assert all(len(line.encode()) < MAX_LINE for line in lines)
    return lines


RULES = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: hostile
    source: app
    match: 'HOSTILE (?P<n>\\d+) ?(?P<payload>.*)'
    group_by: [n]
    summary: '{{payload}}'
    description: 'the line: {{line}}'
    runbook: ask the db team
    owner: '<!channel> @everyone <at>owner</at>'
    resolve_after: 1m
    repeat: never
  - name: described
    source: app
    match: 'DESCRIBED (?P<what>.*)'
    description: 'only a description: {{what}}'
    runbook: https://wiki.example.internal/described
    resolve_after: 1m
    repeat: never
  - name: nightly
    source: app
    start: 'JOB START (?P<job>\\S+)'
    end: 'JOB END (?P<job>\\S+) (?P<tail>.*)'
    within: 1h
    on_orphan_end: alert
"""


def config(
    tmp_path: Path, urls: dict[str, str], host: str, body: str, rate: int | None = None
) -> Path:
    hooks = "".join(
        f"  {name}: {{url: '{url}', format: {name}"
        + (f", routing_key: {ROUTING_KEY}" if name == "pagerduty" else "")
        + (f", rate: {rate}" if rate is not None else "")
        + "}\n"
        for name, url in urls.items()
    )
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        f"version: 1\nagent: {{state: {tmp_path / 'state.db'}, host: {host}}}\n"
        f"webhooks:\n{hooks}" + body
    )
    return cfg


@contextlib.asynccontextmanager
async def limit_receivers(tmp_path: Path) -> AsyncIterator[tuple[dict[str, LimitReceiver], str]]:
    """One receiver per service, the ``alertmanager`` one in front of a real Alertmanager; and
    that Alertmanager's URL."""
    async with contextlib.AsyncExitStack() as stack:
        notified = await stack.enter_async_context(Receiver())
        am = await stack.enter_async_context(real_alertmanager(tmp_path, notified.url + "/am"))
        out = {}
        for name in FORMATS:
            rx = LimitReceiver(name, forward=am if name == "alertmanager" else None)
            out[name] = await stack.enter_async_context(rx)
        yield out, am


def started(agent: Agent) -> bool:
    return hasattr(agent, "pipeline") and agent.state.caught_up


async def counts(agent: Agent) -> dict[str, dict[str, int]]:
    return await agent.db.run(outbox.state_counts)


async def drained(
    agent: Agent,
    receivers: dict[str, LimitReceiver],
    clock: FakeClock,
    rows: int,
    what: str,
    step: timedelta = timedelta(seconds=5),
) -> dict[str, dict[str, int]]:
    """Until every webhook has ``rows`` delivered rows and nothing pending (moving the clock on),
    or a receiver recorded a violation (returned at once: the test's asserts say which)."""
    seen: dict[str, dict[str, int]] = {}
    try:
        async with asyncio.timeout(20):
            while True:
                seen = await counts(agent)
                if any(rx.violations for rx in receivers.values()):
                    return seen
                if all(seen.get(name, {}) == {"delivered": rows} for name in receivers):
                    return seen
                clock.advance(step)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}: outbox {seen}") from None


@pytest.mark.parametrize("rate", [None, 3], ids=["one-by-one", "digests"])
async def test_hostile_alerts_are_accepted_by_every_service_and_none_is_dead_lettered(
    tmp_path: Path, rate: int | None
) -> None:
    """With ``rate: 3`` most alerts reach each receiver folded into storm-control digests."""
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(datetime.now(UTC))  # the real Alertmanager compares endsAt with real time
    async with limit_receivers(tmp_path) as (rxs, real):
        urls = {name: rx.url + PATHS[name] for name, rx in rxs.items()}
        cfg = config(tmp_path, urls, "db1", RULES.format(log=log), rate)
        lines = hostile_lines()
        alerts = len(lines) - 1  # the pair end is one info notice
        async with running(cfg, clock) as agent:
            await until(lambda: started(agent), what="the agent started")
            with log.open("a") as f:
                f.write("".join(line + "\n" for line in lines))
            await until(
                lambda: agent.pipeline.lines_read["app"] == len(lines),
                what="the lines read in full",
            )
            firing = await drained(agent, rxs, clock, alerts + 1, "the firing alerts", timedelta(0))
            violations = [v for rx in rxs.values() for v in rx.violations]
            assert violations == []
            assert firing == {name: {"delivered": alerts + 1} for name in rxs}

            # the real Alertmanager holds every alert, the free-text runbook as an annotation
            held = {
                a["labels"]["alertname"] + a["labels"].get("n", ""): a
                for a in await am_alerts(real)
            }
            assert len(held) == alerts + 1
            assert held["nightly"]["labels"]["notification"] == "info"
            assert held["hostile1"]["annotations"]["runbook"] == "ask the db team"
            assert "generatorURL" not in held["hostile1"] or held["hostile1"]["generatorURL"] == ""
            assert held["described"]["generatorURL"] == "https://wiki.example.internal/described"
            assert held["described"]["annotations"]["summary"] == "described error on db1"
            assert held["hostile99"]["annotations"]["summary"] == "hostile error on db1"

            # a minute without matches: every alert resolves, and those are accepted too
            done = await drained(agent, rxs, clock, 2 * alerts + 1, "the resolves")
            violations = [v for rx in rxs.values() for v in rx.violations]
            assert violations == []
            assert done == {name: {"delivered": 2 * alerts + 1} for name in rxs}
        for name, rx in rxs.items():
            assert rx.received, name
            assert len(rx.accepted) == len(rx.received), (name, len(rx.received))
        pd = rxs["pagerduty"]
        assert pd.open_incidents() == {}  # every incident opened was resolved
        if rate is None:
            assert len(pd.incidents) == alerts
            assert len(pd.changes) == 1  # the pair's informational notice pages nobody
        else:  # digests are change events: they page nobody and leave nothing open
            assert len(pd.incidents) < alerts and pd.changes
            assert all(len(rx.received) < 2 * alerts for rx in rxs.values())


async def wait_idle_all(*agents: Agent) -> None:
    async with asyncio.timeout(10):
        for agent in agents:
            await agent.wait_idle()


def pd_events(rx: LimitReceiver, action: str) -> list[dict[str, Any]]:
    return [b for b in rx.bodies() if b.get("event_action") == action]


HEARTBEAT = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: backup
    source: app
    match: 'backup complete'
    expect: {{every: 10m, grace: 1m}}
    severity: critical
    repeat: never
"""


async def test_two_hosts_same_rule_are_two_pagerduty_incidents_resolved_independently(
    tmp_path: Path,
) -> None:
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    async with LimitReceiver("pagerduty") as pd:
        logs, cfgs = {}, {}
        for host in ("host-a", "host-b"):
            d = tmp_path / host
            d.mkdir()
            logs[host] = d / "app.log"
            logs[host].touch()
            urls = {"pagerduty": f"{pd.url}/v2/enqueue"}
            cfgs[host] = config(d, urls, host, HEARTBEAT.format(log=logs[host]))
        async with running(cfgs["host-a"], clock) as a, running(cfgs["host-b"], clock) as b:
            await until(lambda: started(a) and started(b), what="both agents started")
            for log in logs.values():  # the same line on both hosts
                log.write_text("backup complete\n")
            await until(lambda: a.pipeline.lines_read["app"] == b.pipeline.lines_read["app"] == 1)
            await wait_idle_all(a, b)
            # both go silent past every + grace: both fire
            await until(
                lambda: len(pd.incidents) == 2,
                clock,
                step=timedelta(minutes=1),
                what=f"two incidents (have {list(pd.incidents)})",
            )
            await wait_idle_all(a, b)
            keys = {i.source: k for k, i in pd.incidents.items()}
            assert set(keys) == {"host-a", "host-b"}
            assert keys["host-a"] != keys["host-b"]
            # one rule, one key: only the host tells the two incidents apart
            assert keys["host-a"].split("/", 1)[1] == keys["host-b"].split("/", 1)[1]
            assert pd_events(pd, "resolve") == []

            # host-a's backup completes: exactly its incident resolves, host-b's stays open
            with logs["host-a"].open("a") as f:
                f.write("backup complete\n")
            await until(
                lambda: pd.incidents[keys["host-a"]].state == "resolved",
                what="host-a's incident resolved",
            )
            await wait_idle_all(a, b)
            assert pd.incidents[keys["host-b"]].state == "triggered"
            assert [e["dedup_key"] for e in pd_events(pd, "resolve")] == [keys["host-a"]]
            assert set(pd.open_incidents()) == {keys["host-b"]}
            assert (await counts(a)) == {"pagerduty": {"delivered": 2}}  # trigger, resolve
            assert (await counts(b)) == {"pagerduty": {"delivered": 1}}  # trigger
        assert pd.violations == []
