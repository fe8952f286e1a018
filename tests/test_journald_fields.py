"""A journald source reads only the fields its rules need (``journal_fields``), on both readers,
against a real private systemd-journald: the checkpoint is still that of the last entry handed
out, a restart from it loses and doubles nothing, a rule on a field other than ``MESSAGE`` still
matches, and a reload that needs other fields restarts the source where it was."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.clock import FakeClock, SystemClock
from detector.config import load_config
from detector.model import JournaldSourceConfig, MultilineConfig
from detector.rules.systemd_units import parse_event
from detector.service import Agent
from detector.sources.base import Line
from detector.sources.journald import (
    SYSTEMD_UNITS_FIELDS,
    JournaldSource,
    journal_fields,
    parse_entries,
)
from detector.sources.sdjournal import READER_ENV
from tests.agent_inproc import running, until
from tests.agent_proc import config_in, write_config
from tests.journald_env import (
    Collector,
    JournaldNamespace,
    journald_fixture,  # noqa: F401  (fixture "journald")
    journald_session_fixture,  # noqa: F401  (fixture "journald_session")
    unique_tag,
)
from tests.receiver import Receiver

POSITION = {"__CURSOR", "__REALTIME_TIMESTAMP", "__MONOTONIC_TIMESTAMP", "_BOOT_ID"}
"""What a reader may add to the fields asked for: the checkpoint's cursor, time and boot."""


@pytest.fixture(params=("sd-journal", "journalctl"))
def reader(request: pytest.FixtureRequest) -> Iterator[str]:
    old = os.environ.get(READER_ENV)
    os.environ[READER_ENV] = request.param
    try:
        yield str(request.param)
    finally:
        if old is None:
            os.environ.pop(READER_ENV, None)
        else:
            os.environ[READER_ENV] = old


def source(
    ns: JournaldNamespace, tag: str, fields: tuple[str, ...], reader: str, **kw: Any
) -> JournaldSource:
    checkpoints = kw.pop("checkpoints", {})
    max_batch = kw.pop("max_batch", 5000)
    cfg = JournaldSourceConfig(
        name="jd", namespace=ns.name, match={"DETECTOR_TEST": (tag,)}, start_at="beginning", **kw
    )
    src = JournaldSource(cfg, checkpoints, SystemClock(), fields=fields, max_batch=max_batch)
    assert src.reader == reader
    return src


def send(ns: JournaldNamespace, tag: str, *messages: str, **fields: str) -> None:
    ns.send_many([{"MESSAGE": m, "DETECTOR_TEST": tag, **fields} for m in messages])
    ns.sync()


def value_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint value after ``entry`` (as ``journalctl -o json`` stored it)."""
    return {
        "cursor": entry["__CURSOR"],
        "realtime_us": int(entry["__REALTIME_TIMESTAMP"]),
        "boot_id": entry["_BOOT_ID"],
    }


# ---------------------------------------------------------------- which fields


def test_journal_fields_are_message_and_what_the_sources_rules_name(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        "version: 1\n"
        f"agent: {{state: {tmp_path}/state.db}}\n"
        "webhooks: {hook: {url: 'http://127.0.0.1:9/h'}}\n"
        "sources:\n"
        "  jd: {journald: {units: [app.service]}}\n"
        "  other: {journald: {}}\n"
        "rules:\n"
        "  - {name: plain, source: jd, match: 'ERROR (?P<n>\\d+)', group_by: [n]}\n"
        "  - {name: by-unit, source: jd, match: 'x', group_by: [_SYSTEMD_UNIT],\n"
        "     summary: '{SYSLOG_IDENTIFIER}[{_PID}] {line}', description: '{CODE_FILE.x}'}\n"
        "  - {name: fielded, source: jd, fields: {PRIORITY: '^[0-3]$'}}\n"
        "  - {name: counted, source: jd, match: 'denied',\n"
        "     threshold: {count: 3, within: 1m, by: [_UID], distinct: REQUEST_ID}}\n"
        "  - {name: elsewhere, source: other, match: 'y', group_by: [ONLY_OTHER]}\n"
        "  - {name: units, source: other, systemd_units: true}\n"
    )
    config = load_config(cfg)
    assert journal_fields(config, "jd") == (
        "CODE_FILE",
        "MESSAGE",
        "PRIORITY",
        "REQUEST_ID",
        "SYSLOG_IDENTIFIER",
        "_PID",
        "_SYSTEMD_UNIT",
        "_UID",
    )  # `n` and `line` are not journal fields: never asked for
    assert journal_fields(config, "other") == tuple(
        sorted({"MESSAGE", "ONLY_OTHER", *SYSTEMD_UNITS_FIELDS})
    )


class _Recording(Mapping[str, str]):
    """A journal entry's fields that remembers which were looked at."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields, self.read = dict(fields), set[str]()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.fields.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return key in self.fields

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("a systemd_units rule must not read every field")

    def __len__(self) -> int:
        return len(self.fields)


