"""`detector discover --since` without `--logs`: the history is the real journal — a private
journald namespace (tests/journald_env.py) read with `--namespace`, or its files copied into a
root's var/log/journal (`--root`). Entries are written from the cgroup of the unit they are
about, so each discovered journald source reads them through its own `journalctl --unit=`
filter; the period's bounds are the entries' __REALTIME_TIMESTAMP, to the microsecond."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from detector.cli import main
from detector.discover import discover
from tests.journald_env import JournaldNamespace, private_journald_fixture
from tests.test_discover import write

__all__ = ["private_journald_fixture"]

pytestmark = pytest.mark.journald

US = timedelta(microseconds=1)

FAILED = [
    {"MESSAGE": "Starting nightly.service - Nightly export...", "SYSLOG_IDENTIFIER": "systemd"},
    {
        "MESSAGE": "nightly.service: Main process exited, code=exited, status=1/FAILURE",
        "SYSLOG_IDENTIFIER": "systemd",
    },
    {"MESSAGE": "nightly.service: Failed with result 'exit-code'.", "SYSLOG_IDENTIFIER": "systemd"},
]


def timer_root(root: Path, cron: str = "30 2 * * *") -> Path:
    write(root, "etc/cron.d/backup", f"{cron} root /usr/local/bin/backup.sh --full\n")
    write(root, "lib/systemd/system/nightly.timer", "[Timer]\nOnCalendar=*-*-* 02:00:00\n")
    write(root, "lib/systemd/system/nightly.service", "[Service]\nExecStart=/usr/bin/export\n")
    wants = root / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    (wants / "nightly.timer").symlink_to("/lib/systemd/system/nightly.timer")
    return root


def stamp(ns: JournaldNamespace, message: str) -> datetime:
    """The __REALTIME_TIMESTAMP journald gave the (only) entry with this message."""
    (entry,) = ns.entries(f"MESSAGE={message}")
    return datetime.fromtimestamp(0, UTC) + int(entry["__REALTIME_TIMESTAMP"]) * US


def test_since_reads_the_journal_namespace_each_source_through_its_own_unit_filter(
    private_journald: JournaldNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = private_journald
    cmd = {"MESSAGE": "(root) CMD (/usr/local/bin/backup.sh --full)", "SYSLOG_IDENTIFIER": "CRON"}
    ns.send_as_unit("cron.service", [cmd])
    ran = stamp(ns, cmd["MESSAGE"])
    ns.send_as_unit("nightly.service", FAILED)
    # the same text from another unit: not an entry the nightly.service source reads
    ns.send_as_unit("other.service", [FAILED[2]])
    failed_on = f"{stamp(ns, 'Starting nightly.service - Nightly export...'):%Y-%m-%d}"
    # the cron job is due at the minute the CMD line came in: it ran on the last day only
    root = timer_root(tmp_path / "root", f"{ran.minute} {ran.hour} * * *")
    argv = ["discover", "--root", str(root), "--timezone", "UTC", "--namespace", ns.name]
    assert main([*argv, "--since", "30d"]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert f"history: ran 1/30 days, between {ran:%H:%M:%S} and {ran:%H:%M:%S}" in out
    assert f"history: already fails: 1 failure(s), on {failed_on}" in out
    # what detector test's replay says of each rule, in the file and on stderr
    assert (
        f"detector test over the history: timer-nightly-fails would have alerted 1x: failed on "
        f"{failed_on}\n" in err
    )
    assert "detector test over the history: cron-backup-sh would have alerted 1x: missed on" in err
    assert "still firing" not in err  # the run on the last day resolved it
    assert "#    detector test over the history: timer-nightly-fails would have alerted 1x" in out


def test_the_period_is_cut_at_the_entries_realtime_stamps_to_the_microsecond(
    private_journald: JournaldNamespace, tmp_path: Path
) -> None:
    """A root's var/log/journal (the namespace's files copied there, as on a mounted disk):
    two failures a few milliseconds apart, and periods that start or end one microsecond on
    either side of each."""
    ns = private_journald
    ns.send_as_unit("nightly.service", FAILED)
    first = stamp(ns, FAILED[2]["MESSAGE"])
    again = [{**e, "MESSAGE": e["MESSAGE"].replace("Nightly", "Nightly,")} for e in FAILED[:1]]
    ns.send_as_unit("nightly.service", [*again, FAILED[1], {**FAILED[2], "CODE_LINE": "2"}])
    (second,) = [
        datetime.fromtimestamp(0, UTC) + int(e["__REALTIME_TIMESTAMP"]) * US
        for e in ns.entries(f"MESSAGE={FAILED[2]['MESSAGE']}", "CODE_LINE=2")
    ]
    assert second - first > 2 * US
    root = timer_root(tmp_path / "root")
    (store,) = [d for d in ns.storage_dirs if d.exists()]
    shutil.copytree(store, root / "var/log/journal" / ns.machine_id)

    def failures(start: datetime, end: datetime) -> str:
        jobs, _notes = discover(root, "UTC", since=end - start, now=end, explicit_zone=True)
        (job,) = [j for j in jobs if j.name == "timer-nightly"]
        told = [h for h in job.history if h.startswith("already fails")]
        return told[0].split(":")[1].strip() if told else "none"

    assert failures(first, second) == f"2 failure(s), on {first:%Y-%m-%d}" + (
        "" if f"{first:%Y-%m-%d}" == f"{second:%Y-%m-%d}" else f", {second:%Y-%m-%d}"
    )
    assert failures(first + US, second).startswith("1 failure(s)")
    assert failures(first, second - US).startswith("1 failure(s)")
    assert failures(first + US, second - US) == "none"
