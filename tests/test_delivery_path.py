"""Whose fault a failed delivery is: the path's (hold the backlog, report it, send it all when the
path works again) or the row's (dead-letter that row only, and say so); when a receiver that came
back is tried again; and dead letters re-queued from outside reaching the running worker.

Real aiohttp receiver, real SQLite file, FakeClock.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from detector.clock import FakeClock
from detector.delivery.worker import DeliveryWorker
from detector.model import WebhookConfig
from detector.store import outbox
from detector.store.db import AsyncStore, Store
from tests.receiver import Receiver, Reply
from tests.test_delivery import START, drain, enqueue, hook, states, worker

NEXT_AT = re.compile(r"next attempt at (\d{4}-\S+?\+00:00)")


class Reports:
    """What the worker told the service: path health and dead letters."""

    def __init__(self) -> None:
        self.health: list[tuple[str, bool, str]] = []
        self.dead: list[tuple[str, str, str]] = []

    def path(self, webhook: str, failing: bool, reason: str) -> None:
        self.health.append((webhook, failing, reason))

    def dead_letter(self, webhook: str, event_id: str, reason: str) -> None:
        self.dead.append((webhook, event_id, reason))


def reported_worker(
    wh: WebhookConfig,
    db: AsyncStore,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    reports: Reports,
) -> DeliveryWorker:
    return worker(
        wh, db, clock, session, on_path_health=reports.path, on_dead_letter=reports.dead_letter
    )


def keys(rx: Receiver, start: int = 0) -> list[str]:
    return [r.headers["Idempotency-Key"] for r in rx.received[start:]]


async def asleep(w: DeliveryWorker) -> datetime:
    """Until the running worker sleeps on a deadline; returns that deadline."""
    async with asyncio.timeout(5):
        while w.sleeping_until is None:
            await asyncio.sleep(0)
    return w.sleeping_until


# ---------------------------------------------------------------- the path's fault


@pytest.mark.parametrize(
    ("status", "body", "answer"),
    [
        (404, "no_service", "HTTP 404 Not Found: no_service"),
        (401, "invalid token", "HTTP 401 Unauthorized: invalid token"),
        (403, "forbidden", "HTTP 403 Forbidden: forbidden"),
        (410, "channel_is_archived", "HTTP 410 Gone: channel_is_archived"),
    ],
)
async def test_a_refused_webhook_holds_a_backlog_of_50_and_sends_all_of_it_once_fixed(
    store: Store,
    db: AsyncStore,
    rx: Receiver,
    session: aiohttp.ClientSession,
    status: int,
    body: str,
    answer: str,
) -> None:
    clock = FakeClock(START)
    rx.default = Reply(status, body)
    items = [(f"ev-{i:02d}", f"fp{i % 7}") for i in range(50)]
    enqueue(store, "hook", items)
    reports = Reports()
    w = reported_worker(hook(rx.url), db, clock, session, reports)

    await drain(w, clock, START + timedelta(minutes=10))
    assert [(h, f) for h, f, _ in reports.health] == [("hook", True)]
    assert answer in reports.health[0][2]
    assert {s for s, _ in states(store).values()} == {"pending"}  # held, none dead
    assert reports.dead == [] and w.stats().dead == 0
    during = len(rx.received)
    assert set(keys(rx)) == {"ev-00"}  # one probe per hold, not the backlog row by row
    assert during < 40  # 10 minutes of holds of at most 30 s

    rx.default = Reply(200)  # someone fixed the webhook
    fixed_at = clock.now()
    next_try = await w.next_wake_at()
    assert next_try is not None and next_try - fixed_at <= timedelta(seconds=30)
    await drain(w, clock, fixed_at + timedelta(minutes=5))
    assert keys(rx, during) == [e for e, _ in items]  # every alert, in order
    assert {s for s, _ in states(store).values()} == {"delivered"}
    assert [(h, f) for h, f, _ in reports.health] == [("hook", True), ("hook", False)]
    assert reports.dead == [] and w.stats().dead == 0


async def test_slack_invalid_token_is_the_webhooks_fault_not_the_messages(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(200), Reply(400, "invalid_token"))
    enqueue(store, "hook", [("a", "fa"), ("b", "fb"), ("c", "fc")])
    reports = Reports()
    wh = WebhookConfig(name="hook", url=rx.url, format="slack")
    w = reported_worker(wh, db, clock, session, reports)
    await w.run_once()
    assert states(store) == {"a": ("delivered", 1), "b": ("pending", 1), "c": ("pending", 0)}
    assert reports.dead == []
    assert reports.health == [("hook", True, "HTTP 400 Bad Request: invalid_token")]


async def test_pagerduty_400_about_the_routing_key_holds_the_webhook(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    error = (
        '{"status":"invalid event","message":"Event object is invalid",'
        '"errors":["Length of \'routing_key\' is incorrect (should be 32 characters)"]}'
    )
    rx.push(Reply(200), Reply(400, error))
    enqueue(store, "pd", [("a", "fa"), ("b", "fb")])
    reports = Reports()
    wh = WebhookConfig(name="pd", url=rx.url, format="pagerduty", routing_key="short")
    w = reported_worker(wh, db, clock, session, reports)
    await w.run_once()
    assert states(store) == {"a": ("delivered", 1), "b": ("pending", 1)}
    assert reports.dead == []
    assert [(h, f) for h, f, _ in reports.health] == [("pd", True)]
    assert "HTTP 400 Bad Request" in reports.health[0][2]


async def test_two_rows_refused_back_to_back_are_the_path_not_two_dead_letters(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(422, "unknown field"), Reply(422, "unknown field"))
    enqueue(store, "hook", [("a", "fa"), ("b", "fb"), ("c", "fc")])
    reports = Reports()
    w = reported_worker(hook(rx.url), db, clock, session, reports)
    await w.run_once()
    assert states(store) == {"a": ("pending", 1), "b": ("pending", 1), "c": ("pending", 0)}
    assert reports.dead == []
    assert reports.health == [("hook", True, "HTTP 422 Unprocessable Entity: unknown field")]
    await drain(w, clock, START + timedelta(minutes=1))  # the receiver accepts them after all
    assert {s for s, _ in states(store).values()} == {"delivered"}
    assert keys(rx, 2) == ["a", "b", "c"]


# ---------------------------------------------------------------- the row's fault


async def test_one_rows_400_while_others_succeed_dead_letters_only_that_row_and_reports_it(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(200), Reply(400, "invalid_payload"), Reply(200), Reply(200))
    enqueue(store, "hook", [("a", "fa"), ("b", "fb"), ("c", "fc"), ("d", "fd")])
    reports = Reports()
    w = reported_worker(hook(rx.url), db, clock, session, reports)
    await w.run_once()
    assert states(store) == {
        "a": ("delivered", 1),
        "b": ("dead", 1),
        "c": ("delivered", 1),
        "d": ("delivered", 1),
    }
    assert reports.dead == [("hook", "b", "refused: HTTP 400 Bad Request: invalid_payload")]
    assert w.stats().dead == 1
    assert reports.health == []  # the path is fine
    (err,) = store.execute("SELECT last_error FROM outbox WHERE event_id='b'")
    assert err[0] == "refused: HTTP 400 Bad Request: invalid_payload"


async def test_a_refused_row_after_a_delivery_is_dead_even_when_it_is_the_last_one(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    enqueue(store, "hook", [("a", "fa")])
    reports = Reports()
    w = reported_worker(hook(rx.url), db, clock, session, reports)
    await w.run_once()
    rx.push(Reply(413, "too large"))
    enqueue(store, "hook", [("b", "fb")], at=START + timedelta(seconds=5))
    clock.advance(timedelta(seconds=5))
    await w.run_once()
    assert states(store) == {"a": ("delivered", 1), "b": ("dead", 1)}
    assert [(h, e) for h, e, _ in reports.dead] == [("hook", "b")]


async def test_a_refused_row_with_nothing_to_compare_waits_until_another_row_gets_through(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(400, "bad"), Reply(400, "bad"))  # the first row, twice
    enqueue(store, "hook", [("a", "fa")])
    reports = Reports()
    w = reported_worker(hook(rx.url), db, clock, session, reports)
    await w.run_once()
    assert states(store) == {"a": ("pending", 1)}  # the path may be what refuses it
    assert reports.dead == []
    enqueue(store, "hook", [("b", "fb")], at=START)
    ((retry_at,),) = store.execute("SELECT next_attempt_at FROM outbox WHERE event_id='a'")
    clock.set(datetime.fromtimestamp(retry_at, UTC))
    await w.run_once()  # a refused again, then b gets through: it was a's fault
    assert states(store) == {"a": ("dead", 2), "b": ("delivered", 1)}
    assert [(h, e) for h, e, _ in reports.dead] == [("hook", "a")]


async def test_a_row_given_up_after_max_age_is_reported_as_a_dead_letter(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.default = Reply(500)
    enqueue(store, "hook", [("a", "fa")])
    reports = Reports()
    w = reported_worker(hook(rx.url, max_age=timedelta(minutes=5)), db, clock, session, reports)
    await drain(w, clock, START + timedelta(hours=1))
    assert states(store)["a"][0] == "dead"
    ((webhook, event_id, reason),) = reports.dead
    assert (webhook, event_id) == ("hook", "a") and reason.startswith("gave up after 0:05:00")


# ---------------------------------------------------------------- when the next attempt is


async def test_the_logged_next_attempt_is_when_the_running_worker_really_tries(
    store: Store,
    db: AsyncStore,
    rx: Receiver,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(503, "down"), Reply(503, "down"))  # two rows fail: the path is held
    enqueue(store, "hook", [("a", "fa"), ("b", "fb")])
    w = worker(hook(rx.url), db, clock, session)
    caplog.set_level(logging.WARNING, "detector.delivery")
    task = asyncio.create_task(w.run())
    try:
        await rx.wait_for(2)
        target = await asleep(w)
        (line,) = [r.getMessage() for r in caplog.records if "next attempt at" in r.getMessage()]
        match = NEXT_AT.search(line)
        assert match is not None
        logged = datetime.fromisoformat(match.group(1))
        stored = {
            datetime.fromtimestamp(n, UTC)
            for (n,) in store.execute("SELECT next_attempt_at FROM outbox")
        }
        assert stored == {logged}  # the rows say the same time as the log
        assert target == logged  # and that is what the worker sleeps until
        assert START < logged <= START + timedelta(seconds=30)

        clock.set(logged - timedelta(microseconds=1))
        assert await asleep(w) == logged and len(rx.received) == 2  # not a moment earlier
        clock.set(logged)
        await rx.wait_for(4)  # the receiver recovered: both go out at the logged time
        assert keys(rx, 2) == ["a", "b"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_single_rows_retry_is_logged_with_the_time_it_is_really_retried(
    store: Store,
    db: AsyncStore,
    rx: Receiver,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(500, "boom"))
    enqueue(store, "hook", [("a", "fa")])
    w = worker(hook(rx.url), db, clock, session)
    caplog.set_level(logging.WARNING, "detector.delivery")
    await w.run_once()
    (line,) = [r.getMessage() for r in caplog.records if "next attempt at" in r.getMessage()]
    match = NEXT_AT.search(line)
    assert match is not None
    logged = datetime.fromisoformat(match.group(1))
    ((stored,),) = store.execute("SELECT next_attempt_at FROM outbox")
    assert datetime.fromtimestamp(stored, UTC) == logged
    assert await w.next_wake_at() == logged


async def test_a_path_hold_never_exceeds_30_seconds(
    store: Store, db: AsyncStore, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    async with Receiver(default=Reply(503)) as down:
        enqueue(store, "hook", [(f"e{i}", f"f{i}") for i in range(3)])
        w = worker(hook(down.url), db, clock, session)
        gaps = []
        for _ in range(20):
            await w.run_once()
            at = await w.next_wake_at()
            assert at is not None
            gaps.append(at - clock.now())
            clock.set(at)
    assert max(gaps) <= timedelta(seconds=30)
    assert max(gaps) > timedelta(seconds=15)  # it does back off


# ---------------------------------------------------------------- re-queued dead letters


async def test_the_running_worker_sends_dead_letters_requeued_by_another_process(
    tmp_path: Path, store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    enqueue(store, "hook", [("a", "fa")])
    outbox.mark_dead(store, [1], START, "refused: HTTP 400 Bad Request")
    w = worker(hook(rx.url), db, clock, session)
    task = asyncio.create_task(w.run())
    try:
        slept_until = await asleep(w)  # nothing to do: it still re-reads within 30 s
        assert slept_until <= clock.now() + timedelta(seconds=30)
        other = Store(tmp_path / "state.db")  # `detector outbox retry`'s own connection
        try:
            result = outbox.requeue_dead(other, clock.now())
        finally:
            other.close()
        assert result.requeued == [("hook", "a")]
        assert len(rx.received) == 0
        clock.set(slept_until)
        await rx.wait_for(1)
        assert keys(rx) == ["a"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_requeue_leaves_a_dead_firing_dead_when_its_resolve_was_delivered(store: Store) -> None:
    enqueue(store, "hook", [("x-firing", "X"), ("x-resolved", "X", "resolved"), ("y", "Y")])
    outbox.mark_dead(store, [1, 3], START, "refused")
    outbox.mark_delivered(store, [2], START)
    later = START + timedelta(hours=30)
    result = outbox.requeue_dead(store, later)
    assert result.requeued == [("hook", "y")]
    assert result.superseded == [("hook", "x-firing")]
    rows = {r.event_id: r for r in outbox.listing(store)}
    assert rows["x-firing"].state == "dead"
    assert rows["y"].state == "pending" and rows["y"].attempts == 0
    assert rows["y"].created_at == later  # a full max_age of retries again
    assert [e.event_id for e in outbox.due(store, "hook", later, 10)] == ["y"]
