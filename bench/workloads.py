"""Bench workloads beyond ``gen_log``'s: rule sets and log profiles written for this bench.

Used by ``bench/bench_match.py`` (``--workload``) and ``bench/bench_ingest.py``. Each
``Workload`` is a rule set (Python regexes), a deterministic line generator and the grep engine
that can run the rules (``ere``: ``grep -E`` on ``gen_log.to_ere``; ``pcre``: ``grep -P`` on one
alternation of all rules, since grep takes a single PCRE pattern, and ``rg -P``):

* ``host43`` — a realistic host: 43 rules (auth failures with captured IPs, sudo, nginx 5xx and
  upstream errors, Python tracebacks, OOM killer, segfaults, disk and filesystem errors, systemd,
  postgres, kernel, certificates …) over a mixed log where ~3 % of lines hit a rule;
* ``f2b150`` — 150 fail2ban-style filters (written here, not taken from fail2ban): anchored
  syslog prefixes, a ``<HOST>`` macro (IPv4 | IPv6 | hostname alternation), alternations,
  optional groups, lookaheads and lookbehinds, over an auth/web log where ~6 % of lines hit;
* ``simple`` — five literal-ish rules over a log where ~30 % of lines hit: grep's best case.
"""

from __future__ import annotations

import random
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_log  # the bench's own generator, next to this file

Engine = Literal["ere", "pcre"]


@dataclass(frozen=True)
class Workload:
    name: str
    rules: list[tuple[str, str]]
    line: Callable[[random.Random, int], str]
    grep: Engine
    about: str


_USERS = ["root", "admin", "oracle", "test", "ubuntu", "git", "postgres", "deploy", "alice", "bob"]
_PATHS = ["/api/v1/items", "/api/v1/users", "/login", "/static/app.js", "/health", "/cart"]
_HOSTS = ["web1", "web2", "db1", "cache3", "lb0"]


def _ip(r: random.Random) -> str:
    return f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _ip6(r: random.Random) -> str:
    return "2001:db8:" + ":".join(f"{r.randint(0, 0xFFFF):x}" for _ in range(3)) + "::1"


_NOW = datetime.now(UTC)
YEAR = _NOW.year if (_NOW.month, _NOW.day) > (3, 28) else _NOW.year - 1
"""The year of every stamp: the year ``detector test`` infers for the year-less syslog stamps
(March, before the file's mtime), so that all the stamps of a line mix tell one clock."""


def _clock(n: int) -> tuple[int, int, int, int]:
    """Line ``n``'s time, 50 lines a second from March 1: (day, hour, minute, second)."""
    sec = n // 50
    return 1 + sec // 86400 % 28, sec // 3600 % 24, sec // 60 % 60, sec % 60


def _ts(n: int) -> str:
    d, hh, mm, ss = _clock(n)
    return f"Mar {d:2d} {hh:02d}:{mm:02d}:{ss:02d}"


def _clf(n: int) -> str:
    """The same time in the common log format of access logs."""
    d, hh, mm, ss = _clock(n)
    return f"{d:02d}/Mar/{YEAR}:{hh:02d}:{mm:02d}:{ss:02d} +0000"


def _iso(n: int, sep: str = "-") -> str:
    d, hh, mm, ss = _clock(n)
    return f"{YEAR}{sep}03{sep}{d:02d} {hh:02d}:{mm:02d}:{ss:02d}"


# ---------------------------------------------------------------- host43

