"""The file tailer against real files in tmp_path: appends, rotations, truncations, bad input.

Most tests drive the source with ``poll_once`` (one deterministic sweep) through :class:`Tail`,
which commits checkpoints the way the service does. A few run ``batches()`` with the real inotify
watcher and a clock that never moves, so only inotify can wake them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.clock import FakeClock
from detector.model import FileSourceConfig
from detector.sources import files, watch
from detector.sources.base import Batch, Line
from detector.sources.files import FileSource

QUIET = timedelta(seconds=5)


def config(
    *paths: Path | str,
    start_at: Literal["end", "beginning"] = "beginning",
    max_line_bytes: int = 64 * 1024,
) -> FileSourceConfig:
    return FileSourceConfig(
        name="app",
        paths=tuple(str(p) for p in paths),
        start_at=start_at,
        max_line_bytes=max_line_bytes,
        poll_interval=timedelta(seconds=1),
    )


def append(path: Path, data: bytes | str) -> None:
    with path.open("ab") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def file_checkpoints(committed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The checkpoints of files being read (not the list of rotated files read to their end)."""
    return {k: v for k, v in committed.items() if k != files.DONE_KEY}


class Tail:
    """A FileSource driven by poll_once whose checkpoints are committed like the service does."""

    def __init__(
        self, cfg: FileSourceConfig, clock: FakeClock | None = None, *, watch: bool = False
    ) -> None:
        self.cfg = cfg
        self.clock = clock or FakeClock()
        self.watch = watch
        self.committed: dict[str, dict[str, Any]] = {}
        self.lines: list[Line] = []
        self.batches: list[Batch] = []
        self.source = FileSource(cfg, {}, self.clock, drain_quiet=QUIET, watch=watch)
        self.source.subscribe()  # watch=True: its sweeps follow what inotify told (pump())

    def pump(self) -> None:
        """Let the source's inotify hub read the events queued so far, now (the agent's loop
        does it on its own, at most once every COALESCE_S)."""
        assert self.source._sub is not None
        self.source._sub.hub._on_readable()

    def commit(self, batches: list[Batch]) -> None:
        for b in batches:
            self.batches.append(b)
            self.lines.extend(b.all_lines())
            for cp in b.checkpoints:
                if cp.delete:
                    self.committed.pop(cp.key, None)
                else:
                    self.committed[cp.key] = dict(cp.value)

    async def poll(self) -> list[str]:
        batches = await self.source.poll_once()
        self.commit(batches)
        return [line.text for b in batches for line in b.all_lines()]

    async def drain(self) -> list[str]:
        """Poll until a sweep produces nothing; return the texts read."""
        texts: list[str] = []
        for _ in range(200):
            batches = await self.source.poll_once()
            if not batches:
                return texts
            self.commit(batches)
            texts += [line.text for b in batches for line in b.all_lines()]
        raise AssertionError("the source never went idle")

    async def restart(self) -> None:
        """A new FileSource from the committed checkpoints, as after the agent restarts."""
        await self.source.aclose()
        self.source = FileSource(
            self.cfg, dict(self.committed), self.clock, drain_quiet=QUIET, watch=self.watch
        )
        self.source.subscribe()

    def texts(self) -> list[str]:
        return [line.text for line in self.lines]


@contextlib.asynccontextmanager
async def tailing(
    cfg: FileSourceConfig, clock: FakeClock | None = None, *, watch: bool = False
) -> AsyncIterator[Tail]:
    tail = Tail(cfg, clock, watch=watch)
    try:
        yield tail
    finally:
        await tail.source.aclose()


async def collect_until(
    batches: AsyncIterator[Batch], done: Callable[[list[str]], bool], within: float = 10.0
) -> list[str]:
    """Consume ``batches`` until ``done(texts so far)``; fail after ``within`` seconds."""
    texts: list[str] = []
    async with asyncio.timeout(within):
        async for batch in batches:
            texts += [line.text for line in batch.all_lines()]
            if done(texts):
                return texts
    raise AssertionError("batches() ended")


# ---------------------------------------------------------------- lines


