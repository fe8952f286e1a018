"""The file tailer: the ``file:`` source, first stage of the flow (files → batches → Matcher).

:class:`FileSource` follows the files named by a source's paths and globs and yields
:class:`~detector.sources.base.Batch` es of complete lines, each carrying the checkpoint to commit
with it. All file I/O happens in :meth:`FileSource.poll_once`, one *sweep* run in a worker thread
(``SWEEP_THREADS`` shared by every file source):
expand the globs, ``stat`` every path, open new files, notice rotation and truncation, read what was
appended (1 MiB blocks, bytes, split once, at most 10 000 lines per batch: the reads and the lines
are those of ``sources/lines.py``, which ``detector test`` reads files with too) and retire rotated
files once they are drained. :meth:`FileSource.batches` repeats sweeps; it wakes on inotify
events (``sources/watch.py``: one inotify instance read on the loop for every source, one watch
per directory, events of one ``COALESCE_S`` swept together) or when the hub's stat-only safety
net, every ``poll_interval`` of the injected clock, sees a file or directory changed; it sweeps
in full every ``FULL_SWEEP_EVERY`` anyway, and every ``poll_interval`` when inotify cannot cover
it (no inotify, a directory not watched, a glob in a directory name, a file draining, a
problem), so it works without inotify too. A wake-up for nothing but writes (``IN_MODIFY``,
``IN_CLOSE_WRITE``) to the paths of files it reads is a *write-only sweep*
(:meth:`FileSource._sweep_written`): those files alone are read, by their descriptors, as a full
sweep reads them (``fstat``, the fingerprint, ``pread`` from the position: a truncation is
noticed the same way, and asks for a full sweep next), with no glob, no ``stat`` of the paths, no
directory listing; a rename or a new file has events of its own, which make the next sweep a full
one; any other wake-up (another event, the safety net, ``read_now``, a timer) is a full sweep.
Choices, in the order a file meets them:

1. *Identity* is ``(st_dev, st_ino)`` plus a fingerprint ``"<n>:<hash>"`` of the first ``n`` bytes
   (``n`` grows with the file up to 256). The checkpoint is ``key="<dev>:<ino>"``, ``value={path,
   dev, ino, fp, offset}``, ``offset`` being the byte after the last complete line already emitted.
2. *Where a file starts.* On the first sweep, a file whose checkpoint key and fingerprint match
   resumes at its offset (or at 0 if it is now shorter). A file whose key matches but fingerprint
   does not (inode reused), or whose path has a checkpoint under another identity (rotated while we
   were down), is new since the checkpoint and is read from 0. Only a file with no checkpoint at
   all obeys ``start_at`` (``end`` = after the last newline of the file). Every file found after
   the first sweep is new and is read from 0; that includes a file that existed at start-up but was
   unreadable then.
3. *Rotation by rename.* The tailer keeps the old file open and reads it to its end, before the new
   file at the same path in each sweep, including lines written to it after the rename. It is
   retired (fd closed, checkpoint deleted) once something else exists at its old path (or it was
   deleted), it is at its end and it has not grown for ``drain_quiet`` (clock time). A partial last
   line of a retired file is emitted as it is. Lines and checkpoint of a rotated file keep the
   path it was rotated *from*. A checkpoint at start-up whose inode is no longer at any globbed
   path is looked for among the siblings of its path whose names start with its file name
   (``app.log.1``, ``app.log-20260101``); if found it is finished like a rotated file (from its
   offset, or from 0 if its fingerprint changed), else its checkpoint is deleted (kept only while
   its file is still at a globbed path but cannot be opened).
4. *Truncation* (copytruncate, ``> file``): the file is now shorter than what was read, or its
   fingerprint changed → it is read again from 0. Lines appended between the last sweep and the
   truncation are read from the copy, if one is found (9.); a glob that matches the copies
   leaves them alone while the file they copy is read.
5. *Lines.* A partial last line is held (at most ``max_line_bytes`` of it) until its newline
   arrives; the checkpoint stays before it. One ``\\r`` before the newline is stripped. Bytes are
   decoded with ``errors="replace"``. A line longer than ``max_line_bytes`` is cut to that many
   bytes plus `` …[truncated N bytes]`` and counted in ``Batch.truncated_lines``; the rest of it is
   skipped while streaming, so memory stays bounded whatever the line length. A cut line is also
   logged as a WARNING naming the file and the line's byte offset, at most one per source a
   minute (the lines cut meanwhile are counted and told with the next one). Lines that need
   none of this (no ``\r``, none too long: nearly always) go on as read, undecoded, in
   ``Batch.block``; a full 1 MiB read ends at its last newline, the partial line after it is read
   again, whole, with the next block.
6. *Problems* never raise out of :meth:`batches`: a missing explicit path, a broken symlink, a
   directory or other non-regular file where a log is expected, a permission error, a failing read
   each become a :class:`~detector.sources.base.SourceProblem` (key ``file:<path>``) that is
   dropped from :meth:`problems` when the path reads again. (Tests run as root, where ``chmod 000``
   does not stop reads; they use a directory and a broken symlink instead.)
7. Batches: at most 10,000 decoded lines, or one block of at most 1 MiB; new checkpoints
   (start-up position, restart at 0) and deletions go out in a batch without lines. A sweep reads
   at most 2 MiB of lines (``SWEEP_BLOCKS``: memory in flight), rotated files first, then in path
   order from the file the last sweep ran out of budget at (so every busy file gets its turn);
   the next sweep follows at once; blocks inside one over-long line do not count, as nothing of
   them is kept. Each batch is let go of as the agent's queue takes it. Cancelling
   :meth:`batches` during a sweep drops what that sweep read: cancel means shut down, and the
   next process resumes from the committed checkpoints.
8. Limits, by design: a file deleted
   while the agent is down is lost; the same first bytes rewritten after a truncation to at least
   the old size cannot be told apart from the old content. If inotify is unavailable (or a watched
   directory is deleted) the sweep every ``poll_interval`` still finds everything; a change
   inotify does not report (a write through a hard link elsewhere) is found by the safety net
   within ``poll_interval``.
9. *Rotated siblings.* At start and at every rotation (a file left its path, a new file, a
   truncation, a sibling name that was not there at the last sweep) the sweep looks at the
   rotated copies of each watched path: logrotate's names (:func:`_sibling_re`), the source's
   ``rotated:`` glob, the globbed files, minus ``exclude:``. One tracked by identity is skipped;
   one whose first bytes match a known file (a checkpoint whose file is gone, a file truncated
   just now, one of the ``DONE_KEY`` files read to their end) is read from that file's offset;
   one matching a file being read (what was read of it, or what it holds now) is a copy of it
   and is left; one never seen, modified since the last committed sweep began (``seen`` in the
   checkpoints), is read from 0; older ones are history. A ``DONE_KEY`` file is known by inode
   *and* first bytes (logrotate frees the inode of a copy it compressed, and the next copy often
   gets it), and an entry is never dropped for another file on its inode. A truncation puts what
   was read of the old content in ``DONE_KEY`` and commits it *before* the file's new position,
   so a restart in between still reads the copy from there. gzip/xz/bzip2 copies are read as
   streams (``sources/lines.py``). What cannot be read is an *event* problem (occurrence > 0): a
   checkpointed file gone with bytes known unread (``gone:``), a gap in logrotate's shifting
   numbers (``gap:``: ``.1`` newest, ``.3`` older, no ``.2``), a truncation whose copy is not
   found (``truncated:``); each stays listed for ``LOSS_NOTICE_FOR``. So a file rotated twice
   between two sweeps is no longer skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import glob
import hashlib
import itertools
import logging
import os
import re
import stat
import threading
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from detector.clock import Clock
from detector.model import FileSourceConfig
from detector.records import Checkpoint
from detector.sources.base import Batch, Line, ReadRequests, SourceProblem
from detector.sources.events import Event, EventAssembler
from detector.sources.lines import (
    BLOCK_BYTES,
    Chunk,
    LineAssembler,
    open_stream,
    read_block,
    read_stream,
    skip_stream,
    sniff,
    stream_head,
)
from detector.sources.watch import Hub, Subscription

log = logging.getLogger(__name__)

FP_BYTES = 256
FILE_BLOCKS_PER_SWEEP = 2
SWEEP_BLOCKS = 2
"""A sweep reads at most this many 1 MiB blocks of a file, and of all its files (then the next
sweep follows at once): what a sweep reads waits whole for the agent's queue, so this is memory
in flight (2 MiB beside the queue's 2), not speed: a sweep of a few files costs a few µs."""
START_TAIL_BYTES = 64 * 1024  # how far back start_at=end looks for the last newline
GLOB_CHARS = frozenset("*?[")
FULL_SWEEP_EVERY = timedelta(minutes=1)
"""Under inotify, a source sweeps in full at least this often (its stat-only safety net runs
every ``poll_interval``); without it, every ``poll_interval``."""
SWEEP_THREADS = 2
"""Threads shared by every file source for their sweeps (file I/O off the event loop)..."""
INLINE_BYTES = 64 * 1024
INLINE_SWEEP_S = 0.002
"""...except a sweep that has at most this many bytes to read, after one that took less than
this long: run on the loop itself, it saves the two hand-overs between threads that cost more
than the sweep (a service writing line by line)."""
CUT_WARNING_EVERY = timedelta(minutes=1)
"""At most one warning per source this often about lines cut at max_line_bytes (the others are
counted, and the count told with the next warning)."""

INTERNAL = "file-source:internal"  # problem key of an unexpected failure of a sweep
DONE_KEY = "rotated:done"
"""Checkpoint key of the rotated files read to their end: ``{"files": [[dev, ino, size, fp,
offset], …]}``, the newest last, at most DONE_MAX: what lets a copy or a compressed copy of one
of them be read from where it ended, across restarts."""
DONE_MAX = 256
SINCE_MARGIN_NS = 50_000_000
"""File times are coarse (a kernel tick): a sibling modified up to this long before the last
committed sweep began still counts as modified after it."""
LOSS_NOTICE_FOR = timedelta(minutes=10)
"""How long a loss event stays listed in problems() (it is reported at once: occurrence > 0)."""
_DATE = (
    r"(?:\d{8}(?:\d{2,6}|-\d{9,11})?|\d{4}-\d{2}-\d{2}(?:[-_T]?\d{2}(?:[-:]?\d{2}){0,2})?|\d{10})"
)
_COMPRESSED = r"(?:\.(?:gz|xz|bz2))?"


def _sibling_re(name: str) -> re.Pattern[str]:
    """logrotate's names for rotations of the file ``name``: ``name.1``, ``name-20260101``
    (dateext, also with hours or ``%Y-%m-%d``, or ``-%s``), ``name.1.gz``…; and with
    ``extension .log``: ``app.1.log``, ``app-20260101.log``."""
    n = re.escape(name)
    forms = [rf"{n}\.\d+", rf"{n}[-_.]{_DATE}"]
    stem, dot, ext = name.rpartition(".")
    if dot and stem:
        forms.append(rf"{re.escape(stem)}(?:\.\d+|[-_.]{_DATE}){re.escape(dot + ext)}")
    return re.compile(rf"(?:{'|'.join(forms)}){_COMPRESSED}")


def _numbered_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(name)}\.(\d+){_COMPRESSED}")


