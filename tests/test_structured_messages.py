"""``message:`` and ``time:`` of ``parse:`` sources, and ``parse: docker``: the record's message
is the line's text (``match:``, ``{line}``, samples), its time field the line's time, docker's
16 KiB pieces joined back into one line and a Python traceback written one docker record per
line joined by ``multiline:`` on the messages — live and in ``detector test`` alike, on real
docker json-file material and a Go service's logfmt written to real files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.clock import FakeClock
from detector.config.load import ConfigError, load_config
from detector.model import MultilineConfig
from detector.replay import replay
from detector.sources.events import Event, EventAssembler
from tests.agent_proc import config_in
from tests.receiver import Receiver
from tests.test_service import alerts_of, idle, run_agent


def docker(log: str, stream: str, time: str) -> str:
    """One line of docker's json-file driver (``json.dumps`` escapes as docker's encoder)."""
    return json.dumps({"log": log, "stream": stream, "time": time}, separators=(",", ":"))


LONG = "172.17.0.1 - - " + "x" * 40_000  # docker writes it as 16384 + 16384 + the rest + "\n"
PIECES = [LONG[:16384], LONG[16384:32768], LONG[32768:] + " status=500\n"]

# a Flask app in a container: access lines on stdout, a traceback on stderr, one record a line
DOCKER_LOG = [
    docker(
        '172.17.0.1 - - [03/Dec/2026 10:00:00] "GET /health HTTP/1.1" 200 -\n',
        "stdout",
        "2026-12-03T10:00:00.123456789Z",
    ),
    docker(
        '172.17.0.1 - - [03/Dec/2026 10:00:01] "GET /x HTTP/1.1" 500 -\n',
        "stdout",
        "2026-12-03T10:00:01.000000001Z",
    ),
    docker(
        "[2026-12-03 10:00:02,001] ERROR in app: Exception on /orders [POST]\n",
        "stderr",
        "2026-12-03T10:00:02.001000000Z",
    ),
    docker("Traceback (most recent call last):\n", "stderr", "2026-12-03T10:00:02.001100000Z"),
    docker(
        '  File "/usr/local/lib/python3.12/site-packages/flask/app.py", line 1473, in wsgi_app\n',
        "stderr",
        "2026-12-03T10:00:02.001200000Z",
    ),
    docker("    response = self.full_dispatch_request()\n", "stderr", "2026-12-03T10:00:02.0013Z"),
    docker('  File "/app/orders.py", line 41, in create\n', "stderr", "2026-12-03T10:00:02.0014Z"),
    docker("    total = sum(i.price for i in items)\n", "stderr", "2026-12-03T10:00:02.0015Z"),
    docker(
        "TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'\n",
        "stderr",
        "2026-12-03T10:00:02.0016Z",
    ),
    *(
        docker(p, "stdout", f"2026-12-03T10:00:03.00000000{i}Z")
        for i, p in enumerate(PIECES, start=1)
    ),
    docker(
        "[2026-12-03 10:00:04,000] INFO in app: order 7 created\n",
        "stderr",
        "2026-12-03T10:00:04.000000000Z",
    ),
]

DOCKER_RULES = """\
sources:
  web: {{file: "{log}", parse: docker, multiline: {{start: '^\\[\\d{{4}}-|^\\d+\\.\\d+\\.'}}}}
rules:
  - name: http-500
    source: web
    match: '" 500 -$'
    summary: "{{stream}}: {{line}}"
    repeat: never
    samples: ['{{"log":"1.2.3.4 - - [x] \\"GET / HTTP/1.1\\" 500 -\\n","stream":"stdout"}}']
  - name: tracebacks
    source: web
    match: '^\\[[^]]+\\] ERROR in (?P<module>\\w+):(?s:.*)\\n(?P<exc>\\w+Error): (?P<why>.*)$'
    summary: "{{exc}} in {{module}}: {{why}}"
    repeat: never
  - name: long-lines
    source: web
    match: '^172\\.17\\.0\\.1 - - (?P<head>x{{40000}}) status=(?P<status>\\d+)$'
    summary: "{{status}} after {{head}}"
    repeat: never
