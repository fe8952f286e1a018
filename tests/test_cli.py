"""The `detector` command: every subcommand, its --help, its exit codes and its output."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.cli import COMMANDS, build_parser, main
from detector.records import Commit, OutboxRow
from detector.store.db import Store
from tests.agent_proc import free_port, write_config
from tests.receiver import Receiver, Reply

ROOT = Path(__file__).resolve().parents[1]
DEMO_ENV = {"DETECTOR_LOG_DIR": "/nonexistent", "STATE_DIRECTORY": "/nonexistent"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "detector", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **DEMO_ENV, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: detector " + command in capsys.readouterr().out


def test_version_names_the_matching_engine() -> None:
    out = run("version")
    assert out.returncode == 0
    assert out.stdout.startswith("detector 0.")
    assert "matching engine:" in out.stdout


def test_check_accepts_the_bundled_rules_yaml() -> None:
    out = run("check", "-c", "rules.yaml")
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "ssh-bruteforce" in out.stdout


def test_check_rejects_a_broken_file_naming_line_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "version: 1\nsources:\n  a: {file: /x.log}\nrules:\n"
        "  - name: r\n    source: a\n    match: 'x'\n    severty: critical\n"
    )
    out = run("check", "-c", str(bad))
    assert out.returncode == 1
    assert f"{bad}:8:5" in out.stderr
    assert "severity" in out.stderr  # the did-you-mean hint


def test_test_command_replays_a_log_and_exits_1_when_alerts_would_fire() -> None:
    out = run("test", "-c", "rules.yaml", "--source", "app", "tests/samples/demo-annotated.log")
    assert out.returncode == 1, out.stderr
    # the ignore pattern drops the health-check error; billing and db are separate groups
    assert "app-errors" in out.stdout
    assert "FIRING   [error] billing: payment provider returned 502" in out.stdout
    assert "FIRING   [error] db: connection pool exhausted" in out.stdout
    assert "health-check" not in out.stdout.split("notifications:")[1]
    assert "2 alerts would have fired" in out.stdout
    # 15 minutes after the last error the alerts resolve, at the exact time
    assert "2026-11-25T10:15:04.000Z  RESOLVED" in out.stdout


def test_test_command_exits_0_on_a_clean_log(tmp_path: Path) -> None:
    log = tmp_path / "clean.log"
    log.write_text("2026-11-25T10:00:00Z INFO api: fine\n")
    out = run("test", "-c", "rules.yaml", "--source", "app", str(log))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 alerts would have fired" in out.stdout


def _state_with_data(path: Path) -> None:
    s = Store(path)
    now = datetime(2026, 11, 25, 10, tzinfo=UTC)
    s.commit(
        Commit(
            alerts={
                "fp1": {
                    "rule": "app-errors",
                    "status": "firing",
                    "severity": "error",
                    "summary": "billing broke",
                    "count": 3,
                    "first_seen_at": "2026-11-25T10:00:00.000Z",
                }
            },
            outbox=[OutboxRow("ops", "ev1", "fp1", "firing", {"summary": "billing broke"}, now)],
            meta={"last_alive_at": now.isoformat()},
        ),
        now,
    )
    s.close()


def test_status_shows_firing_alerts_and_the_outbox(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    _state_with_data(state)
    out = run("status", "-c", "rules.yaml", env={"STATE_DIRECTORY": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "[error] app-errors: billing broke (count 3" in out.stdout
    assert "ops" in out.stdout and "pending" in out.stdout
    js = run("status", "-c", "rules.yaml", "--json", env={"STATE_DIRECTORY": str(tmp_path)})
    assert '"last_alive_at"' in js.stdout


def test_status_without_a_state_file_says_so(tmp_path: Path) -> None:
    out = run("status", "-c", "rules.yaml", env={"STATE_DIRECTORY": str(tmp_path / "none")})
    assert out.returncode == 1
    assert "has not run yet" in out.stderr


def test_send_test_reports_the_receivers_answer(tmp_path: Path) -> None:
    async def scenario() -> tuple[subprocess.CompletedProcess[str], list[object]]:
        async with Receiver([Reply(200, "thanks")]) as rx:
            cfg = write_config(
                tmp_path / "r.yaml",
                "sources: {}\nrules: []\n",
                state=tmp_path / "s.db",
                url=rx.url + "/in",
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "detector",
                "send-test",
                "hook",
                "-c",
                str(cfg),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=str(ROOT),
            )
            out, err = await proc.communicate()
            done = subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())
            return done, rx.bodies()

    done, bodies = asyncio.run(scenario())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "200" in done.stdout and "thanks" in done.stdout
    assert bodies and bodies[0]["alerts"][0]["labels"]["rule"]  # type: ignore[index]


def test_send_test_to_a_dead_receiver_fails(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "r.yaml",
        "sources: {}\nrules: []\n",
        state=tmp_path / "s.db",
        url=f"http://127.0.0.1:{free_port()}/in",
    )
    out = run("send-test", "hook", "-c", str(cfg))
    assert out.returncode == 1
    assert "FAILED" in out.stdout


def test_parser_lists_every_command_in_its_help() -> None:
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_templates_lists_learned_kinds_and_marks_one_known(tmp_path: Path) -> None:
    from detector.config import load_config
    from detector.pipeline import Pipeline
    from detector.rules.base import When
    from detector.sources.base import Batch, Line

    state = tmp_path / "state.db"
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        f"version: 1\nagent: {{state: {state}}}\nsources: {{app: {{file: {tmp_path}/a.log}}}}\n"
        "webhooks: {h: {url: 'http://127.0.0.1:9/x'}}\n"
        "rules:\n  - {name: new-kinds, source: app, anomaly: {type: new, learn_lines: 3}}\n"
    )
    config = load_config(cfg)
    now = datetime(2026, 11, 25, 10, tzinfo=UTC)
    texts = [
        "connection from 10.0.0.1 accepted",
        "connection from 10.0.0.2 accepted",
        "connection from 10.0.0.3 accepted",
        "disk /dev/sda1 is 97% full",
    ]
    pipeline = Pipeline(config, now, lambda r: {})
    commit = pipeline.process(
        Batch("app", [Line("app", t) for t in texts]), lambda _l: When.exact(now), now
    )
    assert [o.payload["notification"] for o in commit.outbox] == ["firing"]  # the disk line
    store = Store(state)
    store.commit(commit, now)
    store.close()

    out = run("templates", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "rule new-kinds: 2 templates" in out.stdout
    listed = [ln for ln in out.stdout.splitlines() if "connection from" in ln]
    assert listed and " 3 " in listed[0]
    disk = next(ln for ln in out.stdout.splitlines() if "disk" in ln)
    template_id = disk.split()[0]

    marked = run("templates", "-c", str(cfg), "--known", template_id)
    assert marked.returncode == 0, marked.stderr
    again = run("templates", "-c", str(cfg))
    disk = next(ln for ln in again.stdout.splitlines() if "disk" in ln)
    assert " K" in disk
    assert run("templates", "-c", str(cfg), "--known", "no-such-id").returncode == 1
