"""detector/logs.py against a real journald: one entry per record, at its syslog priority.

A private journald namespace (tests/journald_env.py) stands in for the system journal: the
native handler is pointed at its socket (``$DETECTOR_JOURNAL_SOCKET``, as a unit with
``LogNamespace=`` would see it at the default path), and stderr is connected to its stdout
stream exactly as systemd connects a service's (``$JOURNAL_STREAM`` = the socket's dev:inode).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from detector import logs
from tests.agent_proc import ROOT, AgentProcess, config_in
from tests.journald_env import (
    JournaldNamespace,
    journald_fixture,  # noqa: F401  (fixture "journald")
    journald_session_fixture,  # noqa: F401  (fixture "journald_session")
)

Entries = list[dict[str, Any]]


def message(entry: dict[str, Any]) -> str:
    """MESSAGE as text (journalctl writes a value it deems unprintable as a list of bytes)."""
    value = entry["MESSAGE"]
    return bytes(value).decode() if isinstance(value, list) else str(value)


def wait_entries(
    ns: JournaldNamespace, match: str, done: Callable[[Entries], bool], within: float = 10.0
) -> Entries:
    """Entries matching ``match`` once ``done(entries)`` holds (journald reads stream sockets
    asynchronously, so a sync alone does not promise a stream's last line is stored)."""
    deadline = time.monotonic() + within
    while True:
        found = ns.entries(match)
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@contextmanager
def journal_stream(ns: JournaldNamespace, identifier: str) -> Iterator[tuple[socket.socket, str]]:
    """A stdout-stream connection to ``ns``, set up as systemd sets up ``StandardError=journal``
    (priority 6, level prefix on), and the ``JOURNAL_STREAM`` value that names it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(ns.run_dir / "stdout"))
        sock.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
        st = os.fstat(sock.fileno())
        yield sock, f"{st.st_dev}:{st.st_ino}"
    finally:
        sock.close()


CHILD = textwrap.dedent(
    """\
    import logging
    from detector import logs
    assert logs.setup("journal") == "journal"
    log = logging.getLogger("detector")
    log.error("reload refused, the old configuration stays in force:\\n%s", "rules.yaml:3:5: bad")
    log.info("ready")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("processor crashed")
    logging.getLogger("aiohttp.client").warning("connection reset")
    """
)


def test_native_entries_keep_a_two_line_error_as_one_entry_at_priority_err(
    journald: JournaldNamespace,
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env={**os.environ, "DETECTOR_JOURNAL_SOCKET": journald.socket_path},
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = child.communicate(timeout=30)
    proc = subprocess.CompletedProcess(child.args, child.returncode, "", stderr)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing fell back to the stream
    mine = wait_entries(journald, f"_PID={child.pid}", lambda found: len(found) >= 4)
    assert len(mine) == 4, [message(e) for e in mine]
    by_priority = {e["PRIORITY"]: e for e in mine}
    assert set(by_priority) == {"3", "4", "6"}
    errors = [e for e in mine if e["PRIORITY"] == "3"]
    assert len(errors) == 2  # the two-line error and the traceback: one entry each
    assert message(errors[0]) == (
        "reload refused, the old configuration stays in force:\nrules.yaml:3:5: bad"
    )
    crash = message(errors[1])
    assert crash.startswith("processor crashed\nTraceback (most recent call last):\n")
    assert crash.rstrip().endswith("ZeroDivisionError: division by zero")
    info = by_priority["6"]
    assert message(info) == "ready"  # no timestamp of our own, no level word
    assert info["SYSLOG_IDENTIFIER"] == "detector"
    assert info["DETECTOR_LOGGER"] == "detector"
    assert info["CODE_FUNC"] == "<module>"
    assert int(info["CODE_LINE"]) == 6
    assert message(by_priority["4"]) == "aiohttp.client: connection reset"
    assert by_priority["4"]["DETECTOR_LOGGER"] == "aiohttp.client"


def test_a_huge_message_is_cut_to_the_documented_size_and_still_stored(
    journald: JournaldNamespace,
) -> None:
    name = f"detector.test{uuid.uuid4().hex[:8]}"
    handler = logs.JournalHandler(socket_path=journald.socket_path, stream=io.StringIO())
    log = logging.getLogger(name)
    log.propagate = False
    log.addHandler(handler)
    try:
        log.error("%s", "x" * 100_000 + "\nlast line")
    finally:
        log.removeHandler(handler)
        handler.close()
    [entry] = wait_entries(journald, f"DETECTOR_LOGGER={name}", lambda found: len(found) >= 1)
    text = message(entry)
    assert text.startswith("x" * logs.MAX_MESSAGE_BYTES + "\n… [")
    cut = len("x" * 100_000 + "\nlast line") - logs.MAX_MESSAGE_BYTES
    assert text.endswith(f"[{cut} more bytes cut]")
    assert entry["PRIORITY"] == "3"


def test_stderr_is_journal_only_for_the_fd_journal_stream_names(tmp_path: Path) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    with one.open("w") as f, other.open("w") as g:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert logs.stderr_is_journal(env, f.fileno())
        assert not logs.stderr_is_journal(env, g.fileno())  # inherited variable, other stderr
        assert not logs.stderr_is_journal({}, f.fileno())
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, f.fileno())
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:"}, f.fileno())
        assert logs.resolve("auto", env) == "text"  # this process's fd 2 is not that file
        assert logs.resolve("json", env) == "json"


def _run_invalid_agent(tmp_path: Path, stderr: Any, env: dict[str, str]) -> tuple[int, int]:
    """``detector run`` on a file with several errors; its exit status and pid."""
    cfg = tmp_path / "rules.yaml"
    cfg.write_text("version: 1\nrules:\n  - name: r\n    match: '('\n    bogus: 1\n")
    child = subprocess.Popen(
        [sys.executable, "-m", "detector", "run", "-c", str(cfg)],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    return child.wait(60), child.pid


def test_detector_run_under_a_journal_stream_logs_its_config_error_as_one_err_entry(
    tmp_path: Path, journald: JournaldNamespace
) -> None:
    tag = f"dt{uuid.uuid4().hex[:10]}"
    with journal_stream(journald, tag) as (sock, stream):
        env = {"JOURNAL_STREAM": stream, "DETECTOR_JOURNAL_SOCKET": journald.socket_path}
        rc, pid = _run_invalid_agent(tmp_path, sock.fileno(), env)
    assert rc == 2
    found = wait_entries(journald, f"_PID={pid}", lambda es: len(es) >= 1)
    errors = [e for e in found if e["PRIORITY"] == "3"]
    assert len(errors) == 1, [message(e) for e in found]
    text = message(errors[0])
    assert text.startswith("cannot start, invalid configuration:\n")
    assert len(text.splitlines()) >= 3  # the listing: every problem, in the same entry
    assert errors[0]["SYSLOG_IDENTIFIER"] == "detector"
    # nothing went to the stream: no entry carries the stream's identifier
    assert journald.entries(f"SYSLOG_IDENTIFIER={tag}") == []


def test_without_the_native_socket_records_fall_back_to_one_prefixed_stream_line(
    tmp_path: Path, journald: JournaldNamespace
) -> None:
    tag = f"dt{uuid.uuid4().hex[:10]}"
    with journal_stream(journald, tag) as (sock, stream):
        env = {"JOURNAL_STREAM": stream, "DETECTOR_JOURNAL_SOCKET": str(tmp_path / "no-socket")}
        rc, _ = _run_invalid_agent(tmp_path, sock.fileno(), env)
    assert rc == 2
    entries = wait_entries(
        journald,
        f"SYSLOG_IDENTIFIER={tag}",
        lambda es: any("invalid configuration" in message(e) for e in es),
    )
    assert [e["PRIORITY"] for e in entries] == ["4", "3"]
    assert "unusable" in message(entries[0])
    text = message(entries[1])
    assert text.startswith("cannot start, invalid configuration:\\n")  # one line, newlines shown
    assert "\n" not in text


def test_stderr_to_a_file_keeps_the_plain_text_lines(tmp_path: Path) -> None:
    out = tmp_path / "stderr.txt"
    with out.open("w") as f:
        st = os.fstat(f.fileno())
        other = f"{st.st_dev}:{st.st_ino + 1}"  # a journal stream that is not this file
        rc, _ = _run_invalid_agent(tmp_path, f, {"JOURNAL_STREAM": other})
    assert rc == 2
    lines = out.read_text().splitlines()
    assert lines[0].split(" ", 2)[2].startswith("ERROR detector: cannot start, invalid config")
    time.strptime(lines[0][:19], "%Y-%m-%d %H:%M:%S")  # our own timestamp leads the line
    assert len(lines) >= 3  # the listing follows, as before


async def test_agent_log_format_json_in_rules_yaml_is_honoured(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.touch()
    body = f"sources:\n  app: {{file: '{log}'}}\nrules:\n  - {{name: e, source: app, match: E}}\n"
    cfg = config_in(tmp_path, body, "http://127.0.0.1:9/hook", extra_agent="log_format: json\n")
    agent = await AgentProcess(cfg, env={"DETECTOR_LOG_FORMAT": ""}).start()
    try:
        records = [json.loads(line) for line in agent.log if line.startswith("{")]
    finally:
        assert await agent.terminate() == 0
    assert records, agent.log
    assert all(line.startswith("{") for line in agent.log), agent.log
    assert any(r["message"] == "ready" and r["level"] == "info" for r in records)