async def test_appended_lines_come_out_in_order_with_the_offset_after_the_last(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, "one\ntwo\n")
    async with tailing(config(log)) as t:
        assert await t.drain() == ["one", "two"]
        append(log, "three\n")
        assert await t.drain() == ["three"]
        (cp,) = t.committed.values()
        st = log.stat()
        assert cp["offset"] == st.st_size == len("one\ntwo\nthree\n")
        assert (cp["dev"], cp["ino"], cp["path"]) == (st.st_dev, st.st_ino, str(log))
        assert all(line.path == str(log) and line.source == "app" for line in t.lines)
        assert all(line.event_at is None for line in t.lines)


async def test_half_written_line_is_held_until_its_newline_arrives(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "done\nhalf")
    async with tailing(config(log)) as t:
        assert await t.drain() == ["done"]
        assert next(iter(t.committed.values()))["offset"] == len("done\n")
        append(log, "-way")
        assert await t.drain() == []
        assert next(iter(t.committed.values()))["offset"] == len("done\n")
        append(log, " there\n")
        assert await t.drain() == ["half-way there"]
        assert next(iter(t.committed.values()))["offset"] == log.stat().st_size


async def test_crlf_line_endings_are_stripped(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, b"dos\r\nunix\n\r\nsplit\r")
    async with tailing(config(log)) as t:
        await t.drain()
        append(log, b"\nkeep\rinside\n")
        await t.drain()
        assert t.texts() == ["dos", "unix", "", "split", "keep\rinside"]


async def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, b"bad \xff\xfe byte\ncut \xe2\x82\nnul \x00 ok\n")
    async with tailing(config(log)) as t:
        assert await t.drain() == ["bad \ufffd\ufffd byte", "cut \ufffd", "nul \x00 ok"]


