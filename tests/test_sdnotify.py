"""sd_notify against a real datagram socket as NOTIFY_SOCKET, and the event-loop watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
import uuid
from pathlib import Path

import pytest

from detector.clock import FakeClock, SystemClock
from detector.health import Health
from detector.sdnotify import Notifier, watchdog_loop


def receive(sock: socket.socket, timeout: float = 2.0) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def drain(sock: socket.socket) -> list[str]:
    """Every datagram already queued, without waiting."""
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_status_and_watchdog_arrive_on_the_notify_socket(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert receive(sock) == "READY=1"
    assert notifier.status("3 sources, 12 rules, outbox 0")
    assert receive(sock) == "STATUS=3 sources, 12 rules, outbox 0"
    assert notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    assert notifier.stopping()
    assert receive(sock) == "STOPPING=1"


def test_ready_can_carry_a_status_line_in_the_same_datagram(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    Notifier({"NOTIFY_SOCKET": path}).ready("watching 3 sources")
    assert receive(sock) == "READY=1\nSTATUS=watching 3 sources"


def test_reloading_sends_monotonic_usec_of_clock_monotonic(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receive(sock).split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_is_folded_to_one_line_and_capped(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("line one\nREADY=1\n  line two")
    assert receive(sock) == "STATUS=line one READY=1 line two"  # no forged READY=1 assignment
    notifier.status("x" * 1000)
    message = receive(sock)
    assert len(message) == len("STATUS=") + 200
    assert message.endswith("…")


def test_abstract_socket_named_with_at_sign_is_reached() -> None:
    name = f"detector-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == "READY=1"


def test_notifier_does_nothing_when_not_run_by_systemd() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_unsupported_notify_socket_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "not supported" in caplog.text


def test_send_to_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING):
        assert notifier.ready() is False
    assert "sd_notify READY failed" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected_seconds"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_comes_from_watchdog_usec_for_our_pid(
    env: dict[str, str], expected_seconds: float | None
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env}, pid=4242)
    interval = notifier.watchdog_interval()
    if expected_seconds is None:
        assert interval is None
    else:
        assert interval is not None
        assert interval.total_seconds() == expected_seconds


async def test_watchdog_loop_returns_at_once_without_a_watchdog(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    await asyncio.wait_for(watchdog_loop(notifier, SystemClock(), lambda: True), timeout=1)
    assert drain(sock) == []


async def pings(sock: socket.socket, n: int, within: float = 5.0) -> list[float]:
    """Arrival times (``time.monotonic``) of the next ``n`` datagrams, each a WATCHDOG=1 ping:
    waits on the socket itself (the loop wakes as each one arrives), at most ``within`` s."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    times: list[float] = []
    async with asyncio.timeout(within):
        while len(times) < n:
            assert (await loop.sock_recv(sock, 4096)).decode() == "WATCHDOG=1"
            times.append(time.monotonic())
    return times


async def test_watchdog_loop_pings_at_half_the_interval(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    # WatchdogSec=0.2s → a ping every 0.1 s.
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    task = asyncio.create_task(watchdog_loop(notifier, SystemClock(), lambda: True))
    try:
        at = await pings(sock, 5)
    finally:
        await stop(task)
    # Ping k is due k periods after the first (a late one never pulls the next forward), so
    # four periods is a floor whatever the load; at the full interval it would take 0.8 s.
    span = at[-1] - at[0]
    assert 0.4 - 0.02 <= span < 0.8, span


async def test_watchdog_loop_with_a_clock_that_never_moves_pings_once_per_period(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    task = asyncio.create_task(watchdog_loop(notifier, FakeClock(), lambda: True))
    try:
        at = await pings(sock, 5)
    finally:
        await stop(task)
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert min(gaps) >= 0.1 - 0.01, gaps  # not a burst, not twice per period
    assert sum(gaps) < 0.8, gaps  # nor once per two periods (or ever slower)


async def test_watchdog_loop_stops_pinging_while_the_event_loop_is_blocked(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    task = asyncio.create_task(watchdog_loop(notifier, SystemClock(), lambda: True))
    try:
        assert await pings(sock, 1), "pings while the loop runs"
        drain(sock)
        time.sleep(0.3)  # the point: a stalled event loop
        assert drain(sock) == [], "a stalled loop must not ping (a thread would)"
        assert await pings(sock, 1), "pings resume when the loop runs again"
    finally:
        await stop(task)


async def test_watchdog_pings_only_while_the_agent_is_live(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    health = Health(FakeClock())
    declined = asyncio.Event()  # set each time the loop asked and the agent was not live

    def live() -> bool:
        if not health.live():
            declined.set()
            return False
        return True

    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    task = asyncio.create_task(watchdog_loop(notifier, SystemClock(), live))
    try:
        health.set_problem("webhook/ops", "delivery", "ops: HTTP 500 five times")
        assert await pings(sock, 1), "a failing webhook must not get the agent restarted"
        health.set_problem("store", "store", "state file writer stuck", fatal=True)
        drain(sock)
        for _ in range(2):  # two rounds of the loop asked, and sent nothing
            async with asyncio.timeout(5):
                await declined.wait()
            declined.clear()
        assert drain(sock) == []
        health.clear_problem("store")
        assert await pings(sock, 1)
    finally:
        await stop(task)
