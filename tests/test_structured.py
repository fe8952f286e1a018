"""Structured lines: the JSON and logfmt parsers, ``parse:`` sources and ``fields:`` rules, live
and in ``detector test``, on real material written to real files (nginx ``escape=json`` access
logs, docker's json-file lines, a Go service's logfmt), and unparsable lines counted and
reported."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.clock import FakeClock
from detector.config.load import ConfigError, load_config
from detector.matching.fields import PARSE_REPORT_EVERY, ParseFailures
from detector.pipeline import Pipeline
from detector.records import Checkpoint
from detector.replay import replay
from detector.rules.base import When
from detector.sources.base import Batch
from detector.structured import (
    ParseError,
    Record,
    format_logfmt,
    lookup,
    parse_json,
    parse_logfmt,
)
from detector.templating import render
from tests.agent_proc import config_in
from tests.receiver import Receiver
from tests.test_service import alerts_of, idle, run_agent

# ---------------------------------------------------------------- material

# nginx: log_format json escape=json '{"time":"$time_iso8601","remote_addr":"$remote_addr",…}'
# escape=json writes " as \", \ as \\ and control characters as \u00XX.
NGINX = [
    '{"time":"2026-11-25T10:00:00+00:00","remote_addr":"203.0.113.7","request_method":"GET",'
    '"request_uri":"/","status":200,"body_bytes_sent":612,"request_time":0.001,'
    '"http_user_agent":"curl/8.5.0","upstream":{"addr":"10.0.0.5:8080","status":200}}',
    '{"time":"2026-11-25T10:00:01+00:00","remote_addr":"203.0.113.8","request_method":"POST",'
    '"request_uri":"/api/orders","status":502,"body_bytes_sent":157,"request_time":30.002,'
    '"http_user_agent":"Mozilla/5.0 (X11; Linux x86_64) \\"quoted\\"","upstream":'
    '{"addr":"10.0.0.5:8080","status":502}}',
    '{"time":"2026-11-25T10:00:02+00:00","remote_addr":"203.0.113.9","request_method":"GET",'
    '"request_uri":"/static/app.js?v=\\u001b[31m","status":404,"body_bytes_sent":153,'
    '"request_time":0.000,"http_user_agent":"-","upstream":{"addr":"","status":null}}',
    '{"time":"2026-11-25T10:00:03+00:00","remote_addr":"203.0.113.8","request_method":"GET",'
    '"request_uri":"/api/orders/7","status":504,"body_bytes_sent":167,"request_time":60.001,'
    '"http_user_agent":"okhttp/4.12.0","upstream":{"addr":"10.0.0.6:8080","status":504}}',
    "2026/11/25 10:00:04 [error] 1234#0: *1 connect() failed (111: Connection refused)",
    '{"time":"2026-11-25T10:00:05+00:00","remote_addr":"203.0.113.8","request_method":"GET",'
    '"request_uri":"/api/orders","status":502,"body_bytes_sent":157,"request_time":0.010,'
    '"http_user_agent":"okhttp/4.12.0","upstream":{"addr":"10.0.0.5:8080","status":502}}',
]

# docker's json-file driver: one object per line, the message (with its newline) in "log"
DOCKER = [
    '{"log":"2026/11/25 10:00:00 listening on :8080\\n","stream":"stdout",'
    '"time":"2026-11-25T10:00:00.123456789Z"}',
    '{"log":"panic: runtime error: invalid memory address or nil pointer dereference\\n",'
    '"stream":"stderr","time":"2026-11-25T10:00:01.000000001Z"}',
    '{"log":"[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x4a2f1c]\\n",'
    '"stream":"stderr","time":"2026-11-25T10:00:01.000000002Z"}',
    '{"log":"2026/11/25 10:00:02 GET /healthz 200\\n","stream":"stdout",'
    '"time":"2026-11-25T10:00:02.5Z"}',
]

# logfmt of a Go service (go-kit / logrus TextFormatter style)
LOGFMT = [
    'ts=2026-11-25T10:00:00.001Z level=info caller=main.go:42 msg="starting server" addr=:8080',
    'ts=2026-11-25T10:00:01.002Z level=error caller=db.go:118 msg="query failed" '
    'err="pq: relation \\"orders\\" does not exist" query_ms=3.2 retry',
    'ts=2026-11-25T10:00:02.003Z level=warn caller=http.go:77 msg="slow request" '
    "path=/api/orders?id=7&x=1 duration=2.5s",
    'ts=2026-11-25T10:00:03.004Z level=error caller=db.go:118 msg="query failed" '
    'err="dial tcp 10.0.0.5:5432: connect: connection refused" query_ms=0',
    "goroutine 1 [running]:",
]

RULES = """\
sources:
  nginx: {{file: "{dir}/access.json", parse: json}}
  docker: {{file: "{dir}/container-json.log", parse: json}}
  app: {{file: "{dir}/app.log", parse: logfmt}}
  plain: {{file: "{dir}/access.json"}}
