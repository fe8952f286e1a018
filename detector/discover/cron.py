"""Cron jobs as ``detector discover`` finds them: ``/etc/crontab``, ``/etc/cron.d/*``, the user
crontabs (``/var/spool/cron/crontabs/*``) and ``/etc/cron.{hourly,daily,weekly,monthly}`` as
Debian runs them (the ``run-parts`` lines of ``/etc/crontab``, or anacron's ``/etc/anacrontab``
when anacron is installed).

Reads files under a root directory and returns :class:`~detector.discover.jobs.Job` values for
``render.py``. The evidence that a job ran is cron's own line, ``CRON[pid]: (user) CMD
(command)`` (``crond[pid]`` on Red Hat), which needs no change to the job; anacron logs ``Job
`cron.daily' started`` and, on a failure, ``… terminated (exit status: N)``. ``CRON_TZ=`` sets the
zone of the lines after it (cronie's syntax); ``@daily`` and the other aliases, ranges, steps and
names are cron's (checked with cronsim, as the window rule computes them); ``@reboot`` has no
schedule to expect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from detector.discover.jobs import CRON_ALIASES, Job, SourceSpec, esc, slug
from detector.unitfiles import cron_error, zone_ok

CRON_SOURCE = "discovered-cron"
_ENV = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_CRON_D_NAME = re.compile(r"[A-Za-z0-9_-]+")  # what cron (and run-parts) read in cron.d
_RUN_PARTS = re.compile(r"run-parts\b.*?(/etc/cron\.(hourly|daily|weekly|monthly))\b")
_ANACRON_TEST = re.compile(r"test\s+-x\s+/usr/sbin/anacron\s*\|\|")
_PERIODS = {"@daily": 1, "@weekly": 7, "@monthly": 31, "@yearly": 366, "@annually": 366}


@dataclass(frozen=True)
class CronEntry:
    """One line of a crontab that runs something."""

    file: str  # the path on the host ("/etc/cron.d/backup")
    line: int
    cron: str | None  # 5 fields; None for @reboot
    written: str  # the schedule as written ("@daily", "*/15 1-5 * * *")
    timezone: str
    user: str
    command: str
    cron_tz: bool = False  # the zone came from a CRON_TZ= line


def cron_source(root: Path) -> SourceSpec:
    """Where cron's lines are read: the syslog file when the host has one, else the journal."""
    for path, what in (
        ("/var/log/syslog", "rsyslog's syslog (Debian)"),
        ("/var/log/cron", "cron's own log (Red Hat)"),
    ):
        if (root / path.lstrip("/")).is_file():
            return SourceSpec(CRON_SOURCE, {"file": path}, f"cron and anacron log here: {what}")
    return SourceSpec(
        CRON_SOURCE,
        {"journald": {"units": ["cron.service", "anacron.service"]}},
        "cron and anacron log to the journal (no syslog file on this host)",
    )


def read_crontab(
    path: Path, host_path: str, zone: str, *, system: bool, user: str = "root"
) -> tuple[list[CronEntry], list[str]]:
    """The entries of one crontab and notes on lines that cannot be watched. ``system``: the
    line has a user field (``/etc/crontab``, ``/etc/cron.d``); else the file is ``user``'s."""
    entries: list[CronEntry] = []
    notes: list[str] = []
    tz, tz_set = zone, False
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return [], [f"{host_path}: cannot read: {e.strerror or e}"]
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        env = _ENV.fullmatch(line)
        if env is not None and not line.startswith("@"):
            if env.group(1) == "CRON_TZ":
                value = env.group(2).strip("'\"")
                if zone_ok(value):
                    tz, tz_set = value, True
                else:
                    notes.append(f"{host_path}:{n}: CRON_TZ={value} is not a known time zone")
            continue
        fields = line.split()
        if line.startswith("@"):
            head, rest = fields[0], fields[1:]
            cron = None if head == "@reboot" else CRON_ALIASES.get(head)
            if head != "@reboot" and cron is None:
                notes.append(f"{host_path}:{n}: unknown schedule '{head}'")
                continue
        else:
            head, rest = " ".join(fields[:5]), fields[5:]
            cron = head
        if system:
            if not rest:
                notes.append(f"{host_path}:{n}: no user and command after '{head}'")
                continue
            who, rest = rest[0], rest[1:]
        else:
            who = user
        if not rest:
            notes.append(f"{host_path}:{n}: no command after '{head}'")
            continue
        command = line.split(None, len(line.split()) - len(rest))[-1]
        if cron is not None:
            problem = cron_error(cron)
            if problem is not None:
                notes.append(f"{host_path}:{n}: cannot read the schedule: {problem}")
                continue
        entries.append(CronEntry(host_path, n, cron, head, tz, who, command, tz_set))
    return entries, notes


