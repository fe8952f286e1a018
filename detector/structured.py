"""Structured lines: the JSON and logfmt parsers of ``parse:`` sources, and dotted field paths.

A pure helper at the bottom of the import layers: ``matching/fields.py`` parses the lines of a
``parse: json | logfmt`` file source with :data:`PARSERS` and matches ``fields:`` regexes against
:func:`lookup` of each path; ``config/`` uses the same functions to check a rule's ``samples:``;
the rules see a parsed line's fields as a :class:`Record` (``Line.fields``), like journald's own
fields. Every value is text: a JSON string as it is, a number as it was written (``1.50`` stays
``1.50``), ``true``/``false``/``null``, an object or a list as its compact JSON text. A path is
dotted (``http.status``, ``items.0.id``; ``items[0].id`` is the same path); at each level the
longest key that matches wins, so a flat key with dots in it (``"log.level"``) is found too.
Both parsers have a fast path (logfmt: two regex passes; JSON: msgspec when installed) checked
against the definition (a character scanner; the json module) on generated lines.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, KeysView, Mapping, Sequence
from typing import Any, Literal

ParseMode = Literal["json", "logfmt"]
PARSE_MODES: tuple[ParseMode, ...] = ("json", "logfmt")


class ParseError(ValueError):
    """A line that is not a record of the source's format (the message says why)."""


class _Number(str):
    """A JSON number, kept as the text it was written in."""

    __slots__ = ()


_DECODER = json.JSONDecoder(parse_int=_Number, parse_float=_Number, parse_constant=_Number)


def _first_fast_decode(text: str) -> Any:
    """The fast path's first line: imports msgspec (~15 ms with what it brings, which only a
    ``parse: json`` source or rule needs, never ``detector check`` or ``test`` without one) and
    puts its decoder in :data:`_FAST_DECODE`; without msgspec, the json module for good."""
    global _FAST_DECODE  # noqa: PLW0603 - set once, on the first JSON line
    try:
        msgspec = importlib.import_module("msgspec")
    except ImportError:  # pragma: no cover - exercised where the wheel is missing
        _FAST_DECODE = None
        raise ValueError("no msgspec: the json module decides") from None
    _FAST_DECODE = msgspec.json.Decoder(float_hook=_Number).decode
    return _FAST_DECODE(text)


# msgspec, when installed, parses a JSON line ~8x faster than the json module (its float hook
# gets a float's text, so numbers stay as written); json is the definition and the fallback.
_FAST_DECODE: Callable[[str], Any] | None = _first_fast_decode
_NEGATIVE_ZERO = re.compile(r"-0(?![.eE0-9])")
"""``-0`` as an integer, which msgspec reads as ``0``: such lines go to the json module."""
_FAST_CHARS = 1000
"""Lines up to this long take the fast path; up to :data:`_FAST_MAX_CHARS` too when they have
fewer than :data:`_FAST_MAX_DEPTH` brackets (far from either parser's recursion limit, whose
depth varies with the stack: both then agree on every line)."""
_FAST_MAX_CHARS = 4000
"""Nor an integer longer than Python's ``int``/``str`` conversion limit (4300 digits)."""
_FAST_MAX_DEPTH = 400


def parse_json(text: str) -> dict[str, Any]:
    """One JSON object (a docker json-file line, an nginx ``escape=json`` log line…)."""
    obj = _parse_json_record(text)
    _as_text(obj)  # integers of the fast path as their text
    return obj


def _parse_json_record(text: str) -> dict[str, Any]:
    """:func:`parse_json` as ``Record`` keeps it: an integer may be an ``int`` (whose ``str`` is
    the integer as written: the fast path leaves ``-0`` to the json module); :func:`text_of`
    gives the same text either way."""
    n = len(text)
    if (
        _FAST_DECODE is None
        or n > _FAST_MAX_CHARS
        or (n > _FAST_CHARS and text.count("[") + text.count("{") >= _FAST_MAX_DEPTH)
        or ("-0" in text and _NEGATIVE_ZERO.search(text) is not None)
    ):
        return _parse_json_stdlib(text)
    try:
        obj = _FAST_DECODE(text)
    except (ValueError, RecursionError):  # msgspec.DecodeError, a lone surrogate…: json decides
        return _parse_json_stdlib(text)
    if type(obj) is not dict:
        return _parse_json_stdlib(text)  # refused, with json's words
    return obj


def _parse_json_stdlib(text: str) -> dict[str, Any]:
    """:func:`parse_json` with the json module: the definition (numbers as :class:`_Number`)."""
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


def _as_text(value: Any) -> None:
    """The ``int`` values inside a parsed object or list, in place, as :class:`_Number`."""
    items = value.items() if type(value) is dict else enumerate(value)
    for k, v in items:
        t = type(v)
        if t is int:
            value[k] = _Number(v)
        elif t is dict or t is list:
            _as_text(v)


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


