"""Health (metrics, problems), the HTTP listener on a real port, the heartbeat, and loop lag."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from detector.clock import FakeClock
from detector.health import Health, loop_lag_monitor
from detector.http import heartbeat_loop, parse_listen, start_http
from detector.sources.base import SourceProblem

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# ---------------------------------------------------------------- a tiny Prometheus text parser

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass
class Family:
    kind: str
    help: str
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def parse_prometheus(text: str) -> dict[str, Family]:
    """Strict parse of text format 0.0.4 as Prometheus reads it; raises AssertionError."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):  # only \n ends a line (not \x1e, \u2028, …)
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in helps, f"duplicate HELP for {name}"
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in {"counter", "gauge", "untyped"}, line
            assert name not in families, f"duplicate TYPE for {name}"
            assert re.fullmatch(_NAME, name)
            families[name] = Family(kind, helps.get(name, ""))
            current = name
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels_text, value = m.groups()
            assert name == current, f"{name} outside its family block"
            labels: list[tuple[str, str]] = []
            pos = 0
            while labels_text and pos < len(labels_text):
                lm = _LABEL.match(labels_text, pos)
                assert lm, f"bad labels in {line!r}"
                raw = lm.group(2)
                labels.append((lm.group(1), re.sub(r"\\[\\\"n]", lambda x: _UNESCAPE[x[0]], raw)))
                pos = lm.end()
            key = tuple(labels)
            assert key not in families[name].samples, f"duplicate series {line!r}"
            families[name].samples[key] = float(value)
    return families


# ---------------------------------------------------------------- Health


def test_counters_and_gauges_render_with_help_type_and_labels() -> None:
    clock = FakeClock(T0)
    health = Health(clock, version="1.2.3")
    health.inc("lines_read", 120, source="syslog")
    health.inc("lines_read", 5, source="syslog")
    health.inc("lines_matched", 3, rule="ssh-bruteforce")
    health.inc("alerts", kind="threshold", state="firing")
    health.inc("delivery_attempts", 2, webhook="ops")
    health.inc("delivery_failures", webhook="ops")
    health.set_time("last_event_at", T0 - timedelta(seconds=30), source="syslog")
    health.set_gauge("loop_lag_seconds", 0.25)

    families = parse_prometheus(health.render_prometheus())

    read = families["detector_lines_read_total"]
    assert read.kind == "counter"
    assert read.help == "Lines read from a source."
    assert read.samples == {(("source", "syslog"),): 125.0}
    assert families["detector_lines_matched_total"].samples == {(("rule", "ssh-bruteforce"),): 3}
    assert families["detector_alerts_total"].samples == {
        (("kind", "threshold"), ("state", "firing")): 1
    }
    assert families["detector_delivery_failures_total"].samples == {(("webhook", "ops"),): 1}
    assert families["detector_last_event_timestamp_seconds"].samples == {
        (("source", "syslog"),): T0.timestamp() - 30
    }
    assert families["detector_loop_lag_seconds"].kind == "gauge"
    assert families["detector_loop_lag_seconds"].samples == {(): 0.25}
    assert families["detector_healthy"].samples == {(): 1}
    assert families["detector_build_info"].samples == {(("version", "1.2.3"),): 1}
    assert all(name.endswith("_total") for name, f in families.items() if f.kind == "counter")


def test_outbox_oldest_age_is_computed_from_the_clock_at_scrape_time() -> None:
    clock = FakeClock(T0)
    health = Health(clock)
    health.set_outbox("ops", depth=4, oldest_at=T0 - timedelta(minutes=2))
    health.set_outbox("pager", depth=0, oldest_at=None)
    clock.advance(timedelta(seconds=30))

    families = parse_prometheus(health.render_prometheus())

    assert families["detector_outbox_depth"].samples == {
        (("webhook", "ops"),): 4,
        (("webhook", "pager"),): 0,
    }
    assert families["detector_outbox_oldest_age_seconds"].samples == {
        (("webhook", "ops"),): 150.0,
        (("webhook", "pager"),): 0.0,
    }


@given(st.text(min_size=1, max_size=30))
def test_any_label_value_survives_escaping(name: str) -> None:
    health = Health(FakeClock(T0))
    health.inc("lines_read", 7, source=name)
    families = parse_prometheus(health.render_prometheus())
    assert families["detector_lines_read_total"].samples == {(("source", name),): 7}


