"""``multiline:`` sources: lines joined into events (``sources/events.py``) by the file tailer,
journald and ``detector test``, on real files (and one real journald), across restarts.

The tracebacks and stack traces below are written the way Python's logging and a Java service
(logback) write them; the clock is a FakeClock, so ``timeout`` is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.alerts import MAX_SAMPLE_CHARS, clip_sample
from detector.clock import FakeClock
from detector.config import ConfigError
from detector.config.load import load_config
from detector.model import FileSourceConfig, MultilineConfig
from detector.replay import replay
from detector.replay.blocks import event_blocks
from detector.sources.events import EventAssembler
from detector.sources.journald import JournaldSource
from detector.sources.lines import LineAssembler
from tests.agent_proc import AgentProcess, config_in
from tests.journald_env import (
    JournaldNamespace,
    journald_fixture,  # noqa: F401  (fixture "journald")
    journald_session_fixture,  # noqa: F401  (fixture "journald_session")
    unique_tag,
)
from tests.receiver import Receiver
from tests.test_e2e import alerts_of
from tests.test_files_source import Tail, append, file_checkpoints
from tests.test_formats import alert
from tests.test_formats_limits import render
from tests.waiting import eventually, outbox_rows

STAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
PY_START = MultilineConfig("start", STAMP)
JAVA_CONTINUE = MultilineConfig(
    "continue", r"^(\s+at |\s+\.\.\. \d+ more|Caused by: |[\w.$]+(Exception|Error)(: |$))"
)


def python_event(n: int, minute: int = 0) -> list[str]:
    """A request handler's failure as Python's logging writes it: the message, then the
    traceback (``logger.exception``)."""
    return [
        f"2026-03-01 12:{minute:02d}:{n % 60:02d},117 ERROR app.views job={n} crashed",
        "Traceback (most recent call last):",
        '  File "/srv/app/views.py", line 88, in handle',
        "    result = process(request.json)",
        '  File "/srv/app/jobs.py", line 41, in process',
        '    return int(payload["count"]) / payload["parts"]',
        "ZeroDivisionError: division by zero",
    ]


def java_event(n: int) -> list[str]:
    """A Java service's failure as logback writes it: message, stack, its cause."""
    return [
        f"2026-03-01 12:00:{n % 60:02d}.512 ERROR [http-nio-8080-exec-{n}] o.a.c.c.C.[dispatcher]"
        f" Servlet.service() threw exception job={n}",
        "java.lang.IllegalStateException: Connection pool exhausted",
        "\tat com.zaxxer.hikari.pool.HikariPool.getConnection(HikariPool.java:197)",
        "\tat com.example.orders.OrderRepository.find(OrderRepository.java:54)",
        "\tat com.example.orders.OrderController.show(OrderController.java:31)",
        "Caused by: java.sql.SQLTransientConnectionException: timeout after 30000ms",
        "\tat com.zaxxer.hikari.pool.HikariPool.createTimeoutException(HikariPool.java:696)",
        "\t... 42 more",
    ]


def info(n: int) -> list[str]:
    return [f"2026-03-01 12:00:{n % 60:02d},001 INFO app.views job={n} done"]


def write(path: Path, lines: Sequence[str]) -> None:
    append(path, "".join(line + "\n" for line in lines))


def cfg(path: Path, spec: MultilineConfig) -> FileSourceConfig:
    return FileSourceConfig(
        name="app",
        paths=(str(path),),
        start_at="beginning",
        poll_interval=timedelta(seconds=1),
        multiline=spec,
    )


def reference(lines: Sequence[str], spec: MultilineConfig) -> list[str]:
    """The events of ``lines`` read in one go."""
    ev: EventAssembler[int] = EventAssembler(spec)
    out = [e.text for e in ev.push_all((t, 0) for t in lines)]
    last = ev.flush()
    return [*out, *([last.text] if last is not None else [])]


# ---------------------------------------------------------------- the tailer


