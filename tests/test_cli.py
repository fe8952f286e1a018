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
    assert out.returncode == 2
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
    # what happened follows the rule's own summary
    resolved = (
        "RESOLVED [error] billing: payment provider returned 502 — quiet for 15m after 2 matches"
    )
    assert resolved in out.stdout


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
    assert out.returncode == 2
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
    assert run("templates", "-c", str(cfg), "--known", "no-such-id").returncode == 2


# --- exit codes: 0 ok, 1 findings, 2 usage or config error (README, "Exit codes") ---------------

# every command that reads rules.yaml, with the arguments it needs besides -c
CONFIG_COMMANDS: dict[str, list[str]] = {
    "check": [],
    "test": ["tests/samples/demo-annotated.log"],
    "status": [],
    "send-test": ["hook"],
    "silence": ["list"],
    "templates": [],
}


@pytest.mark.parametrize("command", [*sorted(CONFIG_COMMANDS), "run"])
def test_every_command_exits_2_on_an_invalid_rules_yaml(command: str, tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: 1\nrules: [\n")
    out = run(command, "-c", str(bad), *CONFIG_COMMANDS.get(command, []))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{bad}:3:1: YAML syntax error" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", [*sorted(CONFIG_COMMANDS), "run"])
def test_every_command_exits_2_on_an_unreadable_rules_yaml(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    out = run(command, "-c", str(missing), *CONFIG_COMMANDS.get(command, []))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{missing}: cannot read: No such file or directory" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_exits_2_on_a_bad_argument(command: str) -> None:
    out = run(command, *CONFIG_COMMANDS.get(command, []), "--no-such-option")
    assert out.returncode == 2
    assert "unrecognized arguments: --no-such-option" in out.stderr


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_every_command_exits_2_on_a_missing_env_file(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    out = run(command, "-c", "rules.yaml", "--env-file", str(missing), *CONFIG_COMMANDS[command])
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"--env-file {missing}: cannot read: No such file or directory" in out.stderr


def test_check_exits_0_on_a_valid_file_even_with_warnings(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        "version: 1\nsources: {app: {file: /x.log}}\nrules:\n  - {name: r, source: app, match: x}\n"
    )
    out = run("check", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "warning: " in out.stdout  # no webhooks: a warning, not a finding


def test_test_command_exits_2_on_a_missing_log_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.log"
    out = run("test", "-c", "rules.yaml", str(missing))
    assert out.returncode == 2
    assert f"{missing}: cannot read: No such file or directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_send_test_exits_2_on_an_unknown_webhook() -> None:
    out = run("send-test", "no-such-hook", "-c", "rules.yaml")
    assert out.returncode == 2
    assert "no webhook named 'no-such-hook' (have: ops)" in out.stderr


def test_templates_exits_2_on_an_unknown_rule(tmp_path: Path) -> None:
    _state_with_data(tmp_path / "state.db")
    out = run(
        "templates", "-c", "rules.yaml", "--rule", "nope", env={"STATE_DIRECTORY": str(tmp_path)}
    )
    assert out.returncode == 2
    assert "no `anomaly: new` rule named 'nope'" in out.stderr


def test_readme_documents_the_exit_codes() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ("`0`", "`1`", "`2`", "`3`", "`130`", "`141`"):
        assert code in section, code


# --- --env-file: the unit's EnvironmentFile=, for the ${VAR}s of rules.yaml -------------------

SECRET = "DETECTOR_TEST_HOOK_URL"


def _secret_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        f"version: 1\nagent: {{state: {tmp_path}/s.db, host: h}}\n"
        f"webhooks: {{hook: {{url: '${{{SECRET}}}', format: json}}}}\nsources: {{}}\nrules: []\n"
    )
    return cfg


def test_check_sees_the_secrets_of_the_env_file_only_when_given(tmp_path: Path) -> None:
    cfg = _secret_config(tmp_path)
    env_file = tmp_path / "detector.env"
    env_file.write_text(f'# as systemd reads it\n{SECRET}="http://127.0.0.1:9/hook"\n')
    without = run("check", "-c", str(cfg))
    assert without.returncode == 2
    assert f"environment variable {SECRET} is not set" in without.stderr
    out = run("check", "-c", str(cfg), "--env-file", str(env_file))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_check_warns_about_an_export_line_systemd_would_ignore(tmp_path: Path) -> None:
    cfg = _secret_config(tmp_path)
    env_file = tmp_path / "detector.env"
    env_file.write_text(f"export {SECRET}=http://127.0.0.1:9/hook\n")
    out = run("check", "-c", str(cfg), "--env-file", str(env_file))
    assert out.returncode == 2
    assert f"{env_file}:1: 'export {SECRET}' is not a variable name, line ignored" in out.stderr
    assert f"environment variable {SECRET} is not set" in out.stderr


def test_send_test_posts_to_the_url_of_the_env_file_over_the_environment(tmp_path: Path) -> None:
    import os

    cfg = _secret_config(tmp_path)

    async def scenario() -> tuple[subprocess.CompletedProcess[str], list[object]]:
        async with Receiver([Reply(200, "thanks")]) as rx:
            env_file = tmp_path / "detector.env"
            env_file.write_text(f"; the secret\n{SECRET} = '{rx.url}/in'\n")
            dead = f"http://127.0.0.1:{free_port()}/in"
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "detector", "send-test", "hook", "-c", str(cfg)],
                *["--env-file", str(env_file)],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=str(ROOT),
                env={**os.environ, SECRET: dead},
            )
            out, err = await proc.communicate()
            done = subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())
            return done, rx.bodies()

    done, bodies = asyncio.run(scenario())
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(bodies) == 1


