"""systemd_units under a real systemd: PID 1 of its own namespaces (tests/systemd_env.py) runs
the agent as installed, and two timer-started oneshots, one failing (``ExecStart=/bin/false``) and
one succeeding (``/bin/true``). The agent reads systemd's own entries from the real journal: the
failing unit raises one alert with result 'exit-code' and status=1 at a receiver on 127.0.0.1,
the succeeding one none, and fixing the unit (``/bin/true``, daemon-reload, start) resolves it.
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
