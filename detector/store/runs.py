"""How runs of the agent begin and end in the state file.

Part of the store, read and written by the agent at start-up and shutdown: opening the file (one
that SQLite cannot read is moved aside and rebuilt, and the caller is told), the ``agent_run``
meta record (written at start; ``stopped_at`` added only by a clean stop, so a start that finds
it missing knows the last run died: SIGKILL, OOM, watchdog, power loss), the ``systemd_stop``
record that ``detector note-stop`` (the unit's ExecStopPost) leaves with systemd's reason, and
``last_alive_at`` (how long the agent was down). :class:`PreviousRun` is what a start learns.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from detector.store import outbox
from detector.store.db import Store, StoreError
from detector.timefmt import format_duration, parse_iso_or_none


@dataclass(frozen=True)
class PreviousRun:
    """How the last run of the agent on this state file ended (from its meta records)."""

    unclean: bool
    last_alive_at: datetime | None
    systemd: Mapping[str, Any] | None = None

    @staticmethod
    def from_meta(
        run: Mapping[str, Any] | None,
        last_alive: str | None,
        systemd_stop: Mapping[str, Any] | None,
    ) -> PreviousRun:
        """``run`` is the ``agent_run`` meta (``stopped_at`` is written by a clean stop only);
        state files older than that record are taken as clean."""
        alive = parse_iso_or_none(last_alive)
        unclean = run is not None and not run.get("stopped_at")
        if systemd_stop and run and str(systemd_stop.get("at", "")) < str(run.get("started_at")):
            systemd_stop = None  # about an earlier run
        return PreviousRun(unclean, alive, systemd_stop)

    def describe(self, now: datetime, lines: int) -> str:
        down = ""
        if self.last_alive_at is not None:
            down = f", down {format_duration(now - self.last_alive_at)}"
        why = ""
        if self.systemd:
            result = self.systemd.get("result") or "?"
            code, status = self.systemd.get("exit_code"), self.systemd.get("exit_status")
            detail = f", {code} {status}" if code else ""
            why = f" (systemd: result '{result}'{detail})"
        return f"restarted after an unclean stop{why}{down}, caught up {lines} lines"


def open_store(path: Path, now: datetime) -> tuple[Store, str | None]:
    """Open the state file. A file SQLite cannot read as a database is moved aside and a new one
    is created; the returned message says so (it becomes an agent alert). Other errors (locked,
    read-only, disk full) are raised: moving a good file aside would lose state."""
    try:
        return Store(path), None
    except OSError as e:
        raise StoreError(f"cannot open state file {path}: {e}") from e
    except StoreError as e:
        text = str(e).lower()
        if "not a database" not in text and "malformed" not in text:
            raise
        aside = path.with_name(f"{path.name}.corrupt-{now.strftime('%Y%m%dT%H%M%SZ')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        return Store(path), (
            f"state file {path} was unreadable ({e}); moved aside to {aside} and started afresh: "
            "read positions restart per start_at and open alerts were forgotten"
        )


def begin_run(store: Store, now: datetime) -> PreviousRun:
    """Read how the last run ended, and mark this one as running (the first write, so a state
    file that cannot take one is found before READY=1)."""
    prior = PreviousRun.from_meta(
        store.get_meta("agent_run"), store.get_meta("last_alive_at"), store.get_meta("systemd_stop")
    )
    store.set_meta({"agent_run": {"started_at": now.isoformat(), "pid": os.getpid()}})
    return prior


def end_run(started_at: datetime, now: datetime) -> dict[str, Any]:
    """The ``agent_run`` record a clean stop writes."""
    return {"started_at": started_at.isoformat(), "pid": os.getpid(), "stopped_at": now.isoformat()}


def all_rule_state(store: Store) -> dict[str, dict[str, Any]]:
    return {rule: store.load_rule_state(rule) for rule in store.rules_with_state()}


def pruner(before: datetime) -> Callable[[Store], int]:
    return lambda store: outbox.prune(store, before)
