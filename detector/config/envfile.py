"""Read a systemd ``EnvironmentFile=`` (``/etc/detector/detector.env``) the way systemd does.

The agent gets the secrets of that file from systemd, which reads it before starting the unit; the
other commands (``check``, ``test``, ``status``, ``send-test``, ``templates``) read it here, so that
their ``${VAR}`` interpolation sees the same values. The result is only handed to the config
loader as its environment; ``os.environ`` is never changed.

The syntax is that of ``man systemd.exec``, EnvironmentFile=, as systemd's own parser
(``src/basic/env-file.c``) implements it: ``KEY=VALUE`` lines; empty lines, lines without ``=``
and lines starting with ``#`` or ``;`` are ignored. An unquoted value keeps its interior
whitespace and any quotes after its first character, loses its leading and trailing whitespace,
and a backslash keeps the next character (``\\\\`` is one backslash) or, before a newline,
continues the line. A ``'``-quoted value is verbatim and may span lines; a ``"``-quoted value may
span lines, and there a backslash unescapes ``" \\ ` $``, joins lines before a newline and is kept
before any other character. The key's surrounding whitespace is dropped; a key that is not a
valid variable name (``export KEY``: ``export`` is shell, not systemd syntax) is ignored — by
systemd too — and reported in :attr:`EnvFile.warnings`. A backslash ending a comment line does not
continue the comment (systemd 254 and later).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_NEWLINE = "\n\r"
_WHITESPACE = " \t\n\r"
_COMMENTS = "#;"
_DOUBLE_QUOTE_ESCAPES = '"\\`$'
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class EnvFile:
    """The variables a file sets (later lines win) and what was ignored, as ``file:line: …``."""

    values: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_env_file(path: str | Path) -> EnvFile:
    """Parse the file at ``path``; raises ``OSError`` if it cannot be read."""
    raw = Path(path).read_bytes()
    return parse_env_file(raw.decode("utf-8", "surrogateescape"), str(path))


def parse_env_file(text: str, name: str = "detector.env") -> EnvFile:
    """Parse ``text`` (the file's contents; ``name`` is only used in warnings)."""
    out = EnvFile()
    state = "pre_key"
    key: list[str] = []
    value: list[str] = []
    key_ws: int | None = None  # where trailing whitespace of the key starts
    value_ws: int | None = None  # where trailing whitespace of an unquoted value starts
    line = 1
    start_line = 1

    def push(strip_value: bool) -> None:
        k = "".join(key[:key_ws] if key_ws is not None else key)
        v = "".join(value[:value_ws] if strip_value and value_ws is not None else value)
        where = f"{name}:{start_line}"
        if not _NAME.fullmatch(k):
            hint = " (`export` is shell syntax; systemd ignores such a line)" if " " in k else ""
            out.warnings.append(f"{where}: {k!r} is not a variable name, line ignored{hint}")
        elif _has_surrogates(k + v):
            out.warnings.append(f"{where}: the value of {k} is not valid UTF-8, line ignored")
        else:
            out.values[k] = v

    for c in text:
        if state == "pre_key":
            if c in _COMMENTS:
                state = "comment"
            elif c not in _WHITESPACE:
                state, key, value, key_ws, start_line = "key", [c], [], None, line
        elif state == "key":
            if c in _NEWLINE:
                state = "pre_key"  # a line without "=": ignored
            elif c == "=":
                state, value_ws = "pre_value", None
            else:
                if c not in _WHITESPACE:
                    key_ws = None
                elif key_ws is None:
                    key_ws = len(key)
                key.append(c)
        elif state == "pre_value":
            if c in _NEWLINE:
                push(strip_value=False)
                state = "pre_key"
            elif c == "'":
                state = "single_quote"
            elif c == '"':
                state = "double_quote"
            elif c == "\\":
                state = "value_escape"
            elif c not in _WHITESPACE:
                state = "value"
                value.append(c)
        elif state == "value":
            if c in _NEWLINE:
                push(strip_value=True)
                state = "pre_key"
            elif c == "\\":
                state, value_ws = "value_escape", None
            else:
                if c not in _WHITESPACE:
                    value_ws = None
                elif value_ws is None:
                    value_ws = len(value)
                value.append(c)
        elif state == "value_escape":
            state = "value"
            if c not in _NEWLINE:
                value.append(c)  # an escaped newline is eaten up entirely
        elif state == "single_quote":
            if c == "'":
                state = "pre_value"
            else:
                value.append(c)
        elif state == "double_quote":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_quote_escape"
            else:
                value.append(c)
        elif state == "double_quote_escape":
            state = "double_quote"
            if c in _DOUBLE_QUOTE_ESCAPES:
                value.append(c)
            elif c != "\n":
                value.extend(("\\", c))
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in _NEWLINE:
                state = "pre_key"
        elif state == "comment_escape":
            state = "pre_key" if c in _NEWLINE else "comment"
        if c == "\n":
            line += 1
    if state not in ("pre_key", "key", "comment", "comment_escape"):
        push(strip_value=state == "value")
    return out


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)
