"""The flow README shows: `detector discover --write rules.d/discovered.yaml` beside a rules.yaml
with `include: [rules.d/*.yaml]` → `detector check` passes and lists the file → the running agent
(in-process, on a FakeClock; its file watch on real time) reloads when a later discover run
rewrites it, and a user's edit is never overwritten (the proposal goes to discovered.yaml.new,
which the glob does not load). Real files: the schedule is learned from a cron log in tmp."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from detector.cli import main
from detector.clock import FakeClock
from detector.config import load_config
from tests.agent_inproc import running, until
from tests.agent_proc import write_config
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
MAIN = "include: [rules.d/*.yaml]\nrules: []\n"


def cron_lines(command: str, days: range, at: str) -> str:
    return "".join(
        f"2026-11-{d:02}T{at}Z host CRON[{100 + d}]: (root) CMD ({command})\n" for d in days
    )


def discover_write(root: Path, log: Path, target: Path) -> int:
    argv = ["discover", "--root", str(root), "--timezone", "UTC", "--logs", str(log)]
    return main([*argv, "--write", str(target)])


def test_check_lists_the_discovered_file_beside_the_bundled_rules_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    log = tmp_path / "cron.log"
    log.write_text(cron_lines("/usr/local/bin/backup.sh", range(1, 8), "02:30:04"))
    bundled = tmp_path / "etc" / "rules.yaml"
    bundled.parent.mkdir()
    bundled.write_text((ROOT / "rules.yaml").read_text())
    target = bundled.parent / "rules.d" / "discovered.yaml"
    assert discover_write(root, log, target) == 0
    # an included file may not say version: (the main file does): discover writes none
    assert set(yaml.safe_load(target.read_text())) == {"sources", "rules"}
    capsys.readouterr()
    env = ["--env-file", "/dev/null"]
    assert main(["check", "-c", str(bundled), *env]) == 0
    out = capsys.readouterr().out
    assert f"  read {target} (include rules.d/*.yaml)" in out.splitlines()
    config = load_config(bundled, {})
    assert "log-cron-root-usr-local-bin-backup-sh" in {r.name for r in config.rules}


async def test_the_agent_reloads_when_discover_rewrites_the_file_and_an_edit_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    log = tmp_path / "cron.log"
    log.write_text(cron_lines("/usr/local/bin/backup.sh", range(1, 8), "02:30:04"))
    target = tmp_path / "rules.d" / "discovered.yaml"
    assert discover_write(root, log, target) == 0
    async with Receiver() as rx:
        cfg = write_config(tmp_path / "rules.yaml", MAIN, state=tmp_path / "s.db", url=rx.url)
        assert main(["check", "-c", str(cfg), "--env-file", "/dev/null"]) == 0
        clock = FakeClock(T0)
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            assert agent.config.files == (str(cfg), str(target))
            first = {r.name for r in agent.config.rules}
            assert first == {"log-cron-root-usr-local-bin-backup-sh"}

            def reloads() -> float:
                return agent.health.value("config_reloads", result="ok")

            # a new job in the logs: the next discover run rewrites the (unedited) file
            with log.open("a") as f:
                f.write(cron_lines("/usr/local/bin/report", range(1, 8), "06:00:01"))
            assert discover_write(root, log, target) == 0
            assert "written" in capsys.readouterr().err
            await until(lambda: reloads() >= 1, within=20, what="the reload of the rewrite")
            names = {r.name for r in agent.config.rules}
            assert names == first | {"log-cron-root-usr-local-bin-report"}

            # the user edits it (the agent reloads the edit); discover leaves it alone
            edited = re.sub(r"within: \w+", "within: 25m", target.read_text(), count=1)
            assert edited != target.read_text()
            target.write_text(edited)
            await until(lambda: reloads() >= 2, within=20, what="the reload of the edit")
            with log.open("a") as f:
                f.write(cron_lines("/usr/local/bin/sync", range(1, 8), "07:00:01"))
            assert discover_write(root, log, target) == 1
            assert "was edited" in capsys.readouterr().err
            assert target.read_text() == edited
            proposal = target.with_name("discovered.yaml.new")
            assert "log-cron-root-usr-local-bin-sync" in proposal.read_text()
            # discovered.yaml.new is not *.yaml: the glob does not load it
            assert load_config(cfg, {}).files == (str(cfg), str(target))
            assert {r.name for r in agent.config.rules} == names
            assert any(
                r.window and r.window.within == timedelta(minutes=25) for r in agent.config.rules
            )