async def test_python_tracebacks_are_one_event_each_and_the_checkpoint_waits_for_the_last(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    events = [info(1), python_event(2), info(3), python_event(4)]
    write(log, [line for e in events for line in e])
    t = Tail(cfg(log, PY_START))
    try:
        # the last event may go on: it is held, and the checkpoint stays at its first byte
        assert await t.drain() == ["\n".join(e) for e in events[:3]]
        (cp,) = file_checkpoints(t.committed).values()
        assert cp["offset"] == log.read_bytes().index(events[3][0].encode())
        write(log, info(5))
        assert await t.drain() == ["\n".join(events[3])]
    finally:
        await t.source.aclose()


async def test_java_stack_traces_in_continue_mode(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    lines = [*info(1), *java_event(2), *java_event(3), *info(4)]
    write(log, lines)
    t = Tail(cfg(log, JAVA_CONTINUE))
    try:
        got = await t.drain()
        assert got == ["\n".join(info(1)), "\n".join(java_event(2)), "\n".join(java_event(3))]
        assert all(e.count("\n") == 7 for e in got[1:])
    finally:
        await t.source.aclose()


async def test_max_lines_emits_the_event_there_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "app.log"
    body = [f"  frame {i}" for i in range(9)]
    write(log, ["2026-03-01 12:00:00 ERROR boom", *body, "2026-03-01 12:00:01 INFO ok"])
    t = Tail(cfg(log, MultilineConfig("start", STAMP, max_lines=4)))
    try:
        with caplog.at_level(logging.WARNING):
            got = await t.drain()
        assert got == [
            "\n".join(["2026-03-01 12:00:00 ERROR boom", *body[:3]]),
            "\n".join(body[3:7]),
            "\n".join(body[7:]),
        ]
        assert t.source.status()["events_split"] == 2
        assert "reached multiline max_lines (4)" in caplog.text
        assert "1 more such events" in caplog.text
    finally:
        await t.source.aclose()


async def test_a_quiet_pending_event_is_emitted_after_its_timeout_on_the_clock(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    clock = FakeClock()
    t = Tail(cfg(log, MultilineConfig("start", STAMP, timeout=timedelta(seconds=2))), clock)
    try:
        write(log, python_event(1)[:4])
        assert await t.poll() == []
        clock.advance(timedelta(seconds=1.5))
        write(log, python_event(1)[4:])  # more of it: the quiet moment starts again
        assert await t.poll() == []
        assert t.source.next_deadline() == clock.now() + timedelta(seconds=2)
        clock.advance(timedelta(seconds=1.9))
        assert await t.poll() == []
        clock.advance(timedelta(seconds=0.1))
        assert await t.poll() == ["\n".join(python_event(1))]
        (cp,) = file_checkpoints(t.committed).values()
        assert cp["offset"] == log.stat().st_size  # complete: the position moved past it
        assert t.source.next_deadline() is None
    finally:
        await t.source.aclose()


async def test_batches_wakes_for_the_timeout_without_a_poll_interval(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    clock = FakeClock()
    spec = MultilineConfig("start", STAMP, timeout=timedelta(milliseconds=300))
    config = FileSourceConfig(
        name="app",
        paths=(str(log),),
        start_at="beginning",
        poll_interval=timedelta(hours=1),
        multiline=spec,
    )
    write(log, python_event(7))
    t = Tail(config, clock)
    gen = t.source.batches()
    try:
        first = await anext(gen)
        assert first.lines == []  # read, pending
        clock.advance(timedelta(milliseconds=300))  # the sleeper wakes at the deadline
        texts: list[str] = []
        while not texts:
            texts = [line.text for line in (await anext(gen)).lines]
        assert texts == ["\n".join(python_event(7))]
    finally:
        await gen.aclose()
        await t.source.aclose()


async def test_a_restart_in_the_middle_of_an_event_reads_it_again_whole(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    event = python_event(2)
    write(log, [*info(1), *event[:3]])
    t = Tail(cfg(log, PY_START))
    try:
        assert await t.drain() == ["\n".join(info(1))]
        await t.restart()  # the agent stopped (or was killed) with half an event read
        write(log, [*event[3:], *info(3)])
        assert await t.drain() == ["\n".join(event)]
        assert t.texts() == ["\n".join(info(1)), "\n".join(event)]
    finally:
        await t.source.aclose()


async def test_a_rotated_file_gives_its_last_event_when_it_is_finished(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, [*info(1), *python_event(2)])
    clock = FakeClock()
    t = Tail(cfg(log, MultilineConfig("start", STAMP, timeout=timedelta(hours=1))), clock)
    try:
        assert await t.drain() == ["\n".join(info(1))]
        log.rename(tmp_path / "app.log.1")
        write(log, info(3))
        await t.drain()
        clock.advance(timedelta(seconds=6))  # past drain_quiet: the old file is retired
        await t.drain()
        assert t.texts() == ["\n".join(info(1)), "\n".join(python_event(2))]
    finally:
        await t.source.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(["info", "py", "java"]), min_size=1, max_size=12),
    cuts=st.lists(st.integers(1, 400), max_size=12),
    restarts=st.lists(st.booleans(), max_size=12),
    mode=st.sampled_from(["start", "continue"]),
    max_lines=st.sampled_from([3, 6, 200]),
)
def test_events_are_exact_under_random_read_splits_and_restarts(
    kinds: list[str], cuts: list[int], restarts: list[bool], mode: str, max_lines: int
) -> None:
    lines = [
        line
        for n, k in enumerate(kinds)
        for line in (info(n) if k == "info" else python_event(n) if k == "py" else java_event(n))
    ]
    spec = (
        MultilineConfig("start", STAMP, max_lines=max_lines)
        if mode == "start"
        else MultilineConfig(
            "continue", r"^(\s|Traceback|\w+Error:|java\.|Caused by:)", max_lines=max_lines
        )
    )
    data = "".join(line + "\n" for line in lines).encode()
    expected = reference(lines, spec)

    async def run(log: Path) -> list[str]:
        clock = FakeClock()
        t = Tail(cfg(log, spec), clock)
        try:
            pos = 0
            for i, cut in enumerate([*cuts, len(data)]):
                append(log, data[pos : pos + cut])  # a write may end in the middle of a line
                pos += cut
                await t.drain()
                if i < len(restarts) and restarts[i]:
                    await t.restart()
                if pos >= len(data):
                    break
            await t.drain()  # a source just restarted reads its pending event again
            clock.advance(spec.timeout)  # the last event: complete once quiet
            await t.drain()
            return t.texts()
        finally:
            await t.source.aclose()

    with tempfile.TemporaryDirectory() as d:
        assert asyncio.run(run(Path(d) / "app.log")) == expected


def test_line_starts_are_where_each_line_begins_however_the_bytes_are_fed() -> None:
    data = b"one\r\ntwo\nthree three\nfour"
    for cut in range(len(data) + 1):
        lines = LineAssembler(5, starts=True)
        got: list[tuple[str, int]] = []
        base = 0
        for part in (data[:cut], data[cut:]):
            for chunk in lines.feed(part):
                got += [(t, base + s) for t, s in zip(chunk.texts, chunk.starts, strict=True)]
            base += len(part)
        last = lines.flush()
        assert last is not None
        got += [(last.texts[0], base + last.starts[0])]
        assert got == [
            ("one", 0),
            ("two", 5),
            ("three …[truncated 6 bytes]", 9),
            ("four", 21),
        ], cut


# ---------------------------------------------------------------- detector test


RULES = """\
sources:
  app:
    file: "{log}"
    start_at: beginning
    multiline: {{start: '^\\d{{4}}-\\d\\d-\\d\\d', max_lines: 50}}
rules:
  - name: crashes
    source: app
    match: 'job=(?P<job>\\d+) crashed\\n(?s:.*)\\nZeroDivisionError: (?P<why>.*)$'
    group_by: [job]
    repeat: never
  - name: tracebacks-anywhere
    source: app
    match: '(?m)^Traceback'
"""


def _big_log(path: Path, events: int) -> list[str]:
    lines: list[str] = []
    for n in range(events):
        lines += python_event(n, minute=n // 60 % 60) if n % 3 == 0 else info(n)
    write(path, lines)
    return lines


async def test_live_and_detector_test_give_the_same_events(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    lines = _big_log(log, 400)
    config = load_config(_rules(tmp_path, log))
    src = config.sources["app"]
    assert isinstance(src, FileSourceConfig) and src.multiline is not None
    replayed = [
        t
        for b in event_blocks(str(log), src.multiline, max_line=src.max_line_bytes, block=4096)
        for t in b.texts
    ]
    clock = FakeClock()
    t = Tail(src, clock)
    try:
        await t.drain()
        clock.advance(src.multiline.timeout)
        await t.drain()
        assert t.texts() == replayed == reference(lines, src.multiline)
    finally:
        await t.source.aclose()


def _rules(tmp_path: Path, log: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(log=log))
    return path


def test_detector_test_matches_whole_events_the_same_with_jobs(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    lines = _big_log(log, 3000)
    config = load_config(_rules(tmp_path, log))
    one = replay(config, [(str(log), "app")], block=64 * 1024)
    four = replay(config, [(str(log), "app")], block=64 * 1024, jobs=2)
    crashes = len(range(0, 3000, 3))
    assert one.matches["crashes"] == crashes == one.matches["tracebacks-anywhere"]
    assert one.lines == len(lines) and one.events == 3000
    assert (four.matches, four.lines, four.events) == (one.matches, one.lines, one.events)
    firing = [n for n in one.notifications if n["rule"] == "crashes"]
    assert firing[0]["samples"] == ["\n".join(python_event(0))]


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("multiline", "at", "says"),
    [
        ("{start: '^(oops'}", "(oops", "multiline.start: invalid regular expression"),
        ("{start: '^x', max_line: 3}", "max_line:", "unknown key 'max_line' — did you mean"),
        ("{start: '^x', continue: '^y'}", "{start", "needs exactly one of start: REGEX"),
        ("{start: '^x', timeout: soon}", "soon", "multiline.timeout"),
        ("{start: '^x', max_lines: 0}", "0}", "multiline.max_lines: must be ≥ 1"),
        ("'^x'", "'^x'", "expected a mapping such as {start:"),
    ],
)
def test_config_errors_name_file_line_and_column(
    tmp_path: Path, multiline: str, at: str, says: str
) -> None:
    path = tmp_path / "rules.yaml"
    line = f"    multiline: {multiline}"
    path.write_text(
        "sources:\n"
        "  app:\n"
        "    file: /var/log/app.log\n"
        "  jd:\n"
        "    journald: {units: [app.service]}\n"
        f"{line}\n"
        "rules:\n"
        "  - {name: r, source: app, match: x}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = str(e.value)
    assert f"{path}:6:{line.index(at) + 1}: source 'jd': multiline" in text, text
    assert says in text, text


def test_config_reads_multiline_for_file_and_journald_sources(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "sources:\n"
        "  app: {file: /var/log/app.log, multiline: {start: '^\\d', max_lines: 30}}\n"
        "  jd:\n"
        "    journald: {units: [app.service]}\n"
        "    multiline: {continue: '^\\s', timeout: 500ms}\n"
        "rules:\n"
        "  - {name: r, source: [app, jd], match: x}\n"
    )
    config = load_config(path)
    assert config.sources["app"].multiline == MultilineConfig("start", r"^\d", max_lines=30)
    assert config.sources["jd"].multiline == MultilineConfig(
        "continue", r"^\s", timeout=timedelta(milliseconds=500)
    )


# ---------------------------------------------------------------- samples in every format


def test_a_long_event_keeps_its_first_and_last_lines_as_a_sample() -> None:
    frames = [f'  File "/srv/app/m{i}.py", line {i}, in f{i}\n    g{i}()' for i in range(60)]
    text = "\n".join(["ERROR boom", "Traceback (most recent call last):", *frames, "KeyError: 'x'"])
    clipped = clip_sample(text)
    assert len(clipped) <= MAX_SAMPLE_CHARS
    assert clipped.startswith("ERROR boom\nTraceback (most recent call last):\n")
    assert clipped.endswith("\nKeyError: 'x'")
    left = text.count("\n") - clipped.count("\n") + 1
    assert f"\n… [{left} lines left out] …\n" in clipped
    assert clip_sample("x" * 5000) == "x" * MAX_SAMPLE_CHARS  # one line: cut as before


@pytest.mark.parametrize("fmt", ["slack", "discord", "teams", "ntfy", "pagerduty", "json"])
def test_a_traceback_sample_renders_as_its_lines_in_every_format(fmt: str) -> None:
    event = "\n".join(python_event(3))
    a = alert(samples=[event, "\n".join(java_event(4))])
    _url, _body, payload = render(fmt, a)
    flat = json.dumps(payload, ensure_ascii=False)
    # the lines arrive as lines (JSON "\n"), in order, the exception line included
    assert json.dumps(event, ensure_ascii=False)[1:-1] in flat
    if fmt == "slack":
        (block,) = [b for b in payload["blocks"] if "```" in json.dumps(b)]
        text = block["text"]["text"]
        assert text.startswith("```") and text.endswith("```") and text.count("```") == 2
        assert "\n".join(python_event(3)) in text
    if fmt == "discord":
        desc = payload["embeds"][0]["description"]
        assert desc.count("```") == 2 and "\n".join(python_event(3)) in desc


# ---------------------------------------------------------------- journald


@pytest.mark.journald
async def test_journald_entries_join_into_one_event_and_a_restart_reads_the_pending_one_again(
    journald: JournaldNamespace,
) -> None:
    from tests.journald_env import Collector
    from tests.test_journald import config, send

    tag = unique_tag()
    spec = MultilineConfig("start", STAMP, timeout=timedelta(hours=1))
    jcfg = config(journald, tag)
    jcfg = type(jcfg)(**{**jcfg.__dict__, "multiline": spec})
    send(journald, tag, *info(1), *python_event(2))  # each stdout line an entry, as journald has it
    clock = FakeClock()
    first = Collector(JournaldSource(jcfg, {}, clock))
    await first.wait_for(first.source.caught_up, what="caught up")
    await first.wait_lines(1)
    await first.close()
    assert first.texts() == ["\n".join(info(1))]
    committed = first.batches[-1].checkpoints[-1].value
    # the agent stopped with the traceback pending; the rest of it is written meanwhile
    send(journald, tag, *info(3))
    second = Collector(JournaldSource(jcfg, {"cursor": committed}, clock))
    try:
        assert await second.wait_lines(1) == ["\n".join(python_event(2))]
        (line,) = [ln for b in second.batches for ln in b.lines]
        assert line.fields is not None and line.fields["MESSAGE"] == "\n".join(python_event(2))
        assert line.fields["DETECTOR_TEST"] == tag and line.event_at is not None
        clock.advance(timedelta(hours=1))  # quiet: the last event is complete, live
        assert await second.wait_lines(2) == ["\n".join(python_event(2)), "\n".join(info(3))]
    finally:
        await second.close()


# ---------------------------------------------------------------- the agent, killed mid-event

KILL_RULES = """\
sources:
  app:
    file: "{log}"
    start_at: beginning
    multiline: {{start: '^\\d{{4}}-\\d\\d-\\d\\d', timeout: 1h}}
rules:
  - name: crashed
    source: app
    match: 'job=(?P<job>\\d+) crashed\\n(?s:.*)\\n(?P<error>\\w+Error): '
    group_by: [job]
    summary: "job {{job}}: {{error}}"
    repeat: never
"""


@pytest.mark.slow
async def test_sigkill_with_half_an_event_read_gives_one_alert_with_the_whole_event(
    tmp_path: Path,
) -> None:
    log = tmp_path / "app.log"
    log.touch()
    first, second = python_event(1), python_event(2)
    async with Receiver() as rx:
        cfg = config_in(tmp_path, KILL_RULES.format(log=log), rx.url + "/hook")
        agent = await AgentProcess(cfg).start()
        try:
            write(log, [*first, *second[:3]])
            # job 1 is complete (job 2 began): alerted, so committed with the position at job 2
            await rx.wait_until(lambda: len(crashes(rx)) == 1, within=20)
            await agent.kill()
            write(log, [*second[3:], *info(3)])
            agent = await AgentProcess(cfg).start()
            await rx.wait_until(lambda: len(crashes(rx)) >= 2, within=20)
            await eventually(
                lambda: not outbox_rows(tmp_path / "state.db", "state = 'pending'"), 20
            )
        finally:
            await agent.terminate()
    by_job: dict[str, list[dict[str, Any]]] = {}
    for a in crashes(rx):
        by_job.setdefault(a["labels"]["job"], []).append(a)
    assert sorted(by_job) == ["1", "2"]
    (two,) = by_job["2"]  # once, whole: the half read before the kill was never counted
    assert two["x"]["samples"] == ["\n".join(second)]
    assert two["annotations"]["summary"] == "job 2: ZeroDivisionError"
    assert {a["x"]["event_id"] for a in by_job["1"]} == {by_job["1"][0]["x"]["event_id"]}


def crashes(rx: Receiver) -> list[dict[str, Any]]:
    return [a for a in alerts_of(rx) if a["labels"]["rule"] == "crashed"]
