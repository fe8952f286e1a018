"""How runs of the agent begin and end in the state file.

Part of the store, read and written by the agent at start-up and shutdown: opening the file under
the agent's lock (one agent per state file: ``state.db.lock`` beside it, holding the PID; a second
agent is refused), where a file SQLite cannot read, an empty one or one without the schema is
moved aside and rebuilt, and the caller is told; the ``agent_run``
meta record (written at start; ``stopped_at`` added only by a clean stop, so a start that finds
it missing knows the last run died: SIGKILL, OOM, watchdog, power loss), the ``systemd_stop``
record that ``detector note-stop`` (the unit's ExecStopPost) leaves with systemd's reason, and
``last_alive_at`` (how long the agent was down). :class:`PreviousRun` is what a start learns.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from detector.store import outbox
from detector.store.db import Store, StoreCorrupt, StoreError, explain
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


class StateLocked(Exception):
    """Another agent runs on this state file. Not a :class:`StoreError` (which the agent waits
    out, degraded): two agents on one file is a configuration error, and the agent exits 2."""


def lock_path(state: Path) -> Path:
    return state.with_name(f"{state.name}.lock")


def lock_state(state: Path) -> Callable[[], None]:
    """Take the agent's exclusive lock on ``state``: ``flock`` on the sidecar ``state.db.lock``
    (not the database, whose POSIX locks SQLite owns and drops when any descriptor of the file is
    closed; a sidecar also outlives the move-aside of a corrupt file). The kernel releases it
    when the process dies, so a SIGKILLed agent never blocks the next. The holder's PID is written
    into the file for the refusal's message. Returns the release. Commands that write the state
    file (``outbox retry``, ``templates --known``, ``note-stop``) never take it: SQLite's own
    locking orders their writes beside the agent's."""
    path = lock_path(state)
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        why = explain(state)
        raise StoreError(f"cannot open the lock file {path}: {e.strerror or e}{why}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StateLocked(
            f"state file {state} is in use by another detector agent (PID "
            f"{holder if holder.isdigit() else 'unknown'}, lock {path}): run one agent per state "
            "file, or give this one its own agent.state"
        ) from None
    except OSError as e:
        os.close(fd)
        raise StoreError(f"cannot lock {path}: {e.strerror or e}") from e
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the lock holds without the PID (a full disk); the refusal then says 'unknown'
    return lambda: os.close(fd)


def open_store(path: Path, now: datetime) -> tuple[Store, str | None]:
    """Take the agent's lock (:func:`lock_state`; :class:`StateLocked` if another agent holds
    it), then open the state file. A file SQLite cannot read as a database, an empty one and one
    without the schema are moved aside and a new one is created; the returned message says so (it
    becomes an agent alert). Other errors (read-only, disk full) are raised: moving a good file
    aside would lose state. The lock is released when the store is closed (or the process ends)."""
    release = lock_state(path)
    try:
        store, message = _open(path, now)
    except BaseException:
        release()
        raise
    store.on_close.append(release)
    return store, message


def _open(path: Path, now: datetime) -> tuple[Store, str | None]:
    try:
        return Store(path), None
    except OSError as e:
        raise StoreError(f"cannot open state file {path}: {e}") from e
    except StoreError as e:
        text = str(e).lower()
        corrupt = isinstance(e, StoreCorrupt) or "not a database" in text or "malformed" in text
        if not corrupt:
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


def all_rule_state(store: Store) -> dict[str, Mapping[str, Any]]:
    return {rule: store.load_rule_state(rule) for rule in store.rules_with_state()}


def pruner(before: datetime) -> Callable[[Store], int]:
    return lambda store: outbox.prune(store, before)