HOST43: list[tuple[str, str]] = [
    (
        "sshd-auth-fail",
        r"sshd\[\d+\]: Failed (?:password|publickey) for (?:invalid user )?(?P<user>\S+) "
        r"from (?P<ip>[\d.]+|[0-9a-f:]+) port \d+",
    ),
    ("sshd-invalid", r"sshd\[\d+\]: Invalid user (?P<user>\S*) from (?P<ip>\S+)"),
    (
        "sshd-too-many",
        r"sshd\[\d+\]: Disconnecting(?: authenticating)? user \S+ (?P<ip>\S+).*"
        r"Too many authentication failures",
    ),
    ("sshd-no-ident", r"sshd\[\d+\]: Did not receive identification string from (?P<ip>\S+)"),
    ("sshd-bad-proto", r"sshd\[\d+\]: Bad protocol version identification .* from (?P<ip>\S+)"),
    (
        "pam-failure",
        r"pam_unix\((?P<svc>[\w-]+):auth\): authentication failure;.*rhost=(?P<ip>\S+)",
    ),
    (
        "sudo-auth",
        r"sudo: +(?P<user>\w+) : (?:\d+ incorrect password attempts|user NOT in sudoers)",
    ),
    ("su-fail", r"su\[\d+\]: FAILED (?:su|SU) (?:for|\(to) (?P<user>\w+)"),
    (
        "nginx-5xx",
        r'"(?P<method>GET|POST|PUT|DELETE|HEAD) (?P<path>\S+) HTTP/\d\.\d" (?P<status>5\d\d) ',
    ),
    ("nginx-upstream", r"\[error\] \d+#\d+: \*\d+ upstream (?:timed out|prematurely closed)"),
    ("nginx-refused", r"connect\(\) failed \(111: Connection refused\) while connecting"),
    (
        "nginx-limit",
        r"limiting requests, excess: [\d.]+ by zone \"(?P<zone>\w+)\", client: "
        r"(?P<ip>[\d.]+)",
    ),
    ("nginx-crit", r"\[(?:crit|alert|emerg)\] \d+#\d+: (?P<msg>.*)"),
    ("py-traceback", r"^Traceback \(most recent call last\):"),
    ("py-exception", r"^(?P<exc>(?:\w+\.)*[A-Z]\w*(?:Error|Exception|Exit)): (?P<msg>.+)"),
    ("gunicorn-timeout", r"\[CRITICAL\] WORKER TIMEOUT \(pid:(?P<pid>\d+)\)"),
    ("oom-killed", r"Out of memory: Killed process (?P<pid>\d+) \((?P<proc>[^)]+)\)"),
    ("oom-invoked", r"(?P<proc>[\w.-]+) invoked oom-killer: gfp_mask="),
    ("oom-cgroup", r"Memory cgroup out of memory: Killed process (?P<pid>\d+)"),
    ("segfault", r"(?P<proc>[\w.-]+)\[(?P<pid>\d+)\]: segfault at [0-9a-f]+ ip [0-9a-f]+"),
    ("general-protection", r"traps: (?P<proc>\S+)\[\d+\] general protection"),
    ("kernel-bug", r"kernel: (?:\[[\d. ]+\] )?BUG: (?:unable to handle|soft lockup|scheduling)"),
    ("kernel-panic", r"Kernel panic - not syncing: (?P<msg>.*)"),
    ("hung-task", r"INFO: task (?P<task>\S+):\d+ blocked for more than (?P<s>\d+) seconds"),
    ("disk-io", r"(?:blk_update_request|I/O error), dev (?P<dev>\w+), sector (?P<sector>\d+)"),
    ("ata-error", r"ata\d+(?:\.\d+)?: (?:failed command|exception Emask|hard resetting link)"),
    ("ext4-error", r"EXT4-fs (?:error|warning) \(device (?P<dev>\w+)\): (?P<fn>\w+)"),
    ("xfs-error", r"XFS \((?P<dev>\w+)\): (?:metadata I/O error|Corruption)"),
    ("smart-fail", r"smartd\[\d+\]: Device: (?P<dev>\S+), (?:FAILED|SMART Failure|\d+ Currently)"),
    ("disk-full", r"(?:No space left on device|disk quota exceeded)"),
    (
        "systemd-failed",
        r"systemd\[\d+\]: (?P<unit>\S+\.service): Failed with result '(?P<r>[\w-]+)'",
    ),
    ("systemd-start-fail", r"systemd\[\d+\]: Failed to start (?P<what>.+?)\.?$"),
    ("systemd-restart", r"(?P<unit>\S+\.service): Scheduled restart job, restart counter is at"),
    ("pg-fatal", r"\[\d+\] FATAL: +(?P<msg>.+)"),
    ("pg-error", r"\[\d+\] ERROR: +(?P<msg>.+)"),
    ("pg-deadlock", r"deadlock detected"),
    ("mysql-abort", r"\[(?:ERROR|Warning)\] Aborted connection \d+ to db: '(?P<db>\w+)'"),
    ("redis-oom", r"(?i)OOM command not allowed"),
    ("cert-expire", r"certificate (?:has expired|will expire in (?P<days>\d+) days?)"),
    ("nfs-timeout", r"nfs: server (?P<server>\S+) not responding"),
    ("ntp-unsync", r"(?:chronyd|ntpd)\[\d+\]: (?:no selectable sources|Can't synchronise)"),
    ("cron-error", r"CRON\[\d+\]: \((?P<user>\w+)\) (?:ERROR|MAIL \(mailer exited)"),
    ("app-fatal", r"level=(?:fatal|panic) .*msg=\"(?P<msg>[^\"]*)\""),
]

