"""The ``slack`` format: an incoming-webhook message with ``text`` (the notification fallback) and
Block Kit ``blocks`` (header, description, fields, samples, context). :func:`judge` says which of
Slack's answers mean the webhook itself is broken.

Slack's limits (https://api.slack.com/reference/block-kit/blocks, "Fields" of each block; and
https://api.slack.com/reference/surfaces/formatting#escaping): a header's ``plain_text`` at most
150 characters; a section's ``text`` at most 3,000 and its ``fields`` at most 10 of 2,000 each; a
context at most 10 elements; 50 blocks per message; the top-level ``text`` is cut by Slack after
40,000 characters (chat.postMessage "Truncating content"; we keep it to 3,000). Lengths are
counted here in UTF-16 units, which is never less than Slack's character count. Every text field
is escaped FIRST (``&`` ``<`` ``>`` → ``&amp;`` ``&lt;`` ``&gt;``, so ``<!channel>`` or ``<@U1>``
from a log line pings nobody) and clipped AFTER, so escaping can never push it over its limit; a
cut never leaves half an entity. Text from log lines is sent as ``plain_text`` (header, fields,
description) or inside a code block with ``verbatim`` set (samples): never a link or markup. The
runbook is a ``<url|Runbook>`` link only when it is an absolute http(s) URL, else plain text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import (
    CUT,
    RenderedRequest,
    clip_utf16,
    emoji,
    facts,
    inert,
    runbook_parts,
)
from detector.delivery.policy import Answer
from detector.model import WebhookConfig
from detector.templating import title

HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
FIELDS_MAX = 10
TEXT_MAX = 3000  # top-level text (Slack's own cut is at 40,000)
SAMPLE_LINES_MAX = 50
_ENTITY_TAIL = re.compile(r"&[a-z]{0,3}$")
# Slack answers a webhook error with a plain-text code in the body
# (https://api.slack.com/messaging/webhooks#handling_errors): 403 action_prohibited /
# posting_to_general_channel_denied, 404 channel_not_found / no_service / no_team / team_disabled,
# 410 channel_is_archived are the webhook's (policy's default for 401/403/404/410). Among the 400s,
# these are the webhook's too: no message can get through until someone re-creates it.
# ``invalid_token``: the user who made the webhook was deactivated (Healthchecks treats it as
# permanent). The other 400s (invalid_payload, too_many_attachments…) are the message's.
PATH_400 = frozenset({"invalid_token", "no_service_id", "user_not_found"})


def escape(text: str) -> str:
    """Slack's control characters (``<!channel>`` in a log line must not ping anyone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def text(raw: str, limit: int) -> str:
    """``raw`` escaped, then clipped to ``limit`` UTF-16 units without cutting an entity."""
    escaped = escape(raw)
    cut = clip_utf16(escaped, limit)
    if cut == escaped:
        return cut
    body = cut[: -len(CUT)]
    return _ENTITY_TAIL.sub("", body) + CUT


def plain(raw: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": text(inert(raw, markup=False), limit), "emoji": False}


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    head = f"{emoji(alert)} {title(alert)}"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": plain(head, HEADER_MAX)}]
    if alert.get("description"):
        blocks.append({"type": "section", "text": plain(str(alert["description"]), SECTION_MAX)})
    fields = [plain(f"{k}: {v}", FIELD_MAX) for k, v in facts(alert)[:FIELDS_MAX]]
    blocks.append({"type": "section", "fields": fields})
    lines = [str(x) for x in alert.get("samples") or []][:SAMPLE_LINES_MAX]
    if lines:
        samples = "\n".join(lines).replace("```", "ˋˋˋ")
        body = text(samples, SECTION_MAX - 6)
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"```{body}```", "verbatim": True},
            }
        )
    elements: list[dict[str, Any]] = []
    link, note = runbook_parts(alert)
    if link is not None:
        elements.append({"type": "mrkdwn", "text": f"<{escape(link)}|Runbook>", "verbatim": True})
    elif note is not None:
        elements.append(plain(f"Runbook: {note}", FIELD_MAX))
    elements.append(
        plain(f"event {alert.get('event_id')} · fingerprint {alert.get('fingerprint')}", FIELD_MAX)
    )
    blocks.append({"type": "context", "elements": elements})
    return RenderedRequest(
        url=webhook.url,
        json_body={"text": text(inert(head), TEXT_MAX), "blocks": blocks},
    )


def judge(status: int, body: str) -> Answer | None:
    """Slack-specific reading of an answer (None: the policy's default)."""
    if status == 400 and body.strip() in PATH_400:
        return "path"
    return None