rules:
  - name: nginx-5xx
    source: nginx
    fields: {{status: '^5\\d\\d$', upstream.addr: '^10\\.'}}
    group_by: [status]
    summary: "{{status}} from upstream {{upstream.addr}} for {{request_method}} {{request_uri}}"
    repeat: never
  - name: nginx-slow
    source: nginx
    match: '"request_time":'
    fields: {{request_time: '^(?P<secs>[1-9]\\d*)\\.'}}
    threshold: {{count: 2, within: 1m, by: [remote_addr]}}
    summary: "{{remote_addr}}: {{count}} requests over {{secs}}s"
    repeat: never
  - name: container-crash
    source: docker
    fields: {{stream: '^stderr$', log: '^(panic|fatal error):'}}
    summary: "{{log}}"
    repeat: never
  - name: app-errors
    source: app
    fields: {{level: '^error$'}}
    ignore: 'connection refused'
    summary: "{{caller}}: {{msg}}: {{err}}"
    repeat: never
  - name: plain-5xx
    source: plain
    match: '"status":5\\d\\d'
    repeat: never
"""


def write_material(tmp_path: Path) -> None:
    (tmp_path / "access.json").write_text("\n".join(NGINX) + "\n")
    (tmp_path / "container-json.log").write_text("\n".join(DOCKER) + "\n")
    (tmp_path / "app.log").write_text("\n".join(LOGFMT) + "\n")


# ---------------------------------------------------------------- the parsers


def test_logfmt_of_a_go_service_parses_quoted_values_escapes_and_bare_keys() -> None:
    got = parse_logfmt(LOGFMT[1])
    assert got == {
        "ts": "2026-11-25T10:00:01.002Z",
        "level": "error",
        "caller": "db.go:118",
        "msg": "query failed",
        "err": 'pq: relation "orders" does not exist',
        "query_ms": "3.2",
        "retry": "",  # a bare key
    }
    assert parse_logfmt(LOGFMT[2])["path"] == "/api/orders?id=7&x=1"  # '=' in a bare value
    assert parse_logfmt('a="tab\\there \\u00e9\\ud83d\\ude00 \\q" b=') == {
        "a": "tab\there é😀 \\q",
        "b": "",
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("goroutine 1 [running]:", "no key=value pair"),
        ('msg="never closed', "closing"),
        ('ke"y=1', "inside a key"),
        ("a=1 =2", "without a key"),
        ('a=b"c', "unquoted value"),
    ],
)
def test_lines_that_are_not_logfmt_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ParseError, match=why):
        parse_logfmt(text)


_KEY_CHARS = string.ascii_letters + string.digits + "_.-/:@"


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text(_KEY_CHARS, min_size=1, max_size=12),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30),
        min_size=1,
        max_size=8,
    )
)
def test_logfmt_round_trip_of_generated_keys_and_values(pairs: dict[str, str]) -> None:
    line = format_logfmt(pairs)
    assert "\n" not in line
    assert parse_logfmt(line) == pairs


def test_json_values_are_text_numbers_as_written_and_paths_reach_nested_values() -> None:
    rec = parse_json(
        '{"n": 1.50, "big": 12345678901234567890, "e": 1e3, "t": true, "f": false, "z": null,'
        ' "http": {"status": 503, "headers": {"x-id": "a b"}}, "tags": ["x", {"k": 2}],'
        ' "log.level": "error", "log": {"origin": "main.go"}}'
    )
    assert [lookup(rec, p) for p in ("n", "big", "e", "t", "f", "z")] == [
        "1.50",
        "12345678901234567890",
        "1e3",
        "true",
        "false",
        "null",
    ]
    assert lookup(rec, "http.status") == "503"
    assert lookup(rec, "http.headers.x-id") == "a b"
    assert lookup(rec, "http") == '{"status":503,"headers":{"x-id":"a b"}}'
    assert lookup(rec, "tags.1.k") == "2" and lookup(rec, "tags") == '["x",{"k":2}]'
    assert lookup(rec, "log.level") == "error"  # a flat key with a dot in it
    assert lookup(rec, "log.origin") == "main.go"
    assert lookup(rec, "http.nope") is None and lookup(rec, "tags.5") is None
    fields = dict(Record(rec))  # what templates and group_by see
    assert fields["http.headers.x-id"] == "a b" and fields["tags.1.k"] == "2"
    assert render("{http.status} {tags[1].k} {log.level} {nope.x}", fields) == (
        "503 2 error {nope.x}"
    )


@pytest.mark.parametrize("text", ["[1, 2]", "42", "null", '{"a": 1', "plain text"])
def test_a_line_that_is_not_a_json_object_does_not_parse(text: str) -> None:
    with pytest.raises(ParseError):
        parse_json(text)


# ---------------------------------------------------------------- detector test


def _notes(result: Any) -> list[tuple[str, str, str]]:
    return [(n["rule"], n["notification"], n["summary"]) for n in result.notifications]


def test_detector_test_matches_fields_of_nginx_docker_and_logfmt_lines(tmp_path: Path) -> None:
    write_material(tmp_path)
    cfg = load_config(config_in(tmp_path, RULES.format(dir=tmp_path), "http://127.0.0.1:9/h"))
    files = [
        (str(tmp_path / "access.json"), "nginx"),
        (str(tmp_path / "container-json.log"), "docker"),
        (str(tmp_path / "app.log"), "app"),
        (str(tmp_path / "access.json"), "plain"),
    ]
    result = replay(cfg, files)
    firing = [n for n in _notes(result) if n[1] == "firing"]
    assert firing == [
        ("nginx-5xx", "firing", "502 from upstream 10.0.0.5:8080 for POST /api/orders"),
        ("nginx-5xx", "firing", "504 from upstream 10.0.0.6:8080 for GET /api/orders/7"),
        ("nginx-slow", "firing", "203.0.113.8: 2 requests over 60s"),
        (
            "container-crash",
            "firing",
            "panic: runtime error: invalid memory address or nil pointer dereference\n",
        ),
        ("app-errors", "firing", 'db.go:118: query failed: pq: relation "orders" does not exist'),
        ("plain-5xx", "firing", "plain-5xx: " + NGINX[1][:200]),
    ]
    assert result.matches["nginx-5xx"] == 3  # 502, 504, 502: not the 404, not the error line
    assert result.matches["app-errors"] == 1  # the other error line is ignored
    assert result.matches["plain-5xx"] == 3  # the same file as plain text: a regex on the line
    # the nginx error line and the goroutine line did not parse; they were counted, not lost
    assert result.unparsed == {"nginx": 1, "app": 1}
    alert = next(n for n in result.notifications if n["rule"] == "nginx-5xx")
    assert alert["labels"]["status"] == "502"


def test_unparsable_lines_still_reach_match_rules_as_plain_text(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("\n".join(LOGFMT) + "\n")
    body = f"""\
