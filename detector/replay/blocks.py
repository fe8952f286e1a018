"""The lines of a replayed file, read as the file tailer reads them, and matched a block at a time.

Between the sources and the replay's evaluation (``detector/replay/__init__.py``): a file given to
``detector test`` is read with ``sources/lines.py`` (:func:`~detector.sources.lines.read_block`,
or :func:`~detector.sources.lines.read_stream` for a compressed file, into a
:class:`~detector.sources.lines.LineAssembler` with the source's ``max_line_bytes``), so
its lines, their cuts and the text matched are the live tailer's; only CRLF lines stay in blocks
(``crlf="normalize"``), which gives the same lines faster. Each chunk of lines becomes a
:class:`ReplayBlock`: matched here as bytes (only lines with hits are decoded), or in a ``--jobs``
worker (``detector/replay/jobs.py``), which makes the same blocks of its span of the file. A
``multiline:`` source's lines are joined into events by the tailer's event assembler
(``sources/events.py``, :func:`event_blocks`), always here: an event may span the reads of two
workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator, Sequence
from dataclasses import field
from typing import BinaryIO

from detector.frozen import Frozen
from detector.matching import Abandoned, Hit, Matcher
from detector.model import Config, FileSourceConfig, MultilineConfig
from detector.pipeline import SparseTexts
from detector.sources.events import Event, EventAssembler
from detector.sources.lines import (
    BLOCK_BYTES,
    Chunk,
    LineAssembler,
    keep_read_buffers,
    open_stream,
    read_block,
    sniff,
)

EDGE_LINES = 50
"""Lines at each end of a block where the clock is read when no rule hits."""

Matched = tuple[int, int, list[Hit], "dict[int, str] | list[str]", list[str], list[str], int]
"""(lines, chars, hits, texts of hit lines — or of every line —, first 50, last 50 lines, lines
cut at max_line_bytes)."""


class ReplayBlock(Frozen):
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
    truncated: int = 0
    """Lines of the block cut at max_line_bytes."""
    abandoned: dict[str, Abandoned] = field(default_factory=dict)
    """Lines a worker's matcher could not decide in time (reported by the pipeline)."""
    lines: int | None = None
    """``multiline:``: the lines the events of ``texts`` were made of (None: one per text)."""
    splits: int = 0
    """``multiline:``: events of the block that ended at ``max_lines``."""


def multiline_of(config: Config, source: str) -> MultilineConfig | None:
    """The ``multiline:`` of ``source``, if it has one."""
    src = config.sources.get(source)
    return src.multiline if src is not None else None


def max_line_bytes(config: Config, source: str) -> int:
    """Where the tailer of ``source`` cuts lines (the file default for a journald source)."""
    src = config.sources.get(source)
    if isinstance(src, FileSourceConfig):
        return src.max_line_bytes
    return FileSourceConfig.max_line_bytes


def assembler(max_line: int) -> LineAssembler:
    return LineAssembler(max_line, crlf="normalize")


def read_chunks(path: str, max_line: int, block: int = BLOCK_BYTES) -> Iterator[Chunk]:
    """Every line of ``path`` (``-``: standard input, read as is) in chunks, as the tailer reads
    them; the unterminated last line, if any, last. A compressed file (gzip, xz, bzip2, zstd:
    told by its first bytes, not its name) is decompressed as a stream, in bounded memory."""
    lines = assembler(max_line)
    if path == "-":
        stream = sys.stdin.buffer
        while data := stream.read(block):
            yield from lines.feed(data)
    else:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size > 2 * block:
                keep_read_buffers()
            kind = sniff(fd, zstd=True)
            if kind is not None:  # compressed: decompressed as a stream, as the tailer does
                with open_stream(fd, kind) as stream:
                    while data := decompressed(stream, block, path, kind):
                        yield from lines.feed(data)
            else:
                pos = 0
                while True:
                    n, chunks = read_block(fd, pos, lines, block)
                    if not n:
                        break
                    pos += n
                    yield from chunks
        finally:
            os.close(fd)
    last = lines.flush()
    if last is not None:
        yield last


class Undecompressable(Exception):
    """A compressed file given to ``detector test`` is corrupt or cut short."""


