"""End to end under a real systemd: the agent installed as docs/install.md says, run by PID 1.

systemd boots in its own namespaces (tests/systemd_env.py); the package goes into a venv of the
system Python, the unit file in unchanged with a drop-in for the paths and a short watchdog, and
the webhook receiver listens on 127.0.0.1 in this process. One scenario, in the order an operator
lives it: start, an alert, a good reload, a refused reload, a hung process killed by the watchdog
and restarted, the alert about that unclean stop, a clean stop.

Steps that depend on each other are plain asserts; the rest are collected by :class:`Steps` and
reported together at the end, so one run names every promise of the unit that does not hold.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.receiver import Receiver
from tests.systemd_env import (
    Installation,
    SystemdNamespace,
    installation_fixture,
    systemd_ns_fixture,
)

__all__ = ["installation_fixture", "systemd_ns_fixture"]

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

WATCHDOG_S = 5


def rules(url: str, log: str, *, warnings: bool = False) -> str:
    text = textwrap.dedent(
        f"""\
        version: 1
        agent:
          host: systemd-e2e
        webhooks:
          hook: {{url: "{url}", format: json}}
        sources:
          app: {{file: "{log}"}}
        rules:
          - name: app-errors
            source: app
            match: 'ERROR (?P<what>.*)'
            summary: "app error: {{what}}"
        """
    )
    if warnings:
        text += textwrap.indent(
            textwrap.dedent(
                """\
                - name: app-warnings
                  source: app
                  match: 'WARN (?P<what>.*)'
                  group_by: what
                  summary: "app warning: {what}"
                """
            ),
            "  ",
        )
    return text


INVALID = "version: 1\nrules:\n  - name: broken\n    source: nowhere\n    match: 'x'\n"


def alerts(rx: Receiver) -> list[dict[str, Any]]:
    return [alert for body in rx.bodies() for alert in body.get("alerts", [])]


def summaries(rx: Receiver) -> list[str]:
    return [str(a.get("annotations", {}).get("summary", "")) for a in alerts(rx)]


async def until(predicate: Callable[[], bool], within: float, what: str) -> bool:
    """Poll ``predicate`` (it may run systemctl) until it holds or ``within`` s have passed."""
    deadline = time.monotonic() + within
    while True:
        if await asyncio.to_thread(predicate):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


class Steps:
    """Failed checks, collected so that later steps still run; :meth:`done` asserts none."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, ok: bool, what: str, detail: object = "") -> bool:
        if not ok:
            self.failed.append(f"{what}\n    {detail}".rstrip())
        return ok

    def done(self) -> None:
        assert not self.failed, "under systemd:\n- " + "\n- ".join(self.failed)


