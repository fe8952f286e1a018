"""The outbox worker against a real aiohttp receiver, a real SQLite file and a FakeClock."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from detector import __version__
from detector.clock import FakeClock
from detector.delivery import policy
from detector.delivery.sendtest import send_test
from detector.delivery.worker import DeliveryWorker
from detector.model import WebhookConfig
from detector.records import Commit, OutboxRow
from detector.store import outbox
from detector.store.db import AsyncStore, Store
from tests.receiver import Cut, Hang, Receiver, Reply

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def payload(event_id: str, fingerprint: str, status: str = "firing", **over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "event_id": event_id,
        "fingerprint": fingerprint,
        "notification": "resolved" if status == "resolved" else "firing",
        "status": status,
        "rule": f"rule-{fingerprint}",
        "kind": "error",
        "severity": "error",
        "summary": f"summary {event_id}",
        "description": "d",
        "labels": {"host": "db1", "rule": f"rule-{fingerprint}", "severity": "error"},
        "owner": None,
        "runbook": None,
        "host": "db1",
        "source": "syslog",
        "first_seen_at": "2026-03-01T11:59:00.000Z",
        "last_seen_at": "2026-03-01T11:59:00.000Z",
        "resolved_at": "2026-03-01T12:00:00.000Z" if status == "resolved" else None,
        "count": 1,
        "samples": ["a line"],
        "evidence": {},
        "created_at": "2026-03-01T12:00:00.000Z",
    }
    p.update(over)
    return p


def enqueue(
    store: Store,
    webhook: str,
    items: list[tuple[str, str]] | list[tuple[str, str, str]],
    at: datetime = START,
) -> None:
    rows = []
    for item in items:
        event_id, fp = item[0], item[1]
        status = item[2] if len(item) > 2 else "firing"  # type: ignore[misc]
        rows.append(OutboxRow(webhook, event_id, fp, status, payload(event_id, fp, status), at))
    store.commit(Commit(outbox=rows), at)


def states(store: Store) -> dict[str, tuple[str, int]]:
    rows = store.execute("SELECT event_id, state, attempts FROM outbox ORDER BY id")
    return {e: (s, a) for e, s, a in rows}


def hook(url: str, **over: Any) -> WebhookConfig:
    return WebhookConfig(name="hook", url=url, **over)


def worker(
    webhook: WebhookConfig,
    db: AsyncStore,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    **kw: Any,
) -> DeliveryWorker:
    return DeliveryWorker(
        webhook, db, clock, host="db1", session=session, rng=random.Random(7), **kw
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drain(w: DeliveryWorker, clock: FakeClock, until: datetime) -> None:
    """Run passes, jumping the fake clock to each next wake-up, until ``until`` or idle."""
    for _ in range(10_000):
        posts = await w.run_once()
        at = await w.next_wake_at()
        if at is None or at > until:
            return
        if at > clock.now():
            clock.set(at)
        elif posts == 0:
            raise AssertionError(f"worker would spin: nothing sent, next wake {at} <= now")
    raise AssertionError("drain did not settle")


# ---------------------------------------------------------------- one request


async def test_delivery_carries_idempotency_key_user_agent_headers_and_signature(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    wh = hook(rx.url + "/in", secret="s3cret", headers={"X-Team": "ops"})
    assert await worker(wh, db, clock, session).run_once() == 1
    (req,) = rx.received
    assert req.path == "/in"
    assert req.headers["Idempotency-Key"] == "ev-1"
    assert req.headers["User-Agent"] == f"detector/{__version__}"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Team"] == "ops"
    t, v1 = (p.split("=", 1)[1] for p in req.headers["X-Detector-Signature"].split(","))
    assert int(t) == int(START.timestamp())
    expected = hmac.new(b"s3cret", f"{t}.".encode() + req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(v1, expected)
    assert req.json()["x_detector"]["event_id"] == "ev-1"
    assert states(store) == {"ev-1": ("delivered", 1)}


async def test_500_then_200_is_retried_after_backoff_and_delivered(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(500, "boom"))
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(hook(rx.url), db, clock, session)
    await w.run_once()
    assert states(store) == {"ev-1": ("pending", 1)}
    (row,) = store.execute("SELECT next_attempt_at, last_error FROM outbox")
    assert row[1].endswith("HTTP 500: boom")
    retry_at = datetime.fromtimestamp(row[0], UTC)
    assert START <= retry_at <= START + timedelta(seconds=1)  # full jitter, base 1 s
    clock.set(retry_at)
    await w.run_once()
    assert states(store) == {"ev-1": ("delivered", 2)}
    assert len(rx.received) == 2
    assert rx.received[1].json()["x_detector"]["attempt"] == 2


async def test_429_retry_after_seconds_is_honoured(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(429, headers={"Retry-After": "120"}))
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(hook(rx.url), db, clock, session)
    await w.run_once()
    assert await w.next_wake_at() == START + timedelta(seconds=120)
    clock.advance(timedelta(seconds=119))
    assert await w.run_once() == 0
    clock.advance(timedelta(seconds=1))
    assert await w.run_once() == 1
    assert states(store) == {"ev-1": ("delivered", 2)}


async def test_503_retry_after_http_date_is_honoured(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    later = START + timedelta(minutes=7)
    rx.push(Reply(503, headers={"Retry-After": format_datetime(later, usegmt=True)}))
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(hook(rx.url), db, clock, session)
    await w.run_once()
    assert await w.next_wake_at() == later


async def test_410_gone_holds_the_webhook_instead_of_dead_lettering_the_row(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(410, "gone"))
    enqueue(store, "hook", [("ev-1", "fp1"), ("ev-2", "fp2")])
    w = worker(hook(rx.url), db, clock, session)
    await w.run_once()
    assert states(store) == {"ev-1": ("pending", 1), "ev-2": ("pending", 0)}
    assert len(rx.received) == 1  # the endpoint is gone: the rest of the backlog waits
    assert w.stats().dead == 0 and w.stats().failing


async def test_a_receiver_hanging_past_the_timeout_is_a_transient_failure(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Hang())
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(hook(rx.url, timeout=timedelta(seconds=0.3)), db, clock, session)
    await w.run_once()
    assert states(store) == {"ev-1": ("pending", 1)}
    assert "timed out after 0.3s" in (w.stats().last_error or "")


async def test_a_connection_closed_mid_response_is_a_transient_failure(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Cut())
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(hook(rx.url), db, clock, session)
    await w.run_once()
    assert states(store) == {"ev-1": ("pending", 1)}
    assert "cut-off" in (w.stats().last_error or "")


async def test_html_200_counts_as_delivered_but_a_redirect_to_a_login_page_does_not(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(
        Reply(200, "<html>thanks</html>", content_type="text/html"),
        Reply(302, "", headers={"Location": "https://sso.example/login?next=x"}),
    )
    enqueue(store, "hook", [("ev-1", "fp1"), ("ev-2", "fp2")])
    w = worker(hook(rx.url), db, clock, session)
    await w.run_once()
    assert states(store) == {"ev-1": ("delivered", 1), "ev-2": ("pending", 1)}
    assert "HTTP 302 redirect to https://sso.example/… (not followed)" in (
        w.stats().last_error or ""
    )
    assert len(rx.received) == 2  # the redirect was not followed


async def test_a_later_row_of_a_fingerprint_waits_for_the_earlier_one(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(500))
    enqueue(store, "hook", [("x-firing", "X"), ("x-resolved", "X", "resolved"), ("y", "Y")])
    w = worker(hook(rx.url), db, clock, session)
    await drain(w, clock, START + timedelta(minutes=1))
    sent = [r.headers["Idempotency-Key"] for r in rx.received]
    assert sent == ["x-firing", "y", "x-firing", "x-resolved"]
    assert {s for s, _ in states(store).values()} == {"delivered"}


async def test_restart_during_backoff_keeps_the_schedule(
    tmp_path: Path, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    path = tmp_path / "state.db"
    first = AsyncStore(Store(path))
    clock = FakeClock(START)
    rx.push(Reply(429, headers={"Retry-After": "300"}))
    enqueue(first.store, "hook", [("ev-1", "fp1"), ("ev-2", "fp2")])
    await worker(hook(rx.url), first, clock, session).run_once()
    first.close()

    again = AsyncStore(Store(path))  # the agent restarted: new store, new worker, same file
    try:
        clock2 = FakeClock(START + timedelta(seconds=10))
        w = worker(hook(rx.url), again, clock2, session)
        assert await w.run_once() == 0  # both rows still held by the Retry-After
        assert await w.next_wake_at() == START + timedelta(seconds=300)
        clock2.set(START + timedelta(seconds=300))
        assert await w.run_once() == 2
        assert states(again.store) == {"ev-1": ("delivered", 2), "ev-2": ("delivered", 1)}
    finally:
        again.close()


async def test_ten_minute_outage_delivers_everything_in_order_afterwards(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.default = Reply(503, "down")
    items = [(f"ev-{i:02d}", f"fp{i % 4}") for i in range(20)]
    enqueue(store, "hook", items)
    health: list[tuple[str, bool]] = []
    w = worker(
        hook(rx.url, fail_after=3),
        db,
        clock,
        session,
        on_path_health=lambda name, failing, reason: health.append((name, failing)),
    )
    outage_end = START + timedelta(minutes=10)
    await drain(w, clock, outage_end)
    during = len(rx.received)
    assert during < 40  # backed off: not 20 rows × retries
    assert health == [("hook", True)]
    assert w.stats().queue_depth == 20
    assert w.stats().oldest_pending_age is not None

    rx.default = Reply(200)
    clock.set(max(clock.now(), outage_end))
    await drain(w, clock, outage_end + timedelta(minutes=10))
    delivered = [r.headers["Idempotency-Key"] for r in rx.received[during:]]
    assert delivered == [e for e, _ in items]
    assert health == [("hook", True), ("hook", False)]
    assert w.stats().queue_depth == 0
    assert {s for s, _ in states(store).values()} == {"delivered"}


async def test_path_health_reports_failing_after_fail_after_then_recovery(
    store: Store, db: AsyncStore, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    port = free_port()  # nothing listens: connection refused
    enqueue(store, "hook", [("ev-1", "fp1")])
    calls: list[tuple[str, bool, str]] = []
    w = worker(
        hook(f"http://127.0.0.1:{port}/x", fail_after=3),
        db,
        clock,
        session,
        on_path_health=lambda *a: calls.append(a),
    )
    for _ in range(2):
        await w.run_once()
        clock.set(await w.next_wake_at() or clock.now())
    assert calls == []
    await w.run_once()
    assert [c[:2] for c in calls] == [("hook", True)]
    assert "3 consecutive delivery failures" in calls[0][2]
    async with Receiver(port=port):  # the receiver comes back
        clock.set(await w.next_wake_at() or clock.now())
        await w.run_once()
    assert [c[:2] for c in calls] == [("hook", True), ("hook", False)]
    assert states(store) == {"ev-1": ("delivered", 4)}


async def test_transient_failures_end_in_dead_letter_after_max_age(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.default = Reply(500)
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(hook(rx.url, max_age=timedelta(minutes=30)), db, clock, session)
    await drain(w, clock, START + timedelta(hours=2))
    assert states(store)["ev-1"][0] == "dead"
    (err,) = store.execute("SELECT last_error FROM outbox")
    assert err[0].startswith("gave up")
    assert clock.now() <= START + timedelta(minutes=30)


async def test_secrets_never_appear_in_errors(
    store: Store, db: AsyncStore, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    port = free_port()
    enqueue(store, "hook", [("ev-1", "fp1")])
    wh = hook(
        f"http://127.0.0.1:{port}/services/T0/B0/XyZsecretPath?token=qs-secret",
        headers={"Authorization": "Bearer hdr-secret"},
        secret="hmac-secret",
    )
    w = worker(wh, db, clock, session)
    await w.run_once()
    (err,) = store.execute("SELECT last_error FROM outbox")
    for secret in ("XyZsecretPath", "qs-secret", "hdr-secret", "hmac-secret"):
        assert secret not in err[0]
        assert secret not in (w.stats().last_error or "")
    assert f"http://127.0.0.1:{port}/…" in err[0]


# ---------------------------------------------------------------- storm control


async def test_a_burst_of_1000_alerts_with_rate_10_becomes_a_bounded_number_of_messages(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    enqueue(store, "hook", [(f"ev-{i:04d}", f"fp{i}") for i in range(1000)])
    w = worker(hook(rx.url, rate=10), db, clock, session)
    await drain(w, clock, START + timedelta(minutes=5))
    assert len(rx.received) == 10
    digest = rx.received[-1].json()
    assert digest["commonAnnotations"]["summary"].startswith("991 more alerts: ")
    assert {s for s, _ in states(store).values()} == {"delivered"}
    assert w.stats().digests == 1 and w.stats().delivered == 1000


async def test_rate_limit_holds_messages_until_the_minute_refills(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    enqueue(store, "hook", [("a", "fa"), ("b", "fb")])
    w = worker(hook(rx.url, rate=2), db, clock, session)
    await w.run_once()
    enqueue(store, "hook", [("c", "fc")], at=START + timedelta(seconds=5))
    clock.advance(timedelta(seconds=5))
    assert await w.run_once() == 0  # budget spent
    assert await w.next_wake_at() == START + timedelta(minutes=1)
    clock.set(START + timedelta(minutes=1))
    assert await w.run_once() == 1
    assert [r.headers["Idempotency-Key"] for r in rx.received] == ["a", "b", "c"]


# ---------------------------------------------------------------- alertmanager re-send


async def test_alertmanager_firing_alerts_are_reposted_until_resolved(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    enqueue(store, "am", [("f1", "fpA")])
    wh = WebhookConfig(name="am", url=rx.url, format="alertmanager")
    w = worker(wh, db, clock, session)
    await w.run_once()
    assert [r.path for r in rx.received] == ["/api/v2/alerts"]
    clock.advance(timedelta(minutes=1))
    await w.run_once()
    assert len(rx.received) == 2
    (again,) = rx.received[1].json()
    assert again["labels"]["alertname"] == "rule-fpA"
    assert again["endsAt"] == "2026-03-01T12:05:00.000Z"
    enqueue(store, "am", [("r1", "fpA", "resolved")], at=clock.now())
    await w.run_once()
    (gone,) = rx.received[2].json()
    assert gone["endsAt"] == "2026-03-01T12:00:00.000Z"
    clock.advance(timedelta(minutes=1))
    await w.run_once()
    assert len(rx.received) == 3  # nothing firing: nothing re-sent


# ---------------------------------------------------------------- the loop


async def test_wake_makes_the_running_worker_send_new_rows_at_once(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    w = worker(hook(rx.url), db, clock, session)
    task = asyncio.create_task(w.run())
    try:
        await w.wait_idle()  # its first pass found nothing: only the wake can send the row
        enqueue(store, "hook", [("ev-1", "fp1")])
        w.wake()
        await rx.wait_for(1, within=5)
        assert rx.received[0].headers["Idempotency-Key"] == "ev-1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_running_worker_retries_when_the_fake_clock_reaches_the_backoff(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.push(Reply(429, headers={"Retry-After": "60"}))
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(hook(rx.url), db, clock, session)
    task = asyncio.create_task(w.run())
    try:
        await rx.wait_for(1)
        await w.wait_idle()  # the 429 is recorded; the worker waits for the clock
        assert len(rx.received) == 1
        clock.advance(timedelta(seconds=60))
        await rx.wait_for(2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------- send-test


async def test_send_test_reports_success_with_the_receivers_answer(rx: Receiver) -> None:
    rx.push(Reply(200, "accepted"))
    result = await send_test(WebhookConfig(name="t", url=rx.url, format="slack"), "db1")
    assert result.ok and result.status == 200 and result.body == "accepted"
    assert "Test notification from detector on db1" in rx.received[0].json()["text"]


async def test_send_test_reports_a_rejection_without_leaking_the_url(rx: Receiver) -> None:
    rx.push(Reply(404, "no such hook"))
    wh = WebhookConfig(name="t", url=rx.url + "/hooks/SECRET123", format="discord")
    result = await send_test(wh, "db1")
    assert not result.ok and result.status == 404
    assert result.error is not None and "no such hook" in result.error
    assert "SECRET123" not in result.error


def test_outbox_queries_hand_out_only_the_head_of_each_fingerprint(store: Store) -> None:
    enqueue(store, "hook", [("a1", "A"), ("a2", "A"), ("b1", "B"), ("c1", "C")])
    enqueue(store, "other", [("o1", "A")])
    due = outbox.due(store, "hook", START, 10)
    assert [e.event_id for e in due] == ["a1", "b1", "c1"]
    outbox.mark_delivered(store, [due[0].id], START)
    assert [e.event_id for e in outbox.due(store, "hook", START, 10)] == ["a2", "b1", "c1"]
    assert outbox.queue_stats(store, "hook").depth == 3
    assert outbox.state_counts(store) == {
        "hook": {"delivered": 1, "pending": 3},
        "other": {"pending": 1},
    }


# ---------------------------------------------------------------- policy (pure)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "ok"),
        (202, "ok"),
        (204, "ok"),
        (301, "transient"),
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (408, "transient"),
        (410, "permanent"),
        (425, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
    ],
)
def test_status_codes_are_classified_as_the_retry_policy_says(status: int, verdict: str) -> None:
    assert policy.classify(status) == verdict


def test_retry_after_accepts_seconds_fractions_and_http_dates_and_caps_them() -> None:
    assert policy.parse_retry_after("120", START) == timedelta(seconds=120)
    assert policy.parse_retry_after("1.5", START) == timedelta(seconds=1.5)
    date = format_datetime(START + timedelta(minutes=2), usegmt=True)
    assert policy.parse_retry_after(date, START) == timedelta(minutes=2)
    assert policy.parse_retry_after("999999", START) == policy.RETRY_AFTER_MAX
    assert policy.parse_retry_after("soon", START) is None
    assert policy.parse_retry_after("-5", START) is None
    assert policy.parse_retry_after(None, START) is None


def test_backoff_is_full_jitter_below_an_exponential_cap() -> None:
    rng = random.Random(3)
    for attempt in range(1, 20):
        ceiling = min(2 ** (attempt - 1), 30)
        delays = [policy.backoff(attempt, rng).total_seconds() for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
    late = [policy.backoff(30, rng).total_seconds() for _ in range(200)]
    assert max(late) > 20  # reaches towards the 30 s cap, jittered
    assert max(late) <= 30


async def test_path_reported_failing_after_five_minutes_even_below_fail_after(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    rx.default = Reply(500)
    enqueue(store, "hook", [("ev-1", "fp1")])
    calls: list[tuple[str, bool, str]] = []
    w = worker(
        hook(rx.url, fail_after=1000), db, clock, session, on_path_health=lambda *a: calls.append(a)
    )
    await drain(w, clock, START + timedelta(minutes=4, seconds=59))
    assert calls == []
    await drain(w, clock, START + timedelta(minutes=12))
    assert [c[:2] for c in calls] == [("hook", True)]


async def test_pagerduty_resolves_are_never_folded_into_a_digest(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    enqueue(store, "pd", [(f"t{i}", f"fp{i}") for i in range(5)])
    enqueue(store, "pd", [(f"r{i}", f"fq{i}", "resolved") for i in range(3)])
    wh = WebhookConfig(name="pd", url=rx.url, format="pagerduty", routing_key="k", rate=2)
    w = worker(wh, db, clock, session)
    await w.run_once()
    first = rx.bodies()
    assert first[0]["event_action"] == "trigger"
    # the digest is informational: a change event (pages nobody, nothing left to resolve)
    assert rx.received[1].path == "/v2/change/enqueue" and "event_action" not in first[1]
    assert first[1]["payload"]["summary"].startswith("detector-digest on db1: 4 more alerts")
    await drain(w, clock, START + timedelta(minutes=5))
    resolves = [b["dedup_key"] for b in rx.bodies() if b.get("event_action") == "resolve"]
    assert resolves == ["db1/fq0", "db1/fq1", "db1/fq2"]
    assert {s for s, _ in states(store).values()} == {"delivered"}


async def test_a_payload_that_cannot_render_is_dead_lettered_without_blocking_others(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    bad = OutboxRow("hook", "bad", "fpb", "firing", {"event_id": "bad", "labels": 7}, START)
    store.commit(Commit(outbox=[bad]), START)
    enqueue(store, "hook", [("good", "fpg")])
    w = worker(hook(rx.url), db, clock, session)
    await w.run_once()
    assert states(store) == {"bad": ("dead", 1), "good": ("delivered", 1)}
    assert [r.headers["Idempotency-Key"] for r in rx.received] == ["good"]
    (err,) = store.execute("SELECT last_error FROM outbox WHERE event_id='bad'")
    assert err[0].startswith("cannot render")


async def test_counts_say_apart_what_was_attempted_failed_delivered_and_dead(
    store: Store, db: AsyncStore, rx: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock(START)
    enqueue(store, "hook", [("refused", "fp1"), ("ok1", "fp2"), ("ok2", "fp3")])
    rx.push(Reply(400, "bad payload"))
    counts: dict[str, int] = {}

    def count(metric: str, n: int) -> None:
        counts[metric] = counts.get(metric, 0) + n

    w = worker(hook(rx.url), db, clock, session, on_count=count)
    await w.run_once()
    assert states(store)["refused"][0] == "dead"
    assert counts == {
        "delivery_attempts": 3,
        "delivery_failures": 1,
        "notifications_delivered": 2,
        "dead_letters": 1,
    }
    assert w.stats().delivered == 2 and w.stats().dead == 1
