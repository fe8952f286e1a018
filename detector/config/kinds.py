"""The per-kind part of a rule: ``threshold:``, ``expect:`` (heartbeat, window), pair, ``anomaly:``.

Sits under ``rules.py``: once a rule's keys have decided its kind and its patterns compiled,
:func:`read_spec` reads the kind's own mapping into its frozen spec (``ThresholdSpec``, whose
``reset_on:`` regex must capture the ``by:`` groups itself and whose ``distinct:`` names a group
of the rule's pattern,
``HeartbeatSpec``, ``WindowSpec``, ``PairSpec``, ``AnomalyNewSpec``, ``AnomalyRateSpec``), checking
that every ``by:`` names a group the patterns capture (:func:`captured_names`, also used for the
rule's ``group_by:``). Window sugar: ``expect: {between: "02:00-03:30", days: [mon, fri], timezone:
Europe/Berlin}`` is the window ``cron: "0 2 * * 1,5"`` with ``within: 1h30m`` — the cron fires at
the start time on the listed days (every day if ``days`` is absent; sun=0 … sat=6) and ``within``
is end minus start, plus 24h when the end is not after the start (a window across midnight).
``cron:`` also accepts ``@hourly @daily @weekly @monthly @yearly``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from detector.config.nodes import NodeReader, choices_hint, describe, did_you_mean
from detector.model import (
    AnomalyNewSpec,
    AnomalyRateSpec,
    HeartbeatSpec,
    PairSpec,
    RuleKind,
    SystemdUnitsSpec,
    ThresholdSpec,
    WindowSpec,
)
from detector.unitfiles import root_zone, timer_schedules

_THRESHOLD_KEYS = ("count", "within", "by", "reset_on", "distinct")
_HEARTBEAT_KEYS = ("every", "grace", "by", "keys")
_WINDOW_KEYS = ("cron", "within", "timezone", "min_count", "too_early")
_BETWEEN_KEYS = ("between", "days", "timezone", "min_count", "too_early")
_ANOMALY_NEW_KEYS = ("type", "learn", "learn_lines", "max_alerts_per_hour", "masks", "similarity")
_ANOMALY_RATE_KEYS = (
    "type",
    "bucket",
    "sensitivity",
    "for",
    "min_delta",
    "learn",
    "by",
    "direction",
)
_SYSTEMD_UNITS_KEYS = (
    "failed",
    "timers",
    "units",
    "exclude",
    "up_for",
    "grace",
    "root",
    "timezone",
)
SYSTEMD_UNITS_MATCH = (
    r"Failed with result|Main process exited|Deactivated successfully|Succeeded\.|"
    r"(?:Starting|Started|Finished) "
)
"""The built-in pattern of a ``systemd_units:`` rule: every message of systemd's that the
evaluator (``rules/systemd_units.py``) reads about a unit, so that the matcher finds them."""
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_FULL_DAYS = {
    "sunday": "sun",
    "monday": "mon",
    "tuesday": "tue",
    "wednesday": "wed",
    "thursday": "thu",
    "friday": "fri",
    "saturday": "sat",
}
_CRON_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_HHMM = re.compile(r"(\d{1,2}):(\d{2})")


@dataclass
class RulePatterns:
    """The compiled positive patterns of a rule and what they capture."""

    positive: list[tuple[str, re.Pattern[str]]]
    ignore: re.Pattern[str] | None
    captured: set[str]
    complete: bool  # False when a pattern failed to compile (skip checks that need captures)


def captured_names(
    r: NodeReader, node: Node, w: str, patterns: RulePatterns, journald: bool, *, many: bool
) -> tuple[str, ...] | None:
    if many:
        names = r.strings(node, w, "captured group name")
    else:
        one = r.string(node, w, "a captured group name")
        names = None if one is None else (one,)
    if names is None:
        return None
    if journald or not patterns.complete:
        return names
    ok = True
    for n in names:
        if n not in patterns.captured:
            ok = False
            hint = did_you_mean(n, sorted(patterns.captured))
            have = (
                "captured groups: " + ", ".join(sorted(patterns.captured))
                if patterns.captured
                else "the pattern captures nothing"
            )
            r.err(
                node,
                w,
                f"'{n}' is not captured by the rule's pattern ({have}) — "
                + (f"{hint} Or " if hint else "")
                + f"add (?P<{n}>…) to the pattern",
            )
    return names if ok else None


def read_spec(
    r: NodeReader,
    kind: RuleKind,
    e: dict[str, tuple[Node, Node]],
    w: str,
    *,
    patterns: RulePatterns,
    journald: bool,
    pats: Mapping[str, str],
) -> Any:
    if kind == "threshold":
        return _threshold(r, e["threshold"][1], f"{w}: threshold", patterns, journald)
    if kind == "heartbeat":
        return _heartbeat(r, e["expect"][1], f"{w}: expect", patterns, journald)
    if kind == "window":
        return _window(r, e["expect"][1], f"{w}: expect")
    if kind == "pair":
        return _pair(r, e, w, pats)
    if kind == "anomaly_new":
        return _anomaly_new(r, e["anomaly"][1], f"{w}: anomaly")
    if kind == "systemd_units":
        return _systemd_units(r, e["systemd_units"][1], f"{w}: systemd_units")
    return _anomaly_rate(r, e["anomaly"][1], f"{w}: anomaly", patterns, journald)


def _required(
    r: NodeReader, entries: dict[str, tuple[Node, Node]], node: Node, w: str, keys: dict[str, str]
) -> bool:
    ok = True
    for key, example in keys.items():
        if key not in entries:
            r.err(node, w, f"missing required key '{key}' — add {key}: {example}")
            ok = False
    return ok


def _threshold(
    r: NodeReader, node: Node, w: str, patterns: RulePatterns, journald: bool
) -> ThresholdSpec | None:
    e = r.mapping(node, w, "a mapping such as {count: 10, within: 5m}", _THRESHOLD_KEYS)
    if e is None or not _required(r, e, node, w, {"count": "10", "within": "5m"}):
        return None
    kw: dict[str, Any] = {
        "count": r.integer(e["count"][1], f"{w}.count", 1),
        "within": r.span(e["within"][1], f"{w}.within"),
    }
    if "by" in e:
        kw["by"] = captured_names(r, e["by"][1], f"{w}.by", patterns, journald, many=True)
    if "distinct" in e:
        d = captured_names(r, e["distinct"][1], f"{w}.distinct", patterns, journald, many=False)
        kw["distinct"] = None if d is None else d[0]
        if d is not None and d[0] in kw.get("by", ()):
            r.err(
                e["distinct"][1],
                f"{w}.distinct",
                f"'{d[0]}' is also in by: — one key has one value of it; count distinct values "
                "of another group (e.g. by: [ip], distinct: user)",
            )
            kw["distinct"] = None
    if "reset_on" in e:
        kw["reset_on"] = _reset_on(r, e["reset_on"][1], f"{w}.reset_on", kw.get("by"), journald)
    if any(v is None for v in kw.values()):
        return None
    return ThresholdSpec(**kw)


def _reset_on(
    r: NodeReader, node: Node, w: str, by: tuple[str, ...] | None, journald: bool
) -> str | None:
    """A ``reset_on:`` regex that captures every ``by:`` group itself (its key is read from its
    own groups, or the line's journald fields)."""
    rx = r.regex(node, w)
    if rx is None or by is None or journald:
        return rx
    have = set(re.compile(rx).groupindex)
    missing = [n for n in by if n not in have]
    if missing:
        r.err(
            node,
            w,
            "reset_on must capture the by: groups to know which key it resets — add "
            + ", ".join(f"(?P<{n}>…)" for n in missing)
            + " to the pattern",
        )
        return None
    return rx


def _heartbeat(
    r: NodeReader, node: Node, w: str, patterns: RulePatterns, journald: bool
) -> HeartbeatSpec | None:
    e = r.mapping(node, w, "a mapping such as {every: 5m}", _HEARTBEAT_KEYS)
    if e is None:
        return None
    kw: dict[str, Any] = {"every": r.span(e["every"][1], f"{w}.every")}
    if "grace" in e:
        kw["grace"] = r.span(e["grace"][1], f"{w}.grace", positive=False)
    if "by" in e:
        by = captured_names(r, e["by"][1], f"{w}.by", patterns, journald, many=False)
        kw["by"] = None if by is None else by[0]
    if "keys" in e:
        kw["keys"] = r.strings(e["keys"][1], f"{w}.keys", "expected key")
        if "by" not in e:
            r.err(
                e["keys"][0],
                w,
                "keys: lists values of a by: group — add by: <captured group> too",
            )
            return None
    if any(v is None for v in kw.values()):
        return None
    return HeartbeatSpec(**kw)


def _window(r: NodeReader, node: Node, w: str) -> WindowSpec | None:
    assert isinstance(node, MappingNode)
    sugar = any(k.value == "between" for k, _ in node.value)
    e = r.mapping(
        node,
        w,
        "a mapping",
        _BETWEEN_KEYS if sugar else (*_WINDOW_KEYS, "every"),
    )
    if e is None:
        return None
    if "every" in e:
        r.err(
            e["every"][0],
            w,
            "every: (a heartbeat) cannot be combined with cron: (a window) — pick one",
        )
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones  # noqa: PLC0415

    import cronsim  # noqa: PLC0415 - with zoneinfo and calendar: only a window rule needs it

    kw: dict[str, Any] = {}
    tz = "UTC"
    zone: ZoneInfo | None = ZoneInfo("UTC")
    if "timezone" in e:
        tnode = e["timezone"][1]
        t = r.string(tnode, f"{w}.timezone", "an IANA time zone such as Europe/Berlin")
        zone = None
        if t is not None:
            try:
                zone = ZoneInfo(t)
                tz = t
            except (ZoneInfoNotFoundError, ValueError, OSError):
                hint = did_you_mean(t, sorted(available_timezones()))
                r.err(
                    tnode,
                    f"{w}.timezone",
                    f"unknown time zone '{t}' — "
                    + (hint or "use an IANA name such as Europe/Berlin, America/New_York or UTC"),
                )
        kw["timezone"] = tz if zone is not None else None
    if "min_count" in e:
        kw["min_count"] = r.integer(e["min_count"][1], f"{w}.min_count", 1)
    if "too_early" in e:
        kw["too_early"] = r.choice(e["too_early"][1], f"{w}.too_early", ("ignore", "info"))
    if sugar:
        got = _between(r, e, w)
        if got is None:
            return None
        kw["cron"], kw["within"] = got
    else:
        if not _required(r, e, node, w, {"within": "1h"}):
            return None
        cnode = e["cron"][1]
        cron = r.string(cnode, f"{w}.cron", "a cron expression such as '0 2 * * *'")
        if cron is not None:
            cron = _CRON_ALIASES.get(cron.strip(), cron.strip())
            if len(cron.split()) != 5:
                r.err(
                    cnode,
                    f"{w}.cron",
                    f"'{cron}' has {len(cron.split())} fields, expected 5 (minute hour "
                    "day-of-month month day-of-week) — e.g. '0 2 * * *' for 02:00 daily",
                )
                cron = None
            elif zone is not None:
                try:
                    cronsim.CronSim(cron, datetime.now(zone))
                except cronsim.CronSimError as err:
                    r.err(
                        cnode,
                        f"{w}.cron",
                        f"invalid cron expression '{cron}': {err} — fields are minute hour "
                        "day-of-month month day-of-week, e.g. '30 2 * * mon-fri'",
                    )
                    cron = None
        kw["cron"] = cron
        kw["within"] = r.span(e["within"][1], f"{w}.within")
    if any(v is None for v in kw.values()):
        return None
    return WindowSpec(**kw)


def _between(
    r: NodeReader, e: dict[str, tuple[Node, Node]], w: str
) -> tuple[str, timedelta] | None:
    bnode = e["between"][1]
    s = r.string(bnode, f"{w}.between", "a time range such as '02:00-03:00'")
    if s is None:
        return None
    start_s, sep, end_s = s.partition("-")
    m1, m2 = _HHMM.fullmatch(start_s.strip()), _HHMM.fullmatch(end_s.strip())
    if not sep or m1 is None or m2 is None:
        r.err(bnode, f"{w}.between", f"'{s}' is not HH:MM-HH:MM — write e.g. '02:00-03:30'")
        return None
    h1, mi1, h2, mi2 = (int(x) for x in (*m1.groups(), *m2.groups()))
    if h1 > 23 or h2 > 24 or mi1 > 59 or mi2 > 59 or (h2 == 24 and mi2):
        r.err(bnode, f"{w}.between", f"'{s}' has an impossible time — hours 00-23, minutes 00-59")
        return None
    within = timedelta(hours=h2 - h1, minutes=mi2 - mi1)
    if within <= timedelta(0):
        within += timedelta(days=1)
    dow = "*"
    if "days" in e:
        dnode = e["days"][1]
        days = r.strings(dnode, f"{w}.days", "day name (mon … sun)")
        if days is None:
            return None
        nums: list[int] = []
        for d in days:
            key = _FULL_DAYS.get(d.lower(), d.lower())
            if key not in _DAYS:
                r.err(
                    dnode,
                    f"{w}.days",
                    f"'{d}' is not a day — {choices_hint(key, _DAYS)}",
                )
                return None
            nums.append(_DAYS[key])
        dow = ",".join(str(n) for n in sorted(set(nums)))
    return f"{mi1} {h1} * * {dow}", within


def _pair(
    r: NodeReader, e: dict[str, tuple[Node, Node]], w: str, pats: Mapping[str, str]
) -> PairSpec | None:
    kw: dict[str, Any] = {
        "start": pats.get("start"),  # validated (and ${VAR}-expanded) by the caller
        "end": pats.get("end"),
        "within": r.span(e["within"][1], f"{w}: within"),
    }
    if "min_duration" in e:
        kw["min_duration"] = r.span(e["min_duration"][1], f"{w}: min_duration")
    for key in ("on_orphan_end", "on_double_start"):
        if key in e:
            kw[key] = r.choice(e[key][1], f"{w}: {key}", ("ignore", "alert"))
    if any(v is None for v in kw.values()):
        return None
    return PairSpec(**kw)


def _anomaly_new(r: NodeReader, node: Node, w: str) -> AnomalyNewSpec | None:
    if isinstance(node, ScalarNode):
        return AnomalyNewSpec()
    e = r.mapping(node, w, "new, rate or a mapping", _ANOMALY_NEW_KEYS)
    if e is None:
        return None
    kw: dict[str, Any] = {}
    if "learn" in e and "learn_lines" in e:
        r.err(
            e["learn_lines"][0],
            w,
            "learn: and learn_lines: exclude each other — keep one (a time or a line count)",
        )
        return None
    if "learn" in e:
        kw["learn"] = r.span(e["learn"][1], f"{w}.learn")
    if "learn_lines" in e:
        kw["learn_lines"] = r.integer(e["learn_lines"][1], f"{w}.learn_lines", 1)
    if "max_alerts_per_hour" in e:
        kw["max_alerts_per_hour"] = r.integer(
            e["max_alerts_per_hour"][1], f"{w}.max_alerts_per_hour", 1
        )
    if "similarity" in e:
        kw["similarity"] = r.number(e["similarity"][1], f"{w}.similarity", 0.0, 1.0)
    if "masks" in e:
        kw["masks"] = _masks(r, e["masks"][1], f"{w}.masks")
    if any(v is None for v in kw.values()):
        return None
    if "learn_lines" in kw:
        kw["learn"] = None  # learning ends after a line count instead of a time
    return AnomalyNewSpec(**kw)


def _masks(r: NodeReader, node: Node, w: str) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(node, SequenceNode):
        r.err(node, w, f"expected a list of {{regex, replace}}, got {describe(node)}")
        return None
    out: list[tuple[str, str]] = []
    ok = True
    for item in node.value:
        e = r.mapping(item, w, "a mapping {regex: …, replace: …}", ("regex", "replace"))
        if e is None or not _required(r, e, item, w, {"regex": "'\\d+'", "replace": "<N>"}):
            ok = False
            continue
        rx = r.regex(e["regex"][1], f"{w}.regex")
        rep = r.string(e["replace"][1], f"{w}.replace")
        if rx is None or rep is None:
            ok = False
        else:
            out.append((rx, rep))
    return tuple(out) if ok else None


def _anomaly_rate(
    r: NodeReader, node: Node, w: str, patterns: RulePatterns, journald: bool
) -> AnomalyRateSpec | None:
    if isinstance(node, ScalarNode):
        return AnomalyRateSpec()
    e = r.mapping(node, w, "new, rate or a mapping", _ANOMALY_RATE_KEYS)
    if e is None:
        return None
    kw: dict[str, Any] = {}
    for key in ("bucket", "learn"):
        if key in e:
            kw[key] = r.span(e[key][1], f"{w}.{key}")
    if "sensitivity" in e:
        kw["sensitivity"] = r.number(e["sensitivity"][1], f"{w}.sensitivity", 0.0)
    if "for" in e:
        kw["for_buckets"] = r.integer(e["for"][1], f"{w}.for", 1)
    if "min_delta" in e:
        kw["min_delta"] = r.integer(e["min_delta"][1], f"{w}.min_delta", 0)
    if "by" in e:
        by = captured_names(r, e["by"][1], f"{w}.by", patterns, journald, many=False)
        kw["by"] = None if by is None else by[0]
    if "direction" in e:
        kw["direction"] = r.choice(e["direction"][1], f"{w}.direction", ("both", "up", "down"))
    if any(v is None for v in kw.values()):
        return None
    return AnomalyRateSpec(**kw)


def _systemd_units(r: NodeReader, node: Node, w: str) -> SystemdUnitsSpec | None:
    if isinstance(node, ScalarNode) and node.value in ("", "~", "null", "true"):
        return SystemdUnitsSpec()  # systemd_units: true (or empty): failed units, every unit
    e = r.mapping(node, w, "a mapping such as {failed: true, timers: true}", _SYSTEMD_UNITS_KEYS)
    if e is None:
        return None
    kw: dict[str, Any] = {}
    for key in ("failed", "timers"):
        if key in e:
            kw[key] = r.boolean(e[key][1], f"{w}.{key}")
    for key in ("units", "exclude"):
        if key in e:
            kw[key] = r.strings(e[key][1], f"{w}.{key}", "unit name or glob (*.service)")
    for key in ("up_for", "grace"):
        if key in e:
            kw[key] = r.span(e[key][1], f"{w}.{key}", positive=False)
    if "root" in e:
        kw["root"] = r.string(e["root"][1], f"{w}.root", "a directory such as /")
    if "timezone" in e:
        tnode = e["timezone"][1]
        t = r.string(tnode, f"{w}.timezone", "an IANA time zone such as Europe/Berlin")
        if t is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones  # noqa: PLC0415

            try:
                ZoneInfo(t)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                hint = did_you_mean(t, sorted(available_timezones()))
                r.err(
                    tnode,
                    f"{w}.timezone",
                    f"unknown time zone '{t}' — "
                    + (hint or "use an IANA name such as Europe/Berlin or UTC"),
                )
                t = None
        kw["timezone"] = t
    if any(v is None for v in kw.values()):
        return None
    spec = SystemdUnitsSpec(**kw)
    if spec.failed is False and spec.timers is False:
        r.err(node, w, "watches nothing — set failed: true, timers: true or both")
        return None
    if not spec.timers:
        return spec
    root = Path(spec.root)
    zone = spec.timezone if "timezone" in e else (root_zone(root) or "UTC")
    schedules, notes = timer_schedules(root, zone, spec.grace)
    watched = tuple(t for t in schedules if spec.watches(t.timer) or spec.watches(t.service))
    for note in notes:
        r.warn(node, w, note)
    if not watched:
        r.warn(
            node,
            w,
            f"timers: true, but no timer with a schedule under {root} "
            "(etc/systemd/system, run/systemd/system, lib/systemd/system, …) is watched",
        )
    return replace(spec, timezone=zone, schedules=watched)
