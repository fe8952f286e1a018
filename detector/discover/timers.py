"""systemd timers as ``detector discover`` finds them: ``*.timer`` units under
``etc/systemd/system``, ``lib/systemd/system`` and ``usr/lib/systemd/system`` of a root (the first
directory wins for a name, as systemd's search path does; drop-ins ``*.timer.d/*.conf`` apply),
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

import os
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from detector.discover.jobs import Job, SourceSpec, cron_error, esc, slug, zone_ok

UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
SYSTEMD_SOURCE = "discovered-systemd"
_SHORTHANDS = {
    "minutely": "* * * * *",
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * 1",
    "monthly": "0 0 1 * *",
    "yearly": "0 0 1 1 *",
    "annually": "0 0 1 1 *",
    "quarterly": "0 0 1 1,4,7,10 *",
    "semiannually": "0 0 1 1,7 *",
    "semi-annually": "0 0 1 1,7 *",
}
_DAY_NAMES = {
    "mon": "mon", "monday": "mon", "tue": "tue", "tuesday": "tue", "wed": "wed",
    "wednesday": "wed", "thu": "thu", "thursday": "thu", "fri": "fri", "friday": "fri",
    "sat": "sat", "saturday": "sat", "sun": "sun", "sunday": "sun",
}  # fmt: skip
_SPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1, "sec": 1, "second": 1,
    "seconds": 1, "m": 60, "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600,
    "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400, "w": 604800,
    "week": 604800, "weeks": 604800, "month": 2629800, "months": 2629800, "y": 31557600,
    "year": 31557600, "years": 31557600,
}  # fmt: skip
_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


class CalendarError(ValueError):
    """An ``OnCalendar=`` form that has no cron equivalent; the message says why."""


def parse_span(text: str) -> timedelta:
    """A systemd time span (``1h 30min``, ``5m``, ``300``: seconds) → timedelta."""
    s = text.strip().lower()
    if not s:
        raise ValueError("empty time span")
    total, pos = 0.0, 0
    while pos < len(s):
        while pos < len(s) and s[pos] == " ":
            pos += 1
        m = _SPAN_PART.match(s, pos)
        if m is None or not m.group(0):
            raise ValueError(f"cannot read time span '{text}'")
        unit = m.group(2) or "s"
        if unit not in _SPAN_UNITS:
            raise ValueError(f"unknown unit '{unit}' in '{text}'")
        total += float(m.group(1)) * _SPAN_UNITS[unit]
        pos = m.end()
    return timedelta(seconds=total)


def _field(text: str, top: int, what: str) -> str:
    """One systemd calendar component (``*``, ``2``, ``1..5``, ``0/15``, ``1,3``) in cron form."""
    out = []
    for part in text.split(","):
        base, slash, step = part.partition("/")
        if base == "*":
            value = "*"
        else:
            lo, dots, hi = base.partition("..")
            if not lo.isdigit() or (dots and not hi.isdigit()):
                raise CalendarError(f"cannot read {what} '{text}'")
            value = f"{int(lo)}-{int(hi)}" if dots else str(int(lo))
            if slash and not dots:
                value = "*" if int(lo) == (0 if top in (59, 23) else 1) else f"{int(lo)}-{top}"
        if slash:
            if not step.isdigit():
                raise CalendarError(f"cannot read the repetition in {what} '{text}'")
            value += f"/{int(step)}"
        out.append(value)
    return ",".join(out)


def _weekdays(text: str) -> str:
    out = []
    for part in text.lower().split(","):
        lo, dots, hi = part.partition("..")
        names = [_DAY_NAMES.get(lo), _DAY_NAMES.get(hi) if dots else None]
        if names[0] is None or (dots and names[1] is None):
            raise CalendarError(f"cannot read the weekdays '{text}'")
        out.append(f"{names[0]}-{names[1]}" if dots else str(names[0]))
    return ",".join(out)


def calendar_to_cron(spec: str, default_zone: str) -> tuple[str, str]:
    """``OnCalendar=`` → (5-field cron expression, IANA zone). Raises :class:`CalendarError`."""
    words = spec.split()
    if not words:
        raise CalendarError("empty OnCalendar=")
    zone = default_zone
    if len(words) > 1 and (zone_ok(words[-1]) and not words[-1][0].isdigit()):
        zone = words.pop()
    if len(words) == 1 and words[0].lower() in _SHORTHANDS:
        return _SHORTHANDS[words[0].lower()], zone
    dow = "*"
    if words and words[0][0].isalpha():
        dow = _weekdays(words.pop(0))
    date, time = "*-*-*", "00:00:00"
    for w in words:
        if ":" in w:
            time = w
        elif "-" in w:
            date = w
        else:
            raise CalendarError(f"cannot read '{w}' in '{spec}'")
    if "~" in date:
        raise CalendarError("'~' (days counted from the month's end) has no cron form")
    parts = date.split("-")
    if len(parts) == 2:
        parts = ["*", *parts]
    if len(parts) != 3:
        raise CalendarError(f"cannot read the date '{date}'")
    year, month, day = parts
    if year != "*":
        raise CalendarError(f"a year ('{year}') has no cron form")
    tparts = time.split(":")
    if len(tparts) == 2:
        tparts.append("00")
    if len(tparts) != 3:
        raise CalendarError(f"cannot read the time '{time}'")
    hour, minute, second = tparts
    if second.split(".")[0].lstrip("0") not in ("",):
        raise CalendarError(f"seconds ('{second}') other than 00 have no cron form")
    cron_dom = _field(day, 31, "day")
    if dow != "*" and cron_dom != "*":
        raise CalendarError(
            "a weekday together with a day of the month: systemd needs both, cron takes either"
        )
    cron = " ".join(
        (
            _field(minute, 59, "minute"),
            _field(hour, 23, "hour"),
            cron_dom,
            _field(month, 12, "month"),
            dow,
        )
    )
    problem = cron_error(cron)
    if problem is not None:
        raise CalendarError(problem)
    return cron, zone


@dataclass
class Unit:
    """A parsed unit file: ``{section: {key: [values in order]}}`` (an empty value resets)."""

    path: str
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def all(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def get(self, section: str, key: str) -> str | None:
        values = self.all(section, key)
        return values[-1] if values else None


def read_unit(paths: list[Path], host_path: str) -> Unit:
    unit = Unit(host_path)
    for path in paths:
        section = ""
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        joined: list[str] = []
        for raw in lines:  # backslash continuation
            if joined and joined[-1].endswith("\\"):
                joined[-1] = joined[-1][:-1] + " " + raw.strip()
            else:
                joined.append(raw.strip())
        for line in joined:
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, eq, value = line.partition("=")
            if not eq:
                continue
            values = unit.sections.setdefault(section, {}).setdefault(key.strip(), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return unit


def find_unit(root: Path, name: str) -> tuple[list[Path], str] | None:
    """The unit file of ``name`` (the first unit directory that has it) and its drop-ins."""
    for d in UNIT_DIRS:
        path = root / d / name
        if path.is_file():
            drop = sorted((root / d / f"{name}.d").glob("*.conf"))
            return [path, *drop], f"/{d}/{name}"
    return None


def enabled(root: Path, name: str) -> bool:
    """A timer is started at boot when some ``*.wants/`` directory links it."""
    return any(
        os.path.lexists(wants / name)  # the link points into the host, not into the root
        for d in UNIT_DIRS
        if (root / d).is_dir()
        for wants in (root / d).glob("*.wants")
    )


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
    intervals = [
        (key, value)
        for key in ("OnUnitActiveSec", "OnUnitInactiveSec")
        for value in timer.all("Timer", key)
    ]
    if intervals:
        key, value = intervals[-1]
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
