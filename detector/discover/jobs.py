"""The jobs ``detector discover`` finds, before they become rules.yaml text.

Sits between the readers (``cron.py``, ``timers.py``, ``history.py``'s inference from logs) and
``render.py``: each reader turns what it found into :class:`Job` values — when the job is due (a
cron expression in a time zone, or "at least every"), which log line says it ran, which says it
failed, and where those lines are read (:class:`SourceSpec`) — and ``render.py`` writes them out
as rules. Nothing here reads files.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import cronsim

CRON_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


@dataclass(frozen=True)
class SourceSpec:
    """A source the rules need: its name and its rules.yaml body (``{"file": …}`` or
    ``{"journald": {"units": […]}}``)."""

    name: str
    body: Mapping[str, object]
    comment: str = ""


@dataclass(frozen=True)
class Job:
    """One scheduled job, as rules will watch it.

    ``cron`` + ``timezone`` + ``within``: a window rule; ``every`` + ``grace`` (``cron`` None): a
    heartbeat rule; neither: nothing to expect (``@reboot``), only the failure rule if any.
    ``ran``/``failed`` are Python regexes searched in a log line (a syslog line or a journal
    ``MESSAGE``), each with a sample line they match."""

    name: str
    origin: str  # where it was found: "/etc/cron.d/backup:3", "/lib/systemd/system/x.timer"
    schedule: str  # the schedule as written: "30 2 * * *", "OnCalendar=daily"
    what: str  # what runs: "root: /usr/local/bin/backup.sh"
    source: SourceSpec
    ran: str
    ran_sample: str
    cron: str | None = None
    timezone: str = "UTC"
    within: timedelta = timedelta(minutes=5)
    every: timedelta | None = None
    grace: timedelta = timedelta(minutes=5)
    failed: str | None = None
    failed_sample: str | None = None
    failed_source: SourceSpec | None = None  # default: ``source``
    enabled: bool = True
    notes: tuple[str, ...] = ()
    history: tuple[str, ...] = field(default=(), compare=False)  # filled by history.py
    replayed: tuple[str, ...] = field(default=(), compare=False)  # filled by rehearse.py

    def period(self) -> timedelta:
        """How often it runs (the shortest gap of the next occurrences; 1 day if unknown)."""
        if self.every is not None:
            return self.every
        if self.cron is None:
            return timedelta(days=1)
        gaps = [b - a for a, b in pairs(occurrences(self.cron, self.timezone, 8))]
        return min(gaps) if gaps else timedelta(days=1)


def pairs(items: list[datetime]) -> list[tuple[datetime, datetime]]:
    return list(itertools.pairwise(items))


def occurrences(cron: str, zone: str, n: int, start: datetime | None = None) -> list[datetime]:
    """The next ``n`` times of ``cron`` in ``zone`` after ``start`` (default 2026-01-05, a
    Monday: stable output)."""
    tz = ZoneInfo(zone)
    it = cronsim.CronSim(cron, (start or datetime(2026, 1, 5, tzinfo=UTC)).astimezone(tz))
    out: list[datetime] = []
    for at in it:
        out.append(at)
        if len(out) >= n:
            break
    return out


_SPECIAL = re.compile(r"[.^$*+?{}\[\]\\|()]")


def esc(text: str) -> str:
    r"""``text`` as a regex that matches it literally, escaping only what must be (readable in
    rules.yaml: ``\(root\) CMD \(/usr/bin/backup --full\)``)."""
    return _SPECIAL.sub(lambda m: "\\" + m.group(0), text)


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str, most: int = 40) -> str:
    return _SLUG.sub("-", text.lower()).strip("-")[:most].strip("-") or "job"


def unique_names(jobs: list[Job]) -> list[Job]:
    """The jobs with names made unique (``-2``, ``-3`` …), in order."""
    seen: dict[str, int] = {}
    out: list[Job] = []
    for job in jobs:
        n = seen.get(job.name, 0) + 1
        seen[job.name] = n
        out.append(job if n == 1 else replace(job, name=f"{job.name}-{n}"))
    return out
