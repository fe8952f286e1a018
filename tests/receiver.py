"""A scriptable webhook receiver for tests: a real aiohttp server on 127.0.0.1, port 0.

Each request consumes the next scripted action (then ``default``): a :class:`Reply` (status, body,
headers), :class:`Hang` (never answer, until the receiver closes) or :class:`Cut` (start a 200
answer and close the connection mid-body). Every request is recorded in ``received``.

    async with Receiver([Reply(500), Reply(200)]) as rx:
        ... post to rx.url ...
        assert rx.received[1].json()["status"] == "firing"
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "ok"
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "text/plain"


@dataclass(frozen=True)
class Hang:
    """Never answer (the client must time out)."""


@dataclass(frozen=True)
class Cut:
    """Send headers promising a body, a few bytes of it, then close the connection."""


Action = Reply | Hang | Cut


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(
        self, script: Iterable[Action] = (), default: Action | None = None, port: int = 0
    ) -> None:
        self.script: deque[Action] = deque(script)
        self.default: Action = default or Reply()
        self.received: list[Received] = []
        self._closing = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, *actions: Action) -> None:
        self.script.extend(actions)

    def bodies(self) -> list[Any]:
        return [r.json() for r in self.received]

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_for(self, n: int, within: float = 5.0) -> None:
        """Until at least ``n`` requests have arrived."""
        await self.wait_until(lambda: len(self.received) >= n, within)

    async def wait_until(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        """Until ``condition()`` holds, looked at again as each request arrives."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(condition)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Received(
                request.method, request.path, request.query_string, dict(request.headers), body
            )
        )
        async with self._arrived:
            self._arrived.notify_all()
        action = self.script.popleft() if self.script else self.default
        if isinstance(action, Hang):
            await self._closing.wait()
            return web.Response(status=503)
        if isinstance(action, Cut):
            resp = web.StreamResponse(status=200)
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"ok": tr')
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(
            status=action.status,
            text=action.body,
            headers=dict(action.headers),
            content_type=action.content_type,
        )