def test_the_default_env_file_is_read_when_it_is_there(tmp_path: Path) -> None:
    import os

    from detector.cli_support import config_env

    default = tmp_path / "detector.env"
    assert config_env(None, default) is os.environ
    default.write_text(f"{SECRET}=from-the-file\n")
    env = config_env(None, default)
    assert env[SECRET] == "from-the-file"
    assert env["PATH"] == os.environ["PATH"]
    assert SECRET not in os.environ  # only the config's interpolation sees it


def test_an_explicit_env_file_wins_over_the_default(tmp_path: Path) -> None:
    from detector.cli_support import config_env

    default, explicit = tmp_path / "default.env", tmp_path / "explicit.env"
    default.write_text(f"{SECRET}=default\n")
    explicit.write_text(f"{SECRET}=explicit\n")
    assert config_env(str(explicit), default)[SECRET] == "explicit"


# --- a closed pipe (`detector check | head -1`) ends every command quietly ---------------------


def test_check_piped_into_head_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    import os
    import shlex

    big = tmp_path / "rules.yaml"
    rules = "".join(
        f"  - {{name: rule-{i:04d}-{'x' * 400}, source: app, match: 'error {i}'}}\n"
        for i in range(400)
    )  # about 400 kB of output: more than head reads and the pipe holds
    big.write_text(f"version: 1\nsources: {{app: {{file: {tmp_path}/a.log}}}}\nrules:\n{rules}")
    command = (
        f"{shlex.quote(sys.executable)} -m detector check -c {shlex.quote(str(big))} | head -1"
    )
    out = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **DEMO_ENV},
        timeout=60,
        check=False,
    )
    assert out.stdout == f"{big}: OK — 1 sources, 400 rules, 0 webhooks\n"
    assert out.stderr == ""
    assert out.returncode == 141  # detector's own code, 128 + SIGPIPE


def run_into_closed_pipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run detector with its stdout a pipe whose reader is already gone: every write fails."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "detector", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **DEMO_ENV, **env},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ["version"],
        ["check", "-c", "rules.yaml"],
        ["test", "-c", "rules.yaml", "--source", "app", "tests/samples/demo-annotated.log"],
        ["status", "-c", "rules.yaml"],
        ["templates", "-c", "rules.yaml"],
        ["send-test", "ops", "-c", "rules.yaml"],
    ],
    ids=" ".join,
)
def test_every_command_ends_quietly_when_its_reader_is_gone(
    args: list[str], tmp_path: Path
) -> None:
    _state_with_data(tmp_path / "state.db")
    hook = f"http://127.0.0.1:{free_port()}/in"  # send-test: nobody answers, it still prints
    out = run_into_closed_pipe(
        *args, env={"STATE_DIRECTORY": str(tmp_path), "DETECTOR_WEBHOOK_URL": hook}
    )
    assert "Traceback" not in out.stderr
    assert "BrokenPipeError" not in out.stderr
    assert out.returncode == 141, out.stderr


def test_help_into_a_closed_pipe_ends_quietly() -> None:
    out = run_into_closed_pipe("check", "--help", env={})
    assert out.stderr == ""
    assert out.returncode == 0  # argparse itself drops a failed write of the help


def test_check_lists_each_source_with_its_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        "version: 1\nsources:\n"
        "  app: {file: /var/log/app.log*, exclude: ['*.gz'], rotated: /var/log/old/app.log-*}\n"
        "  plain: {file: /var/log/plain.log}\n"
        "  sys: {journald: {units: [ssh.service, cron.service]}}\n"
        "rules:\n  - {name: r, source: app, match: x}\n"
    )
    out = run("check", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert (
        "  source app: file /var/log/app.log* (exclude: *.gz; rotated: /var/log/old/app.log-*)"
        in lines
    )
    assert "  source plain: file /var/log/plain.log" in lines
    assert "  source sys: journald (units: ssh.service, cron.service)" in lines
