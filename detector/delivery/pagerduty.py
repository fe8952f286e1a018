"""The ``pagerduty`` format: Events API v2 (``POST https://events.pagerduty.com/v2/enqueue``).

firing/repeat/info → ``trigger``, resolved → ``resolve``, always with ``dedup_key`` = the alert
fingerprint so repeats update one incident and the resolve closes it. Severities map one to one
(critical, error, warning, info). Events over PagerDuty's 512 KB cap are trimmed: samples first,
then evidence, then the description.

Answers (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ "Response codes"):
202 accepted; 400 "Invalid event" is the event's fault — unless its ``errors`` are about the
``routing_key``, which every event of this webhook carries (:func:`judge`: the path's); 429 is
"too many events", retried with backoff (PagerDuty sends no Retry-After); 5xx are retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import RenderedRequest, clip, clip_bytes, dumps
from detector.delivery.policy import Answer
from detector.model import WebhookConfig

MAX_BYTES = 512 * 1024
SUMMARY_MAX = 1024
SEVERITIES = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    routing_key = webhook.routing_key or ""
    dedup_key = str(alert.get("fingerprint"))
    if alert.get("status") == "resolved":
        body: dict[str, Any] = {
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }
        return RenderedRequest(url=webhook.url, json_body=body)
    details: dict[str, Any] = {
        "description": str(alert.get("description") or ""),
        "count": alert.get("count"),
        "first_seen_at": alert.get("first_seen_at"),
        "last_seen_at": alert.get("last_seen_at"),
        "labels": dict(alert.get("labels") or {}),
        "owner": alert.get("owner"),
        "notification": alert.get("notification"),
        "event_id": alert.get("event_id"),
        "samples": list(alert.get("samples") or []),
        "evidence": dict(alert.get("evidence") or {}),
    }
    body = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": clip(
                f"{alert.get('rule')} on {alert.get('host')}: {alert.get('summary')}", SUMMARY_MAX
            ),
            "source": str(alert.get("host")),
            "severity": SEVERITIES.get(str(alert.get("severity")), "error"),
            "timestamp": alert.get("last_seen_at"),
            "component": str(alert.get("source") or ""),
            "group": str(alert.get("rule")),
            "class": str(alert.get("kind")),
            "custom_details": details,
        },
        "client": "detector",
    }
    if alert.get("runbook"):
        body["links"] = [{"href": str(alert["runbook"]), "text": "Runbook"}]
    _fit(body, details)
    return RenderedRequest(url=webhook.url, json_body=body)


def _fit(body: dict[str, Any], details: dict[str, Any]) -> None:
    """Trim in place until the serialized event is within MAX_BYTES."""

    def size() -> int:
        return len(dumps(body).encode())

    while details["samples"] and size() > MAX_BYTES:
        details["samples"].pop()
    if size() > MAX_BYTES:
        details["evidence"] = {"trimmed": True}
    over = size() - MAX_BYTES
    if over > 0:
        text: str = details["description"]
        details["description"] = clip_bytes(text, max(len(text.encode()) - over - 16, 0))


def judge(status: int, body: str) -> Answer | None:
    """PagerDuty-specific reading of an answer (None: the policy's default)."""
    if status == 400 and "routing_key" in body:
        return "path"  # e.g. "Length of 'routing_key' is incorrect": no event can get through
    if status == 400:
        return "row"
    return None
