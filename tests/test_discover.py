"""`detector discover`: schedules read from a root written on disk, the rules they become (loaded
by the real config loader), --write that never overwrites a user's edits, the history check over
30 days of log lines, and jobs inferred from the Loghub Linux sample alone."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from detector.cli import main
from detector.config import load_config
from detector.discover.timers import CalendarError, calendar_to_cron, parse_span
from tests.helpers import loghub_log

WEBHOOK = 'version: 1\nwebhooks:\n  ops: {url: "http://127.0.0.1:9/alerts"}\n'


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host's schedules: /etc/crontab with run-parts lines, a cron.d file with CRON_TZ=, a
    step, a range, names and @reboot, a user crontab with @daily, and three timers."""
    root = tmp_path / "root"
    write(
        root,
        "etc/crontab",
        "SHELL=/bin/sh\n"
        "17 *\t* * *\troot\tcd / && run-parts --report /etc/cron.hourly\n"
        "25 6\t* * *\troot\ttest -x /usr/sbin/anacron || { cd / && run-parts --report "
        "/etc/cron.daily; }\n",
    )
    write(root, "etc/cron.daily/logrotate", "#!/bin/sh\n")
    write(root, "etc/cron.d/.placeholder", "")
    write(root, "etc/cron.d/backup.dpkg-old", "* * * * * root never\n")
    write(
        root,
        "etc/cron.d/backup",
        "# nightly backup\nCRON_TZ=Europe/Berlin\n"
        "30 2 * * * root /usr/local/bin/backup.sh --full\n"
        "*/15 9-17 * * mon-fri www-data /usr/bin/php /srv/app/cron.php\n"
        "@reboot root /usr/local/bin/warm-cache\n",
    )
    write(root, "var/spool/cron/crontabs/alice", "@daily /home/alice/bin/report\n")
    write(
        root,
        "lib/systemd/system/nightly.timer",
        "[Timer]\nOnCalendar=*-*-* 02:00:00 Europe/Berlin\nPersistent=true\n"
        "RandomizedDelaySec=10min\n",
    )
    write(
        root,
        "lib/systemd/system/nightly.service",
        "[Unit]\nDescription=Nightly export\n[Service]\nType=oneshot\n"
        "ExecStart=/usr/local/bin/export\n",
    )
    write(root, "lib/systemd/system/poll.timer", "[Timer]\nOnBootSec=5min\nOnUnitActiveSec=1h\n"
          "Unit=poller.service\n")  # fmt: skip
    write(root, "lib/systemd/system/odd.timer", "[Timer]\nOnCalendar=*-*-~01 03:00\n")
    wants = root / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    for name in ("nightly.timer", "poll.timer"):  # odd.timer stays disabled
        (wants / name).symlink_to(f"/lib/systemd/system/{name}")
    return root


def discover(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["discover", "--timezone", "UTC", *args])
    return code, capsys.readouterr().out


def rules_of(text: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in yaml.safe_load(text)["rules"]}


