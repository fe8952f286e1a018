"""The non-rule sections of rules.yaml: ``agent:``, ``defaults:``, ``sources:`` and ``webhooks:``.

Sits between ``load.py`` (which splits the document into sections and collects the declared source
and webhook names first, so references can be checked in any order) and the typed config of
``model.py``: each reader takes the section's node, asks the ``NodeReader`` of ``nodes.py`` for
its typed values and returns the frozen dataclass, or ``None`` after recording the problems.
:func:`common_fields` (severity, notify, repeat, …) is shared with ``rules.py``, since a rule may
override every default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from yaml.nodes import Node, ScalarNode

from detector.config.nodes import TAG_BOOL, TAG_INT, NodeReader, did_you_mean
from detector.frozen import Frozen
from detector.model import (
    LOG_FORMATS,
    SEVERITIES,
    WEBHOOK_FORMATS,
    AgentConfig,
    Defaults,
    FileSourceConfig,
    FlapSpec,
    JournaldSourceConfig,
    Location,
    MultilineConfig,
    Severity,
    SmtpConfig,
    SourceConfig,
    WebhookConfig,
    WebhookFormat,
)
from detector.records import default_state_path
from detector.structured import PARSE_MODES, ParseMode, normalize_path
from detector.templating import validate as template_problem

JOURNALD_PRIORITIES: Mapping[str, int] = {
    "emerg": 0,
    "emergency": 0,
    "panic": 0,
    "alert": 1,
    "crit": 2,
    "critical": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "informational": 6,
    "debug": 7,
}

_AGENT_KEYS = (
    "state",
    "host",
    "listen",
    "listen_token",
    "heartbeat",
    "heartbeat_every",
    "fallback",
    "source_grace",
    "settle",
    "log_format",
    "cache_dir",
)
DEFAULTS_KEYS = (
    "severity",
    "notify",
    "repeat",
    "resolve_after",
    "owner",
    "runbook",
    "labels",
    "for",
    "keep_firing_for",
    "flap",
    "max_keys",
)
_TIME_KEYS = ("timezone", "time_format", "time_regex")
"""How ``detector test`` reads a file source's stamps (see ``timestamps.py``)."""
_FILE_KEYS = (
    "file",
    "start_at",
    "max_line_bytes",
    "poll_interval",
    "rotated",
    "exclude",
    *_TIME_KEYS,
    "parse",
    "message",
    "time",
)
_PARSE_CHOICES = (*PARSE_MODES, "docker")
"""``parse: docker`` is ``parse: json`` with ``message: log``, ``time: time`` and the pieces of
a line over 16 KiB joined (docker's json-file log driver)."""
_JOURNALD_KEYS = (
    "units",
    "identifiers",
    "priority",
    "match",
    "namespace",
    "start_at",
    "journalctl",
)
_WEBHOOK_KEYS = (
    "url",
    "format",
    "secret",
    "headers",
    "routing_key",
    "topic",
    "template",
    "timeout",
    "connect_timeout",
    "max_age",
    "rate",
    "fallback",
    "fail_after",
    "smtp",
    "from",
    "to",
    "command",
)
_SMTP_KEYS = ("host", "port", "starttls", "tls", "username", "password", "ca_file")
_CHANNEL_KEYS = {  # the keys of the formats that are no HTTP POST
    "email": ("smtp", "from", "to"),
    "exec": ("command",),
}
_JOURNAL_FIELD = re.compile(r"[A-Z0-9_]+")


SYSTEM_CACHE_DIR = Path("/var/cache/detector")
"""The unit's ``CacheDirectory=detector``: root's default cache directory too."""


class Declared(Frozen):
    """The source and webhook names the file declares; ``journald`` and ``parsed`` (``parse:``
    of file sources) are filled by read_sources."""

    sources: set[str]
    webhooks: set[str]
    journald: set[str] = field(default_factory=set)
    parsed: dict[str, ParseMode] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    """``message:`` of the parsed sources: what their samples' ``match:`` sees."""


def default_cache_dir(env: Mapping[str, str] | None, euid: int | None = None) -> Path | None:
    """Where the compiled-pattern cache lives unless ``agent: cache_dir`` says otherwise:
    ``$CACHE_DIRECTORY`` (set by the unit's ``CacheDirectory=detector``), else for root
    ``/var/cache/detector`` (that same directory, so that ``sudo detector check`` warms the
    service's cache), else ``$XDG_CACHE_HOME/detector``, else ``~/.cache/detector``; None (no
    cache) when there is no home either. ``euid`` defaults to this process's."""
    e = os.environ if env is None else env
    if e.get("CACHE_DIRECTORY"):
        return Path(e["CACHE_DIRECTORY"].split(":")[0])
    if (os.geteuid() if euid is None else euid) == 0:
        return SYSTEM_CACHE_DIR
    if e.get("XDG_CACHE_HOME", "").startswith("/"):
        return Path(e["XDG_CACHE_HOME"]) / "detector"
    home = e.get("HOME")
    return Path(home) / ".cache" / "detector" if home and home.startswith("/") else None


