"""The journald source against a real private systemd-journald (see tests/journald_env.py).

Every test writes entries with its own ``DETECTOR_TEST=<tag>`` field and reads them back through
``JournaldSource`` with ``namespace:``; nothing here mocks journalctl or journald. Each test runs on
both readers (the sd-journal binding and the journalctl fallback, chosen with
``DETECTOR_JOURNALD_READER``), except those about journalctl children themselves.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.clock import FakeClock, SystemClock
from detector.matching import Matcher, PatternSpec
from detector.model import JournaldSourceConfig
from detector.sources.journald import MAX_ENTRY_BYTES, JournaldSource, field_str
from detector.sources.lines import LineAssembler
from detector.sources.sdjournal import READER_ENV
from tests.journald_env import (
    Collector,
    JournaldNamespace,
    ensure_machine_id,
    journald_fixture,  # noqa: F401  (fixture "journald")
    journald_session_fixture,  # noqa: F401  (fixture "journald_session")
    private_journald_fixture,  # noqa: F401  (fixture "private_journald")
    unique_tag,
)

pytestmark = pytest.mark.journald

READERS = ("sd-journal", "journalctl")
JOURNALCTL_ONLY = {
    # the journalctl children themselves: killed, missing, unprivileged, restarted, reaped
    "test_journalctl_killed_mid_stream_is_restarted_and_nothing_is_lost",
    "test_journalctl_killed_during_catch_up_resumes_after_the_last_batch_handed_out",
    "test_aclose_terminates_and_reaps_journalctl",
    "test_missing_journalctl_becomes_a_problem_with_the_reason",
    "test_permission_denied_is_reported_and_clears_when_journalctl_recovers",
    "test_restarts_wait_for_the_backoff_on_the_injected_clock",
    "test_journalctl_that_keeps_dying_is_a_crash_loop_problem_until_quiet",
    "test_aclose_ends_batches_even_while_backing_off",
    # no reader at all
    "test_splitter_returns_exactly_the_lines_however_the_output_is_chunked",
    "test_splitter_skips_an_oversized_line_and_keeps_the_next",
    "test_machine_id_is_created_when_missing_or_empty",
    "test_field_values_exported_as_byte_arrays_or_repeated_become_str",
    "test_detector_version_and_check_name_the_reader_and_the_fallback",
    "test_a_source_told_to_use_journalctl_reads_through_journalctl_children",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "reader" in metafunc.fixturenames:
        one = metafunc.function.__name__ in JOURNALCTL_ONLY
        metafunc.parametrize("reader", ("journalctl",) if one else READERS, indirect=True)


@pytest.fixture(autouse=True)
def reader(request: pytest.FixtureRequest) -> Iterator[str]:
    """The reader every source of the test uses (set as the environment would set it)."""
    value: str = getattr(request, "param", "journalctl")
    old = os.environ.get(READER_ENV)
    os.environ[READER_ENV] = value
    try:
        yield value
    finally:
        if old is None:
            os.environ.pop(READER_ENV, None)
        else:
            os.environ[READER_ENV] = old


FAST: dict[str, Any] = {
    "backoff_initial": timedelta(milliseconds=20),
    "backoff_max": timedelta(milliseconds=200),
}


def config(ns: JournaldNamespace, tag: str, **kw: Any) -> JournaldSourceConfig:
    match: dict[str, tuple[str, ...]] = {"DETECTOR_TEST": (tag,)}
    match.update(kw.pop("match", {}))
    kw.setdefault("start_at", "beginning")
    return JournaldSourceConfig(name="jd", namespace=ns.name, match=match, **kw)


def source(
    ns: JournaldNamespace,
    tag: str,
    checkpoints: Mapping[str, Mapping[str, Any]] | None = None,
    clock: Any = None,
    **kw: Any,
) -> JournaldSource:
    opts = {k: kw.pop(k) for k in list(kw) if k in {"backoff_initial", "backoff_max", "max_batch"}}
    src = JournaldSource(config(ns, tag, **kw), checkpoints or {}, clock or SystemClock(), **opts)
    assert src.reader == os.environ[READER_ENV]  # the reader the test runs on
    return src


def send(ns: JournaldNamespace, tag: str, *messages: str, **fields: str) -> None:
    """Write entries and wait until journald has stored them."""
    ns.send_many([{"MESSAGE": m, "DETECTOR_TEST": tag, **fields} for m in messages])
    ns.sync()


async def read_existing(src: JournaldSource) -> Collector:
    c = Collector(src)
    await c.wait_for(src.caught_up, what="caught up")
    return c


# ---------------------------------------------------------------- lines, fields, checkpoints


async def test_line_is_message_with_journal_time_and_every_field(journald: JournaldNamespace):
    tag = unique_tag()
    send(journald, tag, "disk full on /var", PRIORITY="3", SYSLOG_IDENTIFIER="dfcheck")
    stored = journald.entries(f"DETECTOR_TEST={tag}")[0]
    c = await read_existing(source(journald, tag))
    try:
        [line] = c.lines
        assert line.source == "jd"
        assert line.text == "disk full on /var"
        realtime_us = int(stored["__REALTIME_TIMESTAMP"])
        assert line.event_at == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=realtime_us
        )
        assert line.fields is not None
        assert line.fields["PRIORITY"] == "3"
        assert line.fields["SYSLOG_IDENTIFIER"] == "dfcheck"
        assert line.fields["_HOSTNAME"] == stored["_HOSTNAME"]
        assert line.fields["__CURSOR"] == stored["__CURSOR"]
        [cp] = c.batches[-1].checkpoints
        assert (cp.source, cp.key) == ("jd", "cursor")
        assert cp.value == {
            "cursor": stored["__CURSOR"],
            "realtime_us": realtime_us,
            "boot_id": stored["_BOOT_ID"],
        }
        json.dumps(cp.value)  # JSON-serialisable, as the store needs
        assert json.loads(json.dumps(c.source.status()))["caught_up"] is True
    finally:
        await c.close()


async def test_binary_and_multiline_messages_are_decoded_not_dropped(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    journald.send_many(
        [
            {"MESSAGE": b"caf\xe9 \xff latin-1 bytes", "DETECTOR_TEST": tag},
            {"MESSAGE": "Traceback:\n  File x\nValueError: boom", "DETECTOR_TEST": tag},
            {"MESSAGE": b"nul\x00inside", "DETECTOR_TEST": tag, "BLOB": b"\x01\x02ok"},
            {"MESSAGE": "tab\tand bell\x07", "DETECTOR_TEST": tag},
        ]
    )
    journald.sync()
    c = await read_existing(source(journald, tag))
    try:
        assert c.texts() == [
            "caf\ufffd \ufffd latin-1 bytes",
            "Traceback:\n  File x\nValueError: boom",
            "nul\x00inside",
            "tab\tand bell\x07",
        ]
        assert c.lines[2].fields is not None
        assert c.lines[2].fields["BLOB"] == "\x01\x02ok"
        # the decoded texts reach matching like any other line
        hits = Matcher([PatternSpec("r", "match", r"ValueError: (?P<what>\w+)", frozenset({"jd"}))])
        assert [h.groups for h in hits.match("jd", c.texts())] == [{"what": "boom"}]
    finally:
        await c.close()


@given(
    lines=st.lists(st.binary(min_size=1).filter(lambda b: b"\n" not in b), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_splitter_returns_exactly_the_lines_however_the_output_is_chunked(
    lines: list[bytes], cuts: list[int]
):
    data = b"".join(line + b"\n" for line in lines)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    splitter = LineAssembler(MAX_ENTRY_BYTES)
    out = [ln for a, b in itertools.pairwise(points) for ln in splitter.split(data[a:b])]
    assert out == lines
    assert splitter.take_skipped() == 0


def test_splitter_skips_an_oversized_line_and_keeps_the_next():
    splitter = LineAssembler(100)
    out = splitter.split(b"ok 1\n" + b"x" * 60)
    out += splitter.split(b"x" * 60)  # over the limit: dropped, not buffered
    out += splitter.split(b"x" * 500)
    assert len(splitter._buf) <= 100  # only the start of it is held
    out += splitter.split(b"xx\nok 2\n")
    assert out == [b"ok 1", b"ok 2"]
    assert splitter.take_skipped() == 1


def test_machine_id_is_created_when_missing_or_empty(tmp_path: Path):
    path = tmp_path / "machine-id"
    created = ensure_machine_id(path)
    assert len(created) == 32 and path.read_text() == created + "\n"
    assert ensure_machine_id(path) == created  # kept once it exists
    path.write_text("")
    assert len(ensure_machine_id(path)) == 32


def test_field_values_exported_as_byte_arrays_or_repeated_become_str():
    assert field_str("plain") == "plain"
    assert field_str([104, 105, 255]) == "hi\ufffd"
    assert field_str(["first", "second"]) == "first"
    assert field_str([[104, 105], "x"]) == "hi"
    assert field_str([]) == ""
    assert field_str(None) is None


async def test_batches_are_capped_and_each_carries_the_cursor_of_its_last_line(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    send(journald, tag, *[f"entry {i}" for i in range(35)])
    c = await read_existing(source(journald, tag, max_batch=10))
    try:
        assert c.texts() == [f"entry {i}" for i in range(35)]
        assert all(len(b.lines) <= 10 for b in c.batches)
        for b in c.batches:
            assert b.lines[-1].fields is not None
            assert b.checkpoints[0].value["cursor"] == b.lines[-1].fields["__CURSOR"]
    finally:
        await c.close()


async def test_a_read_leaves_the_garbage_collector_as_it_found_it(journald: JournaldNamespace):
    """The sd-journal reader pauses the cyclic collector while it makes a read's Lines: it is
    on again after each read, and a collector someone else turned off stays off."""
    tag = unique_tag()
    send(journald, tag, *[f"entry {i}" for i in range(25)])
    try:
        for enabled, fields in itertools.product((True, False), (None, ("MESSAGE",))):
            (gc.enable if enabled else gc.disable)()
            cfg = config(journald, tag)
            c = await read_existing(
                JournaldSource(cfg, {}, SystemClock(), max_batch=10, fields=fields)
            )
            try:
                assert c.texts() == [f"entry {i}" for i in range(25)]
                assert len(c.batches) >= 3  # several reads
                assert gc.isenabled() is enabled, (enabled, fields)
            finally:
                await c.close()
    finally:
        gc.enable()


# ---------------------------------------------------------------- filters


async def test_identifier_filter_keeps_only_that_syslog_identifier(journald: JournaldNamespace):
    tag = unique_tag()
    send(journald, tag, "from backup", SYSLOG_IDENTIFIER="backup")
    send(journald, tag, "from cron", SYSLOG_IDENTIFIER="cron")
    send(journald, tag, "from rsync", SYSLOG_IDENTIFIER="rsync")
    c = await read_existing(source(journald, tag, identifiers=("backup", "rsync")))
    try:
        assert c.texts() == ["from backup", "from rsync"]
    finally:
        await c.close()


async def test_priority_filter_keeps_that_level_and_more_urgent(journald: JournaldNamespace):
    tag = unique_tag()
    for prio in range(8):
        send(journald, tag, f"prio {prio}", PRIORITY=str(prio))
    c = await read_existing(source(journald, tag, priority=4))  # warning
    try:
        assert c.texts() == ["prio 0", "prio 1", "prio 2", "prio 3", "prio 4"]
    finally:
        await c.close()


async def test_match_field_values_are_alternatives_and_fields_all_must_hold(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    send(journald, tag, "a-eu", APP="a", REGION="eu")
    send(journald, tag, "b-eu", APP="b", REGION="eu")
    send(journald, tag, "c-eu", APP="c", REGION="eu")
    send(journald, tag, "a-us", APP="a", REGION="us")
    c = await read_existing(source(journald, tag, match={"APP": ("a", "b"), "REGION": ("eu",)}))
    try:
        assert c.texts() == ["a-eu", "b-eu"]
    finally:
        await c.close()


async def test_unit_filter_reads_the_unit_of_the_writing_process(journald: JournaldNamespace):
    tag = unique_tag()
    unit = f"dt-backup-{tag[:8]}.service"
    journald.send_as_unit(unit, [{"MESSAGE": "backup complete", "DETECTOR_TEST": tag}])
    journald.send_as_unit("dt-other.service", [{"MESSAGE": "other", "DETECTOR_TEST": tag}])
    send(journald, tag, "no unit")
    c = await read_existing(source(journald, tag, units=(unit,)))
    try:
        assert c.texts() == ["backup complete"]
        assert c.lines[0].fields is not None
        assert c.lines[0].fields["_SYSTEMD_UNIT"] == unit
    finally:
        await c.close()


async def test_invalid_match_field_is_a_config_problem_not_a_crash(journald: JournaldNamespace):
    src = source(journald, unique_tag(), match={"lower-case": ("x",)})
    [p] = src.problems()
    assert (p.key, p.active) == ("config", True)
    assert "lower-case" in p.message
    c = Collector(src)
    await src.aclose()
    await asyncio.wait_for(c._task, 5)  # batches() ends without reading or raising
    assert c.batches == []


# ---------------------------------------------------------------- positions and restarts


async def test_start_at_end_reads_only_entries_written_after_start(journald: JournaldNamespace):
    tag = unique_tag()
    send(journald, tag, "old 1", "old 2")
    journald.sync()
    c = await read_existing(source(journald, tag, start_at="end"))
    try:
        assert c.texts() == []
        send(journald, tag, "new 1")
        assert await c.wait_lines(1) == ["new 1"]
    finally:
        await c.close()


async def test_start_at_end_with_no_matching_entry_yet_reads_the_first_one(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    c = await read_existing(source(journald, tag, start_at="end"))
    try:
        send(journald, tag, "first ever")
        assert await c.wait_lines(1) == ["first ever"]
    finally:
        await c.close()


async def test_restart_resumes_after_the_committed_cursor_without_loss_or_duplicate(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    send(journald, tag, *[f"before {i}" for i in range(12)])
    first = await read_existing(source(journald, tag, max_batch=5))
    await first.close()
    assert first.texts() == [f"before {i}" for i in range(12)]
    # the agent crashed after committing the second batch (lines 0..9 when the reads fill
    # whole batches of 5; journalctl's output may arrive in smaller pieces)
    assert len(first.batches) >= 2 and all(len(b.lines) <= 5 for b in first.batches)
    committed = first.batches[1].checkpoints[0]
    done = len(first.batches[0].lines) + len(first.batches[1].lines)
    send(journald, tag, "while down 1", "while down 2")
    second = await read_existing(source(journald, tag, {"cursor": committed.value}))
    try:
        expected = [f"before {i}" for i in range(done, 12)] + ["while down 1", "while down 2"]
        assert second.texts() == expected
        send(journald, tag, "live")
        assert await second.wait_lines(len(expected) + 1) == [*expected, "live"]
        assert second.source.problems() == []
    finally:
        await second.close()


async def test_restart_ignores_start_at_end_when_a_cursor_is_stored(journald: JournaldNamespace):
    tag = unique_tag()
    send(journald, tag, "a", "b")
    first = await read_existing(source(journald, tag))
    await first.close()
    send(journald, tag, "c")
    cp = first.batches[-1].checkpoints[0].value
    second = await read_existing(source(journald, tag, {"cursor": cp}, start_at="end"))
    try:
        assert second.texts() == ["c"]
    finally:
        await second.close()


async def test_changed_filters_resume_after_the_cursor_without_losing_the_next_entry(
    journald: JournaldNamespace,
):
    """The stored cursor's entry no longer matches (rules.yaml changed). journalctl 252's
    ``--after-cursor`` would skip the first matching entry after it; the source does not."""
    tag = unique_tag()
    send(journald, tag, "b before", SYSLOG_IDENTIFIER="b")
    send(journald, tag, "a 1", SYSLOG_IDENTIFIER="a")
    first = await read_existing(source(journald, tag, identifiers=("a",)))
    await first.close()
    assert first.texts() == ["a 1"]
    send(journald, tag, "b 1", "b 2", SYSLOG_IDENTIFIER="b")
    cp = first.batches[-1].checkpoints[0].value
    second = await read_existing(source(journald, tag, {"cursor": cp}, identifiers=("b",)))
    try:
        assert second.texts() == ["b 1", "b 2"]
        assert second.source.problems() == []
    finally:
        await second.close()


async def test_journalctl_killed_mid_stream_is_restarted_and_nothing_is_lost(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    src = source(journald, tag, **FAST)
    c = await read_existing(src)
    try:
        send(journald, tag, *[f"one {i}" for i in range(20)])
        await c.wait_lines(20)
        pid = src.status()["pid"]
        os.kill(pid, signal.SIGKILL)
        send(journald, tag, *[f"two {i}" for i in range(20)])  # written while it is dead
        await c.wait_for(lambda: src.status()["pid"] not in (None, pid), what="a new journalctl")
        send(journald, tag, *[f"three {i}" for i in range(20)])
        texts = await c.wait_lines(60)
        expected = [f"{w} {i}" for w in ("one", "two", "three") for i in range(20)]
        assert texts == expected  # exactly once, in order
        assert src.status()["restarts"] == 1
        assert "killed by signal 9" in (src.status()["last_error"] or "")
        # one failure is not a problem yet (it persists only after fail_after=3)
        assert [p for p in src.problems() if p.active] == []
    finally:
        await c.close()


async def test_journalctl_killed_during_catch_up_resumes_after_the_last_batch_handed_out(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    n = 6000  # ~5 MB of JSON: more than the pipe and reader buffers hold, so it is still running
    journald.send_many([{"MESSAGE": f"e {i}", "DETECTOR_TEST": tag} for i in range(n)])
    journald.sync()
    src = source(journald, tag, max_batch=100, **FAST)
    c = Collector(src)
    try:
        await c.wait_for(lambda: len(c.batches) >= 1, what="the first batch")
        pid = src.status()["pid"]
        assert pid is not None and not src.caught_up()
        os.kill(pid, signal.SIGKILL)
        await c.wait_for(src.caught_up, within=30, what="caught up")
        assert c.texts() == [f"e {i}" for i in range(n)]
        assert src.status()["restarts"] == 1
    finally:
        await c.close()


async def test_aclose_terminates_and_reaps_journalctl(journald: JournaldNamespace):
    src = source(journald, unique_tag())
    c = await read_existing(src)
    await c.wait_for(lambda: src.status()["pid"] is not None, what="the following journalctl")
    pid = src.status()["pid"]
    await c.close()
    assert src.status()["pid"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no zombie left behind


# ---------------------------------------------------------------- invalid cursors


async def test_vacuumed_cursor_raises_gap_problem_and_resumes_at_oldest_entry(
    private_journald: JournaldNamespace,
):
    ns = private_journald
    tag = unique_tag()
    send(ns, tag, "old 1", "old 2")
    first = await read_existing(source(ns, tag))
    await first.close()
    cp = first.batches[-1].checkpoints[0].value
    ns.rotate()
    send(ns, tag, "kept 1", "kept 2")
    ns.vacuum_archived()  # the file holding the cursor is deleted
    assert [e["MESSAGE"] for e in ns.entries(f"DETECTOR_TEST={tag}")] == ["kept 1", "kept 2"]
    clock = FakeClock(datetime.now(UTC))
    src = source(ns, tag, {"cursor": cp}, clock=clock)
    c = await read_existing(src)
    try:
        assert c.texts() == ["kept 1", "kept 2"]
        [gap] = src.problems()
        assert (gap.key, gap.active) == ("cursor-gap", True)
        assert "no longer has the stored cursor" in gap.message
        assert "oldest available entry" in gap.message
        assert "may be missing" in gap.message
        send(ns, tag, "live")
        assert await c.wait_lines(3) == ["kept 1", "kept 2", "live"]
        clock.advance(timedelta(minutes=15))  # a notice, not a permanent state
        assert [(p.key, p.active) for p in src.problems()] == [("cursor-gap", False)]
    finally:
        await c.close()


async def test_cursor_of_another_journal_is_a_gap_and_reading_starts_at_the_oldest_entry(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    send(journald, tag, "x", "y")
    foreign = {
        "cursor": f"s={uuid.uuid4().hex};i=5;b={uuid.uuid4().hex};m=1;t=5e0000;x=1",
        "realtime_us": 1,
        "boot_id": uuid.uuid4().hex,
    }
    src = source(journald, tag, {"cursor": foreign})
    c = await read_existing(src)
    try:
        assert c.texts() == ["x", "y"]
        assert [p.key for p in src.problems() if p.active] == ["cursor-gap"]
    finally:
        await c.close()


async def test_malformed_cursor_is_a_gap_not_a_crash(journald: JournaldNamespace):
    tag = unique_tag()
    send(journald, tag, "x")
    src = source(journald, tag, {"cursor": {"cursor": "not a cursor", "realtime_us": None}})
    c = await read_existing(src)
    try:
        assert c.texts() == ["x"]
        [gap] = [p for p in src.problems() if p.active]
        assert gap.key == "cursor-gap"
        assert gap.occurrence == 1  # an event: each new gap counts, and is notified again
        assert "Failed to seek to cursor" in gap.message
    finally:
        await c.close()


# ---------------------------------------------------------------- reboots


async def first_line_of_follow(ns: JournaldNamespace, *args: str) -> dict[str, Any]:
    """The first entry a plain ``journalctl --follow`` prints (then it is stopped)."""
    proc = await asyncio.create_subprocess_exec(
        "journalctl", f"--namespace={ns.name}", "--output=json", "--follow", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        return dict(json.loads(line))
    finally:
        proc.terminate()
        await proc.wait()


async def test_cursor_from_previous_boot_reads_its_tail_then_follows_the_current_boot(
    private_journald: JournaldNamespace,
):
    """journalctl 252 ``--follow`` implies ``--boot``: following from a previous boot's cursor
    never shows that boot's last entries. The source reads them in its bounded catch-up."""
    ns = private_journald
    tag = unique_tag()
    ns.restart(boot_id=uuid.uuid4().hex)  # "the previous boot"
    send(ns, tag, "prev 1", "prev 2", "prev 3")
    first = await read_existing(source(ns, tag, max_batch=1))
    await first.close()
    cp = first.batches[0].checkpoints[0].value  # committed up to "prev 1", then the reboot
    ns.restart()  # the current (real) boot
    send(ns, tag, "boot 1", "boot 2")
    # Plain journalctl --follow --after-cursor loses prev 2 and prev 3 (--follow implies --boot)
    # and also boot 1 (252 skips one more entry when the cursor entry is filtered out).
    plain = await first_line_of_follow(ns, f"--after-cursor={cp['cursor']}", f"DETECTOR_TEST={tag}")
    assert plain["MESSAGE"] == "boot 2"
    c = await read_existing(source(ns, tag, {"cursor": cp}))
    try:
        expected = ["prev 2", "prev 3", "boot 1", "boot 2"]
        assert c.texts() == expected
        assert c.lines[0].fields is not None and c.lines[2].fields is not None
        assert c.lines[0].fields["_BOOT_ID"] == cp["boot_id"]
        assert c.lines[2].fields["_BOOT_ID"] != cp["boot_id"]
        send(ns, tag, "boot 3")
        assert await c.wait_lines(5) == [*expected, "boot 3"]
    finally:
        await c.close()


