"""The agent with a journald source: matching on MESSAGE and fields, silence on journal time."""

from __future__ import annotations

import time
from pathlib import Path

from tests.agent_proc import AgentProcess, config_in
from tests.journald_env import (
    JournaldNamespace,
    journald_fixture,  # noqa: F401  (fixture "journald")
    journald_session_fixture,  # noqa: F401  (fixture "journald_session")
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