def read_agent(r: NodeReader, declared: Declared, node: Node | None) -> AgentConfig | None:
    entries = {} if node is None else r.mapping(node, "agent", "a mapping", _AGENT_KEYS)
    if entries is None:
        return None
    w = "agent"
    kw: dict[str, Any] = {}
    state: Path = default_state_path(r.env)
    if "state" in entries:
        s = r.string(entries["state"][1], f"{w}: state", "a file path")
        if s is not None:
            state = Path(s).expanduser()
    host = os.uname().nodename  # socket.gethostname(), without importing socket
    if "host" in entries:
        h = r.string(entries["host"][1], f"{w}: host")
        if h is not None:
            host = h
    if "listen" in entries:
        vnode = entries["listen"][1]
        s = r.string(vnode, f"{w}: listen", "host:port")
        if s is not None:
            h, sep, port = s.rpartition(":")
            if not sep or not h or not port.isdigit() or not 0 < int(port) < 65536:
                r.err(
                    vnode,
                    f"{w}: listen",
                    f"'{s}' is not host:port — write e.g. 127.0.0.1:9465",
                )
            else:
                kw["listen"] = s
    if "listen_token" in entries:
        kw["listen_token"] = r.string(entries["listen_token"][1], f"{w}: listen_token")
    if "heartbeat" in entries:
        kw["heartbeat"] = _url(r, entries["heartbeat"][1], f"{w}: heartbeat")
    for key in ("heartbeat_every", "source_grace", "settle"):
        if key in entries:
            d = r.span(entries[key][1], f"{w}: {key}", positive=key != "settle")
            if d is not None:
                kw[key] = d
    if "fallback" in entries:
        names = r.names(entries["fallback"][1], f"{w}: fallback", declared.webhooks, "webhook")
        if names is not None:
            kw["fallback"] = names
    if "log_format" in entries:
        c = r.choice(entries["log_format"][1], f"{w}: log_format", LOG_FORMATS)
        if c is not None:
            kw["log_format"] = c
    kw["cache_dir"] = default_cache_dir(r.env)
    if "cache_dir" in entries:
        s = r.string(entries["cache_dir"][1], f"{w}: cache_dir", "a directory, or 'off'")
        if s is not None:
            kw["cache_dir"] = None if s.strip().lower() in ("off", "") else Path(s).expanduser()
    return AgentConfig(state=state, host=host, **kw)


def read_defaults(r: NodeReader, declared: Declared, node: Node | None) -> Defaults | None:
    entries = {} if node is None else r.mapping(node, "defaults", "a mapping", DEFAULTS_KEYS)
    if entries is None:
        return None
    kw = common_fields(r, declared, entries, "defaults")
    return Defaults(**kw)


def common_fields(
    r: NodeReader, declared: Declared, entries: dict[str, tuple[Node, Node]], w: str
) -> dict[str, Any]:
    """severity, notify, repeat, resolve_after, owner, runbook, labels, for, keep_firing_for,
    flap: shared by rules."""
    kw: dict[str, Any] = {}
    if "severity" in entries:
        c = r.choice(entries["severity"][1], f"{w}: severity", SEVERITIES)
        if c is not None:
            kw["severity"] = cast(Severity, c)
    if "notify" in entries:
        names = r.names(entries["notify"][1], f"{w}: notify", declared.webhooks, "webhook")
        if names is not None:
            kw["notify"] = names
    if "repeat" in entries:
        d = r.duration(entries["repeat"][1], f"{w}: repeat", never=True)
        if d is not None:
            kw["repeat"] = None if d == "never" else d
    if "resolve_after" in entries:
        d2 = r.span(entries["resolve_after"][1], f"{w}: resolve_after")
        if d2 is not None:
            kw["resolve_after"] = d2
    for key in ("owner", "runbook"):
        if key in entries:
            s = r.string(entries[key][1], f"{w}: {key}")
            if s is not None:
                kw[key] = s
    if kw.get("runbook") is not None and _looks_like_a_broken_link(kw["runbook"]):
        r.warn(
            entries["runbook"][1],
            f"{w}: runbook",
            f"'{kw['runbook'][:60]}' is not an absolute http(s) URL, so no receiver shows it as a "
            "link (it is sent as text) — write the full URL, e.g. https://wiki.example.com/runbook",
        )
    if "labels" in entries:
        labels = r.str_map(
            entries["labels"][1], f"{w}: labels", "a mapping of label: value", label_keys=True
        )
        if labels is not None:
            kw["labels"] = labels
    for key, name in (("for", "pending_for"), ("keep_firing_for", "keep_firing_for")):
        if key in entries:
            d3 = r.span(entries[key][1], f"{w}: {key}", positive=False)
            if d3 is not None and d3 < timedelta(0):
                r.err(entries[key][1], f"{w}: {key}", "must not be negative — write e.g. 5m")
            elif d3 is not None:
                kw[name] = d3
    if "max_keys" in entries:
        n = r.integer(entries["max_keys"][1], f"{w}: max_keys", lo=1)
        if n is not None:
            kw["max_keys"] = n
    if "flap" in entries:
        flap = _flap(r, entries["flap"][1], f"{w}: flap")
        if flap is not False:
            kw["flap"] = flap
    return kw