# ---------------------------------------------------------------- journalctl failing


async def test_missing_journalctl_becomes_a_problem_with_the_reason(journald: JournaldNamespace):
    src = source(journald, unique_tag(), journalctl="/nonexistent/journalctl", **FAST)
    c = Collector(src)
    try:
        await c.wait_for(lambda: any(p.active for p in src.problems()), what="a problem")
        [p] = src.problems()
        assert p.key == "journalctl"
        assert "journalctl not found" in p.message
        assert "3 failures in a row" in p.message
        assert not src.caught_up()
    finally:
        await c.close()


def write_flaky_journalctl(tmp_path: Path) -> tuple[Path, Path]:
    """A journalctl that fails like an unprivileged one while ``deny`` exists, then works."""
    deny = tmp_path / "deny"
    deny.touch()
    script = tmp_path / "journalctl"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{deny}" ]; then\n'
        '  exec setpriv --reuid=65534 --regid=65534 --clear-groups journalctl "$@"\n'
        "fi\n"
        'exec journalctl "$@"\n'
    )
    script.chmod(0o755)
    return script, deny


async def test_permission_denied_is_reported_and_clears_when_journalctl_recovers(
    journald: JournaldNamespace, tmp_path: Path
):
    tag = unique_tag()
    send(journald, tag, "hidden until readable")
    script, deny = write_flaky_journalctl(tmp_path)
    src = source(journald, tag, journalctl=str(script), **FAST)
    c = Collector(src)
    try:
        await c.wait_for(
            lambda: any(p.key == "journalctl" and p.active for p in src.problems()),
            what="journalctl problem",
        )
        active = {p.key: p.message for p in src.problems() if p.active}
        assert "insufficient permissions" in active["journalctl"]
        assert "status 1" in active["journalctl"]
        deny.unlink()  # e.g. the admin added the agent to systemd-journal
        await c.wait_for(src.caught_up, what="caught up")
        assert c.texts() == ["hidden until readable"]
        assert [p for p in src.problems() if p.active] == []
    finally:
        await c.close()


