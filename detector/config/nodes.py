"""Reading YAML nodes with their marks: type checks, did-you-mean hints and collected problems.

Sits under every section reader of the config loader: ``load.py`` composes rules.yaml to nodes (not
dicts) and hands them, one section at a time, to ``sections.py``, ``rules.py`` and ``kinds.py``,
which ask a :class:`NodeReader` for "a mapping with these keys", "a duration", "a regex", "names of
defined webhooks". Each reader method returns the value or ``None`` after recording one message of
the form ``rules.yaml:23:12: rule 'nginx-5xx': unknown key 'tresholds' — did you mean
'threshold'?`` (where, which rule/section, what, how to fix); ``raise_if_problems`` raises them all
together as one :class:`ConfigError`. Non-fatal findings are collected as warnings. Both are
redacted on the way out: a value taken from the environment is shown as its ``${VAR}``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Collection, Iterable, Mapping
from datetime import timedelta
from typing import Any, Literal, cast

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from detector.config.values import interpolate, parse_duration, redact
from detector.frozen import Frozen
from detector.model import Location

TAG_STR = "tag:yaml.org,2002:str"
TAG_INT = "tag:yaml.org,2002:int"
TAG_FLOAT = "tag:yaml.org,2002:float"
TAG_BOOL = "tag:yaml.org,2002:bool"
TAG_NULL = "tag:yaml.org,2002:null"

_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(Exception):
    """rules.yaml is invalid. ``errors`` holds one ``file:line:col: where: what — fix`` each.
    ``watch``: the paths and globs of the main file's ``include:`` when it got that far, so a
    reload watcher also sees the fix of an included file that is not in force yet."""

    def __init__(self, errors: list[str], watch: tuple[str, ...] = ()) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
        self.watch = watch


class Problem(Frozen):
    """One error or warning of the loader, at a line and column of a file."""

    line: int
    column: int
    text: str
    file: int = 0  # which file of the config: 0 the main one, then the included ones in order


def problem_order(p: Problem) -> tuple[int, int, int]:
    return (p.file, p.line, p.column)


def describe(node: Node) -> str:
    """What the user wrote, in words: 'a list', 'a number (3)', 'a string ('x')'."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == TAG_NULL:
        return "nothing (an empty value)"
    if node.tag == TAG_BOOL:
        return f"true/false ({node.value})"
    if node.tag in (TAG_INT, TAG_FLOAT):
        return f"a number ({node.value})"
    if node.tag == TAG_STR:
        return f"a string ('{node.value}')"
    return f"'{node.value}'"


def did_you_mean(word: str, options: Iterable[str]) -> str:
    import difflib  # noqa: PLC0415 - only for a misspelt key

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def choices_hint(word: str, options: Iterable[str]) -> str:
    opts = list(options)
    hint = did_you_mean(word, opts)
    return hint or "use one of: " + ", ".join(opts)


def plural(what: str) -> str:
    return what if what.endswith("s") else what + "s"


