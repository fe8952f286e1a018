"""``detector test --jobs N``: worker processes that read and match spans of a replayed file.

Beside the replay (``detector/replay/__init__.py``), in place of its serial reading
(``replay/blocks.py``): this process finds where the reads of the file end
(:func:`~detector.sources.lines.read_plan`, which reads only around those ends) and sends the spans
round robin to N workers; each reads its span with the tailer's own reading code, makes the same
chunks of lines as one process would, matches them and sends back only the hits and the texts of
hit lines. Results are taken back in span order, so the replay still evaluates every block in
order: deadlines, windows and dedup see exactly what they see in one process. Only matching runs
in parallel; rule evaluation stays sequential.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING

from detector.matching import Abandoned, Hit, Matcher, PatternSpec, Role
from detector.pipeline import SparseTexts
from detector.replay.blocks import ReplayBlock, assembler, match_chunk
from detector.sources.lines import keep_read_buffers, read_block, read_plan

if TYPE_CHECKING:  # multiprocessing is imported only when --jobs starts workers
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

Task = tuple[str, tuple[int, int], str, int, int, bool, bool, int, int]
"""(path, (st_dev, st_ino), source, lo, hi, final, all_texts, max_line_bytes, block): one span
of a file for a worker (see :func:`~detector.sources.lines.read_plan`; ``final``: it ends the
file, whose unterminated last line it gives too); the identity is that of the file this process
measured, which the worker must find at ``path``."""
HitTuple = tuple[int, str, Role, dict[str, str]]
"""A Hit sent as a plain tuple: unpickling the NamedTuple would call its class per hit; the main
process rebuilds Hits with ``tuple.__new__``."""
Result = tuple[
    int,
    int,
    list[HitTuple],
    "dict[int, str] | list[str]",
    list[str],
    list[str],
    int,
    "dict[str, Abandoned]",
]
"""One block of a span: (lines, chars, hits, texts of hit lines — or of every line —, first 50,
last 50 lines, lines cut at max_line_bytes, lines abandoned by the matcher)."""


def match_worker(conn: Connection, matcher: Matcher | list[PatternSpec]) -> None:
    """A ``--jobs`` worker process: match the spans it is sent, answering in the order sent.
    ``matcher`` is the parent's, already compiled (fork), or the specs to build one from."""
    if not isinstance(matcher, Matcher):
        matcher = Matcher(matcher)
    keep_read_buffers()  # each span is a 1 MiB read
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
                conn.send(match_span(matcher, opened[2], task))
            except Exception as e:  # reported to, and raised in, the main process
                conn.send(f"{type(e).__name__}: {e}")
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        if opened is not None:
            os.close(opened[2])
        conn.close()


def match_span(matcher: Matcher, fd: int, task: Task) -> list[Result]:
    """Read one span as the tailer would (from a line start, nothing held) and match it."""
    path, _ident, source, lo, hi, final, all_texts, max_line, block = task
    lines = assembler(max_line)
    out: list[Result] = []
    chunks = []
    pos = lo
    while pos < hi:
        n, got = read_block(fd, pos, lines, block, end=hi)
        if not n:
            raise OSError(f"{path}: short read at {pos} (file changed during the replay?)")
        pos += n
        chunks.extend(got)
    if final:
        last = lines.flush()
        if last is not None:
            chunks.append(last)
    for chunk in chunks:
        n, chars, found, texts, head, tail, cut = match_chunk(matcher, source, chunk, all_texts)
        hits = [(h.line, h.rule, h.role, h.groups) for h in found]
        out.append((n, chars, hits, texts, head, tail, cut, matcher.take_abandoned()))
    return out


class MatchPool:
    """``jobs`` worker processes, each with its own Matcher: a copy of the parent's, compiled
    before the fork, or (fork server) one built once from the pattern specs. Spans go to them
    round robin — each worker reads its span itself, this process reads only where the reads
    end — and results are taken back in span order, at most ``2 * jobs`` spans ahead of
    evaluation, so memory stays flat whatever the file size."""

    def __init__(self, matcher: Matcher, specs: list[PatternSpec], jobs: int) -> None:
        import multiprocessing  # noqa: PLC0415 - only `--jobs` needs it

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
                proc = ctx.Process(target=match_worker, args=(there, given), daemon=True)
                proc.start()
                there.close()
                self._conns.append(here)
                self._procs.append(proc)
        except BaseException:
            self.close(abort=True)
            raise

    def blocks(
        self, path: str, source: str, all_texts: bool, max_line: int, block: int
    ) -> Generator[ReplayBlock, None, None]:
        """The blocks of ``path`` as it is now (its size when the replay of it starts), in
        order. This process finds the spans; each worker reads and matches its own."""
        window: deque[Connection] = deque()
        conns = self._conns
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            size, ident = st.st_size, (st.st_dev, st.st_ino)
            for k, (lo, hi) in enumerate(read_plan(fd, size, block)):
                final = hi == size
                task: Task = (path, ident, source, lo, hi, final, all_texts, max_line, block)
                conn = conns[k % len(conns)]
                conn.send(task)
                window.append(conn)
                if len(window) >= 2 * len(conns):
                    yield from self._take(window.popleft())
        finally:
            os.close(fd)
        while window:
            yield from self._take(window.popleft())

    @staticmethod
    def _take(conn: Connection) -> list[ReplayBlock]:
        try:
            answer = conn.recv()
        except (EOFError, OSError):
            raise RuntimeError("a matching worker process died") from None
        if isinstance(answer, str):
            raise RuntimeError(f"a matching worker failed: {answer}")
        new = tuple.__new__  # Hit._make without its length check: the tuples are Hits' own
        blocks = []
        for n, chars, hits, texts, head, tail, cut, abandoned in answer:
            lines = texts if isinstance(texts, list) else SparseTexts(n, texts)
            found = [new(Hit, h) for h in hits]
            blocks.append(ReplayBlock(lines, chars, head, tail, found, cut, abandoned))
        return blocks

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
