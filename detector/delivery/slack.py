"""The ``slack`` format: an incoming-webhook message with ``text`` (the notification fallback) and
Block Kit ``blocks`` (header, description, fields, samples, context), within Slack's limits
(header 150 chars, section text 3000, 10 fields of 2000, 50 blocks).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import RenderedRequest, clip, emoji, facts, samples_text
from detector.model import WebhookConfig
from detector.templating import title

HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
FIELDS_MAX = 10


def escape(text: str) -> str:
    """Slack mrkdwn control characters (``<!channel>`` in a log line must not ping anyone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    head = f"{emoji(alert)} {title(alert)}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": clip(head, HEADER_MAX)}}
    ]
    if alert.get("description"):
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip(escape(str(alert["description"])), SECTION_MAX),
                },
            }
        )
    fields = [
        {"type": "mrkdwn", "text": clip(f"*{escape(k)}*\n{escape(v)}", FIELD_MAX)}
        for k, v in facts(alert)[:FIELDS_MAX]
    ]
    blocks.append({"type": "section", "fields": fields})
    samples = samples_text(alert, SECTION_MAX - 8)
    if samples:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{escape(samples)}```"}}
        )
    context = f"event `{alert.get('event_id')}` · fingerprint `{alert.get('fingerprint')}`"
    if alert.get("runbook"):
        context = f"<{alert['runbook']}|Runbook> · " + context
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return RenderedRequest(url=webhook.url, json_body={"text": clip(head, 3000), "blocks": blocks})