def test_discover_turns_crontabs_and_timers_into_window_heartbeat_and_failure_rules(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = discover(capsys, "--root", str(host))
    assert code == 0
    rules = rules_of(out)
    backup = rules["cron-backup-sh"]
    assert backup["expect"] == {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "within": "5m"}
    assert backup["source"] == "discovered-cron"
    assert backup["match"] == r"\(root\) CMD \(/usr/local/bin/backup\.sh --full\)"
    assert rules["cron-php"]["expect"]["cron"] == "*/15 9-17 * * mon-fri"
    assert rules["cron-php"]["expect"]["timezone"] == "Europe/Berlin"  # CRON_TZ= goes on
    assert rules["cron-report"]["expect"] == {
        "cron": "0 0 * * *",
        "timezone": "UTC",
        "within": "5m",
    }
    assert rules["cron-hourly"]["expect"]["cron"] == "17 * * * *"
    assert rules["cron-daily"]["expect"]["cron"] == "25 6 * * *"  # no anacron on this host
    assert "run-parts /etc/cron.daily (logrotate)" in out
    assert "cron-warm-cache" not in rules and "@reboot: runs once at boot" in out
    assert "never" not in out  # cron.d/backup.dpkg-old is ignored, as cron ignores it
    assert "cron ignores this name" in out
    nightly = rules["timer-nightly"]
    # AccuracySec (1 min by default) + RandomizedDelaySec=10min + 5 min
    assert nightly["expect"] == {"cron": "0 2 * * *", "timezone": "Europe/Berlin", "within": "16m"}
    assert nightly["source"] == "discovered-systemd"
    assert "Persistent=true" in out and "enabled" not in nightly
    assert rules["timer-nightly-fails"]["match"] == (
        r"nightly\.service: Failed with result '(?P<result>[\w-]+)'"
    )
    assert rules["timer-poll"]["expect"] == {"every": "1h", "grace": "6m"}
    assert rules["timer-poll"]["match"] == r"Start(?:ing|ed) poller\.service\b"
    assert "timer-odd" not in rules and rules["timer-odd-fails"]["enabled"] is False
    assert "OnCalendar=*-*-~01 03:00: not converted" in out
    sources = yaml.safe_load(out)["sources"]
    assert sources["discovered-systemd"] == {
        "journald": {"units": ["nightly.service", "odd.service", "poller.service"]}
    }
    assert sources["discovered-cron"] == {
        "journald": {"units": ["cron.service", "anacron.service"]}
    }


def test_discover_with_anacron_watches_anacrons_jobs_and_reads_the_syslog_file(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(host, "usr/sbin/anacron", "")
    write(host, "var/log/syslog", "")
    anacrontab = (
        "SHELL=/bin/sh\n1\t5\tcron.daily\trun-parts --report /etc/cron.daily\n"
        "@monthly\t15\tcron.monthly\trun-parts --report /etc/cron.monthly\n"
    )
    write(host, "etc/anacrontab", anacrontab)
    _code, out = discover(capsys, "--root", str(host))
    rules = rules_of(out)
    assert "cron-daily" not in rules and "runs through anacron here" in out
    assert rules["anacron-cron-daily"]["expect"] == {"every": "1d", "grace": "1h5m"}
    assert rules["anacron-cron-monthly"]["expect"] == {"every": "31d", "grace": "1h15m"}
    assert rules["anacron-cron-daily-fails"]["match"].startswith(r"Job `cron\.daily' terminated")
    assert yaml.safe_load(out)["sources"]["discovered-cron"] == {"file": "/var/log/syslog"}


def test_every_discovered_snippet_loads_with_the_config_loader_and_detector_check(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(host, "usr/sbin/anacron", "")
    write(host, "etc/anacrontab", "1 5 cron.daily run-parts --report /etc/cron.daily\n")
    _code, out = discover(capsys, "--root", str(host))
    config_path = write(tmp_path, "rules.yaml", WEBHOOK + out)
    config = load_config(str(config_path))  # samples are checked against the patterns, too
    names = {r.name for r in config.rules}
    assert {"cron-backup-sh", "timer-nightly", "timer-poll", "anacron-cron-daily"} <= names
    kinds = {r.name: r.kind for r in config.rules}
    assert kinds["timer-nightly"] == "window" and kinds["timer-poll"] == "heartbeat"
    assert kinds["timer-nightly-fails"] == "error"
    assert main(["check", "-c", str(config_path)]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "cron", "zone"),
    [
        ("daily", "0 0 * * *", "UTC"),
        ("hourly", "0 * * * *", "UTC"),
        ("weekly", "0 0 * * 1", "UTC"),
        ("*-*-* 02:00:00", "0 2 * * *", "UTC"),
        ("*-*-* 02:00:00 Europe/Berlin", "0 2 * * *", "Europe/Berlin"),
        ("Mon..Fri *-*-* 09:30", "30 9 * * mon-fri", "UTC"),
        ("Sat,Sun 10:00", "0 10 * * sat,sun", "UTC"),
        ("*:0/15", "*/15 * * * *", "UTC"),
        ("*-*-01 03:00:00", "0 3 1 * *", "UTC"),
        ("*-01,07-01 00:00", "0 0 1 1,7 *", "UTC"),
        ("08..18:05", "5 8-18 * * *", "UTC"),
    ],
)
def test_oncalendar_common_forms_become_a_cron_expression(spec: str, cron: str, zone: str) -> None:
    assert calendar_to_cron(spec, "UTC") == (cron, zone)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("*-*-~01 03:00", "month's end"),
        ("2026-*-* 00:00", "year"),
        ("Sat *-*-1..7 18:00:00", "cron takes either"),
        ("*:*:0/10", "seconds"),
        ("*-*-* 02:00:30", "seconds"),
    ],
)
def test_oncalendar_forms_cron_cannot_say_are_refused_with_the_reason(spec: str, why: str) -> None:
    with pytest.raises(CalendarError, match=why):
        calendar_to_cron(spec, "UTC")