def decompressed(stream: BinaryIO, block: int, path: str, kind: str) -> bytes:
    """The next ``block`` bytes of a decompressing ``stream`` (b"": its end)."""
    try:
        return stream.read(block)
    except Exception as e:  # EOFError, OSError, LZMAError, zstandard.ZstdError, …
        raise Undecompressable(
            f"{path}: cannot decompress ({kind}): {e or type(e).__name__} — the file is corrupt "
            "or cut short (still being compressed?)"
        ) from e


def serial_blocks(
    path: str, matcher: Matcher, source: str, *, max_line: int, block: int, all_texts: bool
) -> Generator[ReplayBlock, None, None]:
    """The blocks of ``path``, matched here: only the lines with hits are decoded (unless a
    rule reads every line)."""
    for chunk in read_chunks(path, max_line, block):
        if chunk.block is None:  # decoded lines (some cut): the pipeline matches them
            texts = chunk.texts
            chars = len(texts) + sum(map(len, texts))
            head, tail = texts[:EDGE_LINES], texts[-EDGE_LINES:]
            yield ReplayBlock(texts, chars, head, tail, None, chunk.truncated)
            continue
        n, chars, found, got, head, tail, _ = match_chunk(matcher, source, chunk, all_texts)
        lines = got if isinstance(got, list) else SparseTexts(n, got)
        yield ReplayBlock(lines, chars, head, tail, found)


def event_blocks(
    path: str, spec: MultilineConfig, *, max_line: int, block: int
) -> Generator[ReplayBlock, None, None]:
    """The events of ``path`` (``multiline:``), a block of them per chunk of lines read: the
    events each chunk completes, the last one at the end of the file. The pipeline matches
    them."""
    events: EventAssembler[int] = EventAssembler(spec)

    def out(done: list[Event[int]], lines: int, cut: int) -> ReplayBlock:
        texts = [e.text for e in done]
        chars = len(texts) + sum(map(len, texts))
        head, tail = texts[:EDGE_LINES], texts[-EDGE_LINES:]
        splits = sum(e.split for e in done)
        return ReplayBlock(texts, chars, head, tail, None, cut, lines=lines, splits=splits)

    for chunk in read_chunks(path, max_line, block):
        texts = chunk.texts
        if chunk.block is not None:
            texts = chunk.block.decode("utf-8", "replace").split("\n")[:-1]
        done = events.push_all((t, 0) for t in texts)
        yield out(done, len(texts), chunk.truncated)
    last = events.flush()
    if last is not None:
        yield out([last], 0, 0)


def match_chunk(matcher: Matcher, source: str, chunk: Chunk, all_texts: bool) -> Matched:
    """Match one chunk of lines (see :data:`Matched`)."""
    if chunk.block is None:
        texts = chunk.texts
        found = matcher.match(source, texts)
        chars = len(texts) + sum(map(len, texts))
        return (
            len(texts),
            chars,
            found,
            texts,
            texts[:EDGE_LINES],
            texts[-EDGE_LINES:],
            chunk.truncated,
        )
    data = chunk.block
    if all_texts:
        n, found = matcher.match_block(source, data)
        every = data.decode("utf-8", "replace").split("\n")
        every.pop()  # after the last newline
        chars = len(every) + sum(map(len, every))
        return n, chars, found, every, every[:EDGE_LINES], every[-EDGE_LINES:], 0
    hit_texts: dict[int, str] = {}
    n, found = matcher.match_block(source, data, hit_texts)
    chars = len(data) if data.isascii() else len(data.decode("utf-8", "replace"))
    head, tail = edges(data, stop=len(data) - 1)
    return n, chars, found, hit_texts, head, tail, 0


def edges(
    data: bytes, k: int = EDGE_LINES, *, stop: int | None = None
) -> tuple[list[str], list[str]]:
    """The first and the last ``k`` lines of a block (``data[:stop]``: without its last newline),
    decoded (where the replay reads the clock when no rule hits), without splitting the rest of
    the block nor copying it."""
    stop = len(data) if stop is None else stop
    end = -1
    for _ in range(k):
        end = data.find(b"\n", end + 1, stop)
        if end < 0:
            break
    start = stop
    for _ in range(k):
        start = data.rfind(b"\n", 0, start)
        if start < 0:
            break
    head = data[:stop] if end < 0 else data[:end]
    tail = data[:stop] if start < 0 else data[start + 1 : stop]
    return (
        head.decode("utf-8", "replace").split("\n"),
        tail.decode("utf-8", "replace").split("\n"),
    )