_HOST43_HITS: list[Callable[[random.Random, int, str, int], str]] = [
    lambda r, n, h, p: (
        f"{_ts(n)} {h} sshd[{p}]: Failed password for "
        f"{'invalid user ' if r.random() < 0.4 else ''}{r.choice(_USERS)} from {_ip(r)} "
        f"port {r.randint(1024, 65535)} ssh2"
    ),
    lambda r, n, h, p: (
        f"{_ts(n)} {h} sshd[{p}]: Invalid user {r.choice(_USERS)} from {_ip(r)} port 22"
    ),
    lambda r, n, h, p: (
        f"{_ts(n)} {h} sshd[{p}]: Did not receive identification string from {_ip(r)} port 41234"
    ),
    lambda r, n, h, p: (
        f"{_ts(n)} {h} sshd[{p}]: pam_unix(sshd:auth): authentication failure; logname= uid=0 "
        f"euid=0 tty=ssh ruser= rhost={_ip(r)}  user={r.choice(_USERS)}"
    ),
    lambda r, n, h, p: (
        f"{_ts(n)} {h} sudo:   {r.choice(_USERS)} : 3 incorrect password attempts"
        " ; TTY=pts/1 ; PWD=/home ; USER=root ; COMMAND=/bin/sh"
    ),
    lambda r, n, h, p: (
        f'{_ip(r)} - - [{_clf(n)}] "GET {r.choice(_PATHS)} HTTP/1.1"'
        f' {r.choice([500, 502, 503, 504])} 157 "-" "curl/8.5"'
    ),
    lambda r, n, h, p: (
        f"{_iso(n, '/')} [error] {p}#0: *{n} upstream timed out (110: Connection "
        f"timed out) while reading response header from upstream, client: {_ip(r)}"
    ),
    lambda r, n, h, p: "Traceback (most recent call last):",
    lambda r, n, h, p: (
        f"{r.choice(['ValueError', 'KeyError', 'requests.ConnectionError'])}: bad value {p}"
    ),
    lambda r, n, h, p: (
        f"{_ts(n)} {h} kernel: [{n / 100:.6f}] Out of memory: Killed process {p} "
        f"({r.choice(['java', 'python3'])}) total-vm:123456kB"
    ),
    lambda r, n, h, p: (
        f"{_ts(n)} {h} kernel: [{n / 100:.6f}] {r.choice(['php-fpm', 'node'])}[{p}]: segfault at"
        " 0 ip 00007f3a sp 00007ffd error 4 in libc.so.6"
    ),
    lambda r, n, h, p: (
        f"{_ts(n)} {h} kernel: [{n / 100:.6f}] blk_update_request: I/O error, dev "
        f"sdb, sector {p * 8}"
    ),
    lambda r, n, h, p: (
        f"{_ts(n)} {h} systemd[1]: {r.choice(['app', 'worker'])}.service: Failed "
        "with result 'exit-code'."
    ),
    lambda r, n, h, p: f"{_iso(n)}.123 UTC [{p}] ERROR:  duplicate key value",
    lambda r, n, h, p: f"{_ts(n)} {h} redis[{p}]: -OOM command not allowed when used memory",
    lambda r, n, h, p: f"{_ts(n)} {h} CRON[{p}]: (root) MAIL (mailer exited with status 1)",
]


