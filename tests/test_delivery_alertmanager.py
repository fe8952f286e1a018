"""The ``alertmanager`` format against a real Prometheus Alertmanager (a subprocess on 127.0.0.1).

Alertmanager is configured to notify our scripted receiver, so the test sees both sides: its API
shows our alert active while firing and drops it once we post it resolved, and its own webhook
notification carries ``status: resolved`` with ``endsAt`` in the past.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from detector.clock import FakeClock
from detector.delivery import alertmanager as alertmanager_fmt
from detector.delivery.worker import DeliveryWorker
from detector.model import WebhookConfig
from detector.records import Commit, OutboxRow
from detector.store import outbox
from detector.store.db import AsyncStore, Store
from tests.limit_receivers import real_alertmanager
from tests.receiver import Receiver

AM_BIN = "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
async def notified() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture
async def alertmanager(tmp_path: Path, notified: Receiver) -> AsyncIterator[str]:
    async with real_alertmanager(tmp_path, f"{notified.url}/am") as url:
        yield url


def snapshot(status: str, first: datetime, resolved: datetime | None) -> dict[str, Any]:
    return {
        "event_id": f"ev-{status}",
        "fingerprint": "fp-am",
        "notification": status,
        "status": status,
        "rule": "backup-silent",
        "kind": "silence",
        "severity": "critical",
        "summary": "backup did not log",
        "description": "no 'backup complete' since 02:00",
        "labels": {"host": "db1", "rule": "backup-silent", "severity": "critical"},
        "owner": "dba",
        "runbook": "https://wiki.example.internal/backup",
        "host": "db1",
        "source": "backups",
        "first_seen_at": iso(first),
        "last_seen_at": iso(first),
        "resolved_at": iso(resolved) if resolved else None,
        "count": 1,
        "samples": [],
        "evidence": {},
        "created_at": iso(first),
    }


async def am_alerts(url: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{url}/api/v2/alerts", timeout=aiohttp.ClientTimeout(5)) as r,
    ):
        data: list[dict[str, Any]] = await r.json()
        return data


async def test_real_alertmanager_receives_firing_then_resolved(
    tmp_path: Path, alertmanager: str, notified: Receiver
) -> None:
    now = datetime.now(UTC)
    clock = FakeClock(now)
    store = Store(tmp_path / "state.db")
    db = AsyncStore(store)
    first = now - timedelta(minutes=3)
    store.commit(
        Commit(
            outbox=[
                OutboxRow(
                    "am", "ev-firing", "fp-am", "firing", snapshot("firing", first, None), now
                )
            ]
        ),
        now,
    )
    wh = WebhookConfig(name="am", url=alertmanager, format="alertmanager")
    async with aiohttp.ClientSession() as session:
        w = DeliveryWorker(wh, db, clock, host="db1", session=session, rng=random.Random(1))
        assert await w.run_once() == 1
        assert w.stats().delivered == 1
        (active,) = await am_alerts(alertmanager)
        assert active["labels"]["alertname"] == "backup-silent"
        assert active["status"]["state"] == "active"
        assert active["annotations"]["runbook_url"] == "https://wiki.example.internal/backup"
        assert active["generatorURL"] == "https://wiki.example.internal/backup"
        assert datetime.fromisoformat(active["endsAt"].replace("Z", "+00:00")) > now

        resolved_at = datetime.now(UTC) - timedelta(seconds=1)
        store.commit(
            Commit(
                outbox=[
                    OutboxRow(
                        "am",
                        "ev-resolved",
                        "fp-am",
                        "resolved",
                        snapshot("resolved", first, resolved_at),
                        resolved_at,
                    )
                ]
            ),
            resolved_at,
        )
        assert await w.run_once() == 1
        assert await am_alerts(alertmanager) == []  # resolved: no longer active

        await notified.wait_for(2, within=15)
        bodies = [r.json() for r in notified.received]
        assert bodies[0]["status"] == "firing"
        assert bodies[-1]["status"] == "resolved"
        ends = bodies[-1]["alerts"][0]["endsAt"]
        assert datetime.fromisoformat(ends.replace("Z", "+00:00")) <= datetime.now(UTC)
    db.close()


def row(event_id: str, fp: str, at: datetime, **over: Any) -> OutboxRow:
    snap = {**snapshot("firing", at, None), "event_id": event_id, "fingerprint": fp, **over}
    snap["labels"] = {**snap["labels"], "fp": fp}
    return OutboxRow("am", event_id, fp, "firing", snap, at)


async def test_a_free_text_runbook_is_accepted_and_a_refused_alert_never_holds_back_the_others(
    tmp_path: Path, alertmanager: str
) -> None:
    """Alertmanager refuses an alert whose start is after its end (400 for the whole list): the
    re-send splits the list, dead-letters that one alert, and keeps refreshing the others."""
    now = datetime.now(UTC)
    clock = FakeClock(now)
    store = Store(tmp_path / "state.db")
    db = AsyncStore(store)
    first = now - timedelta(minutes=3)
    rows = [
        row("ev-a", "fp-a", first, runbook="ask the db team"),
        row("ev-b", "fp-b", first),
        row("ev-bad", "fp-bad", first, first_seen_at=iso(now + timedelta(hours=1))),
        row("ev-c", "fp-c", first),
    ]
    store.commit(Commit(outbox=rows), now)
    # accepted earlier (say by a receiver that did not check): the re-send list holds all four
    ids = [r[0] for r in store.execute("SELECT id FROM outbox ORDER BY id")]
    outbox.mark_delivered(store, ids, now)
    dead: list[tuple[str, str, str]] = []
    wh = WebhookConfig(name="am", url=alertmanager, format="alertmanager")
    async with aiohttp.ClientSession() as session:
        w = DeliveryWorker(
            wh,
            db,
            clock,
            host="db1",
            session=session,
            rng=random.Random(1),
            on_dead_letter=lambda *a: dead.append(a),
        )
        posts = await w.run_once()
        assert posts > 1  # the refused list was split
        assert [d[1] for d in dead] == ["ev-bad"]
        assert "re-send refused: HTTP 400" in dead[0][2]
        states = dict(store.execute("SELECT event_id, state FROM outbox"))
        assert states == {
            "ev-a": "delivered",
            "ev-b": "delivered",
            "ev-bad": "dead",
            "ev-c": "delivered",
        }
        active = {a["labels"]["fp"]: a for a in await am_alerts(alertmanager)}
        assert set(active) == {"fp-a", "fp-b", "fp-c"}
        assert active["fp-a"]["annotations"]["runbook"] == "ask the db team"
        assert "runbook_url" not in active["fp-a"]["annotations"]
        assert active["fp-b"]["generatorURL"] == "https://wiki.example.internal/backup"

        clock.advance(alertmanager_fmt.RESEND_EVERY)
        assert await w.run_once() == 1  # the next re-send leaves the refused alert out
        assert w.stats().attempts == posts + 1
        assert [d[1] for d in dead] == ["ev-bad"]
    db.close()