async def test_huge_line_is_cut_counted_and_never_held_whole(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    size = 8 * files.BLOCK_BYTES  # 32 MiB: far more than the reads the tailer holds at once
    with log.open("wb") as f:
        f.write(b"before\n")
        for _ in range(size // (1 << 20)):
            f.write(b"x" * (1 << 20))
        f.write(b"\nafter\n")
    async with tailing(config(log, max_line_bytes=1000)) as t:
        tracemalloc.start()
        try:
            texts = await t.drain()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert texts == ["before", "x" * 1000 + f" …[truncated {size - 1000} bytes]", "after"]
        assert sum(b.truncated_lines for b in t.batches) == 1
        assert peak < 3 * files.BLOCK_BYTES  # a read or two, never the whole line
        assert next(iter(t.committed.values()))["offset"] == log.stat().st_size


async def test_long_lines_are_cut_at_max_line_bytes_also_across_reads(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "a" * 12 + "\n" + "short\n" + "b" * 5)
    async with tailing(config(log, max_line_bytes=10)) as t:
        await t.drain()
        append(log, "b" * 7 + "\r\n" + "c" * 10 + "\r\n")
        await t.drain()
        assert t.texts() == [
            "a" * 10 + " …[truncated 2 bytes]",
            "short",
            "b" * 10 + " …[truncated 2 bytes]",
            "c" * 10,
        ]
        assert sum(b.truncated_lines for b in t.batches) == 2


async def test_many_decoded_lines_are_split_into_batches_each_with_its_own_offset(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, "0")  # a pending partial line first, completed by the big block
    async with tailing(config(log)) as t:
        assert await t.drain() == []
        # CRLF endings: the lines must be decoded one by one (not passed on as a block)
        append(log, "\r\n" + "".join(f"{i}\r\n" for i in range(1, 25_000)))
        texts = await t.drain()
        assert texts == [str(i) for i in range(25_000)]
        line_batches = [b for b in t.batches if b.lines]
        assert all(b.block is None for b in t.batches)
        assert max(len(b.lines) for b in line_batches) <= 10_000
        for b in line_batches:  # each checkpoint points right after its batch's last line
            last = int(b.lines[-1].text)
            offset = sum(len(f"{i}\r\n") for i in range(last + 1))
            assert b.checkpoints[-1].value["offset"] == offset


async def test_plain_lines_go_on_as_raw_blocks_cut_at_line_ends_with_exact_offsets(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, "0")  # a pending partial line first, completed by the next read
    n = 5 * files.BLOCK_BYTES // 150  # lines of ~160 bytes: over four reads' worth
    lines = [f"{i} caf\u00e9 " + "x" * (i % 300) for i in range(1, n)]
    async with tailing(config(log)) as t:
        assert await t.drain() == []
        append(log, "\n" + "".join(f"{line}\n" for line in lines) + "partial")
        texts = await t.drain()
        assert texts == ["0", *lines]  # the partial last line waits for its newline
        blocks = [b for b in t.batches if b.block is not None]
        assert len(blocks) >= 4 and all(not b.lines for b in blocks)  # cut at read boundaries
        data = log.read_bytes()
        for b in blocks:
            assert b.block is not None and b.block.endswith(b"\n")
            assert len(b.block) <= files.BLOCK_BYTES and b"\r" not in b.block
            offset = b.checkpoints[-1].value["offset"]
            assert data[offset - len(b.block) : offset] == b.block  # exactly what was read
            assert b.block_path == str(log)
        assert t.committed[next(iter(t.committed))]["offset"] == len(data) - len("partial")
        append(log, "\n")
        assert await t.drain() == ["partial"]


# ---------------------------------------------------------------- start position


async def test_start_at_end_skips_what_is_there_but_reads_what_comes(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "old\nolder\npart")
    async with tailing(config(log, start_at="end")) as t:
        assert await t.drain() == []
        append(log, "ial\nnew\n")
        assert await t.drain() == ["partial", "new"]


async def test_start_at_beginning_reads_existing_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "old\nolder\n")
    async with tailing(config(log, start_at="beginning")) as t:
        assert await t.drain() == ["old", "older"]


async def test_start_at_end_commits_its_position_so_a_restart_loses_nothing(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, "history\n")
    async with tailing(config(log, start_at="end")) as t:
        assert await t.drain() == []
        assert next(iter(t.committed.values()))["offset"] == len("history\n")
        await t.restart()
        append(log, "while restarting\n")
        assert await t.drain() == ["while restarting"]


async def test_file_created_after_start_is_read_from_its_beginning_despite_start_at_end(
    tmp_path: Path,
) -> None:
    async with tailing(config(tmp_path / "*.log", start_at="end")) as t:
        append(tmp_path / "old.log", "skipped\n")
        await t.restart()  # old.log exists at start-up: start_at=end applies
        assert await t.drain() == []
        append(tmp_path / "new.log", "first\nsecond\n")
        assert await t.drain() == ["first", "second"]


async def test_caught_up_once_every_file_present_at_start_was_read_to_its_end(
    tmp_path: Path,
) -> None:
    reads = files.FILE_BLOCKS_PER_SWEEP + 1  # more than one sweep reads of a file
    (tmp_path / "big.log").write_bytes((b"y" * 99 + b"\n") * (reads * files.BLOCK_BYTES // 100))
    (tmp_path / "small.log").write_text("s\n")
    async with tailing(config(tmp_path / "*.log")) as t:
        assert not t.source.caught_up()
        await t.poll()
        assert not t.source.caught_up()
        await t.drain()
        assert t.source.caught_up()
        assert t.source.status()["caught_up"] is True


async def test_a_sweep_out_of_budget_goes_on_from_the_next_file_so_every_busy_file_is_read(
    tmp_path: Path,
) -> None:
    """A sweep reads SWEEP_BLOCKS blocks; the next one starts at the file the last one did not
    reach, so a file that keeps its backlog cannot hold back the files after it."""
    blocks = files.SWEEP_BLOCKS + 1  # more than one sweep of each file
    lines = blocks * files.BLOCK_BYTES // 100
    for name in ("a.log", "b.log", "c.log"):  # other first bytes: not copies of one another
        (tmp_path / name).write_bytes((name[0].encode() * 99 + b"\n") * lines)
    async with tailing(config(tmp_path / "*.log")) as t:
        order: list[str] = []
        for _ in range(6):
            batches = await t.source.poll_once()
            t.commit(batches)
            read = [Path(b.block_path or "").name for b in batches if b.block]
            assert len(read) <= files.SWEEP_BLOCKS
            order.extend(dict.fromkeys(read))
        assert order[:3] == ["a.log", "b.log", "c.log"]  # each file's turn before any second
        await t.drain()
        sizes = {
            Path(cp["path"]).name: cp["offset"] for cp in file_checkpoints(t.committed).values()
        }
        assert sizes == {n: (tmp_path / n).stat().st_size for n in ("a.log", "b.log", "c.log")}
        assert len(t.lines) == 3 * lines


async def test_batches_are_let_go_of_as_they_are_handed_over(tmp_path: Path) -> None:
    """What a sweep read is not held by the source once the consumer took it: the memory in
    flight is what waits in the consumer, not a sweep's whole list."""
    line = b"w" * 99 + b"\n"
    (tmp_path / "big.log").write_bytes(line * (files.SWEEP_BLOCKS * files.BLOCK_BYTES // 100))
    source = FileSource(config(tmp_path / "*.log"), {}, FakeClock(), watch=False)
    gen = source.batches()
    try:
        first = await anext(gen)
        second = await anext(gen)  # the next batch of the same sweep
        assert first.block is not None and second.block is not None
        gc.collect()
        # only this test's frame holds them: no list of the source's (its sweep's batches)
        for batch in (first, second):
            assert not [r for r in gc.get_referrers(batch) if isinstance(r, list)]
    finally:
        await gen.aclose()
        await source.aclose()


# ---------------------------------------------------------------- rotation and truncation


async def test_rename_rotation_reads_lines_written_to_the_old_file_after_the_rename(
    tmp_path: Path,
) -> None:
    log, old = tmp_path / "app.log", tmp_path / "app.log.1"
    append(log, "a1\n")
    async with tailing(config(log)) as t:
        assert await t.drain() == ["a1"]
        with log.open("ab") as writer:  # the application keeps its file open across the rename
            writer.write(b"a2\n")
            writer.flush()
            log.rename(old)
            writer.write(b"a3 late\n")
            writer.flush()
            assert await t.drain() == ["a2", "a3 late"]
            append(log, "b1\n")
            writer.write(b"a4 later\n")
            writer.flush()
            assert await t.drain() == ["a4 later", "b1"]  # old file first
        old_key = f"{old.stat().st_dev}:{old.stat().st_ino}"
        assert old_key in t.committed
        t.clock.advance(QUIET)
        assert await t.drain() == []
        assert old_key not in t.committed  # retired: checkpoint deleted
        assert [s["path"] for s in t.source.status()["files"]] == [str(log)]
        append(log, "b2\n")
        assert await t.drain() == ["b2"]


async def test_rotated_file_is_kept_until_quiet_and_its_partial_last_line_is_emitted(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, "a1\nunfinished")
    async with tailing(config(log)) as t:
        assert await t.drain() == ["a1"]
        log.rename(tmp_path / "app.log.1")
        assert await t.drain() == []
        t.clock.advance(QUIET)
        assert await t.drain() == []  # no new file at the path yet: the writer may still write
        assert len(t.committed) == 1
        append(log, "b1\n")
        assert await t.drain() == ["unfinished", "b1"]  # quiet and replaced: finished first
        assert len(file_checkpoints(t.committed)) == 1  # and remembered as read to its end:
        assert t.committed[files.DONE_KEY]["files"][0][4] == len("a1\nunfinished")


async def test_copytruncate_restarts_at_zero(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "first line\nsecond line\n")
    async with tailing(config(log)) as t:
        assert await t.drain() == ["first line", "second line"]
        shutil.copyfile(log, tmp_path / "app.log.1")
        with log.open("r+b") as f:
            f.truncate(0)
        append(log, "after\n")
        assert await t.drain() == ["after"]
        assert next(iter(t.committed.values()))["offset"] == len("after\n")


async def test_truncation_then_a_longer_rewrite_is_caught_by_the_fingerprint(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, "short\n")
    async with tailing(config(log)) as t:
        assert await t.drain() == ["short"]
        log.write_text("rewritten from scratch\nand more\n")  # same inode, bigger than before
        assert await t.drain() == ["rewritten from scratch", "and more"]


async def test_delete_and_recreate_reads_the_new_file_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "old\n")
    async with tailing(config(log)) as t:
        assert await t.drain() == ["old"]
        old_key = next(iter(t.committed))
        log.unlink()
        assert await t.drain() == []
        append(log, "new 1\nnew 2\n")
        assert await t.drain() == ["new 1", "new 2"]
        t.clock.advance(QUIET)
        await t.drain()
        st = log.stat()
        assert list(t.committed) == [f"{st.st_dev}:{st.st_ino}"]
        assert old_key not in t.committed or old_key == f"{st.st_dev}:{st.st_ino}"


async def test_glob_picks_up_a_new_file_from_its_beginning(tmp_path: Path) -> None:
    append(tmp_path / "a.log", "a\n")
    async with tailing(config(tmp_path / "*.log", start_at="end")) as t:
        assert await t.drain() == []
        append(tmp_path / "b.log", "b1\nb2\n")
        append(tmp_path / "ignored.txt", "no\n")
        assert await t.drain() == ["b1", "b2"]
        assert {line.path for line in t.lines} == {str(tmp_path / "b.log")}


# ---------------------------------------------------------------- restarts


async def test_restart_resumes_from_the_last_committed_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "1\n2\n")
    async with tailing(config(log)) as t:
        await t.drain()
        append(log, "3\n4\n")
        await t.source.poll_once()  # read but never committed: the agent crashed
        await t.restart()
        append(log, "5\n")
        await t.drain()
        assert t.texts() == ["1", "2", "3", "4", "5"]


async def test_restart_finishes_a_file_rotated_while_the_agent_was_down(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "a1\n")
    async with tailing(config(tmp_path / "*.log", start_at="end")) as t:
        await t.drain()
        await t.source.aclose()
        append(log, "a2 before rotation\n")
        log.rename(tmp_path / "app.log.1")
        append(log, "b1 in the new file\n")
        await t.restart()
        await t.drain()
        assert t.texts() == ["a2 before rotation", "b1 in the new file"]


async def test_inode_reused_by_another_file_is_read_from_zero(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "a brand new file on a recycled inode\n")
    st = log.stat()
    stale = {"path": str(log), "dev": st.st_dev, "ino": st.st_ino, "fp": "5:0000", "offset": 20}
    async with tailing(config(log, start_at="end")) as t:
        await t.source.aclose()
        t.committed = {f"{st.st_dev}:{st.st_ino}": stale}
        await t.restart()
        assert await t.drain() == ["a brand new file on a recycled inode"]


async def test_garbage_checkpoint_is_ignored_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "line\n")
    st = log.stat()
    garbage = {"path": 7, "dev": "x", "ino": None, "fp": 3, "offset": "far"}
    async with tailing(config(log, start_at="end")) as t:
        await t.source.aclose()
        t.committed = {f"{st.st_dev}:{st.st_ino}": garbage, "junk": {}}
        await t.restart()
        assert await t.drain() == ["line"]  # its key matched: read from 0 rather than guess
        assert t.source.problems() == []
        assert set(t.committed) == {f"{st.st_dev}:{st.st_ino}"}


async def test_checkpoint_of_a_file_gone_for_good_is_deleted(tmp_path: Path) -> None:
    gone = {"path": str(tmp_path / "gone.log"), "dev": 1, "ino": 2, "fp": "0:", "offset": 0}
    async with tailing(config(tmp_path / "*.log")) as t:
        await t.source.aclose()
        t.committed = {"1:2": gone}
        await t.restart()
        await t.drain()
        assert t.committed == {}


# ---------------------------------------------------------------- problems


async def test_directory_where_a_log_should_be_is_a_problem_that_clears(tmp_path: Path) -> None:
    # Tests run as root, for whom chmod 000 does not stop reads: a directory is unreadable as a log.
    log = tmp_path / "app.log"
    log.mkdir()
    async with tailing(config(log)) as t:
        assert await t.drain() == []
        (problem,) = t.source.problems()
        assert problem.key == f"file:{log}" and "directory" in problem.message
        log.rmdir()
        append(log, "readable now\n")
        assert await t.drain() == ["readable now"]
        assert t.source.problems() == []


async def test_file_replaced_by_a_directory_is_drained_and_reported(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "a\n")
    async with tailing(config(log)) as t:
        await t.drain()
        with log.open("ab") as writer:
            log.rename(tmp_path / "moved")
            log.mkdir()
            writer.write(b"b\n")
        assert await t.drain() == ["b"]
        assert [p.key for p in t.source.problems()] == [f"file:{log}"]
        t.clock.advance(QUIET)
        await t.drain()
        assert t.committed == {}


async def test_broken_symlink_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    link = tmp_path / "app.log"
    link.symlink_to(tmp_path / "missing-target")
    async with tailing(config(tmp_path / "*.log")) as t:
        assert await t.drain() == []
        (problem,) = t.source.problems()
        assert "broken symlink" in problem.message
        append(tmp_path / "missing-target", "target appeared\n")
        assert await t.drain() == ["target appeared"]
        assert t.source.problems() == []


async def test_missing_explicit_path_is_a_problem_until_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    async with tailing(config(log)) as t:
        await t.drain()
        assert "does not exist" in t.source.problems()[0].message
        append(log, "hello\n")
        assert await t.drain() == ["hello"]
        assert t.source.problems() == []


# ---------------------------------------------------------------- batches() and inotify


async def test_batches_wake_on_inotify_with_a_clock_that_never_moves(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "before\n")
    source = FileSource(config(tmp_path / "*.log"), {}, FakeClock())
    try:
        async with contextlib.aclosing(source.batches()) as batches:
            assert await collect_until(batches, lambda t: "before" in t) == ["before"]
            assert source.status()["watcher"] == "inotify"
            append(log, "appended\n")
            assert await collect_until(batches, lambda t: "appended" in t) == ["appended"]
            log.rename(tmp_path / "app.log.1")
            append(log, "rotated\n")
            append(tmp_path / "other.log", "new file\n")
            texts = await collect_until(batches, lambda t: {"rotated", "new file"} <= set(t))
            assert sorted(texts) == ["new file", "rotated"]
    finally:
        await source.aclose()


async def test_the_safety_net_finds_a_write_inotify_cannot_see(tmp_path: Path) -> None:
    """A write through a hard link in an unwatched directory makes no inotify event in the
    watched one: the hub's stat-only check, every poll_interval of the clock, finds it."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    log = tmp_path / "logs" / "app.log"
    append(log, "before\n")
    link = tmp_path / "elsewhere" / "link"
    os.link(log, link)
    clock = FakeClock()
    source = FileSource(config(log), {}, clock)
    try:
        async with contextlib.aclosing(source.batches()) as batches:
            assert await collect_until(batches, lambda t: "before" in t) == ["before"]
            assert source.status()["watcher"] == "inotify"
            append(link, "unseen by inotify\n")
            clock.advance(timedelta(seconds=1))  # one poll_interval; a full sweep is 60 s away
            assert await collect_until(batches, bool) == ["unseen by inotify"]
            assert source.status()["watcher"] == "inotify"  # found by the net, not a poll mode
    finally:
        await source.aclose()


async def test_sources_share_one_inotify_watch_per_directory(tmp_path: Path) -> None:
    """Two sources on two files of one directory: one hub, one watch on the directory; an
    event on one file wakes only its source (the other source's batches stay empty)."""
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.touch()
    b.touch()
    clock = FakeClock()
    sa = FileSource(config(a), {}, clock)
    sb = FileSource(FileSourceConfig(name="b", paths=(str(b),), start_at="beginning"), {}, clock)
    try:
        async with (
            contextlib.aclosing(sa.batches()) as ba,
            contextlib.aclosing(sb.batches()) as bb,
        ):
            assert await collect_until(ba, lambda t: True) == []
            assert await collect_until(bb, lambda t: True) == []
            assert sa._sub is not None and sb._sub is not None
            hub = sa._sub.hub
            assert sb._sub.hub is hub
            assert list(hub._wd_of) == [str(tmp_path)]
            assert sa._wants(str(tmp_path), "a.log") and sa._wants(str(tmp_path), "a.log.1")
            assert not sa._wants(str(tmp_path), "b.log")
            append(b, "to b\n")
            assert await collect_until(bb, bool) == ["to b"]
            append(a, "to a\n")
            assert await collect_until(ba, bool) == ["to a"]
    finally:
        await sa.aclose()
        await sb.aclose()
    assert not hub._subs and hub._wd_of == {}  # the last source out closed it


async def test_without_inotify_batches_sweep_every_poll_interval(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    clock = FakeClock()
    source = FileSource(config(log), {}, clock, watch=False)
    try:
        async with contextlib.aclosing(source.batches()) as batches:
            assert await collect_until(batches, lambda t: True) == []  # start-up checkpoint only
            append(log, "polled\n")
            task = asyncio.ensure_future(collect_until(batches, lambda t: "polled" in t))
            while not task.done():
                clock.advance(timedelta(seconds=1))
                await asyncio.sleep(0.01)
            assert task.result() == ["polled"]
            assert source.status()["watcher"] == "polling"
    finally:
        await source.aclose()


# ---------------------------------------------------------------- property: exactly the lines


MAX_LINE = 24
Op = tuple[Any, ...]
_ops = [
    st.tuples(
        st.just("append"),
        st.sampled_from("ab"),
        st.lists(st.integers(0, 30), max_size=4),  # payload lengths of the new lines
        st.floats(0, 1),  # where the write stops inside the queued bytes
    ),
    st.tuples(st.just("rotate"), st.sampled_from("ab"), st.integers(0, 2)),
    st.tuples(st.just("copytruncate"), st.sampled_from("ab")),
    st.tuples(st.just("recreate"), st.sampled_from("ab"), st.integers(0, 2)),
    st.tuples(st.just("poll")),
    st.tuples(st.just("restart"), st.booleans()),
    st.tuples(st.just("tick")),
]
ops_strategy = st.lists(st.one_of(*_ops), max_size=25)
watched_ops_strategy = st.lists(
    st.one_of(
        *_ops,
        st.tuples(st.just("pump")),
        # whole lines written, their events taken, a sweep: the write-only sweep, if nothing
        # else is pending (a rotation's events taken by an earlier pump, a draining file…)
        st.tuples(st.just("written"), st.sampled_from("ab"), st.lists(st.integers(0, 12))),
    ),
    max_size=30,
)


def expected_text(line: str) -> str:
    raw = line.encode()
    if len(raw) <= MAX_LINE:
        return line
    return raw[:MAX_LINE].decode() + f" …[truncated {len(raw) - MAX_LINE} bytes]"


class Writer:
    """One logical log file: an application appending through an O_APPEND descriptor."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}.log"
        self.name = name
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.queued = b""
        self.seq = 0
        self.generation = 0
        self.written: list[str] = []

    def new_lines(self, lengths: list[int]) -> None:
        for n in lengths:
            line = f"{self.name}{self.seq:04d}." + "x" * n
            self.seq += 1
            self.written.append(line)
            self.queued += line.encode() + b"\n"

    def write(self, fraction: float = 1.0) -> None:
        cut = round(len(self.queued) * fraction)
        os.write(self.fd, self.queued[:cut])
        self.queued = self.queued[cut:]

    def rotate(self, late: int) -> None:
        self.generation += 1
        os.rename(self.path, self.path.with_name(f"{self.path.name}.{self.generation}"))
        self.new_lines([3] * late)
        self.write()  # the application still writes to the renamed file, then reopens
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def recreate(self, late: int) -> None:
        """Delete the file while the application still writes to it, then it opens a new one."""
        os.unlink(self.path)
        self.new_lines([4] * late)
        self.write()
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def copytruncate(self) -> None:
        self.generation += 1
        shutil.copyfile(self.path, self.path.with_name(f"{self.path.name}.c{self.generation}"))
        os.truncate(self.path, 0)


async def run_scenario(directory: Path, ops: list[Op], *, watch: bool = False) -> None:
    """``watch``: the source follows inotify as in the agent; ``pump`` ops hand it the events
    queued so far, so a sweep may only read what it was told was written while a rotation's
    events still wait in the kernel's queue."""
    writers = {n: Writer(directory, n) for n in "ab"}
    tail = Tail(config(directory / "*.log", max_line_bytes=MAX_LINE), watch=watch)
    try:
        await tail.poll()  # the agent is running before the files rotate
        for op in ops:
            match op:
                case ("append", name, lengths, fraction):
                    writers[name].new_lines(lengths)
                    writers[name].write(fraction)
                case ("rotate", name, late):
                    writers[name].rotate(late)
                    await tail.poll()  # a sweep sees each generation (see the module docstring)
                case ("copytruncate", name):
                    writers[name].write()  # the application finishes its line, and then:
                    await tail.drain()  # what is not read before a copytruncate is lost to all
                    writers[name].copytruncate()
                case ("recreate", name, late):
                    await tail.poll()  # deleted while we were down would be lost to all
                    writers[name].recreate(late)
                    await tail.drain()  # a deleted file can only be read while still open
                case ("poll",):
                    await tail.poll()
                case ("restart", crash):
                    if crash:
                        await tail.source.poll_once()  # read, never committed
                    await tail.restart()
                case ("tick",):
                    tail.clock.advance(QUIET)
                case ("pump",):
                    tail.pump()
                case ("written", name, lengths):
                    writers[name].new_lines(lengths)
                    writers[name].write()
                    tail.pump()
                    await tail.poll()
        for w in writers.values():
            w.write()
        if watch:
            tail.pump()
        await tail.drain()
        tail.clock.advance(QUIET)
        await tail.drain()
        for name, w in writers.items():
            got = [line.text for line in tail.lines if line.text.startswith(name)]
            assert got == [expected_text(line) for line in w.written]
    finally:
        for w in writers.values():
            os.close(w.fd)
        await tail.source.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy)
def test_any_mix_of_appends_rotations_truncations_and_restarts_yields_exactly_the_lines(
    ops: list[Op],
) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run_scenario(Path(d), ops))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy, block=st.sampled_from([29, 64, 200]))
def test_the_same_holds_with_reads_smaller_than_a_line_or_a_few_lines(
    ops: list[Op], block: int
) -> None:
    """Tiny reads take every path of the reader: a read inside one line (held), a full read cut
    at its last newline (the rest read again), raw blocks and decoded lines side by side."""
    saved = files.BLOCK_BYTES
    files.BLOCK_BYTES = block
    try:
        with tempfile.TemporaryDirectory() as d:
            asyncio.run(run_scenario(Path(d), ops))
    finally:
        files.BLOCK_BYTES = saved


async def test_an_inotify_queue_overflow_wakes_every_source(tmp_path: Path) -> None:
    """A kernel queue overflow (events were dropped, IN_Q_OVERFLOW with wd -1): every source of
    the hub sweeps, and finds what was written meanwhile."""
    a, b = tmp_path / "a" / "a.log", tmp_path / "b" / "b.log"
    for p in (a, b):
        p.parent.mkdir()
        p.touch()
    clock = FakeClock()
    sa = FileSource(config(a), {}, clock)
    sb = FileSource(FileSourceConfig(name="b", paths=(str(b),), start_at="beginning"), {}, clock)
    try:
        async with (
            contextlib.aclosing(sa.batches()) as ba,
            contextlib.aclosing(sb.batches()) as bb,
        ):
            assert await collect_until(ba, lambda t: True) == []
            assert await collect_until(bb, lambda t: True) == []
            assert sa._sub is not None
            hub = sa._sub.hub
            hub.loop.remove_reader(hub._ep.fileno())  # the writes' own events are lost too
            if hub._paused is not None:
                hub._paused.cancel()
            append(a, "lost a\n")
            append(b, "lost b\n")
            woken: set[Any] = set()
            hub._dispatch(watch._EVENT.pack(-1, watch.IN_Q_OVERFLOW, 0, 0), woken)
            assert woken == hub._subs
            for sub in woken:
                sub.wake()
            assert await collect_until(ba, bool) == ["lost a"]
            assert await collect_until(bb, bool) == ["lost b"]
    finally:
        await sa.aclose()
        await sb.aclose()
