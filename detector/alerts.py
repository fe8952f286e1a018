"""Alerts: the lifecycle firing → repeat → resolved, and the notifications it produces.

Sits between the rule evaluators and the store. Evaluators emit :class:`~detector.rules.base.Signal`
s ("key K of rule R is firing / resolved / worth an info"); the :class:`AlertBook` keeps one
:class:`Alert` per fingerprint (rule + key) and decides what a person is told:

1. ``fire`` on a key with no open alert opens one and queues a ``firing`` notification;
2. ``fire`` on an open alert only raises its count, moves last_seen and keeps up to 5 samples
   (deduplication: a flood of matches is one alert);
3. while firing, a ``repeat`` notification goes out every ``rule.repeat`` (scheduled, not polled);
4. ``resolve`` closes the alert and queues a ``resolved`` notification whose summary says what
   happened: the evaluator's ``"<rule> <key>: <what happened>"``, or, for a rule with its own
   ``summary:`` template, ``"<the alert's summary> — <what happened>"``;
5. ``info`` queues a one-off notification that opens nothing;
6. while a silence or maintenance window mutes an alert (``muter``, see ``silences.py``), it is
   recorded as usual but its notifications are held: the alert remembers the one it is owed
   (``owed``) and why it is muted (``muted``, shown by ``detector status``); when the mute lifts,
   the owed notification goes out (a resolve whose firing was never sent is dropped).

A rule's timing keys change steps 1 and 4 (agent alerts have their own grace, ``problems.py``):

- ``for: D``: the first ``fire`` opens the alert as ``pending``, with no notification; it fires
  (and notifies) only if it is still open D after that fire. A ``resolve`` before then drops it
  without a word. Evaluators resolve when the condition is over (an error rule after
  ``resolve_after`` without a match), so "holds" means "the alert stays open" for every kind;
- ``keep_firing_for: D``: a ``resolve`` only starts a countdown; the alert stays firing and
  resolves (and notifies) D later, unless a ``fire`` comes first, which cancels the countdown and
  sends nothing;
- ``flap: {changes: K, within: T}``: once the alert's notified state changed more than K times
  within T, the change that crossed K sends one ``flapping`` notice instead, later changes send
  nothing (nor do repeats), and when it has not changed for T one ``settled`` notice tells the
  state it settled in.

These deadlines are kept on the alert, so they survive a restart with it, and are run by ``due``
like the repeats.

A resolved alert is kept ``RESOLVED_KEEP`` (its flap history, ``detector status``), and at most
``MAX_RESOLVED`` of them: past that the longest resolved is forgotten at once (its row deleted),
unless it still owes a notice. Step 2 is the hot path (every hit of a firing rule): ``apply`` does
it inline, without ``_fire``.

Every notification becomes one outbox row per webhook the alert was routed to when it opened
(``routing.py``: a rule's own ``notify:``, else ``routes:``, else the default), with an event id
that is stable across delivery retries (it is stored with the row, in the same transaction as the
batch that caused it). Nothing here does I/O; ``take()`` hands the changes to the store.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

from detector.digest import sha256
from detector.model import AlertKind, FlapSpec, RouteConfig, RuleConfig, Severity
from detector.records import OutboxRow
from detector.routing import route, with_source
from detector.rules.base import Signal
from detector.schedule import DeadlineHeap, KeyedDeadlines
from detector.silences import Muter
from detector.timefmt import format_duration, iso_or_none, parse_iso_or_none

T = TypeVar("T")

MAX_SAMPLES = 5
MAX_SAMPLE_CHARS = 2000
AGENT_REPEAT = timedelta(hours=4)
RESOLVED_KEEP = timedelta(days=7)
PRUNE_EVERY = timedelta(hours=1)
MAX_RESOLVED = 10_000
"""The most resolved alerts kept (in memory and in the state file), whatever the keys seen: past
it the longest resolved is forgotten at once, as if its week were over. One that still owes a
notice (a resolved notice held by a silence, a ``settled`` one to come) is kept until then."""


def clip_sample(text: str, limit: int = MAX_SAMPLE_CHARS) -> str:
    """A sample as stored: a line is cut at ``limit`` characters; a longer event of several
    lines (``multiline:``) keeps its first and its last lines (a traceback's exception is at its
    end) with a marker saying how many lines were left out between them."""
    if len(text) <= limit:
        return text
    if "\n" not in text:
        return text[:limit]
    room = limit - 40  # the marker
    head = text[: room // 2].rpartition("\n")[0] or text[: room // 2]
    tail = text[len(text) - room // 2 :].partition("\n")[2] or text[len(text) - room // 2 :]
    left = text.count("\n") - head.count("\n") - tail.count("\n") - 1
    if left <= 0:  # a long line cut in its middle (docker's joined 16 KiB pieces)
        cut = len(text) - len(head) - len(tail)
        return f"{head}\n… [{cut} characters left out] …\n{tail}"
    return f"{head}\n… [{left} lines left out] …\n{tail}"


RESOLVED_SEP = " — "
"""Between a rule's own (rendered) summary and what happened, in a resolved notice."""


@functools.lru_cache(maxsize=4096)  # the keys firing now; 65,536 entries held 12 MB
def fingerprint(rule: str, key: str) -> str:
    if not key:  # a rule's one alert: asked for on every signal of it (``AlertBook.apply``)
        got = _ONE_ALERT.get(rule)
        if got is None:
            got = _ONE_ALERT[rule] = _fingerprint(rule, key)
        return got
    return _fingerprint(rule, key)


def _fingerprint(rule: str, key: str) -> str:
    return sha256(f"{rule}\x00{key}".encode()).hexdigest()[:16]


_ONE_ALERT: dict[str, str] = {}
"""The fingerprint of each rule's key '' (one entry per rule name ever seen: a handful)."""


_KEY_SEP = "\x1f"
"""``rules.common.KEY_SEP``: between the ``name=value`` fields of an alert key."""

NO_EVIDENCE: Mapping[str, Any] = MappingProxyType({})
"""The evidence of an alert that has none (most): one shared, read-only empty mapping instead of
an empty dict per alert."""


