"""The two-stage compile (service.py ``_compile``/``_upgrade``, ``Matcher.warm(quick=True)``,
``Matcher.upgrade``): on a cold cache the agent is READY with the literal skeletons (quick to
compile) and matches exactly the lines ``re`` matches meanwhile; the full databases compile in a
thread, go to the cache, and the processor matches with them from the next batch; a stop does not
wait for that compile; a warm cache gives the full databases at once. The agent runs in-process
on a FakeClock with real files, a real cache directory and a real notify socket; the background
compile is held by a threading event, so the test decides when it runs."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from detector.clock import FakeClock
from detector.matching import Matcher
from detector.matching.engine import CompileCancelled
from detector.sdnotify import Notifier
from detector.service import Agent
from tests.waiting import eventually

# named groups and a lookbehind: re confirms every candidate, so they start on their skeletons;
# the plain exact pattern has no skeleton and is in both databases as it is
PATTERNS = {
    "ssh": r"Failed password for (?:invalid user )?(?P<user>\S+) from (?P<ip>[\d.]+)",
    "disk": r"(?<!not a )disk failure on (?P<dev>\w+)",
    "oom": r"Out of memory: Killed process \d+",
}
RULES = """\
version: 1
agent: {{state: "{state}", cache_dir: "{cache}"}}
sources:
  app: {{file: "{log}", start_at: beginning}}
rules:
"""
RULE = "  - {{name: {name}, source: app, match: '{rx}'}}\n"
# lines holding a skeleton's literals in order that re still rejects, and lines it accepts
LINES = [
    "Failed password for root from 10.0.0.1 port 22",
    "Failed password for invalid user bob from 10.0.0.2",
    "Failed password for  from 10.0.0.3",  # no user: \S+ needs one
    "Failed password for eve from host.example",  # no address
    "kernel: disk failure on sda",
    "kernel: not a disk failure on sdb",  # the lookbehind refuses
    "disk failure on ",  # \w+ needs a character
    "Out of memory: Killed process 42",
    "Out of memory: Killed process x",
    "an ordinary line",
]
SENTINEL = "Out of memory: Killed process 999"
"""Written last: once it is counted, every line before it was processed."""


def expected(lines: list[str]) -> dict[str, int]:
    return {name: sum(bool(re.search(rx, t)) for t in lines) for name, rx in PATTERNS.items()}


def write_rules(tmp_path: Path) -> Path:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        RULES.format(
            state=tmp_path / "state.db", cache=tmp_path / "cache", log=tmp_path / "app.log"
        )
        + "".join(RULE.format(name=name, rx=rx) for name, rx in PATTERNS.items())
    )
    return cfg


def append(path: Path, lines: list[str]) -> None:
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))


def cache_files(tmp_path: Path) -> set[str]:
    directory = tmp_path / "cache"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


class HeldUpgrade:
    """``Matcher.upgrade`` (the background compile) waits for ``gate`` before it runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started, self.gate = threading.Event(), threading.Event()
        self.outcomes: list[Any] = []
        real = Matcher.upgrade

        def held(matcher: Matcher, *args: Any, **kw: Any) -> list[str]:
            self.started.set()
            self.gate.wait(30)
            try:
                got = real(matcher, *args, **kw)
            except CompileCancelled:
                self.outcomes.append("cancelled")
                raise
            self.outcomes.append(got)
            return got

        monkeypatch.setattr(Matcher, "upgrade", held)


async def matched(agent: Agent, want: dict[str, int]) -> None:
    """Wait for the sentinel (the last line written) to be counted, then compare every rule."""
    await eventually(
        lambda: agent.pipeline.lines_matched.get("oom", 0) == want["oom"],
        what=lambda: f"the sentinel to match: {dict(agent.pipeline.lines_matched)}",
    )
    assert {n: agent.pipeline.lines_matched.get(n, 0) for n in PATTERNS} == want


