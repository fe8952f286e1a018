"""The one call that hands a rendered notification to its receiver, whatever the channel.

Sits between the outbox worker (and ``send-test``, and the direct path of ``direct.py``) and the
channels: an HTTP POST (:func:`detector.delivery.transport.post`) for the HTTP formats, an SMTP
submission (:mod:`detector.delivery.smtp`) for ``email``, a command run
(:mod:`detector.delivery.command`) for ``exec``. Each answers with the same
:class:`~detector.delivery.transport.Outcome`, so retries, holds and dead letters do not depend on
the channel.
"""

from __future__ import annotations

from datetime import datetime

import aiohttp

from detector.delivery import command, smtp
from detector.delivery.common import RenderedRequest
from detector.delivery.transport import Outcome, post
from detector.model import WebhookConfig


async def deliver(
    session: aiohttp.ClientSession,
    webhook: WebhookConfig,
    request: RenderedRequest,
    *,
    event_id: str,
    now: datetime,
) -> Outcome:
    if webhook.format == "email":
        return await smtp.send(webhook, request)
    if webhook.format == "exec":
        return await command.run(webhook, request)
    return await post(session, webhook, request, event_id=event_id, now=now)
