"""Structured matching: the ``parse:`` of file sources and the ``fields:`` of rules, per batch.

Sits in the pipeline right after the line matcher (``engine``): ``Structured.apply`` takes a
batch's texts and the matcher's hits and returns the hits the rules see. On a ``parse: json |
logfmt`` source every line is parsed once (``structured.PARSERS``); a line that does not parse
keeps no fields, is counted (:class:`ParseFailures`, reported as a source problem) and still
goes, as plain text, to the ``match:`` rules, which the matcher ran on the raw line as on any
source. Journald lines bring their own fields. A rule with ``fields:`` keeps a hit of its
patterns only on a line whose every field path exists and matches its regex (``re.search`` on
the value's text, as ``match:`` on a line); a rule without ``match:`` gets a ``match`` hit on
every line whose fields match (then filtered by its ``ignore:``). The field regexes run through
a ``Matcher`` of their own (one plan per source, rule and path, over the values of that path):
the same Hyperscan prefilter, CPU budget, Pike VM fallback and abandoned-line reports as
``match:``, and only on the lines of sources that have fields. Named groups of a field regex are
captures like those of ``match:`` (whose groups win on a shared name). Sources without
``parse:`` and without field rules never come here, so their speed is unchanged. A source with
``message: FIELD`` is *prepared* before the line matcher (:meth:`Structured.prepare`): each
record's message (without its trailing newline) is the line's text, which ``match:`` sees and
``{line}`` and samples show (a line that does not parse, or has no such field, stays its raw
text); with ``time: FIELD`` the field's stamp is the line's own time (``Line.event_at``, as
journald's), live and in ``detector test`` (:class:`RecordTime`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from detector.frozen import Frozen
from detector.lazylog import logger
from detector.matching.engine import Abandoned, Hit, Matcher, PatternSpec
from detector.model import Config, FileSourceConfig
from detector.sources.base import Line, SourceProblem
from detector.structured import (
    PARSERS,
    RECORD_PARSERS,
    ParseError,
    ParseMode,
    Record,
    lookup,
    message_text,
    values_at,
)
from detector.timestamps import TimeParser, zone_named

LOG = "detector.pipeline"

PARSE_REPORT_EVERY = timedelta(minutes=5)
"""Lines that do not parse are reported at most this often per source (a new occurrence of the
source problem, which notifies again); the ones in between are counted into the next report."""
PARSE_NOTICE_FOR = timedelta(minutes=10)
"""How long the problem stays listed after the last line that did not parse."""
PARSE_KEY = "parse"
"""Problem key (``source/<name>/parse``)."""


class _FieldRule(Frozen):
    """A rule with ``fields:`` on a parsed source: the paths it looks up."""

    rule: str
    paths: tuple[str, ...]
    has_match: bool
    """The rule has ``match:``: its hits are filtered; else lines whose fields match are hits."""
    ignore: bool


def _key(source: str, rule: str, path: str) -> str:
    """The field matcher's "source" for one rule's regex of one path (path '' = ``ignore:``)."""
    return f"{source}\x1f{rule}\x1f{path}"


class Structured:
    def __init__(self, config: Config, failures: ParseFailures | None = None) -> None:
        self.parse: dict[str, ParseMode] = {
            name: src.parse
            for name, src in config.sources.items()
            if isinstance(src, FileSourceConfig) and src.parse is not None
        }
        self._message: dict[str, str] = {}
        self._time: dict[str, RecordTime] = {}
        for name, src in config.sources.items():
            if not isinstance(src, FileSourceConfig) or src.parse is None:
                continue
            if src.message is not None:
                self._message[name] = src.message
            if src.time_field is not None:
                self._time[name] = RecordTime(src.parse, src.time_field, record_time_parser(src))
        self._rules: dict[str, list[_FieldRule]] = {}
        specs: list[PatternSpec] = []
        for r in config.rules:
            if not r.enabled or not r.fields:
                continue
            fr = _FieldRule(
                r.name, tuple(r.fields), r.match is not None, r.ignore is not None and not r.match
            )
            for s in r.sources:
                self._rules.setdefault(s, []).append(fr)
                for path, regex in r.fields.items():
                    specs.append(
                        PatternSpec(r.name, "match", regex, frozenset({_key(s, r.name, path)}))
                    )
                if fr.ignore:
                    assert r.ignore is not None
                    specs.append(
                        PatternSpec(r.name, "match", r.ignore, frozenset({_key(s, r.name, "")}))
                    )
        self.matcher = Matcher(specs)
        self.failures = failures or ParseFailures({})
        self.failures.modes = self.parse  # kept across reloads: its counts and occurrences
        self._field_rules = {fr.rule for frs in self._rules.values() for fr in frs}

    def active(self, source: str) -> bool:
        return source in self.parse or source in self._rules

    def needs_texts(self, source: str) -> bool:
        """Every line of the source must be decoded (it is parsed)."""
        return source in self.parse

    def take_abandoned(self) -> dict[str, Abandoned]:
        return self.matcher.take_abandoned()

    def rewrites(self, source: str) -> bool:
        """The lines' texts are their records' messages (``message:``): the line matcher must
        run on what :meth:`prepare` gives, not on the raw lines."""
        return source in self._message

    def prepare(
        self, source: str, texts: Sequence[str], line_at: Callable[[int], Line], now: datetime
    ) -> tuple[Sequence[str], Callable[[int], Line], Sequence[Mapping[str, Any] | None]]:
        """A ``parse:`` source's batch parsed: the texts the matcher and the rules see (the
        messages, with ``message:``), the ``line_at`` that gives each line its fields (and
        its time, with ``time:``), and the records (None: the line did not parse)."""
        mode = self.parse[source]
        records = self._parse(source, mode, texts, now)
        path = self._message.get(source)
        if path is not None:
            texts = [
                t if rec is None or (m := lookup(rec, path)) is None else message_text(m)
                for t, rec in zip(texts, records, strict=True)
            ]
        clock = self._time.get(source)
        base = line_at
        shown = texts

        def prepared(i: int) -> Line:
            ln = base(i)
            rec = records[i]
            if rec is None:
                return ln
            at = ln.event_at if clock is None else clock.of(rec)
            return Line(ln.source, shown[i], at, ln.path, rec)

        return texts, prepared, records

    def apply(
        self,
        source: str,
        texts: Sequence[str],
        line_at: Callable[[int], Line],
        hits: Sequence[Hit],
        records: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> Sequence[Hit]:
        """The hits rules see. ``records``: a ``parse:`` source's (:meth:`prepare`); None:
        the fields of the Lines (journald)."""
        if records is None:
            records = _LineFields(line_at, len(texts))
        rules = self._rules.get(source)
        if not rules:
            return hits
        keep = [h for h in hits if h.rule not in self._field_rules]
        found: list[Hit] = []
        for fr in rules:
            own = [h for h in hits if h.rule == fr.rule]
            if fr.has_match:
                lines = sorted({h.line for h in own})
            else:
                lines = [i for i in range(len(texts)) if records[i] is not None]
            groups: dict[int, dict[str, str]] = {}  # the lines whose field regexes captured
            for path in fr.paths:
                if not lines:
                    break
                vals, at = values_at(records, lines, path)
                passed: list[int] = []
                for h in self.matcher.match(_key(source, fr.rule, path), vals):
                    i = at[h.line]
                    passed.append(i)
                    if h.groups:
                        groups.setdefault(i, {}).update(h.groups)
                lines = passed
            if fr.ignore and lines:
                ignored = {
                    lines[h.line]
                    for h in self.matcher.match(
                        _key(source, fr.rule, ""), [texts[i] for i in lines]
                    )
                }
                lines = [i for i in lines if i not in ignored]
            ok = set(lines)
            if fr.has_match:
                for h in own:
                    if h.line in ok:
                        g = groups.get(h.line)
                        found.append(
                            Hit(h.line, h.rule, h.role, {**g, **h.groups} if g else h.groups)
                        )
            else:
                found.extend(Hit(i, fr.rule, "match", groups.get(i) or {}) for i in lines)
        if not found:
            return keep
        merged = [*keep, *found]
        merged.sort(key=lambda h: h.line)  # stable: the matcher's order kept within a line
        return merged

    def _parse(
        self, source: str, mode: ParseMode, texts: Sequence[str], now: datetime
    ) -> list[Mapping[str, Any] | None]:
        parse = RECORD_PARSERS[mode]
        out: list[Mapping[str, Any] | None] = []
        failed = 0
        first: tuple[str, str] | None = None
        for t in texts:
            try:
                out.append(Record(parse(t)))
            except ParseError as e:
                out.append(None)
                failed += 1
                if first is None:
                    first = (t, str(e))
        if first is not None:
            self.failures.note(source, failed, first[0], first[1], now)
        return out


def record_time_parser(src: FileSourceConfig, time_format: str | None = None) -> TimeParser:
    """How the value of a source's ``time:`` field is read: ``time_format`` (``detector test
    --time-format``) or the source's ``time_format:`` (strptime) if set, else every stamp
    ``timestamps.py`` knows (RFC 3339 with nanoseconds, epochs…), in the source's
    ``timezone:`` when it has no offset."""
    return TimeParser(time_format or src.time_format, zone=zone_named(src.timezone))


class RecordTime:
    """The time of a ``parse:`` source's line, from its ``time:`` field."""

    def __init__(self, mode: ParseMode, path: str, parser: TimeParser) -> None:
        self._parse = PARSERS[mode]
        self._path = path
        self._parser = parser

    def of(self, record: Mapping[str, Any]) -> datetime | None:
        value = lookup(record, self._path)
        return None if value is None else self._parser.parse(value.strip())

    def parse(self, text: str) -> datetime | None:
        """The time of a raw line (``detector test`` reading its clock), None if it has
        none."""
        try:
            return self.of(self._parse(text))
        except ParseError:
            return None