def _host43_quiet(r: random.Random, n: int, h: str, p: int) -> str:
    x = r.random()
    if x < 0.45:
        return (
            f"{_ip(r)} - - [{_clf(n)}] "
            f'"{r.choice(["GET", "GET", "POST"])} {r.choice(_PATHS)}/{p} HTTP/1.1" '
            f"{r.choice([200, 200, 200, 204, 301, 304, 404])} {r.randint(100, 90000)} "
            '"-" "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"'
        )
    if x < 0.7:
        return (
            f"{_ts(n)} {h} app[{p}]: level={r.choice(['info', 'info', 'debug', 'warn'])} "
            f'msg="{r.choice(["request served", "cache hit", "job queued"])}" '
            f"user={r.choice(_USERS)} took={r.randint(1, 900)}ms trace={p:x}{n:x}"
        )
    if x < 0.8:
        return r.choice(
            [
                f"{_ts(n)} {h} sshd[{p}]: Accepted publickey for {r.choice(_USERS)} from "
                f"{_ip(r)} port {r.randint(1024, 65535)} ssh2: ED25519 SHA256:k{p}",
                f"{_ts(n)} {h} sshd[{p}]: pam_unix(sshd:session): session opened for user "
                f"{r.choice(_USERS)}(uid=1000) by (uid=0)",
                f"{_ts(n)} {h} systemd[1]: Started Session {p} of User {r.choice(_USERS)}.",
            ]
        )
    if x < 0.9:
        return (
            f"{_iso(n)}.{n % 1000:03d} UTC [{p}] LOG:  duration: "
            f"{r.randint(1, 99)}.{p % 10} ms  statement: SELECT * FROM items WHERE id = {n}"
        )
    return r.choice(
        [
            f"{_ts(n)} {h} kernel: [{n / 100:.6f}] e1000e: eth0 NIC Link is Up 1000 Mbps",
            f"{_ts(n)} {h} CRON[{p}]: (root) CMD (run-parts /etc/cron.hourly)",
            f"{_ts(n)} {h} chronyd[{p % 900}]: Selected source 192.0.2.{p % 250}",
        ]
    )


def _host43_line(r: random.Random, n: int) -> str:
    h, p = r.choice(_HOSTS), r.randint(300, 65000)
    if r.random() < 0.03:
        return r.choice(_HOST43_HITS)(r, n, h, p)
    return _host43_quiet(r, n, h, p)


# ---------------------------------------------------------------- f2b150

_HOST = (
    r"(?:\[?(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{0,4}){2,7})\]?|"
    r"[\w.-]+\.[a-z]{2,})"
)
"""The ``<HOST>`` macro: an IPv4 address, an IPv6 address (optionally bracketed) or a hostname."""


def _host(name: str = "host") -> str:
    return f"(?P<{name}>{_HOST})"


_PREFIX = (
    r"^(?:\w{3} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:?\d\d)?) "
    r"(?:\S+ )?"
)
"""fail2ban's line prefix in spirit: a syslog or ISO time, then an optional host name."""

_DAEMONS = [
    "sshd",
    "dropbear",
    "vsftpd",
    "proftpd",
    "dovecot",
    "postfix/smtpd",
    "exim",
    "named",
    "asterisk",
    "openvpn",
    "nginx",
    "apache2",
    "haproxy",
    "courier",
    "cyrus",
]


def _f2b_templates(d: str) -> list[tuple[str, str]]:
    """Ten filters for daemon ``d`` (each a distinct pattern: the daemon name is in it)."""
    dn = re.escape(d)
    pid = r"(?:\[\d+\])?: "
    p = _PREFIX + dn + pid
    return [
        (
            "auth-fail",
            p + r"(?:[Aa]uth(?:entication)? fail(?:ure|ed)|Failed password)"
            r"(?: for (?:invalid user )?(?P<user>\S+))? from " + _host() + r"(?: port \d+)?",
        ),
        (
            "bad-user",
            p + r"(?:Invalid|Illegal|[Uu]nknown) user (?P<user>\S*) from " + _host() + r"(?=\s|$)",
        ),
        (
            "not-allowed",
            p + r"User (?P<user>\S+) from " + _host() + r" not allowed because "
            r"(?:not listed in AllowUsers|listed in DenyUsers|none of user's groups)",
        ),
        (
            "no-ident",
            p + r"(?:Did not receive identification|Bad protocol version).* from " + _host(),
        ),
        (
            "max-auth",
            p + r"(?:error: )?maximum authentication attempts exceeded for "
            r"(?:invalid user )?(?P<user>\S+) from " + _host(),
        ),
        (
            "disconnect",
            p + r"(?:Received disconnect|Disconnected|Connection closed) from "
            r"(?:(?:invalid |authenticating )?user \S+ )?"
            + _host()
            + r"(?: port \d+)?:? *(?:\[preauth\]|\d+: (?:Bye Bye|Too many))",
        ),
        (
            "rejected",
            p + r"(?:NOQUEUE: )?reject(?:ed)?: (?:RCPT|AUTH|EHLO) from "
            r"[\w.-]*\[" + _host() + r"\]: (?P<code>[45]\d\d)(?! 4\.7\.1 Greylisted)",
        ),
        (
            "sasl",
            p + r"warning: [\w.-]*\[" + _host() + r"\]: SASL (?:LOGIN|PLAIN|CRAM-MD5) "
            r"authentication failed(?::.*)?$",
        ),
        (
            "root-login",
            p + r"(?<!Accepted )(?:ROOT LOGIN REFUSED|root login refused|"
            r"refused connect) from " + _host(),
        ),
        (
            "flood",
            p
            + r"(?:limit|rate|flood)[\w -]*(?:exceeded|reached) (?:for|by|from) "
            + _host()
            + r"(?:, (?:count|hits)=(?P<n>\d+))?",
        ),
    ]


