"""``detector send-test WEBHOOK``: prove the path to a receiver end to end, outside the outbox.

Builds a clearly-labelled test alert, renders it with the webhook's real format (and template),
POSTs it with the same headers, signature and timeouts as the worker, and returns what happened.
Nothing is written to the state file.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from detector.delivery import formats
from detector.delivery.channels import deliver
from detector.model import WebhookConfig
from detector.timefmt import iso

TEST_RULE = "detector-send-test"


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest class

    ok: bool
    status: int | None
    body: str  # start of the response body (secrets redacted)
    error: str | None  # redacted


def test_alert(host: str, now: datetime, event_id: str | None = None) -> dict[str, Any]:
    stamp = iso(now, timespec="milliseconds", zulu=True)
    return {
        "event_id": event_id or f"test-{uuid.uuid4().hex}",
        "fingerprint": "0000000000000000",
        "notification": "info",
        "status": "firing",
        "rule": TEST_RULE,
        "kind": "agent",
        "severity": "info",
        "summary": f"Test notification from detector on {host}",
        "description": "If you can read this, alerts from this host reach this destination.",
        "labels": {"host": host, "rule": TEST_RULE, "severity": "info", "kind": "agent"},
        "owner": None,
        "runbook": None,
        "host": host,
        "source": None,
        "first_seen_at": stamp,
        "last_seen_at": stamp,
        "resolved_at": None,
        "count": 1,
        "samples": ["this is a test line from detector send-test"],
        "evidence": {},
        "created_at": stamp,
    }


async def send_test(
    webhook: WebhookConfig,
    host: str,
    *,
    now: datetime | None = None,
    session: aiohttp.ClientSession | None = None,
) -> TestResult:
    at = now or datetime.now(UTC)
    alert = test_alert(host, at)
    try:
        request = formats.render(alert, webhook, attempt=1, now=at)
    except Exception as e:
        return TestResult(ok=False, status=None, body="", error=f"cannot render: {e}")
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        outcome = await deliver(client, webhook, request, event_id=alert["event_id"], now=at)
    finally:
        if own:
            await client.close()
    return TestResult(ok=outcome.ok, status=outcome.status, body=outcome.body, error=outcome.error)
