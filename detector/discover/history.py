"""What the logs say the jobs did: ``detector discover --since 30d`` (``--logs FILE…``, else the
journal), and jobs inferred from log evidence alone.

Beside the readers (``cron.py``, ``timers.py``) and before ``render.py``: the lines are read with
the replay's timestamp machinery (``detector test``'s year inference for syslog stamps, the
host's or ``--timezone``'s zone for stamps without an offset), each job's ``ran``/``failed``
patterns are searched in them, and :func:`check` compares every scheduled window of the period
with what happened — "ran 30/30 days, between 02:00:04 and 02:07:51", "missed on 2026-11-14",
"fails", "drifts" — and widens ``within:`` (or a heartbeat's ``grace:``) to the observed spread.
:func:`infer` finds jobs in logs with no crontab to read (cron's ``CMD`` lines, PAM sessions that
cron and ``su`` open as root, systemd's and anacron's start messages) and infers their schedule —
daily, hourly or "at least every" — from the times they ran; the lines that say a job failed
(cron's, anacron's, systemd's, Red Hat's ``logrotate: ALERT exited abnormally``) become
failure rules.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import statistics
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import cronsim

from detector.discover.jobs import Job, SourceSpec, esc, slug
from detector.replay import file_mtime, sample_lines
from detector.sources.journald import entry_to_line
from detector.timefmt import format_duration
from detector.timestamps import TimeParser, syslog_start_year


@dataclass(frozen=True)
class LogLine:
    at: datetime
    text: str
    path: str


def read_lines(path: str, zone: str) -> Iterator[LogLine]:
    """The lines of ``path`` that carry a timestamp (or follow one), with their time in UTC."""
    tz = ZoneInfo(zone)
    latest = file_mtime(path) or datetime.now(UTC)
    year = syslog_start_year(sample_lines(path), latest, tz) or latest.astimezone(tz).year
    parser = TimeParser(None, year, zone=tz, rolling=True)
    last: datetime | None = None
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for raw in f:
            text = raw.rstrip("\r\n")
            at = parser.parse(text)
            if at is not None:
                last = at
            if last is not None:
                yield LogLine(last, text, path)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)


def _at_arg(at: datetime) -> str:
    """``@SECONDS.MICROSECONDS`` for journalctl ``--since``/``--until``: exact, no zone."""
    us = (at - EPOCH) // US
    return f"@{us // 1_000_000}.{us % 1_000_000:06d}"


def journal_args(
    root: Path, start: datetime, end: datetime, *, namespace: str | None = None
) -> list[str]:
    """journalctl's arguments (after the program) for the entries from ``start`` to ``end``, as
    ``-o json``: the host's journal, or that ``namespace``'s of this host's journald, else under
    a root its ``var/log/journal``."""
    args = ["--no-pager", "-q", "-o", "json", f"--since={_at_arg(start)}"]
    args.append(f"--until={_at_arg(end)}")
    if namespace is not None:
        args.append(f"--namespace={namespace}")
    elif root != Path("/"):
        args.append(f"--directory={root / 'var/log/journal'}")
    return args


def journal_lines(
    root: Path,
    start: datetime,
    end: datetime,
    filters: list[str],
    *,
    namespace: str | None = None,
    journalctl: str = "journalctl",
) -> Iterator[LogLine]:
    """The journal's entries from ``start`` to ``end`` (both included) that match ``filters``
    (the journald source's own journalctl arguments), in journal order, as journalctl writes
    them (30 days of a whole journal are never held in memory). Raises OSError when journalctl
    fails.

    ``-o json``, and each entry's time its ``__REALTIME_TIMESTAMP``: the time ``--since``
    filters on and the live journald source gives a line, in microseconds UTC — where
    ``short-iso`` prints ``_SOURCE_REALTIME_TIMESTAMP`` when the entry has one (the sender's
    clock), in seconds and a zone to parse back. journalctl's ``--since`` is taken to the
    microsecond and the bounds are checked here again. The text is ``MESSAGE``, whole."""
    args = [journalctl, *journal_args(root, start, end, namespace=namespace), *filters]
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors) as proc,
    ):
        assert proc.stdout is not None
        for raw in proc.stdout:
            if not raw.startswith(b"{"):
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            line = entry_to_line("journal", entry)
            if line.event_at is not None and start <= line.event_at <= end:
                yield LogLine(line.event_at, line.text, "journal")
        if proc.wait() != 0:
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip()
            raise OSError(f"{' '.join(args[:1] + args[5:])}: journalctl failed: {said}")


@dataclass
class Seen:
    ran: list[datetime] = field(default_factory=list)
    failed: list[datetime] = field(default_factory=list)


def scan(
    lines: Iterable[LogLine], jobs: list[Job], source: str | None = None
) -> tuple[dict[str, Seen], datetime | None, datetime | None]:
    """When each job's ``ran`` and ``failed`` patterns matched; and the first and last time
    seen. ``source``: the lines are that source's, so only the patterns read there count."""

    def here(spec: SourceSpec | None) -> bool:
        return source is None or (spec is not None and spec.name == source)

    compiled = [
        (
            job.name,
            re.compile(job.ran) if job.ran and here(job.source) else None,
            re.compile(job.failed)
            if job.failed and here(job.failed_source or job.source)
            else None,
        )
        for job in jobs
    ]
    seen: dict[str, Seen] = defaultdict(Seen)
    first: datetime | None = None
    last: datetime | None = None
    for line in lines:
        first = line.at if first is None or line.at < first else first
        last = line.at if last is None or line.at > last else last
        for name, ran, failed in compiled:
            if ran is not None and ran.search(line.text):
                seen[name].ran.append(line.at)
            if failed is not None and failed.search(line.text):
                seen[name].failed.append(line.at)
    return seen, first, last


def _ceil(d: timedelta, step: timedelta) -> timedelta:
    return step * math.ceil(d / step)


def suggest_within(latest: timedelta) -> timedelta:
    """A ``within:`` that holds the latest observed start with a margin: +25% and a minute,
    rounded up to 5 minutes, at least 5 minutes."""
    return max(
        timedelta(minutes=5), _ceil(latest * 1.25 + timedelta(minutes=1), timedelta(minutes=5))
    )


def _dates(ats: list[datetime], tz: ZoneInfo, most: int = 5) -> str:
    days = sorted({a.astimezone(tz).date().isoformat() for a in ats})
    more = f" and {len(days) - most} more" if len(days) > most else ""
    return ", ".join(days[:most]) + more


def check(job: Job, seen: Seen, start: datetime, end: datetime) -> Job:
    """``job`` with its history told (``job.history``) and its window or grace widened to what
    really happened between ``start`` and ``end``; a job that already fails on most runs gets
    its rules disabled, with the reason, so that loading them does not page at once."""
    tz = ZoneInfo(job.timezone)
    told: list[str] = []
    within, grace, enabled = job.within, job.grace, job.enabled
    ran = sorted(a for a in seen.ran if start <= a <= end)
    failed = sorted(a for a in seen.failed if start <= a <= end)
    period = job.period()
    if job.cron is not None:
        opens: list[datetime] = []
        for at in cronsim.CronSim(job.cron, start.astimezone(tz)):
            if at > end:
                break
            opens.append(at)
            if len(opens) > 5000:
                break
        offsets: list[tuple[datetime, timedelta]] = []
        missed: list[datetime] = []
        for i, opened in enumerate(opens):
            # a run belongs to the window it follows, up to half a period late (or within:)
            reach = max(period / 2, job.within)
            limit = min(opens[i + 1], opened + reach) if i + 1 < len(opens) else opened + reach
            if limit > end and not any(opened <= a < limit for a in ran):
                continue  # still running when the logs end
            first = next((a for a in ran if opened <= a < limit), None)
            if first is None:
                missed.append(opened)
            else:
                offsets.append((first, first - opened))
        counted = len(offsets) + len(missed)
        unit = "days" if period == timedelta(days=1) else "times"
        if counted:
            line = f"ran {len(offsets)}/{counted} {unit}"
            if offsets:
                local = sorted(a.astimezone(tz).strftime("%H:%M:%S") for a, _ in offsets)
                latest = max(o for _, o in offsets)
                if period >= timedelta(days=1):
                    line += f", between {local[0]} and {local[-1]}"
                line += f" (at most {format_duration(latest) or '0s'} after the scheduled time)"
                within = max(job.within, suggest_within(latest))
                if within != job.within:
                    line += f"; within: {format_duration(within)} from that spread"
            told.append(line)
        else:
            told.append("no scheduled time in the logs' period")
        if missed:
            told.append(f"missed on {_dates(missed, tz)}")
        if len(offsets) >= 6:
            third = len(offsets) // 3
            early = statistics.median(o.total_seconds() for _, o in offsets[:third])
            late = statistics.median(o.total_seconds() for _, o in offsets[-third:])
            if late - early > max(300.0, early):
                told.append(
                    f"drifts: starts {format_duration(timedelta(seconds=round(late - early)))} "
                    "later than at the start of the period"
                )
    elif job.every is not None and ran:
        gaps = [(b - a, b) for a, b in itertools.pairwise(ran)]
        line = f"ran {len(ran)} times"
        if gaps:
            longest, when = max(gaps)
            line += (
                f", longest gap {format_duration(longest)} "
                f"(expected every {format_duration(job.every)})"
            )
            if longest > job.every + job.grace:
                grace = max(job.grace, _ceil((longest - job.every) * 1.25, timedelta(minutes=1)))
                ended = f"{when.astimezone(tz):%Y-%m-%d %H:%M}"
                line += f"; grace: {format_duration(grace)} from that gap (ended {ended})"
        told.append(line)
    elif job.every is not None:
        told.append("never seen running in the logs' period")
    if failed:
        days = max(1, round((end - start) / timedelta(days=1)))
        runs = len(ran) if job.ran else days
        told.append(f"already fails: {len(failed)} failure(s), on {_dates(failed, tz)}")
        if len(failed) * 2 >= runs:
            enabled = False
            told.append(
                "fails on most runs: its rules are disabled (enabled: false) until it is fixed"
            )
    return replace(job, within=within, grace=grace, enabled=enabled, history=tuple(told))


# ---------------------------------------------------------------- jobs from log evidence alone

_PID = r"\[\d+\]"
_STARTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(rx))
    for kind, rx in (
        ("cron", rf"\b(?:CRON|crond){_PID}: \((?P<user>[^)\s]+)\) CMD \((?P<what>.*)\)\s*$"),
        ("cron session", rf"\bcrond\(pam_unix\){_PID}: session opened for user (?P<user>\S+) by"),
        (
            "su session",
            rf"\bsu\(pam_unix\){_PID}: session opened for user (?P<user>\S+) by \(uid=0\)",
        ),
        ("systemd", r"\bsystemd\[1\]: Start(?:ing|ed) (?P<what>[\w@.-]+\.service)\b"),
        ("anacron", rf"\banacron{_PID}: Job `(?P<what>[^']+)' started"),
    )
)
_FAILS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(rx))
    for kind, rx in (
        ("logrotate", r"\b(?P<what>logrotate): ALERT exited abnormally with \[\d+\]"),
        ("systemd", r"\b(?P<what>[\w@.-]+\.service): Failed with result '[\w-]+'"),
        ("anacron", rf"\banacron{_PID}: Job `(?P<what>[^']+)' terminated \(exit status: \d+\)"),
        ("cron", r"\((?P<what>CRON)\) error \(grandchild #\d+ failed with exit status \d+\)"),
    )
)


