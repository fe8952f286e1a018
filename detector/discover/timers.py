"""systemd timers as ``detector discover`` finds them: ``*.timer`` units under a root's
``etc/systemd/system``, ``run/systemd/system``, ``usr/local/lib/systemd/system``,
``lib/systemd/system`` and ``usr/lib/systemd/system`` (the first directory wins for a name, as
systemd's search path does; drop-ins ``*.timer.d/*.conf`` apply),
with the service each one starts (``Unit=``, else the same name).

Returns :class:`~detector.discover.jobs.Job` values for ``render.py``. ``OnCalendar=`` is turned
into a cron expression and a zone (:func:`calendar_to_cron`: the shorthands, ``*-*-* 02:00:00``,
``Mon..Fri 09:00``, ``*:0/15``, a trailing IANA zone); a form that cron cannot say (years,
``~``, seconds that repeat, both a weekday and a day of month) is reported, not guessed.
``OnUnitActiveSec=``/``OnUnitInactiveSec=`` become an "at least every" heartbeat;
``AccuracySec=`` (default 1 min) and ``RandomizedDelaySec=`` widen the window. The evidence is
systemd's own journal messages about the service (``Starting x.service - …``; on failure
``x.service: Failed with result 'exit-code'.``), so no job changes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from detector.discover.jobs import Job, SourceSpec, esc, slug
from detector.unitfiles import (
    UNIT_DIRS,
    CalendarError,
    Unit,
    calendar_to_cron,
    enabled,
    find_unit,
    last_interval,
    parse_span,
    read_unit,
)

SYSTEMD_SOURCE = "discovered-systemd"


def _q(text: str) -> str:
    return esc(text)


def _either(*names: str) -> str:
    unique = list(dict.fromkeys(_q(n) for n in names))
    return unique[0] if len(unique) == 1 else f"(?:{'|'.join(unique)})"


def timer_job(root: Path, name: str, zone: str) -> tuple[list[Job], list[str]]:
    found = find_unit(root, name)
    if found is None:
        return [], []
    timer = read_unit(*found)
    notes: list[str] = []
    service = timer.get("Timer", "Unit") or name.removesuffix(".timer") + ".service"
    svc_found = find_unit(root, service)
    svc = read_unit(*svc_found) if svc_found else Unit(service)
    if svc_found is None:
        notes.append(f"{service}: no unit file found")
    desc = svc.get("Unit", "Description") or service
    exec_start = svc.get("Service", "ExecStart") or "?"
    user = svc.get("Service", "User") or "root"
    source = SourceSpec(SYSTEMD_SOURCE, {"journald": {"units": [service]}})
    try:
        accuracy = parse_span(timer.get("Timer", "AccuracySec") or "1min")
        delay = parse_span(timer.get("Timer", "RandomizedDelaySec") or "0")
    except ValueError as e:
        notes.append(f"{found[1]}: {e}; taken as the defaults")
        accuracy, delay = timedelta(minutes=1), timedelta(0)
    slack = accuracy + delay + timedelta(minutes=5)
    persistent = (timer.get("Timer", "Persistent") or "false").lower() in ("true", "yes", "1", "on")
    if delay:
        notes.append(
            f"RandomizedDelaySec={timer.get('Timer', 'RandomizedDelaySec')}: window widened"
        )
    if persistent:
        notes.append(
            "Persistent=true: a run missed while the host was off happens at the next boot; "
            "the window alert then resolves as late"
        )
    on = enabled(root, name)
    if not on:
        notes.append(f"{name} is not enabled (no *.wants/ link): the rules are disabled")
    base = f"timer-{slug(name.removesuffix('.timer'))}"
    template = Job(
        name=base,
        origin=found[1],
        schedule="-",
        what=f"{user}: {exec_start} ({service}: {desc})",
        source=source,
        ran=rf"Start(?:ing|ed) {_either(service, desc)}\b",
        ran_sample=f"Starting {service}{'' if desc == service else ' - ' + desc}...",
        failed=rf"{_q(service)}: Failed with result '(?P<result>[\w-]+)'",
        failed_sample=f"{service}: Failed with result 'exit-code'.",
        enabled=on,
    )
    jobs: list[Job] = []
    calendars = timer.all("Timer", "OnCalendar")
    for i, spec in enumerate(calendars):
        try:
            cron, tz = calendar_to_cron(spec, zone)
        except CalendarError as e:
            notes.append(f"OnCalendar={spec}: not converted: {e} — write expect: by hand")
            continue
        jobs.append(
            replace(
                template,
                name=base if not jobs else f"{base}-{i + 1}",
                schedule=f"OnCalendar={spec}",
                cron=cron,
                timezone=tz,
                within=slack,
            )
        )
    interval = last_interval(timer)
    if interval is not None:
        key, value = interval
        try:
            every = parse_span(value)
        except ValueError as e:
            notes.append(f"{key}={value}: {e}")
        else:
            if key == "OnUnitInactiveSec":
                notes.append(
                    "OnUnitInactiveSec= counts from the end of the last run: the grace does not "
                    "include the run time, widen it if the job runs long"
                )
            boot = timer.get("Timer", "OnBootSec")
            jobs.append(
                replace(
                    template,
                    name=base if not jobs else f"{base}-every",
                    schedule=f"{key}={value}" + (f", OnBootSec={boot}" if boot else ""),
                    every=every,
                    grace=slack,
                )
            )
    if not jobs:
        if not calendars:
            notes.append(
                "no OnCalendar= or OnUnitActiveSec=: nothing recurring to expect "
                "(OnBootSec= alone runs once per boot); only its failures are watched"
            )
        ons = [f"{k}={v[-1]}" for k, v in timer.sections.get("Timer", {}).items() if k[:2] == "On"]
        jobs.append(replace(template, schedule=", ".join(ons) or "-"))
    return [replace(j, notes=tuple(notes)) for j in jobs], []


def read_timers(root: Path, zone: str) -> tuple[list[Job], list[str]]:
    names: set[str] = set()
    for d in UNIT_DIRS:
        if (root / d).is_dir():
            names |= {p.name for p in (root / d).glob("*.timer") if p.is_file()}
    jobs: list[Job] = []
    notes: list[str] = []
    for name in sorted(names):
        got, why = timer_job(root, name, zone)
        jobs += got
        notes += why
    return jobs, notes
