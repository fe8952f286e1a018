"""One store call per delivery pass: the rows a commit wakes the worker for are read in that
commit's own store call (``DeliveryWorker.due_reader``), and what the pass writes goes with its
last call. A real worker task, SQLite file and receiver; a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

from detector.clock import FakeClock
from detector.delivery.worker import DeliveryWorker, Handed
from detector.store.db import AsyncStore, Store
from tests.receiver import Receiver, Reply
from tests.test_delivery import START, enqueue, hook, states, worker

T = TypeVar("T")


class CountingStore(AsyncStore):
    """The store thread, counting the calls made to it."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.calls = 0

    async def run(self, fn: Callable[[Store], T]) -> T:
        self.calls += 1
        return await super().run(fn)


async def _commit_rows(
    db: AsyncStore, w: DeliveryWorker, items: list[tuple[str, str]]
) -> Handed | None:
    """What the service's commit does: the rows, then the worker's due rows, in one call."""
    read = w.due_reader()

    def commit(s: Store) -> Handed | None:
        enqueue(s, "hook", items)
        return None if read is None else read(s)

    return await db.run(commit)


async def _idle(w: DeliveryWorker) -> None:
    async with asyncio.timeout(10):
        await w.wait_idle()


def _events(rx: Receiver) -> list[Any]:
    return [b["x_detector"]["event_id"] for b in rx.bodies()]


async def test_a_pass_woken_by_a_commit_is_one_store_call(
    store: Store, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    db = CountingStore(store)
    clock = FakeClock(START)
    w = worker(hook(rx.url + "/in", format="json"), db, clock, session)
    task = asyncio.create_task(w.run())
    try:
        await _idle(w)
        for n in range(3):
            handed = await _commit_rows(db, w, [(f"ev-{n}", f"fp{n}")])
            assert handed is not None and [r.event_id for r in handed.rows] == [f"ev-{n}"]
            before = db.calls
            w.wake(handed)
            await rx.wait_for(n + 1)
            await _idle(w)
            assert db.calls - before == 1  # the pass's end: delivered, gauges, next due
        assert _events(rx) == ["ev-0", "ev-1", "ev-2"]
        assert states(store) == {f"ev-{n}": ("delivered", 1) for n in range(3)}
        assert w.stats().queue_depth == 0
    finally:
        task.cancel()
        db.stop()


async def test_rows_read_before_a_pass_ran_are_not_sent_again(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    """The rows were read while the worker was parked, but a pass (woken otherwise) sent them
    before the hand-over arrived: the hand-over is stale and is not used."""
    clock = FakeClock(START)
    w = worker(hook(rx.url + "/in", format="json"), db, clock, session)
    task = asyncio.create_task(w.run())
    try:
        await _idle(w)
        handed = await _commit_rows(db, w, [("ev-1", "fp1")])
        assert handed is not None and [r.event_id for r in handed.rows] == ["ev-1"]
        w.wake()  # another commit's wake, without rows: this pass reads and sends ev-1
        await rx.wait_for(1)
        await _idle(w)
        w.wake(handed)  # late: a pass ran since it was read
        await _idle(w)
        assert _events(rx) == ["ev-1"]
        assert states(store) == {"ev-1": ("delivered", 1)}
    finally:
        task.cancel()


async def test_a_row_that_fell_due_after_the_read_is_not_missed(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    """A row backing off falls due between the commit's read and the pass: the hand-over does
    not hold then (it found nothing due: the new row waits behind that one, its fingerprint's
    head), the pass reads for itself and sends both, in order, instead of finding nothing to
    send and waiting a second."""
    clock = FakeClock(START)
    rx.push(Reply(503))  # the first attempt fails: ev-1 retries after its backoff
    w = worker(hook(rx.url + "/in", format="json"), db, clock, session)
    task = asyncio.create_task(w.run())
    try:
        enqueue(store, "hook", [("ev-1", "fp1")])
        w.wake()
        await rx.wait_for(1)
        await _idle(w)
        assert states(store)["ev-1"] == ("pending", 1)
        retry_at = w.sleeping_until
        assert retry_at is not None and retry_at > clock.now()
        handed = await _commit_rows(db, w, [("ev-1b", "fp1")])  # behind ev-1, not due yet
        assert handed is not None and handed.rows == []
        clock.set(retry_at)
        w.wake(handed)
        await rx.wait_for(3)
        await _idle(w)
        assert _events(rx) == ["ev-1", "ev-1", "ev-1b"]
        assert states(store) == {"ev-1": ("delivered", 2), "ev-1b": ("delivered", 1)}
    finally:
        task.cancel()
