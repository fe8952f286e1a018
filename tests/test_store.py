"""The state file: migrations are idempotent and a batch commit is all or nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.records import Checkpoint, Commit, OutboxRow
from detector.store.db import SCHEMA_VERSION, Store, StoreError
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


_KEYS = st.sampled_from(["a", "b", "c"])
_COMMITS = st.builds(
    Commit,
    checkpoints=st.lists(
        st.builds(
            Checkpoint,
            source=st.sampled_from(["s1", "s2"]),
            key=_KEYS,
            value=st.fixed_dictionaries({"offset": st.integers(0, 9)}),
            delete=st.booleans(),
        ),
        max_size=3,
    ),
    rule_state=st.dictionaries(
        st.sampled_from(["r1", "r2"]),
        st.dictionaries(_KEYS, st.none() | st.integers(0, 9).map(lambda n: {"n": n})),
        max_size=2,
    ),
    alerts=st.dictionaries(
        _KEYS,
        st.none() | st.integers(0, 9).map(lambda n: {"rule": "r", "status": "firing", "n": n}),
        max_size=3,
    ),
    outbox=st.lists(
        st.builds(
            OutboxRow,
            webhook=st.sampled_from(["w1", "w2"]),
            event_id=st.uuids().map(str),
            fingerprint=_KEYS,
            status=st.just("firing"),
            payload=st.just({}),
            created_at=st.just(at(0)),
        ),
        max_size=2,
    ),
    meta=st.dictionaries(_KEYS, st.integers(0, 9), max_size=2),
)


def _tables(s: Store) -> dict[str, list[tuple[object, ...]]]:
    return {
        t: s.execute(f"SELECT * FROM {t} ORDER BY 1, 2")
        for t in ("checkpoints", "rule_state", "alerts", "outbox", "meta")
    }


@settings(max_examples=60, deadline=None)
@given(commits=st.lists(_COMMITS, min_size=1, max_size=6))
def test_batches_committed_together_leave_what_committing_them_one_by_one_leaves(
    tmp_path_factory: pytest.TempPathFactory, commits: list[Commit]
) -> None:
    """The agent commits the batches waiting in its queue in one transaction (Commit.absorb):
    the state file must end up exactly as after one commit per batch, in order."""
    d = tmp_path_factory.mktemp("absorb")
    one_by_one, together = Store(d / "one.db"), Store(d / "together.db")
    merged = Commit()
    for c in commits:
        one_by_one.commit(c, at(1))
        merged.absorb(c)
    together.commit(merged, at(1))
    assert _tables(together) == _tables(one_by_one)


async def test_async_store_runs_calls_in_order_on_one_thread_and_hands_back_errors(
    tmp_path: Path,
) -> None:
    import asyncio
    import threading

    from detector.store.db import AsyncStore

    db = AsyncStore(Store(tmp_path / "state.db"))
    seen: list[tuple[int, str]] = []

    def note(i: int) -> Callable[[Store], int]:
        def call(s: Store) -> int:
            seen.append((i, threading.current_thread().name))
            return i * 10

        return call

    try:
        results = await asyncio.gather(*(db.run(note(i)) for i in range(50)))
        assert results == [i * 10 for i in range(50)]
        assert [i for i, _ in seen] == list(range(50))  # one writer, in the order asked
        assert {name for _, name in seen} == {"db"}
        assert threading.current_thread().name not in {"db"}

        def boom(s: Store) -> None:
            raise StoreError("disk full")

        with pytest.raises(StoreError, match="disk full"):
            await db.run(boom)
        assert await db.run(note(7)) == 70  # the thread survives a failing call
    finally:
        db.close()
    assert not [t for t in threading.enumerate() if t.name == "db"]


class _LiveAlert:
    """An alert of the live agent's book, as ``Commit.changed`` holds it: mutable, its row
    built by ``Commit.seal``."""

    kind = "rule"

    def __init__(self) -> None:
        self.n = 0

    def to_row(self) -> dict[str, object]:
        return {"rule": "r", "status": "firing", "kind": self.kind, "n": self.n}


_STEPS = st.lists(
    st.lists(st.tuples(_KEYS, st.sampled_from(["change", "delete", "row"])), max_size=4),
    min_size=1,
    max_size=6,
)


@settings(max_examples=80, deadline=None)
@given(steps=_STEPS)
def test_alerts_whose_rows_are_built_once_at_the_write_leave_what_rows_per_batch_leave(
    tmp_path_factory: pytest.TempPathFactory, steps: list[list[tuple[str, str]]]
) -> None:
    """The live agent's batches carry their changed alerts themselves (``Commit.changed``) and
    the rows are built once, when the merged commit is written (``seal``): the state file must
    end up as after one commit per batch with each batch's rows built then. Each batch changes
    alerts (a change puts the alert in ``changed``, as the alert book does), deletes them, or
    carries a row built at once (``alerts``: ``AlertBook.take``, the failing-state-file path)."""
    d = tmp_path_factory.mktemp("seal")
    one_by_one, together = Store(d / "one.db"), Store(d / "together.db")
    book: dict[str, _LiveAlert] = {}
    merged = Commit()
    for ops in steps:
        now, later = Commit(), Commit()  # the same batch: sealed at once, and merged
        for fp, op in ops:
            if op == "delete":
                book.pop(fp, None)
                now.changed[fp] = later.changed[fp] = None
                now.alerts.pop(fp, None)
                later.alerts.pop(fp, None)
                continue
            alert = book.setdefault(fp, _LiveAlert())
            alert.n += 1
            if op == "change":
                now.changed[fp] = later.changed[fp] = alert
                now.alerts.pop(fp, None)
                later.alerts.pop(fp, None)
            else:
                now.alerts[fp] = later.alerts[fp] = alert.to_row()
                now.changed.pop(fp, None)
                later.changed.pop(fp, None)
        now.seal()
        one_by_one.commit(now, at(1))
        merged.absorb(later)
    merged.seal()
    assert not merged.changed
    together.commit(merged, at(1))
    assert _tables(together) == _tables(one_by_one)


def test_a_commit_with_rows_not_built_is_refused_by_the_store(tmp_path: Path) -> None:
    """``seal`` belongs on the thread that owns the alerts: the store thread never builds rows."""
    s = Store(tmp_path / "state.db")
    c = Commit(changed={"a": _LiveAlert()})
    with pytest.raises(RuntimeError, match="seal"):
        s.commit(c, at(1))
    assert s.execute("SELECT * FROM alerts") == []
    c.seal()
    s.commit(c, at(1))
    assert len(s.execute("SELECT * FROM alerts")) == 1
