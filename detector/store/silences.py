"""The ``silences`` table: silences added, listed and expired by ``detector silence``, read by the
agent.

Part of the store. The command writes this table only, beside the running agent (WAL and SQLite's
own locking order the writes; it never takes the agent's ``state.db.lock``), and bumps nothing
else: the agent polls :func:`version` (``PRAGMA data_version``, which changes when another
connection committed) when the state file or its WAL changed (a ``stat`` a second, and at least
every 15 s) and reloads the silences when it moved. Rows are JSON
(``silences.Silence.to_json``); expired ones are kept for ``KEEP`` so ``silence list`` shows them.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from detector.store.db import Store, StoreError, ts

KEEP = timedelta(days=7)
"""An ended silence is listed (and kept) this long."""


def add(store: Store, row: dict[str, Any], ends_at: datetime, now: datetime) -> None:
    with store._tx():
        store.conn.execute(
            "INSERT INTO silences(id, value, ends_at, created_at) VALUES(?,?,?,?)",
            (row["id"], json.dumps(row), ts(ends_at), ts(now)),
        )


def load(store: Store, now: datetime) -> list[dict[str, Any]]:
    """Every silence that ended less than ``KEEP`` ago, or has not ended, oldest first."""
    rows = store.execute(
        "SELECT value FROM silences WHERE ends_at >= ? ORDER BY created_at, id",
        (ts(now - KEEP),),
    )
    return [json.loads(r[0]) for r in rows]


def expire(store: Store, silence_id: str, now: datetime) -> dict[str, Any] | None:
    """Mark a silence expired at ``now``; the row as it is then, or None if there is none. A
    unique prefix of the id will do."""
    with store._tx():
        found = list(
            store.conn.execute(
                "SELECT id, value FROM silences WHERE id = ? OR id LIKE ? || '%'",
                (silence_id, silence_id),
            )
        )
        exact = [f for f in found if f[0] == silence_id]
        if exact:
            found = exact
        if len(found) > 1:
            raise StoreError(f"silence id {silence_id!r} is ambiguous: give more of it")
        if not found:
            return None
        sid, value = found[0]
        row: dict[str, Any] = json.loads(value)
        if not row.get("expired_at"):
            row["expired_at"] = now.isoformat()
            store.conn.execute(
                "UPDATE silences SET value=?, ends_at=min(ends_at, ?) WHERE id=?",
                (json.dumps(row), ts(now), sid),
            )
        return row


def version(store: Store) -> int:
    """Changes whenever another connection committed (the command's writes among them)."""
    return int(store.execute("PRAGMA data_version")[0][0])
