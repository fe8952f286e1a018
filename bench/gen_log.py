"""Benchmark input: a realistic mixed syslog-style log and a rule set of ~40 realistic rules.

Used by ``bench/bench_match.py`` (and usable alone: ``python bench/gen_log.py OUT.log [LINES]``).
The log mixes sshd auth failures with IPs, nginx access lines (some 5xx) and error lines, Python
tracebacks, the OOM killer, segfaults, cron, systemd, postgres, disk errors and app key=value
lines, from a fixed seed. ``RULES`` are Python regexes with named groups; ``to_ere`` translates
them to POSIX ERE for ``grep -E`` (C locale); ``write_rules_yaml`` writes the same rules as a
rules.yaml for the full agent replay (``detector test -c FILE LOG``). ``rules(n)`` pads the set
with distinct, rarely matching service rules to measure cost per line against the rule count.
"""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path
from typing import Any

_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

RULES: list[tuple[str, str]] = [
    (
        "ssh-failed-password",
        r"sshd\[\d+\]: Failed password for (?:invalid user )?(?P<user>\S+) from "
        r"(?P<ip>\d+\.\d+\.\d+\.\d+) port (?P<port>\d+)",
    ),
    ("ssh-invalid-user", r"sshd\[\d+\]: Invalid user (?P<user>\S+) from (?P<ip>\S+)"),
    (
        "ssh-accepted",
        r"sshd\[\d+\]: Accepted (?P<method>publickey|password) for (?P<user>\w+) from (?P<ip>\S+)",
    ),
    ("ssh-break-in", r"POSSIBLE BREAK-IN ATTEMPT"),
    ("ssh-max-auth", r"error: maximum authentication attempts exceeded for (?P<user>\S+)"),
    (
        "pam-auth-failure",
        r"pam_unix\((?P<service>[\w-]+):auth\): authentication failure;.* rhost=(?P<rhost>\S+)",
    ),
    ("sudo-incorrect", r"sudo: +(?P<user>\w+) : \d+ incorrect password attempts"),
    (
        "nginx-5xx",
        r'"(?P<method>GET|POST|PUT|DELETE|PATCH) (?P<path>\S+) HTTP/[\d.]+" (?P<status>5\d\d) ',
    ),
    ("nginx-slow", r"rt=(?P<rt>[1-9]\d*\.\d+)$"),
    ("nginx-upstream-timeout", r'upstream timed out .* upstream: "(?P<upstream>[^"]+)"'),
    (
        "nginx-conn-refused",
        r"connect\(\) failed \(111: Connection refused\) while connecting to upstream",
    ),
    ("nginx-worker-crash", r"worker process (?P<pid>\d+) exited on signal (?P<sig>\d+)"),
    ("python-traceback", r"Traceback \(most recent call last\):"),
    ("python-exception", r"^(?P<exc>[A-Z]\w*(?:Error|Exception)): (?P<msg>.*)"),
    ("oom-kill", r"Out of memory: Killed process (?P<pid>\d+) \((?P<proc>[^)]+)\)"),
    ("oom-invoked", r"(?P<proc>\S+) invoked oom-killer"),
    ("segfault", r"(?P<proc>[\w.-]+)\[(?P<pid>\d+)\]: segfault at (?P<addr>[0-9a-f]+) ip"),
    ("kernel-bug", r"kernel: .*BUG: (?:unable to handle|soft lockup)"),
    ("hung-task", r"INFO: task (?P<task>\S+):\d+ blocked for more than \d+ seconds"),
    ("disk-io-error", r"I/O error, dev (?P<dev>\w+), sector (?P<sector>\d+)"),
    ("ext4-error", r"EXT4-fs error \(device (?P<dev>\w+)\)"),
    ("disk-full", r"No space left on device"),
    ("cron-cmd", r"CRON\[\d+\]: \((?P<user>\w+)\) CMD \((?P<cmd>[^)]*)\)"),
    ("backup-done", r"backup\.sh\[\d+\]: backup complete"),
    ("backup-failed", r"backup\.sh\[\d+\]: (?:backup failed|ERROR)"),
    ("systemd-failed-start", r"systemd\[1\]: Failed to start (?P<unit>.+?)\.?$"),
    (
        "systemd-unit-failed",
        r"systemd\[1\]: (?P<unit>[\w@.-]+\.service): (?:Main process exited, code=\w+, "
        r"status=(?P<status>\d+)|Failed with result '(?P<result>[\w-]+)')",
    ),
    (
        "systemd-restart",
        r"(?P<unit>[\w@.-]+\.service): Scheduled restart job, restart counter is at (?P<n>\d+)",
    ),
    ("pg-error", r"\[\d+\] ERROR: +(?P<msg>.*)"),
    ("pg-fatal-auth", r'FATAL: +password authentication failed for user "(?P<user>[^"]+)"'),
    ("pg-deadlock", r"deadlock detected"),
    ("pg-too-many-conns", r"sorry, too many clients already"),
    ("pg-checkpoint-slow", r"checkpoint complete: .* total=(?P<secs>\d{2,}\.\d+) s"),
    ("app-error-level", r"level=(?:error|fatal) .*msg=\"(?P<msg>[^\"]*)\""),
    ("app-slow-request", r"duration=(?P<ms>\d{4,})ms"),
    ("app-status-5xx", r"level=\w+ .*status=(?P<status>5\d\d)\b"),
    ("etl-started", r"etl (?P<job>\w+) started"),
    ("etl-finished", r"etl (?P<job>\w+) finished"),
    ("redis-oom", r"(?i)OOM command not allowed"),
    ("cert-expiry", r"certificate (?:has expired|will expire in (?P<days>\d+) days?)"),
    ("any-panic", r"\b(?:panic|PANIC)\b"),
]