def _command_pattern(user: str, command: str) -> str:
    return rf"\({esc(user)}\) CMD \({esc(command)}\)"


def _name(entry: CronEntry) -> str:
    m = _RUN_PARTS.search(entry.command)
    if m is not None:
        return f"cron-{m.group(2)}"
    words = [w for w in re.split(r"[\s;&|()<>]+", entry.command) if w and "=" not in w]
    base = next((w for w in words if "/" in w), words[0] if words else "job")
    return f"cron-{slug(Path(base).name or base)}"


def _scripts(root: Path, directory: str) -> list[str]:
    try:
        names = sorted(p.name for p in (root / directory.lstrip("/")).iterdir())
    except OSError:
        return []
    return [n for n in names if _CRON_D_NAME.fullmatch(n)]


def entry_job(entry: CronEntry, source: SourceSpec, root: Path) -> Job:
    notes: list[str] = []
    what = f"{entry.user}: {entry.command}"
    m = _RUN_PARTS.search(entry.command)
    if m is not None:
        scripts = _scripts(root, m.group(1))
        what = f"{entry.user}: run-parts {m.group(1)} ({', '.join(scripts) or 'no scripts'})"
        notes.append(
            "cron logs the run-parts command, not each script; a script that fails is not "
            "told apart (make it log, or move it to a systemd timer)"
        )
    if entry.cron is None:
        notes.append("@reboot: runs once at boot, so there is no window to expect")
    sample = f"Nov 25 02:00:01 host CRON[4242]: ({entry.user}) CMD ({entry.command})"
    return Job(
        name=_name(entry),
        origin=f"{entry.file}:{entry.line}",
        schedule=entry.written + (f" (CRON_TZ={entry.timezone})" if entry.cron_tz else ""),
        what=what,
        source=source,
        ran=_command_pattern(entry.user, entry.command),
        ran_sample=sample,
        cron=entry.cron,
        timezone=entry.timezone,
        within=timedelta(minutes=5),
        notes=tuple(notes),
    )


def read_anacrontab(root: Path, source: SourceSpec) -> tuple[list[Job], list[str]]:
    path = root / "etc/anacrontab"
    if not path.is_file():
        return [], []
    jobs: list[Job] = []
    notes: list[str] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or _ENV.fullmatch(line):
            continue
        fields = line.split(None, 3)
        if len(fields) < 4:
            notes.append(f"/etc/anacrontab:{n}: expected 'period delay job-id command'")
            continue
        period_s, delay_s, ident, command = fields
        days = _PERIODS.get(period_s) or (int(period_s) if period_s.isdigit() else None)
        if days is None or not delay_s.isdigit():
            notes.append(f"/etc/anacrontab:{n}: cannot read period '{period_s}'")
            continue
        q = esc(ident)
        m = _RUN_PARTS.search(command)
        what = command
        if m is not None:
            what = f"run-parts {m.group(1)} ({', '.join(_scripts(root, m.group(1))) or 'none'})"
        jobs.append(
            Job(
                name=f"anacron-{slug(ident)}",
                origin=f"/etc/anacrontab:{n}",
                schedule=f"every {period_s} day(s), {delay_s} min after anacron starts",
                what=f"root: {what}",
                source=source,
                ran=rf"Job `{q}' started",
                ran_sample=f"Nov 25 07:35:01 host anacron[812]: Job `{ident}' started",
                every=timedelta(days=days),
                # anacron runs (hourly, from cron or its timer) on the first chance after the
                # period: a day late at most, plus the delay
                grace=timedelta(minutes=int(delay_s)) + timedelta(hours=1),
                failed=rf"Job `{q}' terminated (?:\(exit status: (?P<status>\d+)\)|due to signal)",
                failed_sample=(
                    f"Nov 25 07:40:12 host anacron[812]: Job `{ident}' terminated "
                    "(exit status: 1) (mailing output)"
                ),
                notes=(
                    "anacron runs it once per period whenever the host is up, so this is an "
                    "'at least every' expectation, not a fixed time",
                ),
            )
        )
    return jobs, notes


