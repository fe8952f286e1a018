"""Format dispatch: ``WebhookConfig.format`` → the module that renders it, by one explicit dict.

Also builds the storm-control digest: many pending notifications of one webhook folded into ONE
message ("37 more alerts: …"). The digest is a synthetic alert rendered by the webhook's own
format, except for ``alertmanager``, whose API takes a list: its digest is every alert in one POST.
:func:`judge` reads a receiver's answer with the format's knowledge of its service first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from detector.delivery import (
    alertmanager,
    discord,
    exec_format,
    json_v4,
    mail,
    ntfy,
    pagerduty,
    slack,
    teams,
    template,
)
from detector.delivery.common import RenderedRequest, clip, prepare
from detector.delivery.policy import Answer
from detector.delivery.policy import judge as default_judge
from detector.model import SEVERITIES, WebhookConfig
from detector.timefmt import iso

DIGEST_RULE = "detector-digest"
DIGEST_LINES = 20


class Renderer(Protocol):
    def __call__(
        self,
        alert: Mapping[str, Any],
        webhook: WebhookConfig,
        *,
        attempt: int,
        now: datetime | None = None,
    ) -> RenderedRequest: ...


FORMATS: dict[str, Renderer] = {
    "json": json_v4.render,
    "slack": slack.render,
    "discord": discord.render,
    "teams": teams.render,
    "ntfy": ntfy.render,
    "pagerduty": pagerduty.render,
    "alertmanager": alertmanager.render,
    "email": mail.render,
    "exec": exec_format.render,
}


class Judge(Protocol):
    def __call__(self, status: int, body: str) -> Answer | None: ...


# formats that know more about their service's answers than the policy's status-code default
JUDGES: dict[str, Judge] = {
    "slack": slack.judge,
    "pagerduty": pagerduty.judge,
}


def judge(format_name: str, status: int, body: str) -> Answer:
    """``ok`` / ``transient`` / ``path`` / ``row`` for one answer (see :mod:`policy`)."""
    special = JUDGES.get(format_name)
    answer = special(status, body) if special is not None else None
    return answer if answer is not None else default_judge(status)


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    """The request for one notification. ``now`` is only used by ``alertmanager`` (endsAt).

    The alert is :func:`~detector.delivery.common.prepare`-d first (an empty summary gets the
    default one), for the formats and for custom templates alike.
    """
    alert = prepare(alert)
    request = FORMATS[webhook.format](alert, webhook, attempt=attempt, now=now)
    if webhook.template is not None:
        return template.render(alert, webhook, attempt=attempt, url=request.url)
    return request


def digest_alert(alerts: Sequence[Mapping[str, Any]], host: str, now: datetime) -> dict[str, Any]:
    """One synthetic notification standing for ``alerts`` (storm control)."""
    n = len(alerts)
    rules = sorted({str(a.get("rule")) for a in alerts})
    lines = [
        f"- [{a.get('severity')}] {a.get('rule')} ({a.get('notification')}): "
        + clip(str(a.get("summary")), 200)
        for a in alerts[:DIGEST_LINES]
    ]
    if n > DIGEST_LINES:
        lines.append(f"… and {n - DIGEST_LINES} more")
    severities = [str(a.get("severity")) for a in alerts if a.get("severity") in SEVERITIES]
    severity = max(severities, key=SEVERITIES.index) if severities else "warning"
    ids = [str(a.get("event_id")) for a in alerts]
    event_id = "digest-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:24]
    stamp = iso(now, timespec="milliseconds", zulu=True)
    return {
        "event_id": event_id,
        "fingerprint": event_id,
        "notification": "info",
        "status": "firing",
        "rule": DIGEST_RULE,
        "kind": "agent",
        "severity": severity,
        "summary": clip(f"{n} more alerts: {', '.join(rules)}", 300),
        "description": "Too many alerts for this webhook's rate limit; grouped:\n"
        + "\n".join(lines),
        "labels": {"host": host, "rule": DIGEST_RULE, "severity": severity, "kind": "agent"},
        "owner": None,
        "runbook": None,
        "host": host,
        "source": None,
        "first_seen_at": min((str(a.get("first_seen_at")) for a in alerts), default=stamp),
        "last_seen_at": stamp,
        "resolved_at": None,
        "count": n,
        "samples": [],
        "evidence": {"event_ids": ids[:100], "rules": rules},
        "created_at": stamp,
    }


def render_digest(
    alerts: Sequence[Mapping[str, Any]],
    webhook: WebhookConfig,
    *,
    host: str,
    attempt: int,
    now: datetime,
) -> tuple[RenderedRequest, str]:
    """(request, idempotency key) for a digest of ``alerts``."""
    digest = digest_alert(alerts, host, now)
    if webhook.format == "alertmanager" and webhook.template is None:
        return alertmanager.render_many(alerts, webhook, attempt=attempt, now=now), digest[
            "event_id"
        ]
    return render(digest, webhook, attempt=attempt, now=now), digest["event_id"]
