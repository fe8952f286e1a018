"""Rotation while the agent is down or between two sweeps: rotated siblings, compressed copies,
copytruncate, and the losses the tailer can tell (sources/files.py, 9.). In-process tests drive
the tailer with ``Tail`` (tests/test_files_source.py); the end-to-end ones run the agent as a
subprocess, SIGKILL it, and count every line with thresholds that persist across restarts."""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import time
from pathlib import Path

from detector.sources import files
from tests.test_files_source import QUIET, append, config, file_checkpoints, tailing


def lines(first: int, last: int) -> str:
    return "".join(f"line {n:06d} of the log\n" for n in range(first, last + 1))


def texts(first: int, last: int) -> list[str]:
    return lines(first, last).splitlines()


# ---------------------------------------------------------------- in-process


async def test_a_file_created_and_rotated_away_while_down_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, lines(1, 3))
    async with tailing(config(log)) as t:
        await t.drain()
        await t.source.aclose()
        append(log, lines(4, 5))
        log.rename(tmp_path / "app.log.1")  # known by inode
        append(log, lines(6, 8))
        log.rename(tmp_path / "app.log.2")  # never seen
        append(log, lines(9, 9))
        await t.restart()
        await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        assert sorted(t.texts()) == texts(1, 9)
        assert t.source.problems() == []


