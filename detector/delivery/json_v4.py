"""The generic ``json`` format: Alertmanager's webhook (version 4) envelope plus ``x_detector``.

Receivers written for Alertmanager's webhook_config parse it unchanged; ``x_detector`` carries what
that envelope has no room for (event id for idempotency, kind, notification, evidence, attempt).
``generatorURL`` is a URL in Alertmanager's schema (https://github.com/prometheus/alertmanager,
api/v2/openapi.yaml, ``generatorURL: {type: string, format: uri}``): it is the runbook only when
that is an absolute http(s) URL (also the ``runbook_url`` annotation), else empty, with the text in
a ``runbook`` annotation. An informational notice (late, too early, ran twice, a digest) is an
event, not a state: it carries the label ``notification="info"`` (so it never shares a
fingerprint with the alert it is about) and is sent ``status: "resolved"`` with ``endsAt`` = its
own time, so a receiver that tracks firing alerts has nothing left open. Text is sent as it is:
this is data, and the receiver decides how to show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import RenderedRequest, is_info, runbook_parts
from detector.model import WebhookConfig

ZERO_TIME = "0001-01-01T00:00:00Z"  # what Alertmanager sends as endsAt of a firing alert


def am_labels(alert: Mapping[str, Any]) -> dict[str, str]:
    """The alert's labels as Alertmanager wants them: strings, with ``alertname`` = rule."""
    labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
    labels["alertname"] = str(alert.get("rule"))
    if is_info(alert):
        labels["notification"] = "info"
    return labels


def am_annotations(alert: Mapping[str, Any]) -> dict[str, str]:
    out = {
        "summary": str(alert.get("summary") or ""),
        "description": str(alert.get("description") or ""),
    }
    link, note = runbook_parts(alert)
    if link is not None:
        out["runbook_url"] = link
    elif note is not None:
        out["runbook"] = note
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
    info = is_info(alert)
    status = "resolved" if info else alert.get("status")
    labels = am_labels(alert)
    if info:
        ends = alert.get("last_seen_at") or alert.get("created_at")
    elif status == "resolved":
        ends = alert.get("resolved_at")
    else:
        ends = ZERO_TIME
    fingerprint = str(alert.get("fingerprint")) + (":info" if info else "")
    entry = {
        "status": status,
        "labels": labels,
        "annotations": am_annotations(alert),
        "startsAt": alert.get("first_seen_at"),
        "endsAt": ends,
        "generatorURL": runbook_parts(alert)[0] or "",
        "fingerprint": fingerprint,
    }
    group_key = f'{{}}:{{alertname="{labels["alertname"]}", fingerprint="{fingerprint}"}}'
    body = {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
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