def _web_filters() -> list[tuple[str, str]]:
    """Access-log filters (combined log format: the host first)."""
    h = "^" + _host("client") + r" \S+ (?P<user>\S+) \[[^\]]+\] "
    return [
        ("web-auth-401", h + r'"[A-Z]+ (?P<path>[^ "]+) HTTP/[\d.]+" 401 '),
        (
            "web-forbidden",
            h + r'"[A-Z]+ [^ "]*(?:/\.env|/\.git|wp-login\.php|xmlrpc\.php|'
            r'phpmyadmin)[^ "]* HTTP/[\d.]+" (?:403|404) ',
        ),
        ("web-traversal", h + r'"[A-Z]+ [^"]*(?:\.\./|%2e%2e%2f|/etc/passwd)[^"]* HTTP'),
        ("web-sqli", h + r'"[A-Z]+ [^"]*(?i:union(?:\s|%20|\+)+select|sleep\(\d+\)|or%201=1)'),
        (
            "web-badbot",
            h + r'"[^"]*" \d{3} \d+ "[^"]*" "(?:[^"]*(?:sqlmap|nikto|masscan|'
            r'zgrab|Nmap Scripting))[^"]*"$',
        ),
        (
            "web-post-flood",
            h + r'"POST /(?:login|wp-login\.php|user/login)(?:\?[^ "]*)? '
            r'HTTP/[\d.]+" (?:200|302|401) (?!0\b)\d+',
        ),
        (
            "web-noscript",
            h + r'"GET [^ "]+\.(?:php|asp|aspx|jsp|cgi|pl)(?:\?[^ "]*)? '
            r'HTTP/[\d.]+" 404 ',
        ),
        ("web-badreq", h + r'"(?:-|\\x[0-9A-F]{2}[^"]*|[A-Z]{1,10} \S+ (?!HTTP/)[^"]*)" 400 '),
        ("web-shellshock", h + r'"[^"]*" \d{3} \d+ "[^"]*" "[^"]*\(\) \{ *:; *\};'),
        (
            "web-admin-scan",
            h + r'"(?:GET|HEAD) /(?:admin|manager/html|cgi-bin/)(?!status\b)\S*'
            r' HTTP/[\d.]+" 40[134] ',
        ),
    ]


F2B150: list[tuple[str, str]] = (
    [(f"{d.replace('/', '-')}-{name}", rx) for d in _DAEMONS[:14] for name, rx in _f2b_templates(d)]
    + _web_filters()
)[:150]


