"""A fail2ban-style rule set written for this project (not copied from fail2ban's filters).

~150 rules over ~30 services, the shapes real intrusion-detection filters have: a syslog prefix
macro, a host macro (IPv4, IPv6 or a name) captured as a named group, alternations of message
variants, optional groups, look-behinds and look-aheads. ``rules_yaml(log_dir)`` writes a
rules.yaml over one log file per service; ``sample_lines()`` gives one line per rule that it
matches. Used by ``bench/bench_startup.py``.
"""

# ruff: noqa: E501 - one regex per line reads better than split strings

from __future__ import annotations

import json
from pathlib import Path

PREFIX = r"^(?:\w{3} [ \d]\d \d\d:\d\d:\d\d |\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:?\d\d)? )?(?:[\w.-]+ )?(?:[\w./-]+(?:\[\d+\])?: )?"
HOST = r"(?P<host>(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}|[a-zA-Z0-9][\w.-]*\.[a-zA-Z]{2,})(?![\w.:]))"
USER = r"(?P<user>(?:[^\s'\"]+|'[^']*'|\"[^\"]*\"))"
PORT = r"(?: port \d{1,5})?"


def _host(group: str) -> str:
    return HOST.replace("(?P<host>", f"(?P<{group}>")


def _user(group: str) -> str:
    return USER.replace("(?P<user>", f"(?P<{group}>")