def rules(n: int) -> list[tuple[str, str]]:
    """``n`` rules: the realistic ones first, then distinct service rules that rarely match."""
    out = list(RULES[:n])
    k = 0
    while len(out) < n:
        out.append(
            (
                f"svc{k}-failure",
                rf"svc{k}d\[\d+\]: (?:fatal|failed) (?P<what>\w+) code=(?P<code>\d+)",
            )
        )
        k += 1
    return out


_USERS = ["root", "admin", "oracle", "test", "ubuntu", "git", "postgres", "deploy", "alice", "bob"]
_PATHS = ["/api/v1/items", "/api/v1/users", "/login", "/static/app.js", "/health", "/api/v2/orders"]
_UNITS = [
    "nginx.service",
    "postgresql.service",
    "app@web1.service",
    "backup.service",
    "redis.service",
]
_EXC = ["ValueError", "KeyError", "RuntimeError", "ConnectionError", "TimeoutError"]


def _ip(r: random.Random) -> str:
    return f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _line(r: random.Random, n: int) -> str:
    sec = n // 40
    ts = f"Nov {25 + sec // 86400 % 3} {sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
    host = f"web{n % 7}"
    pid = r.randint(300, 65000)
    x = r.random()
    if x < 0.34:
        status = r.choices(
            [200, 201, 204, 301, 304, 404, 500, 502, 503], [60, 5, 5, 3, 10, 8, 1, 1, 1]
        )[0]
        rt = r.choice(
            ["0.004", "0.012", "0.120", "0.031", "1.532" if r.random() < 0.05 else "0.010"]
        )
        return (
            f"{_ip(r)} - - [25/Nov/2026:{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
            f' +0000] "{r.choice(["GET", "GET", "POST", "PUT"])} '
            f"{r.choice(_PATHS)}/{r.randint(1, 9999)}"
            f' HTTP/1.1" {status} {r.randint(100, 90000)} "-" "Mozilla/5.0 (X11; Linux x86_64)"'
            f" rt={rt}"
        )
    if x < 0.52:
        return (
            f"{ts} {host} app[{pid}]: level={r.choice(['info'] * 8 + ['warn', 'error'])} "
            f'msg="{r.choice(["request done", "cache miss", "db query", "user login"])}" '
            f"path={r.choice(_PATHS)} status={r.choice([200] * 30 + [500, 503])} "
            f"duration={r.choice([3, 12, 40, 250, 1200 if r.random() < 0.1 else 20])}ms"
        )
    if x < 0.64:
        k = r.random()
        if k < 0.5:
            inv = "invalid user " if r.random() < 0.5 else ""
            return (
                f"{ts} {host} sshd[{pid}]: Failed password for {inv}{r.choice(_USERS)} from "
                f"{_ip(r)} port {r.randint(1024, 65535)} ssh2"
            )
        if k < 0.7:
            return f"{ts} {host} sshd[{pid}]: Invalid user {r.choice(_USERS)} from {_ip(r)} port 22"
        if k < 0.8:
            return (
                f"{ts} {host} sshd[{pid}]: Accepted publickey for {r.choice(_USERS)} from {_ip(r)}"
                f" port {r.randint(1024, 65535)} ssh2: RSA SHA256:abc{pid}"
            )
        if k < 0.9:
            return f"{ts} {host} sshd[{pid}]: Connection closed by {_ip(r)} port 22 [preauth]"
        return (
            f"{ts} {host} sshd[{pid}]: pam_unix(sshd:auth): authentication failure; logname= uid=0"
            f" euid=0 tty=ssh ruser= rhost={_ip(r)}  user={r.choice(_USERS)}"
        )
    if x < 0.74:
        lvl = r.choice(["LOG", "LOG", "LOG", "ERROR", "FATAL"])
        msg = {
            "LOG": r.choice(
                [
                    f"checkpoint complete: wrote {pid} buffers (1.2%); "
                    f"total={r.choice(['0.5', '31.2'])}"
                    "0 s",
                    "connection received: host=10.0.0.5 port=5432",
                    "duration: 12.3 ms  statement: SELECT 1",
                ]
            ),
            "ERROR": r.choice(
                [
                    'duplicate key value violates unique constraint "users_pkey"',
                    "deadlock detected",
                    "canceling statement due to statement timeout",
                ]
            ),
            "FATAL": r.choice(
                [
                    f'password authentication failed for user "{r.choice(_USERS)}"',
                    "sorry, too many clients already",
                ]
            ),
        }[lvl]
        return f"2026-11-25 {ts[7:]}.{n % 1000:03d} UTC [{pid}] {lvl}:  {msg}"
    if x < 0.82:
        return r.choice(
            [
                f"{ts} {host} systemd[1]: Started Session {pid} of user {r.choice(_USERS)}.",
                f"{ts} {host} systemd[1]: {r.choice(_UNITS)}: Main process exited, code=exited, "
                "status=1/FAILURE",
                f"{ts} {host} systemd[1]: Failed to start {r.choice(['Nightly backup', 'Redis'])}.",
                f"{ts} {host} systemd[1]: {r.choice(_UNITS)}: Scheduled restart job, restart "
                f"counter is at {r.randint(1, 5)}.",
                f"{ts} {host} systemd[1]: Starting Cleanup of Temporary Directories...",
            ]
        )
    if x < 0.88:
        return f"{ts} {host} CRON[{pid}]: ({r.choice(_USERS)}) CMD (/usr/local/bin/job{pid % 9}.sh)"
    if x < 0.93:
        up = _ip(r)
        return r.choice(
            [
                f"2026/11/25 {ts[7:]} [error] {pid}#0: *{n} upstream timed out (110: Connection "
                f"timed out) while reading response header from upstream, client: {_ip(r)}, "
                f'server: api, request: "GET /x HTTP/1.1", upstream: "http://{up}:8080/x"',
                f"2026/11/25 {ts[7:]} [error] {pid}#0: *{n} connect() failed (111: Connection "
                "refused) while connecting to upstream",
                f"2026/11/25 {ts[7:]} [warn] {pid}#0: *{n} an upstream response is buffered",
            ]
        )
    if x < 0.97:
        exc = r.choice(_EXC)
        return r.choice(
            [
                "Traceback (most recent call last):",
                f'  File "/srv/app/views.py", line {pid % 500}, in handler',
                f"    result = process(request.{r.choice(['json', 'form'])})",
                f"{exc}: invalid literal for int() with base 10: 'abc{pid}'",
            ]
        )
    k = r.random()
    if k < 0.15:
        return (
            f"{ts} {host} kernel: [{n / 100:.6f}] Out of memory: Killed process {pid} "
            f"({r.choice(['java', 'python3', 'postgres'])}) total-vm:123456kB, anon-rss:9876kB"
        )
    if k < 0.3:
        return (
            f"{ts} {host} kernel: [{n / 100:.6f}] myapp[{pid}]: segfault at 0 ip 00007f3a sp "
            "00007ffd error 4 in libc.so.6"
        )
    if k < 0.4:
        return f"{ts} {host} kernel: [{n / 100:.6f}] I/O error, dev sda, sector {pid * 8}"
    if k < 0.5:
        return f"{ts} {host} backup.sh[{pid}]: backup {r.choice(['complete', 'failed', 'started'])}"
    if k < 0.6:
        return f"{ts} {host} etl[{pid}]: etl {r.choice(['orders', 'users'])} {r.choice(['started', 'finished'])}"  # noqa: E501
    if k < 0.7:
        return (
            f"{ts} {host} sudo:    {r.choice(_USERS)} : 3 incorrect password attempts ; TTY=pts/0"
        )
    if k < 0.8:
        return f"{ts} {host} redis[{pid}]: -OOM command not allowed when used memory > 'maxmemory'"
    return f"{ts} {host} kernel: [{n / 100:.6f}] e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex"


