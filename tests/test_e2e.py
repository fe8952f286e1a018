"""End to end: the agent as a subprocess, real log files, a real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.agent_proc import AgentProcess, config_in, free_port
from tests.receiver import Receiver
from tests.waiting import eventually, outbox_rows, settled

pytestmark = pytest.mark.slow


def append(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        for line in lines:
            f.write(line + "\n")


def user_cpu_s(pid: int) -> float:
    """User CPU time of process ``pid`` so far: what ITIMER_VIRTUAL (the regex budget's ticks)
    counts (/proc/PID/stat, field 14)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK")


def alerts_of(rx: Receiver) -> list[dict[str, Any]]:
    """(alert, x_detector) pairs flattened: one dict per alert in every json body received."""
    out = []
    for body in rx.bodies():
        for alert in body["alerts"]:
            out.append({**alert, "x": body["x_detector"]})
    return out


def job_alerts(rx: Receiver) -> list[dict[str, Any]]:
    return [a for a in alerts_of(rx) if a["labels"]["rule"] == "job-failed"]


RULES = """\
sources:
  app: {{file: "{log}"}}
  auth: {{file: "{auth}"}}
rules:
  - name: app-errors
    source: app
    match: 'ERROR (?P<what>.*)'
    summary: "app error: {{what}}"
  - name: ssh-bruteforce
    source: auth
    match: 'Failed password for \\S+ from (?P<ip>\\S+)'
    threshold: {{count: 5, within: 1m, by: ip}}
"""


async def test_error_line_alerts_threshold_fires_once_and_sigterm_exits_zero(
    tmp_path: Path,
) -> None:
    log, auth = tmp_path / "app.log", tmp_path / "auth.log"
    log.touch()
    auth.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log, auth=auth), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            append(log, "2026-11-25T10:00:00Z ERROR disk full on /var")
            await rx.wait_for(1, within=10)
            first = alerts_of(rx)[0]
            assert first["labels"]["rule"] == "app-errors"
            assert first["annotations"]["summary"] == "app error: disk full on /var"
            assert rx.received[0].headers["Idempotency-Key"] == first["x"]["event_id"]

            append(
                auth,
                *[
                    f"sshd[1]: Failed password for root from 203.0.113.9 port {i}"
                    for i in range(12)
                ],
            )
            await rx.wait_for(2, within=10)
            # every line read and committed, every alert it raised delivered: only now does
            # "one alert" say that more matches produced no more
            await settled(tmp_path / "state.db", [log, auth])
            threshold = [a for a in alerts_of(rx) if a["labels"]["rule"] == "ssh-bruteforce"]
            assert len(threshold) == 1
            assert threshold[0]["labels"]["ip"] == "203.0.113.9"
        finally:
            rc = await agent.terminate()
        assert rc == 0
        assert any("detector stopped" in line for line in agent.log)


KILL_RULES = """\
sources:
  app: {{file: "{log}", start_at: beginning}}
rules:
  - name: job-failed
    source: app
    match: 'job=(?P<job>\\d+) failed'
    group_by: [job]
    repeat: never
    resolve_after: 1d
"""


