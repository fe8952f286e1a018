"""The ``maintenance:`` section of rules.yaml: planned windows in which alerts are not notified.

Sits beside ``sections.py``: ``load.py`` hands it the section's node and the rule names (read
first, so ``rules:`` can be checked), and it returns the frozen
:class:`~detector.model.MaintenanceConfig` entries, or records problems that name
file:line:column and the fix. An entry is recurring (``cron``, ``for``, optional ``timezone``)
or one-off (``start``, ``end``: ISO 8601 with an offset); ``rules`` (default: all) and
``comment`` are optional. The semantics are in ``maintenance.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from yaml.nodes import Node, SequenceNode

from detector.config.nodes import NodeReader, did_you_mean
from detector.model import MaintenanceConfig

_KEYS = ("cron", "for", "timezone", "start", "end", "rules", "comment")
_EXAMPLE = "{cron: '0 2 * * 0', for: 2h, timezone: Europe/Berlin}"


def read_maintenance(r: NodeReader, node: Node, rules: set[str]) -> tuple[MaintenanceConfig, ...]:
    if not isinstance(node, SequenceNode):
        r.err(node, "maintenance", f"expected a list of windows such as [{_EXAMPLE}]")
        return ()
    out: list[MaintenanceConfig] = []
    for i, item in enumerate(node.value):
        m = _entry(r, item, f"maintenance[{i}]", rules)
        if m is not None:
            out.append(m)
    return tuple(out)


def _entry(r: NodeReader, node: Node, w: str, rules: set[str]) -> MaintenanceConfig | None:
    e = r.mapping(node, w, f"a mapping such as {_EXAMPLE}", _KEYS)
    if e is None:
        return None
    kw: dict[str, Any] = {"location": r.location(node)}
    ok = True
    if "comment" in e:
        kw["comment"] = r.string(e["comment"][1], f"{w}.comment") or ""
    if "rules" in e:
        names = r.strings(e["rules"][1], f"{w}.rules", "rule name")
        if names is None:
            ok = False
        else:
            for name, item in zip(names, _items(e["rules"][1]), strict=False):
                if name not in rules:
                    hint = did_you_mean(name, sorted(rules)) or "no such rule in rules:"
                    r.err(item, f"{w}.rules", f"unknown rule '{name}' — {hint}")
                    ok = False
            kw["rules"] = names
    if "cron" in e:
        for key in ("start", "end"):
            if key in e:
                r.err(e[key][0], w, f"{key}: is for a one-off window; with cron: use for:")
                ok = False
        if "for" not in e:
            r.err(node, w, "a cron window needs for: (how long it lasts), e.g. for: 2h")
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones  # noqa: PLC0415

        import cronsim  # noqa: PLC0415 - with zoneinfo and calendar: only a cron window needs it

        zone = ZoneInfo("UTC")
        if "timezone" in e:
            tnode = e["timezone"][1]
            t = r.string(tnode, f"{w}.timezone", "an IANA time zone such as Europe/Berlin")
            try:
                zone = ZoneInfo(t or "")
                kw["timezone"] = t
            except (ZoneInfoNotFoundError, ValueError, OSError):
                hint = did_you_mean(t or "", sorted(available_timezones()))
                r.err(
                    tnode,
                    f"{w}.timezone",
                    f"unknown time zone '{t}' — " + (hint or "use an IANA name such as UTC"),
                )
                return None
        cnode = e["cron"][1]
        cron = r.string(cnode, f"{w}.cron", "a cron expression such as '0 2 * * 0'")
        if cron is None:
            return None
        try:
            if len(cron.split()) != 5:
                raise cronsim.CronSimError(f"{len(cron.split())} fields, expected 5")
            cronsim.CronSim(cron, datetime.now(zone))
        except cronsim.CronSimError as err:
            r.err(
                cnode,
                f"{w}.cron",
                f"invalid cron expression '{cron}': {err} — fields are minute hour "
                "day-of-month month day-of-week, e.g. '0 2 * * sun'",
            )
            return None
        kw["cron"] = cron
        d = r.span(e["for"][1], f"{w}.for")
        if d is None:
            return None
        kw["duration"] = d
    elif "start" in e or "end" in e:
        if "for" in e or "timezone" in e:
            key = "for" if "for" in e else "timezone"
            r.err(e[key][0], w, f"{key}: is for a cron window; a one-off one has start: and end:")
            ok = False
        start = _instant(r, e, "start", w, node)
        end = _instant(r, e, "end", w, node)
        if start is None or end is None:
            return None
        if end <= start:
            r.err(e["end"][1], f"{w}.end", "end must be after start")
            return None
        kw["start"], kw["duration"] = start, end - start
    else:
        r.err(
            node,
            w,
            f"give cron: and for: (e.g. {_EXAMPLE}) or a one-off start: and end: (ISO 8601 "
            "with an offset, e.g. start: '2026-03-29T01:00:00+01:00')",
        )
        return None
    return MaintenanceConfig(**kw) if ok else None


def _items(node: Node) -> list[Node]:
    return list(node.value) if isinstance(node, SequenceNode) else [node]


def _instant(
    r: NodeReader, e: dict[str, tuple[Node, Node]], key: str, w: str, node: Node
) -> datetime | None:
    if key not in e:
        r.err(node, w, f"a one-off window needs both start: and end: ({key}: is missing)")
        return None
    vnode = e[key][1]
    text = r.string(vnode, f"{w}.{key}", "an ISO 8601 time such as 2026-03-29T01:00:00+01:00")
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        at = None
    if at is None or at.utcoffset() is None:
        r.err(
            vnode,
            f"{w}.{key}",
            f"'{text}' is not an ISO 8601 time with an offset — write e.g. "
            "2026-03-29T01:00:00+01:00 or 2026-03-29T00:00:00Z",
        )
        return None
    return at