def _flap(r: NodeReader, node: Node, w: str) -> FlapSpec | Literal[False] | None:
    """``flap: {changes: K, within: T}``, or ``flap: false`` (off); False after a problem."""
    if isinstance(node, ScalarNode) and node.tag == TAG_BOOL:
        if r.boolean(node, w) is False:
            return None
        r.err(node, w, "write flap: {changes: 4, within: 1h} to turn it on, or flap: false")
        return False
    entries = r.mapping(
        node, w, "a mapping such as {changes: 4, within: 1h}, or false", ("changes", "within")
    )
    if entries is None:
        return False
    missing = [k for k in ("changes", "within") if k not in entries]
    if missing:
        r.err(node, w, f"missing {' and '.join(missing)} — write e.g. {{changes: 4, within: 1h}}")
        return False
    changes = r.integer(entries["changes"][1], f"{w}.changes", 1)
    within = r.span(entries["within"][1], f"{w}.within")
    if changes is None or within is None:
        return False
    return FlapSpec(changes=changes, within=within)


def read_sources(r: NodeReader, declared: Declared, node: Node) -> dict[str, SourceConfig]:
    entries = r.mapping(node, "sources", "a mapping of source name: {file: …}", None)
    out: dict[str, SourceConfig] = {}
    for name, (knode, vnode) in (entries or {}).items():
        w = f"source '{name}'"
        keys = (*_FILE_KEYS, "journald", "multiline")
        body = r.mapping(vnode, w, "a mapping with file: or journald:", keys)
        if body is None:
            continue
        loc = r.location(knode)
        if ("file" in body) == ("journald" in body):
            r.err(
                vnode,
                w,
                "needs exactly one of file: (path or glob) or journald: {units: …} — "
                "write e.g. {file: /var/log/syslog} or {journald: {units: [ssh.service]}}",
            )
            continue
        src: SourceConfig | None
        if "journald" in body:
            declared.journald.add(name)
            src = _journald(r, name, body, w, loc)
        else:
            src = _file(r, name, body, w, loc)
            if src is not None and src.parse is not None:
                declared.parsed[name] = src.parse
                if src.message is not None:
                    declared.messages[name] = src.message
        if src is not None:
            out[name] = src
    return out


def _start_at(r: NodeReader, node: Node, w: str) -> Literal["end", "beginning"] | None:
    c = r.choice(node, f"{w}: start_at", ("end", "beginning"))
    return cast(Literal["end", "beginning"] | None, c)


def _file(
    r: NodeReader, name: str, body: dict[str, tuple[Node, Node]], w: str, loc: Location
) -> FileSourceConfig | None:
    kw: dict[str, Any] = {}
    paths = r.strings(body["file"][1], f"{w}: file", "path or glob")
    if paths is not None and (not paths or any(not p.strip() for p in paths)):
        r.err(body["file"][1], f"{w}: file", "empty path — write e.g. /var/log/syslog")
        paths = None
    if "start_at" in body:
        kw["start_at"] = _start_at(r, body["start_at"][1], w)
    if "max_line_bytes" in body:
        kw["max_line_bytes"] = r.integer(body["max_line_bytes"][1], f"{w}: max_line_bytes", 1)
    if "poll_interval" in body:
        kw["poll_interval"] = r.span(body["poll_interval"][1], f"{w}: poll_interval")
    if "rotated" in body:
        kw["rotated"] = _glob(r, body["rotated"][1], f"{w}: rotated")
    if "exclude" in body:
        globs = r.strings(body["exclude"][1], f"{w}: exclude", "glob")
        if globs is not None and any(not g.strip() for g in globs):
            r.err(body["exclude"][1], f"{w}: exclude", "empty glob — write e.g. ['*.gz']")
            globs = None
        kw["exclude"] = globs
    kw.update(_time_keys(r, body, w))
    if "multiline" in body:
        kw["multiline"] = _multiline(r, body["multiline"][1], w)
    if "parse" in body or "message" in body or "time" in body:
        kw.update(_records(r, body, w, kw))
    if paths is None or any(v is None for v in kw.values()):
        return None
    return FileSourceConfig(name=name, paths=paths, location=loc, **kw)