def _quiet_line(r: random.Random, n: int) -> str:
    """A line of a healthy host: no rule of ``RULES`` matches it."""
    sec = n // 40
    ts = f"Nov {25 + sec // 86400 % 3} {sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
    host = f"web{n % 7}"
    pid = r.randint(300, 65000)
    x = r.random()
    if x < 0.45:
        return (
            f"{_ip(r)} - - [25/Nov/2026:{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
            f' +0000] "{r.choice(["GET", "GET", "POST", "PUT"])} '
            f"{r.choice(_PATHS)}/{r.randint(1, 9999)}"
            f' HTTP/1.1" {r.choice([200, 200, 200, 201, 204, 301, 304, 404])} '
            f'{r.randint(100, 90000)} "-" "Mozilla/5.0 (X11; Linux x86_64)"'
            f" rt={r.choice(['0.004', '0.012', '0.120', '0.031', '0.010'])}"
        )
    if x < 0.75:
        return (
            f"{ts} {host} app[{pid}]: level={r.choice(['info'] * 8 + ['debug', 'warn'])} "
            f'msg="{r.choice(["request done", "cache miss", "db query", "user login"])}" '
            f"path={r.choice(_PATHS)} status={r.choice([200, 200, 201, 304, 404])} "
            f"duration={r.choice([3, 12, 40, 250, 20])}ms"
        )
    if x < 0.85:
        return r.choice(
            [
                f"{ts} {host} sshd[{pid}]: Connection closed by {_ip(r)} port 22 [preauth]",
                f"{ts} {host} systemd[1]: Started Session {pid} of user {r.choice(_USERS)}.",
                f"{ts} {host} systemd[1]: Starting Cleanup of Temporary Directories...",
                f"{ts} {host} systemd-logind[612]: New session {pid} of user {r.choice(_USERS)}.",
            ]
        )
    if x < 0.95:
        return f"2026-11-25 {ts[7:]}.{n % 1000:03d} UTC [{pid}] LOG:  " + r.choice(
            [
                f"checkpoint complete: wrote {pid} buffers (1.2%); total=0.50 s",
                "connection received: host=10.0.0.5 port=5432",
                "duration: 12.3 ms  statement: SELECT 1",
            ]
        )
    return f"{ts} {host} kernel: [{n / 100:.6f}] e1000e: eth0 NIC Link is Up 1000 Mbps Full Duplex"