class NodeReader:
    """Reads typed values from the nodes of the config's files and collects the problems found on
    the way. ``path`` is the main file; each node knows the file it came from (its mark's name,
    set by ``load.py``), so a message about an included file names that file."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.files: list[str] = [path]  # every file read, in order (messages sort by it)
        self.env = env
        self.expanded: dict[str, str] = {}  # {VAR: value} taken from env, redacted in messages
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.ctor = SafeConstructor()
        self.flattened: set[int] = set()  # ids of mapping nodes whose << merges are resolved
        self.fast = False  # compose with libyaml (load.py: only while nothing is wrong)

    def file_of(self, node: Node) -> str:
        """The file ``node`` was read from (the main file unless its mark names a file read)."""
        name = node.start_mark.name
        return name if name in self.files else self.path

    def place(self, node: Node) -> str:
        """``file:line:column`` of ``node``, for a message that points at a second place."""
        mark = node.start_mark
        return f"{self.file_of(node)}:{mark.line + 1}:{mark.column + 1}"

    def err(self, node: Node, where: str, msg: str, column: int | None = None) -> None:
        line = node.start_mark.line + 1
        col = column if column is not None else node.start_mark.column + 1
        path = self.file_of(node)
        prefix = f"{path}:{line}:{col}: " + (f"{where}: " if where else "")
        self.problems.append(Problem(line, col, prefix + msg, self.files.index(path)))

    def warn(self, node: Node, where: str, msg: str) -> None:
        line = node.start_mark.line + 1
        col = node.start_mark.column + 1
        path = self.file_of(node)
        prefix = f"{path}:{line}:{col}: " + (f"{where}: " if where else "")
        self.warnings.append(Problem(line, col, prefix + msg, self.files.index(path)))

    def location(self, node: Node) -> Location:
        return Location(self.file_of(node), node.start_mark.line + 1, node.start_mark.column + 1)

    def mapping(
        self, node: Node, where: str, what: str, allowed: Collection[str] | None
    ) -> dict[str, tuple[Node, Node]] | None:
        """A mapping's entries by key (key node, value node); reports unknown/duplicate keys."""
        if not isinstance(node, MappingNode):
            self.err(node, where, f"expected {what}, got {describe(node)}")
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
            if not isinstance(knode, ScalarNode) or knode.tag == TAG_NULL:
                self.err(knode, where, f"keys must be plain names, got {describe(knode)}")
                continue
            key = str(knode.value)
            if allowed is not None and key not in allowed:
                hint = did_you_mean(key, allowed) or "allowed keys: " + ", ".join(allowed)
                self.err(knode, where, f"unknown key '{key}' — {hint}")
                continue
            entries[key] = (knode, vnode)
        return entries

    def string(self, node: Node, where: str, what: str = "a string") -> str | None:
        """A non-empty-able scalar as text, ``${VAR}`` replaced. Numbers are taken as written."""
        if not isinstance(node, ScalarNode) or node.tag == TAG_NULL:
            self.err(node, where, f"expected {what}, got {describe(node)}")
            return None
        value = str(node.value)
        if node.tag != TAG_STR:
            return value
        result, problems = interpolate(value, self.env, self.expanded)
        for p in problems:
            self.err(node, where, p)
        return None if problems else result

    def strings(self, node: Node, where: str, what: str) -> tuple[str, ...] | None:
        """One string or a list of strings (``what`` names the items, e.g. 'webhook name')."""
        if isinstance(node, ScalarNode) and node.tag != TAG_NULL:
            one = self.string(node, where, f"a {what} or a list of {plural(what)}")
            return None if one is None else (one,)
        if not isinstance(node, SequenceNode):
            self.err(node, where, f"expected a list of {plural(what)}, got {describe(node)}")
            return None
        out: list[str] = []
        ok = True
        for item in node.value:
            if not isinstance(item, ScalarNode) or item.tag == TAG_NULL:
                self.err(
                    item,
                    where,
                    f"expected a list of {plural(what)}, but this item is {describe(item)}",
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
        if isinstance(node, ScalarNode) and node.tag == TAG_INT:
            v = self.value(node)
        elif isinstance(node, ScalarNode) and node.tag == TAG_STR and "$" in str(node.value):
            s = self.string(node, where)
            if s is None:
                return None
            try:
                v = int(s.strip())
            except ValueError:
                self.err(node, where, f"expected a whole number, got '{s}' (from the environment)")
                return None
        if not isinstance(v, int) or isinstance(v, bool):
            self.err(node, where, f"expected a whole number, got {describe(node)}")
            return None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"between {lo} and {hi}" if lo is not None and hi is not None else f"≥ {lo}"
            self.err(node, where, f"must be {rng}, got {v}")
            return None
        return v

    def number(self, node: Node, where: str, lo: float, hi: float | None = None) -> float | None:
        v: Any = None
        if isinstance(node, ScalarNode) and node.tag in (TAG_INT, TAG_FLOAT):
            v = self.value(node)
        elif isinstance(node, ScalarNode) and node.tag == TAG_STR and "$" in str(node.value):
            s = self.string(node, where)
            if s is None:
                return None
            try:
                v = float(s.strip())
            except ValueError:
                v = None
        if not isinstance(v, int | float) or isinstance(v, bool):
            self.err(node, where, f"expected a number, got {describe(node)}")
            return None
        if v <= lo or (hi is not None and v > hi):
            rng = f"> {lo}" if hi is None else f"> {lo} and ≤ {hi}"
            self.err(node, where, f"must be {rng}, got {v}")
            return None
        return float(v)

    def boolean(self, node: Node, where: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == TAG_BOOL:
            return bool(self.value(node))
        if isinstance(node, ScalarNode) and node.tag == TAG_STR and "$" in str(node.value):
            s = self.string(node, where)
            if s is not None and s.strip().lower() in ("true", "false", "yes", "no"):
                return s.strip().lower() in ("true", "yes")
        self.err(node, where, f"expected true or false, got {describe(node)}")
        return None

    def duration(
        self, node: Node, where: str, *, positive: bool = True, never: bool = False
    ) -> timedelta | Literal["never"] | None:
        """A duration; ``"never"`` (only when ``never``) is returned as the string."""
        if not isinstance(node, ScalarNode) or node.tag in (TAG_NULL, TAG_BOOL):
            extra = " or never" if never else ""
            self.err(
                node, where, f"expected a duration such as 30s or 5m{extra}, got {describe(node)}"
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
            self.err(node, where, f"'{s}' is not allowed — {choices_hint(s, opts)}")
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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
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
        for w in caught:  # e.g. FutureWarning "Possible nested set at position 3"
            self.warn(
                node,
                where,
                f"regular expression {s!r}: {w.message} — write \\[ for a literal bracket "
                "inside a set; a future Python may read it differently",
            )
        return s

    def names(self, node: Node, where: str, known: set[str], kind: str) -> tuple[str, ...] | None:
        """Names of sources or webhooks (one or a list) that must be defined."""
        bad = [node] if isinstance(node, ScalarNode) else list(getattr(node, "value", []))
        for item in bad:
            if isinstance(item, ScalarNode) and item.tag in (TAG_INT, TAG_FLOAT, TAG_BOOL):
                self.err(item, where, f"expected a list of {kind} names, got {describe(item)}")
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
                hint = did_you_mean(name, sorted(known))
                if not hint:
                    hint = (
                        f"define it under {section}:"
                        if not known
                        else f"defined {section}: " + ", ".join(sorted(known))
                    )
                self.err(node, where, f"unknown {kind} '{name}' — {hint}")
        return items if ok else None

    def redact(self, text: str) -> str:
        """``text`` with each value taken from the environment so far shown as ``${VAR}``; for
        a message that cuts a value short (the start of a URL), redact before cutting."""
        return redact(text, self.expanded)

    def raise_if_problems(self) -> None:
        """Raise every problem as one :class:`ConfigError`, never with a value of the
        environment in it (each is shown as its ``${VAR}``)."""
        if self.problems:
            raise ConfigError(
                [self.redact(p.text) for p in sorted(self.problems, key=problem_order)]
            )

    def warning_texts(self) -> tuple[str, ...]:
        """The warnings, sorted and redacted like the problems."""
        return tuple(self.redact(p.text) for p in sorted(self.warnings, key=problem_order))

    def syntax_problem(self, e: yaml.MarkedYAMLError, path: str | None = None) -> Problem:
        """The problem of a YAML syntax error in ``path`` (default: the main file)."""
        path = self.path if path is None else path
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
        text = f"{path}:{line}:{col}: YAML syntax error: {what} — {hint}"
        return Problem(line, col, text, self.files.index(path) if path in self.files else 0)
