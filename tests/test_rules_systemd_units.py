"""systemd_units rules: failed units and timers that did not run when due, on journal records
shaped as systemd 252 writes them (fields and messages copied from a real PID 1's journal), with
time passed in exactly."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.config import ConfigError, parse_config
from detector.matching import Hit
from detector.model import RuleConfig, SystemdTimer, SystemdUnitsSpec
from detector.rules.base import Signal, When
from detector.rules.systemd_units import SystemdUnitsEvaluator, parse_event
from detector.sources.base import Line

T0 = datetime(2026, 1, 10, 1, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
US = timedelta(microseconds=1)

IDS = {
    "starting": "7d4958e842da4a758f6c1cdc7b36dcc5",
    "started": "39f53479d3a045ac8e11786248231fbf",
    "exited": "98e322203f7a4ed290d09fe03c09fe15",
    "failed": "d9b373ed55a64feb8242e02dbe79a49c",
    "success": "7ad2d189f7e94e70a38c781354912448",
}


def entry(what: str, unit: str, message: str, **extra: str) -> dict[str, str]:
    return {
        "MESSAGE": message,
        "MESSAGE_ID": IDS[what],
        "UNIT": unit,
        "_PID": "1",
        "SYSLOG_IDENTIFIER": "systemd",
        **extra,
    }


def failing(unit: str = "bad.service") -> list[dict[str, str]]:
    """A oneshot whose ExecStart=/bin/false, as systemd 252 logs it."""
    return [
        entry("starting", unit, f"Starting {unit} - Bad job...", JOB_TYPE="start"),
        entry(
            "exited",
            unit,
            f"{unit}: Main process exited, code=exited, status=1/FAILURE",
            EXIT_CODE="exited",
            EXIT_STATUS="1",
        ),
        entry("failed", unit, f"{unit}: Failed with result 'exit-code'.", UNIT_RESULT="exit-code"),
    ]


def succeeding(unit: str = "good.service") -> list[dict[str, str]]:
    return [
        entry("starting", unit, f"Starting {unit} - Good job...", JOB_TYPE="start"),
        entry("success", unit, f"{unit}: Deactivated successfully."),
        entry("started", unit, f"Finished {unit} - Good job.", JOB_RESULT="done"),
    ]


def rule(**spec: Any) -> RuleConfig:
    return RuleConfig(
        name="units",
        kind="systemd_units",
        sources=("systemd",),
        match="x",
        systemd_units=SystemdUnitsSpec(**spec),
    )


def feed(ev: SystemdUnitsEvaluator, at: datetime, *entries: dict[str, str]) -> list[Signal]:
    out: list[Signal] = []
    for e in entries:
        line = Line("systemd", e["MESSAGE"], event_at=at, fields=e)
        out += ev.observe(Hit(0, "units", "match", {}), line, When.exact(at))
    return out


def run_until(ev: SystemdUnitsEvaluator, end: datetime) -> list[Signal]:
    out: list[Signal] = []
    while (at := ev.next_deadline()) is not None and at <= end:
        out += ev.due(at)
    return out


# ---------------------------------------------------------------- failed units


def test_a_failed_unit_fires_once_with_its_result_and_exit_status() -> None:
    ev = SystemdUnitsEvaluator(rule(), T0)
    fired = feed(ev, T0, *failing())
    assert [(s.action, s.key, s.kind) for s in fired] == [("fire", "unit=bad.service", "error")]
    assert fired[0].summary == (
        "units: bad.service failed: result 'exit-code'; main process exited, code=exited, "
        "status=1/FAILURE"
    )
    assert fired[0].labels == {"unit": "bad.service"}
    assert fired[0].evidence["result"] == "exit-code"


def test_a_unit_that_succeeds_raises_nothing() -> None:
    ev = SystemdUnitsEvaluator(rule(), T0)
    assert feed(ev, T0, *succeeding()) == []
    assert ev.next_deadline() is None


def test_the_next_success_resolves_the_failed_unit() -> None:
    ev = SystemdUnitsEvaluator(rule(), T0)
    feed(ev, T0, *failing())
    again = feed(ev, T0 + MIN, *failing())  # fails again: the same alert
    assert [(s.action, s.key) for s in again] == [("fire", "unit=bad.service")]
    done = feed(ev, T0 + 10 * MIN, *succeeding("bad.service"))
    assert [(s.action, s.key) for s in done] == [("resolve", "unit=bad.service")]
    assert done[0].at == T0 + 10 * MIN
    assert done[0].summary == (
        "units unit=bad.service: succeeded at 2026-01-10 01:10 UTC, 10m after it failed "
        "(result 'exit-code'; main process exited, code=exited, status=1/FAILURE)"
    )
    assert feed(ev, T0 + 11 * MIN, *succeeding("bad.service")) == []


def test_a_restarted_long_running_service_resolves_once_up_for_passed() -> None:
    ev = SystemdUnitsEvaluator(rule(up_for=2 * MIN), T0)
    feed(ev, T0, *failing("web.service"))
    started = entry("started", "web.service", "Started web.service.", JOB_RESULT="done")
    assert feed(ev, T0 + MIN, started) == []
    assert ev.next_deadline() == T0 + 3 * MIN
    assert ev.due(T0 + 3 * MIN - US) == []
    done = ev.due(T0 + 3 * MIN)
    assert [(s.action, s.at) for s in done] == [("resolve", T0 + 3 * MIN)]
    # started, but its process exits before up_for: still failing, nothing resolves
    feed(ev, T0 + 4 * MIN, *failing("web.service"))
    feed(ev, T0 + 5 * MIN, started)
    feed(ev, T0 + 6 * MIN, failing("web.service")[1])
    assert run_until(ev, T0 + 60 * MIN) == []


def test_units_and_exclude_choose_the_units_watched() -> None:
    ev = SystemdUnitsEvaluator(rule(units=("*.service",), exclude=("flaky*",)), T0)
    assert feed(ev, T0, *failing("flaky-cache.service")) == []
    assert feed(ev, T0, *failing("home.mount")) == []
    assert len(feed(ev, T0, *failing("db.service"))) == 1


def test_entries_not_from_systemd_are_ignored() -> None:
    ev = SystemdUnitsEvaluator(rule(), T0)
    forged = [{**e, "SYSLOG_IDENTIFIER": "myapp", "_PID": "4242"} for e in failing()]
    assert feed(ev, T0, *forged) == []


def test_a_user_managers_unit_is_its_own_alert() -> None:
    ev = SystemdUnitsEvaluator(rule(), T0)
    user = [
        {k: v for k, v in e.items() if k != "UNIT"}
        | {"USER_UNIT": "sync.service", "_PID": "900", "_UID": "1000"}
        for e in failing("sync.service")
    ]
    fired = feed(ev, T0, *user)
    assert [(s.key, s.labels) for s in fired] == [
        ("unit=sync.service\x1fuser=1000", {"unit": "sync.service", "user": "1000"})
    ]


def test_an_unknown_wording_is_read_from_message_id_and_fields() -> None:
    e = entry("failed", "x.service", "x.service: Kaputt.", UNIT_RESULT="timeout")
    event = parse_event(Line("s", e["MESSAGE"], fields=e))
    assert event is not None and (event.what, event.result) == ("failed", "timeout")


def test_short_iso_and_json_lines_are_read_too() -> None:
    text = "2026-01-10T01:00:00+0000 host systemd[1]: bad.service: Failed with result 'exit-code'."
    event = parse_event(Line("s", text))
    assert event is not None and (event.unit, event.what, event.result) == (
        "bad.service",
        "failed",
        "exit-code",
    )
    exited = parse_event(Line("s", json.dumps(failing()[1])))
    assert exited is not None and (exited.what, exited.code, exited.status) == (
        "exited",
        "exited",
        "1/FAILURE",
    )
    assert parse_event(Line("s", "host sshd[12]: Started session for root")) is None


def test_a_firing_unit_survives_a_restart_and_resolves_after_it() -> None:
    ev = SystemdUnitsEvaluator(rule(), T0)
    feed(ev, T0, *failing())
    rows = ev.state_changes()
    assert "f:unit=bad.service" in rows
    ev2 = SystemdUnitsEvaluator(rule(), T0 + MIN)
    ev2.load_state(rows)
    done = feed(ev2, T0 + 2 * MIN, *succeeding("bad.service"))
    assert [s.action for s in done] == ["resolve"]
    assert ev2.state_changes() == {"f:unit=bad.service": None}


# ---------------------------------------------------------------- timers


def timer_rule(*schedules: SystemdTimer) -> RuleConfig:
    return rule(timers=True, schedules=schedules)


DAILY = SystemdTimer(
    "backup.timer", "backup.service", "OnCalendar=*-*-* 02:00:00", "0 2 * * *", "UTC", 2 * MIN
)
OPEN = datetime(2026, 1, 10, 2, 0, tzinfo=UTC)


def test_a_timer_whose_service_did_not_start_fires_at_the_window_close_exactly() -> None:
    ev = SystemdUnitsEvaluator(timer_rule(DAILY), T0)
    assert ev.next_deadline() == OPEN + 2 * MIN
    assert ev.due(OPEN + 2 * MIN - US) == []
    fired = ev.due(OPEN + 2 * MIN)
    assert [(s.action, s.key, s.kind, s.rule) for s in fired] == [
        ("fire", "timer=backup.timer", "window", "units")
    ]
    assert fired[0].labels["unit"] == "backup.service"
    assert fired[0].summary == (
        "units backup.timer: no 'Starting backup.service' between 02:00 and 02:02 UTC on 2026-01-10"
    )
    late = feed(ev, OPEN + 7 * MIN, *succeeding("backup.service"))
    assert [(s.action, s.key) for s in late] == [("resolve", "timer=backup.timer")]
    assert "5m late" in late[0].summary


def test_a_timer_whose_service_starts_in_its_window_raises_nothing() -> None:
    ev = SystemdUnitsEvaluator(timer_rule(DAILY), T0)
    assert feed(ev, OPEN + 30 * 1_000_000 * US, *succeeding("backup.service")) == []
    assert run_until(ev, OPEN + timedelta(hours=5)) == []
    # a failed run is on time for the window; the failure itself is the unit's alert
    fired = feed(ev, OPEN + timedelta(days=1), *failing("backup.service"))
    assert [s.key for s in fired] == ["unit=backup.service"]
    assert run_until(ev, OPEN + timedelta(days=1, hours=1)) == []


def test_an_interval_timer_fires_when_its_service_is_silent_for_the_period() -> None:
    every = SystemdTimer(
        "poll.timer", "poll.service", "OnUnitActiveSec=15min", every=15 * MIN, grace=2 * MIN
    )
    ev = SystemdUnitsEvaluator(timer_rule(every), T0)
    feed(ev, T0 + MIN, *succeeding("poll.service"))
    assert ev.next_deadline() == T0 + 18 * MIN
    fired = ev.due(T0 + 18 * MIN)
    assert [(s.action, s.key) for s in fired] == [("fire", "timer=poll.timer")]
    assert fired[0].summary.startswith("units poll.timer: poll.service did not start for 17m")
    back = feed(ev, T0 + 20 * MIN, *succeeding("poll.service"))
    assert [s.action for s in back] == ["resolve"]


def test_a_timers_window_state_survives_a_restart() -> None:
    ev = SystemdUnitsEvaluator(timer_rule(DAILY), T0)
    ev.due(OPEN + 2 * MIN)
    rows = ev.state_changes()
    ev2 = SystemdUnitsEvaluator(timer_rule(DAILY), OPEN + 3 * MIN)
    ev2.load_state(rows)
    late = feed(ev2, OPEN + 4 * MIN, *succeeding("backup.service"))
    assert [s.action for s in late] == ["resolve"]


# ---------------------------------------------------------------- rules.yaml


def yaml_text(body: str) -> str:
    return textwrap.dedent(
        """\
        version: 1
        sources:
          systemd: {journald: {identifiers: [systemd]}}
        webhooks:
          hook: {url: "http://127.0.0.1:9/"}
        rules:
        """
    ) + textwrap.indent(textwrap.dedent(body), "  ")


def test_rules_yaml_reads_the_timers_under_root(tmp_path: Path) -> None:
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / "backup.timer").write_text(
        "[Timer]\nOnCalendar=*-*-* 02:00:00 Europe/Berlin\nAccuracySec=1min\n"
        "RandomizedDelaySec=10min\n"
    )
    (units / "poll.timer").write_text("[Timer]\nOnUnitActiveSec=15min\nUnit=poller.service\n")
    cfg = parse_config(
        yaml_text(
            f"""\
            - name: units
              source: systemd
              owner: ops
              runbook: https://wiki.example/units
              systemd_units: {{timers: true, root: "{tmp_path}", exclude: [ignored.service]}}
            """
        )
    )
    spec = cfg.rules[0].systemd_units
    assert cfg.rules[0].kind == "systemd_units" and spec is not None
    assert spec.failed and spec.timers
    assert spec.schedules == (
        SystemdTimer(
            "backup.timer",
            "backup.service",
            "OnCalendar=*-*-* 02:00:00 Europe/Berlin",
            "0 2 * * *",
            "Europe/Berlin",
            timedelta(minutes=12),
        ),
        SystemdTimer(
            "poll.timer",
            "poller.service",
            "OnUnitActiveSec=15min",
            every=15 * MIN,
            grace=2 * MIN,
        ),
    )


def test_rules_yaml_refuses_a_match_and_an_unknown_key() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(
            yaml_text(
                """\
                - name: units
                  source: systemd
                  match: 'Failed'
                  systemd_units: {failed: true, timer: true}
                """
            )
        )
    text = str(e.value)
    assert "remove match:" in text
    assert "'timer'" in text and "timers" in text
