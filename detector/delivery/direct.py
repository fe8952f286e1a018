"""Delivery without the outbox: agent alerts sent straight from memory.

Beside the outbox worker, for the one case it cannot serve: the state file is failing (disk full,
read-only, a directory in the way), so nothing can be queued. The agent applies its own alerts'
signals to an alert book, and this module renders each notification with the webhook's format and
POSTs it once, now. What did not get through is handed back to be committed (and then sent by the
outbox worker) once the state file takes writes again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aiohttp

from detector.alerts import AlertBook
from detector.clock import Clock
from detector.delivery import formats
from detector.delivery.channels import deliver
from detector.model import WebhookConfig
from detector.records import Commit, OutboxRow
from detector.rules.base import Signal

log = logging.getLogger("detector.delivery")

TIMEOUT_S = 10.0


async def send_from_memory(
    book: AlertBook,
    signals: list[Signal],
    webhooks: Mapping[str, WebhookConfig],
    session: aiohttp.ClientSession,
    clock: Clock,
    *,
    on_delivered: Callable[[str], None] | None = None,
) -> Commit:
    """Apply ``signals`` to ``book``, render and POST each notification once, now. Returns what
    is left to commit: the changed alerts and the rows that did not get through."""
    book.apply(signals, clock.now())
    alerts, rows = book.take()
    failed: list[OutboxRow] = []
    for row in rows:
        webhook = webhooks.get(row.webhook)
        if webhook is None:
            continue
        now = clock.now()
        try:
            request = formats.render(row.payload, webhook, attempt=1, now=now)
            async with asyncio.timeout(TIMEOUT_S):
                outcome = await deliver(session, webhook, request, event_id=row.event_id, now=now)
            ok = outcome.ok
        except Exception as e:  # any failure: the row waits for the outbox
            log.warning("agent alert to %s not sent from memory: %s", row.webhook, e)
            ok = False
        if not ok:
            failed.append(row)
        elif on_delivered is not None:
            on_delivered(row.webhook)
    return Commit(alerts=alerts, outbox=failed)
