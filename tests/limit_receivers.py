"""Loopback receivers that enforce each service's documented limits, for the end-to-end delivery
tests: a real aiohttp server on 127.0.0.1 (a :class:`~tests.receiver.Receiver`) whose answer comes
from one validator per service instead of a script.

A validator reads a request the way its service does and returns a :class:`Verdict`: what the
service REFUSES (answered 400, or what that service answers instead, e.g. Discord's 204 without
``wait=true``) and what it would take but should never get (a ``<!channel>`` that pings, a log line
turned into a link). Both are recorded in ``violations``; a test asserts there are none. The limits
are the constants of tests/test_formats_limits.py (cited there from each service's docs); what the
services answer is in each validator's docstring. The PagerDuty receiver keeps incidents by
``dedup_key`` as PagerDuty does; the Alertmanager one checks the API schema and then forwards to a
real Alertmanager (:func:`real_alertmanager`), whose own answer is the one returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from tests.agent_proc import free_port
from tests.receiver import Received, Receiver
from tests.test_formats_limits import (
    DISCORD,
    NTFY_BYTES,
    PD_BYTES,
    PD_DEDUP,
    PD_SUMMARY,
    SLACK_BLOCKS,
    SLACK_FIELD,
    SLACK_FIELDS,
    SLACK_HEADER,
    SLACK_SECTION,
    SLACK_TEXT,
    TEAMS_BYTES,
    strings,
    u16,
)

AM_BIN = "/usr/bin/prometheus-alertmanager"
PD_ROUTING_KEY = 32  # Events API v2: "routing_key … 32 character Integration Key"
PD_SEVERITIES = frozenset({"critical", "error", "warning", "info"})
PD_ACTIONS = frozenset({"trigger", "acknowledge", "resolve"})
DISCORD_FIELDS, DISCORD_FIELD_NAME, DISCORD_FIELD_VALUE, DISCORD_EMBEDS = 25, 256, 1024, 10
NTFY_TOPIC = re.compile(r"[-_A-Za-z0-9]{1,64}")
AM_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
PINGS = re.compile(r"<[!@]")  # Slack: <!channel>, <!here>, <@U123>
TEAMS_MENTION = re.compile(r"(?i)<at\b")
MD_LINK = re.compile(r"\]\(")


@dataclass
class Verdict:
    """What one request breaks: ``refused`` → the service answers an error; ``harm`` → it takes
    the request but does what it must not (pings, links log text, drops it silently)."""

    refused: list[str] = field(default_factory=list)
    harm: list[str] = field(default_factory=list)
    ok: web.Response | None = None  # the service's success answer (default 200 "ok")
    status: int = 400  # its answer when refused


@dataclass(frozen=True)
class Violation:
    service: str
    problem: str
    refused: bool


def is_http(value: object) -> bool:
    """An absolute http(s) URL."""
    if not isinstance(value, str) or re.search(r"[\s<>\"]", value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def parse_json(req: Received, v: Verdict) -> Any:
    try:
        return json.loads(req.body)
    except ValueError as e:
        v.refused.append(f"not JSON: {e}")
        return None


def rfc3339(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def within(v: Verdict, what: str, text: object, limit: int, *, unit: str = "u16") -> None:
    """``text`` is a non-empty string of at most ``limit`` UTF-16 units (``u16``), characters
    (``chars``: code points) or UTF-8 ``bytes``."""
    if not isinstance(text, str):
        v.refused.append(f"{what}: not a string ({type(text).__name__})")
        return
    n = {"u16": u16(text), "chars": len(text), "bytes": len(text.encode())}[unit]
    if n == 0:
        v.refused.append(f"{what}: empty")
    elif n > limit:
        v.refused.append(f"{what}: {n} {unit} > {limit}")


# ------------------------------------------------------------------ Slack


def slack(req: Received) -> Verdict:
    """Slack incoming webhook (Block Kit): 200 ``ok``; a block over its limits is
    ``400 invalid_blocks``, a text over 40,000 ``400 invalid_payload`` (msg_too_long). A ``<!…>``
    or ``<@…>`` in ANY text field pings someone: harm."""
    v = Verdict(ok=web.Response(text="ok"))
    body = parse_json(req, v)
    if not isinstance(body, dict):
        v.refused.append("invalid_payload: not an object")
        return v
    text, blocks = body.get("text"), body.get("blocks")
    if text is None and not blocks:
        v.refused.append("no_text")
    if text is not None and (not isinstance(text, str) or u16(text) > SLACK_TEXT):
        v.refused.append(f"invalid_payload: text over {SLACK_TEXT}")
    if blocks is not None:
        if not isinstance(blocks, list) or not 0 < len(blocks) <= SLACK_BLOCKS:
            v.refused.append(f"invalid_blocks: {SLACK_BLOCKS} blocks at most")
            blocks = []
        for i, b in enumerate(blocks):
            slack_block(v, f"blocks[{i}]", b)
    for s in strings(body):
        if PINGS.search(s):
            v.harm.append(f"a mention would ping: {s[:80]!r}")
    return v


def slack_text_object(v: Verdict, where: str, obj: Any, limit: int, types: tuple[str, ...]) -> None:
    if not isinstance(obj, dict) or obj.get("type") not in types:
        v.refused.append(f"invalid_blocks: {where} must be a text object of type {types}")
        return
    within(v, f"invalid_blocks: {where}.text", obj.get("text"), limit)


def slack_block(v: Verdict, where: str, b: Any) -> None:
    kind = b.get("type") if isinstance(b, dict) else None
    if kind == "header":
        slack_text_object(v, f"{where}.text", b.get("text"), SLACK_HEADER, ("plain_text",))
    elif kind == "section":
        if "text" not in b and "fields" not in b:
            v.refused.append(f"invalid_blocks: {where} needs text or fields")
        if "text" in b:
            text_types = ("plain_text", "mrkdwn")
            slack_text_object(v, f"{where}.text", b["text"], SLACK_SECTION, text_types)
        if "fields" in b:
            fields = b["fields"]
            if not isinstance(fields, list) or not 0 < len(fields) <= SLACK_FIELDS:
                v.refused.append(f"invalid_blocks: {where}.fields: 1 to {SLACK_FIELDS}")
                fields = []
            for j, f in enumerate(fields):
                slack_text_object(
                    v, f"{where}.fields[{j}]", f, SLACK_FIELD, ("plain_text", "mrkdwn")
                )
    elif kind == "context":
        elements = b.get("elements")
        if not isinstance(elements, list) or not 0 < len(elements) <= 10:
            v.refused.append(f"invalid_blocks: {where}.elements: 1 to 10")
            elements = []
        for j, e in enumerate(elements):
            slack_text_object(v, f"{where}.elements[{j}]", e, SLACK_FIELD, ("plain_text", "mrkdwn"))
    elif kind != "divider":
        v.refused.append(f"invalid_blocks: {where}: unknown block type {kind!r}")
    if kind is not None:
        for s in strings(b):
            for m in re.finditer(r"<([^>|]*)(\|[^>]*)?>", s):
                if not is_http(m.group(1)):
                    v.harm.append(f"{where}: a link to {m.group(1)[:60]!r}")


# ------------------------------------------------------------------ Discord


def discord(req: Received) -> Verdict:
    """Discord execute webhook: with ``wait=true`` 200 and the message, a refused one
    ``400 {"code": 50035, "message": "Invalid Form Body"}``; WITHOUT it Discord answers 204 before
    it validated the message and drops a bad one silently (harm, even when it fits). Lengths in
    UTF-16 units. ``allowed_mentions.parse`` other than ``[]`` lets ``@everyone`` ping: harm."""
    v = Verdict(ok=web.json_response({"id": "1", "type": 0}))
    waits = parse_qs(req.query).get("wait") == ["true"]
    if not waits:
        v.harm.append("no wait=true: Discord answers 204 and drops a refused message silently")
    body = parse_json(req, v)
    if not isinstance(body, dict):
        v.refused.append("Invalid Form Body: not an object")
        return discord_answer(v, waits)
    content = body.get("content", "")
    embeds = body.get("embeds") or []
    if not content and not embeds:
        v.refused.append("Cannot send an empty message")
    if content and u16(content) > DISCORD["content"]:
        v.refused.append(f"content: {u16(content)} > {DISCORD['content']}")
    if (body.get("allowed_mentions") or {}).get("parse") != []:
        v.harm.append(f"allowed_mentions {body.get('allowed_mentions')!r}: @everyone pings")
    if not isinstance(embeds, list) or len(embeds) > DISCORD_EMBEDS:
        v.refused.append(f"embeds: at most {DISCORD_EMBEDS}")
        embeds = []
    for i, e in enumerate(embeds):
        discord_embed(v, f"embeds[{i}]", e)
    return discord_answer(v, waits)


def discord_answer(v: Verdict, waits: bool) -> Verdict:
    if not waits:
        v.ok = web.Response(status=204)  # refused or not: Discord says nothing
        v.harm.extend(f"dropped silently: {r}" for r in v.refused)
        v.refused = []
    return v


def discord_embed(v: Verdict, where: str, e: Any) -> None:
    if not isinstance(e, dict):
        v.refused.append(f"{where}: not an object")
        return
    total = 0
    for name, limit in (("title", DISCORD["title"]), ("description", DISCORD["description"])):
        if name in e:
            within(v, f"{where}.{name}", e[name], limit)
            total += u16(str(e[name]))
    footer = e.get("footer")
    if footer is not None:
        within(v, f"{where}.footer.text", footer.get("text"), DISCORD["footer"])
        total += u16(str(footer.get("text")))
    author = e.get("author")
    if author is not None:
        within(v, f"{where}.author.name", author.get("name"), 256)
        total += u16(str(author.get("name")))
    fields = e.get("fields") or []
    if len(fields) > DISCORD_FIELDS:
        v.refused.append(f"{where}.fields: {len(fields)} > {DISCORD_FIELDS}")
    for j, f in enumerate(fields):
        within(v, f"{where}.fields[{j}].name", f.get("name"), DISCORD_FIELD_NAME)
        within(v, f"{where}.fields[{j}].value", f.get("value"), DISCORD_FIELD_VALUE)
        total += u16(str(f.get("name"))) + u16(str(f.get("value")))
    if total > DISCORD["total"]:
        v.refused.append(f"{where}: {total} UTF-16 units in all > {DISCORD['total']}")
    if "url" in e and not is_http(e["url"]):
        v.refused.append(f"{where}.url: Not a well formed URL ({str(e['url'])[:60]!r})")
    if "color" in e and not (isinstance(e["color"], int) and 0 <= e["color"] <= 0xFFFFFF):
        v.refused.append(f"{where}.color: {e['color']!r}")
    if "timestamp" in e and rfc3339(e["timestamp"]) is None:
        v.refused.append(f"{where}.timestamp: not ISO8601 ({e['timestamp']!r})")
    texts = [str(e.get("title", "")), *(str(f.get("value")) for f in fields)]
    for s in texts:
        if MD_LINK.search(s) or "://" in s:
            v.harm.append(f"{where}: log text renders as a link: {s[:80]!r}")


# ------------------------------------------------------------------ Teams


def teams(req: Received) -> Verdict:
    """Teams Workflows webhook: 202; a message over 28 KB, or not an Adaptive Card message, is
    refused (400). ``<at>`` in card text is a mention, ``[x](y)`` / ``scheme://`` a link: harm."""
    v = Verdict(ok=web.Response(status=202))
    if len(req.body) > TEAMS_BYTES:
        v.refused.append(f"message size {len(req.body)} bytes > {TEAMS_BYTES}")
    body = parse_json(req, v)
    attachments = body.get("attachments") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("type") != "message" or not attachments:
        v.refused.append("not a message with attachments")
        attachments = []
    for a in attachments:
        card = a.get("content") if isinstance(a, dict) else None
        if a.get("contentType") != "application/vnd.microsoft.card.adaptive":
            v.refused.append(f"contentType {a.get('contentType')!r}")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            v.refused.append("content is not an AdaptiveCard")
            continue
        for s in strings(card.get("body")):
            if TEAMS_MENTION.search(s):
                v.harm.append(f"a mention: {s[:80]!r}")
            if MD_LINK.search(s) or "://" in s:
                v.harm.append(f"log text renders as a link: {s[:80]!r}")
        for action in card.get("actions") or []:
            if action.get("type") == "Action.OpenUrl" and not is_http(action.get("url")):
                v.refused.append(f"Action.OpenUrl url {str(action.get('url'))[:60]!r}")
    return v


