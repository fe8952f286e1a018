"""The file tailer: the ``file:`` source, first stage of the flow (files → batches → Matcher).

:class:`FileSource` follows the files named by a source's paths and globs and yields
:class:`~detector.sources.base.Batch` es of complete lines, each carrying the checkpoint to commit
with it. All file I/O happens in :meth:`FileSource.poll_once`, one *sweep* run in a worker thread:
expand the globs, ``stat`` every path, open new files, notice rotation and truncation, read what was
appended (1 MiB blocks, bytes, split once, at most 10 000 lines per batch: the reads and the lines
are those of ``sources/lines.py``, which ``detector test`` reads files with too) and retire rotated
files once they are drained. :meth:`FileSource.batches` repeats sweeps; it wakes early on inotify
events (``sources/watch.py``: a watchdog Observer on the parent directories, whose thread only
calls ``loop.call_soon_threadsafe(event.set)``) and otherwise every ``poll_interval`` of the
injected clock, so it works without inotify too. Choices, in the order a file meets them:

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
   truncation cannot be read by anyone (the copy is another file); globs should not match the
   copies, which would otherwise be read as new files.
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
   at most 4 MiB of lines per file and 16 MiB in total (rotated files first, then in path order),
   then the next sweep follows at once; blocks inside one over-long line do not count, as nothing
   of them is kept. Cancelling :meth:`batches` during a sweep drops what that sweep read: cancel
   means shut down, and the next process resumes from the committed checkpoints.
8. Limits, by design: a file that is rotated away and replaced *twice* between two sweeps (under
   ``poll_interval``, and unseen by inotify) has its middle generation skipped; a file deleted
   while the agent is down is lost; the same first bytes rewritten after a truncation to at least
   the old size cannot be told apart from the old content. If inotify is unavailable (or a watched
   directory is deleted) the sweep every ``poll_interval`` still finds everything.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import logging
import os
import stat
import threading
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from detector.clock import Clock
from detector.model import FileSourceConfig
from detector.records import Checkpoint
from detector.sources.base import Batch, Line, SourceProblem
from detector.sources.lines import BLOCK_BYTES, Chunk, LineAssembler, read_block
from detector.sources.watch import Watcher

log = logging.getLogger(__name__)

FP_BYTES = 256
FILE_BLOCKS_PER_SWEEP = 4
SWEEP_BLOCKS = 16
START_TAIL_BYTES = 64 * 1024  # how far back start_at=end looks for the last newline
GLOB_CHARS = frozenset("*?[")
CUT_WARNING_EVERY = timedelta(minutes=1)
"""At most one warning per source this often about lines cut at max_line_bytes (the others are
counted, and the count told with the next warning)."""

INTERNAL = "file-source:internal"  # problem key of an unexpected failure of a sweep

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


def _has_magic(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


def _expand(pattern: str) -> list[str]:
    if not _has_magic(pattern):
        return [pattern]
    return sorted(glob.glob(pattern))  # includes broken symlinks, which become problems


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
        self._wake: asyncio.Event | None = None
        self._watcher: Watcher | None = None
        self._cut_warned_at: datetime | None = None
        self._cuts_unwarned = 0  # lines cut since the last warning, not warned about

    # ------------------------------------------------------------ public API

    async def batches(self) -> AsyncGenerator[Batch, None]:
        """Yield batches until cancelled. Never raises for I/O problems (see :meth:`problems`)."""
        self._wake = asyncio.Event()
        if self._use_watcher and self._watcher is None:
            self._watcher = Watcher.start(asyncio.get_running_loop(), self._wake)
        while True:
            self._wake.clear()
            try:
                found = await self.poll_once()
            finally:
                self.opened.set()  # the first sweep fixed where every file starts
            for batch in found:
                yield batch
            if not self._more:
                await self._wait()

    async def poll_once(self) -> list[Batch]:
        """One sweep: discover, check and read every file. Returns the batches it produced."""
        batches = await asyncio.to_thread(self._sweep_locked)
        if self._watcher is not None:
            self._watcher.watch(self._watch_dirs)
        return batches

    def problems(self) -> list[SourceProblem]:
        return list(self._problem_view)

    def status(self) -> dict[str, Any]:
        return dict(self._status_view)

    def caught_up(self) -> bool:
        """True once every file present at start-up has been read to its end once."""
        return self._caught_up

    async def aclose(self) -> None:
        """Stop the watcher thread and close every file."""
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            await asyncio.to_thread(watcher.stop)
        await asyncio.to_thread(self._close_all)

    # ------------------------------------------------------------ waiting

    async def _wait(self) -> None:
        assert self._wake is not None
        at = self._clock.now() + self._config.poll_interval
        sleeper = asyncio.ensure_future(self._clock.sleep_until(at))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()

    def _close_all(self) -> None:
        with self._lock:
            self._closed = True
            for tf in self._files.values():
                os.close(tf.fd)
            self._files.clear()

    # ------------------------------------------------------------ the sweep (worker thread)

    def _sweep_locked(self) -> list[Batch]:
        with self._lock:
            if self._closed:
                return []
            try:
                batches = self._sweep()
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

    def _sweep(self) -> list[Batch]:
        now = self._clock.now()
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
                if path not in seen_paths:
                    seen_paths.add(path)
                    candidates.append((path, explicit))

        order: list[_Tracked] = []
        for path, explicit in candidates:
            tf = self._probe(path, explicit, first, now, problems)
            if tf is not None and tf.identity not in found:
                found.add(tf.identity)
                order.append(tf)

        if first:
            cp_only.extend(self._adopt_rotated_checkpoints(found, seen_paths, now))

        for tf in self._files.values():
            if tf.identity not in found and tf.draining_since is None:
                log.info("%s: %s was rotated or deleted; reading it to its end", self.name, tf.path)
                tf.draining_since = now
        draining = sorted(
            (tf for tf in self._files.values() if tf.draining_since is not None),
            key=lambda tf: (tf.draining_since or now, tf.age, tf.path),
        )

        batches: list[Batch] = []
        budget = SWEEP_BLOCKS
        self._more = False
        for tf in [*draining, *order]:
            if budget <= 0:
                self._more = True
                break
            budget -= self._read(tf, now, batches, problems)
            if self._should_retire(tf, now):
                batches.extend(self._retire(tf, now))

        if first:
            self._initial = {i for i, tf in self._files.items() if not tf.seen_end}
        if not self._initial:
            self._caught_up = True
        for tf in self._files.values():
            if tf.dirty:
                cp_only.append(self._checkpoint(tf))
                tf.dirty = False
        if cp_only:
            batches.append(Batch(self.name, [], cp_only))

        for key in problems.keys() - self._problems.keys():
            log.warning("%s: %s", self.name, problems[key].message)
        for key in self._problems.keys() - problems.keys():
            log.info("%s: %s is readable again", self.name, key.removeprefix("file:"))
        self._problems = problems
        self._watch_dirs = self._dirs_to_watch()
        self._warn_cuts_left(now)
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
            tf = _Tracked(path, fd, st.st_dev, st.st_ino, LineAssembler(self._max_line()))
            tf.offset = tf.read_pos = self._start_offset(tf, st.st_size, first)
            tf.fp = _fingerprint(fd)
            tf.changed_at = now
        except OSError as e:
            os.close(fd)
            problem(f"cannot read: {e.strerror or e}")
            return None
        self._files[tf.identity] = tf
        return tf

    def _max_line(self) -> int:
        return self._config.max_line_bytes

    def _start_offset(self, tf: _Tracked, size: int, first: bool) -> int:
        cp = self._checkpoints.pop(tf.key, None)
        if cp is not None:
            offset = cp.get("offset")
            if isinstance(offset, int) and _fp_matches(tf.fd, str(cp.get("fp", ""))):
                if offset <= size:
                    return offset
                log.info("%s: %s is shorter than its checkpoint; from 0", self.name, tf.path)
            return 0
        if not first:
            return 0  # found after start-up: all of it is new
        if any(cp.get("path") == tf.path for cp in self._checkpoints.values()):
            return 0  # its path had another file at the checkpoint: this one is new since
        if self._config.start_at == "beginning":
            return 0
        start = max(0, size - START_TAIL_BYTES)
        tail = os.pread(tf.fd, size - start, start)
        nl = tail.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        return 0 if start == 0 else size

    def _adopt_rotated_checkpoints(
        self, found: set[Identity], candidates: set[str], now: datetime
    ) -> list[Checkpoint]:
        """At start-up: finish files rotated while we were down, forget those that are gone."""
        deletes: list[Checkpoint] = []
        for key, cp in list(self._checkpoints.items()):
            tf = self._find_rotated(cp, now)
            if tf is not None:
                self._files[tf.identity] = tf
                found.add(tf.identity)
                del self._checkpoints[key]
            elif not (cp.get("path") in candidates and self._still_at_path(cp)):
                deletes.append(Checkpoint(self.name, key, {}, delete=True))
                del self._checkpoints[key]
            # else: its file is still there but could not be opened; resume once it can be
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
                same = _fp_matches(fd, fp) and offset <= st.st_size
                if not same:  # rewritten before it was rotated: all of it is new
                    offset, fp = 0, _fingerprint(fd)
            except OSError:
                os.close(fd)
                return None
            log.info("%s: finishing %s (rotated from %s)", self.name, sib, path)
            # It keeps its old path, in its lines and its checkpoint, so that a later restart
            # looks for it again among the siblings of that path.
            tf = _Tracked(str(path), fd, dev, ino, LineAssembler(self._max_line()))
            tf.offset = tf.read_pos = offset
            tf.fp, tf.changed_at, tf.draining_since = fp, now, now
            tf.age = st.st_mtime_ns
            tf.dirty = False
            return tf
        return None

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
        blocks = 0
        try:
            st = os.fstat(tf.fd)
            if (st.st_size, st.st_mtime_ns) != (tf.size, tf.mtime_ns):
                tf.changed_at = now
                if st.st_size < tf.read_pos or not _fp_matches(tf.fd, tf.fp):
                    log.info("%s: %s was truncated; reading it from the start", self.name, tf.path)
                    tf.offset = tf.read_pos = 0
                    tf.assembler.reset()
                    tf.fp = _fingerprint(tf.fd)
                    tf.dirty = True
                tf.size, tf.mtime_ns = st.st_size, st.st_mtime_ns
                if int(tf.fp.partition(":")[0]) < min(FP_BYTES, st.st_size):
                    tf.fp = _fingerprint(tf.fd)
                    tf.dirty = True
            while tf.read_pos < tf.size and blocks < FILE_BLOCKS_PER_SWEEP:
                base = tf.read_pos
                n, chunks = read_block(tf.fd, base, tf.assembler, BLOCK_BYTES)
                if not n:
                    break
                tf.read_pos += n
                blocks += bool(chunks)
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

    def _should_retire(self, tf: _Tracked, now: datetime) -> bool:
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
        del self._files[tf.identity]
        self._initial.discard(tf.identity)
        os.close(tf.fd)
        delete = Checkpoint(self.name, tf.key, {}, delete=True)
        return [Batch(self.name, lines, [delete], last.truncated if last is not None else 0)]

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
        value = {"path": tf.path, "dev": tf.dev, "ino": tf.ino, "fp": tf.fp, "offset": tf.offset}
        return Checkpoint(self.name, tf.key, value)

    def _dirs_to_watch(self) -> set[str]:
        dirs = {os.path.dirname(os.path.abspath(tf.path)) for tf in self._files.values()}
        for pattern in self._config.paths:
            parent = os.path.dirname(os.path.abspath(pattern))
            if not _has_magic(parent):
                dirs.add(parent)
        return {d for d in dirs if os.path.isdir(d)}

    def _publish(self) -> None:
        """Snapshots for problems()/status(), read from the event loop while sweeps run."""
        self._problem_view = tuple(self._problems.values())
        self._status_view = {
            "name": self.name,
            "watcher": "inotify" if self._watcher is not None else "polling",
            "caught_up": self._caught_up,
            "problems": [p.message for p in self._problem_view],
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
