"""Never silent, for real: the agent in-process (real files, SQLite, receivers on 127.0.0.1 and a
NOTIFY_SOCKET), only the clock fake. Every way an alert could fail to reach a person reaches one:
a failing webhook beside a healthy one, a state file that cannot be written (at start and while
running), a listen address in use, a stalled loop, a half-saved rules.yaml."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from detector.clock import FakeClock
from detector.problems import RENOTIFY_MIN, Problems
from detector.rules.base import Signal
from detector.sdnotify import Notifier
from detector.selfmon import SelfMonitor
from detector.sources.base import SourceProblem
from detector.store import outbox
from tests.agent_inproc import RULES, agent_alerts, rule_alerts, running, summaries, until
from tests.agent_proc import config_in, free_port, write_config
from tests.receiver import Receiver, Reply

T0 = datetime(2026, 6, 9, 12, 0, tzinfo=UTC)


def pager_and_chat(tmp_path: Path, pager: str, chat: str, extra: str = "") -> Path:
    """rules.yaml with two webhooks, ``pager`` (which the rule notifies) and ``chat``, and no
    fallback: agent alerts about pager must reach chat by themselves."""
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        f"version: 1\nagent: {{state: {tmp_path / 'state.db'}, host: t}}\n"
        f"webhooks:\n  pager: {{url: '{pager}'{extra}}}\n  chat: {{url: '{chat}'}}\n"
        + RULES.format(log=tmp_path / "app.log").replace(
            "repeat: never", "repeat: never\n    notify: [pager]"
        )
    )
    return cfg


def monitor_for(clock: FakeClock, sent: list[Signal]) -> SelfMonitor:
    """A real SelfMonitor and registry, its agent alerts collected in ``sent``."""
    problems = Problems()
    return SelfMonitor(
        problems=problems,
        clock=clock,
        notifier=Notifier({}),
        emit=sent.append,
        status_line=lambda: "",
    )


async def test_a_failing_webhook_is_told_to_the_healthy_one_when_no_fallback_is_set(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    pager_port = free_port()
    clock = FakeClock(T0)
    async with Receiver() as chat:
        cfg = pager_and_chat(
            tmp_path, f"http://127.0.0.1:{pager_port}/in", chat.url + "/chat", ", fail_after: 2"
        )
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            log.write_text("ERROR 1\n")
            await until(lambda: bool(agent_alerts(chat)), clock, what="an agent alert at chat")
            [(status, summary)] = summaries(chat)
            assert status == "firing"
            assert "delivery to pager failing" in summary
            assert not agent.health.healthy()
            async with Receiver(port=pager_port) as pager:
                await until(lambda: bool(rule_alerts(pager)), clock, what="the backlog at pager")
                await until(lambda: len(agent_alerts(chat)) == 2, clock, what="the resolve")
            assert summaries(chat)[1] == ("resolved", "delivery to pager recovered")
            assert rule_alerts(chat) == []  # the rule's own alerts still go only to pager
            await until(agent.health.healthy, what="healthy again")


def datagrams(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_a_state_file_that_cannot_be_opened_leaves_the_agent_up_degraded_until_it_can(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    path, sock = notify_socket
    log = tmp_path / "app.log"
    log.touch()
    blocker = tmp_path / "statedir"
    blocker.write_text("a file where the state directory should be\n")
    listen = free_port()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = write_config(
            tmp_path / "rules.yaml",
            RULES.format(log=log),
            state=blocker / "state.db",
            url=rx.url + "/hook",
            extra_agent=f"listen: 127.0.0.1:{listen}\n",
        )
        notifier = Notifier({"NOTIFY_SOCKET": path})
        async with running(cfg, clock, notifier=notifier) as agent:
            await until(lambda: bool(agent_alerts(rx)), what="the agent alert from memory")
            [(status, summary)] = summaries(rx)
            assert status == "firing" and "state file cannot be written" in summary
            assert agent.health.value("notifications_delivered", webhook="hook") == 1
            sent = "\n".join(datagrams(sock))
            assert "READY=1" in sent  # systemd sees it started: no restart loop into the limit
            assert "STATUS=degraded: state: state file cannot be written" in sent
            import aiohttp

            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{listen}/healthz") as r,
            ):
                assert r.status == 503
                assert "state file" in await r.text()
            # the disk is fixed: within the next retry the agent opens it and runs normally
            blocker.unlink()
            blocker.mkdir()
            await until(lambda: len(agent_alerts(rx)) >= 2, clock, what="the resolve")
            assert summaries(rx)[1][0] == "resolved", summaries(rx)
            await until(lambda: agent.state.caught_up, what="normal start")
            with log.open("a") as f:
                f.write("ERROR 7\n")
            await until(lambda: bool(rule_alerts(rx)), clock, what="a rule alert after recovery")
            assert (blocker / "state.db").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs (the tests run as root, as CI does)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    return filler


async def test_a_full_state_disk_while_running_is_alerted_from_memory_and_nothing_is_lost(
    tmp_path: Path, small_disk: Path
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = write_config(
            tmp_path / "rules.yaml",
            RULES.format(log=log),
            state=small_disk / "state.db",
            url=rx.url + "/hook",
        )
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            filler = fill(small_disk)
            with log.open("a") as f:
                for n in range(200):
                    f.write(f"ERROR {n} " + "x" * 200 + "\n")
            await until(lambda: bool(agent_alerts(rx)), what="the agent alert from memory")
            [(status, summary)] = summaries(rx)
            assert status == "firing" and "state file cannot be written" in summary
            assert summary.endswith(f"(no space left on the file system of {small_disk})")
            assert not agent.health.healthy()
            assert agent.health.live()  # no watchdog restart into the same full disk
            filler.unlink()
            await until(lambda: len(rule_alerts(rx)) >= 200, clock, what="every rule alert")
            await until(lambda: len(agent_alerts(rx)) >= 2, clock, what="the resolve")
        assert sorted({a["labels"]["n"] for a in rule_alerts(rx)}, key=int) == [
            str(n) for n in range(200)
        ]
        assert [s for s, _ in summaries(rx)][:2] == ["firing", "resolved"]


async def test_a_listen_address_in_use_is_a_problem_not_a_crash_and_is_retried(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = config_in(
            tmp_path, RULES.format(log=log), rx.url + "/hook", f"listen: 127.0.0.1:{port}\n"
        )
        async with running(cfg, clock) as agent:
            await until(lambda: bool(agent_alerts(rx)), what="the agent alert")
            [(status, summary)] = summaries(rx)
            assert status == "firing"
            assert summary.startswith(f"cannot listen on 127.0.0.1:{port}: ")
            assert "in use" in summary
            taken.close()
            await until(lambda: len(agent_alerts(rx)) == 2, clock, what="the listener coming up")
            assert summaries(rx)[1] == ("resolved", "listener up")
            await until(agent.health.healthy, what="healthy")


async def test_a_stalled_event_loop_becomes_an_agent_alert(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log), rx.url + "/hook")
        async with running(cfg, clock, loop_lag_limit=timedelta(seconds=0.2)) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            # the stall itself: the loop is blocked, as by a CPU-bound call on its thread
            asyncio.get_running_loop().call_soon(time.sleep, 1.0)
            await until(lambda: bool(agent_alerts(rx)), what="the agent alert")
            [(status, summary)] = summaries(rx)
            assert status == "firing" and "event loop stalled" in summary


async def test_a_half_saved_rules_yaml_fixed_within_the_grace_pages_nobody(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log), rx.url + "/hook")
        good = cfg.read_text()
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            cfg.write_text(good[: len(good) // 2] + "\n  - name: [\n")  # an editor mid-save
            await until(
                lambda: agent.health.value("config_reloads", result="refused") >= 1,
                within=20,
                what="the refused reload",
            )
            assert [p.key for p in agent.problems.pending()] == ["config"]
            assert agent.health.healthy()
            cfg.write_text(good + "# saved\n")
            await until(
                lambda: agent.health.value("config_reloads", result="ok") >= 1,
                within=20,
                what="the good reload",
            )
            clock.advance(timedelta(minutes=5))
            await until(lambda: agent.problems.problems == {}, what="no problem left")
            with log.open("a") as f:
                f.write("ERROR 1\n")
            await until(lambda: bool(rule_alerts(rx)), clock, what="the rule still works")
        assert agent_alerts(rx) == []


async def test_a_rules_yaml_that_stays_invalid_past_the_grace_is_alerted_with_its_error(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log), rx.url + "/hook")
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            cfg.write_text(cfg.read_text().replace("repeat: never", "repaet: never"))
            await until(
                lambda: agent.health.value("config_reloads", result="refused") >= 1,
                within=20,
                what="the refused reload",
            )
            assert agent_alerts(rx) == []
            clock.advance(timedelta(minutes=1))
            await until(lambda: bool(agent_alerts(rx)), what="the agent alert")
            [alert] = agent_alerts(rx)
            assert "configuration reload refused" in alert["annotations"]["summary"]
            assert "repaet" in alert["annotations"]["description"]
            assert not agent.health.healthy()


async def test_a_404_on_a_backlog_of_50_holds_it_alerts_with_the_answer_and_delivers_all_later(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    gone = Reply(404, "no_service")
    async with Receiver(default=gone) as pager, Receiver() as chat:
        cfg = pager_and_chat(tmp_path, pager.url + "/in", chat.url + "/chat")
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            with log.open("a") as f:
                f.writelines(f"ERROR {n}\n" for n in range(50))
            await until(lambda: bool(agent_alerts(chat)), clock, what="an agent alert at chat")
            [(status, summary)] = summaries(chat)
            assert status == "firing"
            assert summary.startswith("delivery to pager failing: HTTP 404")
            assert "no_service" in summary
            assert len(pager.received) < 5, (
                "held as a path, not tried (and dead-lettered) row by row"
            )
            pager.default = Reply(200)  # the token is fixed
            await until(lambda: len(rule_alerts(pager)) >= 50, clock, what="the whole backlog")
            await until(lambda: len(agent_alerts(chat)) == 2, clock, what="the resolve")
            counts = await agent.db.run(outbox.state_counts)
            # /metrics counts each attempt as it happens (no copying of the workers' counters)
            assert agent.health.value("delivery_attempts", webhook="pager") >= 51
            assert agent.health.value("delivery_failures", webhook="pager") >= 1
            assert agent.health.value("dead_letters", webhook="pager") == 0
        assert sorted({a["labels"]["n"] for a in rule_alerts(pager)}, key=int) == [
            str(n) for n in range(50)
        ]
        assert "dead" not in counts.get("pager", {})
        assert summaries(chat)[1] == ("resolved", "delivery to pager recovered")


async def test_a_dead_letter_is_an_agent_alert_naming_the_webhook_and_the_answer(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as pager, Receiver() as chat:
        cfg = pager_and_chat(tmp_path, pager.url + "/in", chat.url + "/chat")
        async with running(cfg, clock) as agent:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            with log.open("a") as f:
                f.write("ERROR 1\n")
            await until(lambda: len(rule_alerts(pager)) == 1, clock, what="the first alert")
            pager.push(Reply(400, "invalid payload"))  # this one row is refused...
            with log.open("a") as f:
                f.write("ERROR 2\nERROR 3\n")  # ...while the next gets through
            await until(lambda: bool(agent_alerts(chat)), clock, what="the dead-letter alert")
            [(status, summary)] = summaries(chat)
            assert status == "firing"
            assert summary.startswith("pager rejected a notification for good: refused: HTTP 400")
            await until(lambda: len(rule_alerts(pager)) >= 2, clock, what="the other row")
            assert agent.health.value("dead_letters", webhook="pager") == 1


def test_a_second_cursor_gap_while_the_first_is_open_notifies_again() -> None:
    clock = FakeClock(T0)
    sent: list[Signal] = []
    monitor = monitor_for(clock, sent)

    def look(occurrence: int, message: str) -> None:
        monitor.sources(
            {"kernel": [SourceProblem("kernel", "cursor-gap", message, True, occurrence)]}
        )
        monitor.flush()

    look(1, "10 entries lost")
    assert [(s.action, s.renotify) for s in sent] == [("fire", False)]  # an event: no grace
    look(1, "10 entries lost")  # the same gap, looked at again
    clock.advance(RENOTIFY_MIN)
    monitor.flush()
    assert len(sent) == 1
    look(2, "another 10 entries lost")  # a new gap while the first alert is open
    clock.advance(RENOTIFY_MIN)
    monitor.flush()
    assert [(s.action, s.renotify) for s in sent] == [("fire", False), ("fire", True)]
    assert sent[1].summary == "source kernel: another 10 entries lost"
    monitor.sources({"kernel": []})  # the notice ends
    monitor.flush()
    assert sent[-1].action == "resolve"


def test_agent_alerts_route_around_a_failing_webhook(tmp_path: Path) -> None:
    from detector.config import load_config

    cfg = pager_and_chat(tmp_path, "http://127.0.0.1:9/p", "http://127.0.0.1:9/c")
    clock = FakeClock(T0)
    sent: list[Signal] = []
    monitor = monitor_for(clock, sent)
    monitor.config = load_config(cfg)
    monitor.path_health("pager", True, "HTTP 503")
    monitor.state_failed("disk full")
    monitor.flush()
    assert [(s.key, s.notify) for s in sent] == [
        ("delivery/pager", ("chat",)),
        ("state", ("chat",)),  # not to pager, which would only hold it
    ]
    monitor.path_health("pager", False, "")
    monitor.listener_failed("127.0.0.1:9465", "Address already in use")
    monitor.flush()
    assert sent[-1].key == "http" and sent[-1].notify == ()  # every webhook: all work again


async def test_a_read_only_state_disk_at_start_is_degraded_not_a_crash_loop(
    tmp_path: Path, small_disk: Path
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = write_config(
            tmp_path / "rules.yaml",
            RULES.format(log=log),
            state=small_disk / "state.db",
            url=rx.url + "/hook",
        )
        async with running(cfg, clock) as agent:  # a first, normal run makes the state file
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        try:
            async with running(cfg, clock) as agent:
                await until(lambda: bool(agent_alerts(rx)), what="the agent alert from memory")
                [(status, summary)] = summaries(rx)
                assert status == "firing" and summary.startswith("state file cannot be written")
                assert summary.endswith("is on a read-only file system)")
                assert not hasattr(agent, "pipeline")  # waiting for the disk, not running blind
                subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
                await until(lambda: len(agent_alerts(rx)) >= 2, clock, what="the resolve")
                await until(lambda: agent.state.caught_up, what="a normal start")
                with log.open("a") as f:
                    f.write("ERROR 5\n")
                await until(lambda: bool(rule_alerts(rx)), clock, what="a rule alert")
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=False)
        assert summaries(rx)[1][0] == "resolved"


async def test_an_agent_alert_left_open_by_a_stop_resolves_after_the_restart_if_gone(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "app.log"
    missing.mkdir()  # a directory where the log should be: unreadable
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=missing), rx.url + "/hook", "source_grace: 1m\n")
        async with running(cfg, clock) as agent:
            await until(lambda: bool(agent.problems.pending()), what="the problem")
            await until(lambda: bool(agent_alerts(rx)), clock, what="the agent alert")
            # stopped only once the delivery is recorded: else the restart rightly sends it again
            async with asyncio.timeout(15):
                while any(
                    set(c) - {"delivered"}
                    for c in (await agent.db.run(outbox.state_counts)).values()
                ):
                    await asyncio.sleep(0.05)
        assert summaries(rx)[0][0] == "firing"
        missing.rmdir()
        missing.touch()  # fixed while the agent was stopped
        async with running(cfg, clock) as agent:
            # the first look at the source finds it fine: resolved then, not left open for ever
            await until(lambda: len(agent_alerts(rx)) == 2, what="the resolve")
        status, summary = summaries(rx)[1]
        assert status == "resolved"
        assert summary == "no longer seen since the agent restarted"


async def test_a_line_written_right_after_ready_is_read_even_with_start_at_end(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    """READY=1 (``systemctl start`` returning) means every source has fixed where it starts: a
    line written at once is read, not skipped as "already there" by ``start_at: end``."""
    path, sock = notify_socket
    log = tmp_path / "app.log"
    log.write_text("ERROR 0 old, before the start: skipped by start_at: end\n")
    clock = FakeClock(T0)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(log=log), rx.url + "/hook")
        async with running(cfg, clock, notifier=Notifier({"NOTIFY_SOCKET": path})) as agent:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(15):
                while "READY=1" not in (await loop.sock_recv(sock, 4096)).decode():
                    pass
            assert all(r.source.opened.is_set() for r in agent.sources.values())
            with log.open("a") as f:
                f.write("ERROR 1 written the moment the agent said it was ready\n")
            await until(lambda: bool(rule_alerts(rx)), clock, what="the alert")
        assert [a["labels"]["n"] for a in rule_alerts(rx)] == ["1"]
