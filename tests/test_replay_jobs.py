"""``detector test --jobs N``: worker processes match, this process evaluates, output unchanged."""

from __future__ import annotations

import multiprocessing
import os
import platform
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.cli import build_parser
from detector.matching import PatternSpec
from detector.model import AnomalyRateSpec, HeartbeatSpec, RuleConfig, ThresholdSpec
from detector.replay import ReplayResult, replay
from detector.replay.blocks import assembler, edges, read_chunks
from detector.replay.jobs import match_worker
from detector.sources.lines import Chunk, read_block, read_plan
from tests.helpers import config, loghub_log, rule

ROOT = Path(__file__).resolve().parents[1]
STARTED_AT = datetime(2026, 2, 1, tzinfo=UTC)
"""The replays' wall clock, fixed so that two replays can be compared field by field."""
SMALL_BLOCK = 4096
"""Read size for these tests: a few hundred blocks, so work really goes through the workers."""


def read_lines(path: Path, block: int, max_line: int = 64 * 1024) -> list[str]:
    """Every line of ``path`` as ``detector test`` reads it (one process)."""
    out: list[str] = []
    for chunk in read_chunks(str(path), max_line, block):
        if chunk.block is None:
            out += chunk.texts
        else:
            out += chunk.block.decode("utf-8", "replace").split("\n")[:-1]
    return out


def rules() -> tuple[RuleConfig, ...]:
    return (
        rule("errors", match=r"ERROR (?P<what>\w+)", group_by=("what",), ignore="ignorable"),
        rule(
            "disk",
            kind="threshold",
            match=r"WARN disk (?P<dev>sd\w)",
            threshold=ThresholdSpec(3, timedelta(minutes=2), by=("dev",)),
        ),
        rule(
            "backup",
            kind="heartbeat",
            match=r"backup (?:done|finished)",
            heartbeat=HeartbeatSpec(every=timedelta(minutes=10), grace=timedelta(minutes=1)),
        ),
    )


def generated_log(path: Path, lines: int = 8000, seed: int = 7) -> Path:
    """Timestamped lines 1-20 s apart: errors, disk warnings in bursts, a backup heartbeat with
    long gaps (silence alerts), plus CRLF endings, invalid UTF-8, non-ASCII text, blank lines
    and a last line without a newline."""
    r = random.Random(seed)
    t = 1_772_366_400  # 2026-03-01T12:00:00Z
    out: list[bytes] = []
    for i in range(lines):
        t += r.choice((1, 1, 2, 5, 20))
        if i % 1500 == 700:
            t += 3600  # an hour of nothing: the heartbeat goes silent
        stamp = f"{_iso(t)} host app[{r.randrange(100)}]: ".encode()
        kind = r.random()
        if kind < 0.05:
            body = f"ERROR {r.choice(('db', 'api', 'cache'))} failed".encode()
        elif kind < 0.07:
            body = b"ERROR db ignorable hiccup"
        elif kind < 0.12:
            body = f"WARN disk sd{r.choice('ab')} at 9{r.randrange(10)}%".encode()
        elif kind < 0.13:
            body = b"backup done"
        elif kind < 0.14:
            body = "ERROR caf\u00e9 n\u00e4me \u2013 b\u00e4d".encode()
        elif kind < 0.15:
            body = b"ERROR bin \xff\xfe garbage \xc3"
        elif kind < 0.16:
            out.append(b"")  # blank line
            body = b"INFO after a blank line"
        else:
            body = f"INFO request {r.randrange(10**6)} served in {r.randrange(500)} ms".encode()
        end = b"\r\n" if r.random() < 0.1 else b"\n"
        out.append(stamp + body + end)
    out.append(f"{_iso(t + 1)} host app[1]: ERROR db last line\r".encode())
    path.write_bytes(b"".join(out))
    return path


def _iso(t: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def outcome(res: ReplayResult) -> tuple[Any, ...]:
    """What a replay reports; ``event_id`` is random per notification, so it is left out."""
    notes = [{k: v for k, v in n.items() if k != "event_id"} for n in res.notifications]
    return res.lines, res.bytes, dict(res.matches), notes, dict(res.counts)


def test_two_jobs_report_the_same_matches_and_notifications_as_one(tmp_path: Path) -> None:
    log = generated_log(tmp_path / "app.log")
    cfg = config(*rules())
    one = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, block=SMALL_BLOCK)
    two = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, jobs=2, block=SMALL_BLOCK)
    three = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, jobs=3, block=SMALL_BLOCK * 3)
    # the log exercises every rule: errors fire, disk bursts cross the threshold, backup goes
    # silent during the gaps
    fired = {n["rule"] for n in one.notifications if n["notification"] == "firing"}
    assert fired == {"errors", "disk", "backup"}
    assert one.matches["errors"] > 100 and one.matches["backup"] > 10
    assert one.lines == log.read_bytes().count(b"\n") + 1  # the last line has no newline
    assert outcome(two) == outcome(one)
    single_big_block = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, block=SMALL_BLOCK * 3)
    assert outcome(three) == outcome(single_big_block)


