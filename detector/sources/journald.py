"""The journald source: the journal through sd-journal or journalctl children, entries as Lines.

Sits at the start of the flow, beside ``sources/files.py``: it yields :class:`Batch` es of
:class:`Line` s (``text`` = ``MESSAGE``, ``event_at`` = ``__REALTIME_TIMESTAMP``, ``fields`` = the
journal fields as ``str``: those the rules read, :func:`journal_fields`, which the service passes,
or every field without a list) with the journal cursor as the batch checkpoint, which the service
commits in the batch transaction (the last line of a batch carries ``__CURSOR``; every line does
only for ``multiline:``, and through journalctl). Two readers (``sources/sdjournal.py``
chooses): in-process through the sd-journal binding when it imports (the same steps, on an open
journal, waiting on its inotify fd), else journalctl children as below (``--output-fields=`` of
the list); ``status()["reader"]`` says which.

How it reads (each step is a journalctl child; none blocks the loop):

1. **Position.** A stored cursor is verified with an unfiltered ``--cursor=C`` read of one entry: if
   the first entry is not ``C`` itself, ``C`` is gone (vacuumed, journal replaced, machine
   reinstalled); a ``cursor-gap`` problem says so and how long the gap may be, and reading restarts
   at the oldest available entry. Without a stored cursor, ``start_at: beginning`` reads from the
   oldest entry and ``start_at: end`` takes the cursor of the newest matching entry (``--lines=1``).
2. **Catch-up**: a bounded read (no ``--follow``) from the position to the end, across every boot.
   :meth:`JournaldSource.caught_up` is True when it has ended.
3. **Follow**: ``--follow --cursor=<last entry read>`` until cancelled.

We pass ``--cursor=C`` and drop the first entry when it is ``C``, rather than ``--after-cursor=C``:
journalctl 252 skips *two* entries after seeking, so a cursor that no longer exists, or an entry
that does not match the filters (rules.yaml changed), would silently lose one entry.

**Reboots (systemd 250–257: ``--follow`` implies ``--boot``).** A following journalctl only shows
entries of the *current* boot, and 252 has no ``--boot=all`` to undo it. The bounded catch-up has no
such filter, so after a reboot the tail of the previous boot (its last minutes, written after our
last commit) is read first and then the follow starts on the current boot. The follow's own boot
filter is harmless for local logging: new entries always carry the current boot id. Entries of
*other* boots that appear while following (imported or ``journal-remote`` files) are read at the
next restart of journalctl, not live.

**Never silent.** journalctl missing, exiting or failing (e.g. "insufficient permissions") is
restarted with exponential backoff; after ``fail_after`` failures in a row a ``journalctl`` problem
carries the reason (exit status and its last stderr line). It clears once a journalctl delivers
entries, finishes its catch-up, or keeps running for ``healthy_after``. A journalctl that keeps
dying but catches up after each restart loses nothing and never fails ``fail_after`` times in a
row: ``crash_loop_after`` exits within ``crash_window`` are a ``crash-loop`` problem instead,
active while exits keep coming and cleared after a whole ``crash_window`` without one.

:meth:`JournaldSource.problems` lists every problem raised so far with its current ``active``
flag, by key: ``journalctl`` (failing, with the reason), ``crash-loop`` (exiting again and again),
``permissions`` (journalctl says it cannot
see everything: add the agent to ``systemd-journal``), ``cursor-gap`` (a notice, active for
``gap_notice_for``) and ``config`` (an invalid filter; nothing is read).

**multiline:** the entries' messages are joined into events (``sources/events.py``) as they are
handed out; an event is a Line with the first entry's time and fields (``MESSAGE``: the event).
The committed cursor is that of the entry before the pending event (a restart reads it again);
a journalctl restarted in-process goes on after the last entry read. A pending event quiet for
its ``timeout`` on the clock is handed out while journalctl waits for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from detector.clock import Clock
from detector.model import Config, JournaldSourceConfig, RuleConfig
from detector.records import Checkpoint
from detector.sources.base import Batch, Line, SourceProblem
from detector.sources.events import Event, EventAssembler
from detector.sources.lines import LineAssembler
from detector.sources.sdjournal import SdJournal, choose_reader, sees_everything
from detector.templating import field_names
from detector.timefmt import format_duration
from detector.timestamps import realtime_at

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "cursor"
FIELD_NAME = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
READ_SIZE = 1 << 20
STREAM_LIMIT = 1 << 20  # the pipe buffer may hold 2x this before journalctl is paused
MAX_ENTRY_BYTES = 64 << 20  # a longer JSON entry is skipped (and counted), never buffered whole
STDERR_KEEP = 20


Mark = tuple["dict[str, Any] | None", Line]
"""A journal entry pushed into the event assembler of a ``multiline:`` source: the checkpoint
value of the entry before it (where to resume to read it again) and the entry."""


SYSTEMD_UNITS_FIELDS = (
    "SYSLOG_IDENTIFIER", "_PID", "_UID", "UNIT", "USER_UNIT", "MESSAGE_ID", "UNIT_RESULT",
    "EXIT_CODE", "EXIT_STATUS", "JOB_RESULT",
)  # fmt: skip
"""What a ``systemd_units:`` rule reads of an entry besides ``MESSAGE`` (``rules/systemd_units.py``
``parse_event``; ``tests/test_journald_fields.py`` holds the two together)."""


def rule_fields(rule: RuleConfig) -> set[str]:
    """The journal field names ``rule`` may read of a line: its grouping fields (``group_by``,
    ``by:``, ``distinct:``), its ``fields:`` and the names in its templates. A superset is
    harmless (a name that is not a journal field is simply absent)."""
    names: set[str] = set(rule.group_by) | set(rule.fields)
    for template in (rule.summary, rule.description):
        if template:
            names |= field_names(template)
    spec: Any
    for spec in (rule.threshold, rule.heartbeat, rule.anomaly_rate):
        if spec is None:
            continue
        by = spec.by
        names |= {by} if isinstance(by, str) else set(by or ())
        if getattr(spec, "distinct", None):
            names.add(spec.distinct)
    if rule.systemd_units is not None:
        names.update(SYSTEMD_UNITS_FIELDS)
    return names


def journal_fields(config: Config, source: str) -> tuple[str, ...]:
    """The journal fields that the rules of ``source`` read, sorted: all a reader fetches of an
    entry (``MESSAGE`` always; the cursor, realtime and boot id of the checkpoint besides)."""
    names = {"MESSAGE"}
    for rule in config.rules:
        if source in rule.sources:
            names |= rule_fields(rule)
    return tuple(sorted(n for n in names if FIELD_NAME.match(n)))


def cursor_value(fields: Mapping[str, str]) -> dict[str, Any]:
    """The checkpoint value after the entry of ``fields``."""
    realtime = fields.get("__REALTIME_TIMESTAMP", "")
    return {
        "cursor": fields.get("__CURSOR"),
        "realtime_us": int(realtime) if realtime.isdigit() else None,
        "boot_id": fields.get("_BOOT_ID"),
    }


class JournalctlFailed(Exception):
    """A journalctl child could not be started or ended badly; the message says why."""


@dataclass(frozen=True)
class _Probe:
    """The first entry a bounded journalctl read returned (None: the read returned nothing)."""

    entry: dict[str, Any] | None
    invalid_cursor: str | None = None  # journalctl refused the cursor itself (its message)


def field_str(value: Any) -> str | None:
    """One exported journal field value as ``str``.

    journalctl's JSON gives a string for UTF-8 values, a list of byte values for binary ones
    (invalid UTF-8, control characters), a list of those for a field that occurs several times
    (the first occurrence is used, as ``sd_journal_get_data`` does) and null for values it left
    out. Binary values are decoded with ``errors="replace"``.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if not value:
            return ""
        if isinstance(value[0], int):
            return bytes(value).decode("utf-8", errors="replace")
        return field_str(value[0])
    if value is None:
        return None
    return str(value)


