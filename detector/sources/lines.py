"""Bytes to lines: the one line assembler under every source and under ``detector test``.

Sits at the very start of the flow, below the sources: the file tailer (``sources/files.py``), the
replay of ``detector test`` and its ``--jobs`` workers (``detector/replay``) read a file with
:func:`read_block` into a :class:`LineAssembler`, which turns the bytes into :class:`Chunk` s of
whole lines; journald (``sources/journald.py``) cuts journalctl's JSON output into lines with
:meth:`LineAssembler.split`. So a line is the same line wherever it is read: split at LF, one CR
before the LF dropped (an unterminated last line, given by :meth:`LineAssembler.flush`, loses all
its trailing CRs), decoded with ``errors="replace"``; a partial last line is held (at most
``max_line_bytes`` of it) until its newline arrives; a line longer than ``max_line_bytes`` is cut
to that many bytes plus `` …[truncated N bytes]`` and counted (:attr:`Chunk.cut_at`), the rest of
it skipped while streaming, so memory stays bounded whatever the line length (``split`` drops such
a line instead, and counts it in :attr:`LineAssembler.skipped`). Lines that need none of this go
on undecoded (:attr:`Chunk.block`). A full read of :func:`read_block` ends at its last newline; the
partial line after it is read again, whole, with the next read: :func:`read_plan` finds those same
reads from the file alone, for the ``--jobs`` workers. Rotated files compressed by logrotate
(gzip, xz, bzip2: :func:`sniff`) are read as a stream (:func:`open_stream`, :func:`read_stream`)
into the same assembler, in bounded memory; ``detector test`` also reads zstd that way (with the
optional ``zstandard`` package). An assembler made with ``starts=True`` also says where each line
began (:attr:`Chunk.starts`), which the event assembler of a ``multiline:`` source
(``sources/events.py``) needs to commit a position before a pending event.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO, Literal

from detector.newlines import count_newlines

BLOCK_BYTES = 1 << 20
"""One read. Not larger: matching runs several passes over a block (Hyperscan, newline count),
which are fastest while it fits the CPU's L2 cache; 2 and 4 MiB reads matched up to 1.5x slower
here. The cost of a batch (a commit) is shared by the agent committing queued batches together."""
READ_SLACK = 64 * 1024
"""A read given what the file holds asks this much more, for what was appended since."""
MAX_BATCH_LINES = 10_000
"""Decoded lines per chunk at most."""
LOOKBACK = 8 * 1024
"""How far back :func:`read_plan` reads at a time to find where a read ends."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole lines out of :meth:`LineAssembler.feed`: decoded ``texts``, or ``block``."""

    texts: list[str]
    end: int
    """Bytes of the fed data consumed through this chunk's last newline."""
    block: bytes | None = None
    """Instead of texts: whole lines, each ending in ``b"\\n"``, none longer than the limit and
    none with a CR (unless the assembler normalizes CRLF: then CRLF became LF)."""
    cut_at: tuple[int, ...] = ()
    """Where each line of this chunk that was cut at ``max_line_bytes`` starts, in bytes from
    the start of the fed data (negative: the line began in data fed before)."""

    starts: tuple[int, ...] = ()
    """With ``LineAssembler(starts=True)``: where each line of the chunk starts, in bytes from
    the start of the fed data (negative: the line began in data fed before); else empty."""

    @property
    def truncated(self) -> int:
        """How many lines of this chunk were cut at ``max_line_bytes``."""
        return len(self.cut_at)


def _with_starts(chunks: list[Chunk], data: bytes, held: int) -> list[Chunk]:
    """``chunks`` made of ``data`` (after ``held`` bytes of a partial line), each given the
    start of its lines: every line ends at the next newline of ``data``."""
    out = []
    start = -held
    for chunk in chunks:
        n = len(chunk.texts) if chunk.block is None else count_newlines(chunk.block)
        starts = []
        for _ in range(n):
            starts.append(start)
            start = data.find(b"\n", max(start, 0)) + 1
        out.append(replace(chunk, starts=tuple(starts)))
    return out


def _has_long_line(data: bytes, pos: int, end: int, limit: int) -> bool:
    """Does a line of ``data[pos:end]`` (lines separated by newlines) exceed ``limit`` bytes?
    One look per ``limit`` bytes: the last newline of each window must exist."""
    while end - pos > limit:
        nl = data.rfind(b"\n", pos, pos + limit + 1)
        if nl < 0:
            return True
        pos = nl + 1
    return False


def _cut(raw: bytes, cut: int) -> str:
    text = raw.decode("utf-8", "replace")
    return f"{text} …[truncated {cut} bytes]" if cut > 0 else text