"""


def _firing(result: Any) -> list[dict[str, Any]]:
    return [n for n in result.notifications if n["notification"] == "firing"]


def test_docker_messages_are_matched_shown_and_timed_and_long_lines_and_tracebacks_join(
    tmp_path: Path,
) -> None:
    log = tmp_path / "container-json.log"
    log.write_text("\n".join(DOCKER_LOG) + "\n")
    cfg = load_config(config_in(tmp_path, DOCKER_RULES.format(log=log), "http://127.0.0.1:9/h"))
    result = replay(cfg, [(str(log), "web")])
    got = {n["rule"]: n for n in _firing(result)}
    assert set(got) == {"http-500", "tracebacks", "long-lines"}
    # match: saw the message (its `$` before docker's "\n"), {line} shows it, not the JSON
    assert got["http-500"]["summary"] == (
        'stdout: 172.17.0.1 - - [03/Dec/2026 10:00:01] "GET /x HTTP/1.1" 500 -'
    )
    # the line's time is docker's `time`, to the microsecond, not the stamp in the text
    assert got["http-500"]["created_at"].startswith("2026-12-03T10:00:01.000")
    # the traceback, one docker record a line, is one event: its first record's time
    tb = got["tracebacks"]
    assert tb["summary"] == (
        "TypeError in app: unsupported operand type(s) for +: 'int' and 'NoneType'"
    )
    assert tb["created_at"].startswith("2026-12-03T10:00:02.001")
    assert result.matches["tracebacks"] == 1
    # three 16 KiB pieces are one line again, whole (the capture is the 40,000 x)
    assert got["long-lines"]["summary"] == "500 after " + "x" * 40_000
    assert result.matches["long-lines"] == 1
    assert result.unparsed == {}
    assert result.events == 5  # 2 access lines, the traceback, the long line, the INFO line
    assert result.lines == len(DOCKER_LOG)


def test_a_long_line_interrupted_by_the_other_stream_is_cut_there(tmp_path: Path) -> None:
    spec = MultilineConfig(
        mode="none", pattern="", parse="json", message="log", partial=True, max_lines=200
    )
    events: EventAssembler[int] = EventAssembler(spec)
    lines = [
        docker("a" * 10, "stdout", "t1"),
        docker("oops\n", "stderr", "t2"),
        docker("b\n", "stdout", "t3"),
    ]
    out = events.push_all((t, i) for i, t in enumerate(lines))
    assert [(json.loads(e.text)["log"], e.mark) for e in out] == [
        ("a" * 10, 0),
        ("oops\n", 1),
        ("b\n", 2),
    ]
    assert events.flush() is None


def test_pieces_of_a_long_line_commit_only_at_its_end_and_a_restart_reads_it_whole() -> None:
    """The read position (``resume``) stays at the first piece until the last one is read, so
    a restart after any piece reads the line again from its start: one line, never two."""
    spec = MultilineConfig(mode="none", pattern="", parse="json", message="log", partial=True)
    records = [docker(p, "stdout", f"t{i}") for i, p in enumerate(PIECES)]
    marks = [0]
    for r in records[:-1]:
        marks.append(marks[-1] + len(r) + 1)
    for stop in range(1, len(records)):
        first: EventAssembler[int] = EventAssembler(spec)
        assert first.push_all(zip(records[:stop], marks[:stop], strict=True)) == []
        resume = first.resume()
        assert resume == 0
        again: EventAssembler[int] = EventAssembler(spec)
        i = marks.index(resume)
        out: list[Event[int]] = again.push_all(zip(records[i:], marks[i:], strict=True))
        assert len(out) == 1 and out[0].lines == 3 and out[0].mark == 0
        assert json.loads(out[0].text)["log"] == LONG + " status=500"


# a Go service (go-kit/log style logfmt): the message is msg, the time is ts
LOGFMT = [
    'ts=2026-12-03T10:00:00.001Z level=info caller=main.go:42 msg="starting server" addr=:8080',
    'ts=2026-12-03T10:00:01.002Z level=error caller=db.go:118 msg="query failed" '
    'err="pq: relation \\"orders\\" does not exist" query_ms=3.2',
    "ts=2026-12-03T10:00:02.003Z level=error caller=db.go:118 err=timeout",
    "goroutine 1 [running]:",
]

LOGFMT_RULES = """\
sources:
  svc: {{file: "{log}", parse: logfmt, message: msg, time: ts}}
rules:
  - name: query-failed
    source: svc
    match: '^query failed$'
    fields: {{level: '^error$'}}
    summary: "{{caller}}: {{line}}: {{err}}"
    repeat: never
  - name: raw-text
    source: svc
    match: 'err=timeout$|running'
    repeat: never
