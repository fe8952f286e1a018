"""Outbox queries: what the delivery workers read from and write to the ``outbox`` table.

Rows are inserted by the batch commit (:meth:`detector.store.db.Store.commit`); from then on only
the functions here touch them, always called through the one-writer ``AsyncStore`` thread. A row
moves ``pending`` → ``delivered`` or ``pending`` → ``dead``; while pending, ``next_attempt_at``
(unix seconds) is its persisted schedule, so a restarted worker continues where the old one was.
Ordering per fingerprint is enforced here: only the oldest pending row of a fingerprint (its
"head": ``MIN(id) … GROUP BY fingerprint``) is ever handed out, so a later notification can never
overtake an earlier one. ``detector outbox`` lists the rows (:func:`listing`) and puts dead
letters back in the queue (:func:`requeue_dead`), from its own connection beside the agent's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from detector.store.db import Store, from_ts, ts

MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    webhook: str
    event_id: str
    fingerprint: str
    status: str
    payload: dict[str, Any]
    created_at: datetime
    next_attempt_at: datetime
    attempts: int


@dataclass(frozen=True)
class QueueStats:
    depth: int  # pending rows
    oldest_created_at: datetime | None  # of the oldest pending row


def _entry(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(
        id=row[0],
        webhook=row[1],
        event_id=row[2],
        fingerprint=row[3],
        status=row[4],
        payload=json.loads(row[5]),
        created_at=from_ts(row[6]),
        next_attempt_at=from_ts(row[7]),
        attempts=row[8] or 0,
    )


def due(store: Store, webhook: str, now: datetime, limit: int) -> list[OutboxEntry]:
    """Pending rows of ``webhook`` that may be sent at ``now``, oldest first.

    A row is handed out only if it is the head of its fingerprint (no older pending row of the same
    fingerprint exists) and its ``next_attempt_at`` has come. Walks the pending rows in id order
    and stops as soon as ``limit`` rows are found, so a pass over a long backlog costs O(limit),
    not O(queue).
    """
    t = ts(now)
    seen: set[str] = set()
    ids: list[int] = []
    cur = store.conn.execute(
        "SELECT id, fingerprint, next_attempt_at FROM outbox "
        "WHERE webhook=? AND state='pending' ORDER BY id",
        (webhook,),
    )
    try:
        for row_id, fp, next_at in cur:
            if fp in seen:
                continue  # an older row of this fingerprint is still pending
            seen.add(fp)
            if next_at <= t:
                ids.append(row_id)
                if len(ids) >= limit:
                    break
    finally:
        cur.close()
    out = []
    for row_id in ids:
        rows = store.execute(
            "SELECT id, webhook, event_id, fingerprint, status, payload, created_at, "
            "next_attempt_at, attempts FROM outbox WHERE id=?",
            (row_id,),
        )
        out.append(_entry(rows[0]))
    return out


def next_due_at(store: Store, webhook: str) -> datetime | None:
    """When the earliest head row of ``webhook`` becomes due (None: nothing pending).

    O(queue): SQLite takes ``next_attempt_at`` from the MIN(id) row of each group.
    """
    rows = store.execute(
        "SELECT MIN(n) FROM (SELECT MIN(id), next_attempt_at AS n FROM outbox "
        "WHERE webhook=? AND state='pending' GROUP BY fingerprint)",
        (webhook,),
    )
    value = rows[0][0] if rows else None
    return None if value is None else from_ts(value)


def _err(error: str) -> str:
    return error[:MAX_ERROR_CHARS]


def mark_delivered(
    store: Store, ids: Iterable[int], now: datetime, note: str | None = None
) -> None:
    """Compare-and-set ``pending`` → ``delivered`` for every id (one transaction)."""
    with store._tx() as conn:
        conn.executemany(
            "UPDATE outbox SET state='delivered', delivered_at=?, attempts=attempts+1, "
            "last_error=? WHERE id=? AND state='pending'",
            [(ts(now), note, i) for i in ids],
        )


def mark_dead(store: Store, ids: Iterable[int], now: datetime, error: str) -> None:
    """``pending`` → ``dead`` (a permanent failure or ``max_age`` reached)."""
    with store._tx() as conn:
        conn.executemany(
            "UPDATE outbox SET state='dead', attempts=attempts+1, last_error=?, "
            "next_attempt_at=? WHERE id=? AND state='pending'",
            [(_err(error), ts(now), i) for i in ids],
        )


def mark_retry(store: Store, ids: Iterable[int], next_attempt_at: datetime, error: str) -> None:
    """Record a transient failure: one more attempt, the next one at ``next_attempt_at``."""
    with store._tx() as conn:
        conn.executemany(
            "UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=? "
            "WHERE id=? AND state='pending'",
            [(_err(error), ts(next_attempt_at), i) for i in ids],
        )


def reschedule(store: Store, ids: Iterable[int], at: datetime) -> None:
    """Set the next attempt of ``ids`` (still pending) to ``at``."""
    with store._tx() as conn:
        conn.executemany(
            "UPDATE outbox SET next_attempt_at=? WHERE id=? AND state='pending'",
            [(ts(at), i) for i in ids],
        )


def hold(store: Store, webhook: str, until: datetime) -> None:
    """Push every pending row of ``webhook`` to at least ``until`` (the path is failing).

    Persisted so that a restart in the middle of an outage keeps backing off.
    """
    store.execute(
        "UPDATE outbox SET next_attempt_at=? "
        "WHERE webhook=? AND state='pending' AND next_attempt_at < ?",
        (ts(until), webhook, ts(until)),
    )


def release(store: Store, webhook: str, now: datetime) -> None:
    """Make every pending row of ``webhook`` due now (the path works again: drain in id order)."""
    store.execute(
        "UPDATE outbox SET next_attempt_at=? "
        "WHERE webhook=? AND state='pending' AND next_attempt_at > ?",
        (ts(now), webhook, ts(now)),
    )


def queue_stats(store: Store, webhook: str) -> QueueStats:
    (depth,) = store.execute(
        "SELECT COUNT(*) FROM outbox WHERE webhook=? AND state='pending'", (webhook,)
    )[0]
    oldest = store.execute(
        "SELECT created_at FROM outbox WHERE webhook=? AND state='pending' ORDER BY id LIMIT 1",
        (webhook,),
    )
    return QueueStats(depth=depth, oldest_created_at=from_ts(oldest[0][0]) if oldest else None)


def firing_snapshots(store: Store, webhook: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(row id, event id, payload) of alerts whose latest notification to ``webhook`` was a firing
    one that the receiver accepted.

    The alertmanager format re-posts these until they resolve (Alertmanager forgets an alert that
    is not refreshed within its ``resolve_timeout``). A fingerprint whose latest row is still
    pending is left to the queue; one whose latest row is dead (refused) is never re-sent.
    """
    latest = store.execute(
        "SELECT MAX(id), status, state FROM outbox WHERE webhook=? GROUP BY fingerprint",
        (webhook,),
    )
    out: list[tuple[int, str, dict[str, Any]]] = []
    for row_id, status, state in sorted(latest):
        if status != "firing" or state != "delivered":
            continue
        (event_id, payload) = store.execute(
            "SELECT event_id, payload FROM outbox WHERE id=?", (row_id,)
        )[0]
        data = json.loads(payload)
        if data.get("notification") != "info":
            out.append((row_id, event_id, data))
    return out


