"""Patterns compile off the event loop (service.py ``_compile``, pipeline.build_matcher): at start
the sources open and the watchdog is pinged while they compile, READY=1 only once matching is
ready; on a reload the old rules keep matching lines until the new matcher is ready, then the
processor swaps. The agent runs in-process on a FakeClock with a real file and a real notify
socket; the compile is held by an event (the real compile runs once it is let go), so the
test decides when it ends instead of racing it."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from detector.clock import FakeClock
from detector.matching import Matcher
from detector.model import Config
from detector.sdnotify import Notifier
from detector.service import Agent
from tests.waiting import eventually

RULES = """\
version: 1
agent: {{state: "{state}", cache_dir: "{cache}"}}
sources:
  app: {{file: "{log}", start_at: beginning}}
rules:
  - name: {rule}
    source: app
    match: '{word} (?P<n>\\d+)'
    group_by: [n]
"""


class HeldAgent(Agent):
    """The real agent whose pattern compiles wait for ``release`` before they run."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.release = asyncio.Event()
        self.compiles = 0

    async def _compile(self, config: Config) -> Matcher:
        self.compiles += 1
        await self.release.wait()
        return await super()._compile(config)


def write_rules(tmp_path: Path, rule: str, word: str) -> Path:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        RULES.format(
            state=tmp_path / "state.db",
            cache=tmp_path / "cache",
            log=tmp_path / "app.log",
            rule=rule,
            word=word,
        )
    )
    return cfg


def append(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))


async def next_datagram(sock: socket.socket, within: float = 10.0) -> str:
    async with asyncio.timeout(within):
        return (await asyncio.get_running_loop().sock_recv(sock, 4096)).decode()


async def test_sources_open_and_the_watchdog_is_pinged_while_compiling_ready_after(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    path, sock = notify_socket
    log = tmp_path / "app.log"
    log.touch()
    cfg = write_rules(tmp_path, "errors", "ERROR")
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # a ping per 50 ms
    agent = HeldAgent(cfg, FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC)), notifier=notifier)
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: agent.compiles == 1, what="the compile to start")
        await eventually(
            lambda: "app" in agent.sources and agent.sources["app"].source.opened.is_set(),
            what="the source to open while the patterns compile",
        )
        append(log, "ERROR 1")  # written while compiling: read and matched once ready
        pings = 0
        while pings < 4:  # the loop is free: the watchdog keeps pinging, nothing says READY
            message = await next_datagram(sock)
            assert "READY=1" not in message
            pings += message == "WATCHDOG=1"
        assert not hasattr(agent, "pipeline")
        agent.release.set()
        while "READY=1" not in (message := await next_datagram(sock)):
            assert message == "WATCHDOG=1" or message.startswith("STATUS=")
        await eventually(
            lambda: agent.pipeline.lines_matched.get("errors", 0) == 1,
            what="the line written during the compile to match",
        )
    finally:
        agent.release.set()
        agent.request_stop()
        async with asyncio.timeout(20):
            assert await task == 0


async def test_a_reload_keeps_matching_with_the_old_rules_until_the_new_ones_are_compiled(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    cfg = write_rules(tmp_path, "old", "OLD")
    agent = HeldAgent(cfg, FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC)))
    agent.release.set()
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: hasattr(agent, "pipeline"), what="the start")
        await agent.wait_idle()
        agent.release.clear()  # the reload's compile will wait
        write_rules(tmp_path, "new", "NEW")
        agent.request_reload()
        await eventually(lambda: agent.compiles == 2, what="the reload's compile to start")
        append(log, "OLD 1", "NEW 1")
        await eventually(lambda: agent.pipeline.lines_read["app"] == 2, what="the lines to be read")
        assert agent.pipeline.lines_matched["old"] == 1  # matched by the old rules meanwhile
        assert "new" not in agent.pipeline.evaluators
        assert agent.health.value("config_reloads", result="ok") == 0
        agent.release.set()
        await eventually(lambda: "new" in agent.pipeline.evaluators, what="the swap")
        assert "old" not in agent.pipeline.evaluators
        append(log, "NEW 2", "OLD 2")
        await eventually(
            lambda: agent.pipeline.lines_read["app"] == 4, what="the later lines to be read"
        )
        await agent.wait_idle()
        assert agent.pipeline.lines_matched["new"] == 1  # NEW 2 only: NEW 1 came before
        assert agent.health.value("config_reloads", result="ok") >= 1
    finally:
        agent.release.set()
        agent.request_stop()
        async with asyncio.timeout(20):
            assert await task == 0