def _pattern(kind: str, m: re.Match[str]) -> str:
    """A regex that matches lines like ``m``'s: the program's stamp and pid left out."""
    if kind == "cron":
        return rf"\({esc(m['user'])}\) CMD \({esc(m['what'])}\)"
    if kind == "cron session":
        return rf"crond\(pam_unix\)\[\d+\]: session opened for user {esc(m['user'])} by"
    if kind == "su session":
        return rf"su\(pam_unix\)\[\d+\]: session opened for user {esc(m['user'])} by \(uid=0\)"
    if kind == "systemd":
        return rf"Start(?:ing|ed) {esc(m['what'])}\b"
    return rf"anacron\[\d+\]: Job `{esc(m['what'])}' started"


def _fail_pattern(kind: str, m: re.Match[str]) -> str:
    if kind == "logrotate":
        return r"\blogrotate: ALERT exited abnormally with \[(?P<status>\d+)\]"
    if kind == "systemd":
        return rf"{esc(m['what'])}: Failed with result '(?P<result>[\w-]+)'"
    if kind == "anacron":
        return rf"Job `{esc(m['what'])}' terminated \(exit status: (?P<status>\d+)\)"
    return r"\(CRON\) error \(grandchild #\d+ failed with exit status (?P<status>\d+)\)"