def mark_refused(store: Store, ids: Iterable[int], now: datetime, error: str) -> None:
    """``delivered`` → ``dead``: the receiver refused a re-send of the row (alertmanager)."""
    with store._tx() as conn:
        conn.executemany(
            "UPDATE outbox SET state='dead', last_error=?, next_attempt_at=? "
            "WHERE id=? AND state='delivered'",
            [(_err(error), ts(now), i) for i in ids],
        )


def state_counts(store: Store) -> dict[str, dict[str, int]]:
    """``{webhook: {state: rows}}`` for ``detector status`` and ``/status``."""
    out: dict[str, dict[str, int]] = {}
    for webhook, state, n in store.execute(
        "SELECT webhook, state, COUNT(*) FROM outbox GROUP BY webhook, state"
    ):
        out.setdefault(webhook, {})[state] = n
    return out


def prune(store: Store, before: datetime) -> int:
    """Delete delivered and dead rows created before ``before``; returns how many."""
    with store._tx() as conn:
        cur = conn.execute(
            "DELETE FROM outbox WHERE state IN ('delivered', 'dead') AND created_at < ?",
            (ts(before),),
        )
        return cur.rowcount


@dataclass(frozen=True)
class ListedRow:
    """One row as ``detector outbox`` shows it. ``state``: pending (due, not tried yet), failing
    (tried and retrying, or held with its failing webhook; due at ``next_attempt_at``) or dead."""

    id: int
    webhook: str
    event_id: str
    fingerprint: str
    status: str  # firing | resolved …
    rule: str | None
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None  # None for dead rows
    dead_at: datetime | None  # when it was given up on (dead rows only)
    last_error: str | None


