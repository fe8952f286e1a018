"""A commit of read positions and rule state only waits for the next one (``service.DEFER_S``).

In process (FakeClock, ``DEFER_S`` made long so that only the agent's own reasons write it): the
deferred commit is written with the next alert's, before a reload reads the rule state back, at a
stop, and when a test waits for idle. As a subprocess: a real SIGKILL between a deferred batch
and the next commit loses nothing and counts nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from detector import service
from detector.clock import FakeClock
from detector.service import Agent
from tests.agent_inproc import RULES, rule_alerts, running, until
from tests.agent_proc import AgentProcess, config_in, free_port
from tests.receiver import Receiver
from tests.waiting import query, read_positions, settled

T0 = datetime(2026, 6, 9, 12, 0, tzinfo=UTC)


def append(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        for line in lines:
            f.write(line + "\n")


@dataclass
class InProcess:
    agent: Agent
    rx: Receiver
    log: Path
    state: Path
    cfg: Path


@contextlib.asynccontextmanager
async def agent_on(tmp_path: Path, rules: str = RULES, **fields: str) -> AsyncIterator[InProcess]:
    """The agent in process on ``rules`` (formatted with ``log``, the file ``tmp_path/app.log``,
    created if missing, and ``fields``), caught up, posting to a receiver; stopped at the end,
    which must exit 0. The test module's ``DEFER_S`` is long (``long_defer``): only the agent's
    own reasons write a commit that may wait."""
    log, state = tmp_path / "app.log", tmp_path / "state.db"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, rules.format(log=log, **fields), rx.url + "/hook")
        async with running(cfg, FakeClock(T0)) as agent:
            await until(
                lambda: hasattr(agent, "pipeline") and agent.state.caught_up, what="caught up"
            )
            yield InProcess(agent, rx, log, state, cfg)


@pytest.fixture(autouse=True)
def long_defer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "DEFER_S", 3600.0)


async def processed(agent: Agent, n: int) -> None:
    """Until the agent has processed ``n`` lines of ``app`` (not: committed them)."""
    await until(lambda: agent.pipeline.lines_read.get("app", 0) >= n, what=f"{n} lines read")


async def test_a_batch_without_alert_is_committed_with_the_next_alert_or_at_idle(
    tmp_path: Path,
) -> None:
    async with agent_on(tmp_path) as a:
        log, state = a.log, a.state
        await a.agent.wait_idle()
        start = read_positions(state).get(str(log))
        append(log, "INFO one", "INFO two")
        await processed(a.agent, 2)
        assert read_positions(state).get(str(log)) == start  # waiting, not written
        assert a.agent.deferral.pending is not None

        append(log, "ERROR 1 disk full")
        await a.rx.wait_for(1, within=10)
        # the alert's commit carried the waiting one: everything read is committed
        assert read_positions(state)[str(log)] == log.stat().st_size
        assert a.agent.deferral.pending is None

        append(log, "INFO three")
        await processed(a.agent, 4)
        assert read_positions(state)[str(log)] < log.stat().st_size
        await a.agent.wait_idle()  # idle means written
        assert read_positions(state)[str(log)] == log.stat().st_size
        assert [x["labels"]["n"] for x in rule_alerts(a.rx)] == ["1"]


def alert_counts(state: Path) -> dict[str, int]:
    """Rule → the count of its alert in the state file."""
    rows = query(state, "SELECT rule, value FROM alerts")
    return {rule: json.loads(value)["count"] for rule, value in rows}


async def test_an_open_alerts_new_hits_wait_with_their_batch_a_new_alert_does_not(
    tmp_path: Path,
) -> None:
    """A hit on an alert already open changes only its count, last hit and samples: that waits
    with the batch's read position (what every batch of a busy log does); the row the state
    file then gets holds every hit. A new alert (its notification) is written at once."""
    async with agent_on(tmp_path) as a:
        log, state = a.log, a.state
        await a.agent.wait_idle()
        append(log, "ERROR 1 disk full")
        await a.rx.wait_for(1, within=10)
        assert alert_counts(state) == {"errors": 1}  # the new alert: at once
        assert read_positions(state)[str(log)] == log.stat().st_size
        append(log, "ERROR 1 disk full", "ERROR 1 disk full")
        await processed(a.agent, 3)
        pending = a.agent.deferral.pending
        assert pending is not None
        assert pending.changed  # the alert itself: its row is built once, later
        assert alert_counts(state) == {"errors": 1}  # waiting with the read position
        assert read_positions(state)[str(log)] < log.stat().st_size
        await a.agent.wait_idle()
        assert alert_counts(state) == {"errors": 3}
        assert read_positions(state)[str(log)] == log.stat().st_size
        assert len(rule_alerts(a.rx)) == 1  # repeat: never, no notification for the hits


async def test_a_stop_writes_the_deferred_commit(tmp_path: Path) -> None:
    async with agent_on(tmp_path) as a:
        await a.agent.wait_idle()
        append(a.log, "INFO one", "INFO two")
        await processed(a.agent, 2)
        assert read_positions(a.state).get(str(a.log)) != a.log.stat().st_size
    assert read_positions(a.state)[str(a.log)] == a.log.stat().st_size


async def test_a_files_first_checkpoint_is_written_at_once_never_deferred(tmp_path: Path) -> None:
    """Where a first start begins (``start_at: end``) and a file found after a rotation have no
    checkpoint yet: theirs is written at once. Deferred and lost in a crash, the next start
    would not know the file, begin at its end again and skip what was written meanwhile (found
    by tests/test_rotation_agent.py: SIGKILLs between renames lost whole generations)."""
    append(tmp_path / "app.log", "INFO before the agent")
    async with agent_on(tmp_path) as a:
        log, state = a.log, a.state
        # no wait_idle(): it would write the deferred commit itself
        await until(
            lambda: read_positions(state).get(str(log)) == log.stat().st_size,
            what="the first start's place in the state file",
        )
        first = read_positions(state)[str(log)]
        append(log, "INFO one")
        await processed(a.agent, 1)
        assert read_positions(state)[str(log)] == first  # a known file's move: waits
        assert a.agent.deferral.pending is not None
        log.rename(tmp_path / "app.log.1")
        append(log, "INFO in the new file")
        # the new file's first checkpoint goes out at once, with the one that waited
        await until(
            lambda: read_positions(state).get(str(log)) == log.stat().st_size,
            what="the new file's first checkpoint",
        )


THRESHOLD = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: bursts
    source: app
    match: 'E (?P<n>\\d+)'
    threshold: {{count: 3, within: 1h}}
    summary: "{summary}"
"""