def _f2b_hit(r: random.Random, n: int, d: str, host: str) -> str:
    t, pid, u = _ts(n), r.randint(300, 65000), r.choice(_USERS)
    a = _ip6(r) if r.random() < 0.2 else _ip(r) if r.random() < 0.9 else "bad.example.org"
    return r.choice(
        [
            f"{t} {host} {d}[{pid}]: Failed password for invalid user {u} from {a} port 4022",
            f"{t} {host} {d}[{pid}]: authentication failure from {a}",
            f"{t} {host} {d}[{pid}]: Invalid user {u} from {a} port 22",
            f"{t} {host} {d}[{pid}]: User {u} from {a} not allowed because not listed in "
            "AllowUsers",
            f"{t} {host} {d}[{pid}]: Received disconnect from {a} port 4022:11: Bye Bye [preauth]",
            f"{t} {host} {d}[{pid}]: NOQUEUE: reject: RCPT from unknown[{a}]: 554 5.7.1 "
            "Relay access denied",
            f"{t} {host} {d}[{pid}]: warning: unknown[{a}]: SASL LOGIN authentication failed: "
            "UGFzc3dvcmQ6",
            f"{t} {host} {d}[{pid}]: rate limit exceeded for {a}, count={pid % 90}",
            f"{t} {host} {d}[{pid}]: Did not receive identification string from {a} port 22",
            f"{t} {host} {d}[{pid}]: error: maximum authentication attempts exceeded for root "
            f"from {a} port 22 ssh2 [preauth]",
            f"{t} {host} {d}[{pid}]: ROOT LOGIN REFUSED from {a}",
        ]
    )


def _f2b_line(r: random.Random, n: int) -> str:
    x = r.random()
    if x < 0.04:
        return _f2b_hit(r, n, r.choice(_DAEMONS[:14]), r.choice(_HOSTS))
    if x < 0.06:
        path = r.choice(
            [
                "/wp-login.php",
                "/.env",
                "/admin/../../etc/passwd",
                "/login",
                "/x.php?id=1%20union%20select",
            ]
        )
        return (
            f'{_ip(r)} - - [{_clf(n)}] "'
            f'{r.choice(["GET", "POST"])} {path} HTTP/1.1" {r.choice([401, 403, 404, 200])} '
            f'{r.randint(0, 900)} "-" "{r.choice(["sqlmap/1.7", "Mozilla/5.0", "curl/8"])}"'
        )
    if x < 0.5:
        return (
            f"{_ip(r)} - {r.choice(['-', '-', 'alice'])} [{_clf(n)}] "
            f'"GET {r.choice(_PATHS)}/{n % 977} '
            f'HTTP/1.1" {r.choice([200, 200, 304])} '
            f'{r.randint(200, 90000)} "https://example.org/" "Mozilla/5.0 (Windows NT 10.0)"'
        )
    t, pid, h, d = _ts(n), r.randint(300, 65000), r.choice(_HOSTS), r.choice(_DAEMONS)
    return r.choice(
        [
            f"{t} {h} {d}[{pid}]: Accepted publickey for {r.choice(_USERS)} from {_ip(r)} port "
            f"{r.randint(1024, 65535)} ssh2",
            f"{t} {h} {d}[{pid}]: session opened for user {r.choice(_USERS)} by (uid=0)",
            f"{t} {h} {d}[{pid}]: connect from mail{pid % 50}.example.net[{_ip(r)}]",
            f"{t} {h} {d}[{pid}]: Connection from {_ip(r)} port {pid} on 10.0.0.1 port 22",
            f"{t} {h} {d}[{pid}]: client {_ip(r)}#53124: query: example.org IN A +",
            f"{t} {h} {d}[{pid}]: Login: user=<{r.choice(_USERS)}>, method=PLAIN, rip={_ip(r)}",
        ]
    )


# ---------------------------------------------------------------- simple

SIMPLE: list[tuple[str, str]] = [
    ("error", r"ERROR"),
    ("failed-password", r"Failed password"),
    ("http-500", r'" 500 '),
    ("timeout", r"timed out"),
    ("denied", r"[Pp]ermission denied"),
]