def listing(store: Store, webhook: str | None = None) -> list[ListedRow]:
    """Every pending and dead row (of ``webhook``, or all), by webhook then id."""
    sql = (
        "SELECT id, webhook, event_id, fingerprint, status, payload, state, attempts, "
        "created_at, next_attempt_at, last_error FROM outbox WHERE state IN ('pending', 'dead')"
    )
    params: tuple[Any, ...] = ()
    if webhook is not None:
        sql += " AND webhook=?"
        params = (webhook,)
    out = []
    for row_id, hook, ev, fp, st, payload, stored, tries, created, next_at, err in store.execute(
        sql + " ORDER BY webhook, id", params
    ):
        rule = json.loads(payload).get("rule")
        attempts = tries or 0
        state = stored
        if stored == "pending" and (attempts or err or next_at > created):
            state = "failing"  # tried and retrying, or held with its webhook
        out.append(
            ListedRow(
                id=row_id,
                webhook=hook,
                event_id=ev,
                fingerprint=fp,
                status=st,
                rule=None if rule is None else str(rule),
                state=state,
                attempts=attempts,
                created_at=from_ts(created),
                next_attempt_at=None if state == "dead" else from_ts(next_at),
                dead_at=from_ts(next_at) if state == "dead" else None,  # mark_dead stores it there
                last_error=err,
            )
        )
    return out


@dataclass(frozen=True)
class Requeued:
    requeued: list[tuple[str, str]]  # (webhook, event_id) back in the queue
    superseded: list[tuple[str, str]]  # left dead: a later notification of it was delivered


def requeue_dead(
    store: Store, now: datetime, webhook: str | None = None, event_id: str | None = None
) -> Requeued:
    """Put dead letters back in the queue: pending, due ``now``, attempts 0, error cleared.

    ``created_at`` becomes ``now`` too, so the row gets a full ``max_age`` of retries again (its
    payload keeps the alert's own times). A dead row whose fingerprint had a LATER notification
    delivered to the same webhook stays dead: re-sending an old "firing" after its "resolved" would
    re-open the incident. One transaction; the running agent's worker sees the rows at its next
    re-read (at most 30 s later).
    """
    sql = "SELECT id, webhook, event_id, fingerprint FROM outbox WHERE state='dead'"
    params: list[Any] = []
    if webhook is not None:
        sql += " AND webhook=?"
        params.append(webhook)
    if event_id is not None:
        sql += " AND event_id=?"
        params.append(event_id)
    requeued: list[tuple[str, str]] = []
    superseded: list[tuple[str, str]] = []
    with store._tx() as conn:
        for row_id, hook, ev, fp in list(conn.execute(sql + " ORDER BY id", params)):
            later = conn.execute(
                "SELECT 1 FROM outbox WHERE webhook=? AND fingerprint=? AND id>? "
                "AND state='delivered' LIMIT 1",
                (hook, fp, row_id),
            ).fetchone()
            if later:
                superseded.append((hook, ev))
                continue
            conn.execute(
                "UPDATE outbox SET state='pending', attempts=0, last_error=NULL, "
                "next_attempt_at=?, created_at=? WHERE id=? AND state='dead'",
                (ts(now), ts(now), row_id),
            )
            requeued.append((hook, ev))
    return Requeued(requeued, superseded)
