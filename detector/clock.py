"""The one place time comes from.

Every decision in the core takes ``now`` as an argument; the service reads a :class:`Clock` once per
decision and passes the value down. Tests use :class:`FakeClock` and never sleep.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for measuring intervals (loop lag, timeouts)."""
        ...

    async def sleep_until(self, at: datetime) -> None:
        """Return once ``now() >= at`` (at once if it already is)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, at: datetime) -> None:
        # Wall-clock jumps are handled by re-checking: sleep in pieces of at most 60 s.
        while True:
            delay = (at - self.now()).total_seconds()
            if delay <= 0:
                return
            await asyncio.sleep(min(delay, 60.0))


class FakeClock:
    """A clock that moves only when told to. ``sleep_until`` waits for :meth:`advance`."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._mono = 0.0
        self._waiters: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def set(self, at: datetime) -> None:
        if at < self._now:
            raise ValueError("FakeClock cannot go backwards")
        self.advance(at - self._now)

    def advance(self, by: timedelta) -> None:
        self._now += by
        self._mono += by.total_seconds()
        still = []
        for at, fut in self._waiters:
            if at <= self._now:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((at, fut))
        self._waiters = still

    async def sleep_until(self, at: datetime) -> None:
        if at <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((at, fut))
        await fut
