"""The optional HTTP listener (/healthz, /metrics, /status) and the dead man's switch heartbeat.

Sits at the edge, started by ``service.py`` when ``agent.listen`` is set: it serves the views of
:class:`~detector.health.Health` on loopback by default, behind an optional bearer token, and
:func:`heartbeat_loop` pings ``agent.heartbeat`` while the agent is healthy, so that an external
monitor (Healthchecks, Uptime Kuma, …) notices when the agent dies, hangs, or cannot do its job.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from detector.clock import Clock
from detector.health import Health

if TYPE_CHECKING:  # the server side of aiohttp (2 MB) is imported only when a listener starts
    from aiohttp import web
    from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEARTBEAT_TIMEOUT = timedelta(seconds=10)


@functools.cache
def _health_key() -> web.AppKey[Health]:
    from aiohttp import web  # noqa: PLC0415 - see the imports

    return web.AppKey("health", Health)


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9465"``, ``"[::1]:9465"``, ``":9465"`` (loopback) or ``"9465"`` → host, port."""
    text = listen.strip()
    if text.isdigit():
        host, port_text = "", text
    elif text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"listen: expected [address]:port, got {listen!r}")
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"listen: expected address:port, got {listen!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen: bad port in {listen!r}")
    return (host or DEFAULT_HOST), int(port_text)


def build_app(health: Health, token: str | None) -> web.Application:
    """The aiohttp application: three GET routes, optionally behind ``Authorization: Bearer``."""
    from aiohttp import web  # noqa: PLC0415 - see the imports

    middlewares = [_bearer_middleware(token)] if token else []
    app = web.Application(middlewares=middlewares)
    app[_health_key()] = health
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    return app


async def start_http(health: Health, listen: str, token: str | None) -> web.AppRunner:
    """Start serving; returns the runner (``runner.addresses`` has the bound address; call
    ``await runner.cleanup()`` on shutdown). Raises ``OSError`` if the address cannot be bound."""
    from aiohttp import web  # noqa: PLC0415 - see the imports

    host, port = parse_listen(listen)
    if host not in LOOPBACK_HOSTS and not token:
        log.warning("HTTP listener on %s without a token: /status and /metrics are public", host)
    # access_log=None: a scrape every 15 s must not fill the journal.
    runner = web.AppRunner(
        build_app(health, token), access_log=None, handle_signals=False, shutdown_timeout=2.0
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("HTTP listener on %s", runner.addresses)
    return runner


def _bearer_middleware(token: str) -> Middleware:
    from aiohttp import web  # noqa: PLC0415 - see the imports

    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="detector"'},
            )
        return await handler(request)

    return check


async def _healthz(request: web.Request) -> web.Response:
    from aiohttp import web  # noqa: PLC0415 - see the imports

    health = request.app[_health_key()]
    headers = {"Cache-Control": "no-store"}
    if health.healthy():
        return web.Response(text="ok\n", headers=headers)
    body = {"status": "degraded", "reasons": health.reasons()}
    return web.json_response(body, status=503, headers=headers)


async def _metrics(request: web.Request) -> web.Response:
    from aiohttp import web  # noqa: PLC0415 - see the imports

    body = request.app[_health_key()].render_prometheus().encode()
    return web.Response(
        body=body,
        headers={"Content-Type": PROMETHEUS_CONTENT_TYPE, "Cache-Control": "no-store"},
    )


async def _status(request: web.Request) -> web.Response:
    from aiohttp import web  # noqa: PLC0415 - see the imports

    body = request.app[_health_key()].status_json()
    return web.json_response(
        body,
        dumps=lambda o: json.dumps(o, indent=2, default=str),
        headers={"Cache-Control": "no-store"},
    )


# ---------------------------------------------------------------- dead man's switch


async def heartbeat_loop(
    url: str,
    every: timedelta,
    health: Health,
    clock: Clock,
    session: aiohttp.ClientSession,
    *,
    request_timeout: timedelta = HEARTBEAT_TIMEOUT,
) -> None:
    """GET ``url`` now and then every ``every``, but only while ``health.healthy()``.

    Runs until cancelled. A failed ping is logged (without the URL's path or query, which often
    hold the check's secret) and counted in ``heartbeats{result}``, never raised. Deadlines are
    fixed (start + k·every); missed ones are skipped, not caught up with a burst.
    """
    target = _redact(url)
    next_at = clock.now()
    while True:
        if health.healthy():
            ok = await _ping(url, target, session, request_timeout)
            health.inc("heartbeats", result="sent" if ok else "failed")
        else:
            health.inc("heartbeats", result="skipped_unhealthy")
        now = clock.now()
        next_at += every
        while next_at <= now:
            next_at += every
        await clock.sleep_until(next_at)


async def _ping(url: str, target: str, session: aiohttp.ClientSession, limit: timedelta) -> bool:
    client_timeout = aiohttp.ClientTimeout(total=limit.total_seconds())
    try:
        async with session.get(url, timeout=client_timeout, allow_redirects=True) as response:
            await response.read()
            if response.status >= 400:
                log.warning("heartbeat to %s answered HTTP %d", target, response.status)
                return False
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("heartbeat to %s failed: %s", target, type(exc).__name__ + f": {exc}")
        return False
    return True


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" if parts.hostname else "<heartbeat url>"