class _LineFields(Sequence[Mapping[str, Any] | None]):
    """The fields of a batch's Lines (journald), got when asked."""

    def __init__(self, line_at: Callable[[int], Line], n: int) -> None:
        self._line_at = line_at
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        return self._line_at(i).fields


@dataclass
class _Failing:
    """The count of a source's lines that its parser refused, for its problem."""

    total: int = 0
    pending: int = 0
    """Since the last report."""
    occurrence: int = 0
    reported_at: datetime | None = None
    last_at: datetime | None = None
    message: str = ""
    sample: str = ""
    error: str = ""


@dataclass
class ParseFailures:
    """Lines of ``parse:`` sources that did not parse: counted, and reported as an event of the
    source (``SourceProblem`` with ``occurrence``) at most every ``PARSE_REPORT_EVERY``."""

    modes: Mapping[str, ParseMode]
    by_source: dict[str, _Failing] = field(default_factory=dict)

    def count(self, source: str) -> int:
        f = self.by_source.get(source)
        return 0 if f is None else f.total

    def note(self, source: str, n: int, sample: str, error: str, now: datetime) -> None:
        f = self.by_source.setdefault(source, _Failing())
        f.total += n
        f.pending += n
        f.last_at = now
        if not f.sample:
            f.sample, f.error = sample, error
        if f.reported_at is None or now - f.reported_at >= PARSE_REPORT_EVERY:
            self._report(source, f, now)

    def _report(self, source: str, f: _Failing, now: datetime) -> None:
        mode = self.modes.get(source, "json")
        f.occurrence += 1
        f.reported_at = now
        f.message = (
            f"{f.pending} line{'s' if f.pending != 1 else ''} did not parse as {mode} "
            f"({f.total} since the start); the first: {f.sample[:200]!r} ({f.error}) — "
            "match: rules still saw them as plain text, fields: rules could not; check the "
            "source's parse: or what writes the log"
        )
        logger(LOG).warning("source %s: %s", source, f.message)
        f.pending, f.sample, f.error = 0, "", ""

    def problems(self, source: str, now: datetime) -> list[SourceProblem]:
        f = self.by_source.get(source)
        if f is None or f.last_at is None or now - f.last_at >= PARSE_NOTICE_FOR:
            return []
        if f.pending and f.reported_at is not None and now - f.reported_at >= PARSE_REPORT_EVERY:
            self._report(source, f, now)  # lines that failed since the last report
        return [SourceProblem(source, PARSE_KEY, f.message, occurrence=f.occurrence)]
