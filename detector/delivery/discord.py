"""The ``discord`` format: an execute-webhook body with ``content`` and one embed, POSTed with
``?wait=true`` and with mentions disabled (``allowed_mentions: {"parse": []}``), so a log line
containing ``@everyone`` pings nobody.

Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits
and .../resources/webhook#execute-webhook): content 2,000 characters; embed title 256,
description 4,096, at most 25 fields with name 256 and value 1,024, footer text 2,048, and 6,000
characters over title, description, field names and values, footer text and author name
together; Discord counts these in UTF-16 code units (JavaScript string length), so an emoji counts
2 — :func:`~detector.delivery.common.clip_utf16` cuts in those units. Without ``wait=true``
Discord answers 204 before it validated the message and drops a failed one silently ("waits for
server confirmation of message send before response … when false a message that is not saved does
not return an error"); with it, a refused message is a 400 the worker sees. The embed ``url`` is
set only to an absolute http(s) runbook (Discord refuses anything else with a 400); another
runbook is a "Runbook" field. Text from log lines gets a zero-width space inside every link or
markdown token (:func:`~detector.delivery.common.inert`); samples go in a code block.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from detector.delivery.common import (
    RenderedRequest,
    clip_utf16,
    colour,
    emoji,
    facts,
    inert,
    runbook_parts,
    utf16_len,
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


SAMPLES_MAX = 1500


def embed_size(embed: Mapping[str, Any]) -> int:
    """UTF-16 units Discord counts against the 6000 limit."""
    n = utf16_len(embed.get("title", "")) + utf16_len(embed.get("description", ""))
    n += utf16_len(embed.get("footer", {}).get("text", ""))
    n += utf16_len(embed.get("author", {}).get("name", ""))
    for f in embed.get("fields", []):
        n += utf16_len(f["name"]) + utf16_len(f["value"])
    return n


def wait_url(url: str) -> str:
    """``url`` with ``wait=true`` in its query (other parameters, e.g. ``thread_id``, kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "wait"]
    query.append(("wait", "true"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    head = inert(title(alert))
    description = inert(str(alert.get("description") or ""))
    lines = [str(x) for x in alert.get("samples") or []]
    if lines:
        samples = clip_utf16("\n".join(lines).replace("```", "ˋˋˋ"), SAMPLES_MAX)
        samples_block = f"```\n{samples}\n```"
        room = DESCRIPTION_MAX - utf16_len(samples_block) - 1
        description = f"{clip_utf16(description, max(room, 0))}\n{samples_block}".lstrip("\n")
    link, note = runbook_parts(alert)
    pairs = facts(alert)
    if note is not None:
        pairs = [("Runbook", note), *pairs]
    fields = [
        {
            "name": clip_utf16(inert(k) or "-", FIELD_NAME_MAX),
            "value": clip_utf16(inert(v) or "-", FIELD_VALUE_MAX),
            "inline": True,
        }
        for k, v in pairs[:FIELDS_MAX]
    ]
    embed: dict[str, Any] = {
        "title": clip_utf16(head, TITLE_MAX),
        "description": clip_utf16(description, DESCRIPTION_MAX),
        "color": colour(alert),
        "fields": fields,
        "footer": {"text": clip_utf16(f"event {alert.get('event_id')}", FOOTER_MAX)},
    }
    if link is not None:
        embed["url"] = link
    if alert.get("last_seen_at"):
        embed["timestamp"] = str(alert["last_seen_at"])
    over = embed_size(embed) - EMBED_TOTAL_MAX
    if over > 0:  # trim the description first, then drop fields from the end
        size = utf16_len(embed["description"])
        embed["description"] = clip_utf16(embed["description"], max(size - over, 0))
        while embed_size(embed) > EMBED_TOTAL_MAX and embed["fields"]:
            embed["fields"].pop()
    body = {
        "content": clip_utf16(f"{emoji(alert)} {head}", CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }
    return RenderedRequest(url=wait_url(webhook.url), json_body=body)