def test_metric_misuse_is_refused() -> None:
    health = Health(FakeClock(T0))
    with pytest.raises(ValueError, match="labels"):
        health.inc("lines_read", 1, rule="x")
    with pytest.raises(ValueError, match="gauge"):
        health.inc("outbox_depth", 1, webhook="ops")
    with pytest.raises(ValueError, match="cannot go down"):
        health.inc("lines_read", -1, source="x")


def test_forget_drops_the_series_of_a_removed_source() -> None:
    health = Health(FakeClock(T0))
    health.inc("lines_read", 1, source="old")
    health.inc("lines_read", 1, source="kept")
    health.forget("source", "old")
    samples = parse_prometheus(health.render_prometheus())["detector_lines_read_total"].samples
    assert samples == {(("source", "kept"),): 1}


def test_problems_make_the_agent_unhealthy_until_cleared() -> None:
    clock = FakeClock(T0)
    health = Health(clock)
    assert health.healthy() and health.live()
    assert health.set_problem("webhook/ops", "delivery", "ops: HTTP 500 (5 attempts)") is True
    clock.advance(timedelta(minutes=1))
    assert health.set_problem("webhook/ops", "delivery", "ops: HTTP 500 (6 attempts)") is False
    assert not health.healthy()
    assert health.live()  # a failing webhook is no reason for a watchdog restart
    assert health.reasons() == ["delivery: ops: HTTP 500 (6 attempts)"]
    assert health.problems()[0].since_at == T0  # first raised, not last updated
    assert health.clear_problem("webhook/ops") is True
    assert health.clear_problem("webhook/ops") is False
    assert health.healthy()


def test_source_problems_are_mirrored_and_cleared() -> None:
    health = Health(FakeClock(T0))
    assert health.apply_source_problem(
        SourceProblem("journal", "journalctl", "journalctl exited 1 three times in a minute")
    )
    assert health.reasons() == [
        "source: journal: journalctl exited 1 three times in a minute",
    ]
    assert not health.apply_source_problem(
        SourceProblem("journal", "journalctl", "journalctl exited 1 three times in a minute")
    )
    assert health.apply_source_problem(SourceProblem("journal", "journalctl", "", active=False))
    assert health.healthy()


def test_status_json_groups_metrics_by_source_rule_and_webhook() -> None:
    clock = FakeClock(T0)
    health = Health(clock)
    health.inc("lines_read", 10, source="syslog")
    health.inc("truncated_lines", 1, source="syslog")
    health.set_time("last_event_at", T0, source="syslog")
    health.inc("lines_matched", 2, rule="app-alive")
    health.inc("notifications_queued", 1, webhook="ops")
    health.set_outbox("ops", 3, T0 - timedelta(seconds=5))
    health.inc("config_reloads", result="refused")
    health.inc("alerts", 2, kind="threshold", state="firing")
    health.inc("alerts", kind="threshold", state="resolved")
    health.set_problem("source/syslog/read", "source", "syslog: permission denied")
    health.add_status_section("sources_detail", lambda: {"syslog": {"offset": 42}})

    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    health.add_status_section("broken", broken)
    clock.advance(timedelta(seconds=10))

    status = health.status_json()

    assert status["status"] == "degraded"
    assert status["uptime_seconds"] == 10.0
    assert status["reasons"] == ["source: syslog: permission denied"]
    assert status["problems"][0]["since_at"] == T0.isoformat()
    assert status["sources"]["syslog"] == {
        "lines_read": 10,
        "truncated_lines": 1,
        "last_event_at": T0.isoformat(),
    }
    assert status["rules"]["app-alive"] == {"lines_matched": 2}
    assert status["webhooks"]["ops"] == {
        "notifications_queued": 1,
        "outbox_depth": 3,
        "outbox_oldest_age_seconds": 15.0,
    }
    assert status["config_reloads"] == {"refused": 1}
    assert status["alerts"] == {"threshold": {"firing": 2, "resolved": 1}}
    assert status["sources_detail"] == {"syslog": {"offset": 42}}
    assert status["broken"] == {"error": "RuntimeError: boom"}


