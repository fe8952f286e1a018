"""``detector outbox``: the delivery queue as the state file holds it — per webhook the pending
rows, the failing ones (held with their webhook or retrying: last error, next attempt) and the dead
letters — and ``detector outbox retry`` to put dead letters back in the queue. It reads and writes
the state file beside the running agent (WAL lets it in); the agent's workers re-read the outbox at
least every 30 s, so re-queued rows go out without a restart."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from detector.cli_support import load_config_or_exit, open_state
from detector.store import outbox
from detector.store.db import Store

STATES = ("pending", "failing", "dead")
ERROR_CHARS = 90


def main(args: argparse.Namespace) -> int:
    config = load_config_or_exit(args)
    store = open_state(config)
    try:
        if args.action == "retry":
            return _retry(args, store, set(config.webhooks))
        rows = outbox.listing(store, args.webhook)
    finally:
        store.close()
    if args.json:
        print(json.dumps(as_json(rows), indent=2))
    else:
        print(render(rows, args.limit))
    return 0


def _retry(args: argparse.Namespace, store: Store, configured: set[str]) -> int:
    result = outbox.requeue_dead(store, datetime.now(UTC), args.webhook, args.id)
    for webhook, event_id in result.requeued:
        print(f"re-queued {webhook} {event_id}")
    for webhook, event_id in result.superseded:
        print(
            f"left dead {webhook} {event_id}: a later notification of the same alert was "
            "delivered (re-sending this one would undo it)"
        )
    unknown = sorted({w for w, _ in result.requeued} - configured)
    for webhook in unknown:
        print(f"warning: webhook {webhook!r} is not in the config: nothing will send its rows")
    print(f"{len(result.requeued)} dead letters re-queued; the agent sends them within 30 s")
    if args.id and not result.requeued and not result.superseded:
        print(f"no dead letter with event id {args.id!r}", file=sys.stderr)
        return 1
    return 0


def as_json(rows: list[outbox.ListedRow]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        hook = out.setdefault(r.webhook, {"counts": dict.fromkeys(STATES, 0), "rows": []})
        hook["counts"][r.state] += 1
        hook["rows"].append(
            {
                "id": r.id,
                "event_id": r.event_id,
                "fingerprint": r.fingerprint,
                "rule": r.rule,
                "status": r.status,
                "state": r.state,
                "attempts": r.attempts,
                "created_at": r.created_at.isoformat(),
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "dead_at": r.dead_at.isoformat() if r.dead_at else None,
                "last_error": r.last_error,
            }
        )
    return out


def render(rows: list[outbox.ListedRow], limit: int) -> str:
    if not rows:
        return "outbox: nothing pending, failing or dead"
    lines: list[str] = []
    for webhook, data in as_json(rows).items():
        counts = data["counts"]
        lines.append(
            f"WEBHOOK {webhook}: {counts['pending']} pending, {counts['failing']} failing, "
            f"{counts['dead']} dead"
        )
        for state in STATES:
            these = [r for r in data["rows"] if r["state"] == state]
            if not these:
                continue
            when = "dead since" if state == "dead" else "next attempt"
            lines.append(f"  {state.upper()}")
            lines.append(
                f"    {'event':<28} {'rule':<20} {'status':<9} {'tries':>5}  {when:<25} last error"
            )
            for r in these[:limit]:
                at = r["next_attempt_at"] or r["dead_at"] or "-"
                held = "(held with its webhook)" if state == "failing" else "-"
                error = (r["last_error"] or held)[:ERROR_CHARS]
                lines.append(
                    f"    {r['event_id']:<28} {r['rule'] or '-':<20} {r['status']:<9} "
                    f"{r['attempts']:>5}  {at[:25]:<25} {error}"
                )
            if len(these) > limit:
                lines.append(f"    … and {len(these) - limit} more (--limit, --json)")
    if any(r.state == "dead" for r in rows):
        lines.append("\nre-send dead letters: detector outbox retry [--webhook W] [--id EVENT]")
    return "\n".join(lines)