sources:
  app: {{file: "{log}", parse: logfmt}}
rules:
  - name: goroutine-dump
    source: app
    match: '^goroutine \\d+ \\['
"""
    cfg = load_config(config_in(tmp_path, body, "http://127.0.0.1:9/h"))
    result = replay(cfg, [(str(log), "app")])
    assert result.matches["goroutine-dump"] == 1
    assert result.unparsed["app"] == 1


# ---------------------------------------------------------------- live = detector test


async def test_the_live_agent_alerts_as_detector_test_does_and_reports_unparsable_lines(
    tmp_path: Path,
) -> None:
    (tmp_path / "access.json").touch()
    (tmp_path / "container-json.log").touch()
    (tmp_path / "app.log").touch()
    clock = FakeClock(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))
    async with Receiver() as rx:
        cfg = config_in(tmp_path, RULES.format(dir=tmp_path), rx.url + "/hook")

        async def body(agent: Any) -> None:
            write_material(tmp_path)  # appended while the agent runs: read live, in blocks
            await idle(agent)
            await rx.wait_until(
                lambda: len([a for a in alerts_of(rx) if a["labels"]["kind"] == "agent"]) == 2,
                within=15,
            )
            await idle(agent)
            assert agent.health.value("unparsed_lines", source="nginx") == 1
            text = agent.health.render_prometheus()
            assert 'detector_unparsed_lines_total{source="nginx"} 1' in text
            assert 'detector_unparsed_lines_total{source="app"} 1' in text

        await run_agent(cfg, clock, body)
    live = alerts_of(rx)
    rules = sorted(
        (a["labels"]["rule"], a["annotations"]["summary"])
        for a in live
        if a["labels"]["kind"] != "agent"
    )
    result = replay(
        load_config(cfg),
        [
            (str(tmp_path / "access.json"), "nginx"),
            (str(tmp_path / "container-json.log"), "docker"),
            (str(tmp_path / "app.log"), "app"),
            (str(tmp_path / "access.json"), "plain"),
        ],
    )
    assert rules == sorted((r, s) for r, kind, s in _notes(result) if kind == "firing")
    agent_summaries = sorted(
        a["annotations"]["summary"] for a in live if a["labels"]["kind"] == "agent"
    )
    assert agent_summaries[0].startswith("source app: 1 line did not parse as logfmt")
    assert "goroutine 1 [running]:" in agent_summaries[0]
    assert agent_summaries[1].startswith("source nginx: 1 line did not parse as json")


def test_live_block_batches_and_replay_give_the_same_hits_with_jobs(tmp_path: Path) -> None:
    """The pipeline's block path (what the tailer sends) against ``detector test --jobs 2``
    on a file bigger than one block."""
    write_material(tmp_path)
    big = tmp_path / "access.json"
    lines = [*NGINX] * 400
    big.write_text("\n".join(lines) + "\n")
    cfg = load_config(config_in(tmp_path, RULES.format(dir=tmp_path), "http://127.0.0.1:9/h"))
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    live = Pipeline(cfg, t0, lambda _r: {})
    data = big.read_bytes()
    live.process(
        Batch("nginx", [], [Checkpoint("nginx", "1:1", {"offset": len(data)})], block=data),
        lambda _line: When.exact(t0),
        t0,
    )
    serial = replay(cfg, [(str(big), "nginx")], block=64 * 1024)
    jobs = replay(cfg, [(str(big), "nginx")], block=64 * 1024, jobs=2)
    assert live.lines_matched["nginx-5xx"] == serial.matches["nginx-5xx"] == 1200
    assert live.lines_matched == serial.matches == jobs.matches
    assert live.lines_unparsed("nginx") == serial.unparsed["nginx"] == jobs.unparsed["nginx"]
    assert jobs.unparsed["nginx"] == 400


# ---------------------------------------------------------------- reporting


def test_unparsable_lines_are_an_event_reported_at_most_once_per_interval() -> None:
    f = ParseFailures({"app": "json"})
    t = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert f.problems("app", t) == []
    f.note("app", 2, "oops", "not JSON: Expecting value", t)
    [p] = f.problems("app", t)
    assert p.occurrence == 1 and p.message.startswith("2 lines did not parse as json")
    f.note("app", 3, "again", "not JSON", t + timedelta(minutes=1))  # within the interval
    [p] = f.problems("app", t + timedelta(minutes=2))
    assert p.occurrence == 1 and f.count("app") == 5
    # the interval over: the lines since the last report are a new occurrence
    [p] = f.problems("app", t + PARSE_REPORT_EVERY + timedelta(minutes=1))
    assert p.occurrence == 2 and p.message.startswith("3 lines did not parse")
    assert "'again'" in p.message
    assert f.problems("app", t + timedelta(hours=1)) == []  # quiet long enough: it clears


# ---------------------------------------------------------------- detector check


def _check(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(config_in(tmp_path, body, "http://127.0.0.1:9/h"))
    return str(e.value)


def test_check_refuses_fields_on_plain_sources_and_parse_on_journald(tmp_path: Path) -> None:
    msg = _check(
        tmp_path,
        """\