def _records(
    r: NodeReader, body: dict[str, tuple[Node, Node]], w: str, kw: dict[str, Any]
) -> dict[str, Any]:
    """``parse:``, ``message:`` and ``time:`` of a file source, and what they make of its
    ``multiline:`` (whose patterns then see the messages)."""
    out: dict[str, Any] = {}
    parse = None
    if "parse" in body:
        parse = r.choice(body["parse"][1], f"{w}: parse", _PARSE_CHOICES)
        if parse is None:
            return {"parse": None}
    docker = parse == "docker"
    if docker:
        out.update(parse="json", message="log", time_field="time", partial=True)
    elif parse is not None:
        out["parse"] = parse
    for key, attr, example in (
        ("message", "message", "message: log (docker), message: msg (logfmt)"),
        ("time", "time_field", "time: time (docker), time: time_iso8601 (nginx)"),
    ):
        if key not in body:
            continue
        node = body[key][1]
        if parse is None:
            r.err(
                node,
                f"{w}: {key}",
                f"names a field, so it needs parse: json or parse: logfmt — add parse:, "
                f"e.g. {{parse: json, {example.split(', ')[0].split(' (')[0]}}}",
            )
            out[attr] = None
            continue
        value = r.string(node, f"{w}: {key}", "a field path")
        if value is not None and not value.strip(".[]0123456789 "):
            r.err(node, f"{w}: {key}", f"empty field path — write e.g. {example}")
            value = None
        out[attr] = None if value is None else normalize_path(value.strip())
    if "time" in body and kw.get("time_regex") is not None:
        r.err(
            body["time"][1],
            f"{w}: time",
            "time: (a field) and time_regex: (on the raw line) both say where the stamp is — "
            "keep one; time_format: still reads the field's value",
        )
        out["time_field"] = None
    ml = kw.get("multiline")
    msg = out.get("message")
    if ml is not None and parse is not None:
        if msg is None:
            if "message" not in body:
                r.err(
                    body["multiline"][0],
                    f"{w}: multiline",
                    "on a parse: source, the patterns see a record's message field, and this "
                    "source has none — add message: FIELD (e.g. message: msg), or parse: "
                    "docker for docker's json-file logs",
                )
            return {**out, "multiline": None}
        kw["multiline"] = replace(
            ml, parse=out["parse"], message=msg, partial=bool(out.get("partial"))
        )
    elif docker and msg is not None:  # no multiline: only the pieces of long lines join
        out["multiline"] = MultilineConfig(
            mode="none", pattern="", parse="json", message=msg, partial=True
        )
    return out


def _glob(r: NodeReader, node: Node, w: str) -> str | None:
    got = r.string(node, w, "a glob of rotated copies")
    if got is not None and not got.strip():
        r.err(node, w, "empty glob — write e.g. /var/log/old/app.log-*")
        return None
    return got


def _time_keys(r: NodeReader, body: dict[str, tuple[Node, Node]], w: str) -> dict[str, Any]:
    """``timezone:``, ``time_format:``, ``time_regex:`` of a file source, checked."""
    kw: dict[str, Any] = {}
    for key in _TIME_KEYS:
        if key not in body:
            continue
        node = body[key][1]
        value = r.string(node, f"{w}: {key}")
        kw[key] = value
        if value is None:
            continue
        if key == "timezone" and value != "local" and value.upper() != "UTC":
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415 - a named zone only

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                r.err(
                    node,
                    f"{w}: timezone",
                    f"unknown time zone '{value}' — write e.g. Europe/Berlin, UTC or local",
                )
                kw[key] = None
        elif key == "time_format" and "%" not in value:
            r.err(node, f"{w}: time_format", "a strptime format such as '%d.%m.%Y %H:%M:%S'")
            kw[key] = None
        elif key == "time_regex":
            try:
                rx = re.compile(value)
            except re.error as e:
                r.err(node, f"{w}: time_regex", f"invalid regex: {e}")
                kw[key] = None
                continue
            if rx.groups == 0:
                r.err(
                    node,
                    f"{w}: time_regex",
                    "needs a group around the stamp, e.g. 'ts=(\\S+)' or '(?P<time>…)'",
                )
                kw[key] = None
    return kw


