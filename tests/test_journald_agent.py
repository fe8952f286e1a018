"""The agent with a journald source: matching on MESSAGE and fields, silence on journal time, and
a cursor vacuumed away while the agent was down told as a gap with its time span."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from detector.timefmt import format_duration
from detector.timestamps import realtime_at
from tests.agent_proc import AgentProcess, config_in
from tests.journald_env import (
    JournaldNamespace,
    journald_fixture,  # noqa: F401  (fixture "journald")
    journald_session_fixture,  # noqa: F401  (fixture "journald_session")
    private_journald_fixture,  # noqa: F401  (fixture "private_journald")
    unique_tag,
)
from tests.receiver import Receiver

RULES = """\
sources:
  jd:
    journald: {{namespace: "{ns}", match: {{DETECTOR_TEST: "{tag}"}}}}
rules:
  - name: disk-errors
    source: jd
    match: 'disk (?P<state>full|failing)'
    summary: "{{SYSLOG_IDENTIFIER}} on {{_HOSTNAME}}: disk {{state}} (priority {{PRIORITY}})"
  - name: job-alive
    source: jd
    match: 'tick'
    expect: {{every: 2s}}
"""


async def test_agent_alerts_on_journal_entries_with_fields_and_watches_their_silence(
    journald: JournaldNamespace, tmp_path: Path
) -> None:
    tag = unique_tag()

    def send(message: str, **fields: str) -> None:
        journald.send({"MESSAGE": message, "DETECTOR_TEST": tag, **fields})

    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(ns=journald.name, tag=tag), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            send("tick")
            sent = time.monotonic()
            send("disk full on /var", SYSLOG_IDENTIFIER="dfcheck", PRIORITY="3")
            await rx.wait_for(1, within=15)
            first = rx.bodies()[0]["alerts"][0]
            assert first["labels"]["rule"] == "disk-errors"
            summary = first["annotations"]["summary"]
            assert summary.startswith("dfcheck on ") and summary.endswith("disk full (priority 3)")
            # silence: the heartbeat fires 2 s after the journal time of the last tick
            await rx.wait_for(2, within=15)
            silence = rx.bodies()[1]["alerts"][0]
            assert silence["labels"]["rule"] == "job-alive" and silence["status"] == "firing"
            assert time.monotonic() - sent >= 1.9
            send("tick")
            await rx.wait_for(3, within=15)
            assert rx.bodies()[2]["alerts"][0]["status"] == "resolved"
        finally:
            assert await agent.terminate() == 0


GAP_RULES = """\
sources:
  jd:
    journald: {{namespace: "{ns}", match: {{DETECTOR_TEST: "{tag}"}}}}
rules:
  - name: errors
    source: jd
    match: 'ERROR (?P<n>\\d+)'
    group_by: [n]
    repeat: never
