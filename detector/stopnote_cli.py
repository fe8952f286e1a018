"""``detector note-stop``: systemd's ExecStopPost, which writes down why the agent stopped.

Beside the agent, not in its flow. systemd tells ``ExecStopPost=`` commands how the main process
ended (``$SERVICE_RESULT``: success, exit-code, signal, core-dump, watchdog, timeout, oom-kill…;
``$EXIT_CODE``: exited, killed, dumped; ``$EXIT_STATUS``: the status or the signal's name). This
command stores them in the state file as the meta record ``systemd_stop``; the next start of the
agent reads it, and its "restarted after an unclean stop" alert says what systemd saw ("result
'watchdog', killed ABRT"). It never fails the unit: a missing or unreadable state file, or a
config that does not load, is a message and exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from detector.records import default_state_path


def note_stop_main(args: argparse.Namespace) -> int:
    state = _state_path(args)
    if not state.exists():
        print(f"note-stop: no state file at {state}; nothing to note", file=sys.stderr)
        return 0
    record = {
        "result": os.environ.get("SERVICE_RESULT"),
        "exit_code": os.environ.get("EXIT_CODE"),
        "exit_status": os.environ.get("EXIT_STATUS"),
        "at": datetime.now(UTC).isoformat(),
    }
    from detector.store.db import Store, StoreError  # noqa: PLC0415

    try:
        store = Store(state)
        try:
            store.set_meta({"systemd_stop": record})
        finally:
            store.close()
    except StoreError as e:
        print(f"note-stop: {e}", file=sys.stderr)
        return 0
    return 0


def _state_path(args: argparse.Namespace) -> Path:
    if args.state:
        return Path(args.state)
    from detector.config import ConfigError, load_config  # noqa: PLC0415

    try:
        return load_config(args.config).agent.state
    except (ConfigError, OSError):
        return default_state_path()
