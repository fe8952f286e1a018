"""The ``email`` format: one alert as a plain-text mail (the bytes :mod:`detector.delivery.smtp`
hands to the SMTP server).

Sits beside the HTTP formats in ``formats.FORMATS``: :func:`render` turns an outbox payload into
the message (a :class:`RenderedRequest` whose ``url`` is ``smtp://host:port``). The mail:
``Subject: [CRITICAL] FIRING ssh-bruteforce on db1: <summary>`` (``RESOLVED``, ``STILL FIRING``
for a repeat, ``INFO``), a text body with the summary, description, times, owner, runbook, labels
and sample lines; ``Message-ID`` is derived from the notification's event id (a retry sends the
same id, so a receiver that got it already drops or threads it), and every notification of one
alert carries ``References`` to the same thread id (fingerprint + first seen), plus
``In-Reply-To`` for the repeats and the resolve, so a mail client threads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any

from detector.delivery.common import CUT, RenderedRequest, clip, is_info, is_resolved
from detector.model import SmtpConfig, WebhookConfig
from detector.timefmt import parse_iso

SUBJECT_MAX = 200
_POLICY = SMTP.clone(max_line_length=998)  # RFC 5322's limit: a subject is never folded
SAMPLE_LINES = 10
SAMPLE_CHARS = 1000
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]")
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


def smtp_url(smtp: SmtpConfig) -> str:
    """``smtp://host:port`` (``smtps://`` for implicit TLS): how the webhook is shown."""
    return f"{'smtps' if smtp.tls else 'smtp'}://{smtp.host}:{smtp.port}"


def _domain(alert: Mapping[str, Any]) -> str:
    host = _HOST_UNSAFE.sub("-", str(alert.get("host") or "localhost")).strip(".-")
    return f"detector.{host or 'localhost'}"


def message_id(alert: Mapping[str, Any]) -> str:
    """``<event id@detector.host>``: the same for every attempt of one notification."""
    return f"<{_ID_UNSAFE.sub('-', str(alert.get('event_id')))}@{_domain(alert)}>"


def thread_id(alert: Mapping[str, Any]) -> str:
    """The id every notification of one alert refers to: its fingerprint and first sighting."""
    first = re.sub(r"\D", "", str(alert.get("first_seen_at") or ""))
    fp = _ID_UNSAFE.sub("-", str(alert.get("fingerprint")))
    return f"<alert-{fp}-{first}@{_domain(alert)}>"


def subject(alert: Mapping[str, Any]) -> str:
    """``[CRITICAL] FIRING ssh-bruteforce on db1: SSH brute force from 203.0.113.7``."""
    if is_info(alert):
        what = "INFO"
    elif is_resolved(alert):
        what = "RESOLVED"
    elif alert.get("notification") == "repeat":
        what = "STILL FIRING"
    else:
        what = "FIRING"
    severity = str(alert.get("severity") or "warning").upper()
    head = f"[{severity}] {what} {alert.get('rule')} on {alert.get('host')}"
    summary = " ".join(str(alert.get("summary") or "").split())
    return clip(f"{head}: {summary}" if summary else head, SUBJECT_MAX, CUT)


def body_text(alert: Mapping[str, Any]) -> str:
    lines = [subject(alert), ""]
    if alert.get("description"):
        lines += [str(alert["description"]), ""]
    rows = [
        ("Rule", f"{alert.get('rule')} ({alert.get('kind')})"),
        ("Host", alert.get("host")),
        ("Source", alert.get("source")),
        ("Severity", alert.get("severity")),
        ("First seen", alert.get("first_seen_at")),
        ("Last seen", alert.get("last_seen_at")),
        ("Resolved", alert.get("resolved_at")),
        ("Count", alert.get("count")),
        ("Owner", alert.get("owner")),
        ("Runbook", alert.get("runbook")),
    ]
    lines += [f"{name + ':':<12}{value}" for name, value in rows if value not in (None, "")]
    labels = alert.get("labels") or {}
    if labels:
        lines += ["", "Labels:"] + [f"  {k}={v}" for k, v in sorted(labels.items())]
    samples = list(alert.get("samples") or [])[:SAMPLE_LINES]
    if samples:
        lines += ["", "Sample lines:"] + [f"  {clip(str(s), SAMPLE_CHARS)}" for s in samples]
    lines += ["", f"Event id: {alert.get('event_id')}", "-- ", "detector"]
    return "\n".join(lines) + "\n"


def render(
    alert: Mapping[str, Any],
    webhook: WebhookConfig,
    *,
    attempt: int,
    now: datetime | None = None,
) -> RenderedRequest:
    assert webhook.smtp is not None and webhook.mail_from is not None
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = webhook.mail_from
    msg["To"] = ", ".join(webhook.mail_to)
    msg["Subject"] = subject(alert)
    created = alert.get("created_at")
    if created:
        msg["Date"] = format_datetime(parse_iso(str(created)))
    msg["Message-ID"] = message_id(alert)
    thread = thread_id(alert)
    if alert.get("notification") in ("repeat", "resolved"):
        msg["In-Reply-To"] = thread
    msg["References"] = thread
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    msg["X-Detector-Event-Id"] = str(alert.get("event_id"))
    msg["X-Detector-Status"] = str(alert.get("notification"))
    msg.set_content(body_text(alert))
    return RenderedRequest(
        url=smtp_url(webhook.smtp), data=msg.as_bytes(), content_type="message/rfc822"
    )