async def test_restarts_wait_for_the_backoff_on_the_injected_clock(journald: JournaldNamespace):
    clock = FakeClock(datetime.now(UTC))
    src = source(journald, unique_tag(), journalctl="/nonexistent/journalctl", clock=clock)
    c = Collector(src)
    try:
        await c.wait_for(lambda: src.status()["consecutive_failures"] == 1, what="1st failure")
        clock.advance(timedelta(milliseconds=500))  # backoff_initial
        await c.wait_for(lambda: src.status()["consecutive_failures"] == 2, what="2nd failure")
        assert [p for p in src.problems() if p.active] == []  # not yet persistent
        clock.advance(timedelta(seconds=1))  # doubled
        await c.wait_for(lambda: src.status()["consecutive_failures"] == 3, what="3rd failure")
        assert [p.key for p in src.problems() if p.active] == ["journalctl"]
    finally:
        await c.close()


async def test_journalctl_that_keeps_dying_is_a_crash_loop_problem_until_quiet(
    journald: JournaldNamespace,
):
    """Each restart catches up, so no entry is lost and the failures in a row never add up:
    the exits within the window do, and say so until a whole window passes without one."""
    clock = FakeClock(datetime.now(UTC))
    tag = unique_tag()
    src = JournaldSource(
        config(journald, tag),
        {},
        clock,
        backoff_initial=timedelta(milliseconds=20),
        backoff_max=timedelta(milliseconds=20),
        crash_loop_after=5,
        crash_window=timedelta(minutes=2),
    )
    c = await read_existing(src)
    try:
        for i in range(6):
            send(journald, tag, f"entry {i}")
            await c.wait_lines(i + 1)
            await c.wait_for(lambda: src.status()["pid"] is not None, what="a journalctl")
            pid = src.status()["pid"]
            os.kill(pid, signal.SIGKILL)
            await c.wait_for(lambda n=i + 1: src.status()["restarts"] == n, what=f"exit {i + 1}")
            looping = [p for p in src.problems() if p.key == "crash-loop" and p.active]
            assert bool(looping) == (i + 1 >= 5)  # from the 5th exit on
            assert [p.key for p in src.problems() if p.active and p.key == "journalctl"] == []
            clock.advance(timedelta(seconds=10))  # past the backoff: it restarts
        send(journald, tag, "entry 6")
        assert await c.wait_lines(7) == [f"entry {i}" for i in range(7)]  # nothing lost
        (problem,) = [p for p in src.problems() if p.key == "crash-loop"]
        assert problem.active
        assert problem.message.startswith("journalctl exited 6 times in the last 2m: ")
        assert "killed by signal 9" in problem.message
        assert problem.occurrence == 1  # one crash loop (reported at once), not one per exit
        clock.advance(timedelta(minutes=1))  # 70 s after the last exit: still in the window
        assert [p.active for p in src.problems() if p.key == "crash-loop"] == [True]
        clock.advance(timedelta(minutes=1))  # a whole window without an exit
        assert [p.active for p in src.problems() if p.key == "crash-loop"] == [False]
    finally:
        await c.close()


