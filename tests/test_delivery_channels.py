"""The ``email`` and ``exec`` receivers through the real outbox worker: a real aiosmtpd server on
127.0.0.1 with STARTTLS (a self-signed certificate made by ``openssl``) and AUTH, real scripts run
as commands; a real SQLite outbox, a FakeClock for the retry times."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from detector.clock import FakeClock
from detector.config.load import parse_config
from detector.config.nodes import ConfigError
from detector.delivery import mail as smtp_format
from detector.delivery.sendtest import send_test
from detector.model import SmtpConfig, WebhookConfig
from detector.store.db import AsyncStore, Store
from tests.test_delivery import START, drain, enqueue, free_port, states, worker
from tests.waiting import eventually

PASSWORD = "s3cret-pa55word"


# ---------------------------------------------------------------- a real SMTP server


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


@dataclass
class Mailbox:
    """What the server received, and what it answers to the next DATA commands."""

    answers: list[str] = field(default_factory=list)  # popped per DATA; empty: 250
    mails: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    tls_sessions: list[bool] = field(default_factory=list)
    logins: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.tls_sessions.append(session.ssl is not None)
        if self.answers:
            return self.answers.pop(0)
        assert isinstance(envelope.content, bytes)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.mails.append((envelope, msg))
        return "250 OK queued as 42"


def _auth(mailbox: Mailbox) -> Any:
    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == PASSWORD.encode()
        if isinstance(data, LoginPassword):
            mailbox.logins.append(data.login)
        return AuthResult(success=ok, handled=False)

    return check


@pytest.fixture
def smtpd(cert: tuple[Path, Path]) -> Iterator[tuple[Mailbox, int]]:
    crt, key = cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=_auth(mailbox),
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def mail_hook(port: int, crt: Path, password: str = PASSWORD, **over: Any) -> WebhookConfig:
    smtp = SmtpConfig(
        host="127.0.0.1", port=port, username="alerts", password=password, ca_file=str(crt)
    )
    return WebhookConfig(
        name="hook",
        url=f"smtp://127.0.0.1:{port}",
        format="email",
        smtp=smtp,
        mail_from="detector <detector@db1.example>",
        mail_to=("ops@example.com", "oncall@example.com"),
        **over,
    )


@pytest.fixture
async def channel_db(store: Store) -> AsyncIterator[AsyncStore]:
    a = AsyncStore(store)
    yield a
    a.stop()


async def test_a_mail_goes_out_over_starttls_with_auth_and_reads_well(
    store: Store,
    db: AsyncStore,
    session: aiohttp.ClientSession,
    smtpd: tuple[Mailbox, int],
    cert: tuple[Path, Path],
) -> None:
    mailbox, port = smtpd
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1"), ("ev-2", "fp1", "resolved")])
    w = worker(mail_hook(port, cert[0]), db, clock, session)
    assert await w.run_once() == 1  # one row per alert and pass: the resolve follows
    assert await w.run_once() == 1
    assert states(store) == {"ev-1": ("delivered", 1), "ev-2": ("delivered", 1)}
    assert mailbox.tls_sessions == [True, True]  # STARTTLS before AUTH and DATA
    assert mailbox.logins == [b"alerts", b"alerts"]
    (env1, firing), (_, resolved) = mailbox.mails
    assert env1.mail_from == "detector@db1.example"
    assert env1.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    assert firing["Subject"] == "[ERROR] FIRING rule-fp1 on db1: summary ev-1"
    assert resolved["Subject"] == "[ERROR] RESOLVED rule-fp1 on db1: summary ev-2"
    assert firing["Message-ID"] == "<ev-1@detector.db1>"
    assert resolved["Message-ID"] == "<ev-2@detector.db1>"
    thread = "<alert-fp1-20260301115900000@detector.db1>"
    assert firing["References"] == resolved["References"] == thread
    assert firing["In-Reply-To"] is None and resolved["In-Reply-To"] == thread
    assert firing["Auto-Submitted"] == "auto-generated"
    assert firing["To"] == "ops@example.com, oncall@example.com"
    body = firing.get_body(("plain",))
    assert body is not None
    text = body.get_content().replace("\r\n", "\n")
    assert "summary ev-1" in text and "Host:       db1" in text
    assert "Sample lines:\n  a line" in text and "Event id: ev-1" in text


async def test_a_4xx_is_retried_and_the_mail_delivered_once(
    store: Store,
    db: AsyncStore,
    session: aiohttp.ClientSession,
    smtpd: tuple[Mailbox, int],
    cert: tuple[Path, Path],
) -> None:
    mailbox, port = smtpd
    mailbox.answers = ["451 4.3.0 try again later"]
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(mail_hook(port, cert[0]), db, clock, session)
    await w.run_once()
    assert states(store) == {"ev-1": ("pending", 1)}
    (error,) = store.execute("SELECT last_error FROM outbox")[0]
    assert "451" in error and "try again later" in error
    await drain(w, clock, START + timedelta(minutes=5))
    assert states(store) == {"ev-1": ("delivered", 2)}
    assert len(mailbox.mails) == 1
    assert mailbox.mails[0][1]["Message-ID"] == "<ev-1@detector.db1>"


async def test_a_5xx_to_the_message_is_a_dead_letter_reported_at_once(
    store: Store,
    db: AsyncStore,
    session: aiohttp.ClientSession,
    smtpd: tuple[Mailbox, int],
    cert: tuple[Path, Path],
) -> None:
    mailbox, port = smtpd
    mailbox.answers = ["554 5.6.0 message content rejected"]
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    dead: list[tuple[str, str, str]] = []
    w = worker(
        mail_hook(port, cert[0]), db, clock, session, on_dead_letter=lambda *a: dead.append(a)
    )
    await w.run_once()
    assert states(store) == {"ev-1": ("dead", 1)}
    assert [(h, e) for h, e, _ in dead] == [("hook", "ev-1")]  # → the dead-letter agent alert
    assert "554" in dead[0][2] and "content rejected" in dead[0][2]
    assert mailbox.mails == []


async def test_a_refused_login_holds_the_path_and_never_shows_the_password(
    store: Store,
    db: AsyncStore,
    session: aiohttp.ClientSession,
    smtpd: tuple[Mailbox, int],
    cert: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, port = smtpd
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    health: list[tuple[str, bool, str]] = []
    wrong = "wrong-" + PASSWORD
    wh = mail_hook(port, cert[0], password=wrong)
    w = worker(wh, db, clock, session, on_path_health=lambda *a: health.append(a))
    with caplog.at_level(logging.DEBUG):
        await w.run_once()
    assert states(store) == {"ev-1": ("pending", 1)}  # held, not dead: fix the password
    assert [(h, failing) for h, failing, _ in health] == [("hook", True)]
    assert "535" in health[0][2] and "the login refused" in health[0][2]
    (error,) = store.execute("SELECT last_error FROM outbox")[0]
    for text in (error, caplog.text, health[0][2]):
        assert wrong not in text


async def test_no_tls_where_the_server_has_no_trusted_certificate_is_retried(
    store: Store,
    db: AsyncStore,
    session: aiohttp.ClientSession,
    smtpd: tuple[Mailbox, int],
) -> None:
    mailbox, port = smtpd
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    wh = mail_hook(port, Path("/etc/ssl/certs/ca-certificates.crt"))  # not our self-signed CA
    await worker(wh, db, clock, session).run_once()
    assert states(store) == {"ev-1": ("pending", 1)}
    (error,) = store.execute("SELECT last_error FROM outbox")[0]
    assert "certificate" in error.lower() or "tls" in error.lower()
    assert mailbox.mails == []


async def test_send_test_sends_a_mail(smtpd: tuple[Mailbox, int], cert: tuple[Path, Path]) -> None:
    mailbox, port = smtpd
    result = await send_test(mail_hook(port, cert[0]), "db1")
    assert result.ok, result.error
    assert "OK queued as 42" in result.body
    ((_, msg),) = mailbox.mails
    assert msg["Subject"] == (
        "[INFO] INFO detector-send-test on db1: Test notification from detector on db1"
    )


def test_a_long_subject_is_cut_and_an_odd_event_id_makes_a_valid_message_id() -> None:
    alert = {
        "event_id": "a b<c>",
        "host": "db 1",
        "rule": "r",
        "severity": "critical",
        "notification": "firing",
        "status": "firing",
        "summary": "x" * 500,
    }
    assert smtp_format.message_id(alert) == "<a-b-c-@detector.db-1>"
    assert len(smtp_format.subject(alert)) == smtp_format.SUBJECT_MAX


# ---------------------------------------------------------------- exec


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def exec_hook(*argv: str | Path, timeout: float = 10) -> WebhookConfig:
    command = tuple(str(a) for a in argv)
    return WebhookConfig(
        name="hook",
        url=f"exec:{command[0]}",
        format="exec",
        command=command,
        timeout=timedelta(seconds=timeout),
    )


async def test_exec_feeds_the_json_payload_on_stdin_with_a_clean_env(
    tmp_path: Path,
    store: Store,
    db: AsyncStore,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "do-not-leak")
    out = tmp_path / "got.json"
    cmd = script(
        tmp_path,
        "notify",
        'cat > "$1"\necho "event=$DETECTOR_EVENT_ID notification=$DETECTOR_NOTIFICATION '
        'secret=${SMTP_PASSWORD:-none}"\n',
    )
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(exec_hook(cmd, out), db, clock, session)
    assert await w.run_once() == 1
    assert states(store) == {"ev-1": ("delivered", 1)}
    import json

    got = json.loads(out.read_text())
    assert got["version"] == "4" and got["x_detector"]["event_id"] == "ev-1"  # the json format
    assert got["alerts"][0]["annotations"]["summary"] == "summary ev-1"
    (delivered,) = store.execute("SELECT last_error FROM outbox")[0]
    assert delivered is None


async def test_exec_output_is_clipped_into_the_result(tmp_path: Path) -> None:
    cmd = script(
        tmp_path,
        "say",
        'cat >/dev/null\necho "event=$DETECTOR_EVENT_ID secret=${SMTP_PASSWORD:-none}"\n'
        'head -c 5000 /dev/zero | tr "\\0" x >&2\nexit 3\n',
    )
    os.environ.setdefault("SMTP_PASSWORD", "do-not-leak")
    try:
        result = await send_test(exec_hook(cmd), "db1")
    finally:
        os.environ.pop("SMTP_PASSWORD", None)
    assert not result.ok
    assert result.error is not None
    assert "exit 3; stdout: event=test-" in result.error and "secret=none" in result.error
    assert "stderr: " + "x" * 500 + "…" in result.error
    assert len(result.error) < 1200


async def test_a_hanging_command_is_killed_with_its_group_at_the_timeout(
    tmp_path: Path, store: Store, db: AsyncStore, session: aiohttp.ClientSession
) -> None:
    pidfile = tmp_path / "child.pid"
    cmd = script(tmp_path, "hang", 'sleep 1000 &\necho $! > "$1"\nwait\n')
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(exec_hook(cmd, pidfile, timeout=0.5), db, clock, session)
    await w.run_once()
    assert states(store) == {"ev-1": ("pending", 1)}
    (error,) = store.execute("SELECT last_error FROM outbox")[0]
    assert "timed out after 0.5s (killed)" in error
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"  # killed, not reaped yet

    await eventually(gone, what="the command's child was killed with its process group")


async def test_exec_non_zero_is_retried_then_delivered(
    tmp_path: Path, store: Store, db: AsyncStore, session: aiohttp.ClientSession
) -> None:
    out = tmp_path / "got.json"
    cmd = script(
        tmp_path,
        "flaky",
        'if [ -f "$1.seen" ]; then cat > "$1"; exit 0; fi\n'
        'touch "$1.seen"\necho "receiver busy" >&2\nexit 1\n',
    )
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    w = worker(exec_hook(cmd, out), db, clock, session)
    await w.run_once()
    assert states(store) == {"ev-1": ("pending", 1)}
    (error,) = store.execute("SELECT last_error FROM outbox")[0]
    assert error.endswith("flaky: exit 1; stderr: receiver busy")
    await drain(w, clock, START + timedelta(minutes=5))
    assert states(store) == {"ev-1": ("delivered", 2)}
    assert '"event_id":"ev-1"' in out.read_text()


async def test_exec_exit_65_is_a_dead_letter_and_a_missing_command_holds_the_path(
    tmp_path: Path, store: Store, db: AsyncStore, session: aiohttp.ClientSession
) -> None:
    cmd = script(tmp_path, "refuse", 'cat >/dev/null\necho "bad alert" >&2\nexit 65\n')
    clock = FakeClock(START)
    enqueue(store, "hook", [("ev-1", "fp1")])
    dead: list[tuple[str, str, str]] = []
    w = worker(exec_hook(cmd), db, clock, session, on_dead_letter=lambda *a: dead.append(a))
    await w.run_once()
    assert states(store) == {"ev-1": ("dead", 1)}
    assert dead and "exit 65; stderr: bad alert" in dead[0][2]

    enqueue(store, "hook2", [("ev-2", "fp2")])
    health: list[tuple[str, bool, str]] = []
    missing = WebhookConfig(
        name="hook2",
        url="exec:/nonexistent/notify",
        format="exec",
        command=("/nonexistent/notify",),
    )
    w2 = worker(missing, db, clock, session, on_path_health=lambda *a: health.append(a))
    await w2.run_once()
    assert states(store)["ev-2"] == ("pending", 1)
    assert [(h, f) for h, f, _ in health] == [("hook2", True)]
    assert "cannot start" in health[0][2]


# ---------------------------------------------------------------- rules.yaml and the CLI

BASE = """\
version: 1
sources:
  app: {{file: /var/log/app.log}}
