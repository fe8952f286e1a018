"""Waiting in tests without a fixed sleep: a condition polled up to a deadline, and what the
agent's state file (SQLite) says about how far a subprocess agent has got.

An in-process agent is waited for with ``Agent.wait_idle`` (see tests/test_service.py); an agent
in a subprocess (tests/agent_proc.py) with :func:`settled`: every given log read to its end and
committed (the read position in the state file is the file's size), and the outbox drained (no
row left pending). Only then may a test assert that something did *not* happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

POLL_S = 0.01


async def eventually(
    condition: Callable[[], bool],
    within: float = 10.0,
    what: str | Callable[[], str] = "",
    step: Callable[[], object] | None = None,
    every: float = POLL_S,
) -> None:
    """Until ``condition()`` holds, looking ``every`` seconds (``step()`` before each look: e.g.
    move a FakeClock); fails after ``within`` seconds saying ``what`` (a callable: called then).
    """
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {within} s: {said or condition}")
        if step is not None:
            step()
        await asyncio.sleep(every)


@contextlib.contextmanager
def _state(path: Path) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(path, timeout=5)
    try:
        yield con
    finally:
        con.close()


def query(state: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` in the state file (an empty list while it does not exist yet)."""
    if not state.exists():
        return []
    try:
        with _state(state) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # no such table: the agent is still creating it
        return []


def read_positions(state: Path) -> dict[str, int]:
    """Path → committed read offset, for every file of every file source."""
    out: dict[str, int] = {}
    for (value,) in query(state, "SELECT value FROM checkpoints"):
        cp = json.loads(value)
        if "path" in cp and "offset" in cp:
            out[cp["path"]] = cp["offset"]
    return out


def outbox_rows(state: Path, where: str = "1", *args: Any) -> list[tuple[Any, ...]]:
    """(id, state, attempts, payload) of the outbox rows matching ``where``."""
    return query(state, f"SELECT id, state, attempts, payload FROM outbox WHERE {where}", *args)


def is_settled(state: Path, logs: Iterable[Path]) -> bool:
    positions = read_positions(state)
    read = all(positions.get(str(log)) == log.stat().st_size for log in logs)
    return read and not outbox_rows(state, "state = 'pending'")


async def settled(state: Path, logs: Iterable[Path], within: float = 20.0) -> None:
    """Until every line of ``logs`` is read and committed, and every alert it raised delivered."""
    logs = list(logs)

    def progress() -> str:
        pending = len(outbox_rows(state, "state = 'pending'"))
        sizes = {str(p): p.stat().st_size for p in logs}
        return f"read {sizes}, drain the outbox: at {read_positions(state)}, {pending} pending"

    await eventually(lambda: is_settled(state, logs), within, progress)