# (name, regex body after the prefix, one sample message)
TEMPLATES: list[tuple[str, str, str]] = [
    (
        "auth-failed",
        rf"(?:error: )?(?:Failed|Invalid) (?:password|publickey|keyboard-interactive(?:/pam)?) for (?:invalid user )?{USER} from {HOST}{PORT}(?: ssh2?)?(?::\s*\S+)?\s*$",
        "Failed password for invalid user admin from 203.0.113.7 port 2222 ssh2",
    ),
    (
        "invalid-user",
        rf"[iI](?:llegal|nvalid) user {USER} from {HOST}{PORT}\s*$",
        "Invalid user oracle from 198.51.100.23 port 4711",
    ),
    (
        "not-allowed",
        rf"User {USER} from {HOST} not allowed because (?:not listed in AllowUsers|listed in DenyUsers|not in any group|a group is listed in DenyGroups|none of user's groups are listed in AllowGroups)\s*$",
        "User root from 192.0.2.44 not allowed because listed in DenyUsers",
    ),
    (
        "auth-reject",
        rf"(?:pam_unix\([\w-]+:auth\): )?authentication failure;(?: logname=\S*)?(?: uid=\d*)?(?: euid=\d*)?(?: tty=\S*)?(?: ruser=\S*)? rhost={HOST}(?:\s+user=\S*)?\s*$",
        "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=203.0.113.9 user=root",
    ),
    (
        "preauth-close",
        rf"(?:Connection (?:closed|reset)|Disconnected|Received disconnect) (?:by|from) (?:(?:invalid|authenticating) user {USER} )?{HOST}{PORT}(?::\s*\d+:.*)? \[preauth\]\s*$",
        "Connection closed by authenticating user git 198.51.100.2 port 51234 [preauth]",
    ),
    (
        "too-many",
        rf"(?:error: )?maximum authentication attempts exceeded for (?:invalid user )?{USER} from {HOST}{PORT}(?: ssh2)? \[preauth\]$",
        "error: maximum authentication attempts exceeded for root from 192.0.2.1 port 22 ssh2 [preauth]",
    ),
    (
        "no-ident",
        rf"Did not receive identification string from {HOST}{PORT}\s*$",
        "Did not receive identification string from 203.0.113.80 port 60000",
    ),
    (
        "bad-protocol",
        rf"(?:Bad protocol version identification|Protocol major versions differ)(?: '.*')? from {HOST}{PORT}",
        "Bad protocol version identification 'GET / HTTP/1.1' from 198.51.100.77 port 3333",
    ),
    (
        "kex-fail",
        rf"(?:Unable to negotiate with|fatal: Unable to negotiate with) {HOST}{PORT}: no matching (?:key exchange method|host key type|cipher|MAC) found",
        "Unable to negotiate with 192.0.2.9 port 22: no matching host key type found",
    ),
    (
        "http-auth",
        rf"\[(?:error|warn)\] (?:\[client {HOST}(?::\d+)?\] )?(?:AH0\d{{4}}: )?(?:user {USER}(?: not found| authentication failure| password mismatch)|Digest: (?:user `.*' in realm `.*' not found|nonce expired))",
        "[error] [client 203.0.113.5] AH01617: user bob authentication failure",
    ),
    (
        "http-badbot",
        rf"{HOST} - \S+ \[[^\]]+\] \"(?:GET|POST|HEAD|PUT) [^\"]*\" \d{{3}} \d+ \"[^\"]*\" \"(?:[^\"]*(?:sqlmap|nikto|masscan|zgrab|Nmap Scripting|python-requests/[01]\.|curl/7\.[0-3]\d)[^\"]*)\"$",
        '198.51.100.3 - - [25/Nov/2026:10:00:00 +0000] "GET /wp-login.php HTTP/1.1" 404 162 "-" "sqlmap/1.7"',
    ),
    (
        "http-scan",
        rf"{HOST} - \S+ \[[^\]]+\] \"(?:GET|POST) /(?:wp-(?:login|admin)|xmlrpc|phpmyadmin|\.env|\.git/config|cgi-bin/[\w.]+|admin(?:istrator)?/(?:index|login))[^\"]*\" (?:40[134]|444) \d+",
        '203.0.113.66 - - [25/Nov/2026:10:00:00 +0000] "GET /.env HTTP/1.1" 404 0 "-" "Mozilla"',
    ),
    (
        "http-limit",
        rf"(?:limiting|delaying) requests?, excess: [\d.]+ by zone \"(?P<zone>[^\"]+)\", client: {HOST}, server: \S*, request: \"[^\"]*\"",
        'limiting requests, excess: 20.5 by zone "api", client: 192.0.2.99, server: example.org, request: "GET /api HTTP/1.1"',
    ),
    (
        "http-noscript",
        rf"(?:open\(\) \"[^\"]+\" failed \(2: No such file or directory\)|FastCGI sent in stderr: \"Primary script unknown\") .*client: {HOST}",
        'open() "/srv/www/x.php" failed (2: No such file or directory) while reading, client: 198.51.100.50, server: a',
    ),
    (
        "mail-auth",
        rf"(?:warning: )?[-\w.]+\[{HOST}\]: SASL (?:LOGIN|PLAIN|CRAM-MD5|DIGEST-MD5|(?:-\w+)?) authentication failed(?::[^\n]*)?$",
        "warning: unknown[203.0.113.11]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
    ),
    (
        "mail-reject",
        rf"NOQUEUE: reject: (?:RCPT|MAIL|VRFY) from [-\w.]+\[{HOST}\](?::\d+)?: (?:450|5[05]\d)(?: [45]\.\d\.\d)? (?:<[^>]*>: )?(?:Relay access denied|Recipient address rejected|Sender address rejected|Client host rejected|Helo command rejected)",
        "NOQUEUE: reject: RCPT from unknown[198.51.100.5]: 554 5.7.1 <x@example.org>: Relay access denied",
    ),
    (
        "mail-lost",
        rf"(?:lost connection after (?:AUTH|CONNECT|EHLO|STARTTLS)|too many errors after (?:AUTH|RCPT|DATA)) from [-\w.]+\[{HOST}\](?!\S)",
        "lost connection after AUTH from unknown[192.0.2.200]",
    ),
    (
        "imap-auth",
        rf"(?:imap|pop3|managesieve|submission)-login: (?:Info: )?(?:Aborted login|Disconnected)(?: \(auth failed, \d+ attempts?(?: in \d+ secs)?\)| \(no auth attempts(?: in \d+ secs)?\)): user=<{USER}?>, (?:method=\S+, )?rip={HOST}(?:, lip=\S+)?",
        "imap-login: Info: Aborted login (auth failed, 3 attempts in 12 secs): user=<info>, method=PLAIN, rip=203.0.113.101, lip=10.0.0.1",
    ),
    (
        "ftp-auth",
        rf"(?:\(\S+@{HOST}\) \[WARNING\] Authentication failed for user \[{USER}\]|FAIL LOGIN: Client \"{_host('h2')}\"|USER {_user('u3')}: no such user found from \S*\s?\[{_host('h3')}\] to \S+)",
        "(?@203.0.113.17) [WARNING] Authentication failed for user [anonymous]",
    ),
    (
        "db-auth",
        rf"(?:FATAL|ERROR): +(?:password authentication failed|no pg_hba\.conf entry) for (?:user|host) \"{USER}\"(?:,? (?:host|user) \"{HOST}\")?",
        'FATAL:  password authentication failed for user "postgres"',
    ),
    (
        "db-access",
        rf"Access denied for user '(?P<user>[^']*)'@'{HOST}' \(using password: (?:YES|NO)\)",
        "Access denied for user 'root'@'198.51.100.42' (using password: YES)",
    ),
    (
        "vpn-auth",
        rf"(?:{HOST} )?(?:TLS Auth Error: Auth Username/Password verification failed for peer|VERIFY ERROR: depth=\d+, error=.*|TLS Error: TLS handshake failed)(?! \(retry\))",
        "203.0.113.3 TLS Auth Error: Auth Username/Password verification failed for peer",
    ),
    (
        "web-login",
        rf"(?:Login|Authentication|Sign-?in) (?:failed|failure|attempt rejected)(?: for (?:user(?:name)? )?['\"]?{USER}['\"]?)?(?: from| by| ip[:=]| client[:=]) ?{HOST}(?:\s|$)",
        "Login failed for user 'alice' from 192.0.2.61 ",
    ),
    (
        "api-token",
        rf"(?:invalid|expired|revoked) (?:api[ _-]?key|token|bearer)(?: \"[^\"]*\")? (?:from|for client) {HOST}(?: \(after (?P<tries>\d+) tries\))?$",
        'invalid api key "abc" from 198.51.100.8 (after 4 tries)',
    ),
    (
        "proxy-deny",
        rf"TCP_DENIED/(?:403|407) \d+ (?:CONNECT|GET|POST) \S+ (?P<user>\S+) (?:HIER_NONE|NONE)/- (?!text/html)\S+ .*?{HOST}?",
        "TCP_DENIED/407 3900 CONNECT example.org:443 - HIER_NONE/- text/plain 198.51.100.1",
    ),
    (
        "dns-refused",
        rf"client(?: @0x[0-9a-f]+)? {HOST}#\d+(?: \([\w.-]+\))?: (?:view \w+: )?(?:query(?: \(cache\))? '[^']*' denied|zone transfer '[^']*' denied|update '[^']*' denied)",
        "client @0x7f00 203.0.113.53#5353 (example.org): query (cache) 'example.org/A/IN' denied",
    ),
    (
        "kern-drop",
        r"(?:\[\s*\d+\.\d+\] )?(?:\[UFW (?:BLOCK|AUDIT)\]|iptables-(?:drop|reject): ).*?SRC=(?P<host>[\d.]+|[0-9a-f:]+) DST=\S+ .*?PROTO=(?P<proto>TCP|UDP|ICMP)(?: SPT=\d+ DPT=(?P<dport>\d+))?",
        "[ 1234.5678] [UFW BLOCK] IN=eth0 OUT= MAC=00 SRC=192.0.2.8 DST=10.0.0.1 LEN=40 PROTO=TCP SPT=1234 DPT=23",
    ),
    (
        "recidive",
        rf"(?:fail2ban\.actions|detector\.bans)\s*(?:\[\d+\])?: (?:NOTICE|WARNING)\s+\[(?!recidive\])(?P<jail>[\w-]+)\] (?:Ban|Restore Ban) {HOST}$",
        "fail2ban.actions [100]: NOTICE [sshd] Ban 203.0.113.4",
    ),
    (
        "sudo-fail",
        rf"(?:pam_unix\(sudo:auth\): authentication failure;.* user={USER}|{_user('who')} : (?:\d+ incorrect password attempts?|user NOT in sudoers|command not allowed) ; TTY=\S+ ; PWD=\S+ ; USER=\S+ ; COMMAND=.*)$",
        "bob : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/home/bob ; USER=root ; COMMAND=/bin/sh",
    ),
    (
        "cert-error",
        rf"(?:SSL_do_handshake|SSL_accept|ssl3_get_record)\(\) failed(?: \(SSL: error:[0-9A-F]+:[^)]*\))?(?: while SSL handshaking)?, client: {HOST}",
        "SSL_do_handshake() failed (SSL: error:0A000412:SSL routines::sslv3 alert bad certificate) while SSL handshaking, client: 192.0.2.15",
    ),
]