class LabelLayout:
    """What the labels of many alerts share: their names in order, and the values that are not
    read from the alert's key (``None`` where they are: ``own`` says which key field goes where).
    Kept once per distinct layout by the alert book (``AlertBook._layouts``)."""

    __slots__ = ("names", "own", "values")

    def __init__(
        self, names: tuple[str, ...], values: tuple[str | None, ...], own: tuple[int, ...]
    ) -> None:
        self.names, self.values, self.own = names, values, own


class KeyLabels(Mapping[str, str]):
    """An alert's labels, rebuilt on each read from its key (``ip=203.0.113.7``) and a shared
    :class:`LabelLayout`: 48 bytes per alert instead of a dict of 6 to 10 labels (a few hundred
    bytes, times 100,000 open alerts; issue 20.6). Only made where the rebuilt labels are the
    labels, in the same order (:func:`compact_labels`); read-only, as an alert's labels are."""

    __slots__ = ("_key", "_layout")

    def __init__(self, layout: LabelLayout, key: str) -> None:
        self._layout, self._key = layout, key

    def _dict(self) -> dict[str, str]:
        layout = self._layout
        values = list(layout.values)
        if layout.own:
            names = layout.names
            for i, part in zip(layout.own, self._key.split(_KEY_SEP), strict=True):
                values[i] = part[len(names[i]) + 1 :]
        return dict(zip(layout.names, values, strict=True))  # type: ignore[arg-type]

    def __getitem__(self, name: str) -> str:
        return self._dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout.names)

    def __len__(self) -> int:
        return len(self._layout.names)

    def __contains__(self, name: object) -> bool:
        return name in self._layout.names

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyLabels):
            return self._dict() == other._dict()
        return self._dict() == other if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._dict())


MAX_LAYOUTS = 4096
"""The most distinct label layouts an alert book keeps; past them an alert keeps a dict (labels
that vary beyond the key, e.g. a captured user beside a ``group_by: [ip]``, make a layout per
alert, and are not worth sharing)."""


def compact_labels(
    labels: Mapping[str, str], key: str, layouts: dict[Any, LabelLayout]
) -> Mapping[str, str]:
    """``labels`` as a :class:`KeyLabels` if the key's fields and a layout (shared through
    ``layouts``) give exactly them back, in their order; else ``labels`` itself."""
    if isinstance(labels, KeyLabels) or not labels:
        return labels
    names = tuple(labels)
    position = {n: i for i, n in enumerate(names)}
    values: list[str | None] = list(labels.values())
    own: list[int] = []
    if key:
        for part in key.split(_KEY_SEP):
            name, eq, value = part.partition("=")
            i = position.get(name)
            if not eq or i is None or values[i] is None or values[i] != value:
                return labels
            values[i] = None
            own.append(i)
    memo_key = (names, tuple(values), tuple(own))
    layout = layouts.get(memo_key)
    if layout is None:
        if len(layouts) >= MAX_LAYOUTS:
            return labels
        layout = layouts[memo_key] = LabelLayout(names, memo_key[1], memo_key[2])
    made = KeyLabels(layout, key)
    got = made._dict()
    if list(got.items()) != list(labels.items()) or not all(type(v) is str for v in got.values()):
        return labels
    return made