async def test_aclose_ends_batches_even_while_backing_off(journald: JournaldNamespace):
    clock = FakeClock(datetime.now(UTC))  # never advanced: the backoff would last forever
    src = source(journald, unique_tag(), journalctl="/nonexistent/journalctl", clock=clock)
    c = Collector(src)
    await c.wait_for(lambda: src.status()["consecutive_failures"] == 1, what="a failure")
    await src.aclose()
    await asyncio.wait_for(c._task, 5)  # batches() returned by itself


# ---------------------------------------------------------------- the two readers


async def test_fields_of_any_size_and_bytes_come_whole_on_both_readers(journald: JournaldNamespace):
    """The binding cuts fields at 64 KiB unless told not to; journalctl ``--all`` does not."""
    tag = unique_tag()
    big = "x" * (100 << 10) + " tail"  # a datagram holds ~200 KiB
    journald.send_many(
        [
            {"MESSAGE": big, "DETECTOR_TEST": tag, "BLOB": b"\xff" * 10_000},
            {"MESSAGE": b"bad \xc3\x28 utf-8", "DETECTOR_TEST": tag, "TWICE": "one"},
        ]
    )
    journald.sync()
    c = await read_existing(source(journald, tag))
    try:
        assert [len(t) for t in c.texts()] == [len(big), len("bad \ufffd( utf-8")]
        assert c.texts()[0] == big
        assert c.texts()[1] == "bad \ufffd( utf-8"
        fields = c.lines[0].fields
        assert fields is not None
        assert fields["BLOB"] == "\ufffd" * 10_000
        assert fields["MESSAGE"] == big
        assert dict(fields)["__REALTIME_TIMESTAMP"].isdigit()
        assert fields["__MONOTONIC_TIMESTAMP"].isdigit()
    finally:
        await c.close()


