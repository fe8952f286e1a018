"""``detector test``: replay log files through the real pipeline with simulated time.

Nothing is sent and no state is written: an in-memory pipeline (the same ``Pipeline`` the agent
runs) sees the lines, and time is taken from the lines themselves (ISO 8601, syslog, nginx/apache
common log format, or ``--time-format``). Deadlines — silence, windows, threshold expiry — run
between hits in time order, so a replay reports what the live agent would have reported.

Reading is block-wise: 1 MiB of bytes at a time, decoded and split once; a ``Line`` object is built
only for lines some rule hit, and timestamps are parsed only for those lines and for the last line
of each block (to advance the clock). That is what keeps a replay at grep-like speed.

``--jobs N`` (backfills): N worker processes find the blocks (the same cuts as
:func:`raw_blocks`, from the file alone), read and match them, and send back only the hits and
the texts of hit lines; this process reads nothing of the file and still evaluates every block in
order, so deadlines, windows and dedup see exactly what they see in one process. Only matching
runs in parallel; rule evaluation stays sequential.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import IO, Any

from detector.matching import Abandoned, Hit, Matcher, PatternSpec, Role
from detector.model import Config, FileSourceConfig
from detector.pipeline import Pipeline, SparseTexts, pattern_specs, text_getter
from detector.rules.base import When
from detector.sources.base import Line
from detector.timestamps import TimeParser

BLOCK = 1 << 20
KEEP_PER_RULE = 20


@dataclass
class ReplayResult:
    lines: int = 0
    bytes: int = 0
    seconds: float = 0.0
    matches: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    """The first KEEP_PER_RULE notifications of each rule, in order (memory stays flat however
    many a long backfill raises)."""
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Every notification counted by (rule, notification kind)."""

    @property
    def firing(self) -> int:
        return sum(n for (_, kind), n in self.counts.items() if kind in ("firing", "info"))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, payload: dict[str, Any]) -> None:
        rule = payload["rule"]
        self.counts[(rule, payload["notification"])] += 1
        if self._kept[rule] < KEEP_PER_RULE:
            self._kept[rule] += 1
            self.notifications.append(payload)

    _kept: Counter[str] = field(default_factory=Counter)


def raw_blocks(stream: IO[bytes], block: int = BLOCK) -> Iterator[tuple[int, bytes, bool]]:
    """The blocks of ``stream`` as (offset, data, final): ``data`` is whole lines as read, at
    ``offset`` in the stream, without the newline after the last one; ``final`` marks the stream's
    last line when it has no newline (a block of its own). Pass ``data`` through
    :func:`normalize` before use. This is the one place that decides where blocks are cut."""
    rest = b""
    offset = 0
    while True:
        chunk = stream.read(block)
        if not chunk:
            break
        data = rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 1 :]
        yield offset, data[:cut], False
        offset += cut + 1
    if rest:
        yield offset, rest, True


def normalize(data: bytes, *, final: bool) -> bytes:
    """CRLF line ends made LF (including the block's last line, whose LF is the cut); the
    stream's unterminated last line loses trailing CRs. (Working on bytes is the same as on the
    decoded text: CR and LF never take part in a multi-byte sequence, valid or not.)"""
    if final:
        return data.rstrip(b"\r")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if data.endswith(b"\r"):  # the block's last line ended in CRLF; its LF was the cut
            data = data[:-1]
    return data


def read_blocks(stream: IO[bytes], block: int = BLOCK) -> Iterator[list[str]]:
    """Yield lists of decoded lines, a block at a time (CRLF and invalid UTF-8 handled)."""
    for _offset, data, final in raw_blocks(stream, block):
        yield normalize(data, final=final).decode("utf-8", "replace").split("\n")