"""


def _by_rule(rx: Receiver, rule: str) -> list[dict[str, Any]]:
    """The alerts of ``rule``, each event once (delivery is at least once: a row in flight at a
    stop is sent again, under its event id, by the next start)."""
    seen: dict[str, dict[str, Any]] = {}
    for body in rx.bodies():
        for alert in body["alerts"]:
            if alert["labels"]["rule"] == rule:
                seen.setdefault(body["x_detector"]["event_id"], alert)
    return list(seen.values())


async def test_a_cursor_vacuumed_away_while_the_agent_was_down_is_a_gap_alert_with_its_span(
    private_journald: JournaldNamespace, tmp_path: Path
) -> None:
    ns = private_journald
    tag = unique_tag()

    def send(message: str) -> None:
        ns.send({"MESSAGE": message, "DETECTOR_TEST": tag})

    def entry(message: str) -> dict[str, Any]:
        [found] = [e for e in ns.entries(f"DETECTOR_TEST={tag}") if e["MESSAGE"] == message]
        return found

    async with Receiver() as rx:
        cfg = config_in(tmp_path, GAP_RULES.format(ns=ns.name, tag=tag), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            send("ERROR 1")
            await rx.wait_until(lambda: len(_by_rule(rx, "errors")) == 1, within=15)
        finally:
            assert await agent.terminate() == 0  # its cursor is the entry of ERROR 1
        last_read = realtime_at(int(entry("ERROR 1")["__REALTIME_TIMESTAMP"]))
        assert last_read is not None
        send("ERROR 2")  # written while the agent is down...
        ns.sync()  # stored before the rotation (a datagram: journald stores it when it gets to it)
        ns.rotate()
        send("ERROR 3")
        ns.vacuum_archived()  # ...and vacuumed away with the file that held the cursor
        kept = ns.entries()
        assert [e["MESSAGE"] for e in kept if e.get("DETECTOR_TEST") == tag] == ["ERROR 3"]
        oldest = realtime_at(int(kept[0]["__REALTIME_TIMESTAMP"]))
        assert oldest is not None

        again = await AgentProcess(cfg).start()
        try:
            await rx.wait_until(lambda: len(_by_rule(rx, "detector-agent")) == 1, within=20)
            await rx.wait_until(lambda: len(_by_rule(rx, "errors")) == 2, within=15)
            send("ERROR 4")
            await rx.wait_until(lambda: len(_by_rule(rx, "errors")) == 3, within=15)
        finally:
            assert await again.terminate() == 0
    [gap] = _by_rule(rx, "detector-agent")
    summary = gap["annotations"]["summary"]
    assert gap["status"] == "firing"
    assert summary.startswith("source jd: journald no longer has the stored cursor")
    assert f"reading restarts at the oldest available entry ({oldest.isoformat()})" in summary
    up_to = format_duration(timedelta(seconds=math.ceil((oldest - last_read).total_seconds())))
    assert summary.endswith(
        f"; entries between {last_read.isoformat()} and {oldest.isoformat()} (up to {up_to}) "
        "may be missing"
    )
    assert up_to != "0s"  # an upper bound: a gap under a second is "up to 1s"
    # reading went on at the oldest entry: ERROR 2 is the loss told above, nothing doubled
    assert [a["labels"]["n"] for a in _by_rule(rx, "errors")] == ["1", "3", "4"]


FIELD_RULES = """\
sources:
  jd:
    journald: {{namespace: "{ns}", match: {{DETECTOR_TEST: "{tag}"}}}}
rules:
  - name: myapp-errors
    source: jd
    fields: {{PRIORITY: '^[0-3]$', SYSLOG_IDENTIFIER: '^myapp$'}}
    group_by: [PRIORITY]
    summary: "{{SYSLOG_IDENTIFIER}}[{{_PID}}] priority {{PRIORITY}}: {{MESSAGE}}"
    repeat: never
"""


async def test_a_rule_on_journal_fields_alone_alerts_on_the_entries_whose_fields_match(
    journald: JournaldNamespace, tmp_path: Path
) -> None:
    tag = unique_tag()

    def send(message: str, ident: str, priority: str) -> None:
        journald.send(
            {
                "MESSAGE": message,
                "DETECTOR_TEST": tag,
                "SYSLOG_IDENTIFIER": ident,
                "PRIORITY": priority,
            }
        )

    async with Receiver() as rx:
        cfg = config_in(tmp_path, FIELD_RULES.format(ns=journald.name, tag=tag), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            send("cache warmed", "myapp", "6")  # info: no
            send("disk quota exceeded", "otherapp", "3")  # another identifier: no
            send("payment provider unreachable", "myapp", "3")  # yes
            send("out of memory", "myapp", "2")  # yes, another PRIORITY group
            # the entries that must not match were sent first: they were read before the two
            # that do, so an alert for them would have come by now
            await rx.wait_for(2, within=15)
        finally:
            assert await agent.terminate() == 0
    got = sorted(
        (a["labels"]["PRIORITY"], a["annotations"]["summary"])
        for b in rx.bodies()
        for a in b["alerts"]
    )
    assert [p for p, _ in got] == ["2", "3"]
    assert got[1][1].startswith("myapp[") and got[1][1].endswith(
        "] priority 3: payment provider unreachable"
    )
    pid = got[1][1].split("[", 1)[1].split("]", 1)[0]
    assert pid.isdigit()  # _PID: the journal's own field, of the sender
