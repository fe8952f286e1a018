"""Lines to events: a source's ``multiline:``, the step right after the line assembler.

Sits between ``sources/lines.py`` (bytes → lines) and the batches a source yields: the file tailer
(``sources/files.py``), journald (``sources/journald.py``) and ``detector test``
(``detector/replay``) push each line into an :class:`EventAssembler`, which holds one *pending*
event and gives back the events it completes, each a single :class:`Event` whose text is its
lines joined with ``"\\n"`` (so a rule's ``^`` is the start of the event's first line and ``$``
its end, as in Python ``re`` without ``(?m)``; ``(?m)`` makes them per line). ``start: REGEX``: a
line where the regex matches (``re.search``) begins a new event, any other line joins the pending
one. ``continue: REGEX``: a matching line joins the pending event, any other begins a new one.
The first line after a (re)start always begins an event. An event of ``max_lines`` lines is
complete: the next line begins a new one (and :attr:`Event.split` says the first was cut there).
Each line carries a *mark*, the reader's position to read that line again (a byte offset, a
journal cursor); :meth:`EventAssembler.resume` is the mark of the pending event's first line,
which is what a source commits as its read position: a restart reads the pending event again,
whole, so it is never lost and never counted twice, and reading the same lines from there gives
the same events. Live, a pending event that got no line for ``timeout`` (on the source's clock:
:meth:`EventAssembler.deadline`) is complete too; ``detector test`` reads files that are already
written, so its events end at their patterns and at the end of the file only. On a ``parse:``
source the lines are *records* (JSON, logfmt) and the patterns see each record's ``message``
field (``parse: docker``: ``log``), not the raw line; an event of several records is one record
again (the first one, its message replaced by the messages joined with ``"\\n"``), so the
pipeline parses it like any other line. With ``partial`` (docker's json-file, which writes a line
over 16 KiB as several records, all but the last without the message's trailing newline), the
pieces of a line join first, into one line of the event; mode ``none`` joins only those. A line
that is not a record (or has no message) is an event of its own, as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

from detector.model import MultilineConfig
from detector.structured import PARSERS, ParseError, dump_record, lookup, replace_at

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Event(Generic[M]):
    """One complete event."""

    text: str
    """Its lines joined with ``"\\n"``."""
    mark: M
    """The mark of its first line."""
    lines: int
    split: bool = False
    """Ended at ``max_lines``: the line after it began a new event."""


class EventAssembler(Generic[M]):
    """Joins lines into events (module docstring). One per file (or journal) being read."""

    def __init__(self, spec: MultilineConfig) -> None:
        self._rx = re.compile(spec.pattern)
        self._starts = spec.mode == "start"
        self.max_lines = spec.max_lines
        self.timeout = spec.timeout
        self._lines: list[str] = []
        self._mark: M | None = None
        self.touched: datetime | None = None
        """When the pending event last got a line (set by the reader: :meth:`push_all`)."""
        self.splits = 0
        """Events ended at ``max_lines`` so far."""
        self._records: _Records[M] | None = None
        if spec.parse is not None and spec.message is not None:
            self._records = _Records(self, spec)

    @property
    def pending_lines(self) -> int:
        if self._records is not None:
            return self._records.pending
        return len(self._lines)

    def resume(self) -> M | None:
        """The mark of the pending event's first line; None: nothing pending."""
        if self._records is not None:
            return self._records.mark()
        return self._mark if self._lines else None

    def push(self, text: str, mark: M, out: list[Event[M]]) -> None:
        """One line; the event it completes, if any, is appended to ``out``."""
        if self._records is not None:
            self._records.push(text, mark, out)
            return
        lines = self._lines
        if lines:
            hit = self._rx.search(text) is not None
            joins = hit is not self._starts
            if joins and len(lines) < self.max_lines:
                lines.append(text)
                return
            out.append(Event("\n".join(lines), cast(M, self._mark), len(lines), joins))
            if joins:
                self.splits += 1
            self._lines = lines = []
        lines.append(text)
        self._mark = mark

    def push_all(
        self, lines: Iterable[tuple[str, M]], now: datetime | None = None
    ) -> list[Event[M]]:
        """Several lines, read at ``now``; the events they complete. The same events as
        :meth:`push` line by line, worked out per event: the pattern runs over the lines in one
        ``map``, and the lines between two event starts join with one ``extend``."""
        pairs = lines if isinstance(lines, list) else list(lines)
        out: list[Event[M]] = []
        if self._records is not None:  # parse: records: one at a time
            for text, mark in pairs:
                self.push(text, mark, out)
        elif pairs:
            texts = [t for t, _ in pairs]
            hit_is_start = self._starts
            begins = [
                i
                for i, m in enumerate(map(self._rx.search, texts))
                if (m is not None) is hit_is_start
            ]
            begins.append(len(texts))
            pos = 0
            for b in begins:
                if pos < b:
                    self._join(texts, pairs, pos, b, out)
                if b == len(texts):
                    break
                if self._lines:
                    out.append(Event("\n".join(self._lines), cast(M, self._mark), len(self._lines)))
                self._lines = [texts[b]]
                self._mark = pairs[b][1]
                pos = b + 1
        if now is not None and self.pending_lines:
            self.touched = now
        return out

    def _join(
        self, texts: list[str], pairs: list[tuple[str, M]], i: int, end: int, out: list[Event[M]]
    ) -> None:
        """Lines ``i:end``, none of which begins an event, onto the pending one (the first
        begins one if nothing is pending; ``max_lines`` splits)."""
        while i < end:
            lines = self._lines
            if not lines:
                self._lines = [texts[i]]
                self._mark = pairs[i][1]
                i += 1
                continue
            room = self.max_lines - len(lines)
            if room <= 0:
                out.append(Event("\n".join(lines), cast(M, self._mark), len(lines), True))
                self.splits += 1
                self._lines = []
                continue
            take = min(room, end - i)
            lines.extend(texts[i : i + take])
            i += take

    def flush(self) -> Event[M] | None:
        """The pending event as complete (its input ended, or was quiet), or None."""
        if self._records is not None:
            event = self._records.take()
            self.reset()
            return event
        if not self._lines:
            return None
        event = Event("\n".join(self._lines), cast(M, self._mark), len(self._lines))
        self.reset()
        return event

    def reset(self) -> None:
        """Forget the pending event (it will be read again: its file was truncated)."""
        self._lines = []
        self._mark = None
        self.touched = None
        if self._records is not None:
            self._records.clear()

    def deadline(self) -> datetime | None:
        """When the pending event is complete for being quiet; None: nothing pending."""
        if not self.pending_lines or self.touched is None:
            return None
        return self.touched + self.timeout

    def due(self, now: datetime) -> bool:
        at = self.deadline()
        return at is not None and now >= at


