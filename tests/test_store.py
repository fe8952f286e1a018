"""The state file: migrations are idempotent and a batch commit is all or nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from detector.sources.base import Checkpoint
from detector.store.db import SCHEMA_VERSION, Store, StoreError
from detector.store.records import Commit, OutboxRow
from tests.helpers import at


def test_migrations_apply_twice_without_change(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    before = s.execute("SELECT sql FROM sqlite_master ORDER BY name")
    s.migrate()
    s.close()
    s2 = Store(tmp_path / "state.db")
    assert s2.schema_version() == SCHEMA_VERSION
    assert s2.execute("SELECT sql FROM sqlite_master ORDER BY name") == before
    assert s2.execute("PRAGMA journal_mode")[0][0] == "wal"


def test_a_batch_commit_is_all_or_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    row = OutboxRow("hook", "e1", "fp", "firing", {"a": 1}, at(0))
    c = Commit(
        checkpoints=[Checkpoint("src", "1:2", {"offset": 10})],
        rule_state={"r": {"k": {"v": 1}}},
        outbox=[row],
    )
    s.commit(c, at(0))
    assert s.load_checkpoints("src") == {"1:2": {"offset": 10}}
    # a failing write in the middle of the transaction leaves nothing behind
    s.conn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    bad = Commit(
        checkpoints=[Checkpoint("src", "1:2", {"offset": 99})],
        rule_state={"r": {"k": {"v": 2}}},
        outbox=[OutboxRow("hook", "e2", "fp", "firing", {}, at(1))],
    )
    with pytest.raises(StoreError):
        s.commit(bad, at(1))
    assert s.load_checkpoints("src") == {"1:2": {"offset": 10}}
    assert s.load_rule_state("r") == {"k": {"v": 1}}


def test_reopening_the_file_restores_everything(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.commit(
        Commit(
            checkpoints=[Checkpoint("src", "k", {"offset": 5})],
            rule_state={"r": {"a": [1, 2]}},
            alerts={"fp": {"rule": "r", "status": "firing", "x": 1}},
            meta={"last_alive_at": "2026-01-01T00:00:00+00:00"},
        ),
        at(0),
    )
    s.close()
    s = Store(tmp_path / "state.db")
    assert s.load_rule_state("r") == {"a": [1, 2]}
    assert s.load_alerts() == [{"rule": "r", "status": "firing", "x": 1}]
    assert s.get_meta("last_alive_at") == "2026-01-01T00:00:00+00:00"
    s.commit(Commit(checkpoints=[Checkpoint("src", "k", {}, delete=True)]), at(1))
    assert s.load_checkpoints("src") == {}


def test_a_file_that_is_not_sqlite_is_a_clear_store_error(tmp_path: Path) -> None:
    p = tmp_path / "state.db"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open state file"):
        Store(p)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path / "state.db")
    s.set_meta({"schema_version": SCHEMA_VERSION + 1})
    s.close()
    with pytest.raises(StoreError, match="newer than this detector"):
        Store(tmp_path / "state.db")
    assert sqlite3.connect(tmp_path / "state.db").execute("SELECT 1").fetchone() == (1,)
