"""The agent as a real subprocess (``python -m detector run``), for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, body: str, *, state: Path, url: str, extra_agent: str = "") -> Path:
    """A rules.yaml with one json webhook ``hook`` at ``url`` and the state file at ``state``."""
    text = textwrap.dedent(
        f"""\
        version: 1
        agent:
          state: {state}
          host: e2e
        """
    )
    if extra_agent:
        text += textwrap.indent(textwrap.dedent(extra_agent), "  ")
    text += textwrap.dedent(
        f"""\
        webhooks:
          hook: {{url: "{url}", format: json}}
        """
    )
    text += textwrap.dedent(body)
    path.write_text(text)
    return path


def config_in(tmp_path: Path, body: str, url: str, extra_agent: str = "") -> Path:
    """``tmp_path/rules.yaml`` with the state file beside it (the usual test set-up)."""
    return write_config(
        tmp_path / "rules.yaml", body, state=tmp_path / "state.db", url=url, extra_agent=extra_agent
    )


class AgentProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def start(self, wait_ready: bool = True) -> AgentProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "detector",
            "run",
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=str(ROOT),
        )
        self._reader = asyncio.create_task(self._read())
        if wait_ready:
            await self.wait_log("deadlines are live")
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                break
            async with self._changed:
                self.log.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()

    async def wait_log(self, text: str, within: float = 20.0, count: int = 1) -> None:
        def seen() -> bool:
            return sum(text in line for line in self.log) >= count

        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(seen)
        except TimeoutError:
            raise AssertionError(
                f"agent never logged {text!r}; its log:\n" + "\n".join(self.log[-40:])
            ) from None

    async def terminate(self, within: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(within):
            rc = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return rc

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.kill()
