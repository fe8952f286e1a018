"""The file tailer's write-only sweeps: real files, the real inotify hub, a fake clock.

When inotify woke a source for nothing but writes (``IN_MODIFY``/``IN_CLOSE_WRITE``) to files
it reads, a sweep only reads what was appended to those (``FileSource._sweep_written``); any
other event, the safety net, ``read_now``, a problem or a full sweep due makes it a full one.
The tests hand the hub the events queued so far themselves (``Tail.pump``), so a sweep can be
made while a rotation's or a truncation's events still wait in the kernel's queue: the case a
write-only sweep must not get wrong.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from detector.sources import files
from tests.test_files_source import (
    QUIET,
    Op,
    append,
    config,
    run_scenario,
    tailing,
    watched_ops_strategy,
)


async def test_a_write_only_wake_reads_the_written_file_and_anything_else_sweeps_in_full(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, "one\n")
    async with tailing(config(tmp_path / "*.log"), watch=True) as t:
        assert await t.poll() == ["one"]
        sweeps = t.source._sweeps
        assert sweeps == {"full": 1, "written": 0}
        append(log, "two\n")
        t.pump()
        assert await t.poll() == ["two"]
        assert sweeps == {"full": 1, "written": 1}
        (cp,) = t.committed.values()
        assert cp["offset"] == len(b"one\ntwo\n")
        append(tmp_path / "new.log", "in a new file\n")  # IN_CREATE: a full sweep finds it
        append(log, "three\n")
        t.pump()
        assert sorted(await t.poll()) == ["in a new file", "three"]
        assert sweeps == {"full": 2, "written": 1}
        assert await t.poll() == []  # nothing told since: a full sweep, and nothing found
        assert sweeps["full"] == 3


async def test_a_rotation_in_the_window_of_a_write_only_sweep_loses_nothing(
    tmp_path: Path,
) -> None:
    """The write is told, the rename and the new file are not yet: the write-only sweep reads
    the renamed file by its descriptor (its late lines too); the rotation's events then make a
    full sweep, which drains it and reads the new file. Each line once, in order."""
    log = tmp_path / "app.log"
    append(log, "old 1\n")
    async with tailing(config(log), watch=True) as t:
        assert await t.poll() == ["old 1"]
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"old 2\n")
            t.pump()
            log.rename(tmp_path / "app.log.1")
            os.write(fd, b"old 3, after the rename\n")
        finally:
            os.close(fd)
        append(log, "new 1\n")
        assert await t.poll() == ["old 2", "old 3, after the rename"]
        assert t.source._sweeps["written"] == 1
        t.pump()
        assert await t.poll() == ["new 1"]
        t.clock.advance(QUIET)
        await t.drain()
        assert t.texts() == ["old 1", "old 2", "old 3, after the rename", "new 1"]
        assert [v["path"] for v in t.committed.values() if "path" in v] == [str(log)]


async def test_a_copytruncate_in_the_window_of_a_write_only_sweep_loses_nothing(
    tmp_path: Path,
) -> None:
    """Lines appended after the last sweep, then the file copied and truncated, then a new
    line, all before the write-only sweep runs: it notices the truncation by the descriptor
    (shorter than what was read), reads the file from 0, and the full sweep that follows reads
    the copy from where the tailer was. Nothing is lost or counted twice."""
    log = tmp_path / "app.log"
    append(log, "".join(f"line {i} of the first content\n" for i in range(5)))
    async with tailing(config(log), watch=True) as t:
        assert len(await t.poll()) == 5
        append(log, "unread, then copied\n")
        t.pump()
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        append(log, "after\n")
        assert await t.poll() == ["after"]
        assert t.source._sweeps["written"] == 1
        assert await t.drain() == ["unread, then copied"]  # the next sweep is a full one
        t.pump()
        assert await t.drain() == []
        counts = Counter(t.texts())
        assert counts["unread, then copied"] == counts["after"] == 1
        assert sum(counts.values()) == 7 and max(counts.values()) == 1


async def test_a_truncation_told_as_a_write_is_read_from_the_start(tmp_path: Path) -> None:
    """``> file`` then a write: only IN_MODIFY events, so a write-only sweep; it sees the
    file shorter than what was read and starts again at 0."""
    log = tmp_path / "app.log"
    append(log, "a rather long first line\n")
    async with tailing(config(log), watch=True) as t:
        assert await t.poll() == ["a rather long first line"]
        with log.open("w") as f:
            f.write("short\n")
        t.pump()
        assert await t.poll() == ["short"]
        assert t.source._sweeps["written"] == 1
        (cp,) = (v for k, v in t.committed.items() if k != files.DONE_KEY)
        assert cp["offset"] == len(b"short\n")


async def test_a_full_sweep_follows_every_full_sweep_every_even_under_steady_writes(
    tmp_path: Path,
) -> None:
    """A new file whose events were lost (taken off the queue unseen) is found by the full
    sweep due FULL_SWEEP_EVERY after the last, though writes keep every wake-up write-only."""
    log = tmp_path / "app.log"
    append(log, "first\n")
    async with tailing(config(tmp_path / "*.log"), watch=True) as t:
        assert await t.poll() == ["first"]
        append(tmp_path / "lost.log", "its events were lost\n")
        assert t.source._sub is not None
        hub = t.source._sub.hub
        with_events = os.read(hub.fd, 65536)  # the IN_CREATE never reaches the source
        assert with_events
        append(log, "a write\n")
        t.pump()
        assert await t.poll() == ["a write"]
        assert t.source._sweeps == {"full": 1, "written": 1}
        t.clock.advance(files.FULL_SWEEP_EVERY)
        append(log, "another write\n")
        t.pump()
        assert sorted(await t.poll()) == ["another write", "its events were lost"]
        assert t.source._sweeps == {"full": 2, "written": 1}


async def test_read_now_sweeps_in_full_whatever_inotify_told(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, "first\n")
    async with tailing(config(tmp_path / "*.log"), watch=True) as t:
        assert await t.poll() == ["first"]
        assert t.source._sub is not None
        append(tmp_path / "lost.log", "events lost\n")
        os.read(t.source._sub.hub.fd, 65536)
        append(log, "a write\n")
        t.pump()
        t.source.read_now()
        assert sorted(await t.poll()) == ["a write", "events lost"]
        assert t.source._sweeps == {"full": 2, "written": 0}


async def test_batches_read_steady_writes_with_write_only_sweeps(tmp_path: Path) -> None:
    """Through ``batches()`` and the loop's own reading of inotify: every line once, and the
    wake-ups after the first are write-only sweeps."""
    log = tmp_path / "app.log"
    log.touch()
    async with tailing(config(log), watch=True) as t:
        source = t.source
        got: list[str] = []
        async with asyncio.timeout(10):
            gen = source.batches()
            try:
                first = asyncio.ensure_future(anext(gen))
                await source.opened.wait()
                await first
                for i in range(20):
                    append(log, f"line {i}\n")
                    while len(got) <= i:
                        got += [ln.text for ln in (await anext(gen)).all_lines()]
            finally:
                await gen.aclose()
        assert got == [f"line {i}" for i in range(20)]
        assert source._sweeps["written"] >= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=watched_ops_strategy)
def test_any_mix_of_writes_rotations_truncations_restarts_and_late_events_yields_the_lines(
    ops: list[Op],
) -> None:
    """The property of ``test_files_source`` with the source following real inotify events,
    handed to it at random points: write-only sweeps among rotations, truncations and restarts
    whose events are not yet taken still yield exactly the lines written, in order."""
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run_scenario(Path(d), ops, watch=True))
