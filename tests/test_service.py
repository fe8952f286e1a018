"""The agent in-process with a FakeClock: restarts across a window, reloads, self-monitoring.

These run the real ``Agent`` (real files, real SQLite, a real receiver on 127.0.0.1); only the clock
is fake, so "the agent was down from 00:30 to 04:10" takes no time.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.clock import FakeClock
from detector.service import QUEUE_BATCHES, Agent, BatchQueue
from detector.sources.base import Batch
from tests.agent_inproc import RULES
from tests.agent_proc import config_in, write_config
from tests.receiver import Receiver
from tests.waiting import eventually

WINDOW_RULES = """\
sources:
  backups: {{file: "{log}"}}
rules:
  - name: nightly-backup
    source: backups
    match: 'backup complete'
    expect: {{cron: "0 2 * * *", within: 1h, timezone: Europe/Berlin}}
"""


async def idle(agent: Agent, within: float = 15) -> None:
    """Until the agent has nothing left to do now (``Agent.wait_idle``): what it has read is
    processed and committed, due deadlines ran, due deliveries went out."""
    await asyncio.sleep(0)  # a caller looping on idle() lets the loop (and its timeouts) run
    async with asyncio.timeout(within):
        await agent.wait_idle()


async def run_agent(
    cfg: Path, clock: FakeClock, body: Callable[[Agent], Awaitable[None]] | None = None
) -> Agent:
    agent = Agent(cfg, clock)
    task = asyncio.create_task(agent.run())
    settled = asyncio.ensure_future(idle(agent))  # caught up, due deadlines run, deliveries out
    await asyncio.wait({task, settled}, return_when=asyncio.FIRST_COMPLETED)
    if not settled.done():
        settled.cancel()
        await task  # the agent stopped before it was idle: its error, or
        raise AssertionError("the agent exited before it was idle")
    await settled
    if body is not None:
        await body(agent)
    agent.request_stop()
    assert await task == 0
    return agent


def alerts_of(rx: Receiver) -> list[dict[str, Any]]:
    return [{**a, "x": b["x_detector"]} for b in rx.bodies() for a in b["alerts"]]


async def _restart_across_window(
    tmp_path: Path, write_during_downtime: bool
) -> list[dict[str, Any]]:
    log = tmp_path / "backup.log"
    log.touch()
    # 00:30 Berlin (CEST, UTC+2) on 10 June: before the 02:00–03:00 window
    clock = FakeClock(datetime(2026, 6, 9, 22, 30, tzinfo=UTC))
    async with Receiver() as rx:
        cfg = config_in(tmp_path, WINDOW_RULES.format(log=log), rx.url + "/hook")
        await run_agent(cfg, clock)
        assert rx.received == []
        # the agent is down from 00:30 to 04:10 Berlin; the window closes at 03:00 meanwhile
        if write_during_downtime:
            log.write_text("2026-06-10 02:37 backup complete\n")
        clock.set(datetime(2026, 6, 10, 2, 10, tzinfo=UTC))
        await run_agent(cfg, clock)
        return alerts_of(rx)


async def test_a_backup_logged_while_the_agent_was_down_satisfies_its_window(
    tmp_path: Path,
) -> None:
    assert await _restart_across_window(tmp_path, write_during_downtime=True) == []


async def test_a_window_missed_while_the_agent_was_down_fires_once_and_says_so(
    tmp_path: Path,
) -> None:
    alerts = await _restart_across_window(tmp_path, write_during_downtime=False)
    assert len(alerts) == 1
    text = (
        alerts[0]["annotations"].get("summary", "")
        + alerts[0]["annotations"].get("description", "")
    ).lower()
    assert "down" in text
    assert alerts[0]["labels"]["rule"] == "nightly-backup"


RELOAD_RULES = RULES  # one error rule with a captured group, never repeated


async def test_reload_under_load_valid_invalid_valid_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RELOAD_RULES.format(log=log), rx.url + "/hook")
        good = cfg.read_text()

        async def body(agent: Agent) -> None:
            n = 0
            for step in range(6):
                for _ in range(50):
                    with log.open("a") as f:
                        f.write(f"ERROR {n}\n")
                    n += 1
                    if n % 10 == 0:
                        await asyncio.sleep(0)
                if step == 1:
                    cfg.write_text(good.replace("group_by: [n]", "group_by: [n]\n    tresholds: 3"))
                    agent.request_reload()
                    # the invalid file must be seen before step 3 overwrites it
                    await eventually(lambda: reloads(agent, "refused") >= 1, what="a refusal")
                elif step == 3:
                    cfg.write_text(good + "\n# edited\n")
                    agent.request_reload()
                    await eventually(lambda: reloads(agent, "ok") >= 1, what="a reload")
            await rx.wait_until(
                lambda: (
                    len(
                        {a["labels"]["n"] for a in alerts_of(rx) if a["labels"]["rule"] == "errors"}
                    )
                    >= n
                ),
                within=20,
            )

        agent = await run_agent(cfg, clock, body)
        errors = [a for a in alerts_of(rx) if a["labels"]["rule"] == "errors"]
        assert sorted({a["labels"]["n"] for a in errors}, key=int) == [str(i) for i in range(300)]
        assert len(errors) == 300  # none doubled
        refused = [a for a in alerts_of(rx) if a["labels"]["rule"] == "detector-agent"]
        assert [a["status"] for a in refused] == ["firing", "resolved"]
        assert "tresholds" in refused[0]["annotations"].get("description", "")
        # each edit is seen by SIGHUP-style request and possibly again by the file watcher
        assert agent.health.value("config_reloads", result="refused") >= 1
        assert agent.health.value("config_reloads", result="ok") >= 1


def reloads(agent: Agent, result: str) -> float:
    return agent.health.value("config_reloads", result=result)


async def test_a_corrupt_state_file_is_moved_aside_and_reported(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    state = tmp_path / "state.db"
    state.write_bytes(b"garbage, not sqlite" * 200)
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    async with Receiver() as rx:
        cfg = write_config(
            tmp_path / "rules.yaml", RELOAD_RULES.format(log=log), state=state, url=rx.url + "/hook"
        )
        await run_agent(cfg, clock, lambda a: rx.wait_for(1, within=5))
        alert = alerts_of(rx)[0]
        assert alert["labels"]["kind"] == "agent"
        assert "moved aside" in alert["annotations"].get("description", "")
    assert list(tmp_path.glob("state.db.corrupt-*"))


async def test_an_unreadable_source_becomes_an_agent_alert_after_its_grace(tmp_path: Path) -> None:
    missing = tmp_path / "dir-not-file"
    missing.mkdir()
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    async with Receiver() as rx:
        cfg = config_in(
            tmp_path,
            RELOAD_RULES.format(log=missing),
            rx.url + "/hook",
            extra_agent="source_grace: 1m\n",
        )

        async def body(agent: Agent) -> None:
            # the self-monitor's first look at the sources: known, logged as a warning, but
            # within its grace: nobody paged, /healthz still ok
            await eventually(lambda: bool(agent.problems.pending()), what="the self-check round")
            await idle(agent)
            assert "dir-not-file" in agent.problems.pending()[0].message
            assert agent.health.healthy() is True
            assert rx.received == []
            clock.advance(timedelta(minutes=2))
            await rx.wait_for(1, within=6)
            assert agent.health.healthy() is False
            assert "dir-not-file" in " ".join(agent.health.reasons())

        await run_agent(cfg, clock, body)
        alert = alerts_of(rx)[0]
        assert alert["labels"]["kind"] == "agent"
        assert "app" in alert["annotations"]["summary"]


async def test_an_edit_of_rules_yaml_on_disk_reloads_without_a_signal(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RELOAD_RULES.format(log=log), rx.url + "/hook")

        async def body(agent: Agent) -> None:
            cfg.write_text(cfg.read_text().replace("name: errors", "name: errors2"))
            await eventually(lambda: "errors2" in agent.pipeline.evaluators, what="the reload")
            with log.open("a") as f:
                f.write("ERROR 7\n")
            await rx.wait_for(1, within=5)

        await run_agent(cfg, clock, body)
        assert alerts_of(rx)[0]["labels"]["rule"] == "errors2"


FALLBACK_RULES = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: errors
    source: app
    match: 'ERROR'
    notify: [primary]
"""


