"""The ``teams`` format: an Adaptive Card message for a Microsoft Teams Workflows webhook
("Post to a channel when a webhook request is received"): ``{"type": "message", "attachments":
[{"contentType": "application/vnd.microsoft.card.adaptive", "content": <card>}]}``, card version
1.4 (what Teams renders).

Teams' limit (https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/
how-to/connectors-using, "The message size limit is 28 KB"; also Workflows' webhook trigger) is
on the whole request body in bytes, and Teams counts the body as UTF-16 when no charset is given:
the body is sent as ``application/json; charset=utf-8`` and kept within :data:`BODY_MAX_BYTES`
UTF-8 bytes, cutting the samples first, then the description, then the facts. A TextBlock renders
a markdown subset (``**bold**``, ``[text](url)``, lists) and ``<at>…</at>`` is Teams' mention
syntax: text from log lines gets a zero-width space inside each link, markup token and
``<at``
(:func:`~detector.delivery.common.inert`), so it never becomes a link, formatting or a mention.
The runbook is an ``Action.OpenUrl`` only when it is an absolute http(s) URL, else a fact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery.common import (
    CUT,
    ZWSP,
    RenderedRequest,
    clip,
    clip_bytes,
    dumps,
    emoji,
    facts,
    inert,
    is_info,
    is_resolved,
    runbook_parts,
)
from detector.model import WebhookConfig
from detector.templating import title

TEXT_MAX = 8000
SAMPLES_MAX = 8000
FACT_MAX = 500
BODY_MAX_BYTES = 27_000  # under 28 KB with room for the headers Teams may count
CONTENT_TYPE = "application/json; charset=utf-8"
_AT = re.compile(r"(?i)<(/?at\b)")
COLOUR = {"critical": "Attention", "error": "Attention", "warning": "Warning", "info": "Accent"}


def safe(text: str) -> str:
    """Log text as a TextBlock shows it: no link, no markup, no ``<at>`` mention."""
    return _AT.sub("<" + ZWSP + r"\1", inert(text))


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    if is_info(alert):
        colour = "Accent"
    elif is_resolved(alert):
        colour = "Good"
    else:
        colour = COLOUR.get(str(alert.get("severity")), "Default")
    head: dict[str, Any] = {
        "type": "TextBlock",
        "text": clip(f"{emoji(alert)} {safe(title(alert))}", 500),
        "weight": "Bolder",
        "size": "Medium",
        "color": colour,
        "wrap": True,
    }
    description: dict[str, Any] | None = None
    if alert.get("description"):
        description = {
            "type": "TextBlock",
            "text": clip(safe(str(alert["description"])), TEXT_MAX),
            "wrap": True,
        }
    link, note = runbook_parts(alert)
    pairs = facts(alert)
    if note is not None:
        pairs.append(("Runbook", note))
    fact_set: dict[str, Any] = {
        "type": "FactSet",
        "facts": [
            {"title": clip(safe(k), 100), "value": clip(safe(v), FACT_MAX)} for k, v in pairs
        ],
    }
    samples: dict[str, Any] | None = None
    lines = [str(x) for x in alert.get("samples") or []]
    if lines:
        samples = {
            "type": "TextBlock",
            "text": clip(safe("\n".join(lines)), SAMPLES_MAX),
            "fontType": "Monospace",
            "wrap": True,
            "isSubtle": True,
        }
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [],
        "msteams": {"width": "Full"},
    }
    if link is not None:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Runbook", "url": link}]
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

    def fill() -> int:
        blocks = [head, description, fact_set, samples]
        card["body"] = [b for b in blocks if b is not None]
        return len(dumps(message).encode())

    # over the limit: cut the samples, then the description, then the facts (each to what fits)
    for block in (samples, description):
        while block is not None and block["text"] not in ("", CUT):
            over = fill() - BODY_MAX_BYTES
            if over <= 0:
                break
            size = len(block["text"].encode())
            block["text"] = clip_bytes(block["text"], max(size - max(over, size // 8, 4), 0))
    while fill() > BODY_MAX_BYTES and len(fact_set["facts"]) > 1:
        fact_set["facts"].pop()
    return RenderedRequest(url=webhook.url, json_body=message, content_type=CONTENT_TYPE)