class _Shared(Generic[T]):
    """An alert field that the alerts of one rule (and routing) share: read from the alert's
    ``_base`` tuple, one tuple per distinct combination (``_share``), not 8 bytes per field and
    alert. Set (never, in practice) by making the alert its own tuple."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    @overload
    def __get__(self, obj: None, owner: Any) -> _Shared[T]: ...
    @overload
    def __get__(self, obj: Alert, owner: Any) -> T: ...
    def __get__(self, obj: Alert | None, owner: Any) -> T | _Shared[T]:
        if obj is None:
            return self
        value: T = obj._base[self.index]
        return value

    def __set__(self, obj: Alert, value: T) -> None:
        base, i = obj._base, self.index
        obj._base = _share((*base[:i], value, *base[i + 1 :]))


class _Rare(Generic[T]):
    """An alert field that most alerts leave at its default (the timing keys' deadlines, a mute,
    the flap history, when it resolved): kept in the alert's ``_rare`` list, made only when one
    of them is set (issue 20.6: 8 bytes per field and open alert otherwise)."""

    __slots__ = ("default", "index")

    def __init__(self, index: int, default: T) -> None:
        self.index, self.default = index, default

    @overload
    def __get__(self, obj: None, owner: Any) -> _Rare[T]: ...
    @overload
    def __get__(self, obj: Alert, owner: Any) -> T: ...
    def __get__(self, obj: Alert | None, owner: Any) -> T | _Rare[T]:
        if obj is None:
            return self
        rare = obj._rare
        value: T = self.default if rare is None else rare[self.index]
        return value

    def __set__(self, obj: Alert, value: T) -> None:
        rare = obj._rare
        if rare is None:
            if value is self.default or value == self.default:
                return
            rare = obj._rare = list(_RARE_DEFAULTS)
        rare[self.index] = value


_BASES: dict[tuple[Any, ...], tuple[Any, ...]] = {}
MAX_BASES = 4096
"""The most distinct ``_base`` tuples shared (past them an alert keeps its own)."""


def _share(base: tuple[Any, ...]) -> tuple[Any, ...]:
    got = _BASES.get(base)
    if got is None:
        if len(_BASES) >= MAX_BASES:
            return base
        got = _BASES[base] = base
    return got


_NO_SAMPLES: tuple[str, ...] = ()


class Alert:
    """One alert (rule + key), open or recently resolved.

    Laid out for 100,000 open alerts (issue 20.6): the fields its rule's alerts share are one
    shared tuple (``_Shared``), the rarely set ones a list made when one is set (``_Rare``); its
    labels are its key and a shared :class:`LabelLayout`; one sample is held as the string
    itself, a list only from the second; and a summary that is the error rule's default for its
    first sample (``"<rule>: <sample[:200]>"``) is not kept but rebuilt when read. The public
    fields read and compare as a dataclass's did (``FIELDS``)."""

    __slots__ = (
        "_base",
        "_labels",
        "_rare",
        "_samples",
        "_summary",
        "count",
        "description",
        "evidence",
        "fingerprint",
        "first_seen_at",
        "key",
        "last_notified_at",
        "last_seen_at",
        "repeat_at",
        "status",
    )

    rule: _Shared[str] = _Shared(0)
    kind: _Shared[AlertKind] = _Shared(1)
    severity: _Shared[Severity] = _Shared(2)
    owner: _Shared[str | None] = _Shared(3)
    runbook: _Shared[str | None] = _Shared(4)
    host: _Shared[str] = _Shared(5)
    source: _Shared[str | None] = _Shared(6)
    notify: _Shared[tuple[str, ...]] = _Shared(7)
    resolved_at: _Rare[datetime | None] = _Rare(0, None)
    muted: _Rare[dict[str, Any] | None] = _Rare(1, None)
    owed: _Rare[str | None] = _Rare(2, None)
    """The notification held back by a mute: firing | repeat | resolved."""
    pending_until: _Rare[datetime | None] = _Rare(3, None)
    """``for:``: while pending, when it fires if still open."""
    clearing_until: _Rare[datetime | None] = _Rare(4, None)
    """``keep_firing_for:``: the condition cleared; when the alert resolves unless it fires."""
    clearing_summary: _Rare[str | None] = _Rare(5, None)
    """The resolved notice's summary, kept for ``clearing_until``."""
    changes: _Rare[tuple[datetime, ...]] = _Rare(6, ())
    """``flap:``: when its notified state changed, within the flap window."""
    flapping_since: _Rare[datetime | None] = _Rare(7, None)
    flap_changes: _Rare[int] = _Rare(8, 0)
    """Changes since it started flapping."""

    def __init__(
        self,
        *,
        fingerprint: str,
        rule: str,
        kind: AlertKind,
        key: str,
        status: str,  # pending (for:) | firing | resolved
        severity: Severity,
        summary: str,
        description: str,
        labels: Mapping[str, str],
        owner: str | None,
        runbook: str | None,
        host: str,
        source: str | None,
        first_seen_at: datetime,
        last_seen_at: datetime,
        resolved_at: datetime | None = None,
        count: int = 0,
        samples: Iterable[str] = (),
        evidence: Mapping[str, Any] = NO_EVIDENCE,
        notify: tuple[str, ...] = (),
        last_notified_at: datetime | None = None,
        muted: dict[str, Any] | None = None,
        owed: str | None = None,
        pending_until: datetime | None = None,
        clearing_until: datetime | None = None,
        clearing_summary: str | None = None,
        changes: tuple[datetime, ...] = (),
        flapping_since: datetime | None = None,
        flap_changes: int = 0,
    ) -> None:
        self.fingerprint, self.key, self.status = fingerprint, key, status
        self._base = _share((rule, kind, severity, owner, runbook, host, source, notify))
        self._summary: str | None = summary
        self.description = description
        self.labels = labels
        self.first_seen_at, self.last_seen_at = first_seen_at, last_seen_at
        self.count = count
        self.samples = samples
        self.evidence: Mapping[str, Any] = evidence
        """Read-only once given (``NO_EVIDENCE``, or a signal's copy): updated by replacing it."""
        self.last_notified_at = last_notified_at
        self.repeat_at: datetime | None = None
        """When its next repeat is due, as scheduled (``AlertBook._repeats``); not stored, not
        compared."""
        self._rare: list[Any] | None = None
        rare = (
            resolved_at,
            muted,
            owed,
            pending_until,
            clearing_until,
            clearing_summary,
            changes,
            flapping_since,
            flap_changes,
        )
        if rare != _RARE_DEFAULTS:
            self._rare = list(rare)

    @property
    def summary(self) -> str:
        summary = self._summary
        if summary is None:  # the default one of its first sample (``derive_summary``)
            return f"{self._base[0]}: {self.first_sample()[:200]}"
        return summary

    @summary.setter
    def summary(self, value: str) -> None:
        self._summary = value

    def derive_summary(self) -> None:
        """Keep no summary of its own if it is the error rule's default for its first sample
        (``"<rule>: <sample[:200]>"``, as ``MatchEvaluator`` makes it): it is rebuilt when
        read, exactly (checked here). Samples are only ever added, so the first stays."""
        summary = self._summary
        if summary is not None and self._samples is not _NO_SAMPLES:
            first = self.first_sample()
            rule = self._base[0]
            if (
                len(summary) == len(rule) + 2 + min(len(first), 200)
                and summary == f"{rule}: {first[:200]}"
            ):
                self._summary = None

    @property
    def labels(self) -> Mapping[str, str]:
        """A dict, or (most alerts) a :class:`KeyLabels` rebuilt from the key: read-only."""
        labels = self._labels
        if type(labels) is LabelLayout:
            return KeyLabels(labels, self.key)
        return labels  # type: ignore[return-value]

    @labels.setter
    def labels(self, value: Mapping[str, str]) -> None:
        if type(value) is KeyLabels and value._key == self.key:
            self._labels: LabelLayout | Mapping[str, str] = value._layout
        else:
            self._labels = value

    @property
    def samples(self) -> list[str]:
        """Up to ``MAX_SAMPLES`` sample lines, first seen first (a copy: add with
        ``add_sample``)."""
        samples = self._samples
        if type(samples) is str:
            return [samples]
        return list(samples)

    @samples.setter
    def samples(self, value: Iterable[str]) -> None:
        got = list(value)
        self._samples: str | list[str] | tuple[str, ...] = (
            got if len(got) > 1 else got[0] if got else _NO_SAMPLES
        )

    def first_sample(self) -> str:
        samples = self._samples
        return samples if type(samples) is str else samples[0]

    def add_sample(self, text: str) -> None:
        """Keep ``text`` (clipped) as a sample if there are fewer than ``MAX_SAMPLES``."""
        samples = self._samples
        if type(samples) is list:
            if len(samples) < MAX_SAMPLES:
                samples.append(clip_sample(text))
        elif type(samples) is str:  # one so far (maybe an empty line)
            self._samples = [samples, clip_sample(text)]
        else:
            self._samples = clip_sample(text)

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Alert):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "Alert(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in FIELDS) + ")"

    def to_row(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: that deep-copies every value and was the largest
        # single cost of a replay with few hits (it runs for every alert a batch changes).
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "kind": self.kind,
            "key": self.key,
            "status": self.status,
            "severity": self.severity,
            "summary": self.summary,
            "description": self.description,
            "labels": dict(self.labels),
            "owner": self.owner,
            "runbook": self.runbook,
            "host": self.host,
            "source": self.source,
            "first_seen_at": iso_or_none(self.first_seen_at, timespec="milliseconds", zulu=True),
            "last_seen_at": iso_or_none(self.last_seen_at, timespec="milliseconds", zulu=True),
            "resolved_at": iso_or_none(self.resolved_at, timespec="milliseconds", zulu=True),
            "count": self.count,
            "samples": list(self.samples),
            "evidence": copy.deepcopy(self.evidence) if self.evidence else {},
            "notify": list(self.notify),
            "last_notified_at": iso_or_none(
                self.last_notified_at, timespec="milliseconds", zulu=True
            ),
            "muted": dict(self.muted) if self.muted else None,
            "owed": self.owed,
            **{
                name: iso_or_none(getattr(self, name), timespec="milliseconds", zulu=True)
                for name in _TIMING_FIELDS
            },
            "clearing_summary": self.clearing_summary,
            "changes": [iso_or_none(t, timespec="milliseconds", zulu=True) for t in self.changes],
            "flap_changes": self.flap_changes,
        }

    @staticmethod
    def from_row(row: Mapping[str, Any], shared: dict[Any, Any] | None = None) -> Alert:
        # The strings every alert of a rule shares (its rule, host, kind, label names…) are
        # interned: loaded from JSON, each row would hold its own copies (memory after a restart
        # equals memory before it, issue 20.6). Label values and times, shared by some alerts
        # only (a label of the rule's, the time of one read), are shared through ``shared``, a
        # memo the caller keeps over the rows it loads (interned, 100,000 distinct ``ip``
        # values would stay in the interpreter's table).
        memo: dict[Any, Any] = {} if shared is None else shared
        data: dict[str, Any] = {
            k: sys.intern(v) if k in _SHARED and isinstance(v, str) else v for k, v in row.items()
        }
        labels = data.get("labels")
        if isinstance(labels, Mapping):
            loaded = {
                sys.intern(k): memo.setdefault(v, v) if isinstance(v, str) else v
                for k, v in labels.items()
            }
            key = data.get("key")
            layouts = memo.setdefault(_LAYOUTS, {})
            data["labels"] = (
                loaded if not isinstance(key, str) else compact_labels(loaded, key, layouts)
            )
        if not data.get("evidence"):
            data["evidence"] = NO_EVIDENCE
        for name in ("first_seen_at", "last_seen_at", "resolved_at", "last_notified_at"):
            data[name] = _parse_time(data.get(name), memo)
        for name in _TIMING_FIELDS:
            data[name] = _parse_time(data.get(name), memo)
        data["changes"] = tuple(t for t in map(parse_iso_or_none, data.get("changes") or ()) if t)
        notify = tuple(sys.intern(w) for w in data.get("notify") or ())
        data["notify"] = memo.setdefault(("notify", notify), notify)  # one tuple per routing
        known = set(FIELDS)
        alert = Alert(**{k: v for k, v in data.items() if k in known})
        alert.derive_summary()
        return alert

    def payload(self, notification: str, event_id: str, now: datetime) -> dict[str, Any]:
        """The snapshot stored in the outbox and rendered by every delivery format."""
        return {
            "event_id": event_id,
            "fingerprint": self.fingerprint,
            "notification": notification,
            "status": self.status,
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "description": self.description,
            "labels": dict(self.labels),
            "owner": self.owner,
            "runbook": self.runbook,
            "host": self.host,
            "source": self.source,
            "first_seen_at": iso_or_none(self.first_seen_at, timespec="milliseconds", zulu=True),
            "last_seen_at": iso_or_none(self.last_seen_at, timespec="milliseconds", zulu=True),
            "resolved_at": iso_or_none(self.resolved_at, timespec="milliseconds", zulu=True),
            "count": self.count,
            "samples": list(self.samples),
            "evidence": dict(self.evidence),
            "created_at": iso_or_none(now, timespec="milliseconds", zulu=True),
        }