class LineAssembler:
    """Turns bytes into lines, holding a bounded partial last line (module docstring).

    ``crlf="normalize"`` lets lines with CRLF endings go on as a block (CRLF made LF) instead
    of being decoded one by one: the same lines, for readers that match blocks of bytes (the
    replay); the file tailer keeps its blocks exactly as read.
    """

    def __init__(
        self,
        max_line_bytes: int,
        *,
        crlf: Literal["decode", "normalize"] = "decode",
        starts: bool = False,
    ) -> None:
        self.max_line_bytes = max(1, max_line_bytes)
        self._normalize = crlf == "normalize"
        self._starts = starts
        self._buf = bytearray()  # first max_line_bytes bytes of the pending partial line
        self.pending = 0
        """Full length in bytes of the pending partial line."""
        self._crs = 0  # trailing CRs of the pending partial line
        self.skipped = 0
        """Lines :meth:`split` dropped for being longer than ``max_line_bytes``."""

    def reset(self) -> None:
        """Forget the pending partial line (its file was truncated)."""
        self._buf.clear()
        self.pending = 0
        self._crs = 0

    def _hold(self, data: bytes) -> None:
        if not data:
            return
        room = self.max_line_bytes - len(self._buf)
        if room > 0:
            self._buf += data[:room]
        self.pending += len(data)
        if data[-1:] == b"\r":
            crs = len(data) - len(data.rstrip(b"\r"))
            self._crs = self._crs + crs if crs == len(data) else crs
        else:
            self._crs = 0

    def _complete(self, tail: bytes, *, final: bool = False) -> tuple[str, int]:
        """The pending line ended by ``tail`` (its bytes up to the newline): (text, bytes cut)."""
        total = self.pending + len(tail)
        if final:
            total -= self._crs  # the stream's last line: every trailing CR goes
        elif tail[-1:] == b"\r" or (not tail and self._crs):
            total -= 1
        keep = min(total, self.max_line_bytes)
        buf = bytes(self._buf) + tail[: max(0, keep - len(self._buf))]
        self.reset()
        return _cut(buf[:keep], total - keep), total - keep

    def _one(self, raw: bytes) -> tuple[str, int]:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        n = self.max_line_bytes
        return _cut(raw[:n], len(raw) - n), len(raw) - n

    def flush(self) -> Chunk | None:
        """The pending partial line as a final line (its file is finished), or None. Its
        ``cut_at`` counts from the end of the data fed so far."""
        if not self.pending:
            return None
        start = -self.pending
        text, cut = self._complete(b"", final=True)
        return Chunk([text], 0, cut_at=(start,) if cut > 0 else (), starts=(start,))

    def feed(self, data: bytes) -> list[Chunk]:
        """The lines that ``data`` completes, in chunks; what follows its last newline is held."""
        if not self._starts:
            return self._feed(data)
        held = self.pending
        return _with_starts(self._feed(data), data, held)

    def _feed(self, data: bytes) -> list[Chunk]:
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            self._hold(data)
            return []
        texts: list[str] = []
        cuts: list[tuple[int, int]] = []  # (index in texts, start offset) of each cut line
        parts: list[bytes] = []
        pos = 0
        if self.pending:
            first_nl = data.find(b"\n")
            start = -self.pending
            text, cut = self._complete(data[:first_nl])
            texts.append(text)
            if cut > 0:
                cuts.append((0, start))
            pos = first_nl + 1
        if pos <= last_nl:
            limit = self.max_line_bytes
            has_cr = data.find(b"\r", pos, last_nl) >= 0
            if (not has_cr or self._normalize) and not _has_long_line(data, pos, last_nl, limit):
                # The common case: whole lines, as read. They go on undecoded (Chunk.block):
                # ``data`` itself when it is all whole lines (no copy of the block).
                self._hold(data[last_nl + 1 :])
                raw = data[pos : last_nl + 1]
                if has_cr:
                    raw = raw.replace(b"\r\n", b"\n")
                block = Chunk([], last_nl + 1, raw)
                if texts:  # a held partial line completed first: a chunk of its own
                    return [Chunk(texts, pos, cut_at=tuple(s for _, s in cuts)), block]
                return [block]
            body = data[pos:last_nl]
            parts = body.split(b"\n")
            long = len(body) > limit and max(map(len, parts)) > limit
            if not long and not has_cr:
                texts.extend(body.decode("utf-8", "replace").split("\n"))
            else:
                at = pos
                for raw in parts:
                    text, cut = self._one(raw)
                    if cut > 0:
                        cuts.append((len(texts), at))
                    texts.append(text)
                    at += len(raw) + 1
        self._hold(data[last_nl + 1 :])
        if len(texts) <= MAX_BATCH_LINES:
            return [Chunk(texts, last_nl + 1, cut_at=tuple(s for _, s in cuts))]
        chunks = []
        shift = len(texts) - len(parts)  # 1 if texts[0] completed a pending line
        end, done = pos, 0  # end offset after the first `done` lines of `parts`
        for a in range(0, len(texts), MAX_BATCH_LINES):
            b = min(a + MAX_BATCH_LINES, len(texts))
            upto = b - shift
            end += sum(map(len, parts[done:upto])) + (upto - done)
            done = upto
            cut_at = tuple(s for i, s in cuts if a <= i < b)
            chunks.append(Chunk(texts[a:b], end, cut_at=cut_at))
        return chunks

    def take_skipped(self) -> int:
        """:attr:`skipped` so far, reset to 0."""
        n, self.skipped = self.skipped, 0
        return n

    def split(self, data: bytes) -> list[bytes]:
        """The non-empty lines ``data`` completes, as bytes without their newline (journalctl's
        JSON entries). A line longer than ``max_line_bytes`` is dropped and counted in
        :attr:`skipped`, never held whole."""
        if b"\n" not in data:
            self._hold(data)
            return []
        lines = data.split(b"\n")
        rest = lines.pop()
        limit = self.max_line_bytes
        if self.pending:
            if self.pending + len(lines[0]) > limit:
                lines[0] = b""
                self.skipped += 1
            else:
                lines[0] = bytes(self._buf) + lines[0]
            self.reset()
        self._hold(rest)
        if len(data) > limit:
            kept = [line for line in lines if len(line) <= limit]
            self.skipped += len(lines) - len(kept)
            lines = kept
        return [line for line in lines if line]