def pick_source(config: Config, path: str, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in config.sources:
            raise SystemExit(
                f"--source {wanted!r}: no such source (have {', '.join(config.sources)})"
            )
        return wanted
    import fnmatch  # noqa: PLC0415

    for name, src in config.sources.items():
        if isinstance(src, FileSourceConfig) and any(
            fnmatch.fnmatch(path, pat) or Path(path).name == Path(pat).name for pat in src.paths
        ):
            return name
    if len(config.sources) == 1:
        return next(iter(config.sources))
    raise SystemExit(
        f"{path}: matches no file source's path; say which source it stands for with --source "
        f"(one of {', '.join(config.sources)})"
    )


@dataclass(frozen=True)
class _Block:
    """One block of lines, ready for rule evaluation."""

    texts: Sequence[str]
    """All lines, or only those evaluation reads (``pipeline.SparseTexts``)."""
    chars: int
    """Characters of the decoded lines plus one per line (what ``ReplayResult.bytes`` counts)."""
    head: Sequence[str]
    """The first 50 lines, the last 50 lines: where the clock is read when no rule hits."""
    tail: Sequence[str]
    hits: Sequence[Hit] | None
    """Matched in a worker process; None: the pipeline's own matcher runs."""
    abandoned: dict[str, Abandoned] = field(default_factory=dict)
    """Lines a worker's matcher could not decide in time (reported by the pipeline)."""


def _serial_blocks(
    stream: IO[bytes], block: int, matcher: Matcher, source: str, all_texts: bool
) -> Iterator[_Block]:
    """Blocks matched here, as bytes: only the lines with hits are decoded (unless a rule reads
    every line)."""
    for _offset, raw, final in raw_blocks(stream, block):
        n, chars, found, texts, head, tail = _match_data(
            matcher, source, normalize(raw, final=final), all_texts
        )
        lines = texts if isinstance(texts, list) else SparseTexts(n, texts)
        yield _Block(lines, chars, head, tail, found)


_Task = tuple[str, tuple[int, int], str, int, int, bool, bool]
"""(path, (st_dev, st_ino), source, lo, hi, final, all_texts): one block for a worker, as the
window of the file that :func:`raw_blocks` reads as one chunk (see :func:`_block_at`); the
identity is that of the file this process measured, which the worker must find at ``path``."""
LOOKBACK = 64 * 1024
"""How far back a worker reads at a time to find where its block starts."""
_HitTuple = tuple[int, str, Role, dict[str, str]]
"""A Hit sent as a plain tuple: unpickling the NamedTuple would call its class per hit; the main
process rebuilds Hits with ``tuple.__new__``."""
_Result = tuple[
    int,
    int,
    list[_HitTuple],
    "dict[int, str] | list[str]",
    list[str],
    list[str],
    "dict[str, Abandoned]",
]
"""(lines, chars, hits, texts of hit lines — or of every line —, first 50, last 50 lines, lines
abandoned by the matcher)."""


def _match_worker(conn: Connection, matcher: Matcher | list[PatternSpec]) -> None:
    """A ``--jobs`` worker process: match the blocks it is sent, answering in the order sent.
    ``matcher`` is the parent's, already compiled (fork), or the specs to build one from."""
    if not isinstance(matcher, Matcher):
        matcher = Matcher(matcher)
    opened: tuple[str, tuple[int, int], int] | None = None
    try:
        while (task := conn.recv()) is not None:
            path, ident = task[0], task[1]
            try:
                if opened is None or opened[:2] != (path, ident):
                    if opened is not None:
                        os.close(opened[2])
                        opened = None
                    fd = os.open(path, os.O_RDONLY)
                    st = os.fstat(fd)
                    opened = (path, ident, fd)
                    if (st.st_dev, st.st_ino) != ident:
                        raise OSError(
                            f"{path} was replaced during the replay (rotated?): replay the "
                            "file it was moved to, or run without --jobs"
                        )
                conn.send(_match_block(matcher, opened[2], task))
            except Exception as e:  # reported to, and raised in, the main process
                conn.send(f"{type(e).__name__}: {e}")
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if opened is not None:
            os.close(opened[2])
        conn.close()


def _last_newline(fd: int, floor: int, pos: int, step: int = LOOKBACK) -> int:
    """Offset of the last newline in the file's bytes [floor, pos), or -1 if there is none
    (read backwards ``step`` bytes at a time)."""
    while pos > floor:
        lo = max(floor, pos - step)
        nl = os.pread(fd, pos - lo, lo).rfind(b"\n")
        if nl >= 0:
            return lo + nl
        pos = lo
    return -1


def _block_at(fd: int, lo: int, hi: int, final: bool, step: int = LOOKBACK) -> bytes | None:
    """The block :func:`raw_blocks` yields for the chunk it reads at [lo, hi), found from the
    file alone, so that every worker finds its own blocks and this process reads nothing: the
    lines after the last newline before ``lo`` up to (without) the last newline before ``hi``;
    None if no line ends in the chunk (raw_blocks reads on without yielding). ``final``: the
    file's unterminated last line (lo == hi == size)."""
    # The end first, within the chunk alone: a chunk inside one long line is skipped without
    # looking back, so a line of many blocks costs one look back to its start, not one per block.
    end = hi if final else _last_newline(fd, lo, hi, step)
    if end < 0:
        return None
    start = _last_newline(fd, 0, lo, step) + 1
    raw = os.pread(fd, end - start, start)
    if len(raw) != end - start:
        raise OSError(f"short read at {start} (file changed during the replay?)")
    return raw


def _match_block(matcher: Matcher, fd: int, task: _Task) -> _Result | None:
    path, _ident, source, lo, hi, final, all_texts = task
    try:
        raw = _block_at(fd, lo, hi, final)
    except OSError as e:
        raise OSError(f"{path}: {e}") from e
    if raw is None:
        return None
    n, chars, found, texts, head, tail = _match_data(
        matcher, source, normalize(raw, final=final), all_texts
    )
    hits = [(h.line, h.rule, h.role, h.groups) for h in found]
    return n, chars, hits, texts, head, tail, matcher.take_abandoned()


def _match_data(
    matcher: Matcher, source: str, data: bytes, all_texts: bool
) -> tuple[int, int, list[Hit], dict[int, str] | list[str], list[str], list[str]]:
    """Match one normalized block: (lines, chars, hits, texts of hit lines — or of every line
    with ``all_texts`` —, first 50, last 50 lines)."""
    if all_texts:
        n, found = matcher.match_block(source, data + b"\n")
        every = data.decode("utf-8", "replace").split("\n")
        return n, len(every) + sum(map(len, every)), found, every, every[:50], every[-50:]
    texts: dict[int, str] = {}
    n, found = matcher.match_block(source, data + b"\n", texts)
    chars = len(data) + 1 if data.isascii() else len(data.decode("utf-8", "replace")) + 1
    head, tail = _edges(data)
    return n, chars, found, texts, head, tail


def _edges(data: bytes, k: int = 50) -> tuple[list[str], list[str]]:
    """The first and the last ``k`` lines of a block, decoded (where the replay reads the clock
    when no rule hits), without splitting or copying the rest of the block."""
    end = -1
    for _ in range(k):
        end = data.find(b"\n", end + 1)
        if end < 0:
            break
    start = len(data)
    for _ in range(k):
        start = data.rfind(b"\n", 0, start)
        if start < 0:
            break
    head = data if end < 0 else data[:end]
    tail = data if start < 0 else data[start + 1 :]
    return (
        head.decode("utf-8", "replace").split("\n"),
        tail.decode("utf-8", "replace").split("\n"),
    )


class _MatchPool:
    """``jobs`` worker processes, each with its own Matcher: a copy of the parent's, compiled
    before the fork, or (fork server) one built once from the pattern specs. Blocks go to them
    round robin as chunk windows — each worker finds the line ends of its block and reads it
    itself (:func:`_block_at`), so this process never reads the file — and results are taken
    back in block order, at most ``2 * jobs`` blocks ahead of evaluation, so memory stays flat
    whatever the file size."""

    def __init__(self, matcher: Matcher, specs: list[PatternSpec], jobs: int) -> None:
        # fork: quick to start, nothing to re-import. A process with threads cannot fork safely:
        # there the workers come from a fork server (which imports the __main__ script again).
        forking = threading.active_count() == 1
        ctx = (
            multiprocessing.get_context("fork")
            if forking
            else multiprocessing.get_context("forkserver")
        )
        given: Matcher | list[PatternSpec] = matcher if forking else specs
        for out in (sys.stdout, sys.stderr):  # a forked child flushes what it inherited
            with contextlib.suppress(OSError, ValueError, AttributeError):
                out.flush()
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        try:
            for _ in range(jobs):
                here, there = ctx.Pipe()
                proc = ctx.Process(target=_match_worker, args=(there, given), daemon=True)
                proc.start()
                there.close()
                self._conns.append(here)
                self._procs.append(proc)
        except BaseException:
            self.close(abort=True)
            raise

    def blocks(self, path: str, source: str, all_texts: bool, block: int) -> Iterator[_Block]:
        """The blocks of ``path`` as it is now (its size when the replay of it starts), in
        order. This process sends only chunk windows; each worker finds and reads its block."""
        with open(path, "rb") as stream:
            st = os.fstat(stream.fileno())
            size, ident = st.st_size, (st.st_dev, st.st_ino)
            unterminated = size > 0 and os.pread(stream.fileno(), 1, size - 1) != b"\n"
        tasks = itertools.chain(
            (
                (path, ident, source, lo, min(lo + block, size), False, all_texts)
                for lo in range(0, size, block)
            ),
            [(path, ident, source, size, size, True, all_texts)] if unterminated else [],
        )
        window: deque[Connection] = deque()
        conns = self._conns
        for k, task in enumerate(tasks):
            conn = conns[k % len(conns)]
            conn.send(task)
            window.append(conn)
            if len(window) >= 2 * len(conns):
                got = self._take(window.popleft())
                if got is not None:
                    yield got
        while window:
            got = self._take(window.popleft())
            if got is not None:
                yield got

    @staticmethod
    def _take(conn: Connection) -> _Block | None:
        try:
            answer = conn.recv()
        except (EOFError, OSError):
            raise RuntimeError("a matching worker process died") from None
        if isinstance(answer, str):
            raise RuntimeError(f"a matching worker failed: {answer}")
        if answer is None:  # no line ends in that chunk (inside a line longer than a block)
            return None
        n, chars, hits, texts, head, tail, abandoned = answer
        lines = texts if isinstance(texts, list) else SparseTexts(n, texts)
        new = tuple.__new__  # Hit._make without its length check: the tuples are Hits' own
        return _Block(lines, chars, head, tail, [new(Hit, h) for h in hits], abandoned)

    def close(self, *, abort: bool = False) -> None:
        for conn in self._conns:
            if not abort:
                with contextlib.suppress(OSError):
                    conn.send(None)
            conn.close()
        for proc in self._procs:
            if abort:
                proc.terminate()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def replay(
    config: Config,
    files: list[tuple[str, str]],
    *,
    time_format: str | None = None,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    block: int = BLOCK,
    started_at: datetime | None = None,
) -> ReplayResult:
    """Replay ``files`` — (path, source name) pairs — through a fresh in-memory pipeline.

    With ``jobs`` > 1, ``jobs`` worker processes match the blocks of each regular file bigger
    than one block, and this process evaluates their hits in line order: same result, less
    time. Standard input (``-``) is always read here. ``block`` is the read size in bytes.
    ``started_at`` (default: now) is the time before the first timestamp is read: rules start
    their clocks there."""
    result = ReplayResult()
    start = time.perf_counter()
    clock_now = started_at or datetime.now(UTC)
    pipeline = Pipeline(config, clock_now, lambda _rule: {})
    pipeline.alerts.record = result.record  # every notification, webhooks or not
    current: list[datetime | None] = [None]
    pool: _MatchPool | None = None
    try:
        for path, source in files:
            parser = TimeParser(time_format, clock_now.year)
            stream: IO[bytes] | None = None
            all_texts = any(
                ev.wants_all_lines and source in ev.rule.sources
                for ev in pipeline.evaluators.values()
            )
            if jobs > 1 and path != "-" and os.path.getsize(path) > block:
                if pool is None:
                    for name in {s for _p, s in files}:
                        pipeline.matcher.match(name, [])  # compiled once, before the fork
                    pool = _MatchPool(pipeline.matcher, pattern_specs(config.rules), jobs)
                blocks = pool.blocks(path, source, all_texts, block)
            else:
                stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
                blocks = _serial_blocks(stream, block, pipeline.matcher, source, all_texts)
            try:
                for b in blocks:
                    texts = b.texts
                    result.lines += len(texts)
                    result.bytes += b.chars

                    text = text_getter(texts)

                    def line_at(
                        i: int,
                        text: Callable[[int], str] = text,
                        source: str = source,
                        path: str = path,
                    ) -> Line:
                        return Line(source, text(i), None, path)

                    def when_for(line: Line, parser: TimeParser = parser) -> When:
                        at = parser.parse(line.text)
                        if at is None:
                            at = current[0] or clock_now
                        elif current[0] is None or at > current[0]:
                            current[0] = at
                        return When.exact(at)

                    if current[0] is None:
                        for t in b.head:
                            first = parser.parse(t)
                            if first is not None:
                                current[0] = first
                                pipeline.tick(first)
                                break
                    now = current[0] or clock_now
                    pipeline.note_abandoned(b.abandoned)
                    pipeline.process_texts(
                        source, texts, line_at, when_for, now, interleave_ticks=True, hits=b.hits
                    )
                    for t in reversed(b.tail):
                        last = parser.parse(t)
                        if last is not None:
                            if current[0] is None or last > current[0]:
                                current[0] = last
                            break
                    if current[0] is not None:
                        pipeline.tick(current[0])
                    if progress is not None:
                        progress(result.bytes)
            finally:
                if stream is not None and stream is not sys.stdin.buffer:
                    stream.close()
    except BaseException:
        if pool is not None:
            pool.close(abort=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()
    result.seconds = time.perf_counter() - start
    result.matches = Counter(pipeline.lines_matched)
    return result


def main(args: argparse.Namespace) -> int:
    from detector.cli_support import load_config_or_exit  # noqa: PLC0415 - the CLI layer

    config = load_config_or_exit(args)
    files = [(f, pick_source(config, f, args.source)) for f in args.files]
    total = sum(Path(f).stat().st_size for f, _ in files if f != "-")
    show = not args.no_progress and sys.stderr.isatty() and total > 32 * BLOCK

    def progress(done: int) -> None:
        pct = min(100, int(done * 100 / max(total, 1)))
        bar = "#" * (pct // 4)
        print(f"\r[{bar:<25}] {pct:3d}%", end="", file=sys.stderr, flush=True)

    jobs: int = getattr(args, "jobs", 1)
    if jobs > 1 and "-" in args.files:
        print(
            f"note: --jobs {jobs} does not apply to standard input (-): it is read in one process",
            file=sys.stderr,
        )
    result = replay(
        config,
        files,
        time_format=args.time_format,
        progress=progress if show else None,
        jobs=jobs,
    )
    if show:
        print(file=sys.stderr)
    rate = result.lines / result.seconds if result.seconds else 0.0
    print(
        f"{result.lines} lines, {result.bytes / 1e6:.1f} MB in {result.seconds:.2f} s "
        f"({rate:,.0f} lines/s)"
    )
    if not args.quiet:
        print(f"\n{'rule':<32} {'kind':<13} {'matches':>9}")
        for rule in config.rules:
            print(f"{rule.name:<32} {rule.kind:<13} {result.matches.get(rule.name, 0):>9}")
        shown = len(result.notifications)
        more = f" (the first {KEEP_PER_RULE} of each rule shown)" if shown < result.total else ""
        print(f"\n{result.total} notifications{more}:")
        for n in result.notifications:
            when = n["last_seen_at"] if n["notification"] != "resolved" else n["resolved_at"]
            print(f"  {when}  {n['notification'].upper():<8} [{n['severity']}] {n['summary']}")
            if n["notification"] == "firing":
                for s in n["samples"][: args.samples]:
                    print(f"      | {s[:160]}")
    firing = result.firing
    print(f"\n{firing} alerts would have fired")
    return 1 if firing else 0
