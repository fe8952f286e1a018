"""Per-webhook custom bodies (``template:`` in rules.yaml): the delivery end.

Renders a webhook's body template into the :class:`RenderedRequest` the worker POSTs. The template
language itself (``string.Template`` placeholders inside JSON strings, every value JSON-escaped;
the placeholders available; validation for ``detector check``) lives in
:mod:`detector.templating`, below the config loader, which validates templates at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detector.delivery.common import JSON_TYPE, RenderedRequest
from detector.model import WebhookConfig
from detector.templating import render_text


def render(
    alert: Mapping[str, Any], webhook: WebhookConfig, *, attempt: int, url: str
) -> RenderedRequest:
    assert webhook.template is not None
    return RenderedRequest(
        url=url, data=render_text(webhook.template, alert, attempt), content_type=JSON_TYPE
    )
