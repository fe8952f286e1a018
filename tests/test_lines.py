"""sources/lines.py: one line assembler for the tailer, journald and ``detector test``."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.clock import FakeClock
from detector.model import FileSourceConfig
from detector.replay import replay
from detector.sources.files import FileSource
from detector.sources.lines import LineAssembler
from tests.helpers import config, rule

LIMIT = 16


def expected(data: bytes, limit: int) -> tuple[list[str], int]:
    """The specification: split at LF, one CR before each LF dropped (trailing CRs of an
    unterminated last line all dropped), a line over ``limit`` bytes cut to ``limit`` bytes plus
    " …[truncated N bytes]", decoded with errors="replace"; and how many were cut."""
    parts = data.split(b"\n")
    last = parts.pop()
    raws = [p[:-1] if p.endswith(b"\r") else p for p in parts]
    if last:
        raws.append(last.rstrip(b"\r"))
    out = []
    for raw in raws:
        text = raw[:limit].decode("utf-8", "replace")
        out.append(f"{text} …[truncated {len(raw) - limit} bytes]" if len(raw) > limit else text)
    return out, sum(len(r) > limit for r in raws)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.sampled_from([b"\n", b"\r\n", b"\r", b"a", b"\xff", b"\xe2\x82", b"\xe2\x82\xac"]),
            st.integers(1, 40).map(lambda n: b"x" * n),
        ),
        max_size=40,
    ),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    crlf=st.sampled_from(["decode", "normalize"]),
)
def test_any_chunking_gives_exactly_the_lines_written_cut_as_specified(
    parts: list[bytes], cuts: list[int], crlf: str
) -> None:
    data = b"".join(parts)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    asm = LineAssembler(LIMIT, crlf="normalize" if crlf == "normalize" else "decode")
    got: list[str] = []
    cut_at: list[int] = []
    for a, b in itertools.pairwise(points):
        for chunk in asm.feed(data[a:b]):
            if chunk.block is not None:
                assert chunk.block.endswith(b"\n") and not chunk.texts and not chunk.cut_at
                got += chunk.block.decode("utf-8", "replace").split("\n")[:-1]
            got += chunk.texts
            cut_at += [a + s for s in chunk.cut_at]
        assert len(asm._buf) <= LIMIT  # never more than the limit of a line held
    last = asm.flush()
    if last is not None:
        got += last.texts
        cut_at += [len(data) + s for s in last.cut_at]
    want, n_cut = expected(data, LIMIT)
    assert got == want
    # each cut is reported at the offset where its line starts
    starts = [0] + [i + 1 for i, c in enumerate(data) if c == ord("\n")]
    assert len(cut_at) == n_cut and set(cut_at) <= set(starts)


async def _tail(cfg: FileSourceConfig) -> list[str]:
    source = FileSource(cfg, {}, FakeClock(), watch=False)
    try:
        texts: list[str] = []
        while batches := await source.poll_once():
            texts += [line.text for b in batches for line in b.all_lines()]
        return texts
    finally:
        await source.aclose()


def test_a_70kb_line_is_cut_alike_by_detector_test_and_the_live_tailer(tmp_path: Path) -> None:
    """A match past the cut (at max_line_bytes, 64 KiB by default) is not seen by either."""
    log = tmp_path / "app.log"
    head = "2026-03-01T12:00:00Z host app: "
    long_late = head + "x" * 70_000 + " ERROR late"  # the word only after the cut
    long_early = head + "ERROR early " + "y" * 70_000
    log.write_text(f"{long_late}\n{long_early}\n{head}ERROR short\n")
    src = FileSourceConfig(name="s", paths=(str(log),), start_at="beginning")
    cfg = config(rule("errors", match=r"ERROR (?P<w>\w+)", group_by=("w",), repeat=None))
    cfg = dataclasses.replace(cfg, sources={"s": src})

    res = replay(cfg, [(str(log), "s")])
    assert res.matches["errors"] == 2 and res.truncated_lines == 2
    firing = [n for n in res.notifications if n["notification"] == "firing"]
    samples = [s for n in firing for s in n["samples"]]

    live = asyncio.run(_tail(src))
    limit = src.max_line_bytes
    assert live[0] == long_late[:limit] + f" …[truncated {len(long_late) - limit} bytes]"
    hit = [t for t in live if "ERROR" in t]  # what the rule sees live
    assert {t.split("ERROR ")[1].split(" ")[0] for t in hit} == {"early", "short"}
    assert sorted(n["labels"]["w"] for n in firing) == ["early", "short"]
    # the replay's samples (clipped by the alert payload) are those same live texts
    assert len(samples) == len(hit) and all(
        t.startswith(s[:200]) for s, t in zip(samples, hit, strict=True)
    )


def test_a_cut_line_is_a_warning_with_path_and_offset_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "app.log"
    long = b"z" * 100
    log.write_bytes(b"ok\n" + long + b"\n" + long + b"\nok\n")
    cfg = FileSourceConfig(
        name="app",
        paths=(str(log),),
        start_at="beginning",
        max_line_bytes=10,
        poll_interval=timedelta(seconds=1),
    )
    clock = FakeClock()

    async def run() -> None:
        source = FileSource(cfg, {}, clock, watch=False)
        try:
            await source.poll_once()
            with log.open("ab") as f:  # within the minute: counted, not warned
                f.write(long + b"\n")
            await source.poll_once()
            clock.advance(timedelta(seconds=61))
            with log.open("ab") as f:
                f.write(long + b"\n")
            await source.poll_once()
        finally:
            await source.aclose()

    with caplog.at_level(logging.WARNING, logger="detector.sources.files"):
        asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if "max_line_bytes" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert f"{log}: the line at byte 3 is longer than max_line_bytes (10)" in warnings[0]
    second_offset = len(b"ok\n") * 2 + 3 * (len(long) + 1)  # the fifth line
    assert f"the line at byte {second_offset} " in warnings[1]
    assert "(2 more lines were cut since the last warning)" in warnings[1]


@given(
    st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")), max_size=60).map(
        b"\n".join
    ),
    st.integers(min_value=0, max_value=3000),
    st.integers(min_value=1, max_value=700),
)
@settings(max_examples=200, deadline=None)
def test_read_block_sized_by_what_the_file_holds_gives_the_same_lines(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, expect: int, size: int
) -> None:
    """A read asked for what ``fstat`` said (``expect``, however stale) consumes the file into
    the same lines as whole-block reads."""
    import os

    from detector.sources import lines as lines_mod

    path = tmp_path_factory.mktemp("rb") / "f.log"
    path.write_bytes(data)

    def consume(hint: bool) -> list[str]:
        fd = os.open(path, os.O_RDONLY)
        asm, out, pos = LineAssembler(10_000), [], 0
        try:
            while True:
                known = min(expect, len(data)) - pos if hint else None
                n, chunks = lines_mod.read_block(fd, pos, asm, size, expect=known)
                if not n:
                    return out
                pos += n
                for c in chunks:
                    if c.block is None:
                        out.extend(c.texts)
                    else:
                        out.extend(c.block.decode("utf-8", "replace").split("\n")[:-1])
        finally:
            os.close(fd)

    assert consume(True) == consume(False)


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=20_000), st.sampled_from(b"ab\r\xc3")),
        max_size=30,
    ).map(lambda ls: b"\n".join(bytes([c]) * n for n, c in ls)),
    st.booleans(),
    st.integers(min_value=8 * 1024 + 1, max_value=40_000),
)
@settings(max_examples=150, deadline=None)
def test_a_full_read_found_by_its_last_window_is_the_read_cut_at_its_last_newline(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, final_newline: bool, size: int
) -> None:
    """``read_block`` finds where a full read ends in its last ``LOOKBACK`` bytes and reads
    only that far: the same reads, and the same chunks, as reading ``size`` bytes and cutting
    at the last newline (lines longer than the window, a file ending mid-line, CRs)."""
    import os

    from detector.sources import lines as lines_mod

    assert size > lines_mod.LOOKBACK  # the path under test
    data += b"\n" if final_newline else b""
    path = tmp_path_factory.mktemp("rb") / "f.log"
    path.write_bytes(data)

    def reference(fd: int, pos: int, asm: LineAssembler) -> tuple[int, list[object]]:
        got = os.pread(fd, size, pos)
        if len(got) == size and got.rfind(b"\n") >= 0:
            got = got[: got.rfind(b"\n") + 1]
        return len(got), asm.feed(got) if got else []

    def consume(read: object) -> list[tuple[int, list[object]]]:
        fd = os.open(path, os.O_RDONLY)
        asm, out, pos = LineAssembler(30_000, crlf="normalize"), [], 0
        try:
            while True:
                n, chunks = read(fd, pos, asm)  # type: ignore[operator]
                out.append((n, chunks))
                if not n:
                    last = asm.flush()
                    return [*out, (0, [last])]
                pos += n
        finally:
            os.close(fd)

    got = consume(lambda fd, pos, asm: lines_mod.read_block(fd, pos, asm, size))
    assert got == consume(reference)
    assert sum(n for n, _ in got) == len(data)
