"""systemd_units under a real systemd: PID 1 of its own namespaces (tests/systemd_env.py) runs
the agent as installed, and two timer-started oneshots, one failing (``ExecStart=/bin/false``) and
one succeeding (``/bin/true``). The agent reads systemd's own entries from the real journal: the
failing unit raises one alert with result 'exit-code' and status=1 at a receiver on 127.0.0.1,
the succeeding one none, and fixing the unit (``/bin/true``, daemon-reload, start) resolves it.
And ``timers: true``: two timers due at the same minute (``OnCalendar=`` the next minute but one,
``AccuracySec=1s``, ``grace: 15s``), one whose service is masked so that it never starts: the
agent reads both timer files from the namespace's ``/run/systemd/system`` when it loads the rules,
the masked one's window closes 16 s after it opened with no ``Starting`` entry, and its alert
reaches the receiver, the other none; unmasking and starting the service resolves it as late. The
real wait is at most about 2 minutes (the minute boundary: cron windows have minutes, not
seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
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


def rules(url: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        agent:
          host: systemd-units-e2e
        webhooks:
          hook: {{url: "{url}", format: json}}
        sources:
          systemd: {{journald: {{identifiers: [systemd]}}}}
        rules:
          - name: units
            source: systemd
            systemd_units: {{failed: true, units: ['job-*.service']}}
            repeat: never
        """
    )


def oneshot(exec_start: str, what: str) -> str:
    return f"[Unit]\nDescription={what}\n[Service]\nType=oneshot\nExecStart={exec_start}\n"


TIMER = "[Timer]\nOnActiveSec=1s\nAccuracySec=1s\n"


def alerts(rx: Receiver) -> list[dict[str, Any]]:
    return [a for body in rx.bodies() for a in body.get("alerts", [])]


def about(rx: Receiver, unit: str) -> list[dict[str, Any]]:
    return [a for a in alerts(rx) if a.get("labels", {}).get("unit") == unit]


