"""The ``discord`` format: an execute-webhook body with ``content`` and one embed, kept within
Discord's limits (content 2000, embed title 256, description 4096, 25 fields of 256/1024, footer
2048, 6000 characters over the whole embed) and with mentions disabled, so a log line containing
``@everyone`` pings nobody.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import (
    RenderedRequest,
    clip,
    colour,
    emoji,
    facts,
    samples_text,
)
from detector.model import WebhookConfig
from detector.templating import title

CONTENT_MAX = 2000
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELDS_MAX = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
EMBED_TOTAL_MAX = 6000


def embed_size(embed: Mapping[str, Any]) -> int:
    """Characters Discord counts against the 6000 limit."""
    n = len(embed.get("title", "")) + len(embed.get("description", ""))
    n += len(embed.get("footer", {}).get("text", ""))
    for f in embed.get("fields", []):
        n += len(f["name"]) + len(f["value"])
    return n


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    head = title(alert)
    description = str(alert.get("description") or "")
    samples = samples_text(alert, 1500)
    if samples:
        description = f"{description}\n```\n{samples.replace('```', 'ˋˋˋ')}\n```".lstrip("\n")
    fields = [
        {"name": clip(k, FIELD_NAME_MAX), "value": clip(v or "-", FIELD_VALUE_MAX), "inline": True}
        for k, v in facts(alert)[:FIELDS_MAX]
    ]
    embed: dict[str, Any] = {
        "title": clip(head, TITLE_MAX),
        "description": clip(description, DESCRIPTION_MAX),
        "color": colour(alert),
        "fields": fields,
        "footer": {"text": clip(f"event {alert.get('event_id')}", FOOTER_MAX)},
    }
    if alert.get("runbook"):
        embed["url"] = str(alert["runbook"])
    if alert.get("last_seen_at"):
        embed["timestamp"] = str(alert["last_seen_at"])
    over = embed_size(embed) - EMBED_TOTAL_MAX
    if over > 0:  # trim the description first, then drop fields from the end
        embed["description"] = clip(embed["description"], max(len(embed["description"]) - over, 0))
        while embed_size(embed) > EMBED_TOTAL_MAX and embed["fields"]:
            embed["fields"].pop()
    body = {
        "content": clip(f"{emoji(alert)} {head}", CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }
    return RenderedRequest(url=webhook.url, json_body=body)
