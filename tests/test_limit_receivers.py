"""The limit receivers of tests/limit_receivers.py catch what their service refuses or should
never get: each validator against one request the old formats really sent (issue 14), and against
what the formats send today."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from detector.delivery import formats
from tests.limit_receivers import VALIDATORS
from tests.receiver import Received
from tests.test_formats import NOW, alert
from tests.test_formats_limits import hook


def request(path: str, body: Any, query: str = "") -> Received:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Received("POST", path, query, {}, raw)


BAD = [
    # Slack: a header over 150, a `<!channel>` in the top-level text
    (
        "slack",
        request(
            "/",
            {
                "text": "x",
                "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
            },
        ),
        "150",
        True,
    ),
    ("slack", request("/", {"text": "<!channel> disk full"}), "ping", False),
    # Discord: no wait=true (dropped silently), a title over 256 UTF-16 units in emoji, a bad url
    (
        "discord",
        request("/", {"content": "x", "allowed_mentions": {"parse": []}}),
        "wait=true",
        False,
    ),
    (
        "discord",
        request(
            "/", {"embeds": [{"title": "😀" * 129}], "allowed_mentions": {"parse": []}}, "wait=true"
        ),
        "258",
        True,
    ),
    (
        "discord",
        request(
            "/",
            {
                "embeds": [{"title": "t", "url": "ask the db team"}],
                "allowed_mentions": {"parse": []},
            },
            "wait=true",
        ),
        "URL",
        True,
    ),
    ("discord", request("/", {"content": "@everyone"}, "wait=true"), "allowed_mentions", False),
    # Teams: a 70 KB message
    (
        "teams",
        request("/", {"type": "message", "attachments": [], "pad": "x" * 70_000}),
        "28672",
        True,
    ),
    # ntfy: over 4,096 bytes
    ("ntfy", request("/", {"topic": "ops", "message": "é" * 2049}), "4096", True),
    # PagerDuty: a 31-character key, a severity it does not know, a resolve without dedup_key
    (
        "pagerduty",
        request(
            "/v2/enqueue",
            {
                "routing_key": "k" * 31,
                "event_action": "trigger",
                "payload": {"summary": "s", "source": "h", "severity": "error"},
            },
        ),
        "routing_key",
        True,
    ),
    (
        "pagerduty",
        request(
            "/v2/enqueue",
            {
                "routing_key": "k" * 32,
                "event_action": "trigger",
                "payload": {"summary": "s", "source": "h", "severity": "major"},
            },
        ),
        "severity",
        True,
    ),
    (
        "pagerduty",
        request("/v2/enqueue", {"routing_key": "k" * 32, "event_action": "resolve"}),
        "dedup_key",
        True,
    ),
    # Alertmanager and json: a free-text runbook as generatorURL
    (
        "alertmanager",
        request("/api/v2/alerts", [{"labels": {"a": "b"}, "generatorURL": "ask the db team"}]),
        "generatorURL",
        True,
    ),
    ("alertmanager", request("/api/v2/alerts", [{"labels": {}}]), "labels", True),
    ("json", request("/", {"version": "4", "alerts": []}), "alerts", True),
]


@pytest.mark.parametrize(("service", "req", "says", "refused"), BAD)
def test_a_validator_flags_what_its_service_refuses_or_should_never_get(
    service: str, req: Received, says: str, refused: bool
) -> None:
    verdict = VALIDATORS[service](req)
    problems = verdict.refused if refused else verdict.harm
    assert any(says in p for p in problems), (verdict.refused, verdict.harm)
    if not refused:
        assert verdict.refused == []


@pytest.mark.parametrize("service", sorted(VALIDATORS))
def test_what_the_formats_render_passes_its_validator(service: str) -> None:
    a = alert(summary="<!channel> 😀 [click](http://evil.example)", runbook="ask the db team")
    r = formats.render(a, hook(service), attempt=1, now=NOW)
    url = urlsplit(r.url)
    verdict = VALIDATORS[service](request(url.path or "/", r.body(), url.query))
    assert verdict.refused == [] and verdict.harm == []