def test_systemd_time_spans() -> None:
    assert parse_span("1h 30min") == timedelta(hours=1, minutes=30)
    assert parse_span("5m") == timedelta(minutes=5)
    assert parse_span("300") == timedelta(minutes=5)
    assert parse_span("1d") == timedelta(days=1)
    with pytest.raises(ValueError, match="unknown unit"):
        parse_span("3 fortnights")


def test_write_is_idempotent_and_never_overwrites_a_users_edits(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "rules.d" / "discovered.yaml"
    assert main(["discover", "--root", str(host), "--timezone", "UTC", "--write", str(target)]) == 0
    first = target.read_bytes()
    assert "written" in capsys.readouterr().err
    assert b"# detector-discover-sha256: " in first
    assert main(["discover", "--root", str(host), "--timezone", "UTC", "--write", str(target)]) == 0
    assert "unchanged" in capsys.readouterr().err
    assert target.read_bytes() == first
    # a new job is an update of a file nobody edited
    write(host, "etc/cron.d/extra", "0 5 * * * root /usr/bin/extra\n")
    assert main(["discover", "--root", str(host), "--timezone", "UTC", "--write", str(target)]) == 0
    updated = target.read_text(encoding="utf-8")
    assert "cron-extra" in updated
    # the user edits it: the next run leaves it alone and writes .new beside it
    edited = updated.replace("within: 5m", "within: 20m", 1)
    target.write_text(edited, encoding="utf-8")
    write(host, "etc/cron.d/more", "0 6 * * * root /usr/bin/more\n")
    assert main(["discover", "--root", str(host), "--timezone", "UTC", "--write", str(target)]) == 1
    err = capsys.readouterr().err
    assert "was edited" in err and "discovered.yaml.new" in err
    assert target.read_text(encoding="utf-8") == edited
    proposal = (target.parent / "discovered.yaml.new").read_text(encoding="utf-8")
    assert "cron-more" in proposal and "within: 20m" not in proposal


BERLIN = ZoneInfo("Europe/Berlin")


def history_log(path: Path) -> Path:
    """30 days of cron and journal lines: the backup starts between 02:30:04 and 02:37:51
    (Berlin), except on 2026-11-14 when it did not run; the nightly timer's service fails once."""
    lines: list[str] = []
    for day in range(1, 31):
        base = datetime(2026, 11, day, 2, 0, tzinfo=BERLIN)
        offset = timedelta(seconds=4) if day != 20 else timedelta(minutes=7, seconds=51)
        if day != 14:
            at = (base + timedelta(minutes=30) + offset).isoformat()
            lines.append(
                f"{at} host CRON[{1000 + day}]: (root) CMD (/usr/local/bin/backup.sh --full)"
            )
        at = (base + timedelta(minutes=3)).isoformat()
        lines.append(f"{at} host systemd[1]: Starting nightly.service - Nightly export...")
        end = (base + timedelta(minutes=9)).isoformat()
        if day == 22:
            lines.append(f"{end} host systemd[1]: nightly.service: Main process exited, "
                         "code=exited, status=1/FAILURE")  # fmt: skip
            lines.append(f"{end} host systemd[1]: nightly.service: Failed with result 'exit-code'.")
        else:
            lines.append(f"{end} host systemd[1]: nightly.service: Deactivated successfully.")
            lines.append(f"{end} host systemd[1]: Finished nightly.service - Nightly export.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_since_checks_each_window_against_30_days_of_logs(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = history_log(tmp_path / "syslog")
    code, out = discover(capsys, "--root", str(host), "--since", "30d", "--logs", str(log))
    assert code == 0
    assert "history: ran 29/30 days, between 02:30:04 and 02:37:51" in out
    assert "history: missed on 2026-11-14" in out
    rules = rules_of(out)
    # the latest start, 7m51s after 02:30, +25% and a minute, rounded up to 5 minutes
    assert rules["cron-backup-sh"]["expect"]["within"] == "15m"
    assert "history: ran 30/30 days, between 02:03:00 and 02:03:00" in out
    assert "history: already fails: 1 failure(s), on 2026-11-22" in out
    assert "enabled" not in rules["timer-nightly-fails"]  # one failure in 30 runs: kept on
    assert "cron-report" in rules and "history: ran 0/30 days" in out  # alice's job never ran
    config_path = write(tmp_path, "rules.yaml", WEBHOOK + out)
    assert {r.name for r in load_config(str(config_path)).rules} >= {"cron-backup-sh"}


def test_the_proposed_rules_are_replayed_over_the_history_before_they_are_included(
    host: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """30 days: the backup missed 2026-11-14, the nightly service failed on 2026-11-22. The
    rules, as proposed (the backup's within: widened to 15m), go through detector test's replay
    on a simulated clock: each says how often it would have alerted, in the file and on
    stderr, before anyone includes it."""
    log = history_log(tmp_path / "syslog")
    target = tmp_path / "rules.d" / "discovered.yaml"
    argv = ["discover", "--root", str(host), "--timezone", "UTC", "--since", "30d"]
    assert main([*argv, "--logs", str(log), "--write", str(target)]) == 0
    err = capsys.readouterr().err
    said = [
        line.removeprefix("detector test over the history: ")
        for line in err.splitlines()
        if line.startswith("detector test over the history: ")
    ]
    assert "cron-backup-sh would have alerted 1x: missed on 2026-11-14" in said
    assert "timer-nightly would not have alerted" in said
    assert "timer-nightly-fails would have alerted 1x: failed on 2026-11-22" in said
    # alice's report never ran: one alert from the first window, never resolved
    assert "cron-report would have alerted 1x: missed on 2026-11-01 (still firing at the end)" in (
        said
    )
    text = target.read_text(encoding="utf-8")
    backup = text[text.index("# ── cron-backup-sh:") :].split("\n  - name:")[0]
    assert "#    detector test over the history: cron-backup-sh would have alerted 1x: missed on " \
        "2026-11-14" in backup  # fmt: skip
    # the replay is of the rules as written: the widened window is the one that passed
    assert rules_of(text)["cron-backup-sh"]["expect"]["within"] == "15m"


def test_a_job_that_drifts_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    write(root, "etc/cron.d/etl", "0 1 * * * root /opt/etl\n")
    lines = []
    for day in range(1, 31):
        at = datetime(2026, 11, day, 1, 0, tzinfo=ZoneInfo("UTC")) + timedelta(minutes=day)
        lines.append(f"{at.isoformat()} host CRON[7]: (root) CMD (/opt/etl)")
    log = write(tmp_path, "syslog", "\n".join(lines) + "\n")
    _code, out = discover(capsys, "--root", str(root), "--logs", str(log))
    assert "drifts: starts 20m later than at the start of the period" in out


def test_loghub_linux_jobs_are_inferred_from_the_log_alone_and_pass_detector_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Loghub Linux sample has no crontab to read: cron.daily's scripts show only as the
    root `su` sessions they open every night (cyrus, news), and logrotate's script logs
    'ALERT exited abnormally' every day. discover proposes daily windows from those times, and
    a failure rule it disables since the job already fails every day; `detector test` on the
    same file then raises no alert."""
    (log,) = loghub_log("Linux")
    empty = tmp_path / "empty-root"
    empty.mkdir()
    target = tmp_path / "rules.d" / "discovered.yaml"
    argv = ["discover", "--root", str(empty), "--timezone", "UTC", "--logs", str(log)]
    assert main([*argv, "--write", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    rules = rules_of(text)
    cyrus = rules["log-su-session-cyrus"]
    assert cyrus["expect"] == {"cron": "0 4 * * *", "timezone": "UTC", "within": "30m"}
    assert "history: ran 43/43 days, between 04:02:47 and 04:20:19" in text
    assert rules["log-su-session-news"]["expect"]["cron"] == "5 4 * * *"
    assert rules["log-logrotate-fails"]["enabled"] is False
    assert "already fails: 43 failure(s)" in text
    # the replay over the same log agrees with detector test below: the windows raise nothing,
    # the failure rule (disabled) would have alerted on the first failure and stayed open
    assert "detector test over the history: log-su-session-cyrus would not have alerted" in text
    assert "detector test over the history: log-logrotate-fails would have alerted" in text
    config_path = write(tmp_path, "rules.yaml", WEBHOOK + text)
    capsys.readouterr()
    assert main(["test", "-c", str(config_path), str(log)]) == 0
    out = capsys.readouterr().out
    assert "0 alerts would have fired" in out
    assert "log-su-session-cyrus             window               43" in out


def test_since_under_a_root_without_a_journal_is_a_usage_error_naming_the_way_out(
    host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["discover", "--root", str(host), "--since", "30d"]) == 2
    err = capsys.readouterr().err
    assert f"{host}/var/log/journal is not a directory" in err and "--logs FILE" in err
