"""One agent per state file, and a state file that is no state is never taken as a fresh one:
real agents as subprocesses, real SQLite files, the commands that write the file beside a running
agent, receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.clock import FakeClock
from detector.config import load_config
from detector.pipeline import Pipeline
from detector.records import Commit, OutboxRow
from detector.rules.base import When
from detector.sources.base import Batch, Line
from detector.store import outbox
from detector.store.db import Store, StoreCorrupt
from detector.store.runs import StateLocked, lock_path, open_store
from tests.agent_inproc import RULES, agent_alerts, running, summaries, until
from tests.agent_proc import ROOT, AgentProcess, config_in, write_config
from tests.receiver import Receiver
from tests.test_cli import run

NOW = datetime(2026, 6, 9, 12, 0, tzinfo=UTC)


async def detector_run(cfg: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "detector",
        "run",
        "-c",
        str(cfg),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


# ---------------------------------------------------------------- one agent per state file


async def test_a_second_agent_on_the_same_state_file_refuses_naming_the_first_and_exits_2(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log), rx.url + "/hook")
        first = await AgentProcess(cfg).start()
        try:
            assert first.proc is not None
            rc, err = await detector_run(cfg)
            assert rc == 2, err
            [refusal] = [line for line in err.splitlines() if "in use by another" in line]
            assert f"PID {first.proc.pid}" in refusal
            assert str(tmp_path / "state.db") in refusal
            assert lock_path(tmp_path / "state.db").read_text().strip() == str(first.proc.pid)
            assert first.proc.returncode is None  # the first one goes on, alone
            with log.open("a") as f:
                f.write("ERROR 1\n")
            await rx.wait_for(1, within=15)
        finally:
            assert await first.terminate() == 0
        store = Store(tmp_path / "state.db")
        try:
            assert store.get_meta("agent_run")["pid"] == first.proc.pid  # never the second's
            events = store.execute("SELECT event_id FROM outbox")
        finally:
            store.close()
    assert len(events) == 1  # posted once, under one event id
    assert len(rx.bodies()) == 1


async def test_a_sigkilled_agent_never_blocks_the_next_one(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log), rx.url + "/hook")
        killed = await AgentProcess(cfg).start()
        await killed.kill()  # SIGKILL: no clean stop, the lock file stays with its PID
        assert lock_path(tmp_path / "state.db").exists()
        again = await AgentProcess(cfg).start()
        try:
            assert again.proc is not None
            assert lock_path(tmp_path / "state.db").read_text().strip() == str(again.proc.pid)
        finally:
            assert await again.terminate() == 0


def test_the_lock_is_held_until_the_store_is_closed(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    store, corrupt = open_store(state, NOW)
    assert corrupt is None
    with pytest.raises(StateLocked, match=rf"in use by another detector agent \(PID {os.getpid()}"):
        open_store(state, NOW)
    store.close()
    again, _ = open_store(state, NOW)
    again.close()


def _state_with_a_template_and_a_dead_letter(tmp_path: Path) -> tuple[Path, str]:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        f"version: 1\nagent: {{state: {tmp_path / 'state.db'}}}\n"
        f"sources: {{app: {{file: {tmp_path / 'app.log'}}}}}\n"
        "webhooks: {h: {url: 'http://127.0.0.1:9/x'}}\n"
        "rules:\n  - {name: new-kinds, source: app, anomaly: {type: new, learn_lines: 1}}\n"
    )
    pipeline = Pipeline(load_config(cfg), NOW, lambda r: {})
    commit = pipeline.process(
        Batch("app", [Line("app", "connection from 10.0.0.1 accepted")]),
        lambda _l: When.exact(NOW),
        NOW,
    )
    store = Store(tmp_path / "state.db")
    store.commit(commit, NOW)
    store.commit(Commit(outbox=[OutboxRow("h", "ev-dead", "f1", "firing", {"r": 1}, NOW)]), NOW)
    [(row_id,)] = store.execute("SELECT id FROM outbox")
    outbox.mark_dead(store, [row_id], NOW, "refused: HTTP 400")
    store.close()
    out = run("templates", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    template_id = next(ln for ln in out.stdout.splitlines() if "connection" in ln).split()[0]
    return cfg, template_id


def test_commands_that_write_the_state_file_do_not_take_the_agents_lock(tmp_path: Path) -> None:
    cfg, template_id = _state_with_a_template_and_a_dead_letter(tmp_path)
    state = tmp_path / "state.db"
    agent_store, _ = open_store(state, NOW)  # what a running agent holds
    try:
        retried = run("outbox", "retry", "-c", str(cfg), "--id", "ev-dead")
        assert retried.returncode == 0, retried.stderr
        known = run("templates", "-c", str(cfg), "--known", template_id)
        assert known.returncode == 0, known.stderr
        noted = run("note-stop", "-c", str(cfg), env={"SERVICE_RESULT": "signal"})
        assert noted.returncode == 0 and not noted.stderr, noted.stderr
        # the writes are there, seen by the agent's own connection
        assert agent_store.get_meta("systemd_stop")["result"] == "signal"
        assert outbox.state_counts(agent_store) == {"h": {"pending": 1}}
        with pytest.raises(StateLocked):  # and the agent's lock is still the agent's
            open_store(state, NOW)
    finally:
        agent_store.close()
    again = run("templates", "-c", str(cfg))
    assert " K" in next(ln for ln in again.stdout.splitlines() if "connection" in ln)


# ---------------------------------------------------------------- no state is not a fresh state


def _no_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something_else (x)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["empty", "no schema"])
async def test_an_empty_or_schemaless_state_file_is_moved_aside_with_an_agent_alert(
    tmp_path: Path, kind: str
) -> None:
    log = tmp_path / "app.log"
    log.write_text("ERROR 1\n")
    state = tmp_path / "state.db"
    if kind == "empty":
        state.touch()
    else:
        _no_schema(state)
    before = state.read_bytes()
    clock = FakeClock(NOW)
    async with Receiver() as rx:
        cfg = write_config(
            tmp_path / "rules.yaml", RULES.format(log=log), state=state, url=rx.url + "/hook"
        )
        async with running(cfg, clock) as agent:
            await until(lambda: bool(summaries(rx)), clock, what="the agent alert")
            assert summaries(rx)[0] == ("firing", "state file was corrupt and was rebuilt")
            description = agent_alerts(rx)[0]["annotations"]["description"]
            what = "it is empty (0 bytes)" if kind == "empty" else "no detector schema"
            assert what in description and "moved aside" in description
            assert agent.previous is not None and not agent.previous.unclean
    [aside] = [p for p in tmp_path.glob("state.db.corrupt-*") if p.name.endswith("Z")]
    assert aside.read_bytes() == before  # kept as it was, for a look
    rebuilt = Store(state)
    try:
        assert rebuilt.get_meta("agent_run") is not None
    finally:
        rebuilt.close()


@pytest.mark.parametrize("kind", ["empty", "no schema"])
def test_status_on_an_empty_or_schemaless_state_file_says_so_and_leaves_it_alone(
    tmp_path: Path, kind: str
) -> None:
    state = tmp_path / "state.db"
    if kind == "empty":
        state.touch()
    else:
        _no_schema(state)
    before = state.read_bytes()
    cfg = config_in(tmp_path, RULES.format(log=tmp_path / "app.log"), "http://127.0.0.1:9/x")
    out = run("status", "-c", str(cfg))
    assert out.returncode == 2
    assert out.stdout == ""  # no empty table of sources, rules and alerts
    what = "it is empty (0 bytes)" if kind == "empty" else "no detector schema (no meta table)"
    assert what in out.stderr and "will move it aside" in out.stderr
    assert state.read_bytes() == before
    # note-stop (ExecStopPost) does not turn it into a valid-looking fresh state either
    noted = run("note-stop", "-c", str(cfg), env={"SERVICE_RESULT": "success"})
    assert noted.returncode == 0 and what in noted.stderr
    assert state.read_bytes() == before
    with pytest.raises(StoreCorrupt):
        Store(state)


def test_a_fresh_state_file_is_created_without_complaint(tmp_path: Path) -> None:
    store, corrupt = open_store(tmp_path / "sub" / "state.db", NOW)
    try:
        assert corrupt is None and store.schema_version() >= 1
    finally:
        store.close()
    assert not list((tmp_path / "sub").glob("*.corrupt-*"))