"""


def test_a_go_logfmt_service_matches_msg_and_takes_its_time_from_ts(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("\n".join(LOGFMT) + "\n")
    cfg = load_config(config_in(tmp_path, LOGFMT_RULES.format(log=log), "http://127.0.0.1:9/h"))
    result = replay(cfg, [(str(log), "svc")])
    got = {n["rule"]: n for n in _firing(result)}
    assert got["query-failed"]["summary"] == (
        'db.go:118: query failed: pq: relation "orders" does not exist'
    )
    assert got["query-failed"]["created_at"].startswith("2026-12-03T10:00:01.002")
    assert result.matches["query-failed"] == 1
    # a record without msg, and a line that is not logfmt, are matched as their raw text
    assert result.matches["raw-text"] == 2
    assert result.unparsed == {"svc": 1}


async def test_live_agent_sends_what_detector_test_finds_with_docker_time(tmp_path: Path) -> None:
    log = tmp_path / "container-json.log"
    log.touch()
    clock = FakeClock(datetime(2026, 12, 3, 10, 0, tzinfo=UTC))
    async with Receiver() as rx:
        cfg = config_in(tmp_path, DOCKER_RULES.format(log=log), rx.url + "/hook")

        async def body(agent: Any) -> None:
            with log.open("a") as f:  # appended while the agent runs, in two writes
                f.write("\n".join(DOCKER_LOG[:10]) + "\n")
                f.flush()
                await idle(agent)
                f.write("\n".join(DOCKER_LOG[10:]) + "\n")
            await idle(agent)
            clock.advance(
                timedelta(seconds=5)
            )  # the last event (the INFO line) is complete after its timeout
            await rx.wait_until(lambda: len(alerts_of(rx)) >= 3, within=15)
            await idle(agent)

        await run_agent(cfg, clock, body)
    live = {a["labels"]["rule"]: a for a in alerts_of(rx) if a["status"] == "firing"}
    result = replay(load_config(cfg), [(str(log), "web")])
    expected = {n["rule"]: n for n in _firing(result)}
    assert set(live) == set(expected) == {"http-500", "tracebacks", "long-lines"}
    for rule, a in live.items():
        assert a["annotations"]["summary"] == expected[rule]["summary"]
    # live, too, the line's time is docker's own, not the (fake) arrival time 10:00:00
    assert live["http-500"]["startsAt"].startswith("2026-12-03T10:00:01")
    samples = live["tracebacks"]["x"]["samples"]
    assert samples[0].startswith("[2026-12-03 10:00:02,001] ERROR in app")
    assert samples[0].endswith("TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'")


@pytest.mark.parametrize(
    ("source", "where", "says"),
    [
        ("{file: /x.log, message: log}", "source 'a': message", "needs parse: json"),
        (
            "{file: /x.log, parse: json, time: ts, time_regex: 'ts=(\\S+)'}",
            "source 'a': time",
            "keep one",
        ),
        (
            "{file: /x.log, parse: json, multiline: {start: '^\\S'}}",
            "source 'a': multiline",
            "add message: FIELD",
        ),
        ("{file: /x.log, parse: dockr}", "source 'a': parse", "docker"),
    ],
)
def test_check_explains_message_time_and_multiline_on_parse_sources(
    tmp_path: Path, source: str, where: str, says: str
) -> None:
    body = f"sources:\n  a: {source}\nrules:\n  - name: r\n    source: a\n    match: x\n"
    with pytest.raises(ConfigError) as e:
        load_config(config_in(tmp_path, body, "http://127.0.0.1:9/h"))
    msg = str(e.value)
    assert where in msg and says in msg, msg


def test_check_matches_samples_of_a_message_source_on_their_message(tmp_path: Path) -> None:
    body = """\
sources:
  web: {file: /x.log, parse: docker}
rules:
  - name: r
    source: web
    match: '^GET .* 500$'
    samples: ['{"log":"GET /x 200\\n","stream":"stdout","time":"2026-12-03T10:00:00Z"}']
"""
    with pytest.raises(ConfigError) as e:
        load_config(config_in(tmp_path, body, "http://127.0.0.1:9/h"))
    assert "sample does not match the rule's match pattern" in str(e.value)
    ok = body.replace("GET /x 200", "GET /x 500")
    cfg = load_config(config_in(tmp_path, ok, "http://127.0.0.1:9/h"))
    assert cfg.rules[0].samples
