"""The ``pagerduty`` format: Events API v2 (``POST https://events.pagerduty.com/v2/enqueue``).

firing/repeat → ``trigger``, resolved → ``resolve``, both with the same ``dedup_key`` =
``<host>/<fingerprint>`` (:func:`dedup_key`): the fingerprint alone is the same on every host
running the same rules, so two hosts' incidents would merge and one host's resolve would close the
other's. Both parts are stable across restarts (the host from the config, the fingerprint from the
rule and its key), so a resolve after a restart closes the incident the trigger opened. An
informational notice (notification ``info``: late, too early, ran twice, a digest) is not an
incident: it goes to the Change Events API (``POST …/v2/change/enqueue``, :func:`change_url`,
derived from the configured events URL), which records it on the service's timeline and pages
nobody, and which has nothing to resolve. Severities map one to one.

PagerDuty's limits (https://developer.pagerduty.com/docs/events-API-v2/trigger-events/ and
…/events-API-v2/send-change-events/): an event of at most 512 KB; ``payload.summary`` at most
1,024 characters; ``dedup_key`` at most 255 characters (a longer one is hashed); ``links[].href``
must be a URL (only an absolute http(s) runbook is sent as a link, another is a custom detail).
Events over the size are trimmed in UTF-8 bytes: samples first, then evidence, then the
description. The summary from log text gets a zero-width space inside ``://``, so the incident
title links nowhere.

Answers (https://developer.pagerduty.com/docs/events-API-v2/trigger-events/ "Response codes"):
202 accepted; 400 "Invalid event" is the event's fault — unless its ``errors`` are about the
``routing_key``, which every event of this webhook carries (:func:`judge`: the path's); 429 is
"too many events", retried with backoff (PagerDuty sends no Retry-After); 5xx are retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from detector.delivery.common import (
    CUT,
    RenderedRequest,
    clip,
    clip_bytes,
    dumps,
    inert,
    is_info,
    runbook_parts,
)
from detector.delivery.policy import Answer
from detector.model import WebhookConfig

MAX_BYTES = 512 * 1024
SUMMARY_MAX = 1024
DEDUP_KEY_MAX = 255
CHANGE_PATH = "/v2/change/enqueue"
SEVERITIES = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def dedup_key(alert: Mapping[str, Any]) -> str:
    """``<host>/<fingerprint>``, or its SHA-256 when longer than PagerDuty's 255 characters."""
    key = f"{alert.get('host')}/{alert.get('fingerprint')}"
    if len(key) > DEDUP_KEY_MAX:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def change_url(events_url: str) -> str:
    """The Change Events URL beside ``events_url``: ``…/v2/enqueue`` → ``…/v2/change/enqueue``
    (same scheme, host and query; any other path gets ``/v2/change/enqueue`` at its root)."""
    parts = urlsplit(events_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v2/enqueue"):
        path = path[: -len("/v2/enqueue")] + CHANGE_PATH
    elif path.endswith("/enqueue"):
        path = path[: -len("/enqueue")] + "/change/enqueue"
    else:
        path = path + CHANGE_PATH
    return urlunsplit(parts._replace(path=path))


def _summary(alert: Mapping[str, Any]) -> str:
    text = f"{alert.get('rule')} on {alert.get('host')}: {alert.get('summary')}"
    return clip(inert(text, markup=False), SUMMARY_MAX)


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    routing_key = webhook.routing_key or ""
    key = dedup_key(alert)
    if alert.get("status") == "resolved" and not is_info(alert):
        body: dict[str, Any] = {
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": key,
        }
        return RenderedRequest(url=webhook.url, json_body=body)
    link, note = runbook_parts(alert)
    details: dict[str, Any] = {
        "description": str(alert.get("description") or ""),
        "count": alert.get("count"),
        "first_seen_at": alert.get("first_seen_at"),
        "last_seen_at": alert.get("last_seen_at"),
        "labels": dict(alert.get("labels") or {}),
        "owner": alert.get("owner"),
        "notification": alert.get("notification"),
        "event_id": alert.get("event_id"),
        "samples": list(alert.get("samples") or []),
        "evidence": dict(alert.get("evidence") or {}),
    }
    if note is not None:
        details["runbook"] = note
    links = [{"href": link, "text": "Runbook"}] if link is not None else []
    if is_info(alert):
        change: dict[str, Any] = {
            "routing_key": routing_key,
            "payload": {
                "summary": _summary(alert),
                "source": str(alert.get("host")),
                "timestamp": alert.get("last_seen_at") or alert.get("created_at"),
                "custom_details": details,
            },
        }
        if links:
            change["links"] = links
        _fit(change, details)
        return RenderedRequest(url=change_url(webhook.url), json_body=change)
    body = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": key,
        "payload": {
            "summary": _summary(alert),
            "source": str(alert.get("host")),
            "severity": SEVERITIES.get(str(alert.get("severity")), "error"),
            "timestamp": alert.get("last_seen_at"),
            "component": str(alert.get("source") or ""),
            "group": str(alert.get("rule")),
            "class": str(alert.get("kind")),
            "custom_details": details,
        },
        "client": "detector",
    }
    if links:
        body["links"] = links
    _fit(body, details)
    return RenderedRequest(url=webhook.url, json_body=body)


def _fit(body: dict[str, Any], details: dict[str, Any]) -> None:
    """Trim in place until the serialized event is within MAX_BYTES."""

    def size() -> int:
        return len(dumps(body).encode())

    while details["samples"] and size() > MAX_BYTES:
        details["samples"].pop()
    if size() > MAX_BYTES:
        details["evidence"] = {"trimmed": True}
    while (over := size() - MAX_BYTES) > 0 and details["description"] not in ("", CUT):
        text: str = details["description"]
        n = len(text.encode())
        details["description"] = clip_bytes(text, max(n - max(over, n // 8, 16), 0))
    if size() > MAX_BYTES:  # labels from log text can be anything: keep their names only
        details["labels"] = {k: "…" for k in list(details["labels"])[:100]}


def judge(status: int, body: str) -> Answer | None:
    """PagerDuty-specific reading of an answer (None: the policy's default)."""
    if status == 400 and "routing_key" in body:
        return "path"  # e.g. "Length of 'routing_key' is incorrect": no event can get through
    if status == 400:
        return "row"
    return None
