"""One POST of a rendered request: headers, HMAC signature, timeouts, and a verdict.

Only this module speaks HTTP out. It never raises for a delivery problem: it returns an
:class:`Outcome`, judged by the webhook's format (:func:`detector.delivery.formats.judge`: success,
transient, or permanent by the fault of the path or of the row), whose ``error`` text has every
secret of the webhook redacted (the URL's path and query, the signing secret, the routing key, the
configured header values), so it can be logged, stored in ``outbox.last_error`` and shown by
``detector status`` and ``detector outbox``.

Signature: ``X-Detector-Signature: t=<unix>,v1=<hex>`` where hex = HMAC-SHA256(secret,
``f"{t}.".encode() + body``) — the receiver recomputes it over the raw body and rejects stale ``t``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Literal
from urllib.parse import urlsplit

import aiohttp

from detector.delivery import formats
from detector.delivery.common import USER_AGENT, RenderedRequest
from detector.delivery.policy import RETRY_AFTER_STATUSES, parse_retry_after
from detector.model import WebhookConfig

MAX_RESPONSE_BYTES = 64 * 1024
BODY_IN_ERROR = 200
Fault = Literal["path", "row"]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    permanent: bool = False
    status: int | None = None
    error: str | None = None  # redacted
    retry_after: timedelta | None = None
    path_down: bool = False  # nothing reached the receiver (connect failure, timeout)
    body: str = ""  # start of the response body, redacted
    fault: Fault | None = None  # whose fault a permanent failure is (None: ok or transient)
    definite: bool = False
    """A refusal of the row by a receiver that worked (an SMTP 5xx to the message after a good
    session, an ``exec`` command's exit 65): dead-lettered without waiting for another row."""

    @property
    def answer(self) -> str:
        """What the receiver said, for reasons and listings: ``HTTP 404 Not Found: no_service``."""
        if self.status is None:
            return self.error or "failed"
        try:
            phrase = " " + HTTPStatus(self.status).phrase
        except ValueError:
            phrase = ""
        snippet = " ".join(self.body[:BODY_IN_ERROR].split())
        return f"HTTP {self.status}{phrase}" + (f": {snippet}" if snippet else "")


def sign(secret: str, t: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def safe_url(url: str) -> str:
    """``https://hooks.slack.com/…``: scheme and host only (paths and queries carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    tail = "/…" if parts.path.strip("/") or parts.query else "/"
    return f"{parts.scheme}://{host}{port}{tail}"


def secrets_of(webhook: WebhookConfig, request_url: str | None = None) -> list[str]:
    out: list[str] = []
    for url in (webhook.url, request_url):
        if not url or not url.startswith(("http://", "https://")):
            continue  # smtp://host:port and exec:… name no secret
        out.append(url)
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        if parts.query:
            out.append(parts.query)
        if parts.path.strip("/"):
            out.append(parts.path)
        if parts.password:
            out.append(parts.password)
    out += [s for s in (webhook.secret, webhook.routing_key) if s]
    if webhook.smtp is not None and webhook.smtp.password:
        out.append(webhook.smtp.password)
    out += [v for v in webhook.headers.values() if len(v) >= 4]
    return sorted(set(out), key=len, reverse=True)


def redact(text: str, webhook: WebhookConfig, request_url: str | None = None) -> str:
    for secret in secrets_of(webhook, request_url):
        if secret in text:
            replacement = safe_url(secret) if secret.startswith(("http://", "https://")) else "***"
            text = text.replace(secret, replacement)
    return text


def headers_for(
    webhook: WebhookConfig, request: RenderedRequest, body: bytes, event_id: str, now: datetime
) -> dict[str, str]:
    headers = {
        "Content-Type": request.content_type,
        "User-Agent": USER_AGENT,
        "Idempotency-Key": event_id,
    }
    headers.update(webhook.headers)
    headers.update(request.headers)
    if webhook.secret:
        headers["X-Detector-Signature"] = sign(webhook.secret, int(now.timestamp()), body)
    return headers


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to ``limit`` bytes; a cut-off body raises ``ClientPayloadError``."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def post(
    session: aiohttp.ClientSession,
    webhook: WebhookConfig,
    request: RenderedRequest,
    *,
    event_id: str,
    now: datetime,
) -> Outcome:
    body = request.body()
    headers = headers_for(webhook, request, body, event_id, now)
    timeout = aiohttp.ClientTimeout(
        total=webhook.timeout.total_seconds(),
        sock_connect=webhook.connect_timeout.total_seconds(),
    )
    where = safe_url(request.url)

    def fail(error: str, *, path_down: bool = False, permanent: bool = False) -> Outcome:
        return Outcome(
            ok=False,
            permanent=permanent,
            path_down=path_down,
            error=redact(error, webhook, request.url),
            fault="path" if permanent else None,  # only a bad URL is permanent here
        )

    try:
        async with session.post(
            request.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            raw = await read_bounded(resp, MAX_RESPONSE_BYTES)
            status = resp.status
            retry_header = resp.headers.get("Retry-After")
            location = resp.headers.get("Location")
    except TimeoutError:
        return fail(
            f"POST {where} timed out after {webhook.timeout.total_seconds():g}s", path_down=True
        )
    except aiohttp.ClientConnectorError as e:
        reason = e.os_error.strerror or type(e.os_error).__name__
        return fail(f"cannot connect to {where}: {reason}", path_down=True)
    except aiohttp.InvalidURL:
        return fail(f"invalid webhook URL {where}", permanent=True)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as e:
        return fail(f"POST {where}: malformed or cut-off response ({type(e).__name__})")
    except aiohttp.ClientResponseError as e:
        return fail(f"POST {where}: malformed response: {e.message}")
    except aiohttp.ClientError as e:
        return fail(f"POST {where}: {type(e).__name__}: {e}")
    except asyncio.CancelledError:
        raise
    text = redact(raw.decode(errors="replace"), webhook, request.url)
    verdict = formats.judge(webhook.format, status, text)
    if verdict == "ok":
        return Outcome(ok=True, status=status, body=text)
    snippet = " ".join(text[:BODY_IN_ERROR].split())
    error = f"POST {where}: HTTP {status}" + (f": {snippet}" if snippet else "")
    if 300 <= status < 400:
        error = f"POST {where}: HTTP {status} redirect to {safe_url(location or '')} (not followed)"
    retry_after = parse_retry_after(retry_header, now) if status in RETRY_AFTER_STATUSES else None
    return Outcome(
        ok=False,
        permanent=verdict in ("path", "row"),
        status=status,
        error=redact(error, webhook, request.url),
        retry_after=retry_after,
        body=text,
        fault=verdict if verdict in ("path", "row") else None,
    )