async def test_a_cold_start_is_ready_on_the_skeletons_then_upgrades_to_the_full_databases(
    tmp_path: Path,
    notify_socket: tuple[str, socket.socket],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path, sock = notify_socket
    log = tmp_path / "app.log"
    log.touch()
    held = HeldUpgrade(monkeypatch)
    caplog.set_level("INFO", logger="detector")
    agent = Agent(write_rules(tmp_path), FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC)),
                  notifier=Notifier({"NOTIFY_SOCKET": path}))  # fmt: skip
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(20):
            while b"READY=1" not in await asyncio.get_running_loop().sock_recv(sock, 4096):
                pass
        # ready while the full databases have not even started compiling
        await eventually(held.started.is_set, what="the background compile to start")
        assert not held.gate.is_set() and held.outcomes == []
        matcher = agent.pipeline.matcher
        assert matcher.stage == {"app": "skeleton"} and matcher.cached == {"app": False}
        assert "1 on literal skeletons until their full databases are compiled" in caplog.text
        before = cache_files(tmp_path)
        first = [*LINES, SENTINEL]
        append(log, first)
        await matched(agent, expected(first))  # exact on the skeletons
        assert matcher.stage == {"app": "skeleton"}

        held.gate.set()
        await agent.wait_idle()  # idle only once the full databases are compiled
        assert held.outcomes == [["app"]]
        assert "full pattern databases compiled" in caplog.text
        assert len(cache_files(tmp_path) - before) == 1  # the full database, cached
        assert matcher.stage == {"app": "skeleton"}  # taken by the next batch, not before
        second = [*reversed(LINES), SENTINEL]
        append(log, second)
        await matched(agent, expected(first + second))
        assert agent.pipeline.matcher is matcher  # the same matcher, its plan upgraded
        assert matcher.stage == {"app": "full"} and matcher.cached == {"app": False}
    finally:
        held.gate.set()
        agent.request_stop()
        async with asyncio.timeout(20):
            assert await task == 0

    # a restart on the warm cache: the full database at once, nothing compiles in the background
    caplog.clear()
    agent = Agent(write_rules(tmp_path), FakeClock(datetime(2026, 6, 9, 13, 0, tzinfo=UTC)))
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: hasattr(agent, "pipeline"), what="the restart")
        assert agent.pipeline.matcher.stage == {"app": "full"}
        assert agent.pipeline.matcher.cached == {"app": True}
        assert agent._upgrading is None and len(held.outcomes) == 1
        assert "(1 of 1 sources from the cache)\n" in caplog.text + "\n"
        assert "skeleton" not in caplog.text
    finally:
        agent.request_stop()
        async with asyncio.timeout(20):
            assert await task == 0


async def test_a_stop_during_the_background_compile_does_not_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    held = HeldUpgrade(monkeypatch)
    agent = Agent(write_rules(tmp_path), FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC)))
    task = asyncio.create_task(agent.run())
    try:
        await eventually(held.started.is_set, what="the background compile to start")
        assert hasattr(agent, "pipeline")  # started on the skeletons
        before = cache_files(tmp_path)
        agent.request_stop()
        async with asyncio.timeout(20):
            assert await task == 0  # returned while the compile is still held
        assert not held.gate.is_set() and held.outcomes == []
    finally:
        held.gate.set()
        agent.request_stop()
    await eventually(lambda: held.outcomes != [], what="the compile thread to end")
    assert held.outcomes == ["cancelled"]  # told to stop: it built nothing
    assert cache_files(tmp_path) == before


async def test_a_reload_to_new_patterns_starts_them_on_their_skeletons_then_upgrades(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    cfg = write_rules(tmp_path)
    caplog.set_level("INFO", logger="detector")
    agent = Agent(cfg, FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC)))
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: hasattr(agent, "pipeline"), what="the start")
        await agent.wait_idle()  # the full databases compiled in the background
        old = agent.pipeline.matcher
        append(log, [SENTINEL])
        await matched(agent, expected([SENTINEL]))
        assert old.stage == {"app": "full"}  # taken with that batch
        # other patterns (nothing cached for them): the reload's matcher starts on skeletons
        cfg.write_text(cfg.read_text().replace("Failed password", "Failed publickey"))
        agent.request_reload()
        await agent.wait_idle()  # the swap, then the background compile of the full databases
        new = agent.pipeline.matcher
        assert new is not old and new.stage == {"app": "skeleton"}
        assert caplog.text.count("full pattern databases compiled") == 2
        lines = [*LINES, "Failed publickey for root from 10.0.0.9", SENTINEL]
        append(log, lines)
        now = dict(PATTERNS, ssh=PATTERNS["ssh"].replace("password", "publickey"))
        want = {n: sum(bool(re.search(rx, t)) for t in [SENTINEL, *lines]) for n, rx in now.items()}
        assert want["ssh"] == 1
        await eventually(
            lambda: agent.pipeline.lines_matched.get("oom", 0) == want["oom"],
            what=lambda: f"the sentinel to match: {dict(agent.pipeline.lines_matched)}",
        )
        assert {n: agent.pipeline.lines_matched.get(n, 0) for n in now} == want
        assert new.stage == {"app": "full"}
    finally:
        agent.request_stop()
        async with asyncio.timeout(20):
            assert await task == 0
