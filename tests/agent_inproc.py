"""The agent in-process for tests: run it on a FakeClock, wait for conditions, read what the
receiver got. Real files, SQLite and receivers; only the clock is fake."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from detector.clock import FakeClock
from detector.service import Agent
from tests.receiver import Receiver

RULES = """\
sources:
  app: {{file: "{log}"}}
rules:
  - name: errors
    source: app
    match: 'ERROR (?P<n>\\d+)'
    group_by: [n]
    repeat: never
"""
"""The usual test rules.yaml body: one file source ``app`` at ``{log}``, one error rule whose
alerts are keyed by the number after ERROR."""


@contextlib.asynccontextmanager
async def running(cfg: Path, clock: FakeClock, **kw: Any) -> AsyncIterator[Agent]:
    agent = Agent(cfg, clock, **kw)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.request_stop()
        async with asyncio.timeout(20):
            assert await task == 0


async def until(
    cond: Callable[[], bool],
    clock: FakeClock | None = None,
    step: timedelta = timedelta(seconds=5),
    within: float = 15,
    what: str = "condition",
) -> None:
    """Wait for ``cond``; with ``clock``, move it on by ``step`` between looks."""
    try:
        async with asyncio.timeout(within):
            while not cond():
                if clock is not None:
                    clock.advance(step)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def agent_alerts(rx: Receiver) -> list[dict[str, Any]]:
    return [a for b in rx.bodies() for a in b["alerts"] if a["labels"]["rule"] == "detector-agent"]


def summaries(rx: Receiver) -> list[tuple[str, str]]:
    return [(a["status"], a["annotations"]["summary"]) for a in agent_alerts(rx)]


def rule_alerts(rx: Receiver) -> list[dict[str, Any]]:
    return [a for b in rx.bodies() for a in b["alerts"] if a["labels"]["rule"] == "errors"]