Identity = tuple[int, int]


# ---------------------------------------------------------------- per-file state


@dataclass(eq=False)
class _Tracked:
    """One open file. Mutable on purpose: it is the tailer's position in that file."""

    path: str
    fd: int
    dev: int
    ino: int
    assembler: LineAssembler
    offset: int = 0  # after the last complete line emitted
    read_pos: int = 0  # offset + assembler.pending
    fp: str = "0:"
    size: int = 0
    mtime_ns: int = 0
    changed_at: datetime | None = None
    draining_since: datetime | None = None  # set when its path no longer leads to it
    age: int = 0  # mtime_ns when adopted at start-up: finish older rotated files first
    dirty: bool = True  # its checkpoint changed without a line to carry it
    seen_end: bool = False
    comp: str | None = None  # a compressed rotation, read through ``stream``
    stream: BinaryIO | None = None
    events: EventAssembler[int] | None = None  # multiline: offset is its pending event's start

    @property
    def identity(self) -> Identity:
        return (self.dev, self.ino)

    @property
    def key(self) -> str:
        return f"{self.dev}:{self.ino}"


def _fingerprint(fd: int) -> str:
    head = os.pread(fd, FP_BYTES, 0)
    return f"{len(head)}:{hashlib.sha256(head).hexdigest()[:32]}"


def _fp_matches(fd: int, fp: str) -> bool:
    n_text, _, _ = fp.partition(":")
    try:
        n = int(n_text)
    except ValueError:
        return False
    head = os.pread(fd, n, 0) if n else b""
    return len(head) == n and f"{n}:{hashlib.sha256(head).hexdigest()[:32]}" == fp


def _fp_of(head: bytes) -> str:
    return f"{len(head)}:{hashlib.sha256(head).hexdigest()[:32]}"


def _fp_len(fp: str) -> int:
    try:
        return int(fp.partition(":")[0])
    except ValueError:
        return 0


def _head_matches(head: bytes, fp: str) -> bool:
    """Do the first bytes ``head`` of a file start like the file of fingerprint ``fp``? Never
    for an empty fingerprint (every file starts with nothing)."""
    n = _fp_len(fp)
    return 0 < n <= len(head) and _fp_of(head[:n]) == fp


def _has_magic(pattern: str) -> bool:
    return not GLOB_CHARS.isdisjoint(pattern)


def _expand(pattern: str) -> list[str]:
    if not _has_magic(pattern):
        return [pattern]
    return sorted(glob.glob(pattern))  # includes broken symlinks, which become problems


def _load_done(cp: Mapping[str, Any] | None) -> list[tuple[int, int, int, str, int]]:
    out: list[tuple[int, int, int, str, int]] = []
    files = cp.get("files") if isinstance(cp, Mapping) else None
    for item in files if isinstance(files, list) else []:
        try:
            dev, ino, size, fp, offset = item
            out.append((int(dev), int(ino), int(size), str(fp), int(offset)))
        except (TypeError, ValueError):
            continue
    return out[-DONE_MAX:]


_sweeper: concurrent.futures.ThreadPoolExecutor | None = None