def test_lines_reach_rules_exactly_as_read_in_one_process(tmp_path: Path) -> None:
    """CRLF endings, invalid UTF-8 and the unterminated last line: the sample texts the alerts
    carry are the same, character for character, as the single-process decoding gives."""
    log = generated_log(tmp_path / "app.log", lines=3000, seed=3)
    cfg = config(rule("any", match=r"ERROR", repeat=None))
    two = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, jobs=2, block=SMALL_BLOCK)
    expected = [t for t in read_lines(log, SMALL_BLOCK) if "ERROR" in t]
    samples = [s for n in two.notifications for s in n.get("samples", ())]
    assert samples and set(samples) <= set(expected)
    assert any("\ufffd" in s for s in samples)  # invalid bytes replaced, as in one process
    assert two.matches["any"] == len(expected)
    assert two.lines == log.read_bytes().count(b"\n") + 1


@pytest.mark.parametrize("jobs", [1, 2])
def test_lines_a_regex_cannot_decide_in_time_are_reported_not_skipped(
    tmp_path: Path, jobs: int
) -> None:
    """A lookbehind has no linear-time engine: on these lines `re` runs over its budget. The
    replay (whether the lines are matched here or in a worker) says so with an agent alert."""
    log = generated_log(tmp_path / "app.log", lines=2000, seed=5)
    undecided = "2026-03-01T13:00:00Z host app[1]: " + "word " * 8 + "wordy"
    with log.open("ab") as f:
        f.write(b"\n" + "\n".join([undecided] * 2).encode() + b"\n")
    cfg = config(rule("errors", match=r"ERROR"), rule("slow", match=r"word (\w+\s?)+$(?<=z)"))
    res = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, jobs=jobs, block=SMALL_BLOCK)
    assert res.matches["errors"] > 50 and res.matches["slow"] == 0
    agent = [n for n in res.notifications if n["rule"] == "detector-agent"]
    assert [(n["notification"], n["count"]) for n in agent] == [("firing", 2)]
    assert agent[0]["summary"].startswith("rule slow: lines took over 50 ms to match")
    assert agent[0]["samples"] == [undecided]


def test_rules_over_every_line_see_every_line_with_jobs(tmp_path: Path) -> None:
    log = generated_log(tmp_path / "app.log", lines=3000, seed=5)
    rate = rule(
        "rate",
        kind="anomaly_rate",
        match=None,
        anomaly_rate=AnomalyRateSpec(learn=timedelta(minutes=10), min_delta=1),
    )
    cfg = config(rate, *rules())
    one = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, block=SMALL_BLOCK)
    two = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, jobs=2, block=SMALL_BLOCK)
    assert outcome(two) == outcome(one)


def test_two_jobs_agree_with_one_on_the_loghub_openssh_sample() -> None:
    (log,) = loghub_log("OpenSSH")
    cfg = config(
        rule(
            "invalid-user",
            match=r"Invalid user (?P<user>\S+) from (?P<ip>[\d.]+)",
            group_by=("ip",),
        ),
        rule(
            "auth-failures",
            kind="threshold",
            match=r"authentication failure;.*rhost=(?P<rhost>\S+)",
            threshold=ThresholdSpec(5, timedelta(minutes=1), by=("rhost",)),
        ),
        rule(
            "accepted",
            kind="heartbeat",
            match=r"Accepted password for",
            heartbeat=HeartbeatSpec(every=timedelta(minutes=30)),
        ),
    )
    one = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, block=SMALL_BLOCK)
    two = replay(cfg, [(str(log), "s")], started_at=STARTED_AT, jobs=2, block=SMALL_BLOCK)
    assert one.lines == 2000 and one.matches["invalid-user"] > 0
    assert one.matches["auth-failures"] > 0 and one.firing
    assert outcome(two) == outcome(one)


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_jobs_must_be_a_positive_whole_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["test", "-c", "rules.yaml", "x.log", "--jobs", value])
    assert e.value.code == 2
    assert "--jobs" in capsys.readouterr().err


def test_jobs_defaults_to_one_and_may_exceed_the_cpu_count() -> None:
    parser = build_parser()
    assert parser.parse_args(["test", "-c", "r.yaml", "x.log"]).jobs == 1
    many = (os.cpu_count() or 1) + 3
    assert parser.parse_args(["test", "-c", "r.yaml", "x.log", "--jobs", str(many)]).jobs == many