_MULTILINE_KEYS = ("start", "continue", "max_lines", "timeout")


def _multiline(r: NodeReader, node: Node, w: str) -> MultilineConfig | None:
    """``multiline: {start: REGEX}`` or ``{continue: REGEX}``, with ``max_lines`` and
    ``timeout`` (``sources/events.py``)."""
    mw = f"{w}: multiline"
    body = r.mapping(node, mw, "a mapping such as {start: '^\\S'}", _MULTILINE_KEYS)
    if body is None:
        return None
    modes = [k for k in ("start", "continue") if k in body]
    if len(modes) != 1:
        r.err(
            node,
            mw,
            "needs exactly one of start: REGEX (a matching line begins an event) or continue: "
            "REGEX (a matching line belongs to the event before it) — write e.g. "
            "{start: '^\\d{4}-\\d\\d-\\d\\d'} or {continue: '^\\s'}",
        )
        return None
    mode: Literal["start", "continue"] = modes[0]
    kw: dict[str, Any] = {"pattern": r.regex(body[mode][1], f"{mw}.{mode}")}
    if "max_lines" in body:
        kw["max_lines"] = r.integer(body["max_lines"][1], f"{mw}.max_lines", 1)
    if "timeout" in body:
        kw["timeout"] = r.span(body["timeout"][1], f"{mw}.timeout")
    if any(v is None for v in kw.values()):
        return None
    return MultilineConfig(mode=mode, **kw)


def _journald(
    r: NodeReader, name: str, body: dict[str, tuple[Node, Node]], w: str, loc: Location
) -> JournaldSourceConfig | None:
    for key in ("max_line_bytes", "poll_interval", "file", "rotated", "exclude", *_TIME_KEYS):
        if key in body:
            r.err(body[key][0], w, f"'{key}' applies to file sources only — remove it")
    if "parse" in body:
        r.err(
            body["parse"][0],
            w,
            "a journald source has its fields already (MESSAGE, PRIORITY, _SYSTEMD_UNIT, …: "
            "use them in fields: of a rule) — remove parse:",
        )
    inner = r.mapping(
        body["journald"][1],
        f"{w}: journald",
        "a mapping such as {units: [x.service]}",
        _JOURNALD_KEYS,
    )
    if inner is None:
        return None
    jw = f"{w}: journald"
    kw: dict[str, Any] = {}
    if "start_at" in body:
        kw["start_at"] = _start_at(r, body["start_at"][1], w)
    for key, what in (("units", "unit name"), ("identifiers", "syslog identifier")):
        if key in inner:
            kw[key] = r.strings(inner[key][1], f"{jw}.{key}", what)
    if "priority" in inner:
        kw["priority"] = _priority(r, inner["priority"][1], f"{jw}.priority")
    if "match" in inner:
        kw["match"] = _journal_match(r, inner["match"][1], f"{jw}.match")
    for key in ("namespace", "journalctl"):
        if key in inner:
            kw[key] = r.string(inner[key][1], f"{jw}.{key}")
    if "start_at" in inner:
        kw["start_at"] = _start_at(r, inner["start_at"][1], jw)
    if "multiline" in body:
        kw["multiline"] = _multiline(r, body["multiline"][1], w)
    if any(v is None for v in kw.values()):
        return None
    return JournaldSourceConfig(name=name, location=loc, **kw)


def _priority(r: NodeReader, node: Node, w: str) -> int | None:
    if isinstance(node, ScalarNode) and node.tag == TAG_INT:
        return r.integer(node, w, 0, 7)
    s = r.string(node, w, "a priority name (e.g. warning) or 0-7")
    if s is None:
        return None
    if s.isdigit() and int(s) <= 7:
        return int(s)
    p = JOURNALD_PRIORITIES.get(s.lower())
    if p is None:
        hint = did_you_mean(s.lower(), JOURNALD_PRIORITIES) or (
            "use emerg, alert, crit, err, warning, notice, info, debug or 0-7"
        )
        r.err(node, w, f"unknown priority '{s}' — {hint}")
    return p


def _journal_match(r: NodeReader, node: Node, w: str) -> dict[str, tuple[str, ...]] | None:
    entries = r.mapping(node, w, "a mapping of FIELD: value (or list of values)", None)
    if entries is None:
        return None
    out: dict[str, tuple[str, ...]] = {}
    ok = True
    for key, (knode, vnode) in entries.items():
        if not _JOURNAL_FIELD.fullmatch(key):
            r.err(
                knode,
                w,
                f"'{key}' is not a journald field name — fields are upper case, "
                f"e.g. _SYSTEMD_UNIT or {key.upper()}",
            )
            ok = False
            continue
        values = r.strings(vnode, f"{w}.{key}", "value")
        if values is None:
            ok = False
        else:
            out[key] = values
    return out if ok else None


