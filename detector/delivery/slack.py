"""The ``slack`` format: an incoming-webhook message with ``text`` (the notification fallback) and
Block Kit ``blocks`` (header, description, fields, samples, context), within Slack's limits
(header 150 chars, section text 3000, 10 fields of 2000, 50 blocks). :func:`judge` says which of
Slack's answers mean the webhook itself is broken.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import RenderedRequest, clip, emoji, facts, samples_text
from detector.delivery.policy import Answer
from detector.model import WebhookConfig
from detector.templating import title

HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
FIELDS_MAX = 10
# Slack answers a webhook error with a plain-text code in the body
# (https://api.slack.com/messaging/webhooks#handling_errors): 403 action_prohibited /
# posting_to_general_channel_denied, 404 channel_not_found / no_service / no_team / team_disabled,
# 410 channel_is_archived are the webhook's (policy's default for 401/403/404/410). Among the 400s,
# these are the webhook's too: no message can get through until someone re-creates it.
# ``invalid_token``: the user who made the webhook was deactivated (Healthchecks treats it as
# permanent). The other 400s (invalid_payload, too_many_attachments…) are the message's.
PATH_400 = frozenset({"invalid_token", "no_service_id", "user_not_found"})


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


def judge(status: int, body: str) -> Answer | None:
    """Slack-specific reading of an answer (None: the policy's default)."""
    if status == 400 and body.strip() in PATH_400:
        return "path"
    return None