@dataclass
class _Found:
    kind: str
    label: str
    pattern: str
    sample: str
    path: str
    times: list[datetime] = field(default_factory=list)


def infer_schedule(
    times: list[datetime], zone: str
) -> tuple[str | None, timedelta | None, timedelta, str]:
    """(cron, every, within-or-grace, how) from the times a job ran; (None, None, …) if no
    regular schedule shows."""
    tz = ZoneInfo(zone)
    local = sorted(t.astimezone(tz) for t in times)
    five = timedelta(minutes=5)
    if len(local) < 3:
        return None, None, five, f"seen {len(local)} times: too few to infer a schedule"
    days = {t.date() for t in local}
    span_days = (local[-1].date() - local[0].date()).days + 1
    tods = [timedelta(hours=t.hour, minutes=t.minute, seconds=t.second) for t in local]
    if len(days) >= 3 and len(local) <= 1.5 * len(days) and len(days) >= 0.8 * span_days:
        lo, hi = min(tods), max(tods)
        if hi - lo <= timedelta(hours=2):
            opened = (
                five * ((lo - timedelta(minutes=1)) // five)
                if lo >= timedelta(minutes=1)
                else timedelta(0)
            )
            within = suggest_within(hi - opened)
            minutes = int(opened.total_seconds() // 60)
            how = (
                f"daily, seen on {len(days)} of {span_days} days between {_tod(lo)} and {_tod(hi)}"
            )
            return f"{minutes % 60} {minutes // 60} * * *", None, within, how
    gaps = [b - a for a, b in itertools.pairwise(local)]
    if len(local) >= 6:
        median = statistics.median(g.total_seconds() for g in gaps)
        mins = [timedelta(minutes=t.minute, seconds=t.second) for t in local]
        if 3300 <= median <= 3900 and max(mins) - min(mins) <= timedelta(minutes=30):
            lo = min(mins)
            opened = (
                five * ((lo - timedelta(minutes=1)) // five)
                if lo >= timedelta(minutes=1)
                else timedelta(0)
            )
            within = suggest_within(max(mins) - opened)
            first, last = int(lo.total_seconds() // 60), int(max(mins).total_seconds() // 60)
            how = f"hourly, seen {len(local)} times at minute {first}–{last}"
            return f"{int(opened.total_seconds() // 60)} * * * *", None, within, how
        if median >= 60 and max(gaps).total_seconds() <= 1.5 * median:
            every = timedelta(minutes=max(1, round(median / 60)))
            grace = _ceil(
                max(max(gaps) - every, timedelta(0)) * 1.25 + timedelta(minutes=1),
                timedelta(minutes=1),
            )
            return (
                None,
                every,
                grace,
                f"about every {format_duration(every)}, seen {len(local)} times",
            )
    return None, None, five, f"seen {len(local)} times with no regular schedule"


def _tod(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 3600:02}:{s % 3600 // 60:02}:{s % 60:02}"


def infer(paths: list[str], zone: str, explicit_zone: bool) -> tuple[list[Job], list[str]]:
    """Jobs found in the log files alone, with the schedule their times show."""
    starts: dict[str, _Found] = {}
    fails: dict[str, _Found] = {}
    for path in paths:
        for line in read_lines(path, zone):
            for table, into, make in ((_STARTS, starts, _pattern), (_FAILS, fails, _fail_pattern)):
                for kind, rx in table:
                    m = rx.search(line.text)
                    if m is None:
                        continue
                    pattern = make(kind, m)
                    found = into.get(pattern)
                    if found is None:
                        parts = (m.groupdict().get("user"), m.groupdict().get("what"))
                        label = " ".join(dict.fromkeys(v for v in parts if v))
                        found = into[pattern] = _Found(
                            kind, label, pattern, line.text.strip(), path
                        )
                    found.times.append(line.at)
                    break
    sources: dict[str, SourceSpec] = {}

    def source_of(path: str) -> SourceSpec:
        if path not in sources:
            body: dict[str, object] = {"file": os.path.abspath(path)}
            if explicit_zone:
                body["timezone"] = zone
            sources[path] = SourceSpec(
                f"discovered-{slug(Path(path).stem, 24)}",
                body,
                "the log the jobs below were found in"
                + ("" if explicit_zone else " (stamps read in the host's zone)"),
            )
        return sources[path]

    jobs: list[Job] = []
    notes: list[str] = []
    for found in starts.values():
        cron, every, slack, how = infer_schedule(found.times, zone)
        if cron is None and every is None:
            notes.append(f"{found.kind} {found.label}: {how}; no rule proposed")
            continue
        jobs.append(
            Job(
                name=f"log-{slug(' '.join(dict.fromkeys((found.kind, found.label))))}",
                origin=found.path,
                schedule=f"inferred: {how}",
                what=f"{found.kind}: {found.label}",
                source=source_of(found.path),
                ran=found.pattern,
                ran_sample=found.sample,
                cron=cron,
                timezone=zone,
                within=slack if cron else timedelta(minutes=5),
                every=every,
                grace=slack if every else timedelta(minutes=5),
                notes=(
                    "the schedule is inferred from the times in the log: check it against the job",
                ),
            )
        )
    by_label = {(j.what, j.origin): n for n, j in enumerate(jobs)}
    for found in fails.values():
        same = by_label.get((f"{found.kind}: {found.label}", found.path))
        if same is not None:
            jobs[same] = replace(jobs[same], failed=found.pattern, failed_sample=found.sample)
            continue
        jobs.append(
            Job(
                name=f"log-{slug(' '.join(dict.fromkeys((found.kind, found.label))))}",
                origin=found.path,
                schedule=f"failure lines seen {len(found.times)} times",
                what=f"{found.kind}: {found.label}",
                source=source_of(found.path),
                ran="",
                ran_sample="",
                failed=found.pattern,
                failed_sample=found.sample,
            )
        )
    return jobs, notes
