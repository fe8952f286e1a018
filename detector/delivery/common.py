"""Shared pieces of the delivery formats: the rendered request and small text helpers.

Every format module turns an outbox payload (the alert snapshot of ``alerts.Alert.payload``) into a
:class:`RenderedRequest`; the worker signs and POSTs it without knowing the format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detector import __version__

USER_AGENT = f"detector/{__version__}"
JSON_TYPE = "application/json"

SEVERITY_EMOJI = {"critical": "🔴", "error": "🟠", "warning": "🟡", "info": "🔵"}
RESOLVED_EMOJI = "✅"
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


def clip(text: str, limit: int, marker: str = "…") -> str:
    """``text`` cut to at most ``limit`` characters, marked when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(marker), 0)] + marker


def clip_bytes(text: str, limit: int) -> str:
    """``text`` cut so that its UTF-8 encoding is at most ``limit`` bytes."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: max(limit - 3, 0)].decode(errors="ignore") + "…"


def is_resolved(alert: Mapping[str, Any]) -> bool:
    return alert.get("status") == "resolved"


def emoji(alert: Mapping[str, Any]) -> str:
    if is_resolved(alert):
        return RESOLVED_EMOJI
    return SEVERITY_EMOJI.get(str(alert.get("severity")), "⚪")


def colour(alert: Mapping[str, Any]) -> int:
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