@pytest.mark.parametrize(
    "entry",
    [
        {"MESSAGE": "app.service: Failed with result 'exit-code'.", "UNIT": "app.service",
         "UNIT_RESULT": "exit-code", "MESSAGE_ID": "d9b373ed55a64feb8242e02dbe79a49c"},
        {"MESSAGE": "app.service: Main process exited, code=exited, status=1/FAILURE",
         "UNIT": "app.service", "EXIT_CODE": "exited", "EXIT_STATUS": "1",
         "MESSAGE_ID": "98e322203f7a4ed290d09fe03c09fe15"},
        {"MESSAGE": "Started app.service - App.", "UNIT": "app.service", "JOB_RESULT": "done",
         "MESSAGE_ID": "39f53479d3a045ac8e11786248231fbf"},
        {"MESSAGE": "app.service: Deactivated successfully.", "USER_UNIT": "app.service",
         "_UID": "1000", "MESSAGE_ID": "7ad2d189f7e94e70a38c781354912448"},
    ],
)  # fmt: skip
def test_a_systemd_units_rule_reads_only_the_fields_journal_fields_gives_it(
    entry: dict[str, str],
) -> None:
    fields = _Recording({"SYSLOG_IDENTIFIER": "systemd", "_PID": "1", **entry})
    event = parse_event(
        Line("jd", entry["MESSAGE"], datetime(2026, 1, 1, tzinfo=UTC), None, fields)
    )
    assert event is not None and event.unit == "app.service"
    assert fields.read <= {"MESSAGE", *SYSTEMD_UNITS_FIELDS}


# ---------------------------------------------------------------- journalctl's JSON, parsed at once

_value = st.one_of(
    st.text(max_size=8), st.lists(st.integers(0, 255), max_size=3), st.none(), st.just(["a", "b"])
)
_entry = st.dictionaries(st.sampled_from(["MESSAGE", "A", "__CURSOR", "_PID"]), _value).map(
    lambda d: json.dumps(d, separators=(",", ":")).encode()
)
_garbage = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"{", b"}", b"1,2", b"{},{}", b'{"a":[{}', b"{}]}", b"[]", b"null"]),
)


@settings(deadline=None)  # a shared machine: time is not what this checks
@given(st.lists(st.one_of(_entry, _garbage), max_size=12))
def test_parsing_lines_at_once_gives_what_parsing_each_line_gives(lines: list[bytes]) -> None:
    def one(raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            return None

    expected = [e for e in map(one, [r for r in lines if r]) if type(e) is dict]
    entries, all_str, skipped = parse_entries([r for r in lines if r])
    assert entries == expected
    assert skipped == len([r for r in lines if r]) - len(expected)
    if all_str:
        assert all(type(v) is str for e in entries for v in e.values())


# ---------------------------------------------------------------- reading them from the journal


async def test_only_the_fields_asked_for_are_read_and_each_batch_checkpoints_its_last_entry(
    journald: JournaldNamespace, reader: str
) -> None:
    tag = unique_tag()
    send(journald, tag, "one", "two", "three", REQUEST_ID="r-1", SYSLOG_IDENTIFIER="billing")
    stored = journald.entries(f"DETECTOR_TEST={tag}")
    c = Collector(source(journald, tag, ("MESSAGE", "REQUEST_ID"), reader, max_batch=2))
    try:
        await c.wait_for(c.source.caught_up, what="caught up")
        assert c.texts() == ["one", "two", "three"]
        for line in c.lines:
            assert line.fields is not None and line.fields["REQUEST_ID"] == "r-1"
            assert set(line.fields) - POSITION == {"MESSAGE", "REQUEST_ID"}  # no other field
        assert [len(b.lines) for b in c.batches] == [2, 1]
        assert [b.checkpoints[0].value for b in c.batches] == [
            value_of(stored[1]),
            value_of(stored[2]),
        ]
        assert c.lines[0].event_at == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=int(stored[0]["__REALTIME_TIMESTAMP"])
        )
        assert c.source.status()["fields"] == ["MESSAGE", "REQUEST_ID"]
    finally:
        await c.close()


async def test_a_restart_from_a_checkpoint_reads_on_with_nothing_lost_or_doubled(
    journald: JournaldNamespace, reader: str
) -> None:
    tag = unique_tag()
    send(journald, tag, *(f"e{i}" for i in range(5)))
    first = Collector(source(journald, tag, ("MESSAGE",), reader, max_batch=2))
    await first.wait_for(lambda: len(first.batches) >= 1, what="one batch")
    await first.close()
    committed = first.batches[0].checkpoints[0].value  # the agent committed the first batch only
    send(journald, tag, "e5", "e6")  # written while it was down
    second = Collector(
        source(journald, tag, ("MESSAGE",), reader, checkpoints={"cursor": committed})
    )
    try:
        await second.wait_for(lambda: len(second.lines) >= 5, what="the rest")
        send(journald, tag, "e7")  # and live, after the catch-up
        await second.wait_for(lambda: len(second.lines) >= 6, what="the live entry")
        assert second.texts() == ["e2", "e3", "e4", "e5", "e6", "e7"]
        last = journald.entries(f"DETECTOR_TEST={tag}")[-1]
        assert second.batches[-1].checkpoints[0].value == value_of(last)
    finally:
        await second.close()