async def test_sigkill_mid_stream_loses_no_alert_and_duplicates_only_share_an_event_id(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    total = 300
    async with Receiver() as rx:
        cfg = config_in(tmp_path, KILL_RULES.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            for i in range(0, 100):
                append(log, f"job={i} failed")
            await rx.wait_for(20, within=15)
            # keep writing while the agent dies without a chance to clean up
            for i in range(100, 200):
                append(log, f"job={i} failed")
                if i == 120:
                    await agent.kill()
            agent = await AgentProcess(cfg).start()
            for i in range(200, total):
                append(log, f"job={i} failed")
            await rx.wait_until(
                lambda: len({a["labels"]["job"] for a in job_alerts(rx)}) >= total, within=30
            )
            await settled(tmp_path / "state.db", [log])  # a duplicate is delivered by now
        finally:
            await agent.terminate()
    # the kill itself is told: the restarted agent reports its unclean stop
    [restart] = [a for a in alerts_of(rx) if a["labels"]["rule"] == "detector-agent"]
    assert "restarted after an unclean stop" in restart["annotations"]["summary"]
    ids: dict[str, set[str]] = defaultdict(set)
    for a in job_alerts(rx):
        ids[a["labels"]["job"]].add(a["x"]["event_id"])
    assert sorted(ids, key=int) == [str(i) for i in range(total)]
    doubled = {job: ev for job, ev in ids.items() if len(ev) != 1}
    assert doubled == {}, "a re-sent alert must carry the same event id"


async def test_alerts_raised_while_the_receiver_is_down_arrive_once_it_is_up_even_across_a_restart(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    port = free_port()
    cfg = config_in(tmp_path, KILL_RULES.format(log=log), f"http://127.0.0.1:{port}/hook")
    state = tmp_path / "state.db"

    def outbox_has(rows: int) -> bool:  # that many job alerts committed, and an attempt failed
        jobs = "json_extract(payload, '$.rule') = 'job-failed'"
        return len(outbox_rows(state, jobs)) == rows and bool(outbox_rows(state, "attempts >= 1"))

    agent = await AgentProcess(cfg).start()
    try:
        append(log, "job=1 failed", "job=2 failed")
        await eventually(lambda: outbox_has(2), within=20, what="attempts fail: refused")
        await agent.kill()  # restart during the retries
        agent = await AgentProcess(cfg).start()
        append(log, "job=3 failed")
        await eventually(lambda: outbox_has(3), within=20, what="job 3 in the outbox")
        async with Receiver(port=port) as rx:
            await rx.wait_until(
                lambda: len({a["labels"]["job"] for a in job_alerts(rx)}) >= 3, within=40
            )
            jobs = sorted(a["labels"]["job"] for a in job_alerts(rx))
            assert jobs[:3] == ["1", "2", "3"]
            per_job = defaultdict(set)
            for a in job_alerts(rx):
                per_job[a["labels"]["job"]].add(a["x"]["event_id"])
            assert all(len(v) == 1 for v in per_job.values())
    finally:
        await agent.terminate()


SILENCE_RULES = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: app-alive
    source: app
    match: 'alive'
    expect: {{every: 2s}}
"""


async def test_silent_heartbeat_fires_within_a_second_of_its_deadline_and_resolves_on_next_line(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, SILENCE_RULES.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            append(log, "alive")
            written = time.monotonic()
            await rx.wait_for(1, within=10)
            late = time.monotonic() - written - 2.0
            assert -0.05 < late < 1.0
            fired = alerts_of(rx)[0]
            assert fired["status"] == "firing" and fired["labels"]["kind"] == "silence"
            append(log, "alive again")
            await rx.wait_for(2, within=10)
            resolved = alerts_of(rx)[1]
            assert resolved["status"] == "resolved"
            assert resolved["labels"]["rule"] == "app-alive"
        finally:
            await agent.terminate()


WINDOW_RULES = """\
sources:
  a: {{file: "{a}"}}
  b: {{file: "{b}"}}
rules:
  - name: backup-a
    source: a
    match: 'backup complete'
    expect: {{cron: "* * * * *", within: 8s, timezone: UTC}}
  - name: backup-b
    source: b
    match: 'backup complete'
    expect: {{cron: "* * * * *", within: 8s, timezone: UTC}}
"""


async def test_sigkill_during_a_window_then_restart_after_it_closed(tmp_path: Path) -> None:
    """A: its backup logged while the agent was dead → no alert. B: nothing logged → one alert
    at the restart, saying the agent was down."""
    import datetime as dt

    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.touch()
    b.touch()
    # the scenario's own time: the real clock (the agent's). Start outside a window (one open
    # at start would fire both rules first); the next one opens at the next full minute…
    now = dt.datetime.now(dt.UTC)
    if now.second < 10:
        await asyncio.sleep(10 - now.second - now.microsecond / 1e6)
        now = dt.datetime.now(dt.UTC)
    opens = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    closes = opens + dt.timedelta(seconds=8)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, WINDOW_RULES.format(a=a, b=b), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            until = opens + dt.timedelta(seconds=2)  # inside the window
            await asyncio.sleep((until - dt.datetime.now(dt.UTC)).total_seconds())
            await agent.kill()
            append(a, "backup complete")  # while the agent is dead, inside the window
            assert dt.datetime.now(dt.UTC) < closes, "too slow: the write missed the window"
            # …and its end passes while the agent is dead
            await asyncio.sleep((closes - dt.datetime.now(dt.UTC)).total_seconds() + 1.5)
            agent = await AgentProcess(cfg).start()
            await rx.wait_for(1, within=10)
            # both windows closed at the same deadline: the tick that fired B judged A too, and
            # whatever it raised is delivered once both logs are read and the outbox drained
            await settled(tmp_path / "state.db", [a, b])
        finally:
            await agent.terminate()
    alerts = [a for a in alerts_of(rx) if a["labels"]["rule"] != "detector-agent"]
    assert [x["labels"]["rule"] for x in alerts] == ["backup-b"]
    # and the SIGKILL itself was told
    [restart] = [a for a in alerts_of(rx) if a["labels"]["rule"] == "detector-agent"]
    assert "restarted after an unclean stop" in restart["annotations"]["summary"]
    text = " ".join(alerts[0]["annotations"].values()).lower()
    assert "down" in text


async def test_agent_speaks_sd_notify_ready_reloading_and_stopping(tmp_path: Path) -> None:
    import signal
    import socket

    log = tmp_path / "app.log"
    log.touch()
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    received: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                return received

    async def wait_for(text: str) -> None:  # on the socket: wakes as each datagram arrives
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(15):
            while not any(text in m for m in drain()):
                received.append((await loop.sock_recv(sock, 4096)).decode())

    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log, auth=log), rx.url + "/hook")
        agent = await AgentProcess(cfg, env={"NOTIFY_SOCKET": str(sock_path)}).start()
        try:
            await wait_for("READY=1")
            assert any("STATUS=" in m and "rules" in m for m in received)
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGHUP)
            await wait_for("RELOADING=1")
            await agent.wait_log("configuration reloaded")
        finally:
            assert await agent.terminate() == 0
    drain()
    assert any("STOPPING=1" in m for m in received)
    assert sum("READY=1" in m for m in received) >= 2  # at start and after the reload
    sock.close()


REDOS_RULES = """\
sources:
  evil: {{file: "{evil}"}}
  good: {{file: "{good}"}}
rules:
  - name: catastrophic
    source: evil
    match: '^(\\w+\\s?)+$'
  - name: nested
    source: evil
    match: '(a|aa)+c'
  - name: lookbehind
    source: evil
    match: '^(\\w+\\s?)+$(?<=z)'
  - name: plain-errors
    source: good
    match: 'ERROR'
"""


async def test_catastrophic_regexes_on_long_lines_do_not_stall_the_agent(tmp_path: Path) -> None:
    evil, good = tmp_path / "evil.log", tmp_path / "good.log"
    evil.touch()
    good.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, REDOS_RULES.format(evil=evil, good=good), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            # each of these takes Python's re far beyond any sane bound (> 5 s at 40 characters)
            append(evil, *[("word " * 2000).strip() + " !" for _ in range(20)])
            append(evil, *["a" * 4000 + "b!" for _ in range(20)])
            started = time.monotonic()
            append(good, "ERROR still watching")
            await rx.wait_for(1, within=10)
            assert time.monotonic() - started < 5.0
            await settled(tmp_path / "state.db", [evil, good], within=30)
            # the pathological lines (all read now) matched nothing
            assert [a["labels"]["rule"] for a in alerts_of(rx)] == ["plain-errors"]
            # no linear-time engine for the lookbehind: these lines (which `catastrophic` does
            # match) run into the regex budget; the agent says so instead of skipping silently
            undecided_line = ("word " * 8).strip() + "y"
            append(evil, *[undecided_line for _ in range(3)])
            await rx.wait_for(3, within=10)
            alerts = alerts_of(rx)
            assert sorted(a["labels"]["rule"] for a in alerts) == [
                "catastrophic",
                "detector-agent",
                "plain-errors",
            ]
            undecided = next(a for a in alerts if a["labels"]["rule"] == "detector-agent")
            assert "rule lookbehind: lines took over 50 ms" in undecided["annotations"]["summary"]
            assert undecided["x"]["count"] == 3
            assert undecided["x"]["samples"] == [undecided_line]
        finally:
            assert await agent.terminate() == 0


async def test_sigterm_during_a_long_stretch_of_matching_stops_the_agent_quietly(
    tmp_path: Path,
) -> None:
    """The regex budget ticks (SIGVTALRM, every 12.5 ms of CPU while a batch is matched) must not
    go through asyncio's signal pipe: it holds 278 bytes, so seconds of matching filled it,
    printed a BlockingIOError per tick on stderr, and lost a SIGTERM arriving then. Here one
    batch keeps the matcher busy for ~7 s, the most the per-batch bounds allow (16 lines of
    60,000 characters: 40 regex budgets of 50 ms and 5 s of the linear but slow Pike VM), and
    SIGTERM comes in its middle."""
    log = tmp_path / "long.log"
    log.touch()
    body = f"""\
sources:
  long: {{file: "{log}"}}
rules:
  - name: first-word
    source: long
    match: '(?P<first>word)'
  - name: risky
    source: long
    match: '(?P<w>^(\\w+\\s?)+$)'
""" + "".join(
        f"  - name: lookbehind-{k}\n    source: long\n    match: '^(\\w+\\s?)+$(?<=z{k})'\n"
        for k in range(5)
    )
    async with Receiver() as rx:
        cfg = config_in(tmp_path, body, rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            # "…": no \w for Python, a high byte for the prefilter: candidates on which re
            # backtracks without end, so that every rule runs into its budgets
            assert agent.proc is not None
            pid = agent.proc.pid
            before = user_cpu_s(pid)
            append(log, *[("word " * 12_000).strip() + "\u2026" for _ in range(16)])
            # past 278 ticks (3.5 s of the agent's CPU) into the batch, before its end (~7 s)
            await eventually(
                lambda: user_cpu_s(pid) - before >= 3.6, within=60, what="3.6 s of matching"
            )
            started = time.monotonic()
            assert await agent.terminate(within=30) == 0
            assert time.monotonic() - started < 20  # the rest of that batch, then a clean exit
        finally:
            await agent.stop_quietly()
    assert not [line for line in agent.log if "BlockingIOError" in line], agent.log[-5:]


async def test_status_after_a_run_shows_positions_lag_last_match_deadlines_and_alerts(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    log, auth = tmp_path / "app.log", tmp_path / "auth.log"
    log.touch()
    auth.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log, auth=auth), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            append(log, "ERROR disk full")
            await rx.wait_for(1, within=10)
        finally:
            assert await agent.terminate() == 0
    out = subprocess.run(
        [sys.executable, "-m", "detector", "status", "-c", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    ).stdout
    src = next(line for line in out.splitlines() if str(log) in line)
    assert "offset" in src and "lag          0 B" in src
    rule = next(line for line in out.splitlines() if line.strip().startswith("app-errors"))
    assert "s ago" in rule  # last match
    assert "in " in rule  # the next deadline: the error alert resolves after 15 min
    assert "[warning] app-errors: app error: disk full" in out


async def test_after_a_kill_the_restart_alert_says_what_systemd_saw(tmp_path: Path) -> None:
    """ExecStopPost=detector note-stop stores $SERVICE_RESULT/$EXIT_CODE/$EXIT_STATUS; the next
    start's unclean-stop alert names them, with the downtime and the lines caught up."""
    import subprocess
    import sys

    log = tmp_path / "app.log"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, KILL_RULES.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            await agent.kill()
            append(log, "job=1 failed", "job=2 failed")  # written while it is down
            env = {"SERVICE_RESULT": "watchdog", "EXIT_CODE": "killed", "EXIT_STATUS": "ABRT"}
            done = subprocess.run(
                [sys.executable, "-m", "detector", "note-stop", "-c", str(cfg)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            agent = await AgentProcess(cfg).start()
            async with asyncio.timeout(20):
                while not [a for a in alerts_of(rx) if a["labels"]["rule"] == "detector-agent"]:
                    await asyncio.sleep(0.1)
        finally:
            await agent.terminate()
    [restart] = [a for a in alerts_of(rx) if a["labels"]["rule"] == "detector-agent"]
    summary = restart["annotations"]["summary"]
    assert summary.startswith(
        "restarted after an unclean stop (systemd: result 'watchdog', killed ABRT)"
    )
    assert ", down " in summary
    assert summary.endswith("caught up 2 lines")
    assert restart["labels"]["severity"] == "error"


async def test_a_clean_stop_is_not_reported_as_unclean(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, KILL_RULES.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        assert await agent.terminate() == 0
        agent = await AgentProcess(cfg).start()
        try:
            append(log, "job=9 failed")
            await rx.wait_for(1, within=15)  # the agent runs, and delivers
        finally:
            await agent.terminate()
    assert [a["labels"]["rule"] for a in alerts_of(rx)] == ["job-failed"]
