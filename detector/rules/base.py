"""The contract between the service and every rule evaluator.

The service calls, for each committed batch and with time passed in (never read from a clock here):

1. ``observe(hit, line, when)`` for every hit of the rule's patterns in the batch, in line order;
   ``observe_line(line, when)`` for every line of the rule's sources if ``wants_all_lines``;
2. ``due(now)`` when ``now >= next_deadline()`` (the scheduler wakes exactly then);
3. ``state_changes()`` after each of those rounds, and commits the result with the batch.

Signals go to ``alerts.AlertBook``, which owns the alert lifecycle (dedup, repeat, resolve,
notifications). Evaluators only say "this key is firing / resolved / worth an info".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from detector.matching import Hit
from detector.model import AlertKind, RuleConfig
from detector.sources.base import Line


class When(NamedTuple):
    """When a line happened, as far as the agent knows. (A NamedTuple: immutable like a frozen
    dataclass, at a third less per build; a replay builds one per hit.)

    ``at`` is the line's own timestamp (journald) or its arrival time. While catching up after the
    agent was down, a line without its own timestamp may have been written at any moment between
    the agent's last sign of life and now: then ``earliest`` is that last sign of life and ``at`` is
    now. Otherwise ``earliest == at``.
    """

    at: datetime
    earliest: datetime

    @staticmethod
    def exact(at: datetime) -> When:
        return When(at, at)

    @staticmethod
    def of(own: datetime | None, default: When) -> When:
        """THE definition of a line's time, live and in ``detector test``: its own timestamp,
        exactly, when it has one (journald's ``__REALTIME_TIMESTAMP``, or the one ``detector
        test`` parses from its text); else ``default``, the clock's view (arrival, uncertain
        while catching up; in a replay, the last time seen)."""
        return default if own is None else When(own, own)

    @property
    def uncertain(self) -> bool:
        return self.earliest != self.at


@dataclass(slots=True)
class Signal:
    """Not frozen on purpose (one is built per hit of an error rule; a frozen dataclass costs
    about 3x more to build). Treat it as immutable."""

    rule: str
    kind: AlertKind
    key: str
    """Stable within the rule; the alert fingerprint is derived from (rule, key)."""
    action: Literal["fire", "resolve", "info"]
    """fire: open or update the alert; resolve: close it; info: a one-off notice, no lifecycle."""
    at: datetime
    labels: Mapping[str, str] = field(default_factory=dict)
    """Grouping labels and captured fields. host, source and rule are added by the alert book."""
    summary: str = ""
    description: str = ""
    happened: str = ""
    """On a ``resolve``: what happened, without the rule's name or key ("back after 17m of
    silence (expected every 5m)"). ``summary`` is then ``"<rule> <key>: <happened>"``; for a rule
    with its own ``summary:`` template the alert book appends it to the alert's summary instead."""
    sample: str | None = None
    count: int = 1
    evidence: Mapping[str, Any] = field(default_factory=dict)
    """JSON-able details for the payload's ``x_detector.evidence`` (window bounds, durations…)."""
    source: str | None = None
    notify: tuple[str, ...] = ()
    """Webhooks to notify instead of the rule's own (agent alerts about one webhook's failing
    path go to that webhook's ``fallback``)."""
    renotify: bool = False
    """``fire`` on an open alert notifies again: a new occurrence of the same problem (a second
    cursor gap, another crash), not the same one still going on (agent problems only)."""


class Evaluator(Protocol):
    rule: RuleConfig
    wants_all_lines: bool

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]: ...

    def observe_line(self, line: Line, when: When) -> list[Signal]: ...

    def due(self, now: datetime) -> list[Signal]: ...

    def next_deadline(self) -> datetime | None: ...

    def note_downtime(self, since: datetime, until: datetime) -> None:
        """The agent was not running between these times (called once at start-up)."""
        ...

    def state_changes(self) -> dict[str, Any | None]:
        """Keys changed since the last call, with their JSON-able value (None = deleted)."""
        ...

    def load_state(self, items: Mapping[str, Any]) -> None:
        """Restore what ``state_changes`` produced before (called once, before anything else)."""
        ...