# ------------------------------------------------------------------ ntfy


def ntfy(req: Received) -> Verdict:
    """ntfy publish: 200 and the message as JSON. As JSON it is POSTed to the root with the topic
    in the body; as text, to ``/<topic>``. A message over 4,096 bytes is refused (no attachment
    store here), so is a bad topic or priority. ``markdown`` on, or ``scheme://`` in log text,
    makes a link: harm."""
    v = Verdict()
    path = req.path.strip("/")
    if path:
        topic: object = path
        message: object = req.body.decode(errors="replace")
        body: Any = {}
    else:
        body = parse_json(req, v)
        if not isinstance(body, dict):
            v.refused.append("JSON publish: not an object")
            return v
        topic, message = body.get("topic"), body.get("message", "")
    if not isinstance(topic, str) or not NTFY_TOPIC.fullmatch(topic):
        v.refused.append(f"invalid topic {topic!r}")
    if not isinstance(message, str) or len(message.encode()) > NTFY_BYTES:
        v.refused.append(f"message over {NTFY_BYTES} bytes")
    priority = body.get("priority", 3)
    if priority not in (1, 2, 3, 4, 5):
        v.refused.append(f"invalid priority {priority!r}")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        v.refused.append(f"tags {tags!r}")
    if "click" in body and not is_http(body["click"]):
        v.refused.append(f"click {body['click']!r}")
    for a in body.get("actions") or []:
        if a.get("action") == "view" and not is_http(a.get("url")):
            v.refused.append(f"view action url {a.get('url')!r}")
    if body.get("markdown"):
        v.harm.append("markdown on: log text renders as markup")
    for s in (str(message), str(body.get("title", ""))):
        if "://" in s:
            v.harm.append(f"log text becomes a link: {s[:80]!r}")
    if not v.refused:
        v.ok = web.json_response({"id": "m1", "event": "message", "topic": topic})
    return v