async def test_a_reload_reads_back_the_rule_state_of_deferred_batches(tmp_path: Path) -> None:
    """A changed rule restarts from its stored state: the state of the batches still waiting to
    be committed must be in it (else their matches are forgotten and the threshold is late)."""
    async with agent_on(tmp_path, THRESHOLD, summary="bursts") as a:
        await a.agent.wait_idle()
        append(a.log, "E 1", "E 2")
        await processed(a.agent, 2)
        assert a.agent.deferral.pending is not None
        config_in(tmp_path, THRESHOLD.format(log=a.log, summary="bursts!"), a.rx.url + "/hook")
        a.agent.request_reload()
        await until(lambda: a.agent.config.rules[0].summary == "bursts!", what="reloaded")
        append(a.log, "E 3")
        await a.rx.wait_for(1, within=10)
        assert [x["annotations"]["summary"] for x in rule_alerts_of(a.rx, "bursts")] == ["bursts!"]


def rule_alerts_of(rx: Receiver, rule: str) -> list[dict[str, Any]]:
    return [a for b in rx.bodies() for a in b["alerts"] if a["labels"]["rule"] == rule]


# ---------------------------------------------------------------- a real SIGKILL

KILL = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: bursts
    source: app
    match: 'E (?P<n>\\d+)'
    threshold: {{count: {count}, within: 1h}}
  - name: probe
    source: app
    match: 'probe (?P<id>\\d+)'
    group_by: [id]
    repeat: never
