"""Shared pieces of the delivery formats: the rendered request and the text rules they all keep.

Every format module turns an outbox payload (the alert snapshot of ``alerts.Alert.payload``) into a
:class:`RenderedRequest`; the worker signs and POSTs it without knowing the format. The rules kept
here: :func:`prepare` gives an alert with an empty summary its default one ("<rule> <kind> on
<host>") before any format sees it; the clips cut in the unit each service counts (code points,
UTF-16 units, UTF-8 bytes), never inside a character, and end with :data:`CUT` where text was cut;
:func:`http_url` is the one test of "this runbook may be sent as a link"; :func:`inert` keeps text
from log lines from becoming a link or markup where a service renders markdown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from detector import __version__

USER_AGENT = f"detector/{__version__}"
JSON_TYPE = "application/json"

SEVERITY_EMOJI = {"critical": "🔴", "error": "🟠", "warning": "🟡", "info": "🔵"}
RESOLVED_EMOJI = "✅"
INFO_EMOJI = "ℹ️"
SEVERITY_COLOUR = {"critical": 0xD00000, "error": 0xE8590C, "warning": 0xF2C744, "info": 0x1F6FEB}
RESOLVED_COLOUR = 0x2DA44E


@dataclass(frozen=True)
class RenderedRequest:
    """One HTTP POST: where, what (a JSON value or raw bytes) and format-specific headers."""

    url: str
    json_body: Any = None
    data: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = JSON_TYPE

    def body(self) -> bytes:
        """The exact bytes sent (and signed)."""
        if self.data is not None:
            return self.data
        return dumps(self.json_body).encode()


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


CUT = "…"  # the visible marker where a text was cut
ZWSP = "\u200b"  # zero-width space: breaks a link or markup token without changing what is read
URL_MAX = 2048
_URL_BAD = re.compile(r"[\s<>\"`{}|\\^\x00-\x1f\x7f]")
_LINKISH = re.compile(r"(?i)(://|\]\(|\bwww\.)")
_MARKUP = re.compile(r"([*_~`|])")
_LINE_MARKUP = re.compile(r"(?m)^(\s*)([>#])")  # a quote or a heading only at a line's start


def clip(text: str, limit: int, marker: str = CUT) -> str:
    """``text`` cut to at most ``limit`` code points, marked when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(marker), 0)] + marker


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (what JavaScript's ``length`` and Discord count)."""
    return len(text.encode("utf-16-le")) // 2


def clip_utf16(text: str, limit: int, marker: str = CUT) -> str:
    """``text`` cut to at most ``limit`` UTF-16 units (never inside a surrogate pair), marked."""
    if utf16_len(text) <= limit:
        return text
    room = max(limit - utf16_len(marker), 0)
    n = 0
    for i, ch in enumerate(text):
        n += 2 if ord(ch) > 0xFFFF else 1
        if n > room:
            return text[:i] + marker
    return text + marker  # not reached: the text was longer than limit


def clip_bytes(text: str, limit: int, marker: str = CUT) -> str:
    """``text`` cut so that its UTF-8 encoding is at most ``limit`` bytes (whole characters)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    room = max(limit - len(marker.encode()), 0)
    return raw[:room].decode(errors="ignore") + marker


def http_url(value: object) -> str | None:
    """``value`` if it is an absolute http(s) URL that every service takes as a link, else None.

    Absolute (scheme and host), no whitespace, quotes, angle brackets or control characters (what
    RFC 3986 leaves out and Slack's ``<url|text>`` or a markdown link would break on), at most
    :data:`URL_MAX` characters.
    """
    if not isinstance(value, str) or not value or len(value) > URL_MAX:
        return None
    if _URL_BAD.search(value):
        return None
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return value


def inert(text: str, *, markup: bool = True) -> str:
    """``text`` that no markdown renderer turns into a link (``scheme://``, ``[x](y)``, ``www.``)
    or, with ``markup``, into formatting (``*`` ``_`` ``~`` `````` ``|``, and ``>`` ``#`` at a
    line's start): a zero-width space goes inside each such token, so it still reads the same."""
    text = _LINKISH.sub(lambda m: m.group(1)[0] + ZWSP + m.group(1)[1:], text)
    if markup:
        text = _MARKUP.sub(ZWSP + r"\1", text)
        text = _LINE_MARKUP.sub(r"\1" + ZWSP + r"\2", text)
    return text


def default_summary(alert: Mapping[str, Any]) -> str:
    """What an alert says when its rule gave it no summary: ``<rule> <kind> on <host>``."""
    return f"{alert.get('rule')} {alert.get('kind')} on {alert.get('host')}"


def prepare(alert: Mapping[str, Any]) -> Mapping[str, Any]:
    """The alert as every format renders it: an empty summary replaced by the default one."""
    if str(alert.get("summary") or "").strip():
        return alert
    return {**alert, "summary": default_summary(alert)}


def is_info(alert: Mapping[str, Any]) -> bool:
    """An informational notice (late, too early, ran twice, a digest): nothing to resolve."""
    return alert.get("notification") == "info"


def runbook_parts(alert: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(link, text): the runbook as a URL when it is one, else as plain text (or neither)."""
    runbook = alert.get("runbook")
    if not runbook:
        return None, None
    url = http_url(runbook)
    return (url, None) if url is not None else (None, str(runbook))


def is_resolved(alert: Mapping[str, Any]) -> bool:
    return alert.get("status") == "resolved"


def emoji(alert: Mapping[str, Any]) -> str:
    if is_info(alert):
        return INFO_EMOJI
    if is_resolved(alert):
        return RESOLVED_EMOJI
    return SEVERITY_EMOJI.get(str(alert.get("severity")), "⚪")


def colour(alert: Mapping[str, Any]) -> int:
    if is_info(alert):
        return SEVERITY_COLOUR["info"]
    if is_resolved(alert):
        return RESOLVED_COLOUR
    return SEVERITY_COLOUR.get(str(alert.get("severity")), 0x808080)


def facts(alert: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The short name/value pairs shown as fields by the chat formats, in a fixed order."""
    out: list[tuple[str, str]] = [
        ("Severity", str(alert.get("severity"))),
        ("Host", str(alert.get("host"))),
        ("Rule", str(alert.get("rule"))),
        ("Kind", str(alert.get("kind"))),
    ]
    if alert.get("source"):
        out.append(("Source", str(alert["source"])))
    out.append(("Count", str(alert.get("count"))))
    out.append(("First seen", str(alert.get("first_seen_at"))))
    if alert.get("resolved_at"):
        out.append(("Resolved", str(alert["resolved_at"])))
    if alert.get("owner"):
        out.append(("Owner", str(alert["owner"])))
    skip = {"host", "rule", "severity", "kind", "source"}
    for key, value in sorted((alert.get("labels") or {}).items()):
        if key not in skip:
            out.append((str(key), str(value)))
    return out


def samples_text(alert: Mapping[str, Any], limit: int) -> str:
    lines = [str(s) for s in alert.get("samples") or []]
    return clip("\n".join(lines), limit)