def entry_to_line(source: str, entry: dict[str, Any], all_str: bool = False) -> Line:
    """A parsed journalctl JSON entry as a :class:`Line` (``MESSAGE`` without trailing newlines).

    ``all_str``: the caller knows every value is a string (its JSON had no ``[`` and no ``null``).
    """
    fields: dict[str, str]
    if all_str or all(type(v) is str for v in entry.values()):
        fields = entry
    else:
        fields = {}
        for k, v in entry.items():
            s = field_str(v)
            if s is not None:
                fields[k] = s
    text = fields.get("MESSAGE", "").rstrip("\n")
    event_at = realtime_at(fields.get("__REALTIME_TIMESTAMP"))
    return Line(source=source, text=text, event_at=event_at, fields=fields)


def parse_entries(raws: list[bytes]) -> tuple[list[dict[str, Any]], bool, int]:
    """journalctl's JSON lines as entries: the entries, whether every value of every entry is a
    string, and how many lines were not an entry (skipped, never a crash).

    One ``json.loads`` for all the lines (joined as an array) instead of one a line: the
    wrapper around the C scanner costs more than the scan of a short entry. Taken only if it
    gives one object with a ``__CURSOR`` per line (journalctl prints one a line); otherwise,
    and for any line that is not JSON, line by line.
    """
    if not raws:
        return [], True, 0
    blob = b"[" + b",".join(raws) + b"]"
    try:
        got = json.loads(blob)
    except ValueError:
        got = None
    if (
        type(got) is list
        and len(got) == len(raws)
        and all(type(e) is dict and "__CURSOR" in e for e in got)
    ):
        return got, b"[" not in blob[1:-1] and b"null" not in blob, 0
    entries: list[dict[str, Any]] = []
    for raw in raws:
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if type(entry) is dict:
            entries.append(entry)
    return entries, False, len(raws) - len(entries)