async def test_a_failing_webhook_alerts_the_fallback_degrades_healthz_and_recovers(
    tmp_path: Path,
) -> None:
    import aiohttp

    from tests.agent_proc import free_port

    log = tmp_path / "app.log"
    log.touch()
    primary_port, listen_port = free_port(), free_port()
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    async with Receiver() as fallback:
        cfg = tmp_path / "rules.yaml"
        cfg.write_text(
            f"version: 1\nagent:\n  state: {tmp_path / 'state.db'}\n  host: t\n"
            f"  listen: 127.0.0.1:{listen_port}\n"
            "webhooks:\n"
            f"  primary: {{url: 'http://127.0.0.1:{primary_port}/in', fail_after: 2,"
            " fallback: [backup]}\n"
            f"  backup: {{url: '{fallback.url}/fb'}}\n" + FALLBACK_RULES.format(log=log)
        )

        async def healthz(session: aiohttp.ClientSession) -> tuple[int, str]:
            async with session.get(f"http://127.0.0.1:{listen_port}/healthz") as r:
                return r.status, await r.text()

        async def body(agent: Agent) -> None:
            async with aiohttp.ClientSession() as session:
                assert (await healthz(session))[0] == 200
                with log.open("a") as f:
                    f.write("ERROR boom\n")
                await eventually(lambda: agent.pipeline.lines_matched.get("errors", 0) == 1)

                async def advance_until(done: Callable[[], bool]) -> None:
                    async with asyncio.timeout(20):
                        while not done():  # the clock moves only once the agent is idle
                            clock.advance(timedelta(seconds=5))
                            await idle(agent)

                await advance_until(lambda: bool(fallback.received))
                failing = alerts_of(fallback)[0]
                assert failing["status"] == "firing"
                assert "delivery to primary failing" in failing["annotations"]["summary"]
                status, text = await healthz(session)
                assert status == 503 and "primary" in text
                async with Receiver(port=primary_port) as primary:
                    await advance_until(lambda: len(fallback.received) >= 2 and primary.received)
                    assert alerts_of(primary)[0]["labels"]["rule"] == "errors"
                    assert alerts_of(fallback)[1]["status"] == "resolved"
                    assert (await healthz(session))[0] == 200

        await run_agent(cfg, clock, body)


