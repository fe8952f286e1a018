"""Structured lines: the JSON and logfmt parsers of ``parse:`` sources, and dotted field paths.

A pure helper at the bottom of the import layers: ``matching/fields.py`` parses the lines of a
``parse: json | logfmt`` file source with :data:`PARSERS` and matches ``fields:`` regexes against
:func:`lookup` of each path; ``config/`` uses the same functions to check a rule's ``samples:``;
the rules see a parsed line's fields as a :class:`Record` (``Line.fields``), like journald's own
fields. Every value is text: a JSON string as it is, a number as it was written (``1.50`` stays
``1.50``), ``true``/``false``/``null``, an object or a list as its compact JSON text. A path is
dotted (``http.status``, ``items.0.id``; ``items[0].id`` is the same path); at each level the
longest key that matches wins, so a flat key with dots in it (``"log.level"``) is found too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, KeysView, Mapping
from typing import Any, Literal

ParseMode = Literal["json", "logfmt"]
PARSE_MODES: tuple[ParseMode, ...] = ("json", "logfmt")


class ParseError(ValueError):
    """A line that is not a record of the source's format (the message says why)."""


class _Number(str):
    """A JSON number, kept as the text it was written in."""

    __slots__ = ()


_DECODER = json.JSONDecoder(parse_int=_Number, parse_float=_Number, parse_constant=_Number)


def parse_json(text: str) -> dict[str, Any]:
    """One JSON object (a docker json-file line, an nginx ``escape=json`` log line…)."""
    try:
        obj = _DECODER.decode(text)
    except ValueError as e:  # json.JSONDecodeError, or a number too long for int()
        raise ParseError(f"not JSON: {e}") from None
    except RecursionError:
        raise ParseError("not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ParseError(
            f"a JSON {type(obj).__name__ if obj is not None else 'null'}, not an object"
        )
    return obj


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def parse_logfmt(text: str) -> dict[str, str]:
    """``level=error msg="connect failed" err="dial tcp: i/o timeout" retry``: pairs separated
    by whitespace. A key is everything up to ``=`` or whitespace (no ``"``); a value is bare (up
    to the next whitespace; it may contain ``=``) or double-quoted with the escapes ``\\" \\\\
    \\/ \\b \\f \\n \\r \\t \\uXXXX`` (another backslash stays as written). A bare key has the
    empty value; a repeated key keeps its last value. A line without any ``key=`` is not logfmt
    (plain text would otherwise parse as bare keys)."""
    out: dict[str, str] = {}
    n = len(text)
    i = 0
    pairs = 0
    while True:
        while i < n and text[i] <= " ":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] > " " and text[i] != "=":
            if text[i] == '"':
                raise ParseError(f"not logfmt: a '\"' inside a key at column {i + 1}")
            i += 1
        key = text[start:i]
        if not key:
            raise ParseError(f"not logfmt: '=' without a key at column {i + 1}")
        if i >= n or text[i] != "=":
            out[key] = ""  # a bare key
            continue
        i += 1
        pairs += 1
        if i < n and text[i] == '"':
            value, i = _quoted(text, i + 1)
        else:
            start = i
            while i < n and text[i] > " ":
                if text[i] == '"':
                    raise ParseError(
                        f"not logfmt: a '\"' inside an unquoted value at column {i + 1}"
                    )
                i += 1
            value = text[start:i]
        out[key] = value
    if not pairs:
        raise ParseError("not logfmt: no key=value pair")
    return out


def _quoted(text: str, i: int) -> tuple[str, int]:
    """The quoted value that starts at ``text[i]`` (after its opening quote), and the index
    after its closing quote."""
    parts: list[str] = []
    n = len(text)
    start = i
    while i < n:
        c = text[i]
        if c == '"':
            parts.append(text[start:i])
            return "".join(parts), i + 1
        if c == "\\" and i + 1 < n:
            parts.append(text[start:i])
            e = text[i + 1]
            if e == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                code = int(text[i + 2 : i + 6], 16)
                i += 6
                if 0xD800 <= code < 0xDC00 and text[i : i + 2] == "\\u":
                    low = text[i + 2 : i + 6]
                    if re.fullmatch(r"[dD][c-fC-F][0-9a-fA-F]{2}", low):
                        code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                        i += 6
                parts.append(chr(code))
            elif e in _ESCAPES:
                parts.append(_ESCAPES[e])
                i += 2
            else:
                parts.append(text[i : i + 2])  # not an escape: kept as written
                i += 2
            start = i
            continue
        i += 1
    raise ParseError("not logfmt: a quoted value without its closing '\"'")


_BARE_VALUE = re.compile(r'[^\s"\\]+')
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')


def format_logfmt(pairs: Mapping[str, str]) -> str:
    """The logfmt line of ``pairs`` (keys must be valid logfmt keys): a value is quoted when it
    is empty or has whitespace, ``"``, ``\\`` or a control character. The inverse of
    :func:`parse_logfmt` (tests, and the demo's generated logs)."""
    out: list[str] = []
    for key, value in pairs.items():
        if value and _BARE_VALUE.fullmatch(value) and value.isprintable():
            out.append(f"{key}={value}")
        else:
            out.append(f"{key}={_quote(value)}")
    return " ".join(out)