def _parse_time(value: object, memo: dict[Any, Any]) -> datetime | None:
    """``parse_iso_or_none``, one datetime per distinct text in ``memo``."""
    if not isinstance(value, str) or not value:
        return None
    got = memo.get(("t", value))
    if got is None:
        got = memo[("t", value)] = parse_iso_or_none(value)
    return got


_OPEN = frozenset(("firing", "pending"))
_LAYOUTS = ("layouts",)
"""Where ``Alert.from_row``'s memo keeps the label layouts (no label value or time is a tuple)."""


def _laid_out(kind: type[_Shared[Any]] | type[_Rare[Any]]) -> tuple[str, ...]:
    """The names of ``Alert``'s fields held in ``_base`` (``_Shared``) or ``_rare``
    (``_Rare``), in the order of their indices (which must run 0, 1, …)."""
    found = sorted((d.index, name) for name, d in vars(Alert).items() if isinstance(d, kind))
    if [i for i, _ in found] != list(range(len(found))):
        raise AssertionError(f"Alert's {kind.__name__} indices are not 0..n-1: {found}")
    return tuple(name for _, name in found)


FIELDS: tuple[str, ...] = Alert.__init__.__code__.co_varnames[
    1 : 1 + Alert.__init__.__code__.co_kwonlyargcount
]
"""An alert's fields, in the order of its constructor's (keyword-only) parameters: derived, so
that the constructor, ``to_row``/``from_row``, ``==`` and ``repr`` cannot disagree."""
_BASE_FIELDS = _laid_out(_Shared)
"""The fields in an alert's shared ``_base`` tuple; ``Alert.__init__`` builds it in this
order (tests/test_alerts_layout.py sets each field alone and reads it back)."""
_RARE_FIELDS = _laid_out(_Rare)
"""The fields in an alert's ``_rare`` list, in its order (``__init__`` builds it so too)."""
_RARE_DEFAULTS: tuple[Any, ...] = tuple(getattr(Alert, name).default for name in _RARE_FIELDS)
_CLEARING = Alert.clearing_until.index