def _simple_line(r: random.Random, n: int) -> str:
    t, h, p = _ts(n), r.choice(_HOSTS), r.randint(300, 65000)
    x = r.random()
    if x < 0.12:
        return f"{t} {h} app[{p}]: ERROR request {n} failed: upstream said no"
    if x < 0.2:
        return f"{t} {h} sshd[{p}]: Failed password for {r.choice(_USERS)} from {_ip(r)} port 22"
    if x < 0.26:
        return f'{_ip(r)} - - [{_clf(n)}] "GET /x HTTP/1.1" 500 12 "-" "c"'
    if x < 0.3:
        return f"{t} {h} worker[{p}]: job {n} timed out after 30s"
    if x < 0.32:
        return f"{t} {h} sh[{p}]: /srv/run.sh: Permission denied"
    return f"{t} {h} app[{p}]: INFO request {n} served in {p % 97} ms user={r.choice(_USERS)}"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("host43", HOST43, _host43_line, "ere", "43 realistic host rules, ~3 % hit"),
        Workload(
            "f2b150", F2B150, _f2b_line, "pcre", "150 fail2ban-style filters, lookarounds, ~6 % hit"
        ),
        Workload("simple", SIMPLE, _simple_line, "ere", "5 literal-ish rules, ~32 % hit"),
    )
}


def generate(path: Path, w: Workload, lines: int, seed: int = 7) -> Path:
    """Write ``lines`` lines of ``w``'s profile to ``path`` (deterministic)."""
    r = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        chunk: list[str] = []
        for n in range(lines):
            chunk.append(w.line(r, n))
            if len(chunk) == 10_000:
                f.write("\n".join(chunk) + "\n")
                chunk.clear()
        if chunk:
            f.write("\n".join(chunk) + "\n")
    return path


def pcre(regex: str) -> str:
    """The rule for ``grep -P`` / ``rg -P``: named groups made plain (PCRE spells them the same,
    but one alternation of all rules must not repeat a name)."""
    return re.sub(r"\(\?P<\w+>", "(?:", regex)


PCRE_CHUNK = 25
"""Rules per ``grep -P`` pattern: PCRE2 refuses one alternation of all 150 ("regular expression
is too large"), in grep and in ripgrep alike."""


def _chunks(w: Workload) -> list[list[str]]:
    pats = [pcre(rx) for _, rx in w.rules]
    return [pats[k : k + PCRE_CHUNK] for k in range(0, len(pats), PCRE_CHUNK)]


def grep_argv(w: Workload, pattern_file: Path, log: Path, lines: int) -> list[str]:
    """A command printing how many lines of ``log`` match a rule of ``w``, by grep with the
    engine that can run the rules: ``grep -c -E -f`` (ERE), or, for PCRE, a pipeline of
    ``grep -v -P`` (one alternation of ``PCRE_CHUNK`` rules each) whose survivors are the lines
    no rule matches (grep -P takes one pattern, and PCRE2 no bigger one)."""
    if w.grep == "ere":
        return ["grep", "-c", "-E", "-f", str(pattern_file), str(log)]
    stages = [
        "grep -v -P -e " + shlex.quote("|".join(f"(?:{p})" for p in chunk)) for chunk in _chunks(w)
    ]
    stages[0] += " " + shlex.quote(str(log))
    return ["sh", "-c", f"echo $(( {lines} - $({' | '.join(stages)} | wc -l) ))"]


def rg_argv(w: Workload, pattern_file: Path, log: Path, lines: int) -> list[str]:
    """The same with ripgrep (one thread): ``rg -c -f`` (its own engine: the ERE rules), or for
    PCRE a pipeline of ``rg -v -P -f`` over ``PCRE_CHUNK`` rules each."""
    if w.grep == "ere":
        return ["rg", "-j1", "-c", "-f", str(pattern_file), str(log)]
    files = []
    for k, chunk in enumerate(_chunks(w)):
        part = pattern_file.with_suffix(f".{k}.pcre")
        part.write_text("\n".join(chunk) + "\n")
        files.append(part)
    stages = [f"rg -j1 -v -P -f {shlex.quote(str(f))}" for f in files]
    stages[0] += " " + shlex.quote(str(log))
    return ["sh", "-c", f"echo $(( {lines} - $({' | '.join(stages)} | wc -l) ))"]


def write_patterns(w: Workload, path: Path) -> Path:
    """One pattern per line, for ``grep -f`` / ``rg -f`` (ERE) or ``rg -P -f`` (PCRE)."""
    conv = gen_log.to_ere if w.grep == "ere" else pcre
    path.write_text("\n".join(conv(rx) for _, rx in w.rules) + "\n")
    return path


if __name__ == "__main__":
    wl = WORKLOADS[sys.argv[1]]
    print(generate(Path(sys.argv[2]), wl, int(sys.argv[3]) if len(sys.argv) > 3 else 400_000))
