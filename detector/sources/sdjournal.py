"""Reading the journal in-process through sd-journal (the ``systemd-python`` binding).

Sits under ``sources/journald.py``: the journald source reads through :class:`SdJournal` when the
binding imports (``pip install 'detector[journal]'``: it builds against ``libsystemd-dev``), and
through ``journalctl --output=json`` children otherwise (:func:`choose_reader` says which, and
why; ``DETECTOR_JOURNALD_READER=journalctl`` forces the fallback). Both yield the same Lines:
``MESSAGE`` as the text, ``__REALTIME_TIMESTAMP`` as the time, every journal field as ``str``
(binary values decoded with ``errors="replace"``, a repeated field's first value, fields of any
size: the binding's 64 KiB data threshold is lifted) plus ``__CURSOR``, ``__REALTIME_TIMESTAMP``
and ``__MONOTONIC_TIMESTAMP``, as journalctl's JSON has them. Given the list of fields the rules
read (``journald.journal_fields``) a read fetches only those of each entry (one
``sd_journal_get_data`` each) and the cursor once, for the last entry of the read (every entry
for ``multiline:``, which resumes between entries); without a list every field is read, decoded
when a rule reads it (:class:`JournalFields`). The filters are journalctl's: ``units`` as
``journalctl --unit`` matches them (the unit's own entries, its coredumps, PID 1 and authorised
daemons about it), then identifiers, priority and ``match:``, each kind ANDed with the others.
New entries are waited for on the journal's inotify fd in the event loop, never by polling.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from detector.sources.base import Line

if TYPE_CHECKING:  # `detector version` starts without the config's model
    from detector.model import JournaldSourceConfig

READER_ENV: Final = "DETECTOR_JOURNALD_READER"
"""``auto`` (default: sd-journal when the binding imports), ``sd-journal`` or ``journalctl``."""
READERS: Final = ("auto", "sd-journal", "journalctl")
GLOB = frozenset("*?[")
COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"
TRUSTED_GROUPS = ("systemd-journal", "adm", "wheel")
PSEUDO_FIELDS = frozenset({"__CURSOR", "__REALTIME_TIMESTAMP", "__MONOTONIC_TIMESTAMP"})
"""What journalctl's JSON adds to an entry's own fields (sd-journal has a call for each)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

_binding: Any = None
_binding_error: str | None = None


def binding() -> Any:
    """The ``systemd.journal`` module, or None (then :func:`binding_error` says why)."""
    global _binding, _binding_error  # noqa: PLW0603 - imported once, on first use
    if _binding is None and _binding_error is None:
        try:
            _binding = importlib.import_module("systemd.journal")
            _binding._Reader  # noqa: B018 - an unrelated "systemd" package lacks it
        except (ImportError, AttributeError) as exc:
            _binding, _binding_error = None, f"{type(exc).__name__}: {exc}"
    return _binding


def binding_error() -> str | None:
    binding()
    return _binding_error


def binding_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return f"systemd-python {version('systemd-python')}"
    except Exception:
        return "systemd-python"


def choose_reader(
    config: JournaldSourceConfig | None = None, forced: str | None = None
) -> tuple[str, str]:
    """``("sd-journal" | "journalctl", why)`` for a source (None: the host's default)."""
    wanted = forced or os.environ.get(READER_ENV, "auto").strip() or "auto"
    if wanted not in READERS:
        wanted = "auto"
    if wanted == "journalctl":
        return "journalctl", f"forced ({READER_ENV}=journalctl or the source's reader)"
    if config is not None and config.journalctl != "journalctl" and wanted == "auto":
        return "journalctl", f"the source names its journalctl ({config.journalctl})"
    if config is not None and any(GLOB & set(u) for u in config.units):
        return "journalctl", "a unit pattern with a glob (journalctl expands it)"
    if binding() is None:
        return "journalctl", (
            f"fallback: the sd-journal binding is missing ({binding_error()}); install it with "
            "pip install 'detector[journal]' (needs libsystemd-dev and pkg-config)"
        )
    return "sd-journal", binding_version()


def _mangle_unit(unit: str) -> str:
    """``foo`` → ``foo.service``, as ``journalctl --unit`` does for a name without a suffix."""
    return unit if "." in unit.rsplit("@", 1)[-1] else f"{unit}.service"