PROFILES = ("dense", "quiet")
"""``dense``: the mix of ``_line``, where ~39 % of lines match a rule (a host under attack, with
failing services); ``quiet``: a healthy host, 97 % of lines from ``_quiet_line`` (no match) and
3 % from the dense mix."""


def generate(path: Path, lines: int = 2_000_000, seed: int = 1, profile: str = "dense") -> Path:
    """Write ``lines`` lines to ``path`` (deterministic for a given seed and profile)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; one of {PROFILES}")
    r = random.Random(seed)
    quiet = profile == "quiet"
    with path.open("w", encoding="utf-8", newline="\n") as f:
        chunk: list[str] = []
        for n in range(lines):
            chunk.append(_quiet_line(r, n) if quiet and r.random() < 0.97 else _line(r, n))
            if len(chunk) == 10_000:
                f.write("\n".join(chunk) + "\n")
                chunk.clear()
        if chunk:
            f.write("\n".join(chunk) + "\n")
    return path


# ---------------------------------------------------------------- grep -E translation

_ERE_SPECIAL = set(".[]()*+?{}|^$\\")
_POSIX = {
    "CATEGORY_DIGIT": ":digit:",
    "CATEGORY_SPACE": ":space:",
    "CATEGORY_WORD": ":alnum:",
}


def to_ere(regex: str) -> str:
    """POSIX ERE (GNU grep, C locale) matching the same ASCII lines as the Python regex."""
    tree = _parser.parse(regex, 0)
    return _ere_seq(list(tree), bool(tree.state.flags & 2))


def _ere_char(code: int, icase: bool) -> str:
    ch = chr(code)
    if icase and ch.isalpha():
        return f"[{ch.lower()}{ch.upper()}]"
    return "\\" + ch if ch in _ERE_SPECIAL else ch


def _ere_in(items: Any, icase: bool) -> str:
    neg = False
    chars: list[str] = []
    rest: list[str] = []
    for op, av in items:
        name = str(op)
        if name == "NEGATE":
            neg = True
        elif name == "LITERAL":
            ch = chr(av)
            chars += [ch, ch.swapcase()] if icase and ch.isalpha() else [ch]
        elif name == "RANGE":
            rest.append(f"{chr(av[0])}-{chr(av[1])}")
        elif name == "CATEGORY":
            cat = str(av)
            if cat.startswith("CATEGORY_NOT_"):
                if len(items) != 1:
                    raise ValueError(f"cannot translate negated category in a class: {cat}")
                base = cat.replace("NOT_", "")
                return "[^[" + _POSIX[base] + "]" + ("_" if base == "CATEGORY_WORD" else "") + "]"
            rest.append("[" + _POSIX[cat] + "]" + ("_" if cat == "CATEGORY_WORD" else ""))
    # ']' first and '-' last keep their literal meaning inside a bracket expression
    first = "]" if "]" in chars else ""
    last = "-" if "-" in chars else ""
    middle = "".join(c for c in chars if c not in "]-")
    return "[" + ("^" if neg else "") + first + "".join(rest) + middle + last + "]"


def _ere_seq(items: Any, icase: bool) -> str:
    out: list[str] = []
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            out.append(_ere_char(av, icase))
        elif name == "NOT_LITERAL":
            out.append("[^" + chr(av) + "]")
        elif name == "ANY":
            out.append(".")
        elif name == "IN":
            out.append(_ere_in(av, icase))
        elif name == "SUBPATTERN":
            out.append("(" + _ere_seq(av[3], icase or bool(av[1] & 2)) + ")")
        elif name == "BRANCH":
            out.append("(" + "|".join(_ere_seq(a, icase) for a in av[1]) + ")")
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, hi, sub = av
            body = _ere_seq(sub, icase)
            if len(sub) != 1 or str(sub[0][0]) not in ("LITERAL", "IN", "ANY", "SUBPATTERN"):
                body = "(" + body + ")"
            if hi == _c.MAXREPEAT:
                out.append(body + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}"))
            elif (lo, hi) == (0, 1):
                out.append(body + "?")
            else:
                out.append(body + f"{{{lo},{hi}}}")
        elif name == "AT":
            at = str(av)
            out.append({"AT_BEGINNING": "^", "AT_END": "$", "AT_BOUNDARY": r"\b"}[at])
        else:
            raise ValueError(f"cannot translate {name} to ERE")
    return "".join(out)


def write_rules_yaml(path: Path, log: Path, rule_set: list[tuple[str, str]]) -> Path:
    """The rule set as a rules.yaml (``version: 1``, one file source) for ``detector test``."""
    lines = [
        "version: 1",
        "sources:",
        f"  bench: {{file: {str(log)!r}, start_at: beginning}}",
        "rules:",
    ]
    for name, regex in rule_set:
        quoted = "'" + regex.replace("'", "''") + "'"
        lines += [f"  - name: {name}", "    source: bench", f"    match: {quoted}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    generate(out, int(sys.argv[2]) if len(sys.argv) > 2 else 2_000_000)
    print(out)