class SlowCompileAgent(Agent):
    """The real agent whose (real, cold-cache) compile starts only after the self-monitor has
    polled twice with the sources open: a compile that outlasts polls, as ~150 real-world rules
    on a cold cache do, decided by the test instead of by the machine's speed."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.polls_while_compiling = 0
        self.polled = asyncio.Event()

    async def _poll(self) -> None:
        await super()._poll()
        if self.sources and not hasattr(self, "pipeline"):
            self.polls_while_compiling += 1
            self.polled.set()

    async def _compile(self, config: Config) -> Matcher:
        while self.polls_while_compiling < 2:
            self.polled.clear()
            await self.polled.wait()
        matcher = await super()._compile(config)
        assert not any(matcher.cached.values()), "the cache was meant to be cold"
        return matcher


async def test_a_cold_compile_outlasting_the_self_monitor_polls_still_starts_and_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp

    from detector import selfmon
    from tests.agent_proc import free_port
    from tests.receiver import Receiver

    monkeypatch.setattr(selfmon, "POLL_S", 0.02)
    log = tmp_path / "app.log"
    log.touch()
    port = free_port()
    async with Receiver() as rx:
        cfg = tmp_path / "rules.yaml"
        cfg.write_text(
            f'version: 1\nagent: {{state: "{tmp_path / "state.db"}", host: t, '
            f'cache_dir: "{tmp_path / "cache"}", listen: "127.0.0.1:{port}"}}\n'
            f"webhooks:\n  hook: {{url: '{rx.url}/hook'}}\n"
            f'sources:\n  app: {{file: "{log}", start_at: beginning}}\n'
            "rules:\n  - name: errors\n    source: app\n    match: 'ERROR (?P<n>\\d+)'\n"
            "    group_by: [n]\n"
        )
        agent = SlowCompileAgent(cfg, FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC)))
        task = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: agent.polls_while_compiling >= 1, what="a poll mid-compile")
            async with aiohttp.ClientSession() as session:  # the listener answers meanwhile
                for path in ("/healthz", "/status", "/metrics"):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as r:
                        assert r.status in (200, 503), (path, r.status, await r.text())
                async with session.get(f"http://127.0.0.1:{port}/status") as r:
                    assert (await r.json())["agent"]["firing"] == []
            await eventually(lambda: hasattr(agent, "pipeline"), what="the start")
            assert agent.polls_while_compiling >= 2 and not task.done()
            append(log, "ERROR 7")
            await rx.wait_for(1, within=10)
            (alert,) = rx.received[0].json()["alerts"]
            assert alert["status"] == "firing" and alert["labels"]["n"] == "7", alert
        finally:
            agent.request_stop()
            async with asyncio.timeout(20):
                assert await task == 0


async def test_a_stop_while_compiling_does_not_wait_for_the_rest_of_the_rule_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``systemctl stop`` during a long cold compile: ``run`` returns (a clean stop) while a
    source's database is still being built, and the compile thread then builds no further
    source (``CompileCancelled``) instead of compiling the whole rule set for nobody. The build
    of one source is held by a threading event, so the test decides when it ends."""
    import threading

    from detector.matching.engine import CompileCancelled

    sources = [f"s{i}" for i in range(8)]
    for s in sources:
        (tmp_path / f"{s}.log").touch()
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        f'version: 1\nagent: {{state: "{tmp_path / "state.db"}", '
        f'cache_dir: "{tmp_path / "cache"}"}}\nsources:\n'
        + "".join(f'  {s}: {{file: "{tmp_path / s}.log"}}\n' for s in sources)
        + "rules:\n"
        + "".join(f"  - {{name: r{s}, source: {s}, match: 'ERROR {s} (\\d+)'}}\n" for s in sources)
    )
    started, gate = threading.Event(), threading.Event()
    outcomes: list[str] = []
    real = Matcher._build_source

    def held(self: Matcher, source: str, cancelled: Any = None, **kw: Any) -> Any:
        started.set()
        gate.wait(30)
        try:
            got = real(self, source, cancelled, **kw)
        except CompileCancelled:
            outcomes.append("cancelled")
            raise
        outcomes.append("built")
        return got

    monkeypatch.setattr(Matcher, "_build_source", held)
    caplog.set_level("INFO", logger="detector")
    agent = Agent(cfg, FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC)))
    task = asyncio.create_task(agent.run())
    try:
        await eventually(started.is_set, what="a source's database to start building")
        await eventually(lambda: len(agent.sources) == len(sources), what="the sources to open")
        agent.request_stop()
        async with asyncio.timeout(20):
            assert await task == 0  # returned while the held build has not finished
        assert not gate.is_set() and outcomes == []
        assert not hasattr(agent, "pipeline")
        assert "the compile is abandoned" in caplog.text
        assert "patterns compiled" not in caplog.text
    finally:
        gate.set()
        agent.request_stop()
    await eventually(lambda: len(outcomes) == len(sources), what="the compile thread to end")
    workers = min(4, os.cpu_count() or 1)
    assert outcomes.count("built") <= workers  # those already building when the stop came
    assert outcomes.count("cancelled") >= len(sources) - workers, outcomes
