"""The two template languages of rules.yaml, at the bottom of the import layers: the config
loader validates both at load time, the rules render the first and delivery the second.

Summary and description templates: ``str.format`` over a line's fields, never failing. Users write
``"nginx upstream {upstream} timing out"``. A missing field renders as the placeholder itself
(``{upstream}``) instead of raising, and a malformed template renders verbatim, so an alert is
never lost to a template mistake (``detector check`` reports such mistakes up front).

Per-webhook custom bodies (``template:`` in rules.yaml): ``string.Template``. Why
``string.Template`` and not Jinja2: a template here only needs to place alert fields into a JSON
body, and ``string.Template`` can do nothing else — no attribute access, no calls, no loops, no new
dependency, nothing to sandbox. (``str.format`` would allow ``{x.__class__}`` attribute walks;
Jinja2 needs its sandbox and a dependency for power nobody asked for.) Placeholders (``$summary``
or ``${summary}``) go INSIDE JSON strings: every value is inserted JSON-string-escaped, so the
result is valid JSON whatever a log line contains::

    {"text": "$status: $summary on $host", "runbook": "$runbook"}

Available: every top-level payload key (lists and objects appear as their JSON text), plus
``$title``, ``$samples_text`` (newline-joined samples), ``$attempt`` and ``$label_<name>`` for
each label whose name is an identifier. ``$$`` is a literal dollar sign.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Mapping
from typing import Any

_FORMATTER = string.Formatter()


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, fields: Mapping[str, Any]) -> str:
    try:
        if _has_paths(template):
            return _PATHS.vformat(template, (), fields)
        return template.format_map(_Missing(fields))
    except (ValueError, IndexError, AttributeError, KeyError, TypeError):
        return template


@functools.lru_cache(maxsize=512)
def _has_paths(template: str) -> bool:
    """Whether a template names a dotted or indexed field (``{http.status}``, ``{tags[0]}``)."""
    try:
        return any(n and ("." in n or "[" in n) for _, n, _, _ in _FORMATTER.parse(template))
    except ValueError:
        return False


class _PathFormatter(string.Formatter):
    """``{http.status}`` and ``{items[0].id}`` name the fields ``http.status`` and
    ``items.0.id`` of a parsed line (``structured.Record``) when the fields have that key;
    otherwise ``str.format``'s own attribute and index lookups apply, and a missing field
    renders as its placeholder."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        path = field_name.replace("[", ".").replace("]", "") if "[" in field_name else field_name
        if path in kwargs:
            return kwargs[path], field_name
        first = field_name.split(".", maxsplit=1)[0].split("[", maxsplit=1)[0]
        if first not in kwargs:
            return "{" + field_name + "}", field_name
        return super().get_field(field_name, args, kwargs)


_PATHS = _PathFormatter()


def field_names(template: str) -> set[str]:
    """The top-level field names a template refers to (``{a.b}`` → ``a``)."""
    names: set[str] = set()
    try:
        for _, name, _, _ in _FORMATTER.parse(template):
            if name:
                names.add(name.split(".")[0].split("[")[0])
    except ValueError:
        pass
    return names


# --- webhook body templates (string.Template) -------------------------------------------------


def title(alert: Mapping[str, Any]) -> str:
    """``[FIRING] critical nginx-5xx on db1: summary`` — one line every format can use."""
    state = alert.get("notification") or alert.get("status") or "firing"
    word = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED", "info": "INFO"}
    head = word.get(str(state), str(state).upper())
    return f"[{head}] {alert.get('rule')} on {alert.get('host')}: {alert.get('summary')}"


EXAMPLE_ALERT: dict[str, Any] = {
    "event_id": "e",
    "fingerprint": "f",
    "notification": "firing",
    "status": "firing",
    "rule": "r",
    "kind": "error",
    "severity": "warning",
    "summary": "s",
    "description": "d",
    "labels": {"host": "h"},
    "owner": None,
    "runbook": None,
    "host": "h",
    "source": None,
    "first_seen_at": "2026-01-01T00:00:00.000Z",
    "last_seen_at": "2026-01-01T00:00:00.000Z",
    "resolved_at": None,
    "count": 1,
    "samples": [],
    "evidence": {},
    "created_at": "2026-01-01T00:00:00.000Z",
}


class TemplateError(ValueError):
    """The template does not produce valid JSON, or names an unknown placeholder."""


def _escaped(value: Any) -> str:
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return json.dumps(text, ensure_ascii=False)[1:-1]


def variables(alert: Mapping[str, Any], attempt: int) -> dict[str, str]:
    out = {str(k): _escaped(v) for k, v in alert.items()}
    out["title"] = _escaped(title(alert))
    out["samples_text"] = _escaped("\n".join(str(s) for s in alert.get("samples") or []))
    out["attempt"] = str(attempt)
    for key, value in (alert.get("labels") or {}).items():
        if str(key).isidentifier():
            out[f"label_{key}"] = _escaped(value)
    return out


def render_text(template: str, alert: Mapping[str, Any], attempt: int) -> bytes:
    """The body; a placeholder with no value (a label this alert lacks) stays as written."""
    text = string.Template(template).safe_substitute(variables(alert, attempt))
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise TemplateError(
            f"template does not render valid JSON: {e.msg} at char {e.pos}"
        ) from None
    return text.encode()


def validate(template: str) -> str | None:
    """For ``detector check``: None if the template is usable, else what is wrong."""
    tpl = string.Template(template)
    if not tpl.is_valid():
        return "bad placeholder (a lone $; write $$ for a dollar sign)"
    known = set(variables(EXAMPLE_ALERT, 1))
    unknown = [n for n in tpl.get_identifiers() if n not in known and not n.startswith("label_")]
    if unknown:
        return f"unknown placeholder ${unknown[0]} (known: {', '.join(sorted(known))})"
    try:
        render_text(template, EXAMPLE_ALERT, 1)
    except TemplateError as e:
        return str(e)
    return None