def read_block(
    fd: int,
    pos: int,
    assembler: LineAssembler,
    size: int = BLOCK_BYTES,
    end: int | None = None,
    *,
    expect: int | None = None,
) -> tuple[int, list[Chunk]]:
    """One read of the file ``fd`` at ``pos`` (at most ``size`` bytes, none past ``end``):
    (bytes consumed, the chunks ``assembler`` made of them). A full read stops at its last
    newline: the partial line after it is read again, whole, with the next read (rather than
    held, which would split the next read's lines into two chunks). 0 bytes: nothing to read.

    ``expect``: the bytes the caller knows are there (its ``fstat``); the read asks for those
    and ``READ_SLACK`` more rather than a whole block, since a 1 MiB request costs a 1 MiB
    buffer (an ``mmap`` and ``munmap``) even for the one short line a service just wrote."""
    want = size if end is None else min(size, end - pos)
    if expect is not None:
        want = min(want, max(0, expect) + READ_SLACK)
    if want == size and size > LOOKBACK:
        # A full read: its last newline is looked for first, in its last LOOKBACK bytes, and the
        # read stops there, rather than reading it all and copying all but the partial line.
        tail = os.pread(fd, LOOKBACK, pos + size - LOOKBACK)
        nl = tail.rfind(b"\n") if len(tail) == LOOKBACK else -1
        if nl >= 0:
            data = os.pread(fd, size - LOOKBACK + nl + 1, pos)
            return len(data), assembler.feed(data) if data else []
    data = os.pread(fd, want, pos) if want > 0 else b""
    if not data:
        return 0, []
    if len(data) == size:
        last_nl = data.rfind(b"\n")
        if last_nl >= 0:
            data = data[: last_nl + 1]
    return len(data), assembler.feed(data)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
KEPT_HEAP_BYTES = 16 << 20
"""Freed memory glibc's malloc keeps for reuse while a process reads (``keep_read_buffers``)."""
_kept: list[bool] = []


def keep_read_buffers(mmap_threshold: int = 4 * BLOCK_BYTES) -> None:
    """Let a process that reads 1 MiB blocks reuse their memory (glibc; elsewhere nothing).

    Each read (``os.pread``), and what is made of it, is a fresh ~1 MiB allocation. glibc's
    malloc maps such a block on its own or, past its adaptive threshold, trims the top of the
    heap as soon as two of them are free: either way the next read faults its pages in anew
    (``detector test --jobs`` workers: nearly every page of the file, twice, a third of their
    CPU time; the agent: a third of the pages it reads, half its system time). A fixed mmap
    threshold above the block size (the default: above a block decoded at 4 bytes a character)
    and a trim threshold of a few blocks keep them on the heap, reused. For ``detector test``
    of a file over two blocks and its workers, and ``detector run``
    (``cli_support.tune_malloc``). The environment's ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` wins."""
    if _kept or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    _kept.append(True)
    mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    mallopt(_M_TRIM_THRESHOLD, KEPT_HEAP_BYTES)


def mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)`` (``malloc.h``); False where it failed or there is none
    (not glibc)."""
    try:
        import ctypes  # noqa: PLC0415 - only the processes that tune malloc need it

        call = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(call(param, value))


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


def read_plan(
    fd: int, length: int, size: int = BLOCK_BYTES, step: int = LOOKBACK
) -> Iterator[tuple[int, int]]:
    """The reads of :func:`read_block` over the first ``length`` bytes of ``fd``, grouped into
    spans ``(lo, hi)`` that each start at a line start with nothing held: reading a span alone,
    with a fresh assembler, from ``lo`` up to ``end=hi`` (and flushing it if ``hi == length``),
    gives exactly the chunks that reading the whole file from 0 gives for it. Found by looking
    back from the end of each full read for its last newline (``step`` bytes at a time), so
    only the ends of the reads are read here."""
    lo = pos = 0
    while pos < length:
        if length - pos < size:  # the last read: not full, it takes what is left
            pos = length
            break
        nl = _last_newline(fd, pos, pos + size, step)
        if nl < 0:  # inside one long line: the next read goes on holding it
            pos += size
            continue
        pos = nl + 1
        yield lo, pos
        lo = pos
    if pos > lo:
        yield lo, pos


# ---------------------------------------------------------------- compressed rotations

COMPRESSED_MAGIC: dict[str, bytes] = {
    "gz": b"\x1f\x8b",
    "xz": b"\xfd7zXZ\x00",
    "bz2": b"BZh",
}
"""The compressions a rotated file is read through (the standard library's: gzip, xz, bzip2),
told by the file's first bytes, not by its name."""


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
"""A zstd frame: read by ``detector test`` (``sniff(fd, zstd=True)``) when the ``zstandard``
package is installed; the tailer's rotated copies stay the standard library's three."""


class DecompressorMissing(OSError):
    """A file is compressed with a format whose decompressor is not installed (zstd)."""


def sniff(fd: int, *, zstd: bool = False) -> str | None:
    """The compression of the file ``fd`` (a key of :data:`COMPRESSED_MAGIC`; with ``zstd``,
    also ``"zst"``), or None."""
    head = os.pread(fd, 6, 0)
    for kind, magic in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return kind
    if zstd and head.startswith(ZSTD_MAGIC):
        return "zst"
    return None


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401, PLC0415 - optional: only for .zst files
    except ImportError:
        return False
    return True


def open_stream(fd: int, kind: str) -> BinaryIO:
    """A decompressing reader of the whole file ``fd`` (opened anew through ``/proc/self/fd``,
    so the file is read even once deleted; ``fd`` stays open). The decompressors read and
    inflate in small steps: memory stays bounded by the read size. ``"zst"`` without the
    ``zstandard`` package: :class:`DecompressorMissing`."""
    path = f"/proc/self/fd/{fd}"
    if kind == "zst":
        try:
            import zstandard  # noqa: PLC0415 - optional: only for .zst files
        except ImportError:
            raise DecompressorMissing(
                "the file is zstd-compressed and the optional zstandard package is not "
                "installed — pip install zstandard (or the detector[zstd] extra), or "
                "decompress it first (zstd -d)"
            ) from None
        raw = open(path, "rb")  # noqa: SIM115 - closed with the reader (closefd)
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return reader
    # the decompressors imported here, for a compressed file (and their libraries loaded)
    if kind == "gz":
        import gzip  # noqa: PLC0415

        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == "xz":
        import lzma  # noqa: PLC0415

        return lzma.open(path, "rb")  # type: ignore[return-value]
    import bz2  # noqa: PLC0415

    return bz2.open(path, "rb")  # type: ignore[return-value]


def stream_head(fd: int, kind: str | None, n: int) -> bytes:
    """The first ``n`` bytes of the file, decompressed if it is compressed (b"" if that fails:
    a compressed file still being written)."""
    if kind is None:
        return os.pread(fd, n, 0)
    import lzma  # noqa: PLC0415 - for its error (only a compressed file gets here)

    try:
        with open_stream(fd, kind) as f:
            return f.read(n)
    except (EOFError, OSError, lzma.LZMAError, ValueError):
        return b""


def read_stream(
    stream: BinaryIO, assembler: LineAssembler, size: int = BLOCK_BYTES
) -> tuple[int, list[Chunk]]:
    """One read of a decompressing ``stream`` (at most ``size`` bytes): (bytes consumed, the
    chunks ``assembler`` made of them); 0 bytes: its end. A partial last line is held by the
    assembler (a stream cannot be read again)."""
    data = stream.read(size)
    if not data:
        return 0, []
    return len(data), assembler.feed(data)


def skip_stream(stream: BinaryIO, n: int, size: int = BLOCK_BYTES) -> int:
    """Read and drop the first ``n`` bytes of ``stream``, ``size`` at a time; the bytes dropped."""
    done = 0
    while done < n:
        data = stream.read(min(size, n - done))
        if not data:
            break
        done += len(data)
    return done
