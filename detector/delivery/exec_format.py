"""The ``exec`` format: the generic ``json`` payload, to be fed on a command's stdin.

Sits beside the HTTP formats in ``formats.FORMATS``: :func:`render` builds what
:mod:`detector.delivery.command` runs the webhook's command with: the bytes of the ``json``
format's payload (a ``template`` replaces them, as for every format) and, as the request's
``headers``, the ``DETECTOR_*`` variables added to the command's environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.delivery import json_v4
from detector.delivery.common import RenderedRequest
from detector.model import WebhookConfig


def exec_url(command: tuple[str, ...]) -> str:
    """``exec:/usr/local/bin/notify``: how the webhook is shown."""
    return f"exec:{command[0]}" if command else "exec:"


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    request = json_v4.render(alert, webhook, attempt=attempt, now=now)
    env = {
        "DETECTOR_EVENT_ID": str(alert.get("event_id")),
        "DETECTOR_WEBHOOK": webhook.name,
        "DETECTOR_NOTIFICATION": str(alert.get("notification")),
        "DETECTOR_RULE": str(alert.get("rule")),
        "DETECTOR_SEVERITY": str(alert.get("severity")),
        "DETECTOR_ATTEMPT": str(attempt),
    }
    return RenderedRequest(url=exec_url(webhook.command), json_body=request.json_body, headers=env)