@pytest.mark.timeout(300)
async def test_install_start_alert_reload_watchdog_restart_stop(
    systemd_ns: SystemdNamespace, installation: Installation
) -> None:
    ns, inst, unit = systemd_ns, installation, installation.unit
    steps = Steps()
    log = inst.root / "log" / "app.log"
    log.write_text("")
    log.chmod(0o644)

    async def sh(*args: str) -> Any:
        return await asyncio.to_thread(ns.systemctl, *args)

    async def show(*props: str) -> dict[str, str]:
        return await asyncio.to_thread(ns.show, unit, *props)

    async def journal(*args: str) -> str:
        done = await asyncio.to_thread(ns.journalctl, "-u", unit, *args)
        return str(done.stdout)

    def append(line: str) -> None:
        with log.open("a") as f:
            f.write(line + "\n")

    async with Receiver() as rx:
        url = rx.url + "/hook"
        inst.write_rules(rules(url, str(log)))
        inst.install_unit(ns, WatchdogSec=f"{WATCHDOG_S}s")
        done = await sh("daemon-reload")
        assert done.returncode == 0, done.stderr
        # docs/install.md: systemctl enable --now (--runtime: the namespace's own /run)
        done = await sh("enable", "--runtime", "--now", unit)
        state = await show("ActiveState", "SubState", "MainPID", "NRestarts", "Type")
        assert done.returncode == 0 and state["ActiveState"] == "active", (
            f"start failed ({done.returncode}): {done.stderr}\n{state}\n"
            + (await sh("status", "-n", "40", unit)).stdout
        )
        assert state["SubState"] == "running" and state["Type"] == "notify", state
        first_pid, restarts = int(state["MainPID"]), int(state["NRestarts"])
        assert first_pid > 0

        # an alert: a matching line reaches the receiver as a webhook POST
        append("2026-12-03T10:00:00Z ERROR disk full on /var")
        got = await until(lambda: "app error: disk full on /var" in summaries(rx), 45, "alert")
        assert got, (rx.bodies(), await journal("-n", "40"))
        assert rx.received[0].method == "POST" and rx.received[0].path == "/hook"

        # reload with a valid changed file: exit 0, and the new rule alerts
        inst.write_rules(rules(url, str(log), warnings=True))
        done = await sh("reload", unit)
        steps.check(done.returncode == 0, "systemctl reload of a valid file exits 0", done.stderr)
        append("2026-12-03T10:01:00Z WARN disk 95% full")
        got = await until(lambda: "app warning: disk 95% full" in summaries(rx), 20, "warning")
        steps.check(got, "after the reload the new rule alerts", summaries(rx))

        # reload with an invalid file: refused, exit non-zero, the error in status and journal
        inst.write_rules(INVALID)
        done = await sh("reload", unit)
        steps.check(
            done.returncode != 0,
            "systemctl reload of an invalid file exits non-zero",
            f"exit {done.returncode}",
        )
        state = await show("ActiveState", "SubState", "MainPID")
        assert state["ActiveState"] == "active" and int(state["MainPID"]) == first_pid, state
        status = (await sh("status", "-n", "30", unit)).stdout
        steps.check("nowhere" in status, "systemctl status shows the reload error", status)
        errors = await journal("-p", "err")
        steps.check("nowhere" in errors, "journalctl -u UNIT -p err has the reload error", errors)
        # the running (second) configuration stays in force
        append("2026-12-03T10:02:00Z WARN still watching")
        got = await until(lambda: "app warning: still watching" in summaries(rx), 20, "old rules")
        steps.check(got, "after a refused reload the running rules still alert", summaries(rx))
        inst.write_rules(rules(url, str(log), warnings=True))  # what the restart will load

        # a hung process: the watchdog kills it, systemd restarts it
        done = await sh("kill", "--kill-who=main", "-s", "SIGSTOP", unit)
        assert done.returncode == 0, done.stderr
        t0 = time.monotonic()

        def restarted() -> bool:
            s = ns.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
            return (
                int(s["NRestarts"]) > restarts
                and int(s["MainPID"]) not in (0, first_pid)
                and (s["ActiveState"], s["SubState"]) == ("active", "running")
            )

        assert await until(restarted, WATCHDOG_S + 40, "restart"), (
            await show("ActiveState", "SubState", "MainPID", "NRestarts", "Result"),
            await journal("-n", "40"),
        )
        assert time.monotonic() - t0 >= WATCHDOG_S - 1  # the watchdog did it, not a crash
        assert "Watchdog timeout" in await journal("-n", "200")

        # the agent tells about the unclean stop (it was killed, it did not stop)
        got = await until(lambda: any("unclean stop" in s for s in summaries(rx)), 30, "unclean")
        steps.check(
            got, "an agent alert with 'unclean stop' arrives after the restart", summaries(rx)
        )
        # ExecStopPost=detector note-stop wrote down what systemd saw, and the alert says it
        steps.check(
            any("(systemd: result 'watchdog'" in s for s in summaries(rx)),
            "the unclean-stop alert names systemd's reason (watchdog)",
            summaries(rx),
        )

        # stop cleanly
        done = await sh("stop", unit)
        state = await show("ActiveState", "Result", "ExecMainStatus")
        assert done.returncode == 0, done.stderr
        assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, (
            state,
            await journal("-n", "30"),
        )
    steps.done()