def _quote(value: str) -> str:
    def esc(m: re.Match[str]) -> str:
        c = m.group()
        if c in '"\\':
            return "\\" + c
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\u{ord(c):04x}")

    return '"' + _UNSAFE.sub(esc, value) + '"'


PARSERS: Mapping[ParseMode, Callable[[str], dict[str, Any]]] = {
    "json": parse_json,
    "logfmt": parse_logfmt,
}


# ---------------------------------------------------------------- paths and values

_INDEX = re.compile(r"\[(\d+)\]")


def normalize_path(path: str) -> str:
    """``items[0].id`` → ``items.0.id`` (the one spelling used inside)."""
    return _INDEX.sub(r".\1", path).lstrip(".") if "[" in path else path


_MISSING = object()


def _resolve(obj: Any, path: str) -> Any:
    if isinstance(obj, dict):
        got = obj.get(path, _MISSING)
        if got is not _MISSING:
            return got
        # the longest key that is a dotted prefix of the path, then the rest inside it
        cut = path.rfind(".")
        while cut > 0:
            head = obj.get(path[:cut], _MISSING)
            if head is not _MISSING:
                got = _resolve(head, path[cut + 1 :])
                if got is not _MISSING:
                    return got
            cut = path.rfind(".", 0, cut)
        return _MISSING
    if isinstance(obj, list):
        head, _, rest = path.partition(".")
        if head.isdigit() and int(head) < len(obj):
            return obj[int(head)] if not rest else _resolve(obj[int(head)], rest)
    return _MISSING


def replace_at(obj: dict[str, Any], path: str, value: str) -> bool:
    """Set the value at ``path`` (normalized; found as :func:`lookup` finds it) to ``value``;
    False if the path is absent."""
    if path in obj:
        obj[path] = value
        return True
    cut = path.rfind(".")
    while cut > 0:
        head = obj.get(path[:cut], _MISSING)
        if isinstance(head, dict) and replace_at(head, path[cut + 1 :], value):
            return True
        cut = path.rfind(".", 0, cut)
    return False


def message_text(value: str) -> str:
    """A record's message as the line's text: without one trailing newline (docker's ``log``
    ends in ``\\n``, or ``\\r\\n``)."""
    if value.endswith("\n"):
        value = value[:-2] if value.endswith("\r\n") else value[:-1]
    return value


def dump_record(mode: ParseMode, obj: dict[str, Any]) -> str:
    """A record as one line of its format again (a record made of several joined ones): JSON
    with numbers as they were written, or logfmt."""
    if mode == "json":
        return _compact(obj)
    return format_logfmt({k: text_of(v) for k, v in obj.items()})


def lookup(obj: Mapping[str, Any], path: str) -> str | None:
    """The text of the value at ``path`` (normalized) in a parsed line (a dict, a
    :class:`Record`, journald's fields), or None if absent."""
    if not isinstance(obj, dict | Record):  # journald's fields, decoded when read: flat
        got = obj.get(path, _MISSING)
    else:
        got = _resolve(obj.obj if isinstance(obj, Record) else obj, path)
    return None if got is _MISSING else text_of(got)


def text_of(value: Any) -> str:
    """A parsed value as the text fields see: strings and numbers as written, ``true``,
    ``false``, ``null``, and objects and lists as compact JSON (numbers as written)."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return _compact(value)


def _compact(value: Any) -> str:
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        inner = ",".join(
            json.dumps(k, ensure_ascii=False) + ":" + _compact(v) for k, v in value.items()
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ",".join(_compact(v) for v in value) + "]"
    return text_of(value)


class Record(Mapping[str, str]):
    """A parsed line as ``Line.fields``: ``record[path]`` is the text at a dotted path; its
    keys (what ``dict(record)`` copies for templates) are every leaf path and every top-level
    key, objects and lists of these as their JSON text. The keys and their texts are worked out
    once, on the first use (only for lines a rule hit)."""

    __slots__ = ("_flat", "obj")

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self._flat: dict[str, str] | None = None

    def flat(self) -> dict[str, str]:
        if self._flat is None:
            flat: dict[str, str] = {}
            for k, v in self.obj.items():
                if isinstance(v, dict | list):
                    flat[k] = _compact(v)
                    if v:
                        _leaves(v, k, flat)
                else:
                    flat[k] = text_of(v)
            self._flat = flat
        return self._flat

    def __getitem__(self, path: str) -> str:
        got = self.flat().get(path)
        if got is not None:
            return got
        found = _resolve(self.obj, normalize_path(path))
        if found is _MISSING:
            raise KeyError(path)
        return text_of(found)

    def __iter__(self) -> Iterator[str]:
        return iter(self.flat())

    def __len__(self) -> int:
        return len(self.flat())

    def keys(self) -> KeysView[str]:
        return self.flat().keys()

    def __repr__(self) -> str:
        return f"Record({self.obj!r})"


def _leaves(value: Any, prefix: str, out: dict[str, str]) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        path = f"{prefix}.{k}"
        if isinstance(v, dict | list) and v:
            _leaves(v, path, out)
        else:
            out.setdefault(path, text_of(v))