# ---------------------------------------------------------------- HTTP listener


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9465", ("127.0.0.1", 9465)),
        (":9465", ("127.0.0.1", 9465)),
        ("9465", ("127.0.0.1", 9465)),
        ("[::1]:9465", ("::1", 9465)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_listen_address_defaults_to_loopback(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:http", "1.2.3.4:70000", "[::1]9465"])
def test_bad_listen_address_is_refused_with_a_message(listen: str) -> None:
    with pytest.raises(ValueError, match="listen"):
        parse_listen(listen)


Served = tuple[Health, FakeClock, str]


@contextlib.asynccontextmanager
async def serving(token: str | None = None) -> AsyncIterator[Served]:
    clock = FakeClock(T0)
    health = Health(clock)
    runner = await start_http(health, "127.0.0.1:0", token)
    host, port = runner.addresses[0][:2]
    try:
        yield health, clock, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


async def test_healthz_is_200_then_503_with_reasons_then_200_when_cleared(
    session: aiohttp.ClientSession,
) -> None:
    async with serving() as (health, _, base):
        async with session.get(f"{base}/healthz") as r:
            assert (r.status, await r.text()) == (200, "ok\n")

        health.set_problem("source/nginx/read", "source", "nginx: /var/log/nginx: not readable")
        health.set_problem("loop-lag", "loop", "event loop stalled for 7.0s (limit 5s)")
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 503
            assert await r.json() == {
                "status": "degraded",
                "reasons": [
                    "loop: event loop stalled for 7.0s (limit 5s)",
                    "source: nginx: /var/log/nginx: not readable",
                ],
            }

        health.clear_problem("source/nginx/read")
        health.clear_problem("loop-lag")
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200


async def test_metrics_endpoint_serves_parsable_prometheus_text(
    session: aiohttp.ClientSession,
) -> None:
    async with serving() as (health, _, base):
        health.inc("lines_read", 3, source='we"ird\\name')
        health.set_problem("x", "delivery", "ops failing")
        async with session.get(f"{base}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            families = parse_prometheus(await r.text())
    assert families["detector_lines_read_total"].samples == {(("source", 'we"ird\\name'),): 3}
    assert families["detector_healthy"].samples == {(): 0}
    assert families["detector_problems"].samples == {(("component", "delivery"),): 1}


async def test_status_endpoint_serves_the_json_snapshot(session: aiohttp.ClientSession) -> None:
    async with serving() as (health, _, base):
        health.inc("lines_read", 9, source="syslog")
        async with session.get(f"{base}/status") as r:
            assert r.status == 200
            body = await r.json()
    assert body["status"] == "ok"
    assert body["sources"] == {"syslog": {"lines_read": 9}}


async def test_bearer_token_is_required_on_every_path_when_set(
    session: aiohttp.ClientSession,
) -> None:
    async with serving(token="s3cret") as (_, _, base):
        for path in ("/healthz", "/metrics", "/status"):
            async with session.get(base + path) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with session.get(base + path, headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
            async with session.get(base + path, headers={"Authorization": "s3cret"}) as r:
                assert r.status == 401
            async with session.get(base + path, headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200


async def test_a_busy_port_raises_oserror() -> None:
    async with serving() as (health, _, base):
        port = base.rsplit(":", 1)[1]
        with pytest.raises(OSError):
            await start_http(health, f"127.0.0.1:{port}", None)


async def test_status_survives_values_json_cannot_encode(session: aiohttp.ClientSession) -> None:
    async with serving() as (health, _, base):
        health.add_status_section("detail", lambda: {"opened_at": T0})
        async with session.get(f"{base}/status") as r:
            assert r.status == 200
            assert (await r.json())["detail"] == {"opened_at": str(T0)}


async def test_without_a_token_no_authorization_is_needed(session: aiohttp.ClientSession) -> None:
    async with serving(token=None) as (_, _, base), session.get(f"{base}/metrics") as r:
        assert r.status == 200


# ---------------------------------------------------------------- heartbeat


@dataclass
class Receiver:
    url: str
    hits: list[str]
    answer: list[int]  # status to answer; [] → 200


@contextlib.asynccontextmanager
async def receiver(hang: bool = False) -> AsyncIterator[Receiver]:
    hits: list[str] = []
    answer: list[int] = []

    async def ping(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        if hang:
            await asyncio.sleep(30)
        return web.Response(status=answer[0] if answer else 200, text="OK")

    app = web.Application()
    app.router.add_get("/ping/{uuid}", ping)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Receiver(f"http://{host}:{port}/ping/abc-123", hits, answer)
    finally:
        await runner.cleanup()


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled(), "the loop must only end by cancellation, never by an exception"


async def test_heartbeat_pings_while_healthy_pauses_while_unhealthy_and_resumes(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock(T0)
    health = Health(clock)
    every = timedelta(minutes=1)
    async with receiver() as rx:
        task = asyncio.create_task(heartbeat_loop(rx.url, every, health, clock, session))
        try:
            await eventually(lambda: health.value("heartbeats", result="sent") == 1)
            assert rx.hits == ["/ping/abc-123"]  # at once on start

            clock.advance(every)
            await eventually(lambda: health.value("heartbeats", result="sent") == 2)

            health.set_problem("webhook/ops", "delivery", "ops failing")
            clock.advance(every)
            await eventually(lambda: health.value("heartbeats", result="skipped_unhealthy") == 1)
            clock.advance(every)
            await eventually(lambda: health.value("heartbeats", result="skipped_unhealthy") == 2)
            assert len(rx.hits) == 2

            health.clear_problem("webhook/ops")
            clock.advance(every)
            await eventually(lambda: health.value("heartbeats", result="sent") == 3)
            assert len(rx.hits) == 3
        finally:
            await stop(task)


async def test_heartbeat_failures_are_counted_and_logged_never_raised(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    health = Health(clock)
    every = timedelta(minutes=1)
    async with receiver() as rx:
        rx.answer.append(500)
        task = asyncio.create_task(heartbeat_loop(rx.url, every, health, clock, session))
        try:
            await eventually(lambda: health.value("heartbeats", result="failed") == 1)
            rx.answer.clear()
            clock.advance(every)
            await eventually(lambda: health.value("heartbeats", result="sent") == 1)
        finally:
            await stop(task)
    assert "answered HTTP 500" in caplog.text
    assert "abc-123" not in caplog.text  # the check's secret part of the URL is never logged


async def test_heartbeat_to_a_hanging_receiver_times_out(session: aiohttp.ClientSession) -> None:
    clock = FakeClock(T0)
    health = Health(clock)
    async with receiver(hang=True) as rx:
        task = asyncio.create_task(
            heartbeat_loop(
                rx.url,
                timedelta(minutes=1),
                health,
                clock,
                session,
                request_timeout=timedelta(seconds=0.2),
            )
        )
        try:
            await eventually(lambda: health.value("heartbeats", result="failed") == 1)
        finally:
            await stop(task)


async def test_heartbeat_to_a_closed_port_is_a_failure_not_a_crash(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock(T0)
    health = Health(clock)
    async with receiver() as rx:
        url = rx.url
    task = asyncio.create_task(heartbeat_loop(url, timedelta(minutes=1), health, clock, session))
    try:
        await eventually(lambda: health.value("heartbeats", result="failed") == 1)
    finally:
        await stop(task)


# ---------------------------------------------------------------- loop lag


async def test_loop_lag_above_threshold_raises_a_problem_that_clears_after_hold() -> None:
    health = Health(FakeClock(T0))
    task = asyncio.create_task(
        loop_lag_monitor(
            health,
            interval=timedelta(seconds=0.02),
            threshold=timedelta(seconds=0.2),
            hold=timedelta(seconds=0.2),
        )
    )
    try:
        reading = re.compile(r"^detector_loop_lag_seconds ", re.M)
        await eventually(lambda: reading.search(health.render_prometheus()) is not None)
        assert health.healthy()
        time.sleep(0.4)  # the point: block the event loop
        await eventually(lambda: not health.healthy(), within=1)
        assert health.value("loop_lag_seconds") >= 0.2
        assert re.fullmatch(
            r"loop: event loop stalled for \d+\.\ds \(limit 0\.2s\)", health.reasons()[0]
        )
        assert health.live()  # lag is reported; the systemd watchdog handles real hangs
        await eventually(health.healthy, within=2)
        assert health.value("loop_lag_seconds") < 0.2
    finally:
        await stop(task)
    assert not math.isnan(health.value("loop_lag_seconds"))
