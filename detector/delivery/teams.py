"""The ``teams`` format: an Adaptive Card message for a Microsoft Teams Workflows webhook
("Post to a channel when a webhook request is received"): ``{"type": "message", "attachments":
[{"contentType": "application/vnd.microsoft.card.adaptive", "content": <card>}]}``.
Card version 1.4 (what Teams renders); the body is kept under Teams' ~28 KB message limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import (
    RenderedRequest,
    clip,
    emoji,
    facts,
    is_resolved,
    samples_text,
)
from detector.model import WebhookConfig
from detector.templating import title

TEXT_MAX = 8000
SAMPLES_MAX = 8000
COLOUR = {"critical": "Attention", "error": "Attention", "warning": "Warning", "info": "Accent"}


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    colour = "Good" if is_resolved(alert) else COLOUR.get(str(alert.get("severity")), "Default")
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": clip(f"{emoji(alert)} {title(alert)}", 500),
            "weight": "Bolder",
            "size": "Medium",
            "color": colour,
            "wrap": True,
        }
    ]
    if alert.get("description"):
        body.append(
            {"type": "TextBlock", "text": clip(str(alert["description"]), TEXT_MAX), "wrap": True}
        )
    body.append(
        {"type": "FactSet", "facts": [{"title": k, "value": clip(v, 500)} for k, v in facts(alert)]}
    )
    samples = samples_text(alert, SAMPLES_MAX)
    if samples:
        body.append(
            {
                "type": "TextBlock",
                "text": samples,
                "fontType": "Monospace",
                "wrap": True,
                "isSubtle": True,
            }
        )
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "msteams": {"width": "Full"},
    }
    if alert.get("runbook"):
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": "Runbook", "url": str(alert["runbook"])}
        ]
    message = {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }
    return RenderedRequest(url=webhook.url, json_body=message)
