"""SQLite state: schema, migrations, start-up loads and the one-transaction batch commit.

Durability argument: the checkpoint of a batch, the rule state it changed and the alerts it raised
are written in ONE transaction (:meth:`Store.commit`). If the process dies before it, the batch is
read again and produces the same effects; after it, nothing is redone. What survives what, in WAL
mode with ``synchronous=NORMAL``: a crash of the process (SIGKILL, OOM, a bug) loses no committed
transaction (the WAL is written at every commit, and the kernel keeps it); a power loss or a
kernel crash can lose the last transactions since the WAL was last synced (at each WAL
checkpoint, every ~1000 pages), but only whole transactions, and since a read position never
commits without its effects, a lost transaction is simply read again from the log and replayed.
A commit is cheap for that (no fsync per batch): one ``BEGIN IMMEDIATE … COMMIT``, statements
that ``sqlite3`` keeps prepared, and each checkpoint written once however many coalesced batches
moved it.

The store is synchronous and owned by one thread at a time; the service calls it through a
single thread (:class:`AsyncStore`) so that the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import queue
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from detector.records import Commit
from detector.timefmt import iso

SCHEMA_VERSION = 2
T = TypeVar("T")


class StoreError(Exception):
    """The state file cannot be used (corrupt, locked, disk full…)."""


class StoreCorrupt(StoreError):
    """The file is there but is no detector state: empty (0 bytes), or a database without the
    schema (no ``meta`` table). Never taken as a fresh state: that would forget read positions,
    open alerts and the downtime record without a word (``open_store`` moves it aside)."""


def _existing_size(path: Path) -> int | None:
    """The size of the state file before SQLite touches it; None if there is none (a fresh
    state) or it cannot be looked at (SQLite's own error will say why)."""
    if str(path) == ":memory:":
        return None
    try:
        return path.stat().st_size
    except OSError:
        return None


def explain(path: Path) -> str:
    """What SQLite's terse "unable to open database file" usually means, found out: a
    directory that cannot be written (read-only file system, permissions) or a full disk."""
    if str(path) == ":memory:":
        return ""
    folder = path.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    if st.f_flag & os.ST_RDONLY:
        return f" ({folder} is on a read-only file system)"
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f" ({path if path.exists() else folder} is not writable for this user)"
    if st.f_bavail == 0:
        return f" (no space left on the file system of {folder})"
    return ""


def ts(at: datetime) -> float:
    return at.timestamp()


def from_ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def iso_ts(value: float | None) -> str | None:
    return None if value is None else iso(from_ts(value), timespec="seconds")


# The schema as sqlite-utils wrote it (the same text in ``sqlite_master``, byte for byte), in
# plain SQL: a running agent then does not import sqlite-utils (and click, pluggy, dateutil with
# it: 4 MB of the agent's memory) for the two statements a fresh state file needs.
_SCHEMA_1 = (
    """CREATE TABLE IF NOT EXISTS "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT
)""",
    """CREATE TABLE IF NOT EXISTS "checkpoints" (
   "source" TEXT,
   "key" TEXT,
   "value" TEXT,
   "updated_at" REAL,
   PRIMARY KEY ("source", "key")
)""",
    """CREATE TABLE IF NOT EXISTS "rule_state" (
   "rule" TEXT,
   "key" TEXT,
   "value" TEXT,
   PRIMARY KEY ("rule", "key")
)""",
    """CREATE TABLE IF NOT EXISTS "alerts" (
   "fingerprint" TEXT PRIMARY KEY,
   "rule" TEXT,
   "status" TEXT,
   "value" TEXT,
   "updated_at" REAL
)""",
    """CREATE TABLE IF NOT EXISTS "outbox" (
   "id" INTEGER PRIMARY KEY,
   "webhook" TEXT,
   "event_id" TEXT,
   "fingerprint" TEXT,
   "status" TEXT,
   "payload" TEXT,
   "created_at" REAL,
   "next_attempt_at" REAL,
   "attempts" INTEGER DEFAULT 0,
   "state" TEXT DEFAULT 'pending',
   "last_error" TEXT,
   "delivered_at" REAL
)""",
    """CREATE INDEX IF NOT EXISTS "idx_outbox_webhook_state_id"
    ON "outbox" ("webhook", "state", "id")""",
    """CREATE UNIQUE INDEX IF NOT EXISTS "idx_outbox_webhook_event_id"
    ON "outbox" ("webhook", "event_id")""",
)
_SCHEMA_2 = (
    """CREATE TABLE IF NOT EXISTS "silences" (
   "id" TEXT PRIMARY KEY,
   "value" TEXT,
   "ends_at" REAL,
   "created_at" REAL
)""",
)
"""Silences (``detector silence``; store/silences.py): written by the command, read by the
agent."""


def _migrate_1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_1:
        conn.execute(statement)


def _migrate_2(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_2:
        conn.execute(statement)


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


MIGRATIONS = {1: _migrate_1, 2: _migrate_2}


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(self.path) != ":memory:":
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"cannot create the state directory {self.path.parent}: {e}"
                ) from e
        self.on_close: list[Callable[[], None]] = []
        """Run after the connection is closed (``open_store`` releases the agent's lock here)."""
        size = _existing_size(self.path)
        if size == 0:  # checked before connecting: SQLite would drop a -wal beside it
            raise StoreCorrupt(
                f"cannot open state file {self.path}: it is empty (0 bytes), not a detector "
                "state file"
            )
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            self.conn = conn
            if size is not None and "meta" not in _table_names(conn):  # before any write
                raise StoreCorrupt(
                    f"cannot open state file {self.path}: it has no detector schema (no meta "
                    "table), not a detector state file"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self.migrate()
        except (StoreError, sqlite3.DatabaseError) as e:
            if conn is not None:
                conn.close()
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"cannot open state file {self.path}: {e}{explain(self.path)}") from e

    def close(self) -> None:
        self.conn.close()
        for release in self.on_close:
            release()

    # ---------------------------------------------------------------- schema

    def schema_version(self) -> int:
        if "meta" not in _table_names(self.conn):
            return 0
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION. Idempotent: applying twice changes nothing."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"state file {self.path} has schema {current}, newer than this detector "
                f"({SCHEMA_VERSION}); upgrade detector or move the file aside"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx():
                MIGRATIONS[version](self.conn)
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?)",
                    (str(version),),
                )

    # ---------------------------------------------------------------- loads

    def get_meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def load_checkpoints(self, source: str) -> dict[str, dict[str, Any]]:
        rows = self.conn.execute("SELECT key, value FROM checkpoints WHERE source=?", (source,))
        return {k: json.loads(v) for k, v in rows}

    def load_rule_state(self, rule: str) -> StateRows:
        """A rule's rows, decoded one by one as they are read (:class:`StateRows`)."""
        rows = self.conn.execute("SELECT key, value FROM rule_state WHERE rule=?", (rule,))
        return StateRows(dict(rows))

    def rules_with_state(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT rule FROM rule_state")]

    def drop_rule_state(self, rule: str) -> None:
        with self._tx():
            self.conn.execute("DELETE FROM rule_state WHERE rule=?", (rule,))

    def load_alerts(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT value FROM alerts ORDER BY fingerprint")
        return [json.loads(r[0]) for r in rows]

    def load_alert_chunks(self) -> list[bytes]:
        """The alert rows as stored, ``ALERT_CHUNK`` rows per chunk, each chunk their JSON texts
        joined by newlines and compressed: for :func:`alert_rows` to decode one at a time while
        they are loaded. 100,000 open alerts are 80 MB of JSON, held at once by a list of texts
        (and left behind, fragmented, once decoded); a few MB as chunks, each freed once read."""
        cur = self.conn.execute("SELECT value FROM alerts ORDER BY fingerprint")
        out: list[bytes] = []
        while batch := cur.fetchmany(ALERT_CHUNK):
            out.append(zlib.compress("\n".join(r[0] for r in batch).encode(), 1))
        return out

    def load_alert_texts(self) -> list[str]:
        """The alert rows as stored (JSON text), to decode one at a time while they are loaded
        (``map(json.loads, ...)``): a few times less memory at the peak than decoded rows."""
        cur = self.conn.execute("SELECT value FROM alerts ORDER BY fingerprint")
        out: list[str] = []
        while batch := cur.fetchmany(1000):
            out.extend(r[0] for r in batch)
        return out

    # ---------------------------------------------------------------- the batch commit

    def commit(self, c: Commit, now: datetime) -> None:
        """Write everything in ``c`` in one transaction (all or nothing)."""
        if c.empty():
            return
        if c.changed:  # a bug: the rows would be built here, off the thread that owns the alerts
            raise RuntimeError("Commit.seal() must run before the commit is written")
        t = ts(now)
        try:
            with self._tx():
                self._write(c, t)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot write state file {self.path}: {e}{explain(self.path)}") from e

    def _write(self, c: Commit, t: float) -> None:
        ex = self.conn.execute
        # coalesced batches move one file's position several times: only the last one is written
        last = {(cp.source, cp.key): cp for cp in c.checkpoints}
        for cp in last.values():
            if cp.delete:
                ex("DELETE FROM checkpoints WHERE source=? AND key=?", (cp.source, cp.key))
            else:
                ex(
                    "INSERT OR REPLACE INTO checkpoints(source, key, value, updated_at) "
                    "VALUES(?,?,?,?)",
                    (cp.source, cp.key, json.dumps(dict(cp.value)), t),
                )
        for rule, changes in c.rule_state.items():
            for key, value in changes.items():
                if value is None:
                    ex("DELETE FROM rule_state WHERE rule=? AND key=?", (rule, key))
                else:
                    ex(
                        "INSERT OR REPLACE INTO rule_state(rule, key, value) VALUES(?,?,?)",
                        (rule, key, json.dumps(value)),
                    )
        for fp, row in c.alerts.items():
            if row is None:
                ex("DELETE FROM alerts WHERE fingerprint=?", (fp,))
            else:
                ex(
                    "INSERT OR REPLACE INTO alerts(fingerprint, rule, status, value, updated_at) "
                    "VALUES(?,?,?,?,?)",
                    (fp, row["rule"], row["status"], json.dumps(dict(row)), t),
                )
        for o in c.outbox:
            ex(
                "INSERT OR IGNORE INTO outbox(webhook, event_id, fingerprint, status, payload, "
                "created_at, next_attempt_at, attempts, state) VALUES(?,?,?,?,?,?,?,0,'pending')",
                (
                    o.webhook,
                    o.event_id,
                    o.fingerprint,
                    o.status,
                    json.dumps(dict(o.payload)),
                    ts(o.created_at),
                    ts(o.created_at),
                ),
            )
        for key, value in c.meta.items():
            ex("INSERT OR REPLACE INTO meta(key, value) VALUES(?,?)", (key, json.dumps(value)))

    def set_meta(self, items: Mapping[str, Any]) -> None:
        try:
            with self._tx():
                for key, value in items.items():
                    self.conn.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES(?,?)",
                        (key, json.dumps(value)),
                    )
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot write state file {self.path}: {e}{explain(self.path)}") from e

    def snapshot(self) -> dict[str, Any]:
        """Everything ``detector status`` shows, read in one go."""
        q = self.conn.execute
        checkpoints = [
            {"source": src, "key": key, "value": json.loads(v), "updated_at": iso_ts(u)}
            for src, key, v, u in q(
                "SELECT source, key, value, updated_at FROM checkpoints ORDER BY source, key"
            )
        ]
        rules = {rule: n for rule, n in q("SELECT rule, count(*) FROM rule_state GROUP BY rule")}
        open_windows: dict[str, int] = {}
        for rule, value in q("SELECT rule, value FROM rule_state WHERE key LIKE 'w:%'"):
            if json.loads(value).get("status") == "open":
                open_windows[rule] = open_windows.get(rule, 0) + 1
        outbox = [
            {
                "webhook": w,
                "state": st,
                "count": n,
                "oldest_at": iso_ts(oldest),
                "last_error": err,
            }
            for w, st, n, oldest, err in q(
                "SELECT webhook, state, count(*), min(created_at), max(last_error) FROM outbox "
                "GROUP BY webhook, state ORDER BY webhook, state"
            )
        ]
        return {
            "schema_version": self.schema_version(),
            "last_alive_at": self.get_meta("last_alive_at"),
            "checkpoints": checkpoints,
            "rule_state_keys": rules,
            "open_windows": open_windows,
            "agent_status": self.get_meta("agent_status"),
            "alerts": self.load_alerts(),
            "outbox": outbox,
        }

    def _tx(self) -> _Tx:
        return _Tx(self.conn)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """For the store package's own modules (outbox.py)."""
        return list(self.conn.execute(sql, tuple(params)))


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, ROLLBACK on error (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


ALERT_CHUNK = 500
"""Alert rows per chunk of :meth:`Store.load_alert_chunks`."""


def alert_rows(chunks: list[bytes]) -> Iterator[dict[str, Any]]:
    """The decoded alert rows of :meth:`Store.load_alert_chunks`, in stored order. ``chunks`` is
    emptied as they are read (each chunk is freed once its rows are decoded). A JSON text holds
    no raw newline (``json.dumps`` writes it as ``\\n``), so the newlines split the rows."""
    chunks.reverse()
    while chunks:
        texts = zlib.decompress(chunks.pop()).decode().split("\n")
        texts.reverse()
        while texts:
            yield json.loads(texts.pop())


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes  # noqa: PLC0415 (only where the state is loaded)

        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_memory() -> None:
    """Give the heap's free pages back to the system after loading the state (glibc's
    ``malloc_trim``; elsewhere nothing): the load's decoded rows and JSON texts leave free but
    fragmented memory behind, which otherwise stays resident (memory after a restart equals
    memory before it, issue 20.6)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class StateRows(Mapping[str, Any]):
    """One rule's ``rule_state`` rows, kept as their stored JSON texts and decoded when read
    (each read decodes afresh: an evaluator takes what it keeps from a row, and the rest goes).
    An error rule with 100,000 open groups then never holds 100,000 decoded rows at once."""

    __slots__ = ("_texts",)

    def __init__(self, texts: dict[str, str]) -> None:
        self._texts = texts

    def __getitem__(self, key: str) -> Any:
        return json.loads(self._texts[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, key: object) -> bool:
        return key in self._texts

    def __repr__(self) -> str:
        return f"StateRows({dict(self.items())!r})"


class AsyncStore:
    """Runs store calls on one dedicated thread, so the event loop never waits on disk.

    ``await db.run(lambda s: s.load_alerts())``. All writes go through here: one writer, in the
    order the calls were made. A call is two hand-overs (a ``SimpleQueue`` to the thread, one
    ``call_soon_threadsafe`` back), without an executor's futures and locks around them: the
    live agent makes one per batch it commits. A call whose caller was cancelled before the
    thread took it is skipped, as an executor's would be.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[[Store], T]) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="db", daemon=True)
            self._thread.start()
        self._calls.put((loop, fut, fn))
        return await fut

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, fut, fn = call
            if fut.cancelled():  # a benign race: at worst the call runs, as it was asked to
                continue
            try:
                result = fn(self.store)
            except BaseException as e:  # handed to the caller, whatever it is
                with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                    loop.call_soon_threadsafe(_fail, fut, e)
                continue
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut, result)

    def stop(self) -> None:
        """Let the calls made so far finish, then end the thread (the store stays open)."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.store.close()


_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[Store], Any]]


def _resolve(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)
