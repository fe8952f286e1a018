"""``detector status``: what the state file knows, as a readable table (or JSON).

Works whether or not the agent is running (SQLite in WAL mode lets a reader in beside the writer).
A state file that is empty or has no schema is said to be so (exit 2), never shown as an empty
state.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from detector.cli_support import CommandError, load_config_or_exit, open_state
from detector.maintenance import Maintenance
from detector.model import MaintenanceConfig
from detector.timefmt import format_duration, iso, parse_iso, utc_text


def _ago(at: str | None, now: datetime) -> str:
    if not at:
        return "never"
    secs = int((now - parse_iso(at)).total_seconds())
    if secs < 0:
        return f"in {format_duration(timedelta(seconds=-secs))}"
    return f"{format_duration(timedelta(seconds=secs))} ago"


def muted_text(a: dict[str, Any]) -> str:
    """``silenced by silence 3fa2… until 2026-03-01 12:00 UTC (reboot)``, or ``""``."""
    m = a.get("muted")
    if not m:
        return ""
    until = utc_text(parse_iso(m["until"])) if m.get("until") else "?"
    why = f" ({m['comment']})" if m.get("comment") else ""
    return f"silenced by {m['by']} until {until}{why}"


def phase(a: dict[str, Any]) -> dict[str, Any]:
    """Where an alert is in its ``for:`` / ``keep_firing_for:`` / ``flap:`` life, for
    ``detector status --json``: ``phase`` (pending, firing, clearing, flapping, resolved) and
    ``next_change_at``: when it fires (pending), resolves unless it fires again (clearing) or,
    flapping, settles at the earliest (its last change + the flap window is not stored: the
    agent's own deadline, so None)."""
    if a["status"] == "pending":
        return {"phase": "pending", "next_change_at": a.get("pending_until")}
    if a.get("flapping_since"):  # firing or resolved for now: its notices are folded
        return {"phase": "flapping", "next_change_at": None}
    if a["status"] != "firing":
        return {"phase": a["status"], "next_change_at": None}
    if a.get("clearing_until"):
        return {"phase": "clearing", "next_change_at": a["clearing_until"]}
    return {"phase": "firing", "next_change_at": None}


def timing_text(a: dict[str, Any], now: datetime) -> str:
    """``fires at 10:05:00 UTC (in 3m) if still open``, ``condition cleared: resolves at …
    unless it fires again (keep_firing_for)``, ``flapping since … (5 changes): one notice
    sent, the next when it settles``, or ``""``."""
    p = phase(a)
    at = p["next_change_at"]
    when = f"{utc_text(parse_iso(at))} ({_ago(at, now)})" if at else ""
    if p["phase"] == "pending":
        return f"fires at {when} if still open (for:)"
    if p["phase"] == "clearing":
        return f"condition cleared: resolves at {when} unless it fires again (keep_firing_for:)"
    if p["phase"] == "flapping":
        since = utc_text(parse_iso(a["flapping_since"]))
        n = a.get("flap_changes") or 0
        return (
            f"flapping since {since} ({n} change{'s' if n != 1 else ''} since): notifications "
            "folded, one notice when it settles (flap:)"
        )
    return ""


def maintenance_rows(entries: list[MaintenanceConfig], now: datetime) -> list[dict[str, Any]]:
    """Per ``maintenance:`` entry, the window holding now or the next one."""
    return [
        {
            "entry": i + 1,
            "active": start <= now < end,
            "start": iso(start),
            "end": iso(end),
            "rules": list(m.rules) or "all",
            "comment": m.comment,
        }
        for i, m in enumerate(entries)
        for (start, end), _entry in Maintenance([m]).upcoming(now)
    ]


def render(
    snap: dict[str, Any],
    rules: list[tuple[str, str]],
    maintenance: list[dict[str, Any]] | None = None,
) -> str:
    live = snap.get("agent_status") or {}
    now = parse_iso(live["at"]) if live.get("at") else datetime.now(UTC)
    out: list[str] = []
    out.append(f"state schema v{snap['schema_version']}, agent last alive {snap['last_alive_at']}")
    if live.get("problems"):
        out.append("\nPROBLEMS")
        out.extend(f"  {p}" for p in live["problems"])
    out.append("\nSOURCES")
    files = [
        (name, f)
        for name, status in (live.get("sources") or {}).items()
        for f in status.get("files", [])
    ]
    for name, f in files:
        lag = max(0, int(f.get("size") or 0) - int(f.get("offset") or 0))
        out.append(
            f"  {name:<16} {f['path']:<48} offset {f['offset']:>12}  lag {lag:>10} B  {f['state']}"
        )
    for name, status in (live.get("sources") or {}).items():
        if "files" not in status:
            out.append(f"  {name:<16} {json.dumps(status)[:100]}")
    if not live.get("sources"):
        if not snap["checkpoints"]:
            out.append("  (no read positions yet)")
        for cp in snap["checkpoints"]:
            v = cp["value"]
            where = v.get("path") or cp["key"]
            pos = (
                f"offset {v['offset']}" if "offset" in v else f"cursor {str(v.get('cursor'))[:40]}"
            )
            out.append(f"  {cp['source']:<16} {where:<48} {pos}  (at {cp['updated_at']})")
    out.append("\nRULES")
    out.append(
        f"  {'rule':<28} {'kind':<13} {'last match':>12} {'next deadline':>14} "
        f"{'open windows':>12} {'firing':>6}"
    )
    live_rules = live.get("rules") or {}
    for name, kind in rules:
        info = live_rules.get(name, {})
        firing = sum(1 for a in snap["alerts"] if a["rule"] == name and a["status"] == "firing")
        windows = snap.get("open_windows", {}).get(name, 0)
        out.append(
            f"  {name:<28} {kind:<13} {_ago(info.get('last_match_at'), now):>12} "
            f"{_ago(info.get('next_deadline'), now) if info.get('next_deadline') else '-':>14} "
            f"{windows:>12} {firing:>6}"
        )
    out.append("\nFIRING ALERTS")
    firing_alerts = [a for a in snap["alerts"] if a["status"] == "firing"]
    if not firing_alerts:
        out.append("  none")
    for a in firing_alerts:
        notes = [n for n in (timing_text(a, now), muted_text(a)) if n]
        out.append(
            f"  [{a['severity']}] {a['rule']}: {a['summary']} "
            f"(count {a['count']}, since {a['first_seen_at']})" + "".join(f" — {n}" for n in notes)
        )
    flapping = [a for a in snap["alerts"] if a["status"] == "resolved" and a.get("flapping_since")]
    if flapping:
        out.append("\nFLAPPING ALERTS (resolved for now)")
        out.extend(
            f"  [{a['severity']}] {a['rule']}: {a['summary']} — {timing_text(a, now)}"
            for a in flapping
        )
    pending = [a for a in snap["alerts"] if a["status"] == "pending"]
    if pending:
        out.append("\nPENDING ALERTS (for:)")
        for a in pending:
            muted = muted_text(a)
            out.append(
                f"  [{a['severity']}] {a['rule']}: {a['summary']} "
                f"(count {a['count']}, since {a['first_seen_at']}) — {timing_text(a, now)}"
                + (f" — {muted}" if muted else "")
            )
    if maintenance:
        out.append("\nMAINTENANCE")
        for m in maintenance:
            label = "active" if m["active"] else "next"
            span = f"{utc_text(parse_iso(m['start']))} – {utc_text(parse_iso(m['end']))}"
            rules_text = m["rules"] if isinstance(m["rules"], str) else ", ".join(m["rules"])
            note = f" ({m['comment']})" if m["comment"] else ""
            when = f"until {utc_text(parse_iso(m['end']))}" if m["active"] else span
            out.append(f"  #{m['entry']} {label} {when}: rules {rules_text}{note}")
    out.append("\nOUTBOX")
    if not snap["outbox"]:
        out.append("  empty")
    for o in snap["outbox"]:
        extra = f", oldest {o['oldest_at']}" if o["state"] == "pending" else ""
        err = (
            f", last error: {o['last_error']}"
            if o["last_error"] and o["state"] != "delivered"
            else ""
        )
        out.append(f"  {o['webhook']:<16} {o['state']:<10} {o['count']:>7}{extra}{err}")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    from detector.store.db import StoreCorrupt  # noqa: PLC0415 - keep --help fast

    config = load_config_or_exit(args)
    try:
        store = open_state(config)
    except CommandError as e:
        if isinstance(e.__cause__, StoreCorrupt):  # empty or without schema: not a fresh state
            raise CommandError(
                f"{e}; the agent will move it aside and start afresh (read positions restart "
                "per start_at, open alerts are forgotten) and raise an agent alert about it"
            ) from e
        raise
    try:
        snap = store.snapshot()
    finally:
        store.close()
    snap["maintenance"] = maintenance_rows(list(config.maintenance), datetime.now(UTC))
    for a in snap["alerts"]:
        a.update(phase(a))
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        print(render(snap, [(r.name, r.kind) for r in config.rules], snap["maintenance"]))
    return 0
