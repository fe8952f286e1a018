"""``detector silence`` against a running agent: both real subprocesses, a real receiver, the real
state file. A silenced alert is recorded and shown by ``detector status`` but not notified;
``silence expire`` sends its firing notification."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.agent_inproc import RULES
from tests.agent_proc import ROOT, AgentProcess, config_in
from tests.receiver import Receiver
from tests.waiting import eventually, query


async def detector(*args: str) -> subprocess.CompletedProcess[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "detector",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )
    out, err = await proc.communicate()
    return subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())


def append(path: Path, *lines: str) -> None:
    with path.open("a") as f:
        f.writelines(line + "\n" for line in lines)


def notified(rx: Receiver) -> list[tuple[str, str]]:
    return [(a["status"], a["labels"]["n"]) for b in rx.bodies() for a in b["alerts"]]


def muted(state: Path) -> dict[str, dict[str, object]]:
    out = {}
    for (value,) in query(state, "SELECT value FROM alerts WHERE rule='errors'"):
        row = json.loads(value)
        out[row["labels"]["n"]] = row
    return out


async def test_a_silence_added_while_the_agent_runs_mutes_until_it_is_expired(
    tmp_path: Path,
) -> None:
    log, state = tmp_path / "app.log", tmp_path / "state.db"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            added = await detector(
                "silence", "add", "-c", str(cfg), "--rule", "errors", "--match", "n=~1|2",
                "--for", "2h", "--comment", "disk swap", "--author", "ops",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            sid = added.stdout.split()[1]
            bad = await detector("silence", "add", "-c", str(cfg), "--match", "n~1", "--for", "1h")
            assert bad.returncode == 2 and "not a matcher" in bad.stderr
            # the agent picks the silence up without a reload
            await agent.wait_log(f"silences applied: 1 active {sid}")
            append(log, "ERROR 1", "ERROR 3")
            await rx.wait_until(lambda: ("firing", "3") in notified(rx), within=15)
            await eventually(lambda: "1" in muted(state), what="alert 1 recorded")
            row = muted(state)["1"]
            assert row["status"] == "firing" and row["owed"] == "firing"
            assert row["muted"]["by"] == f"silence {sid}"  # type: ignore[index]
            assert notified(rx) == [("firing", "3")]  # 1 is silenced, 3 is not matched

            status = await detector("status", "-c", str(cfg))
            [line] = [ln for ln in status.stdout.splitlines() if "silenced by" in ln] or [
                status.stdout
            ]
            assert f"silenced by silence {sid} until" in line and "(disk swap)" in line

            listed = await detector("silence", "list", "-c", str(cfg), "--format", "json")
            [entry] = json.loads(listed.stdout)
            assert entry["id"] == sid and entry["state"] == "active" and entry["author"] == "ops"
            assert entry["matchers"] == ["rule=errors", "n=~1|2"]

            expired = await detector("silence", "expire", sid, "-c", str(cfg))
            assert expired.returncode == 0, expired.stderr
            await agent.wait_log("silences applied: 0 active")
            await rx.wait_until(lambda: ("firing", "1") in notified(rx), within=15)
            await eventually(lambda: muted(state)["1"]["muted"] is None, what="unmuted")
            listed = await detector("silence", "list", "-c", str(cfg), "--format", "json")
            assert json.loads(listed.stdout)[0]["state"] == "expired"
            missing = await detector("silence", "expire", "nosuchid", "-c", str(cfg))
            assert missing.returncode == 1
        finally:
            assert await agent.terminate() == 0
    assert notified(rx) == [("firing", "3"), ("firing", "1")]
