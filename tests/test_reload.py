"""``detector reload`` against the real agent as a subprocess: exit 0 only once the new rules run.

The agent answers every reload in its state file (meta ``reload``); the command validates the
file, sends SIGHUP and waits for that answer. Proof that the new rules run: a line matching a
rule that only the new file has produces an alert at a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from detector.reload_cli import read_answer
from detector.store.db import Store
from tests.agent_proc import ROOT, AgentProcess, config_in
from tests.receiver import Receiver

pytestmark = pytest.mark.slow

OLD = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: old-rule
    source: app
    match: 'OLD (?P<what>.*)'
    repeat: never
"""

NEW = (
    OLD
    + """\
  - name: new-rule
    source: app
    match: 'NEW (?P<what>.*)'
    repeat: never
"""
)


def append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


async def reload(
    config: Path, pid: int, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "detector",
        "reload",
        "-c",
        str(config),
        "--pid",
        str(pid),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=str(ROOT),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def alert_of(rx: Receiver, rule: str, within: float = 15.0) -> dict[str, Any]:
    """The first alert of ``rule`` the receiver got (waiting for more requests until then)."""
    async with asyncio.timeout(within):
        while True:
            for body in rx.bodies():
                for alert in body["alerts"]:
                    if alert["labels"].get("rule") == rule:
                        return dict(alert)
            await rx.wait_for(len(rx.received) + 1, within)


def rules_of(rx: Receiver) -> set[str]:
    return {a["labels"].get("rule") for b in rx.bodies() for a in b["alerts"]}


async def test_reload_of_a_valid_file_exits_zero_once_the_new_rule_runs(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, OLD.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            assert agent.proc is not None
            config_in(tmp_path, NEW.format(log=log), rx.url + "/hook")
            rc, out, err = await reload(cfg, agent.proc.pid)
            assert (rc, err) == (0, "")
            assert "reloaded by process" in out and "2 rules" in out
            append(log, "NEW thing happened")
            alert = await alert_of(rx, "new-rule")
            assert alert["annotations"]["summary"]
            answer = read_answer(tmp_path / "state.db")
            assert answer is not None
            assert answer["ok"] is True and answer["error"] is None and answer["seq"] >= 1
        finally:
            assert await agent.terminate() == 0


async def test_reload_of_an_invalid_file_fails_with_its_error_and_the_old_rules_stay(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, OLD.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            assert agent.proc is not None
            broken = NEW.format(log=log).replace("match: 'NEW", "mach: 'NEW")
            config_in(tmp_path, broken, rx.url + "/hook")
            rc, out, err = await reload(cfg, agent.proc.pid)
            assert rc == 2  # a config error
            assert out == ""
            assert "reload refused, the running configuration stays in force" in err
            assert "mach" in err  # the file's own error, where it is
            append(log, "NEW not a rule any more")
            append(log, "OLD still watched")
            await alert_of(rx, "old-rule")  # the NEW line before it was read by then
            assert "new-rule" not in rules_of(rx)
        finally:
            assert await agent.terminate() == 0


async def test_reload_the_agent_refuses_fails_with_the_agents_error(tmp_path: Path) -> None:
    """The file is valid where `detector reload` runs but not in the agent's environment (an
    EnvironmentFile edited without a restart): the agent's refusal is the answer."""
    log = tmp_path / "app.log"
    log.touch()
    async with Receiver() as rx:
        cfg = config_in(tmp_path, OLD.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            assert agent.proc is not None
            needs_env = NEW.format(log=log) + '    owner: "${DT_RELOAD_OWNER}"\n'
            config_in(tmp_path, needs_env, rx.url + "/hook")
            rc, out, err = await reload(cfg, agent.proc.pid, env={"DT_RELOAD_OWNER": "ops"})
            assert rc == 1, (out, err)
            assert "the agent refused the reload" in err
            assert "DT_RELOAD_OWNER" in err
            append(log, "NEW ignored")
            append(log, "OLD still in force")
            await alert_of(rx, "old-rule")
            assert "new-rule" not in rules_of(rx)
            answer = read_answer(tmp_path / "state.db")
            assert answer is not None
            assert answer["ok"] is False and "DT_RELOAD_OWNER" in answer["error"]
        finally:
            assert await agent.terminate() == 0


async def test_reload_without_an_answer_times_out_and_a_missing_agent_is_an_error(
    tmp_path: Path,
) -> None:
    cfg = config_in(tmp_path, OLD.format(log=tmp_path / "app.log"), "http://127.0.0.1:9/hook")
    Store(tmp_path / "state.db").close()  # a state file, but no agent writes to it
    deaf = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); print('ok', "
        "flush=True); sys.stdin.read()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert deaf.stdout is not None
        assert await deaf.stdout.readline() == b"ok\n"  # SIGHUP is ignored from here on
        rc, _, err = await reload(cfg, deaf.pid, "--timeout", "0.5")
        assert rc == 2
        assert f"(process {deaf.pid}) did not answer the reload within 0.5 s" in err
    finally:
        deaf.send_signal(signal.SIGTERM)
        await deaf.wait()
    rc, _, err = await reload(cfg, deaf.pid)
    assert rc == 2
    assert f"process {deaf.pid} does not exist" in err
