"""``detector status``: what the state file knows, as a readable table (or JSON).

Works whether or not the agent is running (SQLite in WAL mode lets a reader in beside the writer).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from detector.cli_support import load, open_state


def render(snap: dict[str, Any], rules: list[tuple[str, str]]) -> str:
    out: list[str] = []
    out.append(f"state schema v{snap['schema_version']}, agent last alive {snap['last_alive_at']}")
    out.append("\nSOURCES")
    if not snap["checkpoints"]:
        out.append("  (no read positions yet)")
    for cp in snap["checkpoints"]:
        v = cp["value"]
        where = v.get("path") or cp["key"]
        pos = f"offset {v['offset']}" if "offset" in v else f"cursor {str(v.get('cursor'))[:40]}"
        out.append(f"  {cp['source']:<16} {where:<48} {pos}  (at {cp['updated_at']})")
    out.append("\nRULES")
    for name, kind in rules:
        keys = snap["rule_state_keys"].get(name, 0)
        firing = sum(1 for a in snap["alerts"] if a["rule"] == name and a["status"] == "firing")
        out.append(f"  {name:<32} {kind:<13} state keys {keys:<5} firing {firing}")
    out.append("\nFIRING ALERTS")
    firing_alerts = [a for a in snap["alerts"] if a["status"] == "firing"]
    if not firing_alerts:
        out.append("  none")
    for a in firing_alerts:
        out.append(
            f"  [{a['severity']}] {a['rule']}: {a['summary']} "
            f"(count {a['count']}, since {a['first_seen_at']})"
        )
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
    config = load(args.config)
    store = open_state(config)
    try:
        snap = store.snapshot()
    finally:
        store.close()
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        print(render(snap, [(r.name, r.kind) for r in config.rules]))
    return 0