# ------------------------------------------------------------------ PagerDuty


@dataclass
class Incident:
    state: str  # triggered | acknowledged | resolved
    summary: str
    source: str
    triggers: int = 1


def pagerduty(req: Received) -> Verdict:
    """PagerDuty Events API v2 (``/v2/enqueue``) and Change Events (``/v2/change/enqueue``):
    202 ``{"status": "success"}``; an invalid event is ``400 {"status": "invalid event",
    "errors": [...]}`` (a wrong routing key among them: "Length of 'routing_key' is incorrect")."""
    v = Verdict()
    if req.path not in ("/v2/enqueue", "/v2/change/enqueue"):
        v.refused.append(f"no such endpoint {req.path}")
        v.status = 404
        return v
    if len(req.body) > PD_BYTES:
        v.refused.append(f"event {len(req.body)} bytes > {PD_BYTES}")
    body = parse_json(req, v)
    if not isinstance(body, dict):
        v.refused.append("Event object is invalid")
        return pd_answer(v, body)
    key = body.get("routing_key")
    if not isinstance(key, str) or len(key) != PD_ROUTING_KEY:
        v.refused.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    payload = body.get("payload")
    if req.path == "/v2/change/enqueue":
        if "event_action" in body or "dedup_key" in body:
            v.refused.append("a change event has no event_action or dedup_key")
        if not isinstance(payload, dict):
            v.refused.append("'payload' is missing")
        else:
            within(v, "payload.summary", payload.get("summary"), PD_SUMMARY, unit="chars")
    else:
        action = body.get("event_action")
        if action not in PD_ACTIONS:
            v.refused.append(f"'event_action' is invalid ({action!r})")
        dedup = body.get("dedup_key")
        if dedup is not None or action in ("acknowledge", "resolve"):
            within(v, "dedup_key", dedup, PD_DEDUP, unit="chars")
        if action == "trigger":
            if not isinstance(payload, dict):
                v.refused.append("'payload' is missing")
            else:
                within(v, "payload.summary", payload.get("summary"), PD_SUMMARY, unit="chars")
                within(v, "payload.source", payload.get("source"), PD_BYTES, unit="chars")
                if payload.get("severity") not in PD_SEVERITIES:
                    v.refused.append(f"'payload.severity' is invalid ({payload.get('severity')})")
                if "timestamp" in payload and rfc3339(payload["timestamp"]) is None:
                    v.refused.append(f"'payload.timestamp' {payload['timestamp']!r}")
    for link in body.get("links") or []:
        if not is_http(link.get("href")):
            v.refused.append(f"links[].href {link.get('href')!r}")
    if isinstance(payload, dict) and "://" in str(payload.get("summary")):
        v.harm.append(f"log text in the incident title links: {payload.get('summary')!r:.80}")
    return pd_answer(v, body)