"""


async def _lines_read(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/status") as r:
        body = await r.json()
    return int(body["sources"].get("app", {}).get("lines_read", 0))


@dataclass
class Killable:
    """The agent as a subprocess on ``KILL``, with its status listener at ``base``."""

    rx: Receiver
    session: aiohttp.ClientSession
    base: str
    cfg: Path
    log: Path
    state: Path


@contextlib.asynccontextmanager
async def killable(tmp_path: Path, count: int) -> AsyncIterator[Killable]:
    log = tmp_path / "app.log"
    log.touch()
    port = free_port()
    async with Receiver() as rx, aiohttp.ClientSession() as session:
        cfg = config_in(
            tmp_path,
            KILL.format(log=log, count=count),
            rx.url + "/hook",
            extra_agent=f"listen: 127.0.0.1:{port}\n",
        )
        yield Killable(rx, session, f"http://127.0.0.1:{port}", cfg, log, tmp_path / "state.db")


async def stop_with_a_line_deferred(
    k: Killable, agent: AgentProcess, read: int, line: Callable[[int], str], tries: int
) -> int:
    """Append ``line(1)``, ``line(2)``, … one at a time, the agent having read ``read`` lines,
    and SIGSTOP it right after it processed each, until the state file is seen not to hold the
    last one (its commit deferred): the agent is left stopped. Returns how many were appended.
    Fails if every one was committed before the agent could be stopped."""
    assert agent.proc is not None
    for n in range(1, tries + 1):
        append(k.log, line(n))
        async with asyncio.timeout(10):
            while await _lines_read(k.session, k.base) < read + n:
                await asyncio.sleep(0.002)  # polled: stop it as soon as it is there
        os.kill(agent.proc.pid, signal.SIGSTOP)
        if read_positions(k.state)[str(k.log)] < k.log.stat().st_size:
            return n  # processed, not committed: kill it now
        os.kill(agent.proc.pid, signal.SIGCONT)  # the commit came first: once more
    raise AssertionError("every line was committed before the agent could be stopped")


@pytest.mark.slow
async def test_sigkill_between_a_deferred_batch_and_its_commit_counts_every_line_once(
    tmp_path: Path,
) -> None:
    """The agent is stopped (SIGSTOP) right after it processed a line that raised no alert, the
    state file is seen not to hold it yet (its commit deferred), and the agent is SIGKILLed.
    After the restart that line is read again and counted once: the threshold fires exactly at
    its ``count``-th line, not one line early (counted twice) nor late (lost), and the alert
    committed before the kill is not sent again."""
    count = 30
    async with killable(tmp_path, count) as k:
        log, state, rx = k.log, k.state, k.rx
        agent = await AgentProcess(k.cfg).start()
        try:
            append(log, "E 1", "E 2", "probe 1")  # an alert: committed at once
            await rx.wait_for(1, within=10)
            await settled(state, [log])
            matches = 2
            matches += await stop_with_a_line_deferred(
                k, agent, 3, lambda n: f"E {2 + n}", tries=count - 5
            )
            await agent.kill()

            agent = await AgentProcess(k.cfg).start()
            await settled(state, [log])
            assert rule_alerts_of(rx, "bursts") == []
            assert [a["labels"]["id"] for a in rule_alerts_of(rx, "probe")] == ["1"]
            missing = count - matches
            append(log, *(f"E {matches + i}" for i in range(1, missing)))
            await settled(state, [log])
            assert rule_alerts_of(rx, "bursts") == []  # count - 1 matches: not yet
            append(log, f"E {count}")
            await rx.wait_until(lambda: bool(rule_alerts_of(rx, "bursts")), within=10)
            await settled(state, [log])
            assert len(rule_alerts_of(rx, "bursts")) == 1
            assert [a["labels"]["id"] for a in rule_alerts_of(rx, "probe")] == ["1"]
        finally:
            await agent.stop_quietly()


@pytest.mark.slow
async def test_sigkill_while_an_open_alerts_hits_wait_counts_every_hit_once(
    tmp_path: Path,
) -> None:
    """An open alert's new hits wait with their batch (no notification). The agent is stopped
    right after it processed one such hit whose commit has not been written, then SIGKILLed:
    after the restart the alert's count in the state file is the number of its lines, not
    one more (the hit counted twice) nor one fewer (lost), and it was notified once."""
    async with killable(tmp_path, 1000) as k:
        log, state, rx = k.log, k.state, k.rx
        agent = await AgentProcess(k.cfg).start()
        try:
            append(log, "probe 1")  # a new alert: committed at once
            await rx.wait_for(1, within=10)
            await settled(state, [log])
            hits = 1
            hits += await stop_with_a_line_deferred(k, agent, 1, lambda _: "probe 1 again", 40)
            assert alert_counts(state)["probe"] < hits
            await agent.kill()

            agent = await AgentProcess(k.cfg).start()
            append(log, "probe 1 once more")
            hits += 1
            await settled(state, [log])  # every line committed, with what it changed
            assert alert_counts(state)["probe"] == hits
            assert [a["labels"]["id"] for a in rule_alerts_of(rx, "probe")] == ["1"]
        finally:
            await agent.stop_quietly()
