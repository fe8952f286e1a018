"""The ``ntfy`` format: a JSON publish to the server root (``POST https://ntfy.sh/`` with
``{"topic", "title", "message", "priority", "tags", "click", "actions"}``).

The topic is ``webhook.topic``, or else the last path segment of the configured URL
(``https://ntfy.sh/ops-alerts``), which is then stripped to reach the root; ``detector check``
refuses a webhook with neither. ntfy's limit (https://docs.ntfy.sh/publish/#limitations and
"Attachments": "the message body … limited to 4,096 bytes"; beyond it ntfy turns the message into
an attachment file) is in UTF-8 bytes: the message is cut to :data:`MESSAGE_MAX_BYTES` bytes,
samples first. ntfy shows the message as plain text (we never set ``markdown``), and a zero-width
space inside ``://`` keeps the app from linking URLs out of log text; ``click`` and the "Runbook"
view action are set only for an absolute http(s) runbook, another runbook is a line of the
message. An informational notice gets priority 2 and the ``information_source`` tag whatever its
severity.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from detector.delivery.common import (
    RenderedRequest,
    clip_bytes,
    inert,
    is_info,
    is_resolved,
    runbook_parts,
)
from detector.model import WebhookConfig
from detector.templating import title

MESSAGE_MAX_BYTES = 4096
TITLE_MAX_BYTES = 250
TOPIC_RE = r"[-_A-Za-z0-9]{1,64}"  # ntfy's topic names (server/topic.go)
PRIORITY = {"critical": 5, "error": 4, "warning": 3, "info": 2}
TAG = {
    "critical": "rotating_light",
    "error": "x",
    "warning": "warning",
    "info": "information_source",
}


def split_topic(webhook: WebhookConfig) -> tuple[str, str]:
    """(server root URL, topic). With ``topic:`` set, the URL is the root (a trailing ``/topic``
    on it is dropped); without, the URL's last path segment is the topic."""
    parts = urlsplit(webhook.url)
    path = parts.path.rstrip("/")
    if webhook.topic:
        topic = webhook.topic
        root_path = path[: -len(topic) - 1] if path.endswith("/" + topic) else path
    else:
        root_path, _, topic = path.rpartition("/")
    root = urlunsplit((parts.scheme, parts.netloc, root_path + "/", parts.query, ""))
    return root, topic


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    root, topic = split_topic(webhook)
    severity = str(alert.get("severity"))
    resolved = is_resolved(alert)
    info = is_info(alert)
    message = inert(str(alert.get("description") or alert.get("summary") or ""), markup=False)
    link, note = runbook_parts(alert)
    if note is not None:
        message = f"{message}\nRunbook: {note}"
    lines = [str(x) for x in alert.get("samples") or []]
    if lines:
        room = MESSAGE_MAX_BYTES - len(message.encode()) - 2
        if room > 64:
            message = f"{message}\n\n{clip_bytes(inert(chr(10).join(lines), markup=False), room)}"
    if info:
        priority, tag = 2, TAG["info"]
    elif resolved:
        priority, tag = 2, "white_check_mark"
    else:
        priority, tag = PRIORITY.get(severity, 3), TAG.get(severity, "bell")
    body: dict[str, Any] = {
        "topic": topic,
        "title": clip_bytes(inert(title(alert), markup=False), TITLE_MAX_BYTES),
        "message": clip_bytes(message, MESSAGE_MAX_BYTES),
        "priority": priority,
        "tags": [tag, str(alert.get("rule")), str(alert.get("host"))],
    }
    if link is not None:
        body["click"] = link
        body["actions"] = [{"action": "view", "label": "Runbook", "url": link}]
    return RenderedRequest(url=root, json_body=body)
