"""sd_notify: tell systemd how the agent is doing (READY, RELOADING, STOPPING, STATUS, WATCHDOG).

Sits beside the flow, called by ``service.py``: READY=1 once the sources are open,
RELOADING=1 … READY=1 around a reload, STOPPING=1 on shutdown, STATUS= with a one-line summary,
and :func:`watchdog_loop` pinging WATCHDOG=1 from the event loop itself, so that a stalled loop
stops pinging and systemd (``WatchdogSec=``) restarts the process. Everything is a no-op when
``NOTIFY_SOCKET`` is unset (not run by systemd), and a failed send is logged, never raised: the
agent must not die because its supervisor's socket is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from detector.clock import Clock

log = logging.getLogger(__name__)

STATUS_MAX_CHARS = 200


def _socket_address(value: str) -> str | None:
    """The address to ``sendto`` for a NOTIFY_SOCKET value; None when unusable.

    ``@name`` is a Linux abstract socket (leading NUL byte); absolute paths are file sockets.
    Other forms (``vsock:``, relative paths) are not supported by this agent.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET``; does nothing when it is unset.

    ``environ`` defaults to the process environment; ``pid`` (for ``WATCHDOG_PID``) to ours.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self._pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw) if raw else None
        if raw and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not supported; not notifying systemd", raw)
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram. True if it was sent."""
        if self._address is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # never stall the event loop on a full receiver queue
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", assignments[0].split("=", 1)[0], exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete: the sources are open."""
        extra = (_status_assignment(status),) if status is not None else ()
        return self.send("READY=1", *extra)

    def reloading(self) -> bool:
        """A reload has started; call :meth:`ready` when it is done (whether it succeeded or not).

        ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, as systemd ≥ 253 wants for ``Type=notify-reload``)
        is ignored by older systemd.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """A one-line summary shown by ``systemctl status`` (newlines are folded, length capped)."""
        return self.send(_status_assignment(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, by: timedelta) -> bool:
        """Ask systemd for more start/stop time (``EXTEND_TIMEOUT_USEC``)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(by.total_seconds() * 1_000_000)}")

    def watchdog_interval(self) -> timedelta | None:
        """``WatchdogSec=`` as systemd passed it, or None when there is no watchdog for us."""
        if self._address is None:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != self._pid:
                    return None  # the variables were meant for another process (our parent)
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return timedelta(microseconds=usec)


def _status_assignment(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > STATUS_MAX_CHARS:
        line = line[: STATUS_MAX_CHARS - 1] + "…"
    return f"STATUS={line}"


async def watchdog_loop(notifier: Notifier, clock: Clock, healthy: Callable[[], bool]) -> None:
    """Ping WATCHDOG=1 at half the watchdog interval, from the event loop, while ``healthy()``.

    Returns at once when systemd set no watchdog. Runs until cancelled. Because the ping is sent
    by a coroutine, a blocked event loop sends nothing and systemd restarts the agent.

    Pass a *liveness* predicate (``Health.live``), not overall health: a failing webhook must show
    on /healthz, not make systemd restart the agent in a loop.

    Deadlines are on ``clock.monotonic()`` (wall-clock steps must not delay a ping); after a stall
    the next ping goes out at once instead of catching up with a burst.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    period = interval.total_seconds() / 2
    next_at = clock.monotonic()
    while True:
        if healthy():
            notifier.watchdog()
        now = clock.monotonic()
        # After a stall: ping again at once. Never wait longer than one period (a clock that
        # does not move, like FakeClock's, still gives one ping per period of real time).
        next_at = min(max(next_at + period, now), now + period)
        await asyncio.sleep(next_at - now)
