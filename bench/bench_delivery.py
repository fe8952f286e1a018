"""Delivery benchmark: outbox throughput to a local receiver, and memory with 100,000 queued.

    .venv/bin/python bench/bench_delivery.py [--alerts 5000] [--queued 100000]

1. throughput: N pending rows (distinct fingerprints) drained by one worker to an aiohttp receiver
   on 127.0.0.1 (same process, so the figure includes the receiver's cost) → alerts/s;
2. backlog: 100,000 pending rows in the state file; RSS and tracemalloc peak while the worker
   takes passes over it (rows are read in batches, so memory must not grow with the queue), and
   the cost of one pass (the head-of-fingerprint query runs over the whole queue).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from detector.clock import SystemClock
from detector.delivery.worker import DeliveryWorker
from detector.model import WebhookConfig
from detector.records import Commit, OutboxRow
from detector.store.db import AsyncStore, Store


def snapshot(i: int, now: datetime) -> dict[str, Any]:
    stamp = now.isoformat().replace("+00:00", "Z")
    return {
        "event_id": f"ev-{i}", "fingerprint": f"fp{i}", "notification": "firing",
        "status": "firing", "rule": f"rule-{i % 50}", "kind": "error", "severity": "error",
        "summary": f"something broke #{i}", "description": "a description " * 5,
        "labels": {"host": "db1", "rule": f"rule-{i % 50}", "severity": "error"},
        "owner": None, "runbook": None, "host": "db1", "source": "syslog",
        "first_seen_at": stamp, "last_seen_at": stamp, "resolved_at": None, "count": 1,
        "samples": ["Nov 25 10:00:00 db1 app[123]: ERROR something broke"], "evidence": {},
        "created_at": stamp,
    }  # fmt: skip


def fill(store: Store, n: int, now: datetime) -> None:
    for start in range(0, n, 5000):
        rows = [
            OutboxRow("bench", f"ev-{i}", f"fp{i}", "firing", snapshot(i, now), now)
            for i in range(start, min(n, start + 5000))
        ]
        store.commit(Commit(outbox=rows), now)


async def receiver() -> tuple[web.AppRunner, str, list[int]]:
    hits = [0]

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        hits[0] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/", hits


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def throughput(n: int, tmp: Path) -> None:
    runner, url, hits = await receiver()
    store = Store(tmp / "tp.db")
    fill(store, n, datetime.now(UTC))
    db = AsyncStore(store)
    async with aiohttp.ClientSession() as session:
        w = DeliveryWorker(
            WebhookConfig("bench", url), db, SystemClock(), host="db1", session=session
        )
        t0 = time.perf_counter()
        while w.stats().delivered < n:
            await w.run_once()
        dt = time.perf_counter() - t0
    print(f"throughput: {n} alerts in {dt:.2f}s = {n / dt:,.0f} alerts/s (receiver hits {hits[0]})")
    db.close()
    await runner.cleanup()


async def backlog(n: int, tmp: Path) -> None:
    runner, url, _ = await receiver()
    store = Store(tmp / "backlog.db")
    t0 = time.perf_counter()
    fill(store, n, datetime.now(UTC))
    print(f"backlog: queued {n:,} rows in {time.perf_counter() - t0:.1f}s; RSS {rss_mb():.0f} MB")
    db = AsyncStore(store)
    async with aiohttp.ClientSession() as session:
        w = DeliveryWorker(
            WebhookConfig("bench", url), db, SystemClock(), host="db1", session=session
        )
        passes = 20
        t0 = time.perf_counter()
        for _ in range(passes):
            await w.run_once()
        dt = time.perf_counter() - t0
        tracemalloc.start()  # separately: tracemalloc slows Python down several times
        for _ in range(5):
            await w.run_once()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    s = w.stats()
    print(
        f"backlog: {passes} passes of 100 rows in {dt:.2f}s ({dt / passes * 1000:.0f} ms/pass, "
        f"{passes * 100 / dt:,.0f} alerts/s); queue depth {s.queue_depth:,}; "
        f"tracemalloc peak during a pass {peak / 1e6:.1f} MB; max RSS {rss_mb():.0f} MB"
    )
    db.close()
    await runner.cleanup()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=5000)
    ap.add_argument("--queued", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        await throughput(args.alerts, Path(d))
        await backlog(args.queued, Path(d))


if __name__ == "__main__":
    asyncio.run(main())