def _url(r: NodeReader, node: Node, w: str) -> str | None:
    s = r.string(node, w, "an http:// or https:// URL")
    if s is None:
        return None
    parts = urlsplit(s.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        safe = urlsplit(r.redact(s.strip()))  # redacted before it is cut short
        shown = f"{safe.scheme}://{safe.netloc}…" if safe.scheme else f"'{r.redact(s)[:40]}'"
        if not s.strip():
            shown = "an empty value"
        r.err(
            node,
            w,
            f"expected an http:// or https:// URL, got {shown} — write e.g. "
            "https://hooks.example.com/path (quote it if it contains '#' or ': ')",
        )
        return None
    return s.strip()


def read_webhooks(r: NodeReader, declared: Declared, node: Node) -> dict[str, WebhookConfig]:
    entries = r.mapping(node, "webhooks", "a mapping of webhook name: {url: …}", None)
    out: dict[str, WebhookConfig] = {}
    for name, (knode, vnode) in (entries or {}).items():
        w = f"webhook '{name}'"
        body = r.mapping(vnode, w, "a mapping with url: and format:", _WEBHOOK_KEYS)
        if body is None:
            continue
        fmt = "json"
        kw: dict[str, Any] = {}
        if "format" in body:
            c = r.choice(body["format"][1], f"{w}: format", WEBHOOK_FORMATS)
            kw["format"] = cast(WebhookFormat | None, c)
            fmt = c or fmt
        if fmt in _CHANNEL_KEYS:
            got = _channel(r, fmt, body, vnode, w)
            if got is None:
                continue
            kw.update(got)
        elif "url" not in body:
            r.err(vnode, w, "missing required key 'url' — add url: https://…")
            continue
        else:
            kw["url"] = _url(r, body["url"][1], f"{w}: url")
            for key in ("smtp", "from", "to", "command"):
                if key in body:
                    need = "email" if key != "command" else "exec"
                    r.err(body[key][0], w, f"{key}: belongs to format: {need} — remove it")
                    kw["url"] = None
        for key in ("secret", "routing_key", "topic", "template"):
            if key in body:
                kw[key] = r.string(body[key][1], f"{w}: {key}")
        if kw.get("template") is not None:
            problem = template_problem(kw["template"])
            if problem is not None:
                r.err(
                    body["template"][1],
                    f"{w}: template",
                    f"{problem} — placeholders are $summary, $rule, $label_<name>, … "
                    "(see detector/templating.py)",
                )
        if fmt == "pagerduty" and "routing_key" not in body:
            r.err(
                vnode,
                w,
                "format pagerduty needs routing_key — add routing_key: "
                '"${PAGERDUTY_ROUTING_KEY}" (the integration key of the service)',
            )
            kw["routing_key"] = None
        if "headers" in body:
            kw["headers"] = r.str_map(
                body["headers"][1], f"{w}: headers", "a mapping of Header-Name: value"
            )
        for key in ("timeout", "connect_timeout", "max_age"):
            if key in body:
                kw[key] = r.span(body[key][1], f"{w}: {key}")
        if "rate" in body:
            kw["rate"] = r.integer(body["rate"][1], f"{w}: rate", 1)
        if "fail_after" in body:
            kw["fail_after"] = r.integer(body["fail_after"][1], f"{w}: fail_after", 1)
        if "fallback" in body:
            fb = r.names(body["fallback"][1], f"{w}: fallback", declared.webhooks, "webhook")
            if fb is not None and name in fb:
                r.err(
                    body["fallback"][1],
                    f"{w}: fallback",
                    "a webhook cannot be its own fallback — name a different webhook",
                )
                fb = None
            kw["fallback"] = fb
        optional = ("secret", "routing_key", "topic", "template")
        if any(v is None for k, v in kw.items() if k not in optional or k in body):
            continue
        if fmt not in _CHANNEL_KEYS:
            _check_format(r, fmt, body, kw, w)
        out[name] = WebhookConfig(name=name, location=r.location(knode), **kw)
    return out


def _channel(
    r: NodeReader, fmt: str, body: Mapping[str, tuple[Node, Node]], vnode: Node, w: str
) -> dict[str, Any] | None:
    """The keys of an ``email`` (``smtp:``, ``from:``, ``to:``) or ``exec`` (``command:``)
    webhook, which has no ``url:`` (its ``url`` is made up to name it: ``smtp://host:port``,
    ``exec:/path``); None after reporting a problem."""
    ok = True
    for key in ("url", "secret", "headers", "routing_key", "topic"):
        if key in body:
            r.err(body[key][0], w, f"format {fmt} has no {key}: — remove it")
            ok = False
    if fmt == "email" and "template" in body:
        r.err(body["template"][0], w, "format email has no template: — remove it")
        ok = False
    need = {"smtp": "{host: smtp.example.com}", "from": "detector@example.com", "to": "[ops@…]"}
    for key in _CHANNEL_KEYS[fmt]:
        if key not in body:
            example = need.get(key, "[/usr/local/bin/notify, --flag]")
            r.err(vnode, w, f"format {fmt} needs {key}: — add {key}: {example}")
            ok = False
    if not ok:
        return None
    if fmt == "exec":
        argv = r.strings(body["command"][1], f"{w}: command", "argument")
        if argv is None:
            return None
        if not argv or not argv[0].startswith("/"):
            r.err(
                body["command"][1],
                f"{w}: command",
                "the command must be a list whose first item is an absolute path, e.g. "
                "[/usr/local/bin/notify, --team, ops] (no shell runs it)",
            )
            return None
        return {"command": argv, "url": f"exec:{argv[0]}"}
    smtp = _smtp(r, body["smtp"][1], f"{w}: smtp")
    sender = r.string(body["from"][1], f"{w}: from", "a mail address")
    to = r.strings(body["to"][1], f"{w}: to", "mail address")
    for key, values in (("from", (sender,) if sender else ()), ("to", to or ())):
        for v in values:
            if "@" not in v:
                r.err(body[key][1], f"{w}: {key}", f"'{v}' is not a mail address — write a@b.c")
                return None
    if smtp is None or sender is None or not to:
        if to == ():
            r.err(body["to"][1], f"{w}: to", "no recipient — list at least one address")
        return None
    scheme = "smtps" if smtp.tls else "smtp"
    return {
        "smtp": smtp,
        "mail_from": sender,
        "mail_to": to,
        "url": f"{scheme}://{smtp.host}:{smtp.port}",
    }


def _smtp(r: NodeReader, node: Node, w: str) -> SmtpConfig | None:
    e = r.mapping(node, w, "a mapping such as {host: smtp.example.com, port: 587}", _SMTP_KEYS)
    if e is None:
        return None
    if "host" not in e:
        r.err(node, w, "missing required key 'host' — add host: smtp.example.com")
        return None
    kw: dict[str, Any] = {"host": r.string(e["host"][1], f"{w}.host", "a host name")}
    for key in ("starttls", "tls"):
        if key in e:
            kw[key] = r.boolean(e[key][1], f"{w}.{key}")
    if "port" in e:
        kw["port"] = r.integer(e["port"][1], f"{w}.port", 1, 65535)
    for key in ("username", "password", "ca_file"):
        if key in e:
            kw[key] = r.string(e[key][1], f"{w}.{key}")
    if any(v is None for v in kw.values()):
        return None
    if kw.get("port") == 465 and "tls" not in kw:
        kw["tls"] = True  # submissions over implicit TLS (RFC 8314)
    if kw.get("tls"):
        if kw.get("starttls"):
            r.err(
                e["starttls"][0],
                w,
                "tls: true (implicit TLS, port 465) and starttls: true exclude each other — "
                "keep one",
            )
            return None
        kw["starttls"] = False
        kw.setdefault("port", 465)
    if ("username" in kw) != ("password" in kw):
        missing = "password" if "username" in kw else "username"
        r.err(node, w, f"{missing} missing — SMTP AUTH needs both username: and password:")
        return None
    if "password" in kw and "password" in e and "$" not in str(e["password"][1].value):
        r.warn(
            e["password"][1],
            f"{w}.password",
            "a password written in rules.yaml — take it from the environment: "
            "password: ${SMTP_PASSWORD}",
        )
    return SmtpConfig(**kw)


# ---------------------------------------------------------------- webhook shapes per format
# What each service's webhook URL looks like (its docs), checked by `detector check`: an error only
# for what can never work on the service itself; a warning for an unusual host (a proxy or a
# self-hosted relay may be in between).

_URL_BAD = re.compile(r"[\s<>\"`{}|\\^\x00-\x1f\x7f]")
_NTFY_TOPIC = re.compile(r"[-_A-Za-z0-9]{1,64}")  # ntfy's topic names
_PD_KEY = re.compile(r"[A-Za-z0-9]{32}")  # an Events API v2 integration key
_DISCORD_PATH = re.compile(r"/api/(v\d+/)?webhooks/\d+/[-\w]+/?")
_DISCORD_HOSTS = ("discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com")
_TEAMS_HOSTS = (".logic.azure.com", ".powerplatform.com", ".powerautomate.com")
_TEAMS_RETIRED = (".webhook.office.com", "outlook.office.com", "outlook.office365.com")


def _absolute_http(value: str) -> bool:
    """Whether ``value`` is an absolute http(s) URL (what the formats send as a link)."""
    if _URL_BAD.search(value):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _looks_like_a_broken_link(runbook: str) -> bool:
    """A runbook meant as a link that no receiver can use as one: one word, not an absolute
    http(s) URL (``wiki/backup``, ``www.example.com/rb``). Free text ("ask the db team") is
    fine: it is shown as text."""
    value = runbook.strip()
    return bool(value) and not _absolute_http(value) and not re.search(r"\s", value)


def _local(host: str) -> bool:
    """Loopback, an IP literal or a single-label name: a relay the operator set up on purpose."""
    return host in ("localhost",) or "." not in host or bool(re.fullmatch(r"[\d.:\[\]]+", host))


def _check_format(
    r: NodeReader, fmt: str, body: Mapping[str, Any], kw: dict[str, Any], w: str
) -> None:
    """The webhook's URL, topic and key against what its format's service accepts."""
    unode = body["url"][1]
    parts = urlsplit(kw["url"])
    host = (parts.hostname or "").lower()
    path = parts.path
    if fmt == "ntfy":
        topic = kw.get("topic") or path.rstrip("/").rpartition("/")[2]
        where = body["topic"][1] if "topic" in body else unode
        if not topic:
            r.err(
                where,
                f"{w}: url",
                "format ntfy needs a topic — end the url with it (https://ntfy.sh/ops-alerts) "
                "or add topic: ops-alerts",
            )
        elif not _NTFY_TOPIC.fullmatch(topic):
            r.err(
                where,
                f"{w}: topic",
                f"'{topic[:70]}' is not an ntfy topic — 1 to 64 letters, digits, '-' or '_'",
            )
    elif fmt == "pagerduty":
        key = kw.get("routing_key")
        if host.endswith("pagerduty.com"):
            if path.rstrip("/") not in ("/v2/enqueue", "/v2/change/enqueue"):
                r.err(
                    unode,
                    f"{w}: url",
                    f"PagerDuty's Events API v2 is https://{host}/v2/enqueue, not {path or '/'} "
                    "— use that URL",
                )
            if key is not None and not _PD_KEY.fullmatch(key):
                r.err(
                    body["routing_key"][1],
                    f"{w}: routing_key",
                    f"a PagerDuty integration key is 32 letters and digits, this one has "
                    f"{len(key)} characters — copy the Integration Key of the service's "
                    "Events API v2 integration",
                )
    elif fmt == "slack":
        if host == "hooks.slack.com":
            if not path.startswith(("/services/", "/workflows/", "/triggers/")):
                r.err(
                    unode,
                    f"{w}: url",
                    "a Slack incoming webhook is https://hooks.slack.com/services/T…/B…/… — copy "
                    "the Webhook URL from the app's Incoming Webhooks page",
                )
        elif not _local(host):
            r.warn(
                unode,
                f"{w}: url",
                f"format slack posts to {host}, not hooks.slack.com — fine for a relay, otherwise "
                "copy the Webhook URL from the app's Incoming Webhooks page",
            )
    elif fmt == "discord":
        if host in _DISCORD_HOSTS:
            if not _DISCORD_PATH.fullmatch(path):
                r.err(
                    unode,
                    f"{w}: url",
                    "a Discord webhook is https://discord.com/api/webhooks/<id>/<token> — copy it "
                    "from the channel's Integrations → Webhooks",
                )
        elif not _local(host):
            r.warn(
                unode,
                f"{w}: url",
                f"format discord posts to {host}, not discord.com — fine for a relay, otherwise "
                "copy the URL from the channel's Integrations → Webhooks",
            )
    elif fmt == "teams":
        if host.endswith(_TEAMS_RETIRED):
            r.warn(
                unode,
                f"{w}: url",
                "this is an Office 365 connector URL, which Microsoft retires — create a "
                "Workflows webhook ('Post to a channel when a webhook request is received')",
            )
        elif not host.endswith(_TEAMS_HOSTS) and not _local(host):
            r.warn(
                unode,
                f"{w}: url",
                f"format teams posts to {host}, not a Power Automate host (*.logic.azure.com, "
                "*.powerplatform.com) — fine for a relay, otherwise copy the Workflows "
                "webhook URL",
            )
