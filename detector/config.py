"""Load rules.yaml into the frozen dataclasses of ``model.py``, or explain exactly what is wrong.

Sits at the very start of the flow: the CLI and the service call :func:`load_config` and hand the
resulting :class:`~detector.model.Config` to sources, matching, rules and delivery; nothing
downstream ever sees YAML. The file is *composed* to YAML nodes (not loaded to dicts) so that every
key and value keeps its line and column; each problem becomes one message of the form
``rules.yaml:23:12: rule 'nginx-5xx': unknown key 'tresholds' — did you mean 'threshold'?``
(where, which rule/section, what, how to fix). All problems are collected and raised together as
one :class:`ConfigError`; non-fatal findings go to ``Config.warnings``.

Language notes beyond DESIGN.md §4:

- ``${VAR}`` and ``${VAR:-default}`` are replaced in every string value (not in keys) from the
  environment; ``$$`` is a literal dollar; a ``$`` not followed by ``{`` or ``$`` stays as it is
  (so regex anchors need no escaping). A set-but-empty VAR takes the ``:-`` default.
- Durations: integer or decimal amounts with units ``w d h m s ms`` from largest to smallest,
  e.g. ``30s``, ``1h30m``, ``1.5h``, ``500ms``. ``repeat: never`` disables repeats.
- Window sugar: ``expect: {between: "02:00-03:30", days: [mon, fri], timezone: Europe/Berlin}``
  is the window ``cron: "0 2 * * 1,5"`` with ``within: 1h30m`` — the cron fires at the start
  time on the listed days (every day if ``days`` is absent; sun=0 … sat=6) and ``within`` is end
  minus start, plus 24h when the end is not after the start (a window across midnight).
  ``cron:`` also accepts ``@hourly @daily @weekly @monthly @yearly``.
- A rule-level ``group_by: name | [names]`` splits one rule into separate alerts per captured
  value (``RuleConfig.group_by``).
- Top-level keys starting with ``x-`` are ignored, so they can hold YAML anchors.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import string
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import cronsim
import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from detector.model import (
    SEVERITIES,
    WEBHOOK_FORMATS,
    AgentConfig,
    AnomalyNewSpec,
    AnomalyRateSpec,
    Config,
    Defaults,
    FileSourceConfig,
    HeartbeatSpec,
    JournaldSourceConfig,
    Location,
    PairSpec,
    RuleConfig,
    RuleKind,
    Severity,
    SourceConfig,
    ThresholdSpec,
    WebhookConfig,
    WebhookFormat,
    WindowSpec,
)
from detector.store.db import default_state_path

BUILTIN_FIELDS: frozenset[str] = frozenset({"line", "count", "host", "source", "rule"})
"""Template fields every rule may use besides its captured groups."""

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

_TOP_KEYS = ("version", "agent", "defaults", "sources", "webhooks", "rules")
_AGENT_KEYS = (
    "state",
    "host",
    "listen",
    "listen_token",
    "heartbeat",
    "heartbeat_every",
    "fallback",
    "source_grace",
    "log_format",
)
_DEFAULTS_KEYS = ("severity", "notify", "repeat", "resolve_after", "owner", "runbook", "labels")
_FILE_KEYS = ("file", "start_at", "max_line_bytes", "poll_interval")
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
)
_RULE_COMMON = (
    "name",
    "source",
    "match",
    "ignore",
    "severity",
    "summary",
    "description",
    "labels",
    "notify",
    "owner",
    "runbook",
    "repeat",
    "resolve_after",
    "enabled",
    "samples",
    "group_by",
)
_PAIR_KEYS = ("start", "end", "within", "min_duration", "on_orphan_end", "on_double_start")
_RULE_KEYS = (*_RULE_COMMON, "threshold", "expect", "anomaly", "fail", *_PAIR_KEYS)
_THRESHOLD_KEYS = ("count", "within", "by")
_HEARTBEAT_KEYS = ("every", "grace", "by", "keys")
_WINDOW_KEYS = ("cron", "within", "timezone", "min_count", "too_early")
_BETWEEN_KEYS = ("between", "days", "timezone", "min_count", "too_early")
_ANOMALY_NEW_KEYS = ("type", "learn", "learn_lines", "max_alerts_per_hour", "masks", "similarity")
_ANOMALY_RATE_KEYS = (
    "type",
    "bucket",
    "sensitivity",
    "for",
    "min_delta",
    "learn",
    "by",
    "direction",
)
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_FULL_DAYS = {
    "sunday": "sun",
    "monday": "mon",
    "tuesday": "tue",
    "wednesday": "wed",
    "thursday": "thu",
    "friday": "fri",
    "saturday": "sat",
}
_CRON_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JOURNAL_FIELD = re.compile(r"[A-Z0-9_]+")
_HHMM = re.compile(r"(\d{1,2}):(\d{2})")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"

T = TypeVar("T")


class ConfigError(Exception):
    """rules.yaml is invalid. ``errors`` holds one ``file:line:col: where: what — fix`` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# ---------------------------------------------------------------- durations


_DURATION_UNITS: Mapping[str, int] = {  # microseconds, largest first
    "w": 7 * 86_400_000_000,
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
_UNIT_ORDER = list(_DURATION_UNITS)
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")


def parse_duration(text: str) -> timedelta:
    """``"30s"``, ``"5m"``, ``"1h30m"``, ``"2d"``, ``"1w"``, ``"500ms"``, ``"1.5h"`` → timedelta.

    Raises ``ValueError`` with a hint; a bare number is refused because its unit is a guess.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration — write 30s or 5m")
    if re.fullmatch(r"[+-]?\d+(?:\.\d+)?", s):
        raise ValueError(f"'{s}' has no unit — write 30s or 5m (units: ms s m h d w)")
    if s.startswith("-"):
        raise ValueError(f"'{s}' is negative — durations are 0s or more")
    pos = 0
    total = Decimal(0)
    last = -1
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(
                f"cannot read '{s}' as a duration"
                + (f" (stuck at '{s[pos:]}')" if pos else "")
                + " — write e.g. 30s, 5m, 1h30m, 2d (units: ms s m h d w)"
            )
        unit = m.group(2)
        idx = _UNIT_ORDER.index(unit)
        if idx <= last:
            raise ValueError(
                f"'{s}': units must go from largest to smallest, each once — e.g. 1h30m, not 30m1h"
            )
        last = idx
        total += Decimal(m.group(1)) * _DURATION_UNITS[unit]
        pos = m.end()
    return timedelta(microseconds=int(total))


def format_duration(d: timedelta) -> str:
    """The inverse of :func:`parse_duration`: ``timedelta(minutes=90)`` → ``"1h30m"``."""
    total = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    if total < 0:
        raise ValueError("negative durations cannot be written")
    if total == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("w", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    secs, micros = divmod(total, 1_000_000)
    if micros % 1000 == 0:
        if secs:
            parts.append(f"{secs}s")
        if micros:
            parts.append(f"{micros // 1000}ms")
    else:
        parts.append(f"{secs}.{micros:06d}".rstrip("0") + "s")
    return "".join(parts)


# ---------------------------------------------------------------- ${VAR} interpolation


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``${VAR}``/``${VAR:-default}``/``$$`` in ``text``; returns (result, problems)."""
    out: list[str] = []
    problems: list[str] = []
    i = 0
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            k = text.find("}", j + 2)
            if k < 0:
                problems.append(
                    f"unterminated '${{' in '{text}' — close it with '}}', or write $$ for a "
                    "literal dollar sign"
                )
                out.append(text[j:])
                break
            body = text[j + 2 : k]
            name, sep, default = body.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                problems.append(
                    f"'${{{body}}}' is not a valid variable reference — write ${{NAME}} or "
                    "${NAME:-default} (letters, digits, _), or $$ for a literal dollar sign"
                )
            else:
                value = env.get(name)
                if value is None or (sep and value == ""):
                    if sep:
                        out.append(default)
                    else:
                        problems.append(
                            f"environment variable {name} is not set — set it in the "
                            f"environment, or give a default: ${{{name}:-value}}"
                        )
                else:
                    out.append(value)
            i = k + 1
        else:
            out.append("$")
            i = j + 1
    return "".join(out), problems


# ---------------------------------------------------------------- the loader


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate rules.yaml; raises :class:`ConfigError` listing every problem."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{name}: not valid UTF-8 at byte {e.start} — save the file as UTF-8"]
        ) from e
    except OSError as e:
        raise ConfigError([f"{name}: cannot read: {e.strerror or e}"]) from e
    return parse_config(text, name, env)


