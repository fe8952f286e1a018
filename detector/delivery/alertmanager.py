"""The ``alertmanager`` format: ``POST {url}/api/v2/alerts`` with a list of postable alerts
(labels, annotations, startsAt, endsAt, generatorURL) straight into a Prometheus Alertmanager.

Alertmanager treats an alert that is not refreshed as resolved after its ``resolve_timeout``
(default 5m), so a firing alert is RE-SENT every :data:`RESEND_EVERY` by the worker until it
resolves, with ``endsAt`` = now + :data:`VALID_FOR` (like Prometheus does), and a resolved one is
sent with ``endsAt`` = the time it resolved. Several alerts go in one POST (used for digests and
re-sends); Alertmanager validates the whole list and answers 400 for one bad alert, so the worker
splits a refused list to find that alert (:meth:`~detector.delivery.worker.DeliveryWorker`).

The API's schema (https://github.com/prometheus/alertmanager, api/v2/openapi.yaml,
``postableAlert``): ``labels`` (required, ``alertname`` among them, every name and value a
string), ``annotations``, ``startsAt``/``endsAt`` as RFC 3339, ``generatorURL`` of ``format: uri``
— Alertmanager refuses a free-text runbook there ("ask the db team"), so it is set only when the
runbook is an absolute http(s) URL; otherwise the runbook is the ``runbook`` annotation. An
informational notice carries ``notification="info"`` (a separate alert from the one it is about),
is never re-sent, and ends by itself after :data:`VALID_FOR`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from detector.delivery.common import RenderedRequest, prepare, runbook_parts
from detector.delivery.json_v4 import am_annotations, am_labels
from detector.model import WebhookConfig
from detector.timefmt import iso

RESEND_EVERY = timedelta(minutes=1)
VALID_FOR = 4 * RESEND_EVERY
API_PATH = "/api/v2/alerts"


def api_url(webhook: WebhookConfig) -> str:
    base = webhook.url.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


def postable(alert: Mapping[str, Any], now: datetime | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "labels": am_labels(alert),
        "annotations": am_annotations(alert),
        "startsAt": alert.get("first_seen_at"),
    }
    if alert.get("status") == "resolved":
        entry["endsAt"] = alert.get("resolved_at") or alert.get("last_seen_at")
    elif now is not None:
        entry["endsAt"] = iso(now + VALID_FOR, timespec="milliseconds", zulu=True)
    link, _ = runbook_parts(alert)
    if link is not None:
        entry["generatorURL"] = link
    return entry


def render_many(
    alerts: Sequence[Mapping[str, Any]],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    return RenderedRequest(
        url=api_url(webhook), json_body=[postable(prepare(a), now) for a in alerts]
    )


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    return render_many([alert], webhook, attempt=attempt, now=now)
