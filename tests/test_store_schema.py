"""The state file's schema (store/db.py ``MIGRATIONS``, plain SQL) is the one sqlite-utils
writes for the same tables, byte for byte in ``sqlite_master``: state files made by earlier
versions (which created it through sqlite-utils) and by this one are the same, and the running
agent does not import sqlite-utils (4 MB of its memory, with click, pluggy and dateutil)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from detector.store.db import Store


def _reference(db: sqlite_utils.Database) -> None:
    """The schema as the state file's migrations 1 and 2 built it with sqlite-utils."""
    db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db.table("checkpoints").create(
        {"source": str, "key": str, "value": str, "updated_at": float},
        pk=("source", "key"),
        if_not_exists=True,
    )
    db.table("rule_state").create(
        {"rule": str, "key": str, "value": str}, pk=("rule", "key"), if_not_exists=True
    )
    db.table("alerts").create(
        {"fingerprint": str, "rule": str, "status": str, "value": str, "updated_at": float},
        pk="fingerprint",
        if_not_exists=True,
    )
    db.table("outbox").create(
        {
            "id": int,
            "webhook": str,
            "event_id": str,
            "fingerprint": str,
            "status": str,
            "payload": str,
            "created_at": float,
            "next_attempt_at": float,
            "attempts": int,
            "state": str,
            "last_error": str,
            "delivered_at": float,
        },
        pk="id",
        if_not_exists=True,
        defaults={"attempts": 0, "state": "pending"},
    )
    db.table("outbox").create_index(["webhook", "state", "id"], if_not_exists=True)
    db.table("outbox").create_index(["webhook", "event_id"], unique=True, if_not_exists=True)
    db.table("silences").create(
        {"id": str, "value": str, "ends_at": float, "created_at": float},
        pk="id",
        if_not_exists=True,
    )


def _schema(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
    finally:
        conn.close()
    return [(t, n, s) for t, n, s in rows]


def test_the_plain_sql_schema_is_what_sqlite_utils_writes(tmp_path: Path) -> None:
    ref = tmp_path / "ref.db"
    db = sqlite_utils.Database(ref)
    _reference(db)
    db.close()
    ours = tmp_path / "ours.db"
    store = Store(ours)
    store.close()
    got, want = _schema(ours), _schema(ref)
    assert {n for _, n, _ in got} >= {"meta", "checkpoints", "rule_state", "alerts", "outbox"}
    assert got == want


def test_a_state_file_with_the_sqlite_utils_schema_opens_and_takes_a_commit(
    tmp_path: Path,
) -> None:
    """A file whose tables sqlite-utils created (as earlier versions did, schema version 2)
    is taken as it is: no migration runs again, a commit and a read work."""
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    _reference(db)
    db["meta"].insert({"key": "schema_version", "value": "2"})
    db.close()
    before = _schema(path)
    store = Store(path)
    try:
        from detector.records import Checkpoint, Commit

        store.commit(
            Commit(checkpoints=[Checkpoint("app", "1:2", {"offset": 5})]),
            datetime(2026, 6, 9, tzinfo=UTC),
        )
        assert store.load_checkpoints("app") == {"1:2": {"offset": 5}}
    finally:
        store.close()
    assert _schema(path) == before


def test_the_agent_and_its_commands_do_not_import_sqlite_utils(tmp_path: Path) -> None:
    """Opening a state file and committing (what ``detector run`` does) loads no sqlite-utils."""
    code = (
        "import sys; from detector.store.db import Store; "
        f"s = Store({str(tmp_path / 'x.db')!r}); s.close(); "
        "print('sqlite_utils' in sys.modules, 'click' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]
