"""systemd unit files and their timers' schedules, read from a root directory: the one reader
``detector discover`` (``discover/timers.py``) and the ``systemd_units:`` rules
(``config/kinds.py``, for ``timers: true``) share.

Pure helpers under the config layer: a unit is found in the first of :data:`UNIT_DIRS` that has it
(systemd's search path) with its drop-ins ``*.d/*.conf``; ``OnCalendar=`` becomes a 5-field cron
expression and an IANA zone (:func:`calendar_to_cron`; a form cron cannot say raises
:class:`CalendarError`); systemd time spans become ``timedelta`` (:func:`parse_span`).
:func:`timer_schedules` says when a timer's service is due: a window (``OnCalendar=``, widened by
``AccuracySec=`` and ``RandomizedDelaySec=``) or an "at least every" (``OnUnitActiveSec=``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from detector.model import SystemdTimer

UNIT_DIRS = (
    "etc/systemd/system",
    "run/systemd/system",  # runtime units (systemctl --runtime, units a test or tool writes)
    "usr/local/lib/systemd/system",
    "lib/systemd/system",
    "usr/lib/systemd/system",
)
"""systemd's system unit search path, in its order (``systemd-analyze unit-paths``, less the
generator and transient directories)."""
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


def last_interval(timer: Unit) -> tuple[str, str] | None:
    """The timer's monotonic period, ``OnUnitActiveSec=`` or ``OnUnitInactiveSec=`` (the last one
    set wins, as systemd reads it), as (key, value); None: it has none."""
    intervals = [
        (key, value)
        for key in ("OnUnitActiveSec", "OnUnitInactiveSec")
        for value in timer.all("Timer", key)
    ]
    return intervals[-1] if intervals else None


def cron_error(cron: str) -> str | None:
    """Why ``cron`` is not a 5-field expression cronsim (and so the window rule) accepts."""
    if len(cron.split()) != 5:
        return f"'{cron}' does not have 5 fields"
    import cronsim  # noqa: PLC0415 - with zoneinfo and calendar: only where a cron is read

    try:
        cronsim.CronSim(cron, datetime(2026, 1, 1, tzinfo=UTC))
    except cronsim.CronSimError as e:
        return f"'{cron}': {e}"
    return None


def zone_ok(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415 - only for a zone

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def timer_schedules(
    root: Path, zone: str, grace: timedelta
) -> tuple[list[SystemdTimer], list[str]]:
    """Every ``*.timer`` under ``root``'s unit directories with a schedule, as
    :class:`~detector.model.SystemdTimer` values (one per ``OnCalendar=``, one for the last
    ``OnUnitActiveSec=``/``OnUnitInactiveSec=``), and notes on what could not be read. A
    window is ``AccuracySec=`` (default 1 min) + ``RandomizedDelaySec=`` + ``grace`` long."""
    names: set[str] = set()
    for d in UNIT_DIRS:
        if (root / d).is_dir():
            names |= {p.name for p in (root / d).glob("*.timer") if p.is_file()}
    out: list[SystemdTimer] = []
    notes: list[str] = []
    for name in sorted(names):
        found = find_unit(root, name)
        if found is None:
            continue
        try:
            timer = read_unit(*found)
        except OSError as e:
            notes.append(f"{found[1]}: cannot read: {e.strerror or e}")
            continue
        service = timer.get("Timer", "Unit") or name.removesuffix(".timer") + ".service"
        try:
            accuracy = parse_span(timer.get("Timer", "AccuracySec") or "1min")
            delay = parse_span(timer.get("Timer", "RandomizedDelaySec") or "0")
        except ValueError as e:
            notes.append(f"{found[1]}: {e}; AccuracySec=1min, RandomizedDelaySec=0 assumed")
            accuracy, delay = timedelta(minutes=1), timedelta(0)
        slack = accuracy + delay + grace
        for spec in timer.all("Timer", "OnCalendar"):
            try:
                cron, tz = calendar_to_cron(spec, zone)
            except CalendarError as e:
                notes.append(f"{found[1]}: OnCalendar={spec} not watched: {e}")
                continue
            out.append(SystemdTimer(name, service, f"OnCalendar={spec}", cron, tz, within=slack))
        interval = last_interval(timer)
        if interval is not None:
            key, value = interval
            try:
                every = parse_span(value)
            except ValueError as e:
                notes.append(f"{found[1]}: {key}={value} not watched: {e}")
            else:
                out.append(SystemdTimer(name, service, f"{key}={value}", every=every, grace=slack))
    return out, notes


def root_zone(root: Path) -> str | None:
    """The IANA zone of the host under ``root``: ``etc/timezone``, else the ``etc/localtime``
    link's target; None if neither says."""
    try:
        name = (root / "etc/timezone").read_text(encoding="utf-8").split()[0]
        if zone_ok(name):
            return name
    except (OSError, IndexError):
        pass
    try:
        target = str((root / "etc/localtime").readlink())
    except OSError:
        return None
    _, sep, name = target.partition("zoneinfo/")
    return name if sep and zone_ok(name) else None
