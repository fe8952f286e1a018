"""What the short commands import: ``detector check``, ``test``, ``version`` and ``--help`` on a
tiny config start without the agent's modules (asyncio, aiohttp, SQLite) nor the ones a config
without them never needs (msgspec, OpenSSL, cronsim, zoneinfo…). Each is a few milliseconds of a
start that has to stay under 0.15 s (``bench/bench_startup.py --commands-only``); this test keeps a
change from bringing one back silently. Each command runs in a fresh interpreter, which reports
its ``sys.modules`` after the command, then what a lazily imported module still does once used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
from detector.cli import main
out, argv = sys.argv[1], sys.argv[2:]
try:
    code = main(argv)
except SystemExit as e:  # --help
    code = e.code
modules = sorted(sys.modules)
from detector.structured import parse_json
parsed = parse_json('{"n": 1.50, "s": "x"}')  # the fast path, imported on this first line
from detector.lazylog import logger
import logging
same_logger = logger("detector.pipeline") is logging.getLogger("detector.pipeline")
with open(out, "w") as f:
    json.dump({"code": code, "modules": modules, "parsed": parsed,
               "msgspec_after": "msgspec" in sys.modules, "same_logger": same_logger}, f)
"""

AGENT_ONLY = {"asyncio", "aiohttp", "sqlite3", "_sqlite3", "ssl", "http.client", "email"}
"""The agent's and the state file's modules: no short command on this config needs them."""
NOT_FOR_THIS_CONFIG = {"msgspec", "_hashlib", "hashlib", "cronsim", "difflib"}
"""Only a ``parse: json`` line, a large cached database, a cron or a misspelt key need these."""
UNTIL_LOGGED = {"logging", "traceback", "detector.logs", "concurrent.futures"}
"""``logging`` and what imports it: only once something is logged (``detector.lazylog``); the
two sources' databases are built by plain threads (``Matcher._build_all``)."""


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        f"""version: 1
agent: {{cache_dir: "{tmp_path}/cache", state: "{tmp_path}/agent.state"}}
sources:
  app:
    file: "{tmp_path}/app.log"
  web:
    file: "{tmp_path}/web.log"
rules:
  - name: app-error
    source: app
    match: 'ERROR (?P<what>\\w+)'
    owner: ops
    runbook: restart it
  - name: web-5xx
    source: web
    match: '" 5\\d\\d '
    owner: ops
    runbook: look at it
"""
    )
    return cfg


def _imports(tmp_path: Path, *argv: str) -> dict[str, object]:
    out = tmp_path / "child.json"
    env = {k: v for k, v in os.environ.items() if k != "DETECTOR_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got: dict[str, object] = json.loads(out.read_text())
    return got


@pytest.mark.parametrize("command", ["check", "test", "version", "help"])
def test_short_commands_import_neither_the_agent_nor_what_the_config_does_not_use(
    tmp_path: Path, command: str
) -> None:
    cfg = _config(tmp_path)
    (tmp_path / "app.log").write_text("ERROR disk\nINFO fine\n")
    argv = {
        "check": ["check", "-c", str(cfg)],
        "test": ["test", "-c", str(cfg), str(tmp_path / "app.log")],
        "version": ["version"],
        "help": ["check", "--help"],
    }[command]
    got = _imports(tmp_path, *argv)
    assert got["code"] in ((0, 1) if command == "test" else (0,)), got["code"]
    modules = set(got["modules"])  # type: ignore[call-overload]
    forbidden = AGENT_ONLY | NOT_FOR_THIS_CONFIG | UNTIL_LOGGED | {"uuid", "socket", "platform"}
    if command == "test":
        forbidden -= {"uuid", "platform"}  # the alert that fires gets an event id (uuid4)
    if command == "version":
        forbidden -= {"uuid", "socket", "platform", "email"}  # systemd's binding, its metadata
        forbidden -= UNTIL_LOGGED - {"detector.logs"}  # systemd.journal's logging handler
    if command in ("check", "help"):
        forbidden.add("zoneinfo")  # `test` takes the host's zone for lines without an offset
    if command in ("version", "help"):
        forbidden |= {"yaml", "detector.config", "detector.model"}  # no config is read
    if command == "help":
        forbidden |= {"hyperscan", "detector.matching"}  # the parser alone
    assert sorted(modules & forbidden) == []
    # the command did run what it is for (the test cannot pass on a command that did nothing)
    if command in ("check", "test"):
        assert {"yaml", "detector.model", "detector.matching"} <= modules
    # and what was left out still works once needed: msgspec on the first JSON line, same text
    assert got["msgspec_after"] is True
    assert got["parsed"] == {"n": "1.50", "s": "x"}
    assert got["same_logger"] is True  # the agent's logging set-up reaches the lazy loggers
