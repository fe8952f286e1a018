"""The state file (SQLite). Only this package speaks SQL.

``db.Store`` opens the file (WAL), applies migrations, loads state at start-up and commits a batch's
effects in one transaction; ``records`` holds what a commit carries (no SQLite import); ``outbox``
holds the queries of the delivery outbox. Import from the modules themselves.
"""