async def until(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


@pytest.mark.timeout(240)
async def test_failed_timer_service_alerts_and_resolves_from_the_real_journal(
    systemd_ns: SystemdNamespace, installation: Installation
) -> None:
    ns, inst = systemd_ns, installation
    units = ns.root / "run" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    (units / "job-bad.service").write_text(oneshot("/bin/false", "Bad job"))
    (units / "job-bad.timer").write_text(TIMER)
    (units / "job-good.service").write_text(oneshot("/bin/true", "Good job"))
    (units / "job-good.timer").write_text(TIMER)

    def ran(unit: str) -> bool:
        s = ns.show(unit, "ExecMainExitTimestampMonotonic", "Result")
        return s.get("ExecMainExitTimestampMonotonic", "0") not in ("", "0")

    async with Receiver() as rx:
        inst.write_rules(rules(rx.url + "/hook"))
        inst.install_unit(ns)
        assert (await asyncio.to_thread(ns.systemctl, "daemon-reload")).returncode == 0
        done = await asyncio.to_thread(ns.systemctl, "start", inst.unit)
        assert done.returncode == 0, (done.stderr, ns.journalctl("-u", inst.unit, "-n", "30"))

        # both timers fire after 1s; their services run once
        for timer in ("job-bad.timer", "job-good.timer"):
            done = await asyncio.to_thread(ns.systemctl, "start", timer)
            assert done.returncode == 0, done.stderr
        assert await until(lambda: ran("job-bad.service") and ran("job-good.service"), 60)

        got = await until(lambda: bool(about(rx, "job-bad.service")), 45)
        journal = ns.journalctl("-u", inst.unit, "-n", "40").stdout
        assert got, (alerts(rx), journal)
        fired = about(rx, "job-bad.service")
        assert [a["status"] for a in fired] == ["firing"], fired
        summary = fired[0]["annotations"]["summary"]
        assert "result 'exit-code'" in summary and "status=1/FAILURE" in summary, summary

        # the fix: /bin/true, daemon-reload, start → the alert resolves
        (units / "job-bad.service").write_text(oneshot("/bin/true", "Bad job, fixed"))
        assert (await asyncio.to_thread(ns.systemctl, "daemon-reload")).returncode == 0
        done = await asyncio.to_thread(ns.systemctl, "start", "job-bad.service")
        assert done.returncode == 0, done.stderr
        got = await until(
            lambda: [a["status"] for a in about(rx, "job-bad.service")] == ["firing", "resolved"],
            45,
        )
        assert got, about(rx, "job-bad.service")
        resolved = about(rx, "job-bad.service")[1]["annotations"]["summary"]
        assert "succeeded" in resolved, resolved
        # the agent read past the good unit's entries long ago: it raised nothing for it
        assert about(rx, "job-good.service") == [], alerts(rx)
        assert [a["labels"].get("unit") for a in alerts(rx)] == ["job-bad.service"] * 2
        await asyncio.to_thread(ns.systemctl, "stop", inst.unit)


TIMER_RULES = """\
version: 1
agent:
  host: systemd-timers-e2e
webhooks:
  hook: {{url: "{url}", format: json}}
sources:
  systemd: {{journald: {{identifiers: [systemd]}}}}
rules:
  - name: units
    source: systemd
    systemd_units: {{failed: false, timers: true, units: ['job-*'], grace: 15s}}
    repeat: never
"""


def timer_due(at: datetime) -> str:
    return f"[Timer]\nOnCalendar=*-*-* {at:%H:%M}:00 UTC\nAccuracySec=1s\n"


def about_timer(rx: Receiver, timer: str) -> list[dict[str, Any]]:
    return [a for a in alerts(rx) if a.get("labels", {}).get("timer") == timer]


@pytest.mark.timeout(300)
async def test_a_timer_whose_service_did_not_run_when_due_alerts_and_its_late_run_resolves(
    systemd_ns: SystemdNamespace, installation: Installation
) -> None:
    ns, inst = systemd_ns, installation
    # the module's other test ran the same unit: start from a fresh state directory
    shutil.rmtree(Path("/var/lib/private") / inst.state_directory, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (Path("/var/lib") / inst.state_directory).unlink()
    units = ns.root / "run" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    # due at the first minute at least 40 s ahead: time to start the agent before it opens
    due = (datetime.now(UTC) + timedelta(seconds=100)).replace(second=0, microsecond=0)
    (units / "job-late.timer").write_text(timer_due(due))
    (units / "job-late.service").write_text(oneshot("/bin/true", "Late job"))
    (units / "job-ontime.timer").write_text(timer_due(due))
    (units / "job-ontime.service").write_text(oneshot("/bin/true", "On time"))
    assert (await asyncio.to_thread(ns.systemctl, "daemon-reload")).returncode == 0
    for timer in ("job-late.timer", "job-ontime.timer"):
        done = await asyncio.to_thread(ns.systemctl, "start", timer)
        assert done.returncode == 0, done.stderr
    # then the late job's service is masked: when its timer elapses, it does not start
    (units / "job-late.service").unlink()
    done = await asyncio.to_thread(ns.systemctl, "mask", "--runtime", "job-late.service")
    assert done.returncode == 0, done.stderr
    assert (await asyncio.to_thread(ns.systemctl, "daemon-reload")).returncode == 0

    async with Receiver() as rx:
        inst.write_rules(TIMER_RULES.format(url=rx.url + "/hook"))
        inst.install_unit(ns)
        assert (await asyncio.to_thread(ns.systemctl, "daemon-reload")).returncode == 0
        done = await asyncio.to_thread(ns.systemctl, "start", inst.unit)
        assert done.returncode == 0, (done.stderr, ns.journalctl("-u", inst.unit, "-n", "30"))
        assert datetime.now(UTC) < due, "the agent started after the window opened"

        # the window opens at `due` and closes 16 s later (AccuracySec=1s + grace: 15s, which
        # leaves the on-time job's entry the time to travel journald → journalctl → agent)
        left = (due - datetime.now(UTC)).total_seconds()
        got = await until(lambda: bool(about_timer(rx, "job-late.timer")), left + 60)
        journal = ns.journalctl("-n", "60").stdout
        assert got, (alerts(rx), journal)
        (fired,) = about_timer(rx, "job-late.timer")
        assert fired["status"] == "firing" and fired["labels"]["unit"] == "job-late.service"
        summary = fired["annotations"]["summary"]
        assert "'Starting job-late.service'" in summary and f"{due:%H:%M}" in summary, summary
        # the other timer's service started in its window: nothing for it
        ontime = ns.show("job-ontime.service", "ExecMainExitTimestampMonotonic")
        assert ontime.get("ExecMainExitTimestampMonotonic", "0") not in ("", "0"), journal
        assert about_timer(rx, "job-ontime.timer") == [], alerts(rx)

        # the late run: unmask, a real service, start it → resolved as late
        assert (
            await asyncio.to_thread(ns.systemctl, "unmask", "--runtime", "job-late.service")
        ).returncode == 0
        (units / "job-late.service").write_text(oneshot("/bin/true", "Late job"))
        assert (await asyncio.to_thread(ns.systemctl, "daemon-reload")).returncode == 0
        done = await asyncio.to_thread(ns.systemctl, "start", "job-late.service")
        assert done.returncode == 0, done.stderr
        got = await until(
            lambda: (
                [a["status"] for a in about_timer(rx, "job-late.timer")] == ["firing", "resolved"]
            ),
            45,
        )
        assert got, about_timer(rx, "job-late.timer")
        resolved = about_timer(rx, "job-late.timer")[1]["annotations"]["summary"]
        assert "late" in resolved, resolved
        units_alerts = [a for a in alerts(rx) if a["labels"].get("rule") == "units"]
        assert [a["labels"].get("timer") for a in units_alerts] == ["job-late.timer"] * 2, alerts(
            rx
        )
        await asyncio.to_thread(ns.systemctl, "stop", inst.unit)
