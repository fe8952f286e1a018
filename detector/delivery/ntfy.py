"""The ``ntfy`` format: a JSON publish to the server root (``POST https://ntfy.sh/`` with
``{"topic", "title", "message", "priority", "tags", "click", "actions"}``).

The topic is ``webhook.topic``, or else the last path segment of the configured URL
(``https://ntfy.sh/ops-alerts``), which is then stripped to reach the root. Messages are kept under
ntfy's 4096-byte limit (beyond it ntfy turns the message into an attachment).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from detector.delivery.common import (
    RenderedRequest,
    clip,
    clip_bytes,
    is_resolved,
    samples_text,
)
from detector.model import WebhookConfig
from detector.templating import title

MESSAGE_MAX_BYTES = 4000
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
    message = str(alert.get("description") or alert.get("summary") or "")
    samples = samples_text(alert, MESSAGE_MAX_BYTES)
    if samples:
        message = f"{message}\n\n{samples}"
    body: dict[str, Any] = {
        "topic": topic,
        "title": clip(title(alert), 250),
        "message": clip_bytes(message, MESSAGE_MAX_BYTES),
        "priority": 2 if resolved else PRIORITY.get(severity, 3),
        "tags": [
            "white_check_mark" if resolved else TAG.get(severity, "bell"),
            str(alert.get("rule")),
            str(alert.get("host")),
        ],
    }
    if alert.get("runbook"):
        body["click"] = str(alert["runbook"])
        body["actions"] = [{"action": "view", "label": "Runbook", "url": str(alert["runbook"])}]
    return RenderedRequest(url=root, json_body=body)