webhooks:
{hooks}
rules:
  - {{name: r, source: app, match: ERROR}}
"""


def test_email_and_exec_webhooks_are_read_from_rules_yaml() -> None:
    cfg = parse_config(
        BASE.format(
            hooks="  mail:\n    format: email\n"
            "    smtp: {host: smtp.example.com, username: alerts, password: '${SMTP_PASSWORD}'}\n"
            "    from: detector@example.com\n    to: [ops@example.com]\n"
            "  mail465: {format: email, smtp: {host: smtp.example.com, port: 465},"
            " from: a@b.c, to: [x@y.z]}\n"
            "  run: {format: exec, command: [/usr/local/bin/notify, --team, ops], timeout: 5s}\n"
        ),
        env={"SMTP_PASSWORD": "pw-from-env"},
    )
    mail, m465, run = cfg.webhooks["mail"], cfg.webhooks["mail465"], cfg.webhooks["run"]
    assert mail.smtp == SmtpConfig(
        host="smtp.example.com", username="alerts", password="pw-from-env"
    )
    assert mail.url == "smtp://smtp.example.com:587" and mail.mail_to == ("ops@example.com",)
    assert m465.smtp is not None and m465.smtp.tls and not m465.smtp.starttls
    assert run.command == ("/usr/local/bin/notify", "--team", "ops")
    assert run.timeout == timedelta(seconds=5) and run.url == "exec:/usr/local/bin/notify"
    assert cfg.warnings == () or all("password" not in w for w in cfg.warnings)


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ("  m: {format: email, from: a@b.c, to: [x@y.z]}", "format email needs smtp:"),
        ("  m: {format: email, smtp: {host: h}, from: a@b.c, to: []}", "no recipient"),
        ("  m: {format: email, smtp: {host: h}, from: nobody, to: [x@y.z]}", "not a mail address"),
        ("  m: {format: email, smtp: {hots: h}, from: a@b.c, to: [x@y.z]}", "host"),
        (
            "  m: {format: email, smtp: {host: h, username: u}, from: a@b.c, to: [x@y.z]}",
            "password missing",
        ),
        (
            "  m: {format: email, smtp: {host: h, tls: true, starttls: true}, from: a@b.c,"
            " to: [x@y.z]}",
            "exclude each other",
        ),
        (
            "  m: {format: email, url: 'http://x/', smtp: {host: h}, from: a@b.c, to: [x@y.z]}",
            "format email has no url:",
        ),
        ("  m: {format: exec, command: [notify]}", "absolute path"),
        ("  m: {format: exec}", "format exec needs command:"),
        ("  m: {url: 'http://x/', command: [/bin/true]}", "command: belongs to format: exec"),
    ],
)
def test_bad_email_and_exec_webhooks_are_refused_with_the_fix(hooks: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE.format(hooks=hooks), env={})
    assert message in str(err.value)
    assert "rules.yaml:5:" in str(err.value) or "rules.yaml:4:" in str(err.value)


def test_a_password_written_in_the_file_is_warned_about() -> None:
    cfg = parse_config(
        BASE.format(
            hooks="  m: {format: email, smtp: {host: h, username: u, password: hunter22},"
            " from: a@b.c, to: [x@y.z]}"
        ),
        env={},
    )
    assert any("${SMTP_PASSWORD}" in w for w in cfg.warnings)
    assert all("hunter22" not in w for w in cfg.warnings)


def test_detector_check_and_send_test_work_for_exec(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    cmd = script(tmp_path, "notify", 'cat > "$1"\n')
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        BASE.format(hooks=f"  run: {{format: exec, command: [{cmd}, {out}]}}").replace(
            "/var/log/app.log", str(tmp_path / "app.log")
        )
    )
    env = {**os.environ, "TZ": "UTC"}
    check = subprocess.run(
        [sys.executable, "-m", "detector", "check", "-c", str(rules)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    sent = subprocess.run(
        [sys.executable, "-m", "detector", "send-test", "run", "-c", str(rules)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "OK" in sent.stdout
    assert '"rule":"detector-send-test"' in out.read_text().replace(" ", "")