def _cli(
    tmp_path: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        "version: 1\nsources:\n  app: {file: /nonexistent/app.log}\nrules:\n"
        "  - name: errors\n    source: app\n    match: 'ERROR (?P<what>\\w+)'\n"
        "    group_by: [what]\n"
        "  - name: backup\n    source: app\n    match: 'backup done'\n"
        "    expect: {every: 10m}\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "detector", "test", "-c", str(cfg), "--no-progress", *args],
        input=stdin.decode("utf-8", "replace") if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=ROOT,
        # Notifications due at the same instant come out in set order: fix the hash seed so two
        # runs can be compared line by line (one process and --jobs 2 alike).
        env={**os.environ, "PYTHONHASHSEED": "0"},
        timeout=60,
        check=False,
    )


def _report(out: subprocess.CompletedProcess[str]) -> str:
    """Everything but the first line (which has the elapsed time)."""
    assert out.returncode in (0, 1), out.stderr
    return out.stdout.split("\n", 1)[1]


def test_cli_with_jobs_prints_the_same_report_on_a_file_over_one_block(tmp_path: Path) -> None:
    log = generated_log(tmp_path / "app.log", lines=24_000)  # ~1.5 MB: two 1 MiB blocks
    assert log.stat().st_size > 1 << 20
    one = _cli(tmp_path, str(log))
    two = _cli(tmp_path, str(log), "--jobs", "2")
    assert "FIRING" in one.stdout and "24001 lines" in one.stdout
    assert _report(two) == _report(one)
    assert two.stdout.split(" in ")[0] == one.stdout.split(" in ")[0]  # lines and MB
    assert two.stderr == ""


def test_stdin_with_jobs_is_read_in_one_process_with_a_note(tmp_path: Path) -> None:
    data = generated_log(tmp_path / "app.log", lines=500).read_bytes()
    one = _cli(tmp_path, "-", stdin=data)
    two = _cli(tmp_path, "-", "--jobs", "2", stdin=data)
    assert "does not apply to standard input" in two.stderr
    assert "does not apply" not in one.stderr
    assert _report(two) == _report(one)


def _expected_lines(data: bytes) -> list[str]:
    """The specification: lines split at LF, one CR before each LF dropped (CRLF), trailing CRs of
    an unterminated last line dropped, each line decoded with errors="replace"."""
    if not data:
        return []
    parts = data.split(b"\n")
    last = parts.pop()
    lines = [p[:-1] if p.endswith(b"\r") else p for p in parts]
    if last:
        lines.append(last.rstrip(b"\r"))
    return [line.decode("utf-8", "replace") for line in lines]


def test_block_cuts_never_change_the_lines_for_awkward_bytes(tmp_path: Path) -> None:

    r = random.Random(11)
    alphabet = [
        b"a",
        b"\n",
        b"\r",
        b"\r\n",
        b"\xff",
        b"\xc3",
        b"\xa9",
        b"\xe2\x82",
        b"\xe2\x82\xac",
    ]
    for _ in range(300):
        data = b"".join(r.choice(alphabet) for _ in range(r.randrange(0, 60)))
        block = r.choice((1, 2, 3, 7, 64))
        log = tmp_path / "log"
        log.write_bytes(data)
        got = read_lines(log, block)
        assert got == _expected_lines(data), (data, block)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.sampled_from([b"\n", b"\r\n", b"a", b"\xff", b"\xe2\x82"]),
            st.integers(1, 300).map(lambda n: b"x" * n),
        ),
        max_size=40,
    ),
    block=st.integers(1, 64),
    step=st.integers(1, 9),
)
def test_workers_find_exactly_the_blocks_one_process_reads(
    tmp_path_factory: pytest.TempPathFactory, parts: list[bytes], block: int, step: int
) -> None:
    """Each --jobs worker reads its span of the file alone (the spans found by looking back
    ``step`` bytes at a time from the end of each read); the chunks of lines must be exactly
    those one process makes reading the whole file: same lines, same cuts, same order."""
    data = b"".join(parts)
    path = tmp_path_factory.mktemp("cuts") / "log"
    path.write_bytes(data)
    max_line = 50  # some lines are cut, some held across reads
    expected = list(read_chunks(str(path), max_line, block))
    found: list[Chunk] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        spans = list(read_plan(fd, len(data), block, step))
        for lo, hi in spans:
            lines = assembler(max_line)
            pos = lo
            while pos < hi:
                n, chunks = read_block(fd, pos, lines, block, end=hi)
                assert n > 0
                pos += n
                found += chunks
            if hi == len(data):
                last = lines.flush()
                found += [last] if last is not None else []
            else:
                assert lines.pending == 0  # a span ends where nothing is held
    finally:
        os.close(fd)
    assert found == expected
    assert [lo for lo, _ in spans[1:]] == [hi for _, hi in spans[:-1]]  # the file, whole
    assert not data or (spans[0][0], spans[-1][1]) == (0, len(data))