async def test_old_rotations_from_before_the_last_position_are_not_read_again(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    old = tmp_path / "app.log.7"
    append(old, "an old rotation, from before the agent ever ran\n")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    append(log, lines(1, 2))
    async with tailing(config(log)) as t:
        await t.drain()
        await t.source.aclose()
        append(log, lines(3, 3))
        await t.restart()
        await t.drain()
        assert t.texts() == texts(1, 3)


async def test_a_known_file_compressed_while_down_is_read_from_its_offset(tmp_path: Path) -> None:
    log, rotated = tmp_path / "app.log", tmp_path / "app.log.1"
    append(log, lines(1, 20))
    async with tailing(config(log)) as t:
        await t.drain()
        await t.source.aclose()
        append(log, lines(21, 30))
        log.rename(rotated)
        with rotated.open("rb") as src, gzip.open(tmp_path / "app.log.1.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        rotated.unlink()
        append(log, lines(31, 31))
        await t.restart()
        await t.drain()
        assert t.texts() == texts(1, 31)
        assert t.source.problems() == []
        # read to its end: a later restart does not read it again
        t.clock.advance(QUIET)
        await t.drain()
        await t.restart()
        append(log, lines(32, 32))
        await t.drain()
        assert t.texts() == texts(1, 32)


async def test_copytruncate_reads_the_copy_from_where_it_was_and_the_file_from_zero(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, lines(1, 5))
    async with tailing(config(log)) as t:
        await t.drain()
        append(log, lines(6, 8))  # written, then copied and truncated before the next sweep
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        append(log, lines(9, 10))
        await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        assert sorted(t.texts()) == texts(1, 10)
        assert t.source.problems() == []


async def test_lines_written_between_the_copy_and_the_truncation_are_no_loss_if_read(
    tmp_path: Path,
) -> None:
    """logrotate's copytruncate copies, then truncates: lines the service writes in between are
    not in the copy. When the agent read them from the file before the truncation, the copy is
    shorter than what was read and nothing is missing: no loss is reported, no line twice."""
    log = tmp_path / "app.log"
    append(log, lines(1, 20))  # longer than the fingerprint's 256 bytes, as logs are
    async with tailing(config(log)) as t:
        await t.drain()
        shutil.copyfile(log, tmp_path / "app.log.1")  # the copy: lines 1-20
        append(log, lines(21, 23))  # written before the truncation: only in the file
        await t.drain()  # ... and read from it
        os.truncate(log, 0)
        append(log, lines(24, 25))
        await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        assert t.texts() == texts(1, 25)
        assert t.source.problems() == []


async def test_a_short_copy_after_a_truncation_while_down_is_a_loss_if_lines_came_after(
    tmp_path: Path,
) -> None:
    """The same short copy, but the service wrote more lines after the agent stopped and before
    the truncation: they are in neither file, and the agent cannot know they were not there,
    so the truncation is a loss event (not silently accepted as copytruncate's race)."""
    log = tmp_path / "app.log"
    append(log, lines(1, 20))
    async with tailing(config(log)) as t:
        await t.drain()
        shutil.copyfile(log, tmp_path / "app.log.1")  # the copy: lines 1-20
        append(log, lines(21, 23))
        await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        await t.source.aclose()
        append(log, lines(24, 26))  # written while the agent is down, then truncated away
        os.truncate(log, 0)
        append(log, lines(27, 27))
        await t.restart()
        await t.drain()
        assert t.texts()[-1] == texts(27, 27)[0]
        (p,) = t.source.problems()
        assert p.key == f"truncated:{log}" and "no copy" in p.message


async def test_copytruncate_while_down_reads_the_compressed_copy_from_the_position(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, lines(1, 5))
    async with tailing(config(log)) as t:
        await t.drain()
        await t.source.aclose()
        append(log, lines(6, 8))
        with log.open("rb") as src, gzip.open(tmp_path / "app.log.1.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.truncate(log, 0)
        append(log, lines(9, 9))
        await t.restart()
        await t.drain()
        assert sorted(t.texts()) == texts(1, 9)


async def test_truncation_without_a_copy_is_a_loss_event(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, lines(1, 5))
    async with tailing(config(log)) as t:
        await t.drain()
        os.truncate(log, 0)
        append(log, lines(6, 6))
        await t.drain()
        (p,) = t.source.problems()
        assert p.key == f"truncated:{log}" and p.occurrence == 1
        assert "no copy" in p.message and f"after byte {len(lines(1, 5))}" in p.message
        os.truncate(log, 0)
        append(log, lines(7, 7))
        await t.drain()
        assert [p.occurrence for p in t.source.problems()] == [2]  # a new loss: reported anew


async def test_a_rotation_deleted_before_its_end_while_down_is_a_loss_event(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    async with tailing(config(log)) as t:
        with log.open("ab") as w:
            w.write(lines(1, 4).encode())
            w.flush()
            await t.poll()
            log.rename(tmp_path / "app.log.1")
            w.write(lines(5, 6).encode())
            w.flush()
            await t.source.poll_once()  # it saw the new size, then crashed before reading it
        (cp,) = file_checkpoints(t.committed).values()
        cp["size"] = cp["offset"] + 50
        await t.source.aclose()
        append(log, lines(7, 7))  # first, so that it does not reuse the inode deleted next
        (tmp_path / "app.log.1").unlink()
        await t.restart()
        await t.drain()
        (p,) = t.source.problems()
        assert p.key == f"gone:{log}" and p.occurrence == 1
        assert "at least 50 bytes" in p.message


async def test_a_gap_in_rotation_numbers_is_a_loss_event(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, lines(1, 1))
    async with tailing(config(log)) as t:
        await t.drain()
        await t.source.aclose()
        for n in (3, 1):  # logrotate's numbers: .1 is the newest
            append(tmp_path / f"app.log.{n}", lines(10 * n, 10 * n))
            at = time.time() + 3 - n
            os.utime(tmp_path / f"app.log.{n}", (at, at))
        await t.restart()
        await t.drain()
        (p,) = t.source.problems()
        assert p.key == f"gap:{log}" and f"{log}.2" in p.message


async def test_exclude_keeps_a_glob_off_the_compressed_copies_and_siblings_are_read_once(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    append(log, lines(1, 3))
    cfg = config(tmp_path / "app.log*")
    cfg = dataclasses.replace(cfg, exclude=("*.gz",))
    async with tailing(cfg) as t:
        await t.drain()
        log.rename(tmp_path / "app.log.1")
        append(log, lines(4, 4))
        await t.drain()
        with (tmp_path / "app.log.1").open("rb") as src, gzip.open(f"{src.name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (tmp_path / "app.log.1").unlink()
        append(log, lines(5, 5))
        t.clock.advance(QUIET)
        await t.drain()
        assert t.texts() == texts(1, 5)


async def test_rotated_glob_finds_copies_in_another_directory(tmp_path: Path) -> None:
    log, old = tmp_path / "app.log", tmp_path / "old"
    old.mkdir()
    append(log, lines(1, 2))
    cfg = config(log)
    cfg = dataclasses.replace(cfg, rotated=str(old / "app.log.*"))
    async with tailing(cfg) as t:
        await t.drain()
        await t.source.aclose()
        append(log, lines(3, 4))
        log.rename(old / "app.log.1")  # olddir: the inode is found only through rotated:
        append(log, lines(5, 6))
        log.rename(old / "app.log.2")
        append(log, lines(7, 7))
        await t.restart()
        await t.drain()
        assert sorted(t.texts()) == texts(1, 7)


def test_logrotate_names_are_siblings() -> None:
    pattern = files._sibling_re("app.log")
    for name in (
        "app.log.1",
        "app.log.12.gz",
        "app.log-20260101",
        "app.log-2026010112.xz",
        "app.log-2026-01-01",
        "app.log-1767225600",
        "app.1.log",
        "app-20260101.log.gz",
    ):
        assert pattern.fullmatch(name), name
    for name in ("app.log", "app.log.bak", "app.logger", "other.log.1", "app.log.1.swp"):
        assert not pattern.fullmatch(name), name


def test_rotated_and_exclude_are_read_from_the_config_and_checked(tmp_path: Path) -> None:
    from detector.config import ConfigError, load_config

    base = "version: 1\nwebhooks:\n  hook: {url: 'http://127.0.0.1:9/x'}\nsources:\n"
    rule = "rules:\n  - {name: r, source: app, match: x}\n"
    good = tmp_path / "good.yaml"
    good.write_text(
        base + "  app: {file: /var/log/app.log*, rotated: /var/log/old/app.log-*,"
        " exclude: ['*.gz', /var/log/app.log.bak]}\n" + rule
    )
    src = load_config(good).sources["app"]
    assert src.rotated == "/var/log/old/app.log-*"  # type: ignore[union-attr]
    assert src.exclude == ("*.gz", "/var/log/app.log.bak")  # type: ignore[union-attr]
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "  app: {file: /var/log/app.log, exclude: ['']}\n" + rule)
    try:
        load_config(bad)
    except ConfigError as e:
        assert "bad.yaml:5" in str(e) and "exclude" in str(e)
    else:
        raise AssertionError("an empty exclude glob was accepted")


# ---------------------------------------------------------------- read once, not twice


def gzip_to(src: Path, dst: Path) -> None:
    with src.open("rb") as s, gzip.open(dst, "wb") as d:
        shutil.copyfileobj(s, d)


async def test_a_copy_on_the_inode_of_a_copy_read_to_its_end_is_another_file(
    tmp_path: Path,
) -> None:
    """logrotate's copytruncate + delaycompress: the copy read to its end is compressed and
    deleted, and the next copy gets its inode (made certain here by reusing it in place), of
    the same size. That copy is not taken for the one read (which left it unread, so that its
    own compressed copy was read again from its start), and the compressed copy of the one read
    is still known: each line once."""
    log, copy = tmp_path / "app.log", tmp_path / "app.log.1"
    async with tailing(config(log)) as t:
        append(log, lines(1, 5))
        await t.drain()
        shutil.copyfile(log, copy)
        os.truncate(log, 0)
        append(log, lines(6, 10))  # as long as lines 1-5
        await t.drain()
        ino = copy.stat().st_ino
        gzip_to(copy, tmp_path / "app.log.2.gz")
        with copy.open("r+b") as f:  # the inode of the copy read to its end, other lines
            f.write(log.read_bytes())
        assert copy.stat().st_ino == ino and copy.stat().st_size == log.stat().st_size
        os.truncate(log, 0)
        append(log, lines(11, 12))
        await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        assert sorted(t.texts()) == texts(1, 12)
        assert t.source.problems() == []  # the new copy was found: no loss to tell
        gzip_to(copy, tmp_path / "app.log.3.gz")  # the next rotation compresses it, while down
        copy.unlink()
        await t.restart()
        await t.drain()
        assert sorted(t.texts()) == texts(1, 12)


async def test_a_restart_after_a_truncation_was_committed_reads_its_copy_from_the_position(
    tmp_path: Path,
) -> None:
    """The sweep that sees a copytruncate commits the file's new position (0); the copy is
    looked for in the next sweep. Killed in between, the agent still knows how far the old
    content was read: the copy is read from there, not from its start."""
    log = tmp_path / "app.log"
    append(log, lines(1, 5))
    async with tailing(config(log)) as t:
        await t.drain()
        append(log, lines(6, 7))
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        append(log, lines(8, 8))
        await t.poll()  # sees the truncation, commits position 0 and line 8
        await t.restart()  # killed before the next sweep
        await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        assert sorted(t.texts()) == texts(1, 8)
        assert t.source.problems() == []


async def test_a_copytruncate_of_lines_not_read_yet_is_found_by_its_new_name(
    tmp_path: Path,
) -> None:
    """Written, copied and cut between two sweeps, before a byte was read: the file is as
    long as it was (empty). Only the copy's new name tells; it is read from its start."""
    log = tmp_path / "app.log"
    log.touch()
    async with tailing(config(log)) as t:
        await t.drain()  # seen empty
        append(log, lines(1, 4))
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        append(log, b"")
        await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        assert t.texts() == texts(1, 4)


async def test_a_copy_made_before_the_cut_is_not_read_besides_the_file(tmp_path: Path) -> None:
    """A sweep between logrotate's copy and its truncation: the copy holds the lines the file
    is about to give (not read yet, so not in the file's fingerprint): it is left, and read
    from where the file was once it is cut."""
    log = tmp_path / "app.log"
    log.touch()
    async with tailing(config(log)) as t:
        await t.drain()
        append(log, lines(1, 4))
        shutil.copyfile(log, tmp_path / "app.log.1")
        await t.drain()  # reads lines 1-4 from the file, leaves the copy
        append(log, lines(5, 5))
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        append(log, lines(6, 6))
        await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        assert sorted(t.texts()) == texts(1, 6)
        assert t.source.problems() == []


async def test_numbers_that_grow_with_time_are_not_a_gap(tmp_path: Path) -> None:
    """``app.log.1``, ``.4``, ``.9``… named by a counter (newest highest) are not logrotate's
    shifting numbers: no gap is reported for them."""
    log = tmp_path / "app.log"
    append(log, lines(1, 1))
    async with tailing(config(log)) as t:
        await t.drain()
        for n in (1, 4):
            log.rename(tmp_path / f"app.log.{n}")
            append(log, lines(n + 1, n + 1))
            at = time.time() + n
            os.utime(tmp_path / f"app.log.{n}", (at, at))
            await t.drain()
        t.clock.advance(QUIET)
        await t.drain()
        assert t.texts() == [*texts(1, 2), *texts(5, 5)]
        assert t.source.problems() == []
