"""The bookkeeping between an evaluator's memory and its ``rule_state`` rows in SQLite.

Sits under every evaluator of ``detector.rules``: an evaluator keeps one row per key (an alert
key, a template, a window…) so that a batch rewrites only the rows it touched; the service commits
what ``state_changes()`` returns with the batch, and hands the rows back to ``load_state()`` at the
next start. :class:`KeyedState` does the counting of touched keys and the writing and reading of
rows; what a row holds stays the evaluator's business (its ``encode``/``decode``).
:class:`KeyCap` bounds how many keys an evaluator keeps at all (a rule's ``max_keys``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

from detector.digest import blake2b
from detector.model import AlertKind, RuleConfig
from detector.rules.base import Signal

V = TypeVar("V")
T = TypeVar("T")

META_KEY = "meta"
"""The row that holds an evaluator's one-of-a-kind state (learning progress, the open bucket)."""

_BAD_ROW = (KeyError, TypeError, ValueError)


class KeyedState(Generic[V]):
    """The rows of one family of values, one row per key of ``values`` (named ``prefix + key``).

    Call :attr:`touch` with the key after adding, changing or deleting ``values[key]``; it is the
    touched set's own ``add``, so it costs no more than that on the hot path. :meth:`changes` then
    gives ``{prefix + key: encode(key, value)}`` for every touched key, ``None`` for one no longer
    in ``values`` (its row is deleted), and starts counting afresh. An evaluator that rebuilds all
    its rows as JSON each round instead uses :meth:`sync`, which touches the rows that differ.
    """

    __slots__ = ("encode", "prefix", "touch", "touched", "values")

    def __init__(
        self, values: Mapping[str, V], encode: Callable[[str, V], Any], prefix: str = ""
    ) -> None:
        self.values = values
        self.encode = encode
        self.prefix = prefix
        self.touched: set[str] = set()
        """Never rebound (``touch`` is its ``add``): clear or update it in place."""
        self.touch: Callable[[str], None] = self.touched.add

    def changes(self) -> dict[str, Any | None]:
        """The rows of the keys touched since the last call: ``{row: JSON or None}``."""
        values, encode, prefix = self.values, self.encode, self.prefix
        out: dict[str, Any | None] = {}
        for key in self.touched:
            value = values.get(key)
            out[prefix + key] = None if value is None else encode(key, value)
        self.touched.clear()
        return out

    def sync(self, values: Mapping[str, V]) -> None:
        """Take ``values`` as the new contents, touching every key whose value is not equal to the
        one held before (or is gone)."""
        old = self.values
        self.touched.update(k for k, v in values.items() if old.get(k) != v)
        self.touched.update(k for k in old if k not in values)
        self.values = values

    def rows(self, items: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        """This family's stored rows in ``items`` (all of one rule's rows), as ``(key, JSON)`` with
        the prefix removed."""
        prefix, n = self.prefix, len(self.prefix)
        for row in items:  # by name first: a row of another family is not read (decoded)
            if row.startswith(prefix):
                yield row[n:], items[row]

    def load(
        self,
        items: Mapping[str, Any],
        decode: Callable[[str, Any], T | None],
        *,
        drop_bad: bool = False,
    ) -> list[tuple[str, T]]:
        """This family's rows in ``items``, decoded, in stored order. A row that ``decode`` refuses
        (returns None, or raises ``KeyError``/``TypeError``/``ValueError``: another version's
        format, another rule definition's keys) is left out, and with ``drop_bad`` touched, so the
        next :meth:`changes` deletes it (or rewrites it, if ``values`` holds that key by then).
        Putting the decoded values into ``values`` is the caller's business."""
        out: list[tuple[str, T]] = []
        for key, stored in self.rows(items):
            try:
                value = decode(key, stored)
            except _BAD_ROW:
                value = None
            if value is None:
                if drop_bad:
                    self.touched.add(key)
                continue
            out.append((key, value))
        return out


class _Without(Mapping[str, Any]):
    """The rows of ``items`` whose names do not begin with ``prefix`` (a view, not a copy)."""

    __slots__ = ("_items", "_prefix")

    def __init__(self, items: Mapping[str, Any], prefix: str) -> None:
        self._items, self._prefix = items, prefix

    def __getitem__(self, row: str) -> Any:
        if row.startswith(self._prefix):
            raise KeyError(row)
        return self._items[row]

    def __iter__(self) -> Iterator[str]:
        prefix = self._prefix
        return (row for row in self._items if not row.startswith(prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class SharedKeys(Mapping[str, Any]):
    """A rule's rows, their names given as the equal strings of ``pool`` where it has them (the
    keys of the rule's alerts loaded before): an evaluator that keeps a row's name as its key then
    holds the very string its alert holds, not a second copy of 100,000 keys (memory after a
    restart equals memory before it, issue 20.6)."""

    __slots__ = ("_items", "_pool")

    def __init__(self, items: Mapping[str, Any], pool: Mapping[str, str]) -> None:
        self._items, self._pool = items, pool

    def __getitem__(self, row: str) -> Any:
        return self._items[row]

    def __iter__(self) -> Iterator[str]:
        get = self._pool.get
        return (get(row, row) for row in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, row: object) -> bool:
        return row in self._items


DIGEST_KEY = "\x1dmore"
"""The key of a rule's digest alert: the keys past ``max_keys``, folded into one. Also the name of
the digest's state row (and, with ``/N``, of its bucket rows): no other row begins with ``\x1d``."""

FOLDED_CAP = 10
"""Distinct folded keys are counted up to ``FOLDED_CAP * max_keys`` (then "100,000+ more")."""

BUCKETS = 64
"""The folded keys' hashes are stored in this many rows, so that a batch rewrites the few it
touched, never all of them."""


def _stable_hash(key: str) -> int:
    """A folded key's hash, the same in every process (``hash()`` is salted per process)."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


class KeyCap:
    """A rule's ``max_keys``: how many keys its evaluator keeps apart. A new key past the cap is
    *folded*: the evaluator keeps nothing for it, and :meth:`fold` counts it (distinct keys, by
    a stable hash) into one digest alert per rule ("… and 93,412 more keys"). Once the evaluator
    holds fewer keys than the cap again, :meth:`release` resolves the digest and starts counting
    afresh. :attr:`folded` (the count) is what the agent alert about it says.

    The count is persisted with the rule's rows (:meth:`changes`, :meth:`load`): the digest's row
    ``DIGEST_KEY`` and the hashes in ``BUCKETS`` rows ``DIGEST_KEY/N``, rewritten only when they
    change, so a restart goes on counting exactly (a key folded before is not counted again)."""

    __slots__ = ("dirty", "firing", "legacy", "limit", "rule", "seen")

    def __init__(self, rule: RuleConfig, limit: int | None = None) -> None:
        self.rule = rule
        self.limit = rule.max_keys if limit is None else limit
        self.seen: set[int] = set()
        self.firing = False
        self.legacy = False
        self.dirty: set[int] = set()
        """Buckets changed since the last :meth:`changes` (``-1``: the digest's own row)."""

    @property
    def folded(self) -> int:
        return len(self.seen)

    def note(self, key: str) -> bool:
        """Count a key past the cap; whether it is new to the count."""
        seen = self.seen
        h = _stable_hash(key)
        if h in seen or len(seen) >= FOLDED_CAP * self.limit:
            return False
        seen.add(h)
        self.dirty.add(h % BUCKETS)
        if not self.firing:
            self.firing = True
            self.dirty.add(-1)
        return True

    def fold(self, key: str, at: datetime, kind: AlertKind) -> list[Signal]:
        """A hit of a key past the cap: the digest's fire when the key is new to it."""
        if not self.note(key):
            return []
        n = len(self.seen)
        more = f"{n:,}{'+' if n >= FOLDED_CAP * self.limit else ''}"
        name = self.rule.name
        return [
            Signal(
                rule=name,
                kind=kind,
                key=DIGEST_KEY,
                action="fire",
                at=at,
                summary=f"{name}: … and {more} more keys (max_keys: {self.limit:,})",
                description=(
                    f"Rule {name} keeps {self.limit:,} keys apart (max_keys); matches of "
                    "further keys are counted here, not alerted one by one."
                ),
                count=1,
                evidence={"folded_keys": n, "max_keys": self.limit},
            )
        ]

    def release(self, held: int, at: datetime, kind: AlertKind) -> list[Signal]:
        """The evaluator holds ``held`` keys: below the cap, the digest resolves."""
        if not self.firing or held >= self.limit:
            return []
        n, self.firing = len(self.seen), False
        self.dirty.update(h % BUCKETS for h in self.seen)
        self.dirty.add(-1)
        self.seen = set()
        name = self.rule.name
        happened = f"back below max_keys ({self.limit:,}) after {n:,} more keys"
        return [
            Signal(
                rule=name,
                kind=kind,
                key=DIGEST_KEY,
                action="resolve",
                at=at,
                summary=f"{name}: {happened}",
                happened=happened,
                evidence={"folded_keys": n, "max_keys": self.limit},
            )
        ]

    def changes(self) -> dict[str, Any | None]:
        """The digest's rows changed since the last call (None: deleted)."""
        if not self.dirty:
            return {}
        out: dict[str, Any | None] = {}
        buckets = [b for b in self.dirty if b >= 0]
        if -1 in self.dirty:
            out[DIGEST_KEY] = {"firing": True, "max_keys": self.limit} if self.firing else None
        if buckets:
            held: dict[int, list[int]] = {b: [] for b in buckets}
            for h in self.seen:
                got = held.get(h % BUCKETS)
                if got is not None:
                    got.append(h)
            for b, hashes in held.items():
                out[f"{DIGEST_KEY}/{b}"] = sorted(hashes) if hashes else None
        self.dirty.clear()
        return out

    def load(self, items: Mapping[str, Any]) -> Mapping[str, Any]:
        """Restore the digest from a rule's rows; the other rows (for the evaluator), which
        then calls :meth:`restored`. Those are a view of ``items``: a row is read (decoded,
        for the store's ``StateRows``) only when the evaluator reads it."""
        found = digest = False
        for row in items:
            if not row.startswith(DIGEST_KEY):
                continue
            digest = True
            value = items[row]
            if row == DIGEST_KEY:
                found = True
                self.firing = isinstance(value, Mapping) and bool(value.get("firing"))
            elif isinstance(value, list):
                self.seen.update(h for h in value if isinstance(h, int))
        rest: Mapping[str, Any] = _Without(items, DIGEST_KEY) if digest else items
        self.legacy = not found
        if found and not self.firing and self.seen:  # a half-written digest: start afresh
            self.dirty.update(h % BUCKETS for h in self.seen)
            self.seen = set()
        return rest

    def restored(self, held: int) -> None:
        """The evaluator restored ``held`` keys. Rows of an earlier version have no digest row:
        the digest may be open from before, and is taken as firing at the cap."""
        if self.legacy:
            self.firing = held >= self.limit