def parse_config(
    text: str, path: str = "rules.yaml", env: Mapping[str, str] | None = None
) -> Config:
    """Validate rules.yaml given as text; ``path`` is only used in messages and ``Config.path``."""
    return _Loader(path, os.environ if env is None else env).load(text)


@dataclass(frozen=True)
class _Problem:
    line: int
    column: int
    text: str


def _describe(node: Node) -> str:
    """What the user wrote, in words: 'a list', 'a number (3)', 'a string ('x')'."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (an empty value)"
    if node.tag == _BOOL:
        return f"true/false ({node.value})"
    if node.tag in (_INT, _FLOAT):
        return f"a number ({node.value})"
    if node.tag == _STR:
        return f"a string ('{node.value}')"
    return f"'{node.value}'"


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def _choices_hint(word: str, options: Iterable[str]) -> str:
    opts = list(options)
    hint = _did_you_mean(word, opts)
    return hint or "use one of: " + ", ".join(opts)


def _plural(what: str) -> str:
    return what if what.endswith("s") else what + "s"


@dataclass
class _RulePatterns:
    """The compiled positive patterns of a rule and what they capture."""

    positive: list[tuple[str, re.Pattern[str]]]
    ignore: re.Pattern[str] | None
    captured: set[str]
    complete: bool  # False when a pattern failed to compile (skip checks that need captures)


class _Loader:
    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.problems: list[_Problem] = []
        self.warnings: list[_Problem] = []
        self.ctor = SafeConstructor()
        self.source_names: set[str] = set()
        self.journald_sources: set[str] = set()
        self.webhook_names: set[str] = set()
        self.flattened: set[int] = set()  # ids of mapping nodes whose << merges are resolved

    # ------------------------------------------------------------ reporting

    def err(self, node: Node, where: str, msg: str, column: int | None = None) -> None:
        line = node.start_mark.line + 1
        col = column if column is not None else node.start_mark.column + 1
        prefix = f"{self.path}:{line}:{col}: " + (f"{where}: " if where else "")
        self.problems.append(_Problem(line, col, prefix + msg))

    def warn(self, node: Node, where: str, msg: str) -> None:
        line = node.start_mark.line + 1
        col = node.start_mark.column + 1
        prefix = f"{self.path}:{line}:{col}: " + (f"{where}: " if where else "")
        self.warnings.append(_Problem(line, col, prefix + msg))

    def location(self, node: Node) -> Location:
        return Location(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    # ------------------------------------------------------------ node readers

    def mapping(
        self, node: Node, where: str, what: str, allowed: Collection[str] | None
    ) -> dict[str, tuple[Node, Node]] | None:
        """A mapping's entries by key (key node, value node); reports unknown/duplicate keys."""
        if not isinstance(node, MappingNode):
            self.err(node, where, f"expected {what}, got {_describe(node)}")
            return None
        own: dict[str, Node] = {}
        seen_before = id(node) in self.flattened  # an *alias of a node read already
        self.flattened.add(id(node))
        for knode, _ in [] if seen_before else node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(knode.value)
            if key in own:
                self.err(
                    knode,
                    where,
                    f"duplicate key '{key}' (first at line {own[key].start_mark.line + 1}) — "
                    "keep only one",
                )
            own[key] = knode
        try:
            self.ctor.flatten_mapping(node)
        except yaml.YAMLError as e:
            self.err(node, where, f"invalid merge (<<): {getattr(e, 'problem', e)}")
            return None
        entries: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, ScalarNode) or knode.tag == _NULL:
                self.err(knode, where, f"keys must be plain names, got {_describe(knode)}")
                continue
            key = str(knode.value)
            if allowed is not None and key not in allowed:
                hint = _did_you_mean(key, allowed) or "allowed keys: " + ", ".join(allowed)
                self.err(knode, where, f"unknown key '{key}' — {hint}")
                continue
            entries[key] = (knode, vnode)
        return entries

    def string(self, node: Node, where: str, what: str = "a string") -> str | None:
        """A non-empty-able scalar as text, ``${VAR}`` replaced. Numbers are taken as written."""
        if not isinstance(node, ScalarNode) or node.tag == _NULL:
            self.err(node, where, f"expected {what}, got {_describe(node)}")
            return None
        value = str(node.value)
        if node.tag != _STR:
            return value
        result, problems = interpolate(value, self.env)
        for p in problems:
            self.err(node, where, p)
        return None if problems else result

    def strings(self, node: Node, where: str, what: str) -> tuple[str, ...] | None:
        """One string or a list of strings (``what`` names the items, e.g. 'webhook name')."""
        if isinstance(node, ScalarNode) and node.tag != _NULL:
            one = self.string(node, where, f"a {what} or a list of {_plural(what)}")
            return None if one is None else (one,)
        if not isinstance(node, SequenceNode):
            self.err(node, where, f"expected a list of {_plural(what)}, got {_describe(node)}")
            return None
        out: list[str] = []
        ok = True
        for item in node.value:
            if not isinstance(item, ScalarNode) or item.tag == _NULL:
                self.err(
                    item,
                    where,
                    f"expected a list of {_plural(what)}, but this item is {_describe(item)}",
                )
                ok = False
                continue
            s = self.string(item, where, f"a {what}")
            if s is None:
                ok = False
            else:
                out.append(s)
        return tuple(out) if ok else None

    def value(self, node: Node) -> Any:
        try:
            return self.ctor.construct_object(node, deep=True)
        except yaml.YAMLError:
            return None

    def integer(
        self, node: Node, where: str, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        v: Any = None
        if isinstance(node, ScalarNode) and node.tag == _INT:
            v = self.value(node)
        elif isinstance(node, ScalarNode) and node.tag == _STR and "$" in str(node.value):
            s = self.string(node, where)
            if s is None:
                return None
            try:
                v = int(s.strip())
            except ValueError:
                self.err(node, where, f"expected a whole number, got '{s}' (from the environment)")
                return None
        if not isinstance(v, int) or isinstance(v, bool):
            self.err(node, where, f"expected a whole number, got {_describe(node)}")
            return None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"between {lo} and {hi}" if lo is not None and hi is not None else f"≥ {lo}"
            self.err(node, where, f"must be {rng}, got {v}")
            return None
        return v

    def number(self, node: Node, where: str, lo: float, hi: float | None = None) -> float | None:
        v: Any = None
        if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT):
            v = self.value(node)
        elif isinstance(node, ScalarNode) and node.tag == _STR and "$" in str(node.value):
            s = self.string(node, where)
            if s is None:
                return None
            try:
                v = float(s.strip())
            except ValueError:
                v = None
        if not isinstance(v, int | float) or isinstance(v, bool):
            self.err(node, where, f"expected a number, got {_describe(node)}")
            return None
        if v <= lo or (hi is not None and v > hi):
            rng = f"> {lo}" if hi is None else f"> {lo} and ≤ {hi}"
            self.err(node, where, f"must be {rng}, got {v}")
            return None
        return float(v)

    def boolean(self, node: Node, where: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return bool(self.value(node))
        if isinstance(node, ScalarNode) and node.tag == _STR and "$" in str(node.value):
            s = self.string(node, where)
            if s is not None and s.strip().lower() in ("true", "false", "yes", "no"):
                return s.strip().lower() in ("true", "yes")
        self.err(node, where, f"expected true or false, got {_describe(node)}")
        return None

    def duration(
        self, node: Node, where: str, *, positive: bool = True, never: bool = False
    ) -> timedelta | Literal["never"] | None:
        """A duration; ``"never"`` (only when ``never``) is returned as the string."""
        if not isinstance(node, ScalarNode) or node.tag in (_NULL, _BOOL):
            extra = " or never" if never else ""
            self.err(
                node, where, f"expected a duration such as 30s or 5m{extra}, got {_describe(node)}"
            )
            return None
        s = self.string(node, where)
        if s is None:
            return None
        if never and s.strip() == "never":
            return "never"
        try:
            d = parse_duration(s)
        except ValueError as e:
            self.err(node, where, str(e))
            return None
        if positive and d <= timedelta(0):
            self.err(node, where, f"must be longer than 0s, got '{s}' — write e.g. 30s or 5m")
            return None
        return d

    def span(self, node: Node, where: str, *, positive: bool = True) -> timedelta | None:
        d = self.duration(node, where, positive=positive)
        return d if isinstance(d, timedelta) else None

    def choice(self, node: Node, where: str, options: Iterable[str]) -> str | None:
        opts = list(options)
        s = self.string(node, where, "one of " + ", ".join(opts))
        if s is None:
            return None
        if s not in opts:
            self.err(node, where, f"'{s}' is not allowed — {_choices_hint(s, opts)}")
            return None
        return s

    def str_map(
        self, node: Node, where: str, what: str, *, label_keys: bool = False
    ) -> dict[str, str] | None:
        entries = self.mapping(node, where, what, None)
        if entries is None:
            return None
        out: dict[str, str] = {}
        for key, (knode, vnode) in entries.items():
            if label_keys and not _LABEL_NAME.fullmatch(key):
                self.err(
                    knode,
                    where,
                    f"label name '{key}' is invalid — use letters, digits and _ "
                    "(not starting with a digit), e.g. team or service_name",
                )
                continue
            s = self.string(vnode, f"{where}.{key}", "a string")
            if s is not None:
                out[key] = s
        return out

    def regex(self, node: Node, where: str) -> str | None:
        """A Python regex, compiled to validate; a bad one gets the position and a caret."""
        s = self.string(node, where, "a regular expression (a string)")
        if s is None:
            return None
        try:
            re.compile(s)
        except re.error as e:
            pos = e.pos or 0
            column = None
            style = cast(str | None, node.style)  # type: ignore[attr-defined]
            if style in (None, "'", '"') and "\n" not in s and s == node.value:
                q = 0 if style is None else 1
                start = node.start_mark.index + q
                buf = node.start_mark.buffer
                if buf is not None and buf[start : start + len(s)] == s:
                    column = node.start_mark.column + 1 + q + pos
            self.err(
                node,
                where,
                f"invalid regular expression: {e.msg} at position {pos} — fix the pattern "
                "(Python re syntax); escape literal characters such as ( ) [ ] { } . * + ? "
                f"with a backslash\n    {s}\n    {' ' * pos}^",
                column=column,
            )
            return None
        return s

    def names(self, node: Node, where: str, known: set[str], kind: str) -> tuple[str, ...] | None:
        """Names of sources or webhooks (one or a list) that must be defined."""
        bad = [node] if isinstance(node, ScalarNode) else list(getattr(node, "value", []))
        for item in bad:
            if isinstance(item, ScalarNode) and item.tag in (_INT, _FLOAT, _BOOL):
                self.err(item, where, f"expected a list of {kind} names, got {_describe(item)}")
                return None
        items = self.strings(node, where, f"{kind} name")
        if items is None:
            return None
        if not items:
            self.err(node, where, f"empty list — name at least one {kind}")
            return None
        ok = True
        for name in items:
            if name not in known:
                ok = False
                section = "sources" if kind == "source" else "webhooks"
                hint = _did_you_mean(name, sorted(known))
                if not hint:
                    hint = (
                        f"define it under {section}:"
                        if not known
                        else f"defined {section}: " + ", ".join(sorted(known))
                    )
                self.err(node, where, f"unknown {kind} '{name}' — {hint}")
        return items if ok else None

    # ------------------------------------------------------------ document

    def load(self, text: str) -> Config:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            self.problems.append(self._syntax_problem(e))
            self.raise_if_problems()
            raise AssertionError("unreachable") from e
        except yaml.YAMLError as e:
            raise ConfigError([f"{self.path}: YAML error: {e}"]) from e
        if root is None:
            raise ConfigError(
                [f"{self.path}:1:1: the file is empty — start with 'version: 1' and a rules: list"]
            )
        top = self.mapping(
            root, "", "a mapping with version, agent, sources, webhooks, rules", None
        )
        if top is None:
            self.raise_if_problems()
            raise AssertionError("unreachable")
        for key, (knode, _) in list(top.items()):
            if key not in _TOP_KEYS:
                if not key.startswith("x-"):
                    hint = _did_you_mean(key, _TOP_KEYS) or "top-level keys are: " + ", ".join(
                        _TOP_KEYS
                    )
                    self.err(knode, "", f"unknown top-level key '{key}' — {hint}")
                del top[key]

        if "version" not in top:
            self.warn(root, "", "no 'version:' — add 'version: 1' at the top of the file")
        else:
            vnode = top["version"][1]
            if not (isinstance(vnode, ScalarNode) and vnode.tag == _INT and vnode.value == "1"):
                self.err(
                    vnode,
                    "version",
                    f"unsupported version {_describe(vnode)} — this detector reads 'version: 1'",
                )

        # Names first, so references can be checked in any order.
        self.source_names = self._section_names(top.get("sources"))
        self.webhook_names = self._section_names(top.get("webhooks"))

        for key in ("agent", "defaults", "sources", "webhooks", "rules"):
            if key in top and top[key][1].tag == _NULL:
                del top[key]  # an empty section (e.g. every entry commented out)
        sources = self._sources(top["sources"][1]) if "sources" in top else {}
        webhooks = self._webhooks(top["webhooks"][1]) if "webhooks" in top else {}
        agent = self._agent(top["agent"][1] if "agent" in top else None)
        defaults = self._defaults(top["defaults"][1] if "defaults" in top else None)
        rules = self._rules(top["rules"][1], defaults) if "rules" in top else ()
        if "rules" not in top:
            self.warn(root, "", "no 'rules:' — nothing will be detected; add a rules: list")
        if rules and not self.webhook_names:
            self.warn(
                root,
                "",
                "no webhooks defined — alerts will only be logged; add a webhooks: section",
            )
        self.raise_if_problems()
        assert agent is not None and defaults is not None
        return Config(
            path=self.path,
            agent=agent,
            defaults=defaults,
            sources=sources,
            webhooks=webhooks,
            rules=rules,
            warnings=tuple(p.text for p in sorted(self.warnings, key=_order)),
        )

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ConfigError([p.text for p in sorted(self.problems, key=_order)])

    def _syntax_problem(self, e: yaml.MarkedYAMLError) -> _Problem:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        col = mark.column + 1 if mark else 1
        what = e.problem or "syntax error"
        if e.context and e.context_mark:
            what = f"{what} ({e.context} at line {e.context_mark.line + 1})"
        if "\\t" in what or "'\\t'" in str(e):
            hint = "indent with spaces, not tabs"
        elif "found duplicate anchor" in what or "found undefined alias" in what:
            hint = "define the &anchor before using *alias"
        else:
            hint = (
                "check indentation and quoting; quote values that contain ': ' or ' #' or "
                "start with one of * & ! | > ' \" % @ `"
            )
        return _Problem(line, col, f"{self.path}:{line}:{col}: YAML syntax error: {what} — {hint}")

    def _section_names(self, entry: tuple[Node, Node] | None) -> set[str]:
        if entry is None or not isinstance(entry[1], MappingNode):
            return set()
        return {str(k.value) for k, _ in entry[1].value if isinstance(k, ScalarNode)}

    # ------------------------------------------------------------ agent & defaults

    def _agent(self, node: Node | None) -> AgentConfig | None:
        entries = {} if node is None else self.mapping(node, "agent", "a mapping", _AGENT_KEYS)
        if entries is None:
            return None
        w = "agent"
        kw: dict[str, Any] = {}
        state: Path = default_state_path(self.env)
        if "state" in entries:
            s = self.string(entries["state"][1], f"{w}: state", "a file path")
            if s is not None:
                state = Path(s).expanduser()
        host = socket.gethostname()
        if "host" in entries:
            h = self.string(entries["host"][1], f"{w}: host")
            if h is not None:
                host = h
        if "listen" in entries:
            vnode = entries["listen"][1]
            s = self.string(vnode, f"{w}: listen", "host:port")
            if s is not None:
                h, sep, port = s.rpartition(":")
                if not sep or not h or not port.isdigit() or not 0 < int(port) < 65536:
                    self.err(
                        vnode,
                        f"{w}: listen",
                        f"'{s}' is not host:port — write e.g. 127.0.0.1:9465",
                    )
                else:
                    kw["listen"] = s
        if "listen_token" in entries:
            kw["listen_token"] = self.string(entries["listen_token"][1], f"{w}: listen_token")
        if "heartbeat" in entries:
            kw["heartbeat"] = self._url(entries["heartbeat"][1], f"{w}: heartbeat")
        for key in ("heartbeat_every", "source_grace"):
            if key in entries:
                d = self.span(entries[key][1], f"{w}: {key}")
                if d is not None:
                    kw[key] = d
        if "fallback" in entries:
            names = self.names(
                entries["fallback"][1], f"{w}: fallback", self.webhook_names, "webhook"
            )
            if names is not None:
                kw["fallback"] = names
        if "log_format" in entries:
            c = self.choice(entries["log_format"][1], f"{w}: log_format", ("text", "json"))
            if c is not None:
                kw["log_format"] = c
        return AgentConfig(state=state, host=host, **kw)

    def _defaults(self, node: Node | None) -> Defaults | None:
        entries = (
            {} if node is None else self.mapping(node, "defaults", "a mapping", _DEFAULTS_KEYS)
        )
        if entries is None:
            return None
        kw = self._common_fields(entries, "defaults")
        return Defaults(**kw)

    def _common_fields(self, entries: dict[str, tuple[Node, Node]], w: str) -> dict[str, Any]:
        """severity, notify, repeat, resolve_after, owner, runbook, labels: shared by rules."""
        kw: dict[str, Any] = {}
        if "severity" in entries:
            c = self.choice(entries["severity"][1], f"{w}: severity", SEVERITIES)
            if c is not None:
                kw["severity"] = cast(Severity, c)
        if "notify" in entries:
            names = self.names(entries["notify"][1], f"{w}: notify", self.webhook_names, "webhook")
            if names is not None:
                kw["notify"] = names
        if "repeat" in entries:
            d = self.duration(entries["repeat"][1], f"{w}: repeat", never=True)
            if d is not None:
                kw["repeat"] = None if d == "never" else d
        if "resolve_after" in entries:
            d2 = self.span(entries["resolve_after"][1], f"{w}: resolve_after")
            if d2 is not None:
                kw["resolve_after"] = d2
        for key in ("owner", "runbook"):
            if key in entries:
                s = self.string(entries[key][1], f"{w}: {key}")
                if s is not None:
                    kw[key] = s
        if "labels" in entries:
            labels = self.str_map(
                entries["labels"][1], f"{w}: labels", "a mapping of label: value", label_keys=True
            )
            if labels is not None:
                kw["labels"] = labels
        return kw

    # ------------------------------------------------------------ sources

    def _sources(self, node: Node) -> dict[str, SourceConfig]:
        entries = self.mapping(node, "sources", "a mapping of source name: {file: …}", None)
        out: dict[str, SourceConfig] = {}
        for name, (knode, vnode) in (entries or {}).items():
            w = f"source '{name}'"
            body = self.mapping(
                vnode, w, "a mapping with file: or journald:", (*_FILE_KEYS, "journald")
            )
            if body is None:
                continue
            loc = self.location(knode)
            if ("file" in body) == ("journald" in body):
                self.err(
                    vnode,
                    w,
                    "needs exactly one of file: (path or glob) or journald: {units: …} — "
                    "write e.g. {file: /var/log/syslog} or {journald: {units: [ssh.service]}}",
                )
                continue
            src: SourceConfig | None
            if "journald" in body:
                self.journald_sources.add(name)
                src = self._journald(name, body, w, loc)
            else:
                src = self._file(name, body, w, loc)
            if src is not None:
                out[name] = src
        return out

    def _start_at(self, node: Node, w: str) -> Literal["end", "beginning"] | None:
        c = self.choice(node, f"{w}: start_at", ("end", "beginning"))
        return cast(Literal["end", "beginning"] | None, c)

    def _file(
        self, name: str, body: dict[str, tuple[Node, Node]], w: str, loc: Location
    ) -> FileSourceConfig | None:
        kw: dict[str, Any] = {}
        paths = self.strings(body["file"][1], f"{w}: file", "path or glob")
        if paths is not None and (not paths or any(not p.strip() for p in paths)):
            self.err(body["file"][1], f"{w}: file", "empty path — write e.g. /var/log/syslog")
            paths = None
        if "start_at" in body:
            kw["start_at"] = self._start_at(body["start_at"][1], w)
        if "max_line_bytes" in body:
            kw["max_line_bytes"] = self.integer(
                body["max_line_bytes"][1], f"{w}: max_line_bytes", 1
            )
        if "poll_interval" in body:
            kw["poll_interval"] = self.span(body["poll_interval"][1], f"{w}: poll_interval")
        if paths is None or any(v is None for v in kw.values()):
            return None
        return FileSourceConfig(name=name, paths=paths, location=loc, **kw)

    def _journald(
        self, name: str, body: dict[str, tuple[Node, Node]], w: str, loc: Location
    ) -> JournaldSourceConfig | None:
        for key in ("max_line_bytes", "poll_interval", "file"):
            if key in body:
                self.err(body[key][0], w, f"'{key}' applies to file sources only — remove it")
        inner = self.mapping(
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
            kw["start_at"] = self._start_at(body["start_at"][1], w)
        for key, what in (("units", "unit name"), ("identifiers", "syslog identifier")):
            if key in inner:
                kw[key] = self.strings(inner[key][1], f"{jw}.{key}", what)
        if "priority" in inner:
            kw["priority"] = self._priority(inner["priority"][1], f"{jw}.priority")
        if "match" in inner:
            kw["match"] = self._journal_match(inner["match"][1], f"{jw}.match")
        for key in ("namespace", "journalctl"):
            if key in inner:
                kw[key] = self.string(inner[key][1], f"{jw}.{key}")
        if "start_at" in inner:
            kw["start_at"] = self._start_at(inner["start_at"][1], jw)
        if any(v is None for v in kw.values()):
            return None
        return JournaldSourceConfig(name=name, location=loc, **kw)

    def _priority(self, node: Node, w: str) -> int | None:
        if isinstance(node, ScalarNode) and node.tag == _INT:
            return self.integer(node, w, 0, 7)
        s = self.string(node, w, "a priority name (e.g. warning) or 0-7")
        if s is None:
            return None
        if s.isdigit() and int(s) <= 7:
            return int(s)
        p = JOURNALD_PRIORITIES.get(s.lower())
        if p is None:
            hint = _did_you_mean(s.lower(), JOURNALD_PRIORITIES) or (
                "use emerg, alert, crit, err, warning, notice, info, debug or 0-7"
            )
            self.err(node, w, f"unknown priority '{s}' — {hint}")
        return p

    def _journal_match(self, node: Node, w: str) -> dict[str, tuple[str, ...]] | None:
        entries = self.mapping(node, w, "a mapping of FIELD: value (or list of values)", None)
        if entries is None:
            return None
        out: dict[str, tuple[str, ...]] = {}
        ok = True
        for key, (knode, vnode) in entries.items():
            if not _JOURNAL_FIELD.fullmatch(key):
                self.err(
                    knode,
                    w,
                    f"'{key}' is not a journald field name — fields are upper case, "
                    f"e.g. _SYSTEMD_UNIT or {key.upper()}",
                )
                ok = False
                continue
            values = self.strings(vnode, f"{w}.{key}", "value")
            if values is None:
                ok = False
            else:
                out[key] = values
        return out if ok else None

    # ------------------------------------------------------------ webhooks

    def _url(self, node: Node, w: str) -> str | None:
        s = self.string(node, w, "an http:// or https:// URL")
        if s is None:
            return None
        parts = urlsplit(s.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            shown = f"{parts.scheme}://{parts.netloc}…" if parts.scheme else f"'{s[:40]}'"
            if not s.strip():
                shown = "an empty value"
            self.err(
                node,
                w,
                f"expected an http:// or https:// URL, got {shown} — write e.g. "
                "https://hooks.example.com/path (quote it if it contains '#' or ': ')",
            )
            return None
        return s.strip()

    def _webhooks(self, node: Node) -> dict[str, WebhookConfig]:
        entries = self.mapping(node, "webhooks", "a mapping of webhook name: {url: …}", None)
        out: dict[str, WebhookConfig] = {}
        for name, (knode, vnode) in (entries or {}).items():
            w = f"webhook '{name}'"
            body = self.mapping(vnode, w, "a mapping with url: and format:", _WEBHOOK_KEYS)
            if body is None:
                continue
            if "url" not in body:
                self.err(vnode, w, "missing required key 'url' — add url: https://…")
                continue
            kw: dict[str, Any] = {"url": self._url(body["url"][1], f"{w}: url")}
            fmt = "json"
            if "format" in body:
                c = self.choice(body["format"][1], f"{w}: format", WEBHOOK_FORMATS)
                kw["format"] = cast(WebhookFormat | None, c)
                fmt = c or fmt
            for key in ("secret", "routing_key", "topic", "template"):
                if key in body:
                    kw[key] = self.string(body[key][1], f"{w}: {key}")
            if fmt == "pagerduty" and "routing_key" not in body:
                self.err(
                    vnode,
                    w,
                    "format pagerduty needs routing_key — add routing_key: "
                    '"${PAGERDUTY_ROUTING_KEY}" (the integration key of the service)',
                )
                kw["routing_key"] = None
            if "headers" in body:
                kw["headers"] = self.str_map(
                    body["headers"][1], f"{w}: headers", "a mapping of Header-Name: value"
                )
            for key in ("timeout", "connect_timeout", "max_age"):
                if key in body:
                    kw[key] = self.span(body[key][1], f"{w}: {key}")
            if "rate" in body:
                kw["rate"] = self.integer(body["rate"][1], f"{w}: rate", 1)
            if "fail_after" in body:
                kw["fail_after"] = self.integer(body["fail_after"][1], f"{w}: fail_after", 1)
            if "fallback" in body:
                fb = self.names(
                    body["fallback"][1], f"{w}: fallback", self.webhook_names, "webhook"
                )
                if fb is not None and name in fb:
                    self.err(
                        body["fallback"][1],
                        f"{w}: fallback",
                        "a webhook cannot be its own fallback — name a different webhook",
                    )
                    fb = None
                kw["fallback"] = fb
            optional = ("secret", "routing_key", "topic", "template")
            if any(v is None for k, v in kw.items() if k not in optional or k in body):
                continue
            out[name] = WebhookConfig(name=name, location=self.location(knode), **kw)
        return out

    # ------------------------------------------------------------ rules

    def _rules(self, node: Node, defaults: Defaults | None) -> tuple[RuleConfig, ...]:
        if not isinstance(node, SequenceNode):
            self.err(node, "rules", f"expected a list of rules (- name: …), got {_describe(node)}")
            return ()
        seen: dict[str, Node] = {}
        out: list[RuleConfig] = []
        for i, item in enumerate(node.value, start=1):
            rule = self._rule(item, i, seen, defaults or Defaults())
            if rule is not None:
                out.append(rule)
        return tuple(out)

    def _rule(
        self, node: Node, index: int, seen: dict[str, Node], defaults: Defaults
    ) -> RuleConfig | None:
        w = f"rule #{index}"
        if isinstance(node, MappingNode):  # name the rule in messages about its own keys too
            for k, v in node.value:
                if k.value == "name" and isinstance(v, ScalarNode) and v.tag == _STR and v.value:
                    w = f"rule '{v.value}'"
        e = self.mapping(node, w, "a mapping with name:, source: and match:", _RULE_KEYS)
        if e is None:
            return None
        ok = True
        name: str | None = None
        if "name" not in e:
            self.err(node, w, "missing required key 'name' — add name: some-unique-name")
            ok = False
        else:
            nnode = e["name"][1]
            name = self.string(nnode, f"{w}: name", "a rule name")
            if name is not None:
                w = f"rule '{name}'"
                if name in seen:
                    self.err(
                        nnode,
                        w,
                        f"duplicate rule name (first defined at line "
                        f"{seen[name].start_mark.line + 1}) — rule names must be unique; "
                        "rename one of them",
                    )
                    ok = False
                else:
                    seen[name] = nnode
            else:
                ok = False

        sources: tuple[str, ...] | None = None
        if "source" not in e:
            hint = (
                "e.g. source: " + sorted(self.source_names)[0]
                if self.source_names
                else "and define it under sources:"
            )
            self.err(node, w, f"missing required key 'source' — add source: <name> ({hint})")
        else:
            sources = self.names(e["source"][1], f"{w}: source", self.source_names, "source")
        ok = ok and sources is not None
        journald = sources is not None and any(s in self.journald_sources for s in sources)

        kind, kind_ok = self._kind(e, w, node)
        ok = ok and kind_ok

        kw: dict[str, Any] = {}
        # Patterns.
        pats: dict[str, str] = {}
        pattern_nodes: dict[str, Node] = {}
        for role in ("match", "ignore", "fail", "start", "end"):
            if role in e:
                pattern_nodes[role] = e[role][1]
                rx = self.regex(e[role][1], f"{w}: {role}")
                if rx is None:
                    ok = False
                else:
                    pats[role] = rx
        if kind is not None:
            needs_match = kind not in ("pair", "anomaly_new", "anomaly_rate")
            if needs_match and "match" not in e:
                self.err(
                    node,
                    w,
                    f"missing required key 'match' — a {kind} rule needs a pattern, e.g. "
                    "match: 'ERROR .*'",
                )
                ok = False
            if kind == "pair" and "match" in e:
                self.err(
                    e["match"][0],
                    w,
                    "pair rules use start: and end: instead of match: — remove match:",
                )
                ok = False
            if kind != "window" and "fail" in e:
                self.err(
                    e["fail"][0],
                    w,
                    "fail: applies to window rules only (expect: {cron: …}) — remove it or "
                    "make this an expect window rule",
                )
                ok = False
        patterns = self._compile(pats)
        patterns.complete = set(pats) == set(pattern_nodes)

        common = self._common_fields(e, w)
        if any(k in e and k not in common for k in _DEFAULTS_KEYS):
            ok = False
        for key in ("summary", "description"):
            if key in e:
                s = self.string(e[key][1], f"{w}: {key}", "a template string")
                if s is None:
                    ok = False
                else:
                    kw[key] = s
                    if not self._template_ok(s, e[key][1], f"{w}: {key}", patterns, journald):
                        ok = False
        if "enabled" in e:
            b = self.boolean(e["enabled"][1], f"{w}: enabled")
            ok = ok and b is not None
            kw["enabled"] = b
        samples: tuple[str, ...] = ()
        if "samples" in e:
            snode = e["samples"][1]
            got = self.strings(snode, f"{w}: samples", "sample line")
            if got is None:
                ok = False
            else:
                samples = got
                if not self._samples_ok(snode, w, samples, patterns, kind):
                    ok = False
        if "group_by" in e:
            g = self._by(e["group_by"][1], f"{w}: group_by", patterns, journald, many=True)
            ok = ok and g is not None
            kw["group_by"] = g

        spec_kw: dict[str, Any] = {}
        if kind is not None and kind_ok and kind != "error":
            spec = self._spec(kind, e, w, patterns=patterns, journald=journald, pats=pats)
            if spec is None:
                ok = False
            else:
                spec_kw[kind] = spec

        if not ok or name is None or sources is None or kind is None:
            return None
        owner = common.get("owner", defaults.owner)
        runbook = common.get("runbook", defaults.runbook)
        if owner is None and runbook is None:
            self.warn(
                node,
                w,
                "no owner or runbook — add owner: (who to call) and runbook: (what to do), "
                "here or under defaults:",
            )
        elif owner is None:
            self.warn(node, w, "no owner — add owner: (who to call), here or under defaults:")
        elif runbook is None:
            self.warn(node, w, "no runbook — add runbook: (a link), here or under defaults:")
        notify = common.get("notify") or defaults.notify or tuple(sorted(self.webhook_names))
        return RuleConfig(
            name=name,
            kind=kind,
            sources=sources,
            match=pats.get("match"),
            ignore=pats.get("ignore"),
            fail=pats.get("fail"),
            severity=common.get("severity", defaults.severity),
            labels={**defaults.labels, **common.get("labels", {})},
            notify=notify,
            owner=owner,
            runbook=runbook,
            repeat=common.get("repeat", defaults.repeat),
            resolve_after=common.get("resolve_after", defaults.resolve_after),
            samples=samples,
            location=self.location(node),
            **kw,
            **spec_kw,
        )

    def _kind(
        self, e: dict[str, tuple[Node, Node]], w: str, node: Node
    ) -> tuple[RuleKind | None, bool]:
        """Which kind the rule's keys select; (None, False) after reporting a conflict."""
        found: list[tuple[str, Node]] = []
        for key in ("threshold", "expect", "anomaly"):
            if key in e:
                found.append((key, e[key][0]))
        pair_keys = [k for k in ("start", "end") if k in e]
        if pair_keys:
            found.append((pair_keys[0], e[pair_keys[0]][0]))
        if len(found) > 1:
            (first, fnode), (second, snode) = found[0], found[1]
            self.err(
                snode,
                w,
                f"'{second}' cannot be combined with '{first}' (line {fnode.start_mark.line + 1})"
                " — a rule has exactly one kind; split it into two rules",
            )
            return None, False
        ok = True
        if not pair_keys:
            for key in _PAIR_KEYS[2:]:
                if key in e:
                    where = "inside threshold: {…} or expect: {…}" if key == "within" else ""
                    self.err(
                        e[key][0],
                        w,
                        f"'{key}' belongs to pair rules (with start: and end:)"
                        + (f"; for other kinds put it {where}" if where else " — remove it"),
                    )
                    ok = False
        if not found:
            if "match" in e:
                return "error", ok
            self.err(
                node,
                w,
                "nothing to detect — add match: (alert on every match) or one of "
                "threshold:, expect:, start:/end:, anomaly:",
            )
            return None, False
        key, _ = found[0]
        if key == "threshold":
            return "threshold", ok
        if key in ("start", "end"):
            for need in ("start", "end", "within"):
                if need not in e:
                    hint = "within: 30m" if need == "within" else f"{need}: 'pattern'"
                    self.err(node, w, f"pair rule is missing '{need}' — add {hint}")
                    ok = False
            return "pair", ok
        if key == "expect":
            vnode = e["expect"][1]
            if isinstance(vnode, MappingNode):
                keys = {str(k.value) for k, _ in vnode.value}
                if "every" in keys:
                    return "heartbeat", ok
                if "cron" in keys or "between" in keys:
                    return "window", ok
            self.err(
                vnode,
                f"{w}: expect",
                "needs every: (at least one match per period, e.g. {every: 5m}) or cron:/between:"
                " (a scheduled window, e.g. {cron: '0 2 * * *', within: 1h})",
            )
            return None, False
        anode = e["anomaly"][1]
        typ: str | None = None
        if isinstance(anode, ScalarNode):
            typ = str(anode.value)
        elif isinstance(anode, MappingNode):
            for k, v in anode.value:
                if k.value == "type" and isinstance(v, ScalarNode):
                    typ = str(v.value)
        if typ == "new":
            return "anomaly_new", ok
        if typ == "rate":
            return "anomaly_rate", ok
        shown = f"'{typ}'" if typ is not None else "no type"
        self.err(
            anode,
            f"{w}: anomaly",
            f"{shown} is not an anomaly type — write anomaly: new (never-seen lines) or "
            "anomaly: rate (bursts and drops), or {type: new|rate, …}",
        )
        return None, False

    def _compile(self, pats: Mapping[str, str]) -> _RulePatterns:
        positive: list[tuple[str, re.Pattern[str]]] = []
        captured: set[str] = set()
        for role in ("match", "start", "end", "fail"):
            if role in pats:
                rx = re.compile(pats[role])
                positive.append((role, rx))
                captured |= set(rx.groupindex)
        ignore = re.compile(pats["ignore"]) if "ignore" in pats else None
        return _RulePatterns(positive, ignore, captured, complete=True)

    def _template_ok(
        self, text: str, node: Node, w: str, patterns: _RulePatterns, journald: bool
    ) -> bool:
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            self.err(
                node,
                w,
                f"malformed template: {e} — write {{name}} for a field and {{{{ }}}} "
                "for literal braces",
            )
            return False
        if journald or not patterns.complete:
            return True
        names = {n.split(".")[0].split("[")[0] for _, n, _, _ in parsed if n}
        available = patterns.captured | BUILTIN_FIELDS
        bad = sorted(n for n in names if n not in available)
        for n in bad:
            hint = _did_you_mean(n, sorted(available))
            self.err(
                node,
                w,
                f"'{{{n}}}' is not a captured group or a built-in field — "
                + (f"{hint} " if hint else "")
                + "available: "
                + ", ".join(sorted(available))
                + f"; or capture it with (?P<{n}>…) in the pattern",
            )
        return not bad

    def _by(
        self, node: Node, w: str, patterns: _RulePatterns, journald: bool, *, many: bool
    ) -> tuple[str, ...] | None:
        if many:
            names = self.strings(node, w, "captured group name")
        else:
            one = self.string(node, w, "a captured group name")
            names = None if one is None else (one,)
        if names is None:
            return None
        if journald or not patterns.complete:
            return names
        ok = True
        for n in names:
            if n not in patterns.captured:
                ok = False
                hint = _did_you_mean(n, sorted(patterns.captured))
                have = (
                    "captured groups: " + ", ".join(sorted(patterns.captured))
                    if patterns.captured
                    else "the pattern captures nothing"
                )
                self.err(
                    node,
                    w,
                    f"'{n}' is not captured by the rule's pattern ({have}) — "
                    + (f"{hint} Or " if hint else "")
                    + f"add (?P<{n}>…) to the pattern",
                )
        return names if ok else None

    def _samples_ok(
        self,
        node: Node,
        w: str,
        samples: tuple[str, ...],
        patterns: _RulePatterns,
        kind: RuleKind | None,
    ) -> bool:
        if not isinstance(node, SequenceNode):
            nodes: list[Node] = [node]
        else:
            nodes = list(node.value)
        ok = True
        roles = "/".join(r for r, _ in patterns.positive) or "match"
        for sample, snode in zip(samples, nodes, strict=False):
            if not patterns.positive:
                if kind in ("anomaly_new", "anomaly_rate"):
                    continue  # every line is an input
                return ok  # the pattern itself is broken or missing: reported already
            if not any(rx.search(sample) for _, rx in patterns.positive):
                self.err(
                    snode,
                    f"{w}: samples",
                    f"sample does not match the rule's {roles} pattern: '{sample[:120]}' — "
                    "fix the pattern or the sample",
                )
                ok = False
            elif patterns.ignore is not None and patterns.ignore.search(sample):
                self.err(
                    snode,
                    f"{w}: samples",
                    f"sample is excluded by the rule's ignore pattern: '{sample[:120]}' — "
                    "fix ignore: or the sample",
                )
                ok = False
        return ok

    # ------------------------------------------------------------ per-kind specs

    def _spec(
        self,
        kind: RuleKind,
        e: dict[str, tuple[Node, Node]],
        w: str,
        *,
        patterns: _RulePatterns,
        journald: bool,
        pats: Mapping[str, str],
    ) -> Any:
        if kind == "threshold":
            return self._threshold(e["threshold"][1], f"{w}: threshold", patterns, journald)
        if kind == "heartbeat":
            return self._heartbeat(e["expect"][1], f"{w}: expect", patterns, journald)
        if kind == "window":
            return self._window(e["expect"][1], f"{w}: expect")
        if kind == "pair":
            return self._pair(e, w, pats)
        if kind == "anomaly_new":
            return self._anomaly_new(e["anomaly"][1], f"{w}: anomaly")
        return self._anomaly_rate(e["anomaly"][1], f"{w}: anomaly", patterns, journald)

    def _required(
        self, entries: dict[str, tuple[Node, Node]], node: Node, w: str, keys: dict[str, str]
    ) -> bool:
        ok = True
        for key, example in keys.items():
            if key not in entries:
                self.err(node, w, f"missing required key '{key}' — add {key}: {example}")
                ok = False
        return ok

    def _threshold(
        self, node: Node, w: str, patterns: _RulePatterns, journald: bool
    ) -> ThresholdSpec | None:
        e = self.mapping(node, w, "a mapping such as {count: 10, within: 5m}", _THRESHOLD_KEYS)
        if e is None or not self._required(e, node, w, {"count": "10", "within": "5m"}):
            return None
        kw: dict[str, Any] = {
            "count": self.integer(e["count"][1], f"{w}.count", 1),
            "within": self.span(e["within"][1], f"{w}.within"),
        }
        if "by" in e:
            kw["by"] = self._by(e["by"][1], f"{w}.by", patterns, journald, many=True)
        if any(v is None for v in kw.values()):
            return None
        return ThresholdSpec(**kw)

    def _heartbeat(
        self, node: Node, w: str, patterns: _RulePatterns, journald: bool
    ) -> HeartbeatSpec | None:
        e = self.mapping(node, w, "a mapping such as {every: 5m}", _HEARTBEAT_KEYS)
        if e is None:
            return None
        kw: dict[str, Any] = {"every": self.span(e["every"][1], f"{w}.every")}
        if "grace" in e:
            kw["grace"] = self.span(e["grace"][1], f"{w}.grace", positive=False)
        if "by" in e:
            by = self._by(e["by"][1], f"{w}.by", patterns, journald, many=False)
            kw["by"] = None if by is None else by[0]
        if "keys" in e:
            kw["keys"] = self.strings(e["keys"][1], f"{w}.keys", "expected key")
            if "by" not in e:
                self.err(
                    e["keys"][0],
                    w,
                    "keys: lists values of a by: group — add by: <captured group> too",
                )
                return None
        if any(v is None for v in kw.values()):
            return None
        return HeartbeatSpec(**kw)

    def _window(self, node: Node, w: str) -> WindowSpec | None:
        assert isinstance(node, MappingNode)
        sugar = any(k.value == "between" for k, _ in node.value)
        e = self.mapping(
            node,
            w,
            "a mapping",
            _BETWEEN_KEYS if sugar else (*_WINDOW_KEYS, "every"),
        )
        if e is None:
            return None
        if "every" in e:
            self.err(
                e["every"][0],
                w,
                "every: (a heartbeat) cannot be combined with cron: (a window) — pick one",
            )
            return None
        kw: dict[str, Any] = {}
        tz = "UTC"
        zone: ZoneInfo | None = ZoneInfo("UTC")
        if "timezone" in e:
            tnode = e["timezone"][1]
            t = self.string(tnode, f"{w}.timezone", "an IANA time zone such as Europe/Berlin")
            zone = None
            if t is not None:
                try:
                    zone = ZoneInfo(t)
                    tz = t
                except (ZoneInfoNotFoundError, ValueError, OSError):
                    hint = _did_you_mean(t, sorted(available_timezones()))
                    self.err(
                        tnode,
                        f"{w}.timezone",
                        f"unknown time zone '{t}' — "
                        + (
                            hint
                            or "use an IANA name such as Europe/Berlin, America/New_York or UTC"
                        ),
                    )
            kw["timezone"] = tz if zone is not None else None
        if "min_count" in e:
            kw["min_count"] = self.integer(e["min_count"][1], f"{w}.min_count", 1)
        if "too_early" in e:
            kw["too_early"] = self.choice(e["too_early"][1], f"{w}.too_early", ("ignore", "info"))
        if sugar:
            got = self._between(e, w)
            if got is None:
                return None
            kw["cron"], kw["within"] = got
        else:
            if not self._required(e, node, w, {"within": "1h"}):
                return None
            cnode = e["cron"][1]
            cron = self.string(cnode, f"{w}.cron", "a cron expression such as '0 2 * * *'")
            if cron is not None:
                cron = _CRON_ALIASES.get(cron.strip(), cron.strip())
                if len(cron.split()) != 5:
                    self.err(
                        cnode,
                        f"{w}.cron",
                        f"'{cron}' has {len(cron.split())} fields, expected 5 (minute hour "
                        "day-of-month month day-of-week) — e.g. '0 2 * * *' for 02:00 daily",
                    )
                    cron = None
                elif zone is not None:
                    try:
                        cronsim.CronSim(cron, datetime.now(zone))
                    except cronsim.CronSimError as err:
                        self.err(
                            cnode,
                            f"{w}.cron",
                            f"invalid cron expression '{cron}': {err} — fields are minute hour "
                            "day-of-month month day-of-week, e.g. '30 2 * * mon-fri'",
                        )
                        cron = None
            kw["cron"] = cron
            kw["within"] = self.span(e["within"][1], f"{w}.within")
        if any(v is None for v in kw.values()):
            return None
        return WindowSpec(**kw)

    def _between(self, e: dict[str, tuple[Node, Node]], w: str) -> tuple[str, timedelta] | None:
        bnode = e["between"][1]
        s = self.string(bnode, f"{w}.between", "a time range such as '02:00-03:00'")
        if s is None:
            return None
        start_s, sep, end_s = s.partition("-")
        m1, m2 = _HHMM.fullmatch(start_s.strip()), _HHMM.fullmatch(end_s.strip())
        if not sep or m1 is None or m2 is None:
            self.err(bnode, f"{w}.between", f"'{s}' is not HH:MM-HH:MM — write e.g. '02:00-03:30'")
            return None
        h1, mi1, h2, mi2 = (int(x) for x in (*m1.groups(), *m2.groups()))
        if h1 > 23 or h2 > 24 or mi1 > 59 or mi2 > 59 or (h2 == 24 and mi2):
            self.err(
                bnode, f"{w}.between", f"'{s}' has an impossible time — hours 00-23, minutes 00-59"
            )
            return None
        within = timedelta(hours=h2 - h1, minutes=mi2 - mi1)
        if within <= timedelta(0):
            within += timedelta(days=1)
        dow = "*"
        if "days" in e:
            dnode = e["days"][1]
            days = self.strings(dnode, f"{w}.days", "day name (mon … sun)")
            if days is None:
                return None
            nums: list[int] = []
            for d in days:
                key = _FULL_DAYS.get(d.lower(), d.lower())
                if key not in _DAYS:
                    self.err(
                        dnode,
                        f"{w}.days",
                        f"'{d}' is not a day — {_choices_hint(key, _DAYS)}",
                    )
                    return None
                nums.append(_DAYS[key])
            dow = ",".join(str(n) for n in sorted(set(nums)))
        return f"{mi1} {h1} * * {dow}", within

    def _pair(
        self, e: dict[str, tuple[Node, Node]], w: str, pats: Mapping[str, str]
    ) -> PairSpec | None:
        kw: dict[str, Any] = {
            "start": pats.get("start"),  # validated (and ${VAR}-expanded) by the caller
            "end": pats.get("end"),
            "within": self.span(e["within"][1], f"{w}: within"),
        }
        if "min_duration" in e:
            kw["min_duration"] = self.span(e["min_duration"][1], f"{w}: min_duration")
        for key in ("on_orphan_end", "on_double_start"):
            if key in e:
                kw[key] = self.choice(e[key][1], f"{w}: {key}", ("ignore", "alert"))
        if any(v is None for v in kw.values()):
            return None
        return PairSpec(**kw)

    def _anomaly_new(self, node: Node, w: str) -> AnomalyNewSpec | None:
        if isinstance(node, ScalarNode):
            return AnomalyNewSpec()
        e = self.mapping(node, w, "new, rate or a mapping", _ANOMALY_NEW_KEYS)
        if e is None:
            return None
        kw: dict[str, Any] = {}
        if "learn" in e and "learn_lines" in e:
            self.err(
                e["learn_lines"][0],
                w,
                "learn: and learn_lines: exclude each other — keep one (a time or a line count)",
            )
            return None
        if "learn" in e:
            kw["learn"] = self.span(e["learn"][1], f"{w}.learn")
        if "learn_lines" in e:
            kw["learn_lines"] = self.integer(e["learn_lines"][1], f"{w}.learn_lines", 1)
        if "max_alerts_per_hour" in e:
            kw["max_alerts_per_hour"] = self.integer(
                e["max_alerts_per_hour"][1], f"{w}.max_alerts_per_hour", 1
            )
        if "similarity" in e:
            kw["similarity"] = self.number(e["similarity"][1], f"{w}.similarity", 0.0, 1.0)
        if "masks" in e:
            kw["masks"] = self._masks(e["masks"][1], f"{w}.masks")
        if any(v is None for v in kw.values()):
            return None
        if "learn_lines" in kw:
            kw["learn"] = None  # learning ends after a line count instead of a time
        return AnomalyNewSpec(**kw)

    def _masks(self, node: Node, w: str) -> tuple[tuple[str, str], ...] | None:
        if not isinstance(node, SequenceNode):
            self.err(node, w, f"expected a list of {{regex, replace}}, got {_describe(node)}")
            return None
        out: list[tuple[str, str]] = []
        ok = True
        for item in node.value:
            e = self.mapping(item, w, "a mapping {regex: …, replace: …}", ("regex", "replace"))
            if e is None or not self._required(e, item, w, {"regex": "'\\d+'", "replace": "<N>"}):
                ok = False
                continue
            rx = self.regex(e["regex"][1], f"{w}.regex")
            rep = self.string(e["replace"][1], f"{w}.replace")
            if rx is None or rep is None:
                ok = False
            else:
                out.append((rx, rep))
        return tuple(out) if ok else None

    def _anomaly_rate(
        self, node: Node, w: str, patterns: _RulePatterns, journald: bool
    ) -> AnomalyRateSpec | None:
        if isinstance(node, ScalarNode):
            return AnomalyRateSpec()
        e = self.mapping(node, w, "new, rate or a mapping", _ANOMALY_RATE_KEYS)
        if e is None:
            return None
        kw: dict[str, Any] = {}
        for key in ("bucket", "learn"):
            if key in e:
                kw[key] = self.span(e[key][1], f"{w}.{key}")
        if "sensitivity" in e:
            kw["sensitivity"] = self.number(e["sensitivity"][1], f"{w}.sensitivity", 0.0)
        if "for" in e:
            kw["for_buckets"] = self.integer(e["for"][1], f"{w}.for", 1)
        if "min_delta" in e:
            kw["min_delta"] = self.integer(e["min_delta"][1], f"{w}.min_delta", 0)
        if "by" in e:
            by = self._by(e["by"][1], f"{w}.by", patterns, journald, many=False)
            kw["by"] = None if by is None else by[0]
        if "direction" in e:
            kw["direction"] = self.choice(
                e["direction"][1], f"{w}.direction", ("both", "up", "down")
            )
        if any(v is None for v in kw.values()):
            return None
        return AnomalyRateSpec(**kw)


def _order(p: _Problem) -> tuple[int, int]:
    return (p.line, p.column)