def filter_args(config: JournaldSourceConfig) -> list[str]:
    """journalctl arguments for the source's filters (all given kinds must hold, as in journalctl:
    units AND identifiers AND priority AND match; values of one kind are alternatives)."""
    args = [f"--unit={u}" for u in config.units]
    args += [f"--identifier={i}" for i in config.identifiers]
    if config.priority is not None:
        args.append(f"--priority={config.priority}")
    matches = [f"{k}={v}" for k, values in config.match.items() for v in values]
    if matches:
        args += ["--", *matches]
    return args


def config_errors(config: JournaldSourceConfig) -> list[str]:
    errors = [
        f"match field {k!r} is not a journal field name (A-Z, 0-9, _)"
        for k in config.match
        if not FIELD_NAME.match(k)
    ]
    if config.priority is not None and not 0 <= config.priority <= 7:
        errors.append(f"priority {config.priority} is not 0 (emerg) .. 7 (debug)")
    return errors


async def _first_line(stream: asyncio.StreamReader) -> bytes:
    """The first line of ``stream`` (or what there is before EOF), however long, up to a cap."""
    data = b""
    while b"\n" not in data and len(data) <= MAX_ENTRY_BYTES:
        chunk = await stream.read(READ_SIZE)
        if not chunk:
            break
        data += chunk
    if len(data) > MAX_ENTRY_BYTES and b"\n" not in data:
        raise JournalctlFailed(f"journalctl printed an entry over {MAX_ENTRY_BYTES} bytes")
    return data.split(b"\n", 1)[0]


def _whole_seconds_up(d: timedelta) -> timedelta:
    """An upper bound in whole seconds (a gap of 0.6 s is "up to 1s", never "up to 0s")."""
    return timedelta(seconds=math.ceil(d.total_seconds()))