def _to_str(value: Any) -> str:
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    if type(value) is list:
        return _to_str(value[0]) if value else ""
    if isinstance(value, tuple):  # journal.Monotonic(timestamp, bootid)
        return _to_str(value[0])
    if type(value) is timedelta:
        return str(value // timedelta(microseconds=1))
    return str(value)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for one read. A read makes a Line per entry, each
    tracked by the collector, and keeps them all until it returns: every collection it would
    trigger (one per 700 Lines, a full one as they pile up) walks Lines that hold no cycle and
    are all alive. bench_journald.py measured that at ~15 % of a read's CPU; the collector runs
    again on the next allocation after it, once over the whole batch."""
    if not gc.isenabled():  # someone else paused it: theirs to restart
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class JournalFields(Mapping[str, str]):
    """One entry's fields, decoded to ``str`` on first access (most are never read)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw

    def __getitem__(self, key: str) -> str:
        value = self._raw[key]
        if type(value) is str:
            return value
        text = self._raw[key] = _to_str(value)
        return text

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"JournalFields({dict(self)!r})"


class SdJournal:
    """One open journal (the source's namespace), filtered or not. Not thread-safe."""

    def __init__(
        self,
        config: JournaldSourceConfig,
        *,
        filtered: bool = True,
        fields: Sequence[str] | None = None,
        cursor_each: bool = False,
    ) -> None:
        """``fields``: the only fields read of each entry (:func:`journal_fields`; None: every
        field); ``cursor_each``: every Line gets its ``__CURSOR`` and ``_BOOT_ID`` (a
        ``multiline:`` source resumes between entries), not only the last of a read."""
        mod = binding()
        if mod is None:
            raise OSError(f"the sd-journal binding is missing: {binding_error()}")
        self.name = config.name
        self._r: Any = mod._Reader(mod.LOCAL_ONLY, None, None, config.namespace)
        self._r.data_threshold = 0  # whole fields, however long (the default cuts at 64 KiB)
        if filtered:
            self._add_filters(config)
        self.fd: int = self._r.fileno()  # sets up inotify now: nothing written after is missed
        self._unread = False  # positioned on an entry not handed out yet
        self._fields: tuple[str, ...] | None = None
        self._pseudo: frozenset[str] = frozenset()
        self._cursor_each = cursor_each
        if fields is not None:
            self._fields = tuple(f for f in fields if f != "MESSAGE" and f not in PSEUDO_FIELDS)
            self._pseudo = frozenset(fields) & PSEUDO_FIELDS
            self._cursor_each = cursor_each or "__CURSOR" in self._pseudo

    def _add_filters(self, config: JournaldSourceConfig) -> None:
        r = self._r
        kinds = 0
        if config.units:
            for i, unit in enumerate(_mangle_unit(u) for u in config.units):
                if i:
                    r.add_disjunction()
                r.add_match(f"_SYSTEMD_UNIT={unit}".encode())
                r.add_disjunction()
                r.add_match(f"MESSAGE_ID={COREDUMP_MESSAGE_ID}".encode())
                r.add_match(b"_UID=0")
                r.add_match(f"COREDUMP_UNIT={unit}".encode())
                r.add_disjunction()
                r.add_match(b"_PID=1")
                r.add_match(f"UNIT={unit}".encode())
                r.add_disjunction()
                r.add_match(b"_UID=0")
                r.add_match(f"OBJECT_SYSTEMD_UNIT={unit}".encode())
            kinds += 1
        groups: list[list[str]] = []
        if config.identifiers:
            groups.append([f"SYSLOG_IDENTIFIER={i}" for i in config.identifiers])
        if config.priority is not None:
            groups.append([f"PRIORITY={p}" for p in range(config.priority + 1)])
        if config.match:
            groups.append([f"{k}={v}" for k, values in config.match.items() for v in values])
        for group in groups:
            if kinds:
                r.add_conjunction()
            for m in group:
                r.add_match(m.encode())
            kinds += 1

    # ------------------------------------------------------------------ positioning

    def entry_at(self, cursor: str) -> bool:
        """Seek to ``cursor``; whether its entry exists (ValueError: not a cursor at all)."""
        self._r.seek_cursor(cursor)
        self._unread = bool(self._r._next(1))
        return self._unread and bool(self._r.test_cursor(cursor))

    def seek_after(self, cursor: str) -> None:
        """Read on after ``cursor``'s entry (or from the first matching entry after where it
        was, if the entry no longer matches the filters)."""
        if self.entry_at(cursor):
            self._unread = False

    def seek_head(self) -> None:
        self._r.seek_head()
        self._unread = False

    def seek_last(self) -> str | None:
        """Position on the newest matching entry (read: the next is after it); its cursor."""
        self._r.seek_tail()
        self._unread = False
        if self._r._previous(1):
            return str(self._r._get_cursor())
        self._r.seek_head()
        return None

    def first(self) -> dict[str, str] | None:
        """The entry the reader is positioned on (after :meth:`entry_at`), as a few fields."""
        if not self._unread:
            return None
        return {
            "__CURSOR": str(self._r._get_cursor()),
            "__REALTIME_TIMESTAMP": str(self._r._get_realtime()),
        }

    def oldest(self) -> dict[str, str] | None:
        self._r.seek_head()
        self._unread = bool(self._r._next(1))
        return self.first()

    # ------------------------------------------------------------------ reading

    def read(self, limit: int) -> list[Line]:
        """Up to ``limit`` entries after the position, as Lines (the hot path). The last one's
        fields have ``__CURSOR``, ``__REALTIME_TIMESTAMP`` and ``_BOOT_ID`` (the checkpoint)."""
        with _collector_paused():
            if self._fields is None:
                return self._read_all(limit)
            return self._read_some(limit)

    def _read_some(self, limit: int) -> list[Line]:
        """:meth:`read` of :attr:`_fields` only: one ``sd_journal_get_data`` per field (no
        dict of every field, no cursor string per entry unless needed), decoded at once."""
        r = self._r
        nxt, get, get_realtime = r._next, r._get, r._get_realtime
        names, name = self._fields or (), self.name
        each, pseudo = self._cursor_each, self._pseudo
        epoch, us = _EPOCH, _US
        out: list[Line] = []
        append = out.append
        fields: dict[str, str] = {}
        if self._unread:
            self._unread = False
        elif not nxt(1):
            return out
        while True:
            try:
                text = get("MESSAGE").decode("utf-8", "replace")
            except KeyError:
                text = ""
            realtime = get_realtime()
            fields = {"MESSAGE": text}
            for f in names:
                try:  # noqa: SIM105 - the hot loop: cheaper than contextlib.suppress
                    fields[f] = get(f).decode("utf-8", "replace")
                except KeyError:
                    pass
            if pseudo:
                self._add_pseudo(fields, realtime)
            if each:
                self._add_position(fields, realtime)
            append(Line(name, text.rstrip("\n"), epoch + realtime * us, None, fields))
            if len(out) >= limit or not nxt(1):
                break
        if not each:  # positioned on the last entry (a failed next does not move)
            self._add_position(fields, realtime)
        return out

    def _add_position(self, fields: dict[str, str], realtime: int) -> None:
        """The current entry's checkpoint fields (``journal.cursor_value`` reads them)."""
        r = self._r
        fields["__CURSOR"] = str(r._get_cursor())
        fields["__REALTIME_TIMESTAMP"] = str(realtime)
        with contextlib.suppress(KeyError):
            fields["_BOOT_ID"] = r._get("_BOOT_ID").decode("ascii", "replace")

    def _add_pseudo(self, fields: dict[str, str], realtime: int) -> None:
        """``__REALTIME_TIMESTAMP`` / ``__MONOTONIC_TIMESTAMP`` named by a rule."""
        if "__REALTIME_TIMESTAMP" in self._pseudo:
            fields["__REALTIME_TIMESTAMP"] = str(realtime)
        if "__MONOTONIC_TIMESTAMP" in self._pseudo:
            fields["__MONOTONIC_TIMESTAMP"] = _to_str(self._r._get_monotonic())

    def _read_all(self, limit: int) -> list[Line]:
        """:meth:`read` of every field of every entry (no field list given)."""
        r = self._r
        nxt, get_all, get_cursor = r._next, r._get_all, r._get_cursor
        get_realtime, get_monotonic = r._get_realtime, r._get_monotonic
        name = self.name
        out: list[Line] = []
        append = out.append
        if self._unread:
            self._unread = False
        elif not nxt(1):
            return out
        while True:
            raw = get_all()
            raw["__CURSOR"] = get_cursor()
            realtime = get_realtime()
            raw["__REALTIME_TIMESTAMP"] = realtime
            raw["__MONOTONIC_TIMESTAMP"] = get_monotonic()
            msg = raw.get("MESSAGE")
            if type(msg) is bytes:
                text = raw["MESSAGE"] = msg.decode("utf-8", "replace")
            elif msg is None:
                text = ""
            else:
                text = _to_str(msg)
                raw["MESSAGE"] = text
            at = _EPOCH + realtime * _US if type(realtime) is int else None
            append(Line(name, text.rstrip("\n"), at, None, JournalFields(raw)))
            if len(out) >= limit or not nxt(1):
                return out

    def process(self) -> None:
        """Acknowledge the inotify events on :attr:`fd` (after it was readable)."""
        self._r.process()

    def timeout(self) -> float | None:
        """Seconds to wait at most before reading again (journal files on a file system
        without inotify), None: wait for :attr:`fd`."""
        ms = int(self._r.get_timeout_ms())
        return None if ms < 0 else ms / 1000

    def close(self) -> None:
        self._r.close()


def sees_everything() -> bool:
    """Whether this process may read every journal file (root or a trusted group), as
    journalctl's "not seeing messages from other users and the system" hint checks."""
    if os.geteuid() == 0:
        return True
    import grp  # noqa: PLC0415

    mine = set(os.getgroups()) | {os.getegid()}
    for name in TRUSTED_GROUPS:
        try:
            if grp.getgrnam(name).gr_gid in mine:
                return True
        except KeyError:
            continue
    return False
