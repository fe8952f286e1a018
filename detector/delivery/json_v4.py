"""The generic ``json`` format: Alertmanager's webhook (version 4) envelope plus ``x_detector``.

Receivers written for Alertmanager's webhook_config parse it unchanged; ``x_detector`` carries what
that envelope has no room for (event id for idempotency, kind, notification, evidence, attempt).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import RenderedRequest
from detector.model import WebhookConfig

ZERO_TIME = "0001-01-01T00:00:00Z"  # what Alertmanager sends as endsAt of a firing alert


def am_labels(alert: Mapping[str, Any]) -> dict[str, str]:
    """The alert's labels as Alertmanager wants them: strings, with ``alertname`` = rule."""
    labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
    labels["alertname"] = str(alert.get("rule"))
    return labels


def am_annotations(alert: Mapping[str, Any]) -> dict[str, str]:
    out = {
        "summary": str(alert.get("summary") or ""),
        "description": str(alert.get("description") or ""),
    }
    if alert.get("runbook"):
        out["runbook_url"] = str(alert["runbook"])
    if alert.get("owner"):
        out["owner"] = str(alert["owner"])
    return out


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    resolved = alert.get("status") == "resolved"
    labels = am_labels(alert)
    entry = {
        "status": alert.get("status"),
        "labels": labels,
        "annotations": am_annotations(alert),
        "startsAt": alert.get("first_seen_at"),
        "endsAt": alert.get("resolved_at") if resolved else ZERO_TIME,
        "generatorURL": alert.get("runbook") or "",
        "fingerprint": alert.get("fingerprint"),
    }
    group_key = (
        f'{{}}:{{alertname="{labels["alertname"]}", fingerprint="{alert.get("fingerprint")}"}}'
    )
    body = {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": alert.get("status"),
        "receiver": webhook.name,
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels,
        "commonAnnotations": entry["annotations"],
        "externalURL": "",
        "alerts": [entry],
        "x_detector": {
            "event_id": alert.get("event_id"),
            "kind": alert.get("kind"),
            "notification": alert.get("notification"),
            "count": alert.get("count"),
            "samples": list(alert.get("samples") or []),
            "evidence": dict(alert.get("evidence") or {}),
            "attempt": attempt,
        },
    }
    return RenderedRequest(url=webhook.url, json_body=body)