async def test_a_multiline_source_with_a_field_list_resumes_at_the_pending_event(
    journald: JournaldNamespace, reader: str
) -> None:
    tag = unique_tag()
    spec = MultilineConfig("start", r"^\d{4}-", timeout=timedelta(hours=1))
    send(journald, tag, "2026-01-01 ERROR a", "  detail a", "2026-01-01 ERROR b", REQUEST_ID="q")
    stored = journald.entries(f"DETECTOR_TEST={tag}")
    first = Collector(source(journald, tag, ("MESSAGE",), reader, multiline=spec))
    await first.wait_for(lambda: len(first.lines) >= 1, what="the first event")
    await first.wait_for(first.source.caught_up, what="caught up")
    await first.close()
    assert first.texts() == ["2026-01-01 ERROR a\n  detail a"]
    committed = first.batches[-1].checkpoints[-1].value
    assert committed == value_of(stored[1])  # the entry before the pending event
    send(journald, tag, "  detail b", "2026-01-01 INFO c")
    second = Collector(
        source(
            journald, tag, ("MESSAGE",), reader, multiline=spec, checkpoints={"cursor": committed}
        )
    )
    try:
        await second.wait_for(lambda: len(second.lines) >= 1, what="the pending event")
        assert second.texts() == ["2026-01-01 ERROR b\n  detail b"]
        (line,) = second.lines
        assert line.fields is not None and "REQUEST_ID" not in line.fields
    finally:
        await second.close()


# ---------------------------------------------------------------- the agent: rules and reload

RULES = """\
sources:
  jd: {{journald: {{namespace: "{ns}", match: {{DETECTOR_TEST: "{tag}"}}, start_at: beginning}}}}
rules:
  - {{name: errors, source: jd, match: 'ERROR (?P<n>\\d+)', group_by: [n], repeat: never}}
{more}"""
BY_IDENT = (
    "  - {name: by-ident, source: jd, match: 'ERROR', group_by: [SYSLOG_IDENTIFIER],"
    " severity: {severity}, repeat: never}\n"
)


def _alerts(rx: Receiver, rule: str) -> list[dict[str, str]]:
    return [
        a["labels"]
        for b in rx.bodies()
        for a in b["alerts"]
        if a["labels"]["rule"] == rule and a["status"] == "firing"
    ]


async def test_a_reload_whose_rules_need_other_fields_restarts_the_source_where_it_was(
    journald: JournaldNamespace, tmp_path: Path, reader: str
) -> None:
    tag = unique_tag()
    clock = FakeClock(datetime.now(UTC))
    async with Receiver() as rx:

        def write(more: str) -> Path:
            body = RULES.format(ns=journald.name, tag=tag, more=more)
            return write_config(cfg, body, state=tmp_path / "state.db", url=rx.url + "/h")

        cfg = config_in(tmp_path, RULES.format(ns=journald.name, tag=tag, more=""), rx.url + "/h")
        agent: Agent
        async with running(cfg, clock) as agent:

            def jd() -> JournaldSource:
                src = agent.sources["jd"].source
                assert isinstance(src, JournaldSource)
                return src

            def opened() -> bool:
                return "jd" in agent.sources and jd().opened.is_set()

            async def reload() -> None:
                before = agent.config
                agent.request_reload()
                await until(lambda: agent.config is not before, what="the reload")
                # a restarted source is started after the new config is in place
                await until(opened, what="the source open")

            await until(opened, what="open")
            assert jd().fields == ("MESSAGE",)
            send(journald, tag, "ERROR 1", SYSLOG_IDENTIFIER="billing")
            await rx.wait_for(1, within=15)
            await until(lambda: jd().status()["entries_read"] == 1, what="ERROR 1 read")
            await agent.wait_idle()  # ERROR 1's cursor committed

            old = jd()
            write(BY_IDENT.replace("{severity}", "warning"))
            await reload()
            assert jd() is not old  # restarted, reading the field the new rule groups by
            assert jd().fields == ("MESSAGE", "SYSLOG_IDENTIFIER")
            send(journald, tag, "ERROR 2", SYSLOG_IDENTIFIER="billing")
            await rx.wait_for(3, within=15)
            assert jd().status()["entries_read"] == 1  # ERROR 2 only: resumed after ERROR 1
            assert [a["n"] for a in _alerts(rx, "errors")] == ["1", "2"]
            assert [a["SYSLOG_IDENTIFIER"] for a in _alerts(rx, "by-ident")] == ["billing"]

            same = jd()
            write(BY_IDENT.replace("{severity}", "critical"))  # the same fields
            await reload()
            assert jd() is same  # not restarted