def read_cron(root: Path, zone: str) -> tuple[list[Job], list[str]]:
    """Every cron job under ``root``, and notes on what cannot be watched."""
    source = cron_source(root)
    entries: list[CronEntry] = []
    notes: list[str] = []
    crontab = root / "etc/crontab"
    if crontab.is_file():
        got, why = read_crontab(crontab, "/etc/crontab", zone, system=True)
        entries += got
        notes += why
    cron_d = root / "etc/cron.d"
    if cron_d.is_dir():
        for path in sorted(cron_d.iterdir()):
            if not _CRON_D_NAME.fullmatch(path.name):
                if not path.name.startswith("."):
                    notes.append(f"/etc/cron.d/{path.name}: cron ignores this name (a '.' or '~')")
                continue
            got, why = read_crontab(path, f"/etc/cron.d/{path.name}", zone, system=True)
            entries += got
            notes += why
    spool = root / "var/spool/cron/crontabs"
    if spool.is_dir():
        for path in sorted(spool.iterdir()):
            if path.is_file():
                got, why = read_crontab(
                    path,
                    f"/var/spool/cron/crontabs/{path.name}",
                    zone,
                    system=False,
                    user=path.name,
                )
                entries += got
                notes += why
    anacron_jobs, why = read_anacrontab(root, source)
    notes += why
    anacron = (root / "usr/sbin/anacron").exists() and bool(anacron_jobs)
    by_anacron = {m.group(1) for j in anacron_jobs if (m := _RUN_PARTS.search(j.what)) is not None}
    jobs: list[Job] = []
    for entry in entries:
        m = _RUN_PARTS.search(entry.command)
        if (
            anacron
            and m is not None
            and _ANACRON_TEST.search(entry.command)
            and m.group(1) in by_anacron
        ):
            notes.append(
                f"{entry.file}:{entry.line}: {m.group(1)} runs through anacron here (the line "
                "does nothing while /usr/sbin/anacron exists): watched as anacron's job"
            )
            continue
        jobs.append(entry_job(entry, source, root))
    if anacron:
        jobs += anacron_jobs
    if entries:
        jobs.append(
            Job(
                name="cron-job",
                origin="cron",
                schedule="-",
                what="any cron job",
                source=source,
                ran="",
                ran_sample="",
                failed=(
                    r"\(CRON\) error \(grandchild #\d+ failed with exit status "
                    r"(?P<status>\d+)\)"
                ),
                failed_sample=(
                    "Nov 25 02:00:03 host CRON[4241]: (CRON) error (grandchild #4242 failed "
                    "with exit status 1)"
                ),
                notes=(
                    "cron says which job failed only by its process id; Debian's cron logs "
                    'failures with -L 4 (EXTRA_OPTS="-L 5" in /etc/default/cron): no job '
                    "changes",
                ),
            )
        )
    elif anacron_jobs:
        notes.append("/etc/anacrontab: anacron is not installed (/usr/sbin/anacron), so not read")
    return jobs, notes
