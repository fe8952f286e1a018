"""The state file (SQLite). Only this package speaks SQL.

``db.Store`` opens the file (WAL), applies migrations, loads state at start-up and commits a batch's
effects in one transaction (the records a commit carries live below, in ``detector.records``);
``outbox`` holds the queries of the delivery outbox. Import from the modules themselves.
"""