def test_detector_version_and_check_name_the_reader_and_the_fallback(tmp_path: Path):
    """Forced by the environment, and for real: an interpreter without the binding."""
    exe = Path(sys.executable).with_name("detector")
    env = {k: v for k, v in os.environ.items() if k != READER_ENV}
    out = subprocess.run([exe, "version"], env=env, capture_output=True, text=True, check=True)
    assert "journald reader: sd-journal (systemd-python " in out.stdout
    forced = {**env, READER_ENV: "journalctl"}
    out = subprocess.run([exe, "version"], env=forced, capture_output=True, text=True, check=True)
    assert "journald reader: journalctl (forced" in out.stdout
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        "version: 1\nsources: {sys: {journald: {units: [ssh.service]}}}\n"
        "rules:\n  - {name: r, source: sys, match: boom}\n"
    )
    out = subprocess.run(
        [exe, "check", "-c", cfg], env=env, capture_output=True, text=True, check=False
    )
    assert "    reads with: sd-journal; systemd-python " in out.stdout, out.stdout + out.stderr
    # /usr/bin/python3 (the unit's interpreter) has no systemd-python here: journalctl it is
    repo = Path(__file__).resolve().parents[1]
    probe = (
        f"import sys; sys.path.insert(0, {str(repo)!r}); "
        "from detector.sources.sdjournal import choose_reader; print(*choose_reader(), sep='|')"
    )
    bare = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.startswith("journalctl|fallback: the sd-journal binding is missing")


async def test_a_source_told_to_use_journalctl_reads_through_journalctl_children(
    journald: JournaldNamespace,
):
    tag = unique_tag()
    send(journald, tag, "via a child")
    os.environ[READER_ENV] = "journalctl"
    c = await read_existing(source(journald, tag))
    try:
        assert c.texts() == ["via a child"]
        assert c.source.status()["reader"] == "journalctl"
        await c.wait_for(lambda: c.source.status()["pid"] is not None, what="journalctl -f")
    finally:
        await c.close()