async def test_the_dead_mans_switch_stops_while_a_source_is_broken_and_resumes_after(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    async with Receiver() as rx, Receiver() as hb:
        cfg = config_in(
            tmp_path,
            RELOAD_RULES.format(log=log),
            rx.url + "/hook",
            extra_agent=f"heartbeat: {hb.url}/ping\nheartbeat_every: 1m\nsource_grace: 20s\n",
        )

        async def body(agent: Agent) -> None:
            def rounds() -> float:  # of the heartbeat loop: pinged, failed or skipped
                h = agent.health
                return sum(
                    h.value("heartbeats", result=r) for r in ("sent", "failed", "skipped_unhealthy")
                )

            async def minute() -> None:
                before = rounds()
                clock.advance(timedelta(minutes=1))
                await eventually(lambda: rounds() > before, what="the next heartbeat round")

            async def until(cond: Callable[[], bool], within: float = 30) -> None:
                # each look moves the clock a second: drives the file source's stat sweep
                await eventually(
                    cond, within, step=lambda: clock.advance(timedelta(seconds=1)), every=0.1
                )

            async def pinged_again() -> None:
                # a round may be skipped while the loaded machine is briefly unhealthy (loop
                # lag): a healthy agent pings again within a few rounds
                before = len(hb.received)
                for _ in range(5):
                    await minute()
                    if len(hb.received) > before:
                        return
                raise AssertionError(f"no ping in 5 rounds: {agent.health.problems()}")

            await hb.wait_for(1, within=15)  # pinged at start
            await pinged_again()
            log.unlink()
            log.mkdir()  # the log is now a directory: unreadable
            await until(lambda: not agent.health.healthy())
            pings = len(hb.received)
            for _ in range(3):
                await minute()
            assert len(hb.received) == pings, "no ping while a source is broken"
            log.rmdir()
            log.touch()
            await until(agent.health.healthy)
            await pinged_again()

        await run_agent(cfg, clock, body)
        assert all(r.path == "/ping" for r in hb.received)


TWO_SOURCES = """\
sources:
{sources}
rules:
{rules}
"""


async def test_reload_opens_added_sources_closes_removed_ones_and_resumes_them_where_they_were(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.touch()
    b.touch()
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))

    def body_for(names: list[str]) -> str:
        sources = "\n".join(f'  {n}: {{file: "{tmp_path / (n + ".log")}"}}' for n in names)
        rules = "\n".join(
            f"  - {{name: err-{n}, source: {n}, match: 'ERROR (?P<n>\\d+)', group_by: [n]}}"
            for n in names
        )
        return TWO_SOURCES.format(sources=sources, rules=rules)

    async with Receiver() as rx:
        cfg = config_in(tmp_path, body_for(["a"]), rx.url + "/h")

        def seen(status: str = "firing") -> list[tuple[str, str]]:
            return sorted(
                (x["labels"]["rule"], x["labels"]["n"])
                for x in alerts_of(rx)
                if x["status"] == status
            )

        async def reload_to(agent: Agent, names: list[str]) -> None:
            write_config(cfg, body_for(names), state=tmp_path / "state.db", url=rx.url + "/h")
            agent.request_reload()
            await eventually(lambda: sorted(agent.sources) == sorted(names), what="the reload")
            # a source added by a reload starts at the end of its file once it opened: a line
            # written before that is not its to read
            await eventually(
                lambda: all(r.source.opened.is_set() for r in agent.sources.values()),
                what="the sources opened",
            )

        async def body(agent: Agent) -> None:
            with a.open("a") as f:
                f.write("ERROR 1\n")
            await rx.wait_for(1, within=15)  # a deadline, generous for a loaded machine
            await reload_to(agent, ["b"])
            with a.open("a") as f:
                f.write("ERROR 2\n")  # a is not watched now…
            with b.open("a") as f:
                f.write("ERROR 3\n")
            await rx.wait_for(3, within=15)  # a deadline, generous for a loaded machine
            assert seen() == [("err-a", "1"), ("err-b", "3")]
            assert seen("resolved") == [("err-a", "1")]  # its rule went away with the source
            await reload_to(agent, ["a", "b"])  # …and when it is again, nothing of it is lost
            await rx.wait_for(4, within=15)  # a deadline, generous for a loaded machine

        await run_agent(cfg, clock, body)
        assert seen() == [("err-a", "1"), ("err-a", "2"), ("err-b", "3")]