def pd_answer(v: Verdict, body: Any) -> Verdict:
    if v.refused:
        return v
    answer = {"status": "success", "message": "Event processed"}
    if isinstance(body, dict) and body.get("dedup_key"):
        answer["dedup_key"] = body["dedup_key"]
    v.ok = web.json_response(answer, status=202)
    return v


# ------------------------------------------------------------------ Alertmanager API


def alertmanager(req: Received) -> Verdict:
    """Alertmanager ``POST /api/v2/alerts`` (api/v2/openapi.yaml ``postableAlerts``): a non-empty
    list; each alert with non-empty ``labels`` of valid names and string values, string
    annotations, RFC 3339 ``startsAt``/``endsAt`` in that order, ``generatorURL`` empty or an
    absolute URL. Alertmanager answers 400 for the whole list. What passes is forwarded to the
    real Alertmanager, whose answer is the one returned."""
    v = Verdict()
    if req.path != "/api/v2/alerts":
        v.refused.append(f"no such endpoint {req.path}")
        v.status = 404
        return v
    body = parse_json(req, v)
    if not isinstance(body, list) or not body:
        v.refused.append("not a non-empty list of alerts")
        return v
    for i, a in enumerate(body):
        labels = a.get("labels") if isinstance(a, dict) else None
        if not isinstance(labels, dict) or not labels:
            v.refused.append(f"[{i}].labels: empty")
            continue
        for name, value in {**labels, **(a.get("annotations") or {})}.items():
            if not isinstance(value, str):
                v.refused.append(f"[{i}] {name}: value not a string")
        for name in labels:
            if not AM_LABEL.fullmatch(name):
                v.refused.append(f"[{i}].labels: invalid name {name!r}")
        starts, ends = rfc3339(a.get("startsAt")), rfc3339(a.get("endsAt"))
        if ("startsAt" in a and starts is None) or ("endsAt" in a and ends is None):
            v.refused.append(f"[{i}]: startsAt/endsAt not RFC 3339")
        elif starts is not None and ends is not None and starts > ends:
            v.refused.append(f"[{i}]: start time must be before end time")
        url = a.get("generatorURL")
        if url not in (None, "") and not is_http(url):
            v.refused.append(f"[{i}].generatorURL: not a URL ({str(url)[:60]!r})")
    return v