def _sweep_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads every file source sweeps in (a thread per source would only add threads:
    the sweeps hold the GIL most of their time anyway)."""
    global _sweeper  # noqa: PLW0603 - one pool for the process, made on first use
    if _sweeper is None:
        _sweeper = concurrent.futures.ThreadPoolExecutor(SWEEP_THREADS, "file-sweep")
    return _sweeper


def _stem(name: str) -> str:
    """The part of a file name its rotated copies start with (``app`` of ``app.log``, for
    ``app.1.log``; the whole name if it has no extension)."""
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def _close(tf: _Tracked) -> None:
    if tf.stream is not None:
        tf.stream.close()
        tf.stream = None
    os.close(tf.fd)


# ---------------------------------------------------------------- the source


class FileSource:
    """Tails the files of one ``file:`` source. See the module docstring for the semantics."""

    def __init__(
        self,
        config: FileSourceConfig,
        checkpoints: Mapping[str, Mapping[str, Any]],
        clock: Clock,
        *,
        drain_quiet: timedelta = timedelta(seconds=5),
        watch: bool = True,
    ) -> None:
        self.opened = asyncio.Event()
        """Set after the first sweep: every file's start is fixed (``start_at: end`` counts
        from there), so a line written after it is read. The agent sends READY=1 after it."""
        self.name = config.name
        self._config = config
        self._checkpoints = {k: dict(v) for k, v in checkpoints.items()}
        self._clock = clock
        self._drain_quiet = drain_quiet
        self._use_watcher = watch
        self._files: dict[Identity, _Tracked] = {}
        self._problems: dict[str, SourceProblem] = {}
        self._problem_view: tuple[SourceProblem, ...] = ()
        self._status_view: dict[str, Any] = {"name": self.name, "files": []}
        self._first_sweep = True
        self._initial: set[Identity] = set()
        self._caught_up = False
        self._more = False
        self._watch_dirs: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._woken = False  # woken (inotify, the safety net, read_now, its timer) since cleared
        self._waiter: asyncio.Future[None] | None = None  # what _wait awaits
        self._sleeper: asyncio.Task[None] | None = None  # wakes it at _sleeper_at
        self._sleeper_at: datetime | None = None
        self._sub: Subscription | None = None
        self._full_at: datetime | None = None  # when the last full sweep began (clock time)
        self._full_wanted = False  # read_now, a failed read: the next sweep is a full one
        self._by_abspath: dict[str, _Tracked] = {}  # the files a write event may concern
        self._sweeps = {"full": 0, "written": 0}  # how many of each kind (for tests)
        self._watching = False  # every directory it needs is watched by inotify
        self._needs_poll = True  # a state only a full sweep every poll_interval follows
        self._names_by_dir: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._net_paths: dict[str, Identity | None] = {}
        self._net_dirs: dict[str, int] = {}
        self._names_of: set[str] | None = None
        self._last_sweep_s = float("inf")
        self._patterns = [*config.paths, *([config.rotated] if config.rotated else [])]
        self._explicit = [p for p in config.paths if not _has_magic(p)]
        parents = {os.path.dirname(os.path.abspath(p)) for p in self._patterns}
        self._plain_dirs = {d for d in parents if not _has_magic(d)}
        self._magic_dirs = len(self._plain_dirs) < len(parents)  # a glob in a directory name
        self._cut_warned_at: datetime | None = None
        self._cuts_unwarned = 0  # lines cut since the last warning, not warned about
        self._splits = 0  # multiline events ended at max_lines
        self._split_warned_at: datetime | None = None
        self._splits_unwarned = 0
        self._done = _load_done(self._checkpoints.pop(DONE_KEY, None))
        self._done_dirty = False
        seen = [v.get("seen") for v in checkpoints.values()]
        stamps = [t for t in seen if isinstance(t, int)]
        self._since_ns: int | None = max(stamps) - SINCE_MARGIN_NS if stamps else None
        self._sweep_ns = time.time_ns()
        self._pending_copies: list[tuple[str, int, str, int, bool]] = []
        """Truncated files whose copy is looked for: fingerprint, offset read, path, size last
        seen, and whether everything it held was read (a truncation seen live with the offset
        at the size last seen: then a copy shorter than the offset misses nothing)."""
        self._consumed: list[str] = []  # checkpoint keys resolved by fingerprint
        self._scan_wanted = True
        self._events: dict[str, SourceProblem] = {}
        self._event_at: dict[str, datetime] = {}
        self._gaps_told: set[tuple[str, frozenset[int]]] = set()
        self._sibling_names: set[str] = set()  # the rotated copies' paths at the last sweep
        self._rescan = False
        self._reads = ReadRequests()
        self._resume_at: _Tracked | None = None  # the file the next sweep reads first

    # ------------------------------------------------------------ public API

    async def batches(self) -> AsyncGenerator[Batch, None]:
        """Yield batches until cancelled. Never raises for I/O problems (see :meth:`problems`)."""
        self.subscribe()
        try:
            while True:
                self._woken = False
                asked = self._reads.begin()
                try:
                    found = await self.poll_once()
                finally:
                    self.opened.set()  # the first sweep fixed where every file starts
                found.reverse()
                while found:  # each batch let go of once handed over: memory in flight bounded
                    yield found.pop()  # returns once the agent's queue took it
                if not self._more:
                    self._reads.served(asked)  # read to the end of every file as it was then
                    await self._wait()
        finally:
            if self._sleeper is not None:
                self._sleeper.cancel()
                self._sleeper = None

    def subscribe(self) -> None:
        """Join the loop's inotify hub (done by :meth:`batches`; a test driving
        :meth:`poll_once` itself may call it to sweep the way the agent does)."""
        if self._use_watcher and self._sub is None:
            hub = Hub.get(asyncio.get_running_loop(), self._clock)
            if hub is not None:
                self._sub = hub.subscribe(
                    self._wake_up, self._wants, self._looks_changed, self._config.poll_interval
                )

    def read_now(self) -> asyncio.Future[None]:
        """A sweep now (whatever inotify has or has not told yet); done once a sweep begun after
        this call read every file to its end and its batches were handed out."""
        fut = self._reads.ask()
        self._full_wanted = True
        self._wake_up()
        return fut

    async def poll_once(self) -> list[Batch]:
        """One sweep: discover, check and read every file, or, when inotify told of nothing but
        writes to files it reads, only read those (:meth:`_written_only`). Returns the batches
        it produced."""
        written = self._written_only()
        if self._small_sweep(written):
            batches = self._sweep_locked(written)
        else:
            loop = asyncio.get_running_loop()
            batches = await loop.run_in_executor(_sweep_pool(), self._sweep_locked, written)
        if self._sub is not None:
            self._watching = self._sub.watch(self._watch_dirs)
            self._publish()
        return batches

    def problems(self) -> list[SourceProblem]:
        return list(self._problem_view)

    def status(self) -> dict[str, Any]:
        return dict(self._status_view)

    def caught_up(self) -> bool:
        """True once every file present at start-up has been read to its end once."""
        return self._caught_up

    async def aclose(self) -> None:
        """Leave the inotify hub and close every file."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            sub.close()
        await asyncio.get_running_loop().run_in_executor(_sweep_pool(), self._close_all)

    # ------------------------------------------------------------ waiting

    async def _wait(self) -> None:
        """Until inotify (or the hub's stat-only safety net) wakes it; at most poll_interval
        after the last full sweep when a full sweep must follow (no inotify, a directory not
        watched, a file draining, a problem) and FULL_SWEEP_EVERY otherwise. The timer is kept
        while its time stays the same (sweeps that only read what was written do not move it):
        a task and a timer per wake-up less."""
        inotify = self._sub is not None and self._watching and not self._needs_poll
        every = FULL_SWEEP_EVERY if inotify else self._config.poll_interval
        at = (self._full_at or self._clock.now()) + every
        quiet = self.next_deadline()  # a pending multiline event's timeout
        if quiet is not None and quiet < at:
            at = quiet
        if self._sleeper is None or self._sleeper.done() or self._sleeper_at != at:
            if self._sleeper is not None:
                self._sleeper.cancel()
            self._sleeper_at = at
            self._sleeper = asyncio.ensure_future(self._sleep_then_wake(at))
        if self._woken:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _sleep_then_wake(self, at: datetime) -> None:
        await self._clock.sleep_until(at)
        self._wake_up()

    def _wake_up(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _close_all(self) -> None:
        with self._lock:
            self._closed = True
            for tf in self._files.values():
                _close(tf)
            self._files.clear()

    # ------------------------------------------------------------ the sweep (worker thread)

    def _small_sweep(self, written: list[_Tracked] | None = None) -> bool:
        """Will the next sweep be small and quick (then it runs on the loop)? Only after a quick
        one, with nothing but a few appended bytes to read (an ``fstat`` per file)."""
        if self._first_sweep or self._last_sweep_s > INLINE_SWEEP_S or self._needs_poll:
            return False
        if self._scan_wanted or self._more:
            return False
        pending = 0
        for tf in self._files.values() if written is None else written:
            if tf.comp is not None:
                return False
            try:
                pending += os.fstat(tf.fd).st_size - tf.read_pos
            except OSError:
                return False
        return 0 <= pending <= INLINE_BYTES

    def _sweep_locked(self, written: list[_Tracked] | None = None) -> list[Batch]:
        started = time.perf_counter()
        try:
            return self._sweep_timed(written)
        finally:
            self._last_sweep_s = time.perf_counter() - started

    def _sweep_timed(self, written: list[_Tracked] | None) -> list[Batch]:
        with self._lock:
            if self._closed:
                return []
            try:
                batches = self._sweep() if written is None else self._sweep_written(written)
                self._problems.pop(INTERNAL, None)
                return batches
            except Exception as e:  # last resort: batches() must not die; this is a bug
                log.exception("%s: sweep failed", self.name)
                self._problems[INTERNAL] = SourceProblem(
                    self.name, INTERNAL, f"file source failed: {type(e).__name__}: {e}"
                )
                return []
            finally:
                self._publish()

    def _written_only(self) -> list[_Tracked] | None:
        """The files to read when the next sweep only has to read what was written to them:
        inotify woke the source for nothing but ``IN_MODIFY``/``IN_CLOSE_WRITE`` of the paths of
        files it reads (not draining, not compressed), and nothing else asks for a full sweep
        (the first, a problem, a scan, a draining file, ``read_now``, the safety net, a full
        sweep due since FULL_SWEEP_EVERY). None: a full sweep. Taking what woke it on the loop,
        before the sweep, leaves what comes later for the next one."""
        if self._sub is None:
            return None
        full, written = self._sub.take()
        asked, self._full_wanted = self._full_wanted, False
        if full or asked or not written or self._first_sweep or not self._watching:
            return None
        if self._needs_poll or self._scan_wanted or self._more or self._rescan:
            return None
        if self._full_at is None or self._clock.now() - self._full_at >= FULL_SWEEP_EVERY:
            return None
        out: list[_Tracked] = []
        for path in sorted(written):
            tf = self._by_abspath.get(path)
            if tf is None or self._files.get(tf.identity) is not tf:
                return None  # a name it does not read (a copy being written…): look at all
            out.append(tf)
        return out

    def _sweep_written(self, written: list[_Tracked]) -> list[Batch]:
        """A sweep that only reads what was appended to ``written`` (:meth:`_written_only`):
        no glob, no ``stat`` of the paths, no directory listing. It reads each file by its
        descriptor as :meth:`_sweep` does (so a truncation is noticed as there, and asks for a
        full sweep next); a rename or a new file in the meantime has events of its own, not
        taken yet, which make the next sweep a full one. The checkpoints keep the ``seen`` of
        the last full sweep: the sibling scan at a restart still looks back from there."""
        now = self._clock.now()
        self._sweeps["written"] += 1
        problems: dict[str, SourceProblem] = {}
        batches: list[Batch] = []
        budget = SWEEP_BLOCKS
        for tf in written:
            if budget <= 0:
                self._more, self._resume_at = True, tf
                break
            budget -= self._read(tf, now, batches, problems)
        if self._config.multiline is not None:
            self._flush_quiet(now, batches)
        if not self._initial:
            self._caught_up = True
        cp_only: list[Checkpoint] = []
        for tf in self._files.values():
            if tf.dirty:
                cp_only.append(self._checkpoint(tf))
                tf.dirty = False
        if self._done_dirty:
            cp_only.append(self._done_checkpoint())
        if cp_only:
            batches.append(Batch(self.name, [], cp_only))
        if problems:  # a full sweep, at once, reports it (and keeps it until it reads again)
            self._full_wanted = self._more = True
        self._warn_cuts_left(now)
        self._needs_poll = self._poll_needed()
        return batches

    def _sweep(self) -> list[Batch]:
        now = self._clock.now()
        self._full_at = now
        self._sweeps["full"] += 1
        self._sweep_ns = time.time_ns()
        dir_stamps = self._dir_stamps(self._watch_dirs | self._pattern_dirs())
        first = self._first_sweep
        self._first_sweep = False
        problems: dict[str, SourceProblem] = {}
        found: set[Identity] = set()
        cp_only: list[Checkpoint] = []
        candidates: list[tuple[str, bool]] = []
        seen_paths: set[str] = set()
        for pattern in self._config.paths:
            explicit = not _has_magic(pattern)
            for path in _expand(pattern):
                if path not in seen_paths and (explicit or not self._excluded(path)):
                    seen_paths.add(path)
                    candidates.append((path, explicit))

        order: list[_Tracked] = []
        for path, explicit in candidates:
            tf = self._probe(path, explicit, first, now, problems)
            if tf is not None and tf.identity not in found:
                found.add(tf.identity)
                order.append(tf)

        if first:
            self._adopt_rotated_checkpoints(found, now)

        for tf in self._files.values():
            if tf.identity not in found and tf.draining_since is None:
                log.info("%s: %s was rotated or deleted; reading it to its end", self.name, tf.path)
                tf.draining_since = now
                self._scan_wanted = True
        siblings = self._sibling_paths(seen_paths)
        if siblings.keys() != self._sibling_names:
            # a rotated copy appeared (or names shifted): the only trace of a copytruncate of
            # lines written after the last sweep, as the file is then as long as it was
            self._sibling_names = set(siblings)
            self._scan_wanted = True
        if self._scan_wanted:
            self._scan_wanted = False
            self._scan(now, siblings)
        deletes = [Checkpoint(self.name, k, {}, delete=True) for k in self._consumed]
        if first:
            deletes.extend(self._forget_lost_checkpoints(seen_paths, now))
        self._consumed.clear()
        # a key now tracked again (its inode found by the scan, or reused) keeps its checkpoint:
        # the deletion would otherwise be committed after that file's new positions
        tracked = {tf.key for tf in self._files.values()}
        cp_only.extend(d for d in deletes if d.key not in tracked)
        draining = sorted(
            (tf for tf in self._files.values() if tf.draining_since is not None),
            key=lambda tf: (tf.draining_since or now, tf.age, tf.path),
        )

        batches: list[Batch] = []
        if self._done_dirty:  # what is known read goes before the positions that rely on it
            batches.append(Batch(self.name, [], [self._done_checkpoint()]))
        budget = SWEEP_BLOCKS
        self._more = False
        if self._resume_at in order:  # the last sweep ran out of budget: it goes on from there
            first_at = order.index(self._resume_at)
            order = [*order[first_at:], *order[:first_at]]
        self._resume_at = None
        for tf in [*draining, *order]:
            if budget <= 0:
                self._more = True
                if tf.draining_since is None:
                    self._resume_at = tf
                break
            budget -= self._read(tf, now, batches, problems)
            if self._should_retire(tf, now):
                batches.extend(self._retire(tf, now))
        if self._config.multiline is not None:
            self._flush_quiet(now, batches)

        if first:
            self._initial = {i for i, tf in self._files.items() if not tf.seen_end}
        if not self._initial:
            self._caught_up = True
        for tf in self._files.values():
            if tf.dirty:
                cp_only.append(self._checkpoint(tf))
                tf.dirty = False
        if self._rescan:
            self._rescan, self._scan_wanted = False, True
        if self._done_dirty:
            cp_only.append(self._done_checkpoint())
        if cp_only:
            batches.append(Batch(self.name, [], cp_only))

        for key in problems.keys() - self._problems.keys():
            log.warning("%s: %s", self.name, problems[key].message)
        for key in self._problems.keys() - problems.keys():
            log.info("%s: %s is readable again", self.name, key.removeprefix("file:"))
        self._problems = problems
        self._watch_dirs = self._dirs_to_watch()
        self._net_snapshot(dir_stamps)
        self._warn_cuts_left(now)
        if not self._scan_wanted:  # a scan asked for by a read looks back from before it
            self._since_ns = self._sweep_ns - SINCE_MARGIN_NS
        for key, at in list(self._event_at.items()):
            if now - at >= LOSS_NOTICE_FOR:
                del self._event_at[key], self._events[key]
        return batches

    def _probe(
        self,
        path: str,
        explicit: bool,
        first: bool,
        now: datetime,
        problems: dict[str, SourceProblem],
    ) -> _Tracked | None:
        """stat one candidate path; return its tracked file, opening it if new."""

        def problem(message: str) -> None:
            key = f"file:{path}"
            problems[key] = SourceProblem(self.name, key, f"{path}: {message}")

        try:
            st = os.stat(path)
        except FileNotFoundError:
            if os.path.lexists(path):
                problem("broken symlink (its target does not exist)")
            elif explicit:
                problem("does not exist (waiting for it to appear)")
            return None
        except OSError as e:
            problem(f"cannot stat: {e.strerror or e}")
            return None
        if stat.S_ISDIR(st.st_mode):
            problem("is a directory, not a log file")
            return None
        if not stat.S_ISREG(st.st_mode):
            problem("is not a regular file")
            return None
        tf = self._files.get((st.st_dev, st.st_ino))
        if tf is not None:
            if tf.path != path or tf.draining_since is not None:
                tf.path = path
                tf.draining_since = None
            return tf
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            problem(f"cannot open: {e.strerror or e}")
            return None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self._files:  # replaced between stat and open
                os.close(fd)
                return self._files[(st.st_dev, st.st_ino)]
            tf = _Tracked(path, fd, st.st_dev, st.st_ino, self._line_assembler())
            start = self._start_offset(tf, st, first, explicit)
            if start is None:  # a copy of a file being read: only read if that one is truncated
                os.close(fd)
                return None
            tf.offset = tf.read_pos = start
            tf.fp = _fingerprint(fd)
            tf.changed_at = now
        except OSError as e:
            os.close(fd)
            problem(f"cannot read: {e.strerror or e}")
            return None
        self._files[tf.identity] = tf
        if not first:
            self._scan_wanted = True  # a new file: something may have been rotated meanwhile
        return tf

    def _max_line(self) -> int:
        return self._config.max_line_bytes

    def _line_assembler(self) -> LineAssembler:
        return LineAssembler(self._max_line(), starts=self._config.multiline is not None)

    def _start_offset(
        self, tf: _Tracked, st: os.stat_result, first: bool, explicit: bool
    ) -> int | None:
        """Where to start reading a file newly opened; None: not now (a copy of a file being
        read, whose lines that file gives)."""
        size = st.st_size
        cp = self._checkpoints.pop(tf.key, None)
        if cp is not None:
            offset = cp.get("offset")
            fp = str(cp.get("fp", ""))
            if isinstance(offset, int) and _fp_matches(tf.fd, fp):
                if offset <= size:
                    return offset
                log.info("%s: %s is shorter than its checkpoint; from 0", self.name, tf.path)
            if isinstance(offset, int) and offset > 0 and _fp_len(fp) > 0:
                # truncated (copytruncate) while we were down: its copy has the rest
                size_then = cp.get("size")
                known = size_then if isinstance(size_then, int) else offset
                self._pending_copies.append((fp, offset, tf.path, known, False))
                self._record_done(tf.identity, known, fp, offset)  # committed before reads
            return 0
        got = None if explicit else self._classify(tf.identity, size, os.pread(tf.fd, FP_BYTES, 0))
        if got is not None:
            kind, offset, _ = got
            return None if kind == "defer" else min(offset, size)
        if not first:
            return 0  # found after start-up: all of it is new
        if any(cp.get("path") == tf.path for cp in self._checkpoints.values()):
            return 0  # its path had another file at the checkpoint: this one is new since
        if self._since_ns is not None and st.st_mtime_ns >= self._since_ns:
            return 0  # written since the last committed position: nothing of it was read
        if self._config.start_at == "beginning":
            return 0
        start = max(0, size - START_TAIL_BYTES)
        tail = os.pread(tf.fd, size - start, start)
        nl = tail.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        return 0 if start == 0 else size

    def _adopt_rotated_checkpoints(self, found: set[Identity], now: datetime) -> None:
        """At start-up: finish the files rotated while we were down (found by inode)."""
        for key, cp in list(self._checkpoints.items()):
            tf = self._find_rotated(cp, now)
            if tf is not None:
                self._files[tf.identity] = tf
                found.add(tf.identity)
                del self._checkpoints[key]

    def _forget_lost_checkpoints(self, candidates: set[str], now: datetime) -> list[Checkpoint]:
        """At start-up, after the sibling scan: forget the checkpoints whose file is gone, and
        say so when that file had bytes we know were not read."""
        deletes: list[Checkpoint] = []
        for key, cp in list(self._checkpoints.items()):
            if cp.get("path") in candidates and self._still_at_path(cp):
                continue  # its file is still there but could not be opened; resume once it can
            deletes.append(Checkpoint(self.name, key, {}, delete=True))
            del self._checkpoints[key]
            offset, size = cp.get("offset"), cp.get("size")
            if isinstance(offset, int) and isinstance(size, int) and size > offset:
                self._loss(
                    f"gone:{cp.get('path')}",
                    f"{cp.get('path')}: a rotation of it was deleted while the agent was down "
                    f"before it was read to its end: at least {size - offset} bytes after byte "
                    f"{offset} of it were never read",
                    now,
                )
            else:
                log.info(
                    "%s: %s: its rotated file is gone (it had been read to the end last seen)",
                    self.name,
                    cp.get("path"),
                )
        return deletes

    @staticmethod
    def _still_at_path(cp: Mapping[str, Any]) -> bool:
        try:
            st = os.stat(str(cp["path"]))
            return (st.st_dev, st.st_ino) == (int(cp["dev"]), int(cp["ino"]))
        except (KeyError, ValueError, TypeError, OSError):
            return False

    def _find_rotated(self, cp: Mapping[str, Any], now: datetime) -> _Tracked | None:
        try:
            path = Path(str(cp["path"]))
            dev, ino, offset = int(cp["dev"]), int(cp["ino"]), int(cp["offset"])
            fp = str(cp["fp"])
            siblings = sorted(path.parent.iterdir())
        except (KeyError, ValueError, TypeError, OSError):
            return None
        for sib in siblings:
            if not sib.name.startswith(path.name) or sib == path:
                continue
            try:
                st = sib.stat()
                if (st.st_dev, st.st_ino) != (dev, ino) or not stat.S_ISREG(st.st_mode):
                    continue
                if (dev, ino) in self._files:
                    return None
                fd = os.open(sib, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (dev, ino):  # renamed away since the stat
                    os.close(fd)
                    continue
                comp = sniff(fd)
                head = stream_head(fd, comp, FP_BYTES)
                same = _head_matches(head, fp) and (comp is not None or offset <= st.st_size)
            except OSError:
                os.close(fd)
                return None
            if not same:  # its inode reused (a compressed copy…): the sibling scan decides
                os.close(fd)
                return None
            log.info("%s: finishing %s (rotated from %s)", self.name, sib, path)
            # It keeps its old path, in its lines and its checkpoint, so that a later restart
            # looks for it again among the siblings of that path.
            tf = _Tracked(str(path), fd, dev, ino, self._line_assembler())
            tf.offset = tf.read_pos = offset
            tf.fp, tf.changed_at, tf.draining_since = fp, now, now
            tf.age = st.st_mtime_ns
            tf.dirty = False
            tf.comp = comp
            return tf
        return None

    # ------------------------------------------------------------ rotated siblings

    def _excluded(self, path: str) -> bool:
        name = os.path.basename(path)
        return any(
            fnmatch.fnmatchcase(path, g) or ("/" not in g and fnmatch.fnmatchcase(name, g))
            for g in self._config.exclude
        )

    def _classify(
        self, ident: Identity, size: int, head: bytes, comp: str | None = None
    ) -> tuple[str, int, str] | None:
        """What is known of a file not tracked by its identity, by its first bytes: ``("known",
        offset, path)``: a copy of lines read up to ``offset`` (of the file at ``path``), to be
        read from there; ``("defer", 0, path)``: a copy of a file being read now; None: unknown.
        The longest matching fingerprint wins."""
        best: tuple[int, str, int, str, Any] | None = None  # (fp length, kind, offset, path, ref)

        def offer(fp: str, kind: str, offset: int, path: str, ref: Any) -> None:
            nonlocal best
            n = _fp_len(fp)
            if _head_matches(head, fp) and (best is None or n > best[0]):
                best = (n, kind, offset, path, ref)

        for i, (fp, offset, path, _, read_all) in enumerate(self._pending_copies):
            # also when shorter than what was read of its file, if that was all it held:
            # logrotate's copytruncate copies, then truncates, and lines written in between
            # (read from the file) miss from the copy, which then has nothing unread
            # (``_open_sibling`` records it as done). Not after a truncation while the agent was
            # down: lines written after the last read may be gone, and that is said
            if comp is not None or size >= offset or read_all:
                offer(fp, "copy", offset, path, i)
        for key, cp in self._checkpoints.items():
            at = cp.get("offset")
            if isinstance(at, int) and not self._still_at_path(cp):
                offer(str(cp.get("fp", "")), "cp", at, str(cp.get("path")), key)
        for tf in self._files.values():
            if tf.identity != ident and tf.comp is None:
                offer(tf.fp, "defer", 0, tf.path, None)
                try:  # what it holds now, maybe more than when last read: a copy made since
                    now_head = os.pread(tf.fd, min(FP_BYTES, len(head)), 0)
                except OSError:
                    continue
                offer(_fp_of(now_head), "fresh", 0, tf.path, None)
        for dev, ino, _, fp, offset in self._done:
            if (dev, ino) != ident:
                offer(fp, "known", offset, "", None)
        if best is None:
            return None
        _, kind, offset, path, ref = best
        if kind == "fresh":  # a copy of bytes not read yet: once they are, look again (a
            self._rescan, kind = True, "defer"  # truncation right after the copy is unseen)
        elif kind == "copy":
            del self._pending_copies[ref]
            kind = "known"
        elif kind == "cp":
            del self._checkpoints[ref]
            self._consumed.append(ref)
            kind = "known"
        return kind, offset, path

    def _sibling_paths(self, seen_paths: set[str]) -> dict[str, str]:
        """Rotated copies of the watched files: path → the watched path their lines belong to."""
        watched = set(seen_paths) | {tf.path for tf in self._files.values()}
        watched |= {p for p in self._config.paths if not _has_magic(p)}
        listings: dict[str, list[str]] = {}
        out: dict[str, str] = {}
        for path in sorted(watched):
            parent, name = os.path.split(path)
            if parent not in listings:
                try:
                    listings[parent] = sorted(os.listdir(parent or "."))
                except OSError:
                    listings[parent] = []
            pattern = _sibling_re(name)
            for sib in listings[parent]:
                if pattern.fullmatch(sib):
                    out.setdefault(os.path.join(parent, sib), path)
        if self._config.rotated:
            for sib in _expand(self._config.rotated):
                out.setdefault(sib, sib)
        for path in seen_paths:  # globbed files: copies of one another are found here too
            out.setdefault(path, path)
        return {p: w for p, w in out.items() if not self._excluded(p)}

    def _scan(self, now: datetime, siblings: Mapping[str, str]) -> None:
        """At start and at every rotation: open the rotated copies whose lines were not read
        (module docstring, 9.), and tell what cannot be read."""
        since = self._since_ns
        for path, owner in siblings.items():
            try:
                st = os.stat(path)
            except OSError:
                continue
            ident = (st.st_dev, st.st_ino)
            if not stat.S_ISREG(st.st_mode) or ident in self._files or not st.st_size:
                continue
            self._open_sibling(path, owner, st, since=since, now=now)
        self._check_gaps(siblings, since, now)
        for _, offset, path, size, _ in self._pending_copies:
            unread = size - offset
            self._loss(
                f"truncated:{path}",
                f"{path} was truncated (or replaced by a file on the same inode) and no copy of "
                f"it (a rotated file starting with the same bytes) "
                f"was found: the lines written after byte "
                f"{offset} before the truncation were not read"
                + (f" (at least {unread} bytes)" if unread > 0 else ""),
                now,
            )
        self._pending_copies.clear()

    def _open_sibling(
        self,
        path: str,
        owner: str,
        st: os.stat_result,
        *,
        since: int | None,
        now: datetime,
    ) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            st = os.fstat(fd)  # what was opened: the path may lead to another file by now
            comp = sniff(fd)
            head = stream_head(fd, comp, FP_BYTES)
        except OSError:
            os.close(fd)
            return
        ident = (st.st_dev, st.st_ino)
        if ident in self._files or not stat.S_ISREG(st.st_mode) or not st.st_size:
            os.close(fd)
            return
        done = self._done_of(ident, head)
        if done is not None and done[0] == st.st_size:
            os.close(fd)
            return  # read to its end already
        got = self._classify(ident, st.st_size, head, comp) if head else None
        if got is not None and got[0] == "defer":
            os.close(fd)
            return
        if got is not None:
            offset, owner = got[1], got[2] or owner
        elif done is not None:
            offset = done[2]  # read to its end, and it grew since
        elif since is not None and st.st_mtime_ns >= since:
            offset = 0  # written since the last committed position, and never read
        else:
            os.close(fd)
            return
        if comp is None and offset >= st.st_size:
            os.close(fd)
            self._record_done(ident, st.st_size, _fp_of(head), offset)
            return
        what = "from its start" if offset == 0 else f"from byte {offset}"
        log.info("%s: reading rotated file %s %s (lines of %s)", self.name, path, what, owner)
        tf = _Tracked(owner, fd, st.st_dev, st.st_ino, self._line_assembler())
        tf.offset = tf.read_pos = offset
        tf.fp, tf.comp = _fp_of(head), comp
        tf.changed_at = tf.draining_since = now
        tf.age = st.st_mtime_ns
        self._files[ident] = tf

    def _check_gaps(self, siblings: Mapping[str, str], since: int | None, now: datetime) -> None:
        """A gap in rotation numbers (``app.log.1``, ``.3``: no ``.2``) newer than the last
        committed position: a rotated file deleted before it was read."""
        if since is None:
            return
        by_owner: dict[str, dict[int, int]] = {}
        for path, owner in siblings.items():
            m = _numbered_re(os.path.basename(owner)).fullmatch(os.path.basename(path))
            if m is None or os.path.dirname(path) != os.path.dirname(owner):
                continue
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            by_owner.setdefault(owner, {})[int(m.group(1))] = mtime
        for owner, numbers in by_owner.items():
            if 1 not in numbers or max(numbers) > 1000:
                continue
            by_number = [numbers[n] for n in sorted(numbers)]
            if any(newer <= older for newer, older in itertools.pairwise(by_number)):
                continue  # not logrotate's shifting numbers (there .1 is the newest, and so on)
            missing = frozenset(set(range(1, max(numbers))) - numbers.keys())
            if not missing or (owner, missing) in self._gaps_told:
                continue
            if not any(mtime >= since for n, mtime in numbers.items() if n > min(missing)):
                continue  # an old gap, there before the last committed position
            self._gaps_told.add((owner, missing))
            names = ", ".join(f"{owner}.{n}" for n in sorted(missing))
            self._loss(
                f"gap:{owner}",
                f"{owner}: rotated files are missing ({names}): deleted before they were read; "
                "their lines were not read",
                now,
            )

    def _loss(self, key: str, message: str, now: datetime) -> None:
        """An event: lines that cannot be read. Reported at once (occurrence bumped)."""
        log.warning("%s: %s", self.name, message)
        old = self._events.get(key)
        seq = old.occurrence if old is not None else 0
        self._events[key] = SourceProblem(self.name, key, message, occurrence=seq + 1)
        self._event_at[key] = now

    def _done_of(self, ident: Identity, head: bytes) -> tuple[int, str, int] | None:
        """(size, fp, offset) of the file ``ident`` if it was read to its end: by its inode
        *and* its first bytes (logrotate frees the inode of a copy it compressed and the next
        copy often gets it: that is another file). The longest fingerprint wins."""
        best: tuple[int, str, int] | None = None
        for dev, ino, size, fp, offset in self._done:
            longer = best is None or _fp_len(fp) >= _fp_len(best[1])
            if (dev, ino) == ident and _head_matches(head, fp) and longer:
                best = (size, fp, offset)
        return best

    def _record_done(self, ident: Identity, size: int, fp: str, offset: int) -> None:
        """Remember that the file ``ident`` starting like ``fp`` was read up to ``offset``.
        An older entry of the same inode with another fingerprint is kept: it is the only
        record of another file's content (the inode was reused), which a copy of that file
        (its compressed copy) is still matched against."""
        if _fp_len(fp) == 0:
            return
        self._done = [e for e in self._done if (e[0], e[1], e[3]) != (*ident, fp)]
        self._done.append((ident[0], ident[1], size, fp, offset))
        del self._done[:-DONE_MAX]
        self._done_dirty = True

    def _done_checkpoint(self) -> Checkpoint:
        self._done_dirty = False
        value = {"files": [list(e) for e in self._done], "seen": self._sweep_ns}
        return Checkpoint(self.name, DONE_KEY, value)

    def _read(
        self,
        tf: _Tracked,
        now: datetime,
        batches: list[Batch],
        problems: dict[str, SourceProblem],
    ) -> int:
        """Read what was appended to one file; return the number of blocks that gave lines.

        Blocks inside one over-long line yield nothing to hold in memory, so they do not count
        against the sweep's budget: such a line is streamed through in one go.
        """
        if tf.comp is not None:
            return self._read_stream(tf, now, batches, problems)
        blocks = 0
        try:
            st = os.fstat(tf.fd)
            if (st.st_size, st.st_mtime_ns) != (tf.size, tf.mtime_ns):
                tf.changed_at = now
                if st.st_size < tf.read_pos or not _fp_matches(tf.fd, tf.fp):
                    log.info("%s: %s was truncated; reading it from the start", self.name, tf.path)
                    if tf.offset > 0 and _fp_len(tf.fp) > 0:  # copytruncate: find the copy
                        read_all = tf.size <= tf.offset  # nothing seen there was left unread
                        self._pending_copies.append((tf.fp, tf.offset, tf.path, tf.size, read_all))
                        self._scan_wanted = self._more = True
                        # what was read of the old content outlives this position: committed
                        # before it, so that a restart still reads the copy from there
                        self._record_done(tf.identity, tf.size, tf.fp, tf.offset)
                        batches.append(Batch(self.name, [], [self._done_checkpoint()]))
                    tf.offset = tf.read_pos = 0
                    tf.assembler.reset()
                    if tf.events is not None:  # read again from the copy, from tf.offset
                        tf.events.reset()
                    tf.fp = _fingerprint(tf.fd)
                    tf.dirty = True
                elif st.st_size == tf.read_pos and tf.mtime_ns:
                    # changed, not longer: written then truncated between two sweeps before
                    # we read a byte of it (copytruncate): its copy is a sibling never seen
                    self._scan_wanted = self._more = True
                tf.size, tf.mtime_ns = st.st_size, st.st_mtime_ns
                if int(tf.fp.partition(":")[0]) < min(FP_BYTES, st.st_size):
                    tf.fp = _fingerprint(tf.fd)
                    tf.dirty = True
            while tf.read_pos < tf.size and blocks < FILE_BLOCKS_PER_SWEEP:
                base = tf.read_pos
                n, chunks = read_block(
                    tf.fd, base, tf.assembler, BLOCK_BYTES, expect=tf.size - base
                )
                if not n:
                    break
                tf.read_pos += n
                blocks += bool(chunks)
                self._emit(tf, base, chunks, now, batches)
                tf.size = max(tf.size, tf.read_pos)
        except OSError as e:
            key = f"file:{tf.path}"
            problems[key] = SourceProblem(self.name, key, f"{tf.path}: cannot read: {e}")
            return blocks
        if tf.read_pos >= tf.size:
            tf.seen_end = True
            self._initial.discard(tf.identity)
        else:
            self._more = True
        return blocks

    def _emit(
        self, tf: _Tracked, base: int, chunks: list[Chunk], now: datetime, batches: list[Batch]
    ) -> None:
        """One batch per chunk read at ``base``, each carrying the checkpoint after it."""
        if self._config.multiline is not None:
            self._emit_events(tf, base, chunks, now, batches)
            return
        for chunk in chunks:
            tf.offset = base + chunk.end
            lines = [Line(source=self.name, text=t, path=tf.path) for t in chunk.texts]
            batch = Batch(self.name, lines, [self._checkpoint(tf)], chunk.truncated)
            if chunk.block is not None:
                batch.block, batch.block_path = chunk.block, tf.path
            batches.append(batch)
            tf.dirty = False
            if chunk.cut_at:
                self._warn_cut(tf, base, chunk, now)

    def _events_of(self, tf: _Tracked) -> EventAssembler[int]:
        if tf.events is None:
            assert self._config.multiline is not None
            tf.events = EventAssembler(self._config.multiline)
        return tf.events

    def _emit_events(
        self, tf: _Tracked, base: int, chunks: list[Chunk], now: datetime, batches: list[Batch]
    ) -> None:
        """``multiline:``: the lines of ``chunks`` (read at ``base``) into events; one batch of
        the events they complete, carrying the checkpoint before the pending event."""
        events = self._events_of(tf)
        if not chunks:
            if events.pending_lines:  # bytes of a line still being written: not quiet
                events.touched = now
            return
        done: list[Event[int]] = []
        cut = 0
        for chunk in chunks:
            texts = chunk.texts
            if chunk.block is not None:
                texts = chunk.block.decode("utf-8", "replace").split("\n")[:-1]
            starts = (base + at for at in chunk.starts)
            done.extend(events.push_all(zip(texts, starts, strict=True)))
            cut += chunk.truncated
            if chunk.cut_at:
                self._warn_cut(tf, base, chunk, now)
        if events.pending_lines:
            events.touched = now
        self._batch_events(tf, done, end=base + chunks[-1].end, cut=cut, now=now, batches=batches)

    def _batch_events(
        self,
        tf: _Tracked,
        done: list[Event[int]],
        *,
        end: int,
        cut: int,
        now: datetime,
        batches: list[Batch],
    ) -> None:
        """A batch of complete events; its checkpoint: the pending event's start, else ``end``
        (after the last whole line read)."""
        assert tf.events is not None
        resume = tf.events.resume()
        tf.offset = end if resume is None else resume
        lines = [Line(source=self.name, text=e.text, path=tf.path) for e in done]
        batches.append(Batch(self.name, lines, [self._checkpoint(tf)], cut))
        tf.dirty = False
        splits = [e for e in done if e.split]
        if splits:
            self._warn_split(tf, len(splits), now)

    def _warn_split(self, tf: _Tracked, n: int, now: datetime) -> None:
        """Events ended at ``max_lines``: a WARNING at most once per CUT_WARNING_EVERY."""
        self._splits += n
        at = self._split_warned_at
        if at is not None and now - at < CUT_WARNING_EVERY:
            self._splits_unwarned += n
            return
        assert self._config.multiline is not None
        more = self._splits_unwarned + n - 1
        log.warning(
            "%s: %s: an event reached multiline max_lines (%d): it was emitted there and the "
            "lines after it begin a new event%s",
            self.name,
            tf.path,
            self._config.multiline.max_lines,
            f" ({more} more such events since the last warning)" if more else "",
        )
        self._split_warned_at, self._splits_unwarned = now, 0

    def _flush_quiet(self, now: datetime, batches: list[Batch]) -> None:
        """``multiline:``: emit the pending events that got no line for their ``timeout``."""
        for tf in self._files.values():
            events = tf.events
            if events is None or not events.due(now):
                continue
            last = events.flush()
            done = [last] if last is not None else []
            end = tf.read_pos - tf.assembler.pending
            self._batch_events(tf, done, end=end, cut=0, now=now, batches=batches)

    def next_deadline(self) -> datetime | None:
        """``multiline:``: when the first pending event is complete for being quiet."""
        found = [tf.events.deadline() for tf in self._files.values() if tf.events is not None]
        return min((at for at in found if at is not None), default=None)

    def _read_stream(
        self,
        tf: _Tracked,
        now: datetime,
        batches: list[Batch],
        problems: dict[str, SourceProblem],
    ) -> int:
        """Read a compressed rotation (it does not change: read once, to its end)."""
        blocks = 0
        try:
            if tf.stream is None:
                tf.stream = open_stream(tf.fd, tf.comp or "gz")
                skipped = skip_stream(tf.stream, tf.read_pos, BLOCK_BYTES)
                if skipped < tf.read_pos:
                    tf.seen_end = True  # it ends before where we were: nothing more in it
                    tf.size = tf.read_pos
            while not tf.seen_end and blocks < FILE_BLOCKS_PER_SWEEP:
                base = tf.read_pos
                n, chunks = read_stream(tf.stream, tf.assembler, BLOCK_BYTES)
                if not n:
                    tf.seen_end = True
                    break
                tf.read_pos += n
                tf.size = tf.read_pos
                blocks += bool(chunks)
                self._emit(tf, base, chunks, now, batches)
        except EOFError:  # still being written (compressed right now): again from here later
            if tf.stream is not None:
                tf.stream.close()
                tf.stream = None
            self._more = blocks > 0
            return blocks
        except (OSError, ValueError) as e:
            key = f"file:{tf.path}"
            problems[key] = SourceProblem(self.name, key, f"{tf.path}: cannot decompress: {e}")
            return blocks
        if tf.seen_end:
            self._initial.discard(tf.identity)
        else:
            self._more = True
        return blocks

    def _should_retire(self, tf: _Tracked, now: datetime) -> bool:
        if tf.comp is not None:
            return tf.seen_end
        if tf.draining_since is None or tf.read_pos < tf.size:
            return False
        quiet_since = max(tf.draining_since, tf.changed_at or tf.draining_since)
        if now - quiet_since < self._drain_quiet:
            return False
        try:
            gone = os.fstat(tf.fd).st_nlink == 0
        except OSError:
            gone = True
        return gone or os.path.lexists(tf.path)

    def _retire(self, tf: _Tracked, now: datetime) -> list[Batch]:
        log.info("%s: finished %s", self.name, tf.path)
        last = tf.assembler.flush()
        lines: list[Line] = []
        if last is not None:
            lines = [Line(source=self.name, text=t, path=tf.path) for t in last.texts]
            if last.cut_at:
                self._warn_cut(tf, tf.read_pos, last, now)
        if self._config.multiline is not None:  # its last event is complete
            events = self._events_of(tf)
            starts = [tf.read_pos + at for at in last.starts] if last is not None else []
            got = events.push_all(zip([ln.text for ln in lines], starts, strict=True))
            final = events.flush()
            lines = [Line(source=self.name, text=e.text, path=tf.path) for e in got]
            if final is not None:
                lines.append(Line(source=self.name, text=final.text, path=tf.path))
        del self._files[tf.identity]
        self._initial.discard(tf.identity)
        try:
            st = os.fstat(tf.fd)
            if st.st_nlink > 0 and self._findable(tf):
                self._record_done(tf.identity, st.st_size, tf.fp, tf.read_pos)
            elif st.st_nlink == 0 and tf.comp is None:
                self._record_compressed(tf)
        except OSError:
            pass
        _close(tf)
        cps = [Checkpoint(self.name, tf.key, {}, delete=True)]
        if self._done_dirty:
            cps.append(self._done_checkpoint())
        return [Batch(self.name, lines, cps, last.truncated if last is not None else 0)]

    def _record_compressed(self, tf: _Tracked) -> None:
        """A deleted file read to its end: if it was deleted because it was compressed
        (logrotate's ``compress``), remember the compressed copy as read to that end."""
        for path in self._sibling_paths({tf.path}):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                comp = sniff(fd)
                if comp is not None and _head_matches(stream_head(fd, comp, FP_BYTES), tf.fp):
                    self._record_done((st.st_dev, st.st_ino), st.st_size, tf.fp, tf.read_pos)
            except OSError:
                pass
            finally:
                os.close(fd)

    def _findable(self, tf: _Tracked) -> bool:
        """Is the file still where a later sibling scan would look (then it is remembered as
        read to its end)?"""
        for path in self._sibling_paths({tf.path}):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == tf.identity:
                return True
        return False

    def _warn_cut(self, tf: _Tracked, base: int, chunk: Chunk, now: datetime) -> None:
        """Say that lines were cut at max_line_bytes: at most one warning per
        CUT_WARNING_EVERY, the others counted and told with the next one."""
        for start in chunk.cut_at:
            at = self._cut_warned_at
            if at is not None and now - at < CUT_WARNING_EVERY:
                self._cuts_unwarned += 1
                continue
            more = self._cuts_unwarned
            log.warning(
                "%s: %s: the line at byte %d is longer than max_line_bytes (%d): only its first "
                "%d bytes are matched%s",
                self.name,
                tf.path,
                base + start,
                self._max_line(),
                self._max_line(),
                f" ({more} more lines were cut since the last warning)" if more else "",
            )
            self._cut_warned_at, self._cuts_unwarned = now, 0

    def _warn_cuts_left(self, now: datetime) -> None:
        """Tell the count of cut lines not warned about once their minute is over."""
        at = self._cut_warned_at
        if self._cuts_unwarned and at is not None and now - at >= CUT_WARNING_EVERY:
            log.warning(
                "%s: %d more lines were longer than max_line_bytes (%d) and cut",
                self.name,
                self._cuts_unwarned,
                self._max_line(),
            )
            self._cut_warned_at, self._cuts_unwarned = now, 0

    def _checkpoint(self, tf: _Tracked) -> Checkpoint:
        value: dict[str, Any] = {
            "path": tf.path,
            "dev": tf.dev,
            "ino": tf.ino,
            "fp": tf.fp,
            "offset": tf.offset,
            "size": tf.size,
            "seen": self._sweep_ns,
        }
        if tf.comp is not None:
            value["comp"] = tf.comp
        return Checkpoint(self.name, tf.key, value)

    def _pattern_dirs(self) -> set[str]:
        """The directories named by the source's paths and ``rotated:`` glob (without a glob
        character in them)."""
        return self._plain_dirs

    @staticmethod
    def _dir_stamps(dirs: set[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in dirs:
            try:
                out[d] = os.stat(d).st_mtime_ns
            except OSError:
                out[d] = -1  # not there: any directory there later differs
        return out

    def _net_snapshot(self, dir_stamps: dict[str, int]) -> None:
        """What the safety net compares with (:meth:`_looks_changed`), and which names an
        inotify event must carry to wake this source (:meth:`_wants`). Directory times were
        taken before the sweep looked: a change during the sweep still differs."""
        self._net_dirs = {d: dir_stamps.get(d, -1) for d in self._watch_dirs | self._pattern_dirs()}
        by_path = {tf.path: tf.identity for tf in self._files.values()}
        self._net_paths = {p: by_path.get(p) for p in self._explicit}
        tracked = {tf.path for tf in self._files.values()}
        self._by_abspath = {
            os.path.abspath(tf.path): tf
            for tf in self._files.values()
            if tf.draining_since is None and tf.comp is None
        }
        if tracked != self._names_of:  # the names its events carry change with its files
            self._names_of = tracked
            names: dict[str, tuple[set[str], set[str]]] = {}
            for path in [*self._patterns, *tracked]:
                d, name = os.path.split(os.path.abspath(path))
                prefixes, globs = names.setdefault(d, (set(), set()))
                if _has_magic(name):
                    globs.add(name)
                else:
                    prefixes.add(_stem(name))
            self._names_by_dir = {d: (tuple(p), tuple(g)) for d, (p, g) in names.items()}
        self._needs_poll = self._poll_needed()

    def _poll_needed(self) -> bool:
        """A state only a full sweep every poll_interval follows (not inotify's events)."""
        return bool(
            self._magic_dirs
            or any(v < 0 for v in self._net_dirs.values())
            or any(tf.draining_since is not None for tf in self._files.values())
            or self._problems
            or self._events
            or self._cuts_unwarned
            or self._scan_wanted
            or self._rescan
        )

    def _wants(self, directory: str, name: str) -> bool:
        """Does an inotify event on ``name`` in ``directory`` concern this source? (Run on the
        loop for every event: a name test. Unsure means yes.)"""
        spec = self._names_by_dir.get(directory)
        if spec is None or not name:
            return True
        prefixes, globs = spec
        return name.startswith(prefixes) or any(fnmatch.fnmatchcase(name, g) for g in globs)

    def _looks_changed(self) -> bool:
        """The safety net, on the loop every ``poll_interval``: a few ``stat`` calls; True if a
        file or directory is not as the last sweep left it (then a sweep follows)."""
        if self._more:
            return True
        if self._needs_poll:
            return False  # it sweeps in full every poll_interval itself
        for tf in list(self._files.values()):
            if tf.comp is not None:
                continue
            st = os.fstat(tf.fd)  # OSError (closed by a sweep meanwhile): the hub says changed
            if st.st_size != tf.read_pos or st.st_mtime_ns != tf.mtime_ns:
                return True
        for path, ident in list(self._net_paths.items()):
            try:
                st = os.stat(path)
                now: Identity | None = (st.st_dev, st.st_ino)
            except OSError:
                now = None
            if now != ident:
                return True
        for d, stamp in list(self._net_dirs.items()):
            try:
                if os.stat(d).st_mtime_ns != stamp:
                    return True
            except OSError:
                return True
        return False

    def _dirs_to_watch(self) -> set[str]:
        dirs = {os.path.dirname(os.path.abspath(tf.path)) for tf in self._files.values()}
        for pattern in self._config.paths:
            parent = os.path.dirname(os.path.abspath(pattern))
            if not _has_magic(parent):
                dirs.add(parent)
        return {d for d in dirs if os.path.isdir(d)}

    def _publish(self) -> None:
        """Snapshots for problems()/status(), read from the event loop while sweeps run."""
        self._problem_view = (*self._problems.values(), *self._events.values())
        self._status_view = {
            "name": self.name,
            "watcher": "inotify" if self._sub is not None and self._watching else "polling",
            "caught_up": self._caught_up,
            "problems": [p.message for p in self._problem_view],
            **({"events_split": self._splits} if self._config.multiline is not None else {}),
            "files": [
                {
                    "path": tf.path,
                    "key": tf.key,
                    "offset": tf.offset,
                    "size": tf.size,
                    "state": "draining" if tf.draining_since is not None else "active",
                }
                for tf in self._files.values()
            ],
        }