@given(
    data=st.lists(st.sampled_from([b"a", b"\n", b"\xff", b"\xe2\x82", b"bc"]), max_size=80).map(
        b"".join
    ),
    k=st.integers(1, 8),
)
def test_block_edges_are_its_first_and_last_lines_decoded(data: bytes, k: int) -> None:
    """Where the replay reads the clock when no rule hits: found without splitting the block
    (nor copying it: ``stop``)."""
    head = [t.decode("utf-8", "replace") for t in data.split(b"\n", k)[:k]]
    tail = [t.decode("utf-8", "replace") for t in data.rsplit(b"\n", k)[-k:]]
    assert edges(data, k) == (head, tail)
    assert edges(data + b"\n", k, stop=len(data)) == (head, tail)  # a block, its newline left


def test_a_worker_refuses_a_file_replaced_since_the_replay_measured_it(tmp_path: Path) -> None:
    """Workers open the path themselves: if it now leads to another file (rotated meanwhile),
    they must say so, not read the new file's bytes at the old file's offsets."""
    log = tmp_path / "app.log"
    log.write_text("ERROR old\n")
    old = log.stat()
    log.rename(tmp_path / "app.log.1")
    log.write_text("ERROR new\n")
    new = log.stat()
    here, there = multiprocessing.Pipe()
    specs = [PatternSpec("r", "match", r"ERROR (?P<w>\w+)", frozenset({"s"}))]
    worker = threading.Thread(target=match_worker, args=(there, specs))
    worker.start()
    try:
        here.send((str(log), (old.st_dev, old.st_ino), "s", 0, 10, True, False, 1000, 4096))
        answer = here.recv()
        assert isinstance(answer, str) and "was replaced during the replay" in answer
        here.send((str(log), (new.st_dev, new.st_ino), "s", 0, 10, True, False, 1000, 4096))
        [(lines, _chars, hits, texts, *_)] = here.recv()
        assert (lines, hits, texts) == (1, [(0, "r", "match", {"w": "new"})], {0: "ERROR new"})
    finally:
        here.send(None)
        worker.join(timeout=10)


def _minor_faults(tmp_path: Path, log: Path, *args: str) -> int:
    """Minor page faults of a whole ``detector test`` of ``log`` (its workers included)."""
    cfg = tmp_path / "quiet.yaml"
    cfg.write_text(
        "version: 1\nsources:\n  app: {file: /nonexistent/app.log}\nrules:\n"
        "  - name: errors\n    source: app\n    match: 'ERROR (?P<what>\\w+)'\n"
    )
    argv = [sys.executable, "-m", "detector", "test", "-c", str(cfg), str(log), "--quiet"]
    proc = subprocess.Popen(
        [*argv, "--no-progress", *args],
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    _pid, status, usage = os.wait4(proc.pid, 0)  # reaped here, with its usage
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode in (0, 1)
    return usage.ru_minflt  # the process's and its waited-for children's (the workers)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds")
def test_jobs_workers_reuse_the_memory_of_their_reads(tmp_path: Path) -> None:
    """Each ~1 MiB read of a worker reuses the memory of the one before
    (``keep_read_buffers``): 60 MiB more of a file cost few page faults more, not about two per
    page read (glibc's adaptive thresholds: +29k for these 15k pages; one process faulted
    less, and less predictably, which is why it is not asserted here)."""
    lines = [
        f"2026-03-01T12:{i // 60 % 60:02d}:{i % 60:02d}Z host app[{i % 977}]: "
        + (f"ERROR db{i % 7} failed" if i % 50 == 0 else f"GET /index/{i}.html 200 quietly")
        + "\n"
        for i in range(1 << 14)
    ]
    part = "".join(lines).encode()  # ~1.1 MB, a hit every 50 lines
    small, big = tmp_path / "small.log", tmp_path / "big.log"
    small.write_bytes(part * 4)
    big.write_bytes(part * 60)
    more = (big.stat().st_size - small.stat().st_size) // 4096
    extra = _minor_faults(tmp_path, big, "--jobs", "2") - _minor_faults(
        tmp_path, small, "--jobs", "2"
    )
    assert extra < more // 8, f"{extra} page faults more for {more} pages more read"