# ------------------------------------------------------------------ json (webhook v4)


def json_v4(req: Received) -> Verdict:
    """The generic ``json`` format: Alertmanager's webhook (version 4) envelope, what a receiver
    written for Alertmanager parses (it answers 400 to anything else)."""
    v = Verdict(ok=web.Response(text="ok"))
    body = parse_json(req, v)
    if not isinstance(body, dict):
        v.refused.append("not an object")
        return v
    if body.get("version") != "4":
        v.refused.append(f"version {body.get('version')!r}")
    if body.get("status") not in ("firing", "resolved"):
        v.refused.append(f"status {body.get('status')!r}")
    for name, kind in (
        ("groupKey", str),
        ("receiver", str),
        ("externalURL", str),
        ("truncatedAlerts", int),
        ("groupLabels", dict),
        ("commonLabels", dict),
        ("commonAnnotations", dict),
        ("alerts", list),
    ):
        if not isinstance(body.get(name), kind):
            v.refused.append(f"{name}: not a {kind.__name__}")
    alerts: list[Any] = body["alerts"] if isinstance(body.get("alerts"), list) else []
    if not alerts:
        v.refused.append("alerts: empty")
    for i, a in enumerate(alerts):
        if a.get("status") not in ("firing", "resolved"):
            v.refused.append(f"alerts[{i}].status {a.get('status')!r}")
        labels = a.get("labels")
        if not isinstance(labels, dict) or not labels.get("alertname"):
            v.refused.append(f"alerts[{i}].labels: no alertname")
        if rfc3339(a.get("startsAt")) is None or rfc3339(a.get("endsAt")) is None:
            v.refused.append(f"alerts[{i}]: startsAt/endsAt not RFC 3339")
        url = a.get("generatorURL")
        if not isinstance(url, str) or (url and not is_http(url)):
            v.refused.append(f"alerts[{i}].generatorURL: not a URL ({str(url)[:60]!r})")
        if not isinstance(a.get("fingerprint"), str):
            v.refused.append(f"alerts[{i}].fingerprint")
    return v


# ------------------------------------------------------------------ the receivers