sources:
  plain: {file: /var/log/syslog}
  jd: {journald: {units: [x.service]}, parse: json}
rules:
  - name: r
    source: plain
    fields: {level: error}
""",
    )
    assert (
        "rules.yaml:9:40: source 'jd'" in msg and "a journald source has its fields already" in msg
    )
    assert "source 'plain' has no fields" in msg and "add parse: json" in msg


def test_check_names_bad_paths_journal_names_regexes_and_parse_modes(tmp_path: Path) -> None:
    msg = _check(
        tmp_path,
        """\
sources:
  app: {file: /var/log/app.log, parse: yaml}
  jd: {journald: {units: [x.service]}}
rules:
  - name: r
    source: jd
    fields: {priority: '[0-3]', SYSLOG_IDENTIFIER: '(unclosed'}
  - name: s
    source: jd
    fields: {'a..b': x}
""",
    )
    assert "'yaml' is not allowed" in msg
    assert "'priority' is not a journald field name" in msg and "PRIORITY" in msg
    assert "fields.SYSLOG_IDENTIFIER: invalid regular expression" in msg
    assert "'a..b' is not a field path" in msg


def test_check_parses_samples_and_checks_their_fields(tmp_path: Path) -> None:
    msg = _check(
        tmp_path,
        """\
sources:
  app: {file: /var/log/app.log, parse: logfmt}
rules:
  - name: r
    source: app
    fields: {level: '^error$', err: refused}
    samples:
      - 'level=error msg="x" err="connection refused"'
      - 'level=info err=refused'
      - 'just text'
      - 'level=error'
""",
    )
    assert "field level='info' does not match '^error$'" in msg
    assert "does not parse (not logfmt: no key=value pair)" in msg
    assert "has no field 'err'" in msg
    assert "rules.yaml:14:" not in msg  # the first sample is good
    assert "rules.yaml:15:9:" in msg
    assert msg.count("samples:") == 3


def test_a_fields_only_rule_is_an_error_rule_and_paths_are_normalized(tmp_path: Path) -> None:
    cfg = load_config(
        config_in(
            tmp_path,
            """\
sources:
  app: {file: /var/log/app.json, parse: json}
rules:
  - name: r
    source: app
    fields: {'items[0].id': '^\\d+$'}
    summary: '{items.0.id} {anything}'
    group_by: [anything]
    samples: ['{"items": [{"id": 7}]}']
""",
            "http://127.0.0.1:9/h",
        )
    )
    [r] = cfg.rules
    assert r.kind == "error" and r.match is None and dict(r.fields) == {"items.0.id": "^\\d+$"}