SERVICES = [
    "sshd",
    "nginx",
    "apache",
    "postfix",
    "dovecot",
    "vsftpd",
    "pureftpd",
    "postgres",
    "mysql",
    "openvpn",
    "gitea",
    "grafana",
    "squid",
    "named",
    "kernel",
    "fail2ban",
    "sudo",
    "haproxy",
    "keycloak",
    "nextcloud",
    "roundcube",
    "exim",
    "courier",
    "proftpd",
    "mariadb",
    "wireguard",
    "traefik",
    "jenkins",
    "gitlab",
    "zabbix",
]
N_RULES = 150


def rules(variant: int = 0) -> list[tuple[str, str, str, str]]:
    """(rule name, source, regex, a sample line) for ``N_RULES`` rules: each template over
    several services, the service's own tag in the prefix so that no two rules are the same.
    ``variant`` > 0 adds an optional marker to every pattern: the same rules, other databases
    (a reload that must compile everything again)."""
    out: list[tuple[str, str, str, str]] = []
    i = 0
    while len(out) < N_RULES:
        name, body, sample = TEMPLATES[i % len(TEMPLATES)]
        service = SERVICES[(i * 7) % len(SERVICES)]
        prefix = PREFIX.replace(r"(?:[\w./-]+(?:\[\d+\])?: )?", rf"(?:{service}(?:\[\d+\])?: )?")
        if variant:
            body = f"(?:v{variant} )?" + body
        line = f"Nov 25 10:00:00 host {service}[42]: {sample}"
        out.append((f"{service}-{name}-{i}", service, prefix + body, line))
        i += 1
    return out


def rules_yaml(log_dir: Path, count: int = N_RULES, variant: int = 0, agent: str = "") -> str:
    """A rules.yaml with the first ``count`` rules, each source a file under ``log_dir``
    (``agent``: the body of its ``agent:`` mapping, in flow style)."""
    chosen = rules(variant)[:count]
    sources = sorted({s for _, s, _, _ in chosen})
    lines = ["version: 1", f"agent: {{{agent}}}", "sources:"]
    for s in sources:
        lines.append(f"  {s}:\n    file: {json.dumps(str(log_dir / (s + '.log')))}")
    lines.append("rules:")
    for name, source, regex, _ in chosen:
        lines.append(f"  - name: {name}\n    source: {source}\n    match: {json.dumps(regex)}")
        lines.append("    group_by: [host]" if "(?P<host>" in regex else "    severity: warning")
    return "\n".join(lines) + "\n"


def sample_lines() -> list[str]:
    return [sample for _, _, _, sample in rules()]
