"""``detector reload``: systemd's ExecReload, a reload whose exit status tells the truth.

Beside the agent, not in its flow: it validates rules.yaml with the same loader the agent uses
(an invalid file is printed and nothing is signalled), reads the agent's last reload answer from
the state file (meta ``reload``, written by ``Agent._reload`` after every attempt, its ``seq`` one
higher each time), sends SIGHUP to the agent and polls the state file every 100 ms until a newer
answer appears: exit 0 once the agent runs the new configuration, 1 with the agent's error if it
refused it, 2 if the file is invalid, the agent is gone or did not answer within ``--timeout``.
Errors go through :func:`detector.logs.print_error`, so under systemd they are one journal entry
at priority err.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from detector.cli_support import CommandError
from detector.logs import print_error

POLL_S = 0.1


def read_answer(state: Path) -> dict[str, Any] | None:
    """The agent's last reload answer in the state file (read-only; None if it never reloaded)."""
    try:
        conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as e:
        raise CommandError(f"cannot read the state file {state}: {e}", 2) from e
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='reload'").fetchone()
    except sqlite3.Error as e:
        raise CommandError(f"cannot read the state file {state}: {e}", 2) from e
    finally:
        conn.close()
    if row is None:
        return None
    value = json.loads(row[0])
    return value if isinstance(value, dict) else None


def _seq(answer: dict[str, Any] | None) -> int:
    return int(answer.get("seq", 0)) if answer else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _agent_pid(args: argparse.Namespace) -> int:
    if args.pid is not None:
        return int(args.pid)
    main_pid = os.environ.get("MAINPID", "")
    if main_pid.isdigit() and int(main_pid) > 0:
        return int(main_pid)
    raise CommandError("no agent to reload: pass --pid PID (systemd's ExecReload sets $MAINPID)", 2)


def reload_main(args: argparse.Namespace) -> int:
    from detector.config import ConfigError, load_config  # noqa: PLC0415 - keep --help fast

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print_error(f"reload refused, the running configuration stays in force:\n{e}")
        return 2  # a config error, as for every command
    except OSError as e:
        print_error(f"reload refused: {args.config}: cannot read: {e.strerror}")
        return 2
    pid = _agent_pid(args)
    state = config.agent.state
    if not state.exists():
        raise CommandError(f"no state file at {state}: is the agent running with {args.config}?", 2)
    before = _seq(read_answer(state))
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CommandError(f"no agent to reload: process {pid} does not exist", 2) from None
    except PermissionError:
        raise CommandError(f"cannot signal process {pid}: permission denied", 2) from None
    deadline = time.monotonic() + args.timeout
    while True:
        answer = read_answer(state)
        if _seq(answer) > before and answer is not None:
            break
        if not _alive(pid):
            raise CommandError(f"the agent (process {pid}) exited before answering the reload", 2)
        if time.monotonic() > deadline:
            raise CommandError(
                f"the agent (process {pid}) did not answer the reload within {args.timeout:g} s "
                f"(no new reload record in {state})",
                2,
            )
        time.sleep(POLL_S)  # polling the state file: the CLI has no other channel to the agent
    if not answer.get("ok"):
        print_error(
            f"the agent refused the reload, the running configuration stays in force:\n"
            f"{answer.get('error') or '(no reason given)'}"
        )
        return 1
    print(
        f"{args.config}: reloaded by process {pid} — {len(config.sources)} sources, "
        f"{len(config.rules)} rules, {len(config.webhooks)} webhooks"
    )
    return 0
