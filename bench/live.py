"""Shared by the end-to-end benchmarks: a local webhook receiver and the agent as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]


async def start_receiver(
    handle: Callable[[web.Request], Awaitable[web.Response]],
) -> tuple[web.AppRunner, int]:
    """POST /hook on 127.0.0.1, a free port; returns the runner (clean it up) and the port."""
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def start_agent(
    config: Path, code: Path = ROOT
) -> tuple[asyncio.subprocess.Process, asyncio.Task[bytes]]:
    """``detector run -c config``, returned once its deadlines are live, with a task draining its
    log (cancel it after the agent exits). ``code``: the checkout whose ``detector`` package runs
    (another commit's, to compare; ``python -m`` puts the working directory first on the path)."""
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "detector",
        "run",
        "-c",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        cwd=str(code),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert agent.stderr is not None
    while b"deadlines are live" not in await agent.stderr.readline():
        pass
    return agent, asyncio.create_task(agent.stderr.read())