class JournaldSource:
    """Reads one journald source (see the module docstring). Implements ``Source``."""

    def __init__(
        self,
        config: JournaldSourceConfig,
        checkpoints: Mapping[str, Mapping[str, Any]],
        clock: Clock,
        *,
        backoff_initial: timedelta = timedelta(milliseconds=500),
        backoff_max: timedelta = timedelta(seconds=30),
        fail_after: int = 3,
        healthy_after: timedelta = timedelta(seconds=10),
        gap_notice_for: timedelta = timedelta(minutes=15),
        max_batch: int = 5000,
        crash_loop_after: int = 5,
        crash_window: timedelta = timedelta(minutes=5),
        reader: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> None:
        """``fields``: the journal fields to read of each entry (:func:`journal_fields`; the
        service passes its rules' list), None: every field."""
        self.name = config.name
        self.fields: tuple[str, ...] | None = None if fields is None else tuple(fields)
        self.reader, self.reader_why = choose_reader(config, reader)
        """``sd-journal`` (in-process, the binding) or ``journalctl`` (children), and why."""
        self._sdj: SdJournal | None = None
        self._sdj_opened: float | None = None
        self._config = config
        self._clock = clock
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._fail_after = fail_after
        self._healthy_after = healthy_after
        self._gap_notice_for = gap_notice_for
        self._max_batch = max_batch
        self._crash_loop_after = crash_loop_after
        self._crash_window = crash_window
        self._exits: deque[float] = deque()  # clock.monotonic() of each failure in the window
        self._filters = filter_args(config)

        stored = checkpoints.get(CHECKPOINT_KEY)
        cursor = stored.get("cursor") if stored else None
        self._stored: Mapping[str, Any] | None = stored if isinstance(cursor, str) else None
        self._cursor: str | None = None  # the last entry read (or the start position)
        self._need_position = True
        self._first_position = True
        self._following = False  # False: the next read is a bounded catch-up
        self._caught_up = False
        self._permission_hint = False  # the running journalctl complained about permissions
        self._closed = False
        self._closed_event = asyncio.Event()
        self.opened = asyncio.Event()
        """Set once the read position is established (or that failed and is a problem): what
        is written to the journal after this is read. The agent sends READY=1 after it."""

        self._proc: asyncio.subprocess.Process | None = None
        self._proc_started: float | None = None
        self._failures = 0
        self._last_error: str | None = None
        self._problems: dict[str, SourceProblem] = {}
        self._gap_since: datetime | None = None
        self._entries_read = 0
        self._skipped_entries = 0
        self._restarts = 0
        self._last_realtime_us: int | None = None
        self._events: EventAssembler[Mark] | None = None
        if config.multiline is not None:
            self._events = EventAssembler(config.multiline)
        self._ev_prev: dict[str, Any] | None = None  # checkpoint value after the last pushed
        self._handed: tuple[str | None, int | None] = (None, None)  # cursor, realtime_us
        self._progress = asyncio.Event()  # set whenever a batch was handed out
        self._serving: set[asyncio.Task[None]] = set()  # read_now() requests being served
        errors = config_errors(config)
        if errors:
            self._raise_problem("config", "; ".join(errors))

    # ------------------------------------------------------------------ Source protocol

    async def batches(self) -> AsyncIterator[Batch]:
        """Yield batches until cancelled or :meth:`aclose`. Never raises for journal trouble."""
        if "config" in self._problems:
            self.opened.set()
            await self._closed_event.wait()  # nothing sensible to read; the problem says why
            return
        delay = self._backoff_initial
        while not self._stopped():
            started = self._clock.monotonic()
            try:
                if self._need_position:
                    try:
                        await self._establish_position()
                    finally:
                        self.opened.set()
                    self._need_position = False
                    self._handed = (self._cursor, self._last_realtime_us)  # read up to here
                    self._progress.set()
                reading = (
                    self._read_sdj()
                    if self.reader == "sd-journal"
                    else self._read(follow=self._following)
                )
                async for batch in reading:
                    yield batch  # returns once the agent's queue took it
                    self._handed = (self._cursor, self._last_realtime_us)
                    self._progress.set()
                if self._stopped():
                    return
                self._following = True  # _read returns normally only after a complete catch-up
                delay = self._backoff_initial
                continue
            except asyncio.CancelledError:
                raise
            except JournalctlFailed as exc:
                if self._stopped():
                    return
                self._note_failure(str(exc), self._clock.monotonic() - started)
            except Exception as exc:  # never raise out of batches(); report instead
                log.exception("journald source %s: unexpected error", self.name)
                self._note_failure(f"unexpected error: {exc!r}", 0.0)
            # Restart: verify the cursor again (it may have been vacuumed meanwhile) and catch
            # up before following, so nothing between the last entry read and now is missed.
            self._need_position = True
            self._following = False
            if self._failures <= 1:
                delay = self._backoff_initial
            self._restarts += 1
            await self._backoff(delay)
            delay = min(delay * 2, self._backoff_max)

    def problems(self) -> list[SourceProblem]:
        """Every problem raised so far, with its current ``active`` state (consumers diff)."""
        now = self._clock.now()
        gap = self._problems.get("cursor-gap")
        since = self._gap_since
        if (
            gap is not None
            and gap.active
            and since is not None
            and now - since >= self._gap_notice_for
        ):
            self._problems["cursor-gap"] = SourceProblem(self.name, gap.key, gap.message, False)
        looping = self._problems.get("crash-loop")
        if looping is not None and looping.active:
            self._forget_old_exits()
            if not self._exits:  # quiet for a whole window
                log.info("journald source %s: journalctl no longer crash-looping", self.name)
                self._clear("crash-loop")
        failing = self._problems.get("journalctl")
        if self._running_for() >= self._healthy_after:
            if failing is not None and failing.active:
                self._clear_failures()
            if not self._permission_hint:
                self._clear("permissions")
        return list(self._problems.values())

    def status(self) -> dict[str, Any]:
        proc = self._proc
        return {
            "name": self.name,
            "type": "journald",
            "reader": self.reader,
            "namespace": self._config.namespace,
            "filters": self._filters,
            "fields": list(self.fields) if self.fields is not None else "all",
            "caught_up": self._caught_up,
            "cursor": self._cursor,
            "last_event_at": (
                at.isoformat() if (at := realtime_at(self._last_realtime_us)) else None
            ),
            "pid": proc.pid if proc is not None and proc.returncode is None else None,
            "entries_read": self._entries_read,
            "skipped_entries": self._skipped_entries,
            "restarts": self._restarts,
            "consecutive_failures": self._failures,
            "last_error": self._last_error,
        }

    def caught_up(self) -> bool:
        """True once everything that existed when reading started has been yielded."""
        return self._caught_up

    def read_now(self) -> asyncio.Future[None]:
        """Done once the newest matching entry the journal holds now (``--lines=1``: what
        journalctl's ``--follow`` may not have printed yet) has been handed out; pending while
        journalctl fails (its problem says why)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._serve_read(fut))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        return fut

    async def _serve_read(self, fut: asyncio.Future[None]) -> None:
        if "config" in self._problems:
            return  # nothing is ever read; the problem says why
        try:
            newest = (await self._probe(["--lines=1", *self._filters])).entry
        except JournalctlFailed:
            return
        cursor = newest.get("__CURSOR") if newest else None
        raw = newest.get("__REALTIME_TIMESTAMP") if newest else None
        realtime = int(raw) if isinstance(raw, str) and raw.isdigit() else None
        while not fut.done():
            at_cursor, at_us = self._handed
            if (
                newest is None
                or cursor == at_cursor
                or (realtime is not None and at_us is not None and at_us >= realtime)
            ):
                fut.set_result(None)
                return
            self._progress.clear()
            await self._progress.wait()

    async def aclose(self) -> None:
        """Stop reading: terminate the journalctl child and reap it."""
        self._closed = True
        self._closed_event.set()
        for task in list(self._serving):
            task.cancel()
        self._close_sdj()
        await self._stop(self._proc)

    # ------------------------------------------------------------------ positioning

    def _base_args(self) -> list[str]:
        args = [self._config.journalctl, "--output=json", "--all", "--no-pager"]
        if self.fields is not None:  # the cursor, times and _BOOT_ID come with any list
            args.append("--output-fields=" + ",".join(self.fields))
        if self._config.namespace is not None:
            args.append(f"--namespace={self._config.namespace}")
        return args

    async def _establish_position(self) -> None:
        if self.reader == "sd-journal":
            self._establish_position_sdj()
            return
        stored = self._stored if self._first_position else None
        cursor = str(stored["cursor"]) if stored is not None else self._cursor
        if cursor is not None:
            first = await self._probe([f"--cursor={cursor}"], bad_cursor_ok=True)
            if first.entry is not None and first.entry.get("__CURSOR") == cursor:
                self._cursor = cursor
            else:
                self._cursor_gone(cursor, stored, first, (await self._probe([])).entry)
        elif self._config.start_at == "end":
            last = await self._probe(["--lines=1", *self._filters])
            self._cursor = str(last.entry["__CURSOR"]) if last.entry else None
        self._first_position = False

    def _cursor_gone(
        self,
        cursor: str,
        stored: Mapping[str, Any] | None,
        first: _Probe,
        oldest: Mapping[str, Any] | None,
    ) -> None:
        realtime = stored.get("realtime_us") if stored else None
        since_at = realtime_at(realtime if isinstance(realtime, int) else self._last_realtime_us)
        oldest_at = realtime_at(oldest.get("__REALTIME_TIMESTAMP")) if oldest else None
        msg = (
            "journald no longer has the stored cursor (journal vacuumed, rotated away or replaced)"
        )
        if oldest_at is None:
            msg += "; the journal is empty, reading restarts with the next entry"
        else:
            msg += f"; reading restarts at the oldest available entry ({oldest_at.isoformat()})"
            if since_at is not None and oldest_at > since_at:
                msg += (
                    f"; entries between {since_at.isoformat()} and {oldest_at.isoformat()} "
                    f"(up to {format_duration(_whole_seconds_up(oldest_at - since_at))}) may be "
                    "missing"
                )
            elif since_at is not None:
                msg += (
                    f"; the journal now starts before the last entry read ({since_at.isoformat()}),"
                    " so it was replaced: entries may be missing or read twice"
                )
        if first.invalid_cursor is not None:
            msg += f" ({self.reader}: {first.invalid_cursor})"
        elif first.entry is None and oldest is not None:
            msg += " (the cursor points past the end of this journal)"
        log.warning("journald source %s: %s (cursor %s)", self.name, msg, cursor)
        self._gap_since = self._clock.now()
        self._raise_problem("cursor-gap", msg, anew=True)
        self._cursor = None

    async def _probe(self, args: Sequence[str], *, bad_cursor_ok: bool = False) -> _Probe:
        """Run a bounded journalctl read and return its first entry (then stop the child)."""
        proc = await self._spawn([*self._base_args(), *args])
        assert proc.stdout is not None and proc.stderr is not None
        try:
            line = await _first_line(proc.stdout)
            if line.strip():
                return _Probe(json.loads(line))
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            rc = await proc.wait()
            if rc == 0:
                return _Probe(None)
            if bad_cursor_ok and "cursor" in err.lower():
                return _Probe(None, invalid_cursor=err.splitlines()[-1])
            raise JournalctlFailed(self._exit_reason(rc, err.splitlines()))
        except ValueError as exc:
            raise JournalctlFailed(f"journalctl printed something that is not JSON: {exc}") from exc
        finally:
            await self._stop(proc)

    # ------------------------------------------------------------------ sd-journal

    def _open_sdj(self, *, filtered: bool = True) -> SdJournal:
        try:
            return SdJournal(
                self._config,
                filtered=filtered,
                fields=self.fields,
                cursor_each=self._events is not None,
            )
        except OSError as exc:
            raise JournalctlFailed(f"sd-journal: cannot open the journal: {exc}") from exc

    def _close_sdj(self) -> None:
        if self._sdj is not None:
            self._sdj.close()
            self._sdj = None

    def _establish_position_sdj(self) -> None:
        """As :meth:`_establish_position`, on an in-process journal (the cursor checked on an
        unfiltered one)."""
        self._close_sdj()
        stored = self._stored if self._first_position else None
        cursor = str(stored["cursor"]) if stored is not None else self._cursor
        jr = self._open_sdj()
        try:
            if cursor is not None:
                probe = self._open_sdj(filtered=False)
                try:
                    try:
                        found, first = probe.entry_at(cursor), _Probe(probe.first())
                    except ValueError as exc:
                        found, first = False, _Probe(None, f"Failed to seek to cursor: {exc}")
                    if found:
                        self._cursor = cursor
                        jr.seek_after(cursor)
                    else:
                        self._cursor_gone(cursor, stored, first, probe.oldest())
                        jr.seek_head()
                finally:
                    probe.close()
            elif self._config.start_at == "end":
                self._cursor = jr.seek_last()
            else:
                jr.seek_head()
        except BaseException:
            jr.close()
            raise
        self._sdj, self._sdj_opened = jr, self._clock.monotonic()
        self._first_position = False
        self._permission_hint = not sees_everything()
        if self._permission_hint:
            self._raise_problem(
                "permissions",
                "sd-journal: not seeing messages from other users and the system: add the "
                "agent's user to the systemd-journal group",
            )

    async def _read_sdj(self) -> AsyncIterator[Batch]:
        """Catch up, then follow, on the journal opened by :meth:`_establish_position_sdj`;
        returns only when stopped."""
        jr = self._sdj
        assert jr is not None
        if self._events is not None and self._ev_prev is None and self._cursor is not None:
            stored = self._stored
            if stored is not None and stored.get("cursor") == self._cursor:
                self._ev_prev = dict(stored)
            else:
                self._ev_prev = {"cursor": self._cursor, "realtime_us": self._last_realtime_us}
        try:
            if not self._following:
                held: Batch | None = None
                while lines := self._sdj_read(jr):
                    batch = self._make_batches(lines, 0)[0]
                    if held is not None:
                        yield self._out(held)
                        if self._stopped():
                            return
                    held = batch
                self._caught_up_done()
                self._following = True
                if held is not None:
                    yield self._out(held)
            while not self._stopped():
                lines = self._sdj_read(jr)
                if lines:
                    yield self._out(self._make_batches(lines, 0)[0])
                    continue
                quiet = self._events.deadline() if self._events is not None else None
                if self._events is not None and quiet is not None and quiet <= self._clock.now():
                    # nothing new to read and the pending event is quiet past its timeout (the
                    # journal's fd may stay readable without new entries: do not wait on it)
                    last = self._events.flush()
                    yield self._event_batch([last] if last is not None else [], 0)
                    continue
                if not await self._sdj_wait(jr, quiet) and self._events is not None:
                    last = self._events.flush()
                    yield self._event_batch([last] if last is not None else [], 0)
        finally:
            if self._sdj is jr:
                self._close_sdj()

    def _sdj_read(self, jr: SdJournal) -> list[Line]:
        if self._stopped():
            return []
        try:
            return jr.read(self._max_batch)
        except OSError as exc:
            raise JournalctlFailed(f"sd-journal: reading failed: {exc}") from exc

    async def _sdj_wait(self, jr: SdJournal, quiet: datetime | None) -> bool:
        """Wait for the journal to change (its inotify fd), the close, or ``quiet`` on the
        clock; False if ``quiet`` came first."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def on_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        waits: set[asyncio.Future[Any]] = {ready, asyncio.ensure_future(self._closed_event.wait())}
        sleeper: asyncio.Future[Any] | None = None
        if quiet is not None:
            sleeper = asyncio.ensure_future(self._clock.sleep_until(quiet))
            waits.add(sleeper)
        loop.add_reader(jr.fd, on_ready)
        try:
            await asyncio.wait(waits, timeout=jr.timeout(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(jr.fd)
            for w in waits:
                w.cancel()
        if self._stopped():
            return True
        try:
            jr.process()
        except OSError as exc:
            raise JournalctlFailed(f"sd-journal: {exc}") from exc
        return sleeper is None or not sleeper.done() or ready.done()

    # ------------------------------------------------------------------ reading

    async def _spawn(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=STREAM_LIMIT,
            )
        except FileNotFoundError as exc:
            raise JournalctlFailed(f"journalctl not found: {argv[0]!r}") from exc
        except OSError as exc:
            raise JournalctlFailed(f"cannot start {argv[0]!r}: {exc}") from exc

    async def _read(self, *, follow: bool) -> AsyncIterator[Batch]:
        argv = self._base_args()
        if follow:
            argv.append("--follow")
        if self._cursor is not None:
            argv.append(f"--cursor={self._cursor}")
        elif follow:
            argv.append("--no-tail")
        argv += self._filters
        start_cursor = skip_cursor = self._cursor
        self._permission_hint = False
        proc = await self._spawn(argv)
        self._proc = proc
        self._proc_started = self._clock.monotonic()
        assert proc.stdout is not None and proc.stderr is not None
        stderr_lines: list[str] = []
        stderr_task = asyncio.ensure_future(self._drain_stderr(proc.stderr, stderr_lines))
        held: Batch | None = None  # catch-up holds one batch back to know if it was the last
        splitter = LineAssembler(MAX_ENTRY_BYTES)  # an entry over that is skipped, not kept
        if self._events is not None and self._ev_prev is None and start_cursor is not None:
            stored = self._stored
            if stored is not None and stored.get("cursor") == start_cursor:
                self._ev_prev = dict(stored)
            else:
                self._ev_prev = {"cursor": start_cursor, "realtime_us": self._last_realtime_us}
        reading: asyncio.Future[bytes] | None = None
        try:
            while True:
                if self._events is None:
                    chunk = await proc.stdout.read(READ_SIZE)
                else:  # multiline: a pending event quiet for its timeout is complete
                    if reading is None:
                        reading = asyncio.ensure_future(proc.stdout.read(READ_SIZE))
                    quiet = self._events.deadline() if held is None else None
                    if quiet is not None and not await self._ready_by(reading, quiet):
                        last = self._events.flush()
                        yield self._event_batch([last] if last is not None else [], 0)
                        continue
                    chunk, reading = await reading, None
                if not chunk:
                    break
                parsed, all_str, bad = parse_entries(splitter.split(chunk))
                splitter.skipped += bad
                if skip_cursor is not None and parsed:
                    skip_cursor = None
                    if parsed[0].get("__CURSOR") == start_cursor:
                        del parsed[0]  # --cursor includes the entry we already read
                name = self.name
                entries = [entry_to_line(name, entry, all_str) for entry in parsed]
                for batch in self._make_batches(entries, splitter.take_skipped()):
                    if follow:
                        yield self._out(batch)
                    else:
                        if held is not None:
                            yield self._out(held)
                        held = batch
            rc = await proc.wait()
            await stderr_task
            if self._stopped():
                return
            if follow or rc != 0:
                raise JournalctlFailed(self._exit_reason(rc, stderr_lines))
            self._caught_up_done()
            if held is not None:
                yield self._out(held)
        finally:
            if reading is not None:
                reading.cancel()
            stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stderr_task
            await self._stop(proc)
            if self._proc is proc:
                self._proc = None

    def _make_batches(self, entries: list[Line], skipped: int) -> list[Batch]:
        batches: list[Batch] = []
        for i in range(0, len(entries), self._max_batch):
            part = entries[i : i + self._max_batch]
            last = part[-1].fields or {}
            checkpoints: list[Checkpoint] = []
            if last.get("__CURSOR") is not None:
                checkpoints.append(Checkpoint(self.name, CHECKPOINT_KEY, cursor_value(last)))
            batches.append(Batch(self.name, part, checkpoints, skipped if i == 0 else 0))
        self._skipped_entries += skipped
        return batches

    def _out(self, batch: Batch) -> Batch:
        """``batch`` handed out: the position moves past it; a ``multiline:`` source hands out
        the events its entries complete instead."""
        self._advance(batch)
        if self._events is None:
            return batch
        pushed: list[tuple[str, Mark]] = []
        prev = self._ev_prev
        for line in batch.lines:
            pushed.append((line.text, (prev, line)))
            prev = cursor_value(line.fields or {})
        self._ev_prev = prev
        done = self._events.push_all(pushed, self._clock.now())
        return self._event_batch(done, batch.truncated_lines)

    def _event_batch(self, done: list[Event[Mark]], skipped: int) -> Batch:
        """The complete events as lines (the first entry's time and fields, ``MESSAGE`` the
        event); the checkpoint: the entry before the pending event, else the last entry."""
        lines = []
        for event in done:
            first = event.mark[1]
            fields = {**first.fields, "MESSAGE": event.text} if first.fields else None
            lines.append(Line(self.name, event.text, first.event_at, fields=fields))
        assert self._events is not None
        resume = self._events.resume()
        value = self._ev_prev if resume is None else resume[0]
        cps = []
        if value is not None and value.get("cursor") is not None:
            cps.append(Checkpoint(self.name, CHECKPOINT_KEY, dict(value)))
        return Batch(self.name, lines, cps, skipped)

    async def _ready_by(self, reading: asyncio.Future[bytes], at: datetime) -> bool:
        """Wait for ``reading`` until ``at`` on the clock; whether it is done."""
        sleeper: asyncio.Future[Any] = asyncio.ensure_future(self._clock.sleep_until(at))
        try:
            await asyncio.wait([reading, sleeper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        return reading.done()

    def _advance(self, batch: Batch) -> None:
        """``batch`` is being handed out: the next journalctl starts after it."""
        self._entries_read += len(batch.lines)
        for cp in batch.checkpoints:
            self._cursor = str(cp.value["cursor"])
            self._last_realtime_us = cp.value["realtime_us"]
        self._clear_failures()

    async def _drain_stderr(self, stream: asyncio.StreamReader, keep: list[str]) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            if not text:
                continue
            keep.append(text)
            del keep[:-STDERR_KEEP]
            log.warning("journald source %s: journalctl: %s", self.name, text)
            lower = text.lower()
            if "permission" in lower or "not seeing messages" in lower:
                self._permission_hint = True
                self._raise_problem("permissions", f"journalctl: {text}")

    async def _stop(self, proc: asyncio.subprocess.Process | None) -> None:
        if proc is None or proc.returncode is not None:
            if proc is not None:
                await proc.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    # ------------------------------------------------------------------ health

    def _stopped(self) -> bool:
        return self._closed

    async def _backoff(self, delay: timedelta) -> None:
        """Sleep ``delay`` on the injected clock, or less if :meth:`aclose` is called."""
        sleep = asyncio.ensure_future(self._clock.sleep_until(self._clock.now() + delay))
        closed = asyncio.ensure_future(self._closed_event.wait())
        try:
            await asyncio.wait({sleep, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleep, closed):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _caught_up_done(self) -> None:
        self._caught_up = True
        self._clear_failures()
        if not self._permission_hint:
            self._clear("permissions")

    def _running_for(self) -> timedelta:
        if self._sdj is not None and self._sdj_opened is not None:
            return timedelta(seconds=self._clock.monotonic() - self._sdj_opened)
        proc = self._proc
        if proc is None or proc.returncode is not None or self._proc_started is None:
            return timedelta(0)
        return timedelta(seconds=self._clock.monotonic() - self._proc_started)

    @staticmethod
    def _exit_reason(rc: int, stderr_lines: Sequence[str]) -> str:
        what = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        last = stderr_lines[-1] if stderr_lines else "no message"
        return f"journalctl {what}: {last}"

    def _note_failure(self, reason: str, ran_for_s: float) -> None:
        if ran_for_s >= self._healthy_after.total_seconds():
            self._failures = 0  # it had been healthy: this is the first failure of a new series
        self._failures += 1
        self._last_error = reason
        log.warning("journald source %s: %s (failure %d)", self.name, reason, self._failures)
        # Restarts that each catch up clear the failures above, but not this: a journalctl
        # that keeps dying is a problem even when every entry is still read.
        self._exits.append(self._clock.monotonic())
        self._forget_old_exits()
        if len(self._exits) >= self._crash_loop_after:
            looping = self._problems.get("crash-loop")
            self._raise_problem(
                "crash-loop",
                f"journalctl exited {len(self._exits)} times in the last "
                f"{format_duration(self._crash_window)}: {reason}",
                # a crash loop is already many failures: an event, reported at once; a new one
                # (after it had settled) is a new occurrence
                anew=looping is None or not looping.active,
            )
        if self._failures >= self._fail_after:
            self._raise_problem(
                "journalctl",
                f"{reason} ({self._failures} failures in a row; restarting with backoff)",
            )

    def _forget_old_exits(self) -> None:
        oldest = self._clock.monotonic() - self._crash_window.total_seconds()
        while self._exits and self._exits[0] <= oldest:
            self._exits.popleft()

    def _clear_failures(self) -> None:
        self._failures = 0
        self._clear("journalctl")

    def _clear(self, key: str) -> None:
        p = self._problems.get(key)
        if p is not None and p.active:
            self._problems[key] = SourceProblem(self.name, key, p.message, False, p.occurrence)

    def _raise_problem(self, key: str, message: str, *, anew: bool = False) -> None:
        """Raise ``key``; ``anew``: a new occurrence of it (another gap), which the agent
        notifies again even while the first one's alert is open."""
        old = self._problems.get(key)
        seq = old.occurrence if old is not None and old.active else 0
        self._problems[key] = SourceProblem(self.name, key, message, occurrence=seq + anew)
