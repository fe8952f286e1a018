"""Online log-template mining: the engine behind ``anomaly: new`` rules.

Sits inside the ``anomaly: new`` evaluator (``rules/anomaly_new.py``), which feeds it one line at a
time on the hot path. A line is first *masked*: a syslog header loses its timestamp and host, then
timestamps, UUIDs, IP addresses, URLs, paths, hex ids, durations and numbers (after the rule's own
masks) become typed placeholders such as ``<NUM>``, so raw lines with their headers are handled as
they come. The masked tokens are then grouped Drain-style: a line is compared only with templates of
its token count whose first two fixed tokens (not placeholders, no digits) are the same words at
the same positions, and joins the most similar one if the share of that template's other fixed
tokens that are equal reaches ``similarity``; positions that differ become ``<*>``. Otherwise the
line starts a new template. Identical masked lines skip the search through a bounded cache.

Written here rather than taken from ``drain3``: on the Loghub 2k samples it finds new kinds of
lines with a clearly higher F1 and groups lines more accurately (``bench/bench_anomaly.py``), with
masking built in, no per-dataset settings, and templates that serialise to JSON one by one
(:meth:`Template.to_json`) so that the rule state in SQLite rebuilds the miner after a restart.
The miner only keeps templates; what is "new" (learning, alerts, storm control) is the
evaluator's business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detector.timefmt import iso_or_none, parse_iso_or_none

WILDCARD = "<*>"
MAX_LINE_CHARS = 4096  # longer lines are mined on their first 4 KiB
MAX_TOKENS = 80  # and on their first 80 tokens
ROUTE_TOKENS = 2  # fixed tokens that select the candidate templates (Drain's tree depth - 2)
CACHE_SIZE = 20_000

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_TIME = r"\d{1,2}:\d\d(?::\d\d)?(?:[.,:]\d+)?"

# Dates written with month names span several tokens ("Sun Dec 04 04:47:44 2005"): one pass.
_NAMED_DATE = re.compile(
    rf"\b(?:{_DAY},? +)?{_MONTH} +\d{{1,2}}\b,?(?: +\d{{4}}\b)?(?: +{_TIME}\b)?(?: +\d{{4}}\b)?"
)
# Headers whose host name is noise for the kind of line: RFC 3164 syslog and ISO-stamped syslog.
_HEADER = re.compile(
    rf"^(?:<\d{{1,3}}>)?(?:{_MONTH} +\d{{1,2}}|\d{{4}}-\d\d-\d\dT)[ T]?{_TIME}"
    r"(?:Z|[+-]\d\d:?\d\d)? +[\w.-]+ +(?=[\w./()-]+(?:\[\d+\])?(?:\s*\(.*?\))?:)"
)
_MONTH_HINT = re.compile(r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* +\d")
# Everything else is masked token by token, and only in tokens with a digit or a slash.
_CANDIDATE = re.compile(r"[\d/]")
# Inside such a token, the runs between brackets, quotes and separators are masked one by one,
# most often by one anchored match of the whole run (a run is remembered in a bounded cache).
_CHUNK = re.compile(r"(?<![^\[\](){}<>;=|\"'`])[^\[\](){}<>;=|\"'`]*[\d/][^\[\](){}<>;=|\"'`]*")
# Lookbehinds make a match start only where a run starts: linear time on hostile input.
_URL = re.compile(r"(?<![\w+.-])[a-zA-Z][\w+.-]*://[^\s\"'<>]+")
# Order matters: the first alternative that matches at a position wins. The third element lists
# characters of which a token must hold at least one for the mask to apply (a cheap pre-check).
_MASKS: tuple[tuple[str, str, str], ...] = (
    (
        rf"\d{{2,4}}[-/.]\d\d[-/.]\d{{2,4}}(?:[T ]|-)?{_TIME}(?:Z|[+-]\d\d:?\d\d)?"
        r"|\d{8}-\d{1,2}:\d{1,2}(?::\d{1,2})?(?:[.,:]\d+)?",
        "<TS>",
        ":",
    ),
    (r"\b\d{4}-\d\d-\d\d\b|\b\d\d/\d\d/\d{2,4}\b", "<DATE>", "-/"),
    (rf"\b{_TIME}\b", "<TIME>", ":"),
    (
        r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
        "<UUID>",
        "-",
    ),
    (r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?![\w.])", "<IP>", "."),
    (r"\b(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}\b", "<MAC>", ":"),
    (r"(?<![\w.~])(?:/[\w.@%+~-]+){2,}/?", "<PATH>", "/"),
    (r"\b0[xX][0-9a-fA-F]+\b", "<HEX>", ""),
    (r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}\b", "<HEX>", ""),
    (r"(?<![A-Za-z])\d+(?:\.\d+)?(?:ms|us|ns|s|m|h|d)\b", "<DUR>", ""),
    (r"(?:(?<![\w])-)?(?<![A-Za-z])\d+(?:\.\d+)*", "<NUM>", ""),
)
BUILTIN_MASKS: tuple[tuple[str, str], ...] = tuple((rx, name) for rx, name, _ in _MASKS)
_PUNCT = ":-/."
_WORD_CACHE = 50_000
_ROUTE_SKIP = re.compile(r"[<\d]")  # placeholders and names with digits (hosts, ids) do not route


class Masker:
    """Replaces the variable parts of a line by typed placeholders.

    ``extra`` masks (the rule's ``masks:``) run first, each as ``(regex, replacement)``, over the
    whole line. The built-in masks then run only inside tokens that hold a digit or a slash, which
    keeps the cost per line low (most tokens of most lines are words, remembered in a bounded set),
    and only the masks the token's punctuation allows (one compiled alternation per combination).
    """

    def __init__(self, extra: Sequence[tuple[str, str]] = ()) -> None:
        self._extra = [(re.compile(rx), repl) for rx, repl in extra]
        self._by_shape: dict[tuple[bool, ...], tuple[re.Pattern[str], list[str]]] = {}
        self._words: set[str] = set()
        self._chunks: dict[str, str] = {}
        self._whole = re.compile("|".join(f"({rx})" for rx, _, _ in _MASKS))
        self._whole_names = [n for _, n, _ in _MASKS]

    def _compiled(self, shape: tuple[bool, ...]) -> tuple[re.Pattern[str], list[str]]:
        got = self._by_shape.get(shape)
        if got is None:
            present = {c for c, has in zip(_PUNCT, shape, strict=True) if has}
            chosen = [(rx, n) for rx, n, need in _MASKS if not need or present & set(need)]
            rx = re.compile("|".join(f"({rx})" for rx, _ in chosen))
            got = self._by_shape[shape] = (rx, [n for _, n in chosen])
        return got

    def _mask_chunk(self, m: re.Match[str]) -> str:
        chunk = m.group()
        if chunk.isdigit():
            return "<NUM>"
        got = self._chunks.get(chunk)
        if got is None:
            whole = self._whole.fullmatch(chunk)
            if whole is not None:
                got = self._whole_names[(whole.lastindex or 1) - 1]
            else:
                rx, names = self._compiled(tuple(c in chunk for c in _PUNCT))
                got = rx.sub(lambda m: names[(m.lastindex or 1) - 1], chunk)
            if len(self._chunks) >= _WORD_CACHE:
                self._chunks.clear()
            self._chunks[chunk] = got
        return got

    def _mask_token(self, tok: str) -> str:
        return _CHUNK.sub(self._mask_chunk, tok)

    def mask(self, text: str) -> str:
        return " ".join(self.tokens(text))

    def tokens(self, text: str) -> list[str]:
        text = text[:MAX_LINE_CHARS]
        for rx, repl in self._extra:
            text = rx.sub(repl, text)
        text = _HEADER.sub("<TS> ", text, count=1)
        if "://" in text:
            text = _URL.sub("<URL>", text)
        if _MONTH_HINT.search(text):
            text = _NAMED_DATE.sub("<TS>", text)
        words = self._words
        out = []
        for tok in text.split()[:MAX_TOKENS]:
            if tok in words:
                out.append(tok)
            elif tok.isdigit():
                out.append("<NUM>")
            elif _CANDIDATE.search(tok):
                out.append(self._mask_token(tok))
            else:
                if len(words) >= _WORD_CACHE:
                    words.clear()
                words.add(tok)
                out.append(tok)
        return out


def is_variable(token: str) -> bool:
    """A wildcard or a pure placeholder (``<NUM>``): it says nothing about the kind of line."""
    return token[:1] == "<" and token[-1:] == ">" and token.count("<") == 1


def route_key(tokens: Sequence[str], depth: int = ROUTE_TOKENS) -> tuple[Any, ...]:
    """Length plus the first ``ROUTE_TOKENS`` fixed tokens with their positions (headers are
    placeholders and skipped). A line joins only templates with its own key, so the key of a
    template never changes as it generalises."""
    fixed: list[Any] = [len(tokens)]
    if depth == 0:
        return tuple(fixed)
    for i, t in enumerate(tokens):
        if not _ROUTE_SKIP.search(t):
            fixed.append((i, t))
            if len(fixed) > depth:
                break
    return tuple(fixed)


@dataclass
class Template:
    """One learned kind of line. ``tokens`` generalise (to ``<*>``) as lines join."""

    id: str
    tokens: list[str]
    count: int = 0
    first_at: datetime | None = None  # kept by the caller: the miner itself is clock-free
    last_at: datetime | None = None
    example: str = ""
    known: bool = False  # marked known by a user (never alerts)
    extra: dict[str, Any] = field(default_factory=dict)  # the evaluator's per-template data

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "count": self.count,
            "first_at": iso_or_none(self.first_at, keep_offset=True),
            "last_at": iso_or_none(self.last_at, keep_offset=True),
            "example": self.example,
            "known": self.known,
            **({"extra": self.extra} if self.extra else {}),
        }

    @staticmethod
    def from_json(tid: str, value: Mapping[str, Any]) -> Template:
        return Template(
            id=tid,
            tokens=[str(t) for t in value["tokens"]],
            count=int(value.get("count", 0)),
            first_at=parse_iso_or_none(value.get("first_at")),
            last_at=parse_iso_or_none(value.get("last_at")),
            example=str(value.get("example", "")),
            known=bool(value.get("known", False)),
            extra=dict(value.get("extra") or {}),
        )


@dataclass(frozen=True, slots=True)
class MineResult:
    template: Template
    created: bool
    """The line started a new template."""
    changed: bool
    """The template's tokens generalised (or it was created)."""


class TemplateMiner:
    """Drain-style online clustering of masked lines. Not thread-safe; one per rule."""

    def __init__(
        self,
        similarity: float = 0.5,
        masks: Sequence[tuple[str, str]] = (),
        id_prefix: str = "t",
        route_depth: int = ROUTE_TOKENS,
    ) -> None:
        self.similarity = similarity
        self.route_depth = route_depth
        self.masker = Masker(masks)
        self.templates: dict[str, Template] = {}
        self._routes: dict[tuple[Any, ...], list[Template]] = {}
        self._cache: dict[str, Template] = {}
        self._next = 1
        self._prefix = id_prefix

    # ------------------------------------------------------------------ state

    def load(self, templates: Iterable[Template], next_id: int | None = None) -> None:
        for t in templates:
            self._add(t)
            num = t.id[len(self._prefix) :]
            if num.isdigit():
                self._next = max(self._next, int(num) + 1)
        if next_id is not None:
            self._next = max(self._next, next_id)

    @property
    def next_id(self) -> int:
        return self._next

    def _add(self, t: Template) -> None:
        self.templates[t.id] = t
        self._routes.setdefault(route_key(t.tokens, self.route_depth), []).append(t)

    def remove(self, tid: str) -> None:
        t = self.templates.pop(tid, None)
        if t is None:
            return
        bucket = self._routes.get(route_key(t.tokens, self.route_depth), [])
        if t in bucket:
            bucket.remove(t)
        self._cache.clear()

    # ------------------------------------------------------------------ mining

    def match(self, text: str) -> Template | None:
        """The template a line belongs to, without learning anything."""
        tokens = self.masker.tokens(text)
        hit = self._cache.get(" ".join(tokens))
        if hit is not None and hit.id in self.templates:
            return hit
        best, _ = self._best(tokens)
        return best

    def _best(self, tokens: list[str]) -> tuple[Template | None, float]:
        best: Template | None = None
        best_sim = -1.0
        key = route_key(tokens, self.route_depth)
        routed = len(key) - 1  # equal by construction: they say nothing about similarity
        for t in self._routes.get(key, ()):
            fixed = -routed
            equal = -routed
            for a, b in zip(t.tokens, tokens, strict=True):
                if is_variable(a):
                    continue
                fixed += 1
                if a == b:
                    equal += 1
            sim = equal / fixed if fixed > 0 else 1.0
            if sim > best_sim:
                best, best_sim = t, sim
        if best is not None and best_sim >= self.similarity:
            return best, best_sim
        return None, best_sim

    def add(self, text: str) -> MineResult:
        """Assign a line to a template (creating or generalising one). Counts are the caller's."""
        tokens = self.masker.tokens(text)
        masked = " ".join(tokens)
        t = self._cache.get(masked)
        if t is not None and t.id in self.templates:
            return MineResult(t, created=False, changed=False)
        best, _ = self._best(tokens)
        if best is None:
            t = Template(id=f"{self._prefix}{self._next}", tokens=tokens, example=text[:2000])
            self._next += 1
            self._add(t)
            result = MineResult(t, created=True, changed=True)
        else:
            t = best
            changed = False
            for i, (a, b) in enumerate(zip(t.tokens, tokens, strict=True)):
                if a not in (b, WILDCARD):
                    t.tokens[i] = WILDCARD
                    changed = True
            result = MineResult(t, created=False, changed=changed)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[masked] = t
        return result