_SEP = r"[\x00-\x20]*+"
_KEY = r'[^\x00-\x20="]++'
_QUOTED = r'"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+"'
_BARE = r'[^\x00-\x20"]*+(?=[\x00-\x20]|\Z)'
_LOGFMT_LINE = re.compile(rf"(?:{_SEP}{_KEY}(?:=(?:{_QUOTED}|{_BARE})|(?=[\x00-\x20]|\Z)))*+{_SEP}")
"""A whole logfmt line as :func:`_scan_logfmt` accepts it (one C pass): its pairs then are what
:data:`_LOGFMT_PAIR` finds."""
_LOGFMT_PAIR = re.compile(rf'({_KEY})(?:=({_QUOTED}|[^\x00-\x20"]*+))?+')
"""On a line :data:`_LOGFMT_LINE` accepts: each key and its value as written ('' for a bare
key; a quoted value with its quotes)."""


def parse_logfmt(text: str) -> dict[str, str]:
    """``level=error msg="connect failed" err="dial tcp: i/o timeout" retry``: pairs separated
    by whitespace. A key is everything up to ``=`` or whitespace (no ``"``); a value is bare (up
    to the next whitespace; it may contain ``=``) or double-quoted with the escapes ``\\" \\\\
    \\/ \\b \\f \\n \\r \\t \\uXXXX`` (another backslash stays as written). A bare key has the
    empty value; a repeated key keeps its last value. A line without any ``key=`` is not logfmt
    (plain text would otherwise parse as bare keys).

    One regex pass checks the line and one finds its pairs (C speed); a line they refuse goes
    to the character scanner (:func:`_scan_logfmt`, the definition), which says why. The two
    agree on every line (``tests/test_structured.py`` compares them on generated lines)."""
    if "=" not in text or _LOGFMT_LINE.fullmatch(text) is None:
        return _scan_logfmt(text)  # not logfmt (it raises), or a line the regexes do not take
    pairs = _LOGFMT_PAIR.findall(text)
    if '"' not in text:
        return dict(pairs)
    out: dict[str, str] = {}
    for key, written in pairs:
        if written[:1] == '"':  # quoted (a bare value never starts with '"')
            out[key] = _unescape(written) if "\\" in written else written[1:-1]
        else:
            out[key] = written
    return out


_ESCAPE = re.compile(r"\\([\s\S])")


def _escaped(m: re.Match[str]) -> str:
    c = m.group(1)
    return _ESCAPES.get(c) or "\\" + c  # not an escape: kept as written


def _unescape(written: str) -> str:
    """A quoted value as written (with its quotes, on a line :data:`_LOGFMT_LINE` accepts) as
    :func:`_quoted` reads it; ``\\u`` escapes (surrogate pairs) are left to :func:`_quoted`."""
    if "\\u" in written:
        return _quoted(written, 1)[0]
    return _ESCAPE.sub(_escaped, written[1:-1])


def _scan_logfmt(text: str) -> dict[str, str]:
    """:func:`parse_logfmt`, one character at a time: the definition, and the error messages."""
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
RECORD_PARSERS: Mapping[ParseMode, Callable[[str], dict[str, Any]]] = {
    "json": _parse_json_record,
    "logfmt": parse_logfmt,
}
"""The parsers as :class:`Record` takes their result (``matching/fields.py``, every line of a
source): the same values through :func:`lookup` and :func:`text_of`, without the pass that
turns the fast JSON path's integers into text."""


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


def values_at(
    records: Sequence[Mapping[str, Any] | None], lines: Iterable[int], path: str
) -> tuple[list[str], list[int]]:
    """:func:`lookup` of ``path`` in ``records[i]`` for each of ``lines``: the texts found and
    the lines they were found on (a line without the path, or without fields, is left out).
    The same as one :func:`lookup` a line, cheaper for a batch (``matching/fields.py``)."""
    vals: list[str] = []
    at: list[int] = []
    flat_key = "." not in path and "[" not in path
    for i in lines:
        rec = records[i]
        if rec is None:
            continue
        obj = rec.obj if type(rec) is Record else rec
        if flat_key and type(obj) is dict:
            got = obj.get(path, _MISSING)
            if type(got) is str:  # the common case: a top-level string
                vals.append(got)
                at.append(i)
                continue
            if got is not _MISSING:
                vals.append(text_of(got))
                at.append(i)
            continue  # (a key without a dot is found at the top level or not at all)
        v = lookup(rec, path)
        if v is not None:
            vals.append(v)
            at.append(i)
    return vals, at


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
    if type(value) is int:  # a number of the fast JSON path, as written
        return str(value)
    return _compact(value)


def _compact(value: Any) -> str:
    if isinstance(value, _Number):
        return str.__str__(value)
    if type(value) is int:
        return str(value)
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
                if type(v) is str:
                    flat[k] = v
                elif isinstance(v, dict | list):
                    flat[k] = _compact(v)
                    if v:
                        _leaves(v, k, flat)
                else:
                    flat[k] = text_of(v)
            self._flat = flat
        return self._flat

    def __bool__(self) -> bool:
        return bool(self.obj)  # every top-level key is a key: no need to work them out

    def __getitem__(self, path: str) -> str:
        flat = self._flat
        got = (flat if flat is not None else self.flat()).get(path)
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
