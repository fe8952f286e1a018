"""The state file (SQLite). Only this package speaks SQL.

``db.Store`` opens the file (WAL), applies migrations, loads state at start-up and commits a batch's
effects in one transaction. ``outbox.py`` holds the queries of the delivery outbox.
"""

from detector.store.db import AsyncStore, Commit, OutboxRow, Store, StoreError

__all__ = ["AsyncStore", "Commit", "OutboxRow", "Store", "StoreError"]
