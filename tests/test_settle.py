"""An expectation deadline (window close, heartbeat silence, pair timeout) waits until the sources
its rule reads have handed over what they hold (``agent.settle``, service.py ``_settling``): a
line stamped before the deadline that is still on its way is seen first. The agent runs
in-process on a FakeClock with real files, a real journald and a real receiver; the clock is moved
past the deadline while the line is in the file (or the journal) but not read yet."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from detector.clock import FakeClock
from detector.service import Agent
from tests.agent_inproc import running
from tests.agent_proc import config_in
from tests.journald_env import (
    JournaldNamespace,
    journald_fixture,  # noqa: F401  (fixture "journald")
    journald_session_fixture,  # noqa: F401  (fixture "journald_session")
    unique_tag,
)
from tests.receiver import Receiver
from tests.waiting import eventually

T0 = datetime(2026, 6, 10, 1, 59, tzinfo=UTC)  # before the 02:00–03:00 UTC window
IN_WINDOW = datetime(2026, 6, 10, 2, 30, tzinfo=UTC)
CLOSED = datetime(2026, 6, 10, 3, 0, 1, tzinfo=UTC)  # a second after it closed

WINDOW = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: nightly
    source: app
    match: 'backup complete'
    expect: {{cron: "0 2 * * *", within: 1h, timezone: UTC}}
"""
HEARTBEAT = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: alive
    source: app
    match: 'alive'
    expect: {{every: 1m}}
"""
PAIR = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: job
    source: app
    start: 'job started'
    end: 'job done'
    within: 1m
"""


async def idle(agent: Agent) -> None:
    async with asyncio.timeout(15):
        await agent.wait_idle()


def alerts(rx: Receiver) -> list[dict[str, Any]]:
    return [a for b in rx.bodies() for a in b["alerts"]]


async def read(agent: Agent, n: int) -> None:
    await eventually(lambda: agent.pipeline.lines_read["app"] >= n, what=f"{n} lines read")
    await idle(agent)


def append(log: Path, text: str) -> None:
    with log.open("a") as f:
        f.write(text + "\n")


async def at_the_deadline(tmp_path: Path, body: str, before: list[str], last: str | None,
                          past: datetime, then: datetime = T0) -> list[dict[str, Any]]:  # fmt: skip
    """Start at T0, move the clock to ``then``, write ``before`` and let the agent read it; then,
    in one step (no await between: the source cannot have read it), append ``last`` and move the
    clock to ``past`` (after the deadline); return what the receiver got once the agent is
    idle."""
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, body.format(log=log), rx.url + "/hook")
        async with running(cfg, clock) as agent:
            await eventually(
                lambda: hasattr(agent, "state") and agent.state.caught_up, what="caught up"
            )
            clock.set(then)
            await idle(agent)
            for text in before:
                append(log, text)
            await read(agent, len(before))
            if last is not None:
                append(log, last)
            clock.set(past)
            await idle(agent)
            if last is not None:
                assert agent.pipeline.lines_read["app"] == len(before) + 1
            return alerts(rx)


async def test_a_line_in_the_file_when_the_window_closes_satisfies_it(tmp_path: Path) -> None:
    got = await at_the_deadline(tmp_path, WINDOW, [], "backup complete", CLOSED, IN_WINDOW)
    assert got == []  # no "missed", no "arrived late"


async def test_a_window_without_its_line_is_still_missed_at_its_close(tmp_path: Path) -> None:
    got = await at_the_deadline(tmp_path, WINDOW, [], None, CLOSED, IN_WINDOW)
    assert [(a["labels"]["rule"], a["status"]) for a in got] == [("nightly", "firing")]


async def test_a_heartbeat_in_the_file_at_its_deadline_is_on_time(tmp_path: Path) -> None:
    got = await at_the_deadline(tmp_path, HEARTBEAT, ["alive"], "alive", T0 + timedelta(seconds=61))
    assert got == []


