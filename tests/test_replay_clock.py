"""``detector test``'s simulated clock: it starts at the first line, every deadline fires at its own
time, syslog years roll over New Year, alerts are stamped when they happened, held digests are
reported at the end, ``--until`` and ``--format json``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from detector.clock import FakeClock
from detector.config.load import parse_config
from detector.config.nodes import ConfigError
from detector.model import AnomalyNewSpec, FileSourceConfig, HeartbeatSpec
from detector.replay import replay
from detector.sources.files import FileSource
from tests.helpers import config, loghub_log, rule

ROOT = Path(__file__).resolve().parents[1]


def times(res: Any, kind: str | None = None) -> list[tuple[str, str]]:
    """(time, notification) of every notification kept, optionally of one kind only."""
    return [
        (n["created_at"], n["notification"])
        for n in res.notifications
        if kind is None or n["notification"] == kind
    ]


def heartbeat(every: timedelta, match: str = "backup done", **kw: Any) -> Any:
    kw.setdefault("repeat", None)
    return rule("backup", kind="heartbeat", match=match, heartbeat=HeartbeatSpec(every=every), **kw)


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detector", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        env={**os.environ, "TZ": "UTC"},
    )


def test_a_missed_deadline_fires_at_the_deadline_not_at_the_next_line(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("2026-03-01T10:00:00Z backup done\n2026-03-01T14:00:00Z backup done\n")
    res = replay(config(heartbeat(timedelta(hours=1))), [(str(log), "s")])
    assert times(res) == [
        ("2026-03-01T11:00:00.000Z", "firing"),
        ("2026-03-01T14:00:00.000Z", "resolved"),
    ]
    assert res.first_at == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert res.last_at == res.until == datetime(2026, 3, 1, 14, tzinfo=UTC)


def test_repeats_come_every_repeat_of_simulated_time(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("2026-03-01T10:00:00Z backup done\n2026-03-01T14:30:00Z backup done\n")
    res = replay(
        config(heartbeat(timedelta(hours=1), repeat=timedelta(hours=1))), [(str(log), "s")]
    )
    assert times(res) == [
        ("2026-03-01T11:00:00.000Z", "firing"),
        ("2026-03-01T12:00:00.000Z", "repeat"),
        ("2026-03-01T13:00:00.000Z", "repeat"),
        ("2026-03-01T14:00:00.000Z", "repeat"),
        ("2026-03-01T14:30:00.000Z", "resolved"),
    ]


def test_the_clock_starts_at_the_first_line_not_at_the_present(tmp_path: Path) -> None:
    """An old log: the silence fires 5m30s after its first line, in 2019, and nothing happens at
    the present (a silence rule over a source with no match at all)."""
    log = tmp_path / "nginx.log"
    log.write_text(
        "".join(
            f'10.0.0.1 - - [01/Mar/2019:10:{m:02d}:00 +0000] "GET / HTTP/1.1" 200 5\n'
            for m in range(0, 30, 5)
        )
    )
    hb = rule(
        "myapp",
        kind="heartbeat",
        match="myapp alive",
        heartbeat=HeartbeatSpec(every=timedelta(minutes=5), grace=timedelta(seconds=30)),
        repeat=None,
    )
    res = replay(config(hb), [(str(log), "s")])
    assert times(res) == [("2019-03-01T10:05:30.000Z", "firing")]


def test_a_missed_window_in_an_old_log_fires_and_exits_1(tmp_path: Path) -> None:
    log = tmp_path / "backup.log"
    log.write_text(
        "2020-01-01T02:10:00Z backup finished\n"
        "2020-01-01T12:00:00Z cron: other\n"
        "2020-01-02T12:00:00Z cron: other\n"  # the 2 January window (02:00-03:00) stays empty
        "2020-01-03T02:20:00Z backup finished\n"
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nsources:\n  app: {file: /var/log/backup.log}\nwebhooks:\n"
        "  ops: {url: 'http://127.0.0.1:9/'}\nrules:\n"
        "  - name: nightly\n    source: app\n    match: 'backup finished'\n"
        "    expect: {cron: '0 2 * * *', within: 1h}\n"
    )
    out = run_cli("test", "-c", str(rules), "--source", "app", str(log))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2020-01-02T03:00:00.000Z  FIRING" in out.stdout
    assert "simulated time: 2020-01-01T02:10:00Z to 2020-01-03T02:20:00Z (2d10m)" in out.stdout
    assert "1 alerts would have fired" in out.stdout

    # --format json: one object per notification, nothing else
    out = run_cli("test", "-c", str(rules), "--source", "app", "--format", "json", str(log))
    assert out.returncode == 1, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert [r["time"] for r in rows if r["notification"] == "repeat"] == [
        f"2020-01-02T{h:02d}:00:00.000Z" for h in (7, 11, 15, 19, 23)
    ]  # every 4 h (the default repeat) of simulated time
    rows = [r for r in rows if r["notification"] != "repeat"]
    assert [(r["time"], r["notification"], r["rule"], r["kind"]) for r in rows] == [
        ("2020-01-02T03:00:00.000Z", "firing", "nightly", "window"),
        ("2020-01-03T02:20:00.000Z", "resolved", "nightly", "window"),
    ]
    assert all(set(r) >= {"key", "severity"} and r["summary"] for r in rows)

    # --until: how far deadlines play out after the last line
    out = run_cli(
        "test", "-c", str(rules), "--source", "app", "--format", "json", "--until", "+2d", str(log)
    )
    got = [(r["time"], r["notification"]) for r in map(json.loads, out.stdout.splitlines())]
    assert [x for x in got if x[1] != "repeat"][-2:] == [
        ("2020-01-03T02:20:00.000Z", "resolved"),
        ("2020-01-04T03:00:00.000Z", "firing"),  # the 4 January window is missed too
    ]  # and the replay stops 2 days after the last line, before the 5 January window closes
    assert got[-1] == ("2020-01-04T23:00:00.000Z", "repeat")
    out = run_cli("test", "-c", str(rules), "--source", "app", "--until", "bad", str(log))
    assert out.returncode == 2 and "--until bad" in out.stderr


def test_until_plays_deadlines_out_to_a_given_time(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("2026-03-01T10:00:00Z backup done\n")
    cfg = config(heartbeat(timedelta(hours=1)))
    assert times(replay(cfg, [(str(log), "s")])) == []
    res = replay(cfg, [(str(log), "s")], until=datetime(2026, 3, 1, 12, tzinfo=UTC))
    assert times(res) == [("2026-03-01T11:00:00.000Z", "firing")]
    assert res.until == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_an_alert_late_in_a_block_is_stamped_at_its_line(tmp_path: Path) -> None:
    """Many lines per block: the error at 10:30 is stamped 10:30 (not at the block's first line),
    and its repeat comes an hour later, not at the same instant."""
    log = tmp_path / "app.log"
    quiet = [f"2026-03-01T10:{m:02d}:00Z INFO fine\n" for m in range(30)]
    log.write_text(
        "".join(quiet) + "2026-03-01T10:30:00Z ERROR disk\n" + "2026-03-01T12:00:00Z INFO end\n"
    )
    errors = rule(
        "errors", match="ERROR", repeat=timedelta(hours=1), resolve_after=timedelta(days=1)
    )
    res = replay(config(errors), [(str(log), "s")], block=1 << 20)
    assert times(res) == [
        ("2026-03-01T10:30:00.000Z", "firing"),
        ("2026-03-01T11:30:00.000Z", "repeat"),
    ]


def syslog(tmp_path: Path, lines: list[str], mtime: datetime) -> Path:
    log = tmp_path / "syslog"
    log.write_text("".join(f"{t} host cron[1]: {what}\n" for t, what in lines))
    os.utime(log, (mtime.timestamp(), mtime.timestamp()))
    return log


def test_a_syslog_spanning_new_year_keeps_its_outages(tmp_path: Path) -> None:
    """Year-less stamps: the last line is in the mtime's year, the lines before New Year in the
    year before; the 36 h outage after 1 January fires (a 25 h silence rule)."""
    log = syslog(
        tmp_path,
        [
            ("Dec 30 10:00:00", "backup done"),
            ("Dec 31 10:00:00", "backup done"),
            ("Jan  1 10:00:00", "backup done"),
            ("Jan  2 22:00:00", "backup done"),  # 36 h later
            ("Jan  3 10:00:00", "backup done"),
        ],
        datetime(2026, 1, 3, 12, tzinfo=UTC),
    )
    cfg = dataclasses.replace(
        config(heartbeat(timedelta(hours=25))),
        sources={"s": FileSourceConfig(name="s", paths=(str(log),), timezone="UTC")},
    )
    res = replay(cfg, [(str(log), "s")])
    assert times(res) == [
        ("2026-01-02T11:00:00.000Z", "firing"),
        ("2026-01-02T22:00:00.000Z", "resolved"),
    ]
    assert res.first_at == datetime(2025, 12, 30, 10, tzinfo=UTC)


def test_a_syslog_line_is_never_placed_after_the_files_mtime(tmp_path: Path) -> None:
    """``Dec 31`` in a file last written in June 2026 is 31 December 2025, not a date to come
    (which fired false alerts)."""
    log = syslog(
        tmp_path,
        [("Dec 30 10:00:00", "backup done"), ("Dec 31 10:00:00", "backup done")],
        datetime(2026, 6, 1, tzinfo=UTC),
    )
    cfg = dataclasses.replace(
        config(heartbeat(timedelta(hours=1))),
        sources={"s": FileSourceConfig(name="s", paths=(str(log),), timezone="Europe/Berlin")},
    )
    res = replay(cfg, [(str(log), "s")])
    assert res.first_at == datetime(2025, 12, 30, 9, tzinfo=UTC)  # 10:00 in Berlin (CET)
    assert times(res, "firing") == [("2025-12-30T10:00:00.000Z", "firing")]


def test_held_new_kinds_are_reported_when_the_input_ends(tmp_path: Path) -> None:
    """``anomaly: new`` sends 2 alerts an hour and holds the rest for the hour's digest: a file
    that ends within the hour still reports them (once), as HELD."""
    log = tmp_path / "app.log"
    kinds = ["disk full on", "user logged in from", "cache miss for", "queue stalled at"]
    log.write_text(
        "2026-03-01T10:00:00Z learn this line\n"
        + "".join(f"2026-03-01T10:0{i + 1}:00Z {k} x{i}\n" for i, k in enumerate(kinds))
    )
    new = rule(
        "new",
        kind="anomaly_new",
        match=None,
        anomaly_new=AnomalyNewSpec(learn=None, learn_lines=1, max_alerts_per_hour=2),
        repeat=None,
    )
    res = replay(config(new), [(str(log), "s")])
    assert [
        (n["created_at"], n["notification"], n.get("held", False)) for n in res.notifications
    ] == [
        ("2026-03-01T10:01:00.000Z", "firing", False),
        ("2026-03-01T10:02:00.000Z", "firing", False),
        ("2026-03-01T10:04:00.000Z", "info", True),
    ]
    digest = res.notifications[2]
    assert digest["count"] == 2 and "2 more new kinds" in digest["summary"]
    # given time to the hour's end, the digest is sent then, not held
    later = replay(config(new), [(str(log), "s")], until=datetime(2026, 3, 1, 12, tzinfo=UTC))
    digest = next(n for n in later.notifications if n["notification"] == "info")
    assert digest["created_at"] == "2026-03-01T11:01:00.000Z" and "held" not in digest


def test_the_loghub_linux_syslog_replays_at_its_own_time(tmp_path: Path) -> None:
    """The Loghub 2k Linux sample (year-less syslog, 14 June to 27 July; the mtime set to the end
    of 2005): logrotate runs daily at about 04:05, so a 24 h silence rule fires exactly 24 h after
    each run that the next day's comes later than, and resolves at that later run. Expected times
    worked out from the file by hand (awk and a few lines of Python), not by the replay."""
    log = tmp_path / "Linux_2k.log"
    shutil.copyfile(loghub_log("Linux")[0], log)
    mtime = datetime(2005, 12, 31, tzinfo=UTC).timestamp()
    os.utime(log, (mtime, mtime))
    hb = rule(
        "logrotate",
        kind="heartbeat",
        match=r"combo logrotate: ",
        heartbeat=HeartbeatSpec(every=timedelta(hours=24)),
        repeat=None,
    )
    cfg = dataclasses.replace(
        config(hb), sources={"s": FileSourceConfig(name="s", paths=(str(log),), timezone="UTC")}
    )
    seen: list[tuple[str, str]] = []
    res = replay(
        cfg,
        [(str(log), "s")],
        on_notification=lambda n: seen.append((n["created_at"], n["notification"])),
    )
    assert res.first_at == datetime(2005, 6, 14, 15, 16, 1, tzinfo=UTC)
    assert res.last_at == datetime(2005, 7, 27, 14, 42, tzinfo=UTC)
    assert [t for t, kind in seen if kind == "firing"] == [f"2005-{t}.000Z" for t in LINUX_FIRING]
    assert [t for t, kind in seen if kind == "resolved"] == [
        f"2005-{t}.000Z" for t in LINUX_RESOLVED
    ]
    assert len(seen) == 2 * len(LINUX_FIRING)


LINUX_FIRING = [
    "06-16T04:06:20",
    "06-18T04:03:36",
    "06-19T04:07:06",
    "06-21T04:02:55",
    "06-24T04:05:30",
    "06-26T04:04:26",
    "06-28T04:02:49",
    "06-30T04:03:12",
    "07-01T04:03:43",
    "07-03T04:04:03",
    "07-05T04:03:08",
    "07-07T04:03:10",
    "07-09T04:04:20",
    "07-10T04:04:25",
    "07-12T04:03:05",
    "07-13T04:03:42",
    "07-14T04:04:45",
    "07-16T04:05:03",
    "07-17T04:07:34",
    "07-19T04:03:25",
    "07-20T04:03:45",
    "07-21T04:05:04",
    "07-23T04:07:47",
    "07-24T04:09:37",
    "07-26T04:04:00",
    "07-27T04:05:24",
]
LINUX_RESOLVED = [
    "06-16T04:10:24",
    "06-18T04:07:06",
    "06-19T04:09:11",
    "06-21T04:06:59",
    "06-24T04:05:35",
    "06-26T04:04:31",
    "06-28T04:03:17",
    "06-30T04:03:43",
    "07-01T04:05:19",
    "07-03T04:08:03",
    "07-05T04:03:18",
    "07-07T04:04:33",
    "07-09T04:04:25",
    "07-10T04:04:46",
    "07-12T04:03:42",
    "07-13T04:04:45",
    "07-14T04:08:25",
    "07-16T04:07:34",
    "07-17T04:08:23",
    "07-19T04:03:45",
    "07-20T04:05:04",
    "07-21T04:11:28",
    "07-23T04:09:37",
    "07-24T04:20:42",
    "07-26T04:05:24",
    "07-27T04:16:09",
]


def test_crlf_and_invalid_utf8_read_alike_live_and_in_replay(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(
        b"2026-03-01T12:00:00Z ERROR a\r\n"
        b"2026-03-01T12:00:01Z ERROR b\xff\xfe\r\n"
        b"2026-03-01T12:00:02Z ERROR c \xe2\x82\n"
        b"2026-03-01T12:00:03Z ERROR d\r\r\n"
    )
    src = FileSourceConfig(name="s", paths=(str(log),), start_at="beginning")
    cfg = dataclasses.replace(
        config(rule("errors", match=r"ERROR (?P<w>.*)", group_by=("w",), repeat=None)),
        sources={"s": src},
    )
    res = replay(cfg, [(str(log), "s")])
    replayed = [n["samples"][0] for n in res.notifications if n["notification"] == "firing"]
    live = asyncio.run(_tail(src))
    assert replayed == live
    assert live[1] == "2026-03-01T12:00:01Z ERROR b\ufffd\ufffd" and live[3].endswith("ERROR d\r")


async def _tail(cfg: FileSourceConfig) -> list[str]:
    source = FileSource(cfg, {}, FakeClock(), watch=False)
    try:
        texts: list[str] = []
        while batches := await source.poll_once():
            texts += [line.text for b in batches for line in b.all_lines()]
        return texts
    finally:
        await source.aclose()


def test_a_file_source_says_how_its_stamps_are_read() -> None:
    base = "version: 1\nwebhooks:\n  ops: {url: 'http://127.0.0.1:9/'}\nsources:\n"
    good = parse_config(
        base + "  a:\n    file: /var/log/a.log\n    timezone: Europe/Berlin\n"
        "    time_format: '%d.%m.%Y %H:%M:%S'\n    time_regex: 'ts=(?P<time>\\S+)'\n"
    )
    src = good.sources["a"]
    assert isinstance(src, FileSourceConfig)
    assert (src.timezone, src.time_format, src.time_regex) == (
        "Europe/Berlin",
        "%d.%m.%Y %H:%M:%S",
        "ts=(?P<time>\\S+)",
    )
    for body, message in [
        ("    timezone: Mars/Olympus\n", "unknown time zone 'Mars/Olympus'"),
        ("    time_format: 'dd.mm.yyyy'\n", "a strptime format"),
        ("    time_regex: 'ts=\\S+'\n", "needs a group around the stamp"),
        ("    time_regex: 'ts=('\n", "invalid regex"),
    ]:
        try:
            parse_config(base + "  a:\n    file: /var/log/a.log\n" + body)
        except ConfigError as e:
            assert message in str(e), str(e)
        else:
            raise AssertionError(f"accepted {body!r}")
    try:
        parse_config(base + "  j:\n    journald: {units: [x.service]}\n    timezone: UTC\n")
    except ConfigError as e:
        assert "'timezone' applies to file sources only" in str(e)
    else:
        raise AssertionError("a journald source took timezone:")


def test_rules_due_at_one_time_report_in_rules_yaml_order_whatever_the_hash_seed(
    tmp_path: Path,
) -> None:
    """Eight error rules hit by one line resolve at the same instant (15 min later): their
    resolved notices come in the order of rules.yaml, on every run — not in a set's order,
    which PYTHONHASHSEED changes from one process to the next."""
    names = ["zeta", "alpha", "mu", "beta", "omega", "kappa", "delta", "nu"]
    log = tmp_path / "app.log"
    log.write_text("2026-03-01T10:00:00Z " + " ".join(f"w-{n}" for n in names) + "\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nsources:\n  app: {file: /var/log/app.log}\nwebhooks:\n"
        "  ops: {url: 'http://127.0.0.1:9/'}\nrules:\n"
        + "".join(f"  - {{name: {n}, source: app, match: 'w-{n}'}}\n" for n in names)
    )
    argv = [sys.executable, "-m", "detector", "test", "-c", str(rules), "--source", "app"]
    argv += ["--format", "json", "--until", "+1h", str(log)]
    outputs = set()
    for seed in ("0", "1", "2", "3"):
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            env={**os.environ, "TZ": "UTC", "PYTHONHASHSEED": seed},
        )
        assert out.returncode == 1, out.stderr
        rows = [json.loads(x) for x in out.stdout.splitlines()]
        resolved = [(r["time"], r["rule"]) for r in rows if r["notification"] == "resolved"]
        assert resolved == [("2026-03-01T10:15:00.000Z", n) for n in names], seed
        outputs.add(out.stdout)
    assert len(outputs) == 1