Validator = Callable[[Received], Verdict]
VALIDATORS: dict[str, Validator] = {
    "slack": slack,
    "discord": discord,
    "teams": teams,
    "ntfy": ntfy,
    "pagerduty": pagerduty,
    "alertmanager": alertmanager,
    "json": json_v4,
}


class LimitReceiver(Receiver):
    """A receiver answering as ``service`` would (see :data:`VALIDATORS`). With ``forward``, what
    passes is POSTed on to that base URL and its answer returned (a real Alertmanager)."""

    def __init__(self, service: str, forward: str | None = None) -> None:
        super().__init__()
        self.service = service
        self.validate = VALIDATORS[service]
        self.forward = forward
        self.violations: list[Violation] = []
        self.accepted: list[Received] = []
        self.incidents: dict[str, Incident] = {}  # pagerduty: by dedup_key
        self.changes: list[dict[str, Any]] = []  # pagerduty: change events
        self._client: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        await super().close()
        if self._client is not None:
            await self._client.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        req = Received(
            request.method,
            request.path,
            request.query_string,
            dict(request.headers),
            await request.read(),
        )
        verdict = self.validate(req)
        self.violations += [Violation(self.service, p, True) for p in verdict.refused]
        self.violations += [Violation(self.service, p, False) for p in verdict.harm]
        answer: web.Response
        if verdict.refused:
            answer = web.json_response(
                {"status": "invalid", "errors": verdict.refused}, status=verdict.status
            )
        elif self.forward is not None:
            answer = await self._forward(req)
        else:
            answer = verdict.ok or web.Response(text="ok")
        if answer.status < 300:
            self.accepted.append(req)
            if self.service == "pagerduty":
                self._pagerduty(req)
        self.received.append(req)
        async with self._arrived:
            self._arrived.notify_all()
        return answer

    async def __aenter__(self) -> LimitReceiver:
        await self.start()
        return self

    async def _forward(self, req: Received) -> web.Response:
        assert self.forward is not None
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.post(
            self.forward + req.path,
            data=req.body,
            headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(10),
        ) as r:
            text = await r.text()
        if r.status >= 300:
            self.violations.append(
                Violation(self.service, f"the real service answered {r.status}: {text}", True)
            )
        return web.Response(status=r.status, text=text)

    def _pagerduty(self, req: Received) -> None:
        """The incident model: keyed by dedup_key; trigger opens (or updates an open one),
        acknowledge acknowledges, resolve closes; a change event opens nothing."""
        body = req.json()
        if req.path == "/v2/change/enqueue":
            self.changes.append(body)
            return
        key, action = body.get("dedup_key"), body["event_action"]
        incident = self.incidents.get(key)
        if action == "trigger":
            payload = body["payload"]
            if incident is None or incident.state == "resolved":
                self.incidents[key] = Incident("triggered", payload["summary"], payload["source"])
            else:
                incident.triggers += 1
                incident.summary = payload["summary"]
        elif incident is not None and incident.state != "resolved":
            incident.state = "acknowledged" if action == "acknowledge" else "resolved"

    def open_incidents(self) -> dict[str, Incident]:
        return {k: i for k, i in self.incidents.items() if i.state != "resolved"}


@contextlib.asynccontextmanager
async def real_alertmanager(tmp_path: Path, notify_url: str) -> AsyncIterator[str]:
    """A real Prometheus Alertmanager on 127.0.0.1 (as tests/test_delivery_alertmanager.py runs
    it), notifying ``notify_url``; yields its base URL. A missing binary fails, never skips."""
    if shutil.which(AM_BIN) is None:
        pytest.fail(f"{AM_BIN} not found: install the Debian package prometheus-alertmanager")
    port = free_port()
    config = tmp_path / "am.yml"
    config.write_text(
        "route:\n  receiver: hook\n  group_by: [alertname]\n"
        "  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n"
        "receivers:\n  - name: hook\n    webhook_configs:\n"
        f"      - url: {notify_url}\n        send_resolved: true\n"
    )
    log = tmp_path / "am.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            AM_BIN,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{url}/-/ready", timeout=aiohttp.ClientTimeout(1)) as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("alertmanager did not become ready: " + log.read_text())
        yield url
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()


async def am_alerts(url: str) -> list[dict[str, Any]]:
    """The alerts a real Alertmanager holds (``GET /api/v2/alerts``)."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{url}/api/v2/alerts", timeout=aiohttp.ClientTimeout(5)) as r,
    ):
        data: list[dict[str, Any]] = await r.json()
        return data
