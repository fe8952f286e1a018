"""Secrets are never printed: a ``${VAR}`` value that lands in a field that fails validation, an
invalid URL built from one, a long sample cut short, a token in a header — ``detector check``, the
agent's log and the "configuration reload refused" agent alert at a real receiver show the
``${VAR}``, never the value (nor a piece of it)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.clock import FakeClock
from detector.config import ConfigError, parse_config
from detector.config.values import redact
from detector.service import Agent
from tests.agent_inproc import summaries, until
from tests.receiver import Receiver
from tests.test_cli import run

NOW = datetime(2026, 6, 9, 12, 0, tzinfo=UTC)

ENV = {
    "DT_TOKEN": "tok-9f8e7d6c5b4aQQ",  # a header of the good webhook
    "DT_SECRET": "s3cr3t-Zq81-nope",  # lands in fields that fail validation
    "DT_HOOK_URL": "chat.corpnet.lan/hook/Kq7vW2pLx9sT4mZ",  # no scheme: invalid
    "DT_PASS": "pa55-w0rd-Rt6Yh",  # in the netloc of a URL with the wrong scheme
    "DT_SAMPLE": "Xj" * 90,  # a 180-character sample, cut at 120 in its message
}


def leaked(text: str) -> list[str]:
    """Every secret a piece of which (8 characters or more) is in ``text``."""
    return [
        name
        for name, value in ENV.items()
        if any(value[i : i + 8] in text for i in range(len(value) - 7))
    ]


GOOD = """\
version: 1
agent: {{state: "{state}", host: t, fallback: [hook]}}
sources:
  app: {{file: "{log}"}}
webhooks:
  hook:
    url: "{url}"
    headers: {{Authorization: "Bearer ${{DT_TOKEN}}"}}
rules:
  - name: errors
    source: app
    match: 'ERROR'
"""

BAD = (
    GOOD
    + """\
    samples: ["${{DT_SAMPLE}}"]
  - name: more
    source: app
    match: 'WARN'
    severity: "${{DT_SECRET}}"
"""
).replace(
    'headers: {{Authorization: "Bearer ${{DT_TOKEN}}"}}',
    'headers: {{Authorization: "Bearer ${{DT_TOKEN}}"}}\n    rate: "${{DT_SECRET}}"\n'
    '  chat: {{url: "${{DT_HOOK_URL}}"}}\n'
    '  ftp: {{url: "ftp://bot:${{DT_PASS}}@files.example.net/drop"}}',
)


def config(tmp_path: Path, body: str, url: str) -> Path:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(body.format(state=tmp_path / "state.db", log=tmp_path / "app.log", url=url))
    return cfg


def test_the_bad_config_fails_where_the_secrets_are(tmp_path: Path) -> None:
    """The set-up itself: each secret is in a field that is reported."""
    text = BAD.format(state=tmp_path / "s.db", log=tmp_path / "a.log", url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError) as e:
        parse_config(text, "rules.yaml", ENV)
    message = str(e.value)
    assert leaked(message) == []
    assert "webhook 'hook': rate: expected a whole number, got '${DT_SECRET}'" in message
    assert "webhook 'chat': url: expected an http:// or https:// URL, got '${DT_HOOK_URL}'" in (
        message
    )
    assert "got ftp://bot:${DT_PASS}@files.example.net…" in message
    assert "'${DT_SAMPLE}'" in message  # redacted before it was cut at 120 characters
    assert "'${DT_SECRET}' is not allowed" in message  # severity
    assert leaked(f"got '{ENV['DT_PASS'][3:11]}'") == ["DT_PASS"]  # a piece is a leak


def test_detector_check_shows_the_variable_names_never_their_values(tmp_path: Path) -> None:
    cfg = config(tmp_path, BAD, "http://127.0.0.1:9/hook")
    out = run("check", "-c", str(cfg), env=ENV)
    assert out.returncode == 2
    assert leaked(out.stdout + out.stderr) == []
    for name in ("DT_SECRET", "DT_HOOK_URL", "DT_PASS", "DT_SAMPLE"):
        assert "${" + name + "}" in out.stderr


def test_redaction_replaces_longer_values_first_and_leaves_short_ones() -> None:
    used = {"HOST": "db.internal", "URL": "https://db.internal/x", "ON": "on"}
    assert redact("got https://db.internal/x, on db.internal", used) == ("got ${URL}, on ${HOST}")


async def test_a_refused_reload_alert_and_the_agents_log_carry_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "app.log").touch()
    clock = FakeClock(NOW)
    async with Receiver() as rx:
        cfg = config(tmp_path, GOOD, rx.url + "/hook")
        agent = Agent(cfg, clock, env=ENV)
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: hasattr(agent, "pipeline") and agent.state.caught_up)
            config(tmp_path, BAD, rx.url + "/hook")
            agent.request_reload()
            await until(lambda: bool(summaries(rx)), clock, what="the refused-reload alert")
        finally:
            agent.request_stop()
            async with asyncio.timeout(20):
                assert await task == 0
    [(status, summary)] = summaries(rx)
    assert (status, summary) == ("firing", f"configuration reload refused: {cfg} is invalid")
    [request] = rx.received
    assert request.headers["Authorization"] == "Bearer " + ENV["DT_TOKEN"]  # expanded, and sent
    body = request.body.decode()
    assert "${DT_SECRET}" in body and "${DT_HOOK_URL}" in body  # the error, redacted
    assert leaked(body) == []
    refusals = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert refusals and "${DT_PASS}" in refusals[0]
    assert leaked("\n".join(r.getMessage() for r in caplog.records)) == []


def test_detector_check_ok_output_shows_a_source_path_variable_by_name(tmp_path: Path) -> None:
    (tmp_path / "logs-DT_SECRETDIR").mkdir()
    body = GOOD.replace('app: {{file: "{log}"}}', 'app: {{file: "${{DT_LOGDIR}}/app.log"}}')
    cfg = config(tmp_path, body, "http://127.0.0.1:9/hook")
    logdir = str(tmp_path / "logs-DT_SECRETDIR")
    out = run("check", "-c", str(cfg), env={**ENV, "DT_LOGDIR": logdir})
    assert out.returncode == 0, out.stderr
    assert "source app: file ${DT_LOGDIR}/app.log" in out.stdout
    assert logdir not in out.stdout + out.stderr
