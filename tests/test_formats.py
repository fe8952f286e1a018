"""Delivery formats: golden payloads per format, vendor limits, templates."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from detector import templating
from detector.delivery import discord, formats, ntfy, pagerduty
from detector.delivery.common import dumps
from detector.model import WEBHOOK_FORMATS, WebhookConfig

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def alert(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "ab12cd34ef567890-3",
        "fingerprint": "ab12cd34ef567890",
        "notification": "firing",
        "status": "firing",
        "rule": "nginx-5xx",
        "kind": "error",
        "severity": "critical",
        "summary": "nginx upstream 10.0.0.7:8080 timing out",
        "description": 'upstream timed out <!channel> "quoted" & more',
        "labels": {
            "host": "db1",
            "source": "nginx",
            "rule": "nginx-5xx",
            "severity": "critical",
            "upstream": "10.0.0.7:8080",
        },
        "owner": "platform-team",
        "runbook": "https://wiki.example.internal/nginx",
        "host": "db1",
        "source": "nginx",
        "first_seen_at": "2026-03-01T11:58:00.000Z",
        "last_seen_at": "2026-03-01T11:59:30.000Z",
        "resolved_at": None,
        "count": 3,
        "samples": ['upstream timed out, upstream: "10.0.0.7:8080"', "line two @everyone"],
        "evidence": {"window": "5m"},
        "created_at": "2026-03-01T12:00:00.000Z",
    }
    base.update(over)
    return base


def resolved() -> dict[str, Any]:
    return alert(notification="resolved", status="resolved", resolved_at="2026-03-01T12:10:00.000Z")


def hook(fmt: str, **over: Any) -> WebhookConfig:
    urls = {
        "ntfy": "https://ntfy.example.internal/ops-alerts",
        "pagerduty": "https://events.pagerduty.com/v2/enqueue",
        "alertmanager": "http://am.example.internal:9093",
    }
    over.setdefault("url", urls.get(fmt, f"https://hooks.example.internal/{fmt}"))
    return WebhookConfig(
        name=f"{fmt}-hook",
        format=fmt,  # type: ignore[arg-type]
        routing_key="R0UTINGKEY" if fmt == "pagerduty" else None,
        **over,
    )


def rendered(fmt: str, a: dict[str, Any]) -> dict[str, Any]:
    r = formats.render(a, hook(fmt), attempt=2, now=NOW)
    return {"url": r.url, "content_type": r.content_type, "body": json.loads(r.body())}


# the HTTP formats; email and exec need their own config (tests/test_delivery_channels.py)
@pytest.mark.parametrize("fmt", [f for f in WEBHOOK_FORMATS if f not in ("email", "exec")])
def test_format_matches_golden_payload(fmt: str) -> None:
    got = {"firing": rendered(fmt, alert()), "resolved": rendered(fmt, resolved())}
    path = GOLDEN / f"{fmt}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert got == json.loads(path.read_text())


def test_every_configurable_format_has_a_renderer() -> None:
    assert set(formats.FORMATS) == set(WEBHOOK_FORMATS)


def test_json_format_is_an_alertmanager_v4_envelope_with_detector_extras() -> None:
    body = rendered("json", alert())["body"]
    assert body["version"] == "4"
    assert body["alerts"][0]["labels"]["alertname"] == "nginx-5xx"
    assert body["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert body["x_detector"]["attempt"] == 2
    assert body["x_detector"]["event_id"] == "ab12cd34ef567890-3"
    assert rendered("json", resolved())["body"]["alerts"][0]["endsAt"] == "2026-03-01T12:10:00.000Z"


def test_slack_escapes_mentions_from_log_text() -> None:
    text = dumps(rendered("slack", alert())["body"])
    assert "<!channel>" not in text
    assert "&lt;!channel&gt;" in text


def test_discord_stays_within_embed_limits_for_huge_alerts() -> None:
    labels = {f"label{i:02d}": "v" * 2000 for i in range(40)}
    big = alert(summary="s" * 5000, description="d" * 10000, labels=labels, samples=["x" * 9000])
    body = formats.render(big, hook("discord"), attempt=1).json_body
    embed = body["embeds"][0]
    assert len(body["content"]) <= 2000
    assert len(embed["title"]) <= 256
    assert len(embed["description"]) <= 4096
    assert len(embed["fields"]) <= 25
    assert all(len(f["name"]) <= 256 and len(f["value"]) <= 1024 for f in embed["fields"])
    assert discord.embed_size(embed) <= 6000
    assert body["allowed_mentions"] == {"parse": []}


def test_pagerduty_trigger_and_resolve_share_host_and_fingerprint_as_dedup_key() -> None:
    trigger = rendered("pagerduty", alert())["body"]
    resolve = rendered("pagerduty", resolved())["body"]
    assert trigger["event_action"] == "trigger"
    assert resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == "db1/ab12cd34ef567890"
    assert trigger["routing_key"] == "R0UTINGKEY"
    assert trigger["payload"]["severity"] == "critical"
    warn = rendered("pagerduty", alert(severity="warning"))["body"]
    assert warn["payload"]["severity"] == "warning"


def test_pagerduty_event_is_trimmed_under_512_kb() -> None:
    huge = alert(samples=["x" * 200_000] * 5, description="d" * 700_000)
    body = formats.render(huge, hook("pagerduty"), attempt=1).body()
    assert len(body) <= pagerduty.MAX_BYTES
    assert json.loads(body)["payload"]["summary"].startswith("nginx-5xx on db1")


def test_ntfy_posts_to_the_server_root_with_the_topic_in_the_body() -> None:
    got = rendered("ntfy", alert())
    assert got["url"] == "https://ntfy.example.internal/"
    assert got["body"]["topic"] == "ops-alerts"
    assert got["body"]["priority"] == 5
    on_root = hook("ntfy", topic="other", url="https://push.example/ntfy")
    assert ntfy.split_topic(on_root) == ("https://push.example/ntfy/", "other")
    same = hook("ntfy", topic="ops-alerts")
    assert ntfy.split_topic(same) == ("https://ntfy.example.internal/", "ops-alerts")
    big = formats.render(alert(description="é" * 10_000), hook("ntfy"), attempt=1)
    assert len(big.json_body["message"].encode()) <= 4096


def test_alertmanager_firing_alert_is_valid_for_four_resend_periods() -> None:
    got = rendered("alertmanager", alert())
    assert got["url"] == "http://am.example.internal:9093/api/v2/alerts"
    (entry,) = got["body"]
    assert entry["endsAt"] == "2026-03-01T12:04:00.000Z"
    (gone,) = rendered("alertmanager", resolved())["body"]
    assert gone["endsAt"] == "2026-03-01T12:10:00.000Z"


def test_template_inserts_json_escaped_values() -> None:
    tpl = '{"text": "$status: $summary", "host": "$label_host", "lines": "$samples_text"}'
    r = formats.render(alert(summary='he said "hi"\n'), hook("json", template=tpl), attempt=1)
    body = json.loads(r.body())
    assert body["text"] == 'firing: he said "hi"\n'
    assert body["host"] == "db1"
    assert body["lines"].count("\n") == 1
    assert r.url == "https://hooks.example.internal/json"


def test_template_problems_are_reported_by_validate() -> None:
    assert templating.validate('{"a": "$summary"}') is None
    assert "unknown placeholder $nope" in (templating.validate('{"a": "$nope"}') or "")
    assert "valid JSON" in (templating.validate('{"a": $summary}') or "")
    assert templating.validate('{"a": "$label_team"}') is None


def test_digest_lists_rules_and_is_capped() -> None:
    alerts = [alert(rule=f"rule-{i}", event_id=f"e{i}") for i in range(37)]
    digest = formats.digest_alert(alerts, "db1", NOW)
    assert digest["summary"].startswith("37 more alerts: rule-0, rule-1")
    assert digest["description"].count("\n- [") == formats.DIGEST_LINES
    assert "… and 17 more" in digest["description"]
    again = formats.digest_alert(alerts, "db1", NOW)
    assert again["event_id"] == digest["event_id"]  # stable idempotency key for a retry