_TIMING_FIELDS = ("pending_until", "clearing_until", "flapping_since")
_SHARED = frozenset(
    ("rule", "kind", "status", "severity", "owner", "runbook", "host", "source", "description")
)
"""Fields whose values many alerts share: interned when loaded."""


class AlertBook:
    """All open (and recently resolved) alerts, and the notifications they owe."""

    def __init__(
        self,
        host: str,
        rules: Mapping[str, RuleConfig],
        webhooks: Iterable[str],
        fallback: Iterable[str] = (),
        routes: Iterable[RouteConfig] = (),
    ) -> None:
        self.host = host
        self.alerts: dict[str, Alert] = {}
        self._repeats = KeyedDeadlines(self._repeat_of)
        """The fingerprints by when their next repeat is due (each alert's ``repeat_at``)."""
        self._repeat_at: dict[tuple[datetime, timedelta], datetime] = {}
        """Recent ``last_notified_at + repeat``, so that alerts notified together share one."""
        self._timers = DeadlineHeap()  # fingerprint -> its next for:/keep_firing_for:/flap time
        self._pruned_at: datetime | None = None
        self.max_resolved = MAX_RESOLVED
        self._resolved: OrderedDict[str, None] = OrderedDict()
        """The resolved alerts' fingerprints, longest resolved first (``MAX_RESOLVED``)."""
        self._layouts: dict[Any, LabelLayout] = {}
        """The label layouts the alerts share (``compact_labels``)."""
        self.loaded_keys: dict[str, dict[str, str]] = {}
        """Rule → its loaded alerts' keys (each its own value), for the evaluators to hold the
        same strings as they load (``rules.state.SharedKeys``); emptied by the caller then."""
        self._changed: dict[str, Alert | None] = {}
        self._outbox: list[OutboxRow] = []
        self.record: Callable[[dict[str, Any], str], None] | None = None
        """If set, called with every notification's payload and its alert's key too
        (``detector test``)."""
        self.muter: Muter | None = None
        """Silences and maintenance windows (set by the pipeline); None: nothing is muted."""
        self._mute_at: datetime | None = None
        self.applies = 0
        """Calls of ``apply`` so far: an evaluator that returned signals (still waiting to be
        applied) tells by it when they have been (``ThresholdEvaluator``'s ``fire_open``)."""
        self.fast = True
        """Whether ``apply`` takes its inline path for a fire on an open alert (a test turns it
        off, to compare it with ``_fire``)."""
        self.configure(rules, webhooks, fallback, routes)

    def configure(
        self,
        rules: Mapping[str, RuleConfig],
        webhooks: Iterable[str],
        fallback: Iterable[str],
        routes: Iterable[RouteConfig] = (),
    ) -> None:
        """(Re)bind to a config. Alerts of rules that no longer exist are left to the caller.
        Open alerts keep the webhooks they were routed to."""
        self.rules = dict(rules)
        self.webhooks = tuple(sorted(webhooks))
        self.fallback = tuple(fallback) or self.webhooks
        self.routes = tuple(routes)
        for fp, alert in self.alerts.items():
            self._schedule_repeat(fp, alert)
            self._schedule_timer(fp, alert)

    # ---------------------------------------------------------------- persistence

    def load(self, rows: Iterable[Mapping[str, Any]]) -> None:
        shared: dict[Any, Any] = {_LAYOUTS: self._layouts}  # what the rows share, once
        for row in rows:
            alert = Alert.from_row(row, shared)
            self.alerts[alert.fingerprint] = alert
            self.loaded_keys.setdefault(alert.rule, {})[alert.key] = alert.key
            self._schedule_repeat(alert.fingerprint, alert)
            self._schedule_timer(alert.fingerprint, alert)
        resolved = [a for a in self.alerts.values() if a.status == "resolved"]
        resolved.sort(key=lambda a: a.resolved_at or a.last_seen_at)
        self._resolved = OrderedDict.fromkeys(a.fingerprint for a in resolved)
        self._bound_resolved()

    def take(self) -> tuple[dict[str, Mapping[str, Any] | None], list[OutboxRow]]:
        """Changed alert rows and new outbox rows since the last call (for ``Store.commit``)."""
        rows: dict[str, Mapping[str, Any] | None] = {
            fp: (a.to_row() if a is not None else None) for fp, a in self._changed.items()
        }
        outbox = self._outbox
        self._changed, self._outbox = {}, []
        return rows, outbox

    def take_alerts(self) -> tuple[dict[str, Alert | None], list[OutboxRow]]:
        """As :meth:`take`, with the changed alerts themselves, not their rows (the live agent's
        commits build them once, when written: ``Commit.seal``)."""
        changed, outbox = self._changed, self._outbox
        self._changed, self._outbox = {}, []
        return changed, outbox

    def drop_changes(self) -> None:
        """Forget the changes ``take`` would return, without building their rows (a replay)."""
        self._changed.clear()
        self._outbox.clear()

    # ---------------------------------------------------------------- signals

    def apply(self, signals: Iterable[Signal], now: datetime | None) -> None:
        """``now`` None: each notification is stamped with its signal's time (a replay's
        simulated clock)."""
        self.applies += 1
        alerts, changed, fast = self.alerts, self._changed, self.fast
        for s in signals:
            at = s.at if now is None else now
            if s.action == "fire":
                fp = fingerprint(s.rule, s.key)
                alert = alerts.get(fp)
                if (
                    fast
                    and alert is not None
                    and ((rare := alert._rare) is None or rare[_CLEARING] is None)
                    and not s.renotify
                    and alert.status in _OPEN
                ):
                    # ``_fire`` on an open alert (the common case: every hit of a firing rule),
                    # inline: deduplicated, nothing told
                    if s.count > 0:
                        alert.count += s.count
                    alert.last_seen_at = max(alert.last_seen_at, s.at)
                    if s.summary:
                        alert._summary = s.summary
                    if s.description:
                        alert.description = s.description
                    if s.evidence and not alert.evidence.items() >= s.evidence.items():
                        alert.evidence = {**alert.evidence, **s.evidence}  # else: no change
                    if s.sample is not None:
                        samples = alert._samples
                        if type(samples) is not list:
                            alert.add_sample(s.sample)
                        elif len(samples) < MAX_SAMPLES:
                            samples.append(clip_sample(s.sample))
                    changed[fp] = alert
                    continue
                self._fire(s, at)
            elif s.action == "resolve":
                self._resolve(s.rule, s.key, s.at, at, s)
            else:
                self._info(s, at)

    def fire_open_of(self, fp: str) -> Callable[[datetime, str, str], bool]:
        """``fire_open(at, summary, sample)``: ``apply([Signal(fire, at=at, summary=summary,
        sample=sample)])`` (count 1, no description, evidence or labels to add, not renotify) if
        the alert ``fp`` is open and takes the inline path; else nothing is done and False is
        returned: apply that Signal instead. For a hot caller (a plain error rule) that builds no
        Signal per hit; it must have no signal of ``fp`` waiting to be applied (it would be
        applied out of order). One plain function per alert: cheaper to call than a partial."""
        alerts = self.alerts

        def fire_open(at: datetime, summary: str, sample: str) -> bool:
            alert = alerts.get(fp)
            if (
                alert is None
                or alert.status not in _OPEN
                or ((rare := alert._rare) is not None and rare[_CLEARING] is not None)
                or not self.fast
            ):
                return False
            alert.count += 1
            last = alert.last_seen_at
            alert.last_seen_at = at if at > last else last  # max(), without the call
            if summary:
                alert._summary = summary
            samples = alert._samples
            if type(samples) is not list:
                alert.add_sample(sample)
            elif len(samples) < MAX_SAMPLES:
                samples.append(clip_sample(sample))
            self._changed[fp] = alert
            return True

        return fire_open

    def _routing(self, rule: str, kind: str) -> tuple[tuple[str, ...], Severity, RuleConfig | None]:
        cfg = self.rules.get(rule)
        if cfg is None:
            return (self.fallback if kind == "agent" else self.webhooks), "error", None
        return (cfg.notify or self.webhooks), cfg.severity, cfg

    def _new_alert(self, s: Signal) -> Alert:
        notify, severity, cfg = self._routing(s.rule, s.kind)
        labels = {**(cfg.labels if cfg else {}), **s.labels}
        labels.update(
            {"host": self.host, "rule": s.rule, "severity": severity, "kind": s.kind}
            | ({"source": s.source} if s.source else {})
        )
        if s.notify:
            notify = s.notify
        elif self.routes and not (cfg is not None and cfg.notify_own):
            routed = route(self.routes, with_source(labels, cfg), agent=s.kind == "agent")
            if routed is not None:
                notify = routed.webhooks
        return Alert(
            fingerprint=fingerprint(s.rule, s.key),
            rule=s.rule,
            kind=s.kind,
            key=s.key,
            status="firing",
            severity=severity,
            summary=s.summary,
            description=s.description,
            labels=compact_labels(labels, s.key, self._layouts),
            owner=cfg.owner if cfg else None,
            runbook=cfg.runbook if cfg else None,
            host=self.host,
            source=s.source,
            first_seen_at=s.at,
            last_seen_at=s.at,
            count=0,
            notify=notify,
        )

    def _fire(self, s: Signal, now: datetime) -> None:
        fp = fingerprint(s.rule, s.key)
        alert = self.alerts.get(fp)
        opening = alert is None or alert.status not in ("firing", "pending")
        if opening:
            before = alert
            if before is not None:
                self._unrepeat(before)
            self._resolved.pop(fp, None)
            alert = self._new_alert(s)
            if before is not None:  # the flap history goes on
                alert.changes, alert.flap_changes = before.changes, before.flap_changes
                alert.flapping_since = before.flapping_since
                if before.flapping_since is not None:  # its changes are not told one by one:
                    alert.owed = before.owed  # what a mute held back is still owed
            self.alerts[fp] = alert
            hold = self._timing(alert)
            if hold is not None and hold.pending_for > timedelta(0):
                alert.status, alert.pending_until = "pending", s.at + hold.pending_for
                self._schedule_timer(fp, alert)
        assert alert is not None
        if alert.clearing_until is not None:  # back within keep_firing_for: nothing to tell
            alert.clearing_until = alert.clearing_summary = None
            self._schedule_timer(fp, alert)
        alert.count += max(s.count, 0)
        alert.last_seen_at = max(alert.last_seen_at, s.at)
        if s.summary:
            alert.summary = s.summary
        if s.description:
            alert.description = s.description
        if s.evidence:
            alert.evidence = {**alert.evidence, **s.evidence}
        if s.sample is not None:
            alert.add_sample(s.sample)
        if opening:
            alert.derive_summary()
        self._changed[fp] = alert
        if alert.status == "pending":
            return
        if opening:
            self._changed_state(alert, "firing", now)
        elif s.renotify:
            self._notify(alert, "firing", now)

    def _resolve(self, rule: str, key: str, at: datetime, now: datetime, s: Signal | None) -> None:
        fp = fingerprint(rule, key)
        alert = self.alerts.get(fp)
        if alert is None or alert.status not in ("firing", "pending"):
            return
        if alert.status == "pending":
            self._drop_pending(alert, at)
            return
        if alert.clearing_until is not None and s is not None:
            return  # resolving already (keep_firing_for)
        summary = alert.summary
        if s is not None:
            cfg = self.rules.get(rule)
            if s.happened and cfg is not None and cfg.summary and alert.summary:
                # the user's own summary (as last rendered while firing), then what happened
                summary = f"{alert.summary}{RESOLVED_SEP}{s.happened}"
            elif s.summary:
                summary = s.summary
            if s.evidence:
                alert.evidence = {**alert.evidence, **s.evidence}
            if s.sample is not None:
                alert.add_sample(s.sample)
            hold = self._timing(alert)
            if hold is not None and hold.keep_firing_for > timedelta(0):
                alert.clearing_until = at + hold.keep_firing_for
                alert.clearing_summary = summary
                self._changed[fp] = alert
                self._schedule_timer(fp, alert)
                return
        self._close(alert, at, summary, now)

    def _close(self, alert: Alert, at: datetime, summary: str, now: datetime) -> None:
        fp = alert.fingerprint
        alert.status = "resolved"
        alert.resolved_at = at
        alert.summary = summary
        alert.clearing_until = alert.clearing_summary = None
        self._changed[fp] = alert
        self._changed_state(alert, "resolved", now)
        self._unrepeat(alert)
        self._schedule_timer(fp, alert)
        self._keep_resolved(fp)

    def _drop_pending(self, alert: Alert, at: datetime) -> None:
        """A ``for:`` alert whose condition ended before it fired: nobody was told, nobody is.
        One with a flap history stays, resolved as before, to keep that history."""
        fp = alert.fingerprint
        alert.pending_until = None
        if alert.changes or alert.flapping_since is not None:
            alert.status, alert.resolved_at = "resolved", at
            self._changed[fp] = alert
            self._schedule_timer(fp, alert)
            self._keep_resolved(fp)
        else:
            del self.alerts[fp]
            self._changed[fp] = None
            self._schedule_timer(fp, alert)

    def _keep_resolved(self, fp: str) -> None:
        """Note that ``fp`` resolved just now; forget the longest resolved past ``MAX_RESOLVED``."""
        self._resolved[fp] = None
        self._resolved.move_to_end(fp)
        if len(self._resolved) > self.max_resolved:
            self._bound_resolved()

    def _bound_resolved(self) -> None:
        """Forget the longest resolved alerts past ``max_resolved``, except those that still owe
        a notice (those go to the back and are kept)."""
        index = self._resolved
        tries = len(index)
        while len(index) > self.max_resolved and tries > 0:
            tries -= 1
            fp, _ = index.popitem(last=False)
            alert = self.alerts.get(fp)
            if alert is None or alert.status != "resolved":
                continue
            if alert.owed is not None or alert.flapping_since is not None:
                index[fp] = None
                continue
            del self.alerts[fp]
            self._changed[fp] = None
            self._schedule_timer(fp, alert)

    def _info(self, s: Signal, now: datetime) -> None:
        alert = self._new_alert(s)
        alert.count = s.count
        alert.evidence = dict(s.evidence) if s.evidence else NO_EVIDENCE
        if s.sample is not None:
            alert.add_sample(s.sample)
        self._notify(alert, "info", now)

    def resolve_rule(self, rule: str, now: datetime, why: str) -> None:
        """Resolve every firing alert of a rule (the rule was removed or disabled)."""
        for alert in list(self.alerts.values()):
            if alert.rule == rule and alert.status in ("firing", "pending"):
                alert.description = why
                self._resolve(rule, alert.key, now, now, None)

    # ---------------------------------------------------------------- time

    def _repeat_every(self, alert: Alert) -> timedelta | None:
        if alert.kind == "agent":
            return AGENT_REPEAT
        cfg = self.rules.get(alert.rule)
        return cfg.repeat if cfg is not None else None

    def _schedule_repeat(self, fp: str, alert: Alert) -> None:
        every = self._repeat_every(alert)
        if alert.status == "firing" and every is not None and alert.last_notified_at is not None:
            memo = self._repeat_at
            due = memo.get((alert.last_notified_at, every))
            if due is None:
                if len(memo) >= 1024:  # one per distinct time: the loaded alerts' may interleave
                    memo.clear()
                due = memo[alert.last_notified_at, every] = alert.last_notified_at + every
            if due != alert.repeat_at:  # the alerts notified at one moment share one deadline
                moved, alert.repeat_at = alert.repeat_at is not None, due
                self._repeats.push(fp, due, moved)
        else:
            self._unrepeat(alert)

    def _unrepeat(self, alert: Alert) -> None:
        if alert.repeat_at is not None:
            alert.repeat_at = None
            self._repeats.forget()

    def _repeat_of(self, fp: str) -> datetime | None:
        alert = self.alerts.get(fp)
        return None if alert is None else alert.repeat_at

    def next_deadline(self) -> datetime | None:
        present = [t for t in (self._repeats.next_at(), self._timers.next_at()) if t is not None]
        if self._mute_at is not None:
            present.append(self._mute_at)
        return min(present) if present else None

    def due(self, now: datetime) -> None:
        """Lift mutes that ended; fire pending alerts that held, resolve those kept firing, tell
        the settled state of those that flapped; send repeats that are due; forget alerts
        resolved long ago."""
        if self._mute_at is not None and self._mute_at <= now:
            self.recheck_mutes(now)
        for fp in self._timers.pop_due(now):
            alert = self.alerts.get(fp)
            if alert is not None:
                self._run_timers(alert, now)
                self._schedule_timer(fp, alert)
        for fp in self._repeats.pop_due(now):
            alert = self.alerts.get(fp)
            if alert is not None:
                alert.repeat_at = None  # no longer scheduled
            if alert is None or alert.status != "firing" or alert.flapping_since is not None:
                continue
            self._changed[fp] = alert
            self._notify(alert, "repeat", now)
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        for fp, alert in list(self.alerts.items()):
            if (
                alert.status == "resolved"
                and alert.resolved_at
                and alert.resolved_at < now - RESOLVED_KEEP
            ):
                del self.alerts[fp]
                self._resolved.pop(fp, None)
                self._changed[fp] = None

    # ---------------------------------------------------------------- for:, keep_firing_for:, flap:

    def _timing(self, alert: Alert) -> RuleConfig | None:
        """The rule whose timing keys apply to ``alert`` (none for agent alerts)."""
        return None if alert.kind == "agent" else self.rules.get(alert.rule)

    def _flap(self, alert: Alert) -> FlapSpec | None:
        cfg = self._timing(alert)
        return None if cfg is None else cfg.flap

    def _timer_events(self, alert: Alert) -> list[tuple[datetime, str]]:
        events: list[tuple[datetime, str]] = []
        if alert.status == "pending" and alert.pending_until is not None:
            events.append((alert.pending_until, "fire"))
        if alert.status == "firing" and alert.clearing_until is not None:
            events.append((alert.clearing_until, "resolve"))
        flap = self._flap(alert)
        if alert.flapping_since is not None:
            last = alert.changes[-1] if alert.changes else alert.flapping_since
            events.append((last + (flap.within if flap else timedelta(0)), "settle"))
        return events

    def _schedule_timer(self, fp: str, alert: Alert) -> None:
        events = self._timer_events(alert) if self.alerts.get(fp) is alert else []
        self._timers.push(fp, min(events)[0] if events else None)

    def _run_timers(self, alert: Alert, now: datetime) -> None:
        """Everything of ``alert`` due by ``now``, earliest first."""
        while due := [e for e in self._timer_events(alert) if e[0] <= now]:
            _, what = min(due)
            if what == "fire":
                alert.status, alert.pending_until = "firing", None
                self._changed[alert.fingerprint] = alert
                self._changed_state(alert, "firing", now)
            elif what == "resolve":
                assert alert.clearing_until is not None
                summary = alert.clearing_summary or alert.summary
                self._close(alert, alert.clearing_until, summary, now)
            else:
                self._settle(alert, now)

    def _changed_state(self, alert: Alert, notification: str, now: datetime) -> None:
        """Tell a change of state (firing or resolved), unless the alert flaps."""
        flap = self._flap(alert)
        if flap is None:
            self._notify(alert, notification, now)
            return
        alert.changes = (*[t for t in alert.changes if t > now - flap.within], now)
        self._schedule_timer(alert.fingerprint, alert)
        if alert.flapping_since is not None:
            alert.flap_changes += 1
            return
        if len(alert.changes) <= flap.changes:
            self._notify(alert, notification, now)
            return
        alert.flapping_since, alert.flap_changes = now, len(alert.changes)
        self._schedule_timer(alert.fingerprint, alert)
        self._flapping_notice(alert, now, "firing")

    def _flapping_notice(self, alert: Alert, now: datetime, status: str | None = None) -> None:
        """The one ``flapping`` notice (when it began to flap, or when a mute that held it back
        lifted: then with the alert's status at that moment)."""
        flap = self._flap(alert)
        within = format_duration(flap.within) if flap is not None else "?"
        text = f"flapping: {len(alert.changes)} changes in {within}"
        summary = f"{text}{RESOLVED_SEP}{alert.summary}"
        self._notify_as(alert, "flapping", status or alert.status, summary, now)

    def _settle(self, alert: Alert, now: datetime) -> None:
        """No change for the flap window: one notice of the state the alert settled in."""
        since, n = alert.flapping_since, alert.flap_changes
        assert since is not None
        alert.flapping_since, alert.flap_changes, alert.changes = None, 0, ()
        self._changed[alert.fingerprint] = alert
        text = (
            f"settled {alert.status} after {n} changes in "
            f"{format_duration(max(now - since, timedelta(0)))}"
        )
        self._notify_as(alert, "settled", alert.status, f"{text}{RESOLVED_SEP}{alert.summary}", now)

    def _notify_as(
        self, alert: Alert, notification: str, status: str, summary: str, now: datetime
    ) -> None:
        """A notice about the alert that shows another status and summary than its own."""
        own = alert.status, alert._summary
        alert.status, alert.summary = status, summary
        try:
            self._notify(alert, notification, now)
        finally:
            alert.status, alert._summary = own
        self._schedule_repeat(alert.fingerprint, alert)

    # ---------------------------------------------------------------- notifications

    def recheck_mutes(self, now: datetime) -> None:
        """The silences or maintenance windows changed (or one began or ended at ``now``): mark
        which alerts are muted, and send what a lifted mute held back."""
        muter = self.muter
        self._mute_at = muter.next_change(now) if muter is not None else None
        for alert in list(self.alerts.values()):
            if alert.status != "firing" and alert.owed is None and alert.muted is None:
                continue
            mute = muter.mute(alert.rule, alert.labels, now) if muter is not None else None
            if mute != alert.muted:
                alert.muted = mute
                self._changed[alert.fingerprint] = alert
            if mute is None and alert.owed is not None:
                owed, alert.owed = alert.owed, None
                self._changed[alert.fingerprint] = alert
                if (owed == "resolved") == (alert.status == "resolved"):
                    if alert.flapping_since is not None:  # it flapped under the mute: one notice
                        self._flapping_notice(alert, now)
                    else:
                        self._notify(alert, owed if owed != "repeat" else "repeat", now)

    def _held(self, alert: Alert, notification: str, now: datetime) -> bool:
        """Whether a mute holds ``notification`` back; if so, note what the alert is owed."""
        mute = self.muter.mute(alert.rule, alert.labels, now) if self.muter is not None else None
        if notification == "info":
            return mute is not None
        if mute != alert.muted:
            alert.muted = mute
            self._changed[alert.fingerprint] = alert
        if mute is None:
            return False
        if notification == "firing" or (
            notification in ("flapping", "settled") and alert.status == "firing"
        ):
            alert.owed = "firing"
        elif notification == "repeat":
            alert.owed = alert.owed or "repeat"
        else:  # resolved: owed only if its firing went out
            alert.owed = None if alert.owed == "firing" else "resolved"
        self._changed[alert.fingerprint] = alert
        return True

    def _notify(self, alert: Alert, notification: str, now: datetime) -> None:
        if notification == "resolved" and alert.owed == "firing":
            alert.owed = None  # its firing never went out: nobody is told it is over either
            self._changed[alert.fingerprint] = alert
            return
        if self.muter is not None and self._held(alert, notification, now):
            return
        import uuid  # noqa: PLC0415 - a notification only: `detector check` starts without it

        event_id = uuid.uuid4().hex
        payload = alert.payload(notification, event_id, now)
        if self.record is not None:
            self.record(payload, alert.key)
        for webhook in alert.notify:
            self._outbox.append(
                OutboxRow(
                    webhook=webhook,
                    event_id=event_id,
                    fingerprint=alert.fingerprint,
                    status=alert.status,
                    payload=payload,
                    created_at=now,
                )
            )
        if notification != "info":
            alert.last_notified_at = now
            self._schedule_repeat(alert.fingerprint, alert)

    def firing(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.status == "firing"]