async def test_a_source_that_never_catches_up_does_not_hold_silence_detection_forever(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(datetime(2026, 6, 9, 12, 0, tzinfo=UTC))
    body_yaml = f"""\
sources:
  app: {{file: "{log}"}}
  jd: {{journald: {{journalctl: /nonexistent/journalctl}}}}
rules:
  - name: alive
    source: app
    match: alive
    expect: {{every: 1m}}
"""
    async with Receiver() as rx:
        cfg = config_in(tmp_path, body_yaml, rx.url + "/h")
        agent = Agent(cfg, clock, catch_up_limit_s=3.0)
        task = asyncio.create_task(agent.run())
        try:

            def only_journald_behind() -> bool:
                src = agent.sources
                if sorted(src) != ["app", "jd"] or not src["app"].source.caught_up():
                    return False
                return int(src["jd"].source.status()["consecutive_failures"]) >= 1

            # the file is read and journalctl failed to start (well within the limit)…
            await eventually(only_journald_behind, what="journalctl failing, the file read")
            assert not agent.state.caught_up  # …journald cannot start: still waiting
            await eventually(lambda: agent.state.caught_up, what="the catch-up limit")
            clock.advance(timedelta(minutes=2))
            await rx.wait_for(1, within=5)
            assert alerts_of(rx)[0]["labels"]["rule"] == "alive"
        finally:
            agent.request_stop()
            assert await task == 0


async def catch_up_on(tmp_path: Path, log: Path, rule: str, match: str) -> Agent:
    """Run the agent once over ``log`` from its beginning, with one rule; returns it stopped."""
    body = f"""\
sources:
  app: {{file: "{log}", start_at: beginning}}
rules:
  - name: {rule}
    source: app
    match: '{match}'
"""
    async with Receiver() as rx:
        cfg = config_in(tmp_path, body, rx.url + "/hook")
        return await run_agent(cfg, FakeClock(datetime(2026, 6, 10, tzinfo=UTC)))


async def test_a_backlog_is_committed_in_fewer_transactions_than_batches_losing_no_line(
    tmp_path: Path,
) -> None:
    """Catching up, the batches waiting in the queue are committed together: far fewer commits
    than 1 MiB blocks, every line still matched once, the read position at the end."""
    log = tmp_path / "app.log"
    lines = [f"2026-06-10T00:00:00Z app[{i}]: request {i} " + "x" * 100 for i in range(60_000)]
    lines[::1000] = [f"2026-06-10T00:00:00Z app[1]: ERROR number {k}" for k in range(60)]
    log.write_text("\n".join(lines) + "\n")
    agent = await catch_up_on(tmp_path, log, "errors", r"ERROR number (?P<n>\d+)")
    assert agent.pipeline.lines_read["app"] == 60_000
    assert agent.pipeline.lines_matched["errors"] == 60
    blocks = log.stat().st_size // (1 << 20) + 1
    assert agent.state.batches >= blocks > 4
    assert agent.state.commits < agent.state.batches / 2
    con = sqlite3.connect(tmp_path / "state.db")
    (value,) = con.execute("SELECT value FROM checkpoints WHERE source='app'").fetchone()
    con.close()
    assert json.loads(value)["offset"] == log.stat().st_size


async def test_slow_batches_are_committed_one_by_one_so_the_loop_is_not_held(
    tmp_path: Path,
) -> None:
    """Coalescing stops after COALESCE_S of processing: batches whose lines run into the regex
    budget (50 ms each, several per batch) are each committed on their own, so the event loop
    (and the systemd watchdog ping on it) never waits for a whole queue of them."""
    log = tmp_path / "app.log"
    filler = "-" * 200  # no candidate: the prefilter rejects it
    evil = ("word " * 8).strip() + "y"  # undecidable in time by the lookbehind rule
    per_block = (1 << 20) // (len(filler) + 1)
    log.write_text(("\n".join([evil] * 6 + [filler] * per_block) + "\n") * 3)
    agent = await catch_up_on(tmp_path, log, "lookbehind", r"^(\w+\s?)+$(?<=z)")
    assert agent.pipeline.lines_read["app"] == 3 * (6 + per_block)
    assert agent.pipeline.lines_undecided["lookbehind"] == 18
    assert agent.state.batches >= 3
    assert agent.state.commits >= agent.state.batches


async def test_the_agents_queue_is_bounded_by_the_bytes_of_its_blocks() -> None:
    """Full at ``max_bytes`` of blocks (whatever the count below QUEUE_BATCHES); a batch of
    lines or checkpoints counts no bytes; every byte taken out is given back."""
    mib = b"x" * 1023 + b"\n"
    mib *= 1024
    q = BatchQueue(2 << 20, maxsize=QUEUE_BATCHES)
    q.put_nowait(Batch("s", [], block=mib))
    q.put_nowait(Batch("s", []))  # checkpoints only: no bytes
    assert not q.full()
    q.put_nowait(Batch("s", [], block=mib))
    assert q.full() and q.bytes == 2 << 20 and q.qsize() == 3
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(Batch("s", []))
    assert (await q.get()).block == mib
    assert not q.full() and q.bytes == 1 << 20
    q.put_nowait(Batch("s", [], block=mib[:10]))
    while not q.empty():
        q.get_nowait()
    assert q.bytes == 0
    for _ in range(QUEUE_BATCHES):  # and the count bound still holds
        q.put_nowait(Batch("s", []))
    assert q.full()