class _Records(Generic[M]):
    """The records of a ``parse:`` source into events (module docstring): the pending event's
    first record, its lines (messages without their trailing newline), and whether its last line
    is a piece still going on (``partial``)."""

    def __init__(self, owner: EventAssembler[M], spec: MultilineConfig) -> None:
        assert spec.parse is not None and spec.message is not None
        self._owner = owner
        self._mode = spec.parse
        self._parse = PARSERS[spec.parse]
        self._path = spec.message
        self._partial = spec.partial
        self._pattern = spec.mode != "none"
        self._first: dict[str, Any] | None = None
        self._raw = ""
        self._mark: M | None = None
        self._lines: list[str] = []
        self._open = False
        """The last line is a piece: the next record of the same stream goes on with it."""
        self._stream: str | None = None
        self.pending = 0
        """Records in the pending event."""

    def mark(self) -> M | None:
        return self._mark if self.pending else None

    def clear(self) -> None:
        self._first, self._raw, self._mark = None, "", None
        self._lines, self._open, self._stream, self.pending = [], False, None, 0

    def take(self, split: bool = False) -> Event[M] | None:
        """The pending event, complete; None if there is none."""
        if not self.pending:
            return None
        assert self._first is not None
        if self.pending == 1:
            text = self._raw  # one whole record: as it was written
        else:
            replace_at(self._first, self._path, "\n".join(self._lines))
            text = dump_record(self._mode, self._first)
        event = Event(text, cast(M, self._mark), self.pending, split)
        if split:
            self._owner.splits += 1
        self.clear()
        return event

    def push(self, raw: str, mark: M, out: list[Event[M]]) -> None:
        try:
            obj = self._parse(raw)
        except ParseError:
            obj = None
        msg = None if obj is None else lookup(obj, self._path)
        if obj is None or msg is None:  # not a record: an event of its own, as it is
            self._emit(out)
            out.append(Event(raw, mark, 1))
            return
        whole = msg.endswith("\n")
        text = msg[:-2] if msg.endswith("\r\n") else msg[:-1] if whole else msg
        stream = lookup(obj, "stream") if self._partial else None
        full = self.pending >= self._owner.max_lines
        if self.pending and self._open and stream == self._stream:
            if full:
                self._emit(out, split=True)
            else:
                self._lines[-1] += text  # the next piece of a long line
                self.pending += 1
                self._open = not whole
                self._done(out)
                return
        if self.pending and self._pattern and not self._open:
            hit = self._owner._rx.search(text) is not None
            if hit is not self._owner._starts:  # joins
                if not full:
                    self._lines.append(text)
                    self.pending += 1
                    self._open = self._partial and not whole
                    self._stream = stream  # of the last line: its pieces are of its stream
                    return
                self._emit(out, split=True)
        self._emit(out)
        self._first, self._raw, self._mark = obj, raw, mark
        self._lines, self.pending, self._stream = [text], 1, stream
        self._open = self._partial and not whole
        self._done(out)

    def _emit(self, out: list[Event[M]], split: bool = False) -> None:
        event = self.take(split)
        if event is not None:
            out.append(event)

    def _done(self, out: list[Event[M]]) -> None:
        """Without patterns an event is complete as soon as its line is (its last piece)."""
        if not self._pattern and not self._open:
            self._emit(out)