async def test_a_heartbeat_that_stopped_still_fires(tmp_path: Path) -> None:
    got = await at_the_deadline(tmp_path, HEARTBEAT, ["alive"], None, T0 + timedelta(seconds=61))
    assert [(a["labels"]["rule"], a["status"]) for a in got] == [("alive", "firing")]


async def test_a_pair_end_in_the_file_at_its_timeout_is_in_time(tmp_path: Path) -> None:
    got = await at_the_deadline(
        tmp_path, PAIR, ["job started"], "job done", T0 + timedelta(seconds=61)
    )
    assert got == []


async def test_a_pair_without_its_end_still_times_out(tmp_path: Path) -> None:
    got = await at_the_deadline(tmp_path, PAIR, ["job started"], None, T0 + timedelta(seconds=61))
    assert [(a["labels"]["rule"], a["status"]) for a in got] == [("job", "firing")]


STUCK = """\
sources:
  app: {{file: "{log}"}}
  jd: {{journald: {{journalctl: /nonexistent/journalctl}}}}
rules:
  - name: alive
    source: [app, jd]
    match: 'alive'
    expect: {{every: 1m}}
"""


async def test_a_stuck_source_holds_the_deadline_for_the_settle_delay_only(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, STUCK.format(log=log), rx.url + "/hook", "settle: 3s\n")
        async with running(cfg, clock, catch_up_limit_s=0) as agent:
            await eventually(
                lambda: hasattr(agent, "state") and agent.state.caught_up, what="caught up"
            )
            append(log, "alive")
            await eventually(lambda: agent.pipeline.lines_read["app"] == 1, what="line read")
            clock.advance(timedelta(seconds=61))  # the heartbeat is due; journalctl cannot run
            await eventually(lambda: agent.settling == frozenset({"jd"}), what="waiting for jd")
            clock.advance(timedelta(seconds=2))  # within the settle delay: still held
            await eventually(lambda: agent.settling == frozenset({"jd"}), what="still for jd")
            assert not agent.pipeline.alerts.firing()
            clock.advance(timedelta(seconds=1))  # the settle delay is over: it fires
            await rx.wait_for(1, within=10)
            assert [(a["labels"]["rule"], a["status"]) for a in alerts(rx)] == [("alive", "firing")]
            assert agent.settling == frozenset()
            # the next deadline does not wait for jd again while its read is still pending
            append(log, "alive")  # resolves, and the next silence is due a minute later
            await rx.wait_for(2, within=10)
            clock.advance(timedelta(seconds=61))
            await rx.wait_for(3, within=10)
            assert [a["status"] for a in alerts(rx)] == ["firing", "resolved", "firing"]


JOURNAL = """\
sources:
  jd:
    journald: {{namespace: "{ns}", match: {{DETECTOR_TEST: "{tag}"}}}}
rules:
  - name: alive
    source: jd
    match: 'alive'
    expect: {{every: 1m}}
"""


async def test_a_journal_entry_not_yet_read_at_the_deadline_is_seen_first(
    journald: JournaldNamespace, tmp_path: Path
) -> None:
    tag = unique_tag()
    clock = FakeClock(datetime.now(UTC))
    async with Receiver() as rx:
        cfg = config_in(tmp_path, JOURNAL.format(ns=journald.name, tag=tag), rx.url + "/hook")
        async with running(cfg, clock) as agent:
            await idle(agent)
            journald.send({"MESSAGE": "alive", "DETECTOR_TEST": tag})
            await eventually(lambda: agent.pipeline.lines_read["jd"] == 1, what="entry read")
            await idle(agent)
            first = agent.pipeline.last_match_at["alive"]
            journald.send({"MESSAGE": "alive", "DETECTOR_TEST": tag})  # stamped now, real time
            journald.sync()  # in the journal, not read by the agent yet
            clock.set(max(clock.now(), first + timedelta(seconds=60)))  # due
            await idle(agent)
            assert agent.pipeline.lines_read["jd"] == 2
            assert alerts(rx) == []
