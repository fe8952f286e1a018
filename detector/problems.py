"""The problem registry: every way the agent itself could keep an alert from reaching a person.

Sits beside the flow, between the parts that notice trouble and the outputs that tell someone.
A source that cannot be read, a journalctl that keeps dying, a webhook path that fails, dead
letters, a stalled event loop, a state file that cannot be written, a refused configuration, a
listener that cannot bind, an unclean previous stop: each is *raised* here under a key, with a
grace period, and *cleared* when it is over. This module is the only place that turns such a
problem into what a person sees:

1. ``raise_`` on a new key records it (log WARNING if it has a grace: it may clear by itself);
2. once it has lasted its grace (``due``), it is *reported*: an ERROR log line, an agent alert
   (a ``fire`` :class:`~detector.rules.base.Signal` for the alert book), a degraded /healthz
   and STATUS= text (``reported()``), and, if ``fatal``, no more systemd watchdog pings;
3. ``raise_(..., occurrence=True)`` on a reported problem is a *new occurrence* (a new cursor gap,
   a new crash of journalctl, a new dead letter): it notifies again, at most once per
   ``RENOTIFY_MIN`` per key, instead of only raising a count on the open alert;
4. ``clear`` ends it: a reported problem resolves its alert (INFO log), one still within its
   grace is dropped without anyone being paged (an editor's half-saved rules.yaml);
5. ``adopt`` takes over agent alerts still firing from before a restart: if nothing raises them
   again within ``ADOPT_GRACE`` they resolve, so a problem that ended while the agent was down
   does not stay open for ever.

There is no I/O and no clock here: every call takes ``now``; the service drains ``take_signals``
into the pipeline and sleeps until ``next_deadline``. Agent alerts go to ``notify`` when the
problem names receivers (a failing webhook's fallback, or every other webhook); otherwise the
alert book routes them to ``agent.fallback`` or every webhook. The pipeline's own agent alerts
(a rule that raised, a regex over its budget) are built with :func:`agent_signal` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from detector.lazylog import logger
from detector.rules.base import Signal
from detector.timefmt import format_duration

LOG = "detector"

AGENT_RULE = "detector-agent"
RENOTIFY_MIN = timedelta(minutes=5)
"""A new occurrence of a reported problem notifies again, but not more often than this."""
ADOPT_GRACE = timedelta(minutes=10)
"""Agent alerts still firing from before a restart resolve if nothing raises them again within
this long after the start: long enough for a delivery worker to call a path failing again (at
most 5 minutes of failures) and for the sources to be looked at."""

ADOPTED_GONE = "no longer seen since the agent restarted"

Component = Literal[
    "source", "delivery", "dead-letter", "loop", "state", "config", "http", "restart", "agent"
]


def agent_signal(
    key: str,
    action: Literal["fire", "resolve"],
    at: datetime,
    summary: str,
    description: str = "",
    *,
    notify: tuple[str, ...] = (),
    source: str | None = None,
    sample: str | None = None,
    count: int = 1,
    renotify: bool = False,
    evidence: Mapping[str, Any] | None = None,
) -> Signal:
    """The one constructor of an agent alert's signal (``kind: agent``, rule ``detector-agent``)."""
    return Signal(
        rule=AGENT_RULE,
        kind="agent",
        key=key,
        action=action,
        at=at,
        summary=summary,
        description=description,
        sample=sample,
        count=count,
        source=source,
        notify=notify,
        renotify=renotify,
        evidence=dict(evidence or {}),
    )


@dataclass
class Problem:
    """One of the agent's own problems, open since ``since_at``."""

    key: str
    component: Component
    message: str
    since_at: datetime
    grace: timedelta = timedelta(0)
    description: str = ""
    fatal: bool = False
    notify: tuple[str, ...] = ()
    source: str | None = None
    occurrences: int = 1
    reported_at: datetime | None = None
    notified_at: datetime | None = None
    unnotified: int = 0
    """Occurrences since the last notification (new occurrences waiting for RENOTIFY_MIN)."""
    adopted: bool = False
    expires_at: datetime | None = None
    """A problem that is an event, not a condition (an unclean restart), clears by itself then,
    ``settle`` after its last occurrence."""
    settle: timedelta = timedelta(0)

    @property
    def reason(self) -> str:
        return f"{self.component}: {self.message}"

    @property
    def reported(self) -> bool:
        return self.reported_at is not None

    def report_at(self) -> datetime:
        return self.since_at + self.grace


@dataclass
class Problems:
    """Every current problem of one agent, and the agent alerts they owe. Not thread-safe."""

    problems: dict[str, Problem] = field(default_factory=dict)
    on_change: Callable[[], None] | None = None
    """Called after any change (the service wakes its self-monitor and refreshes STATUS=)."""
    _signals: list[Signal] = field(default_factory=list)

    # ---------------------------------------------------------------- raise / clear

    def raise_(
        self,
        key: str,
        component: Component,
        message: str,
        now: datetime,
        *,
        grace: timedelta = timedelta(0),
        description: str = "",
        fatal: bool = False,
        notify: Iterable[str] = (),
        source: str | None = None,
        occurrence: bool = False,
        expires_after: timedelta | None = None,
    ) -> Problem:
        """Raise ``key`` (or update its text). ``occurrence``: this is a new, separate event of
        the same problem (notified again once reported), not the same one still going on.
        ``expires_after``: it clears by itself that long after its last occurrence."""
        p = self.problems.get(key)
        if p is None or p.adopted:
            if p is None:
                p = Problem(key, component, message, now, grace, description, fatal)
                self.problems[key] = p
                if grace > timedelta(0):
                    logger(LOG).warning(
                        "%s (reported if it lasts %s)", p.reason, format_duration(grace)
                    )
            else:  # an alert from before the restart: the same problem, still there
                p.adopted = False
                p.since_at, p.grace = now, grace
                p.reported_at = now
                p.unnotified = 1 if occurrence else 0
            p.component = component
        elif occurrence:
            p.occurrences += 1
            p.unnotified += 1
        p.grace = min(p.grace, grace)
        if expires_after is not None:
            p.expires_at, p.settle = now + expires_after, expires_after
        p.message, p.fatal = message, fatal
        p.description = description or p.description
        p.notify, p.source = tuple(notify), source
        self.due(now)
        self._changed()
        return p

    def clear(self, key: str, now: datetime, message: str = "") -> bool:
        """End ``key``. True if it was there."""
        p = self.problems.pop(key, None)
        if p is None:
            return False
        if p.adopted:
            message = ADOPTED_GONE
        if p.reported:
            logger(LOG).info("%s: recovered%s", p.reason, f" ({message})" if message else "")
            self._signals.append(
                agent_signal(
                    key,
                    "resolve",
                    now,
                    message or f"recovered: {p.message}",
                    notify=p.notify,
                    source=p.source,
                )
            )
        else:
            logger(LOG).info("%s: cleared within its grace period, nobody was notified", p.reason)
        self._changed()
        return True

    def clear_prefix(self, prefix: str, now: datetime, keep: Iterable[str] = ()) -> None:
        """Clear every problem whose key starts with ``prefix`` except those in ``keep``."""
        kept = set(keep)
        for key in [k for k in self.problems if k.startswith(prefix) and k not in kept]:
            self.clear(key, now)

    def adopt(self, keys: Iterable[str], now: datetime) -> None:
        """Agent alerts still firing in the state file from before this start."""
        for key in keys:
            if key not in self.problems:
                self.problems[key] = Problem(
                    key,
                    "agent",
                    "still open from before the restart",
                    now,
                    ADOPT_GRACE,
                    reported_at=now,
                    adopted=True,
                )

    # ---------------------------------------------------------------- time

    def due(self, now: datetime) -> None:
        """Report the problems whose grace ended; send waiting new occurrences; resolve adopted
        alerts nobody raised again."""
        for p in list(self.problems.values()):
            if p.expires_at is not None and now >= p.expires_at:
                self.clear(
                    p.key, now, f"settled: {p.message}; nothing new for {format_duration(p.settle)}"
                )
                continue
            if p.adopted:
                if now >= p.report_at():
                    self.problems.pop(p.key)
                    self._signals.append(agent_signal(p.key, "resolve", now, ADOPTED_GONE))
                    self._changed()
                continue
            if not p.reported and now >= p.report_at():
                p.reported_at = now
                logger(LOG).error(
                    "%s", p.reason if not p.description else f"{p.reason}\n{p.description}"
                )
                self._notify(p, now, renotify=False)
                self._changed()
            elif (
                p.reported
                and p.unnotified
                and (p.notified_at is None or now - p.notified_at >= RENOTIFY_MIN)
            ):
                logger(LOG).error("%s (again: %d occurrences)", p.reason, p.occurrences)
                self._notify(p, now, renotify=True)

    def next_deadline(self) -> datetime | None:
        times: list[datetime] = []
        for p in self.problems.values():
            if p.expires_at is not None:
                times.append(p.expires_at)
            if p.adopted or not p.reported:
                times.append(p.report_at())
            elif p.unnotified and p.notified_at is not None:
                times.append(p.notified_at + RENOTIFY_MIN)
        return min(times) if times else None

    def take_signals(self) -> list[Signal]:
        out, self._signals = self._signals, []
        return out

    # ---------------------------------------------------------------- views

    def reported(self) -> list[Problem]:
        """Problems past their grace (what /healthz and STATUS= show), oldest first."""
        found = [p for p in self.problems.values() if p.reported and not p.adopted]
        return sorted(found, key=lambda p: (p.since_at, p.key))

    def pending(self) -> list[Problem]:
        """Problems still within their grace."""
        return sorted(
            (p for p in self.problems.values() if not p.reported), key=lambda p: p.since_at
        )

    def get(self, key: str) -> Problem | None:
        return self.problems.get(key)

    # ---------------------------------------------------------------- internals

    def _notify(self, p: Problem, now: datetime, *, renotify: bool) -> None:
        count = max(p.unnotified, 1)
        p.notified_at, p.unnotified = now, 0
        self._signals.append(
            agent_signal(
                p.key,
                "fire",
                now,
                p.message,
                p.description,
                notify=p.notify,
                source=p.source,
                count=count,
                renotify=renotify,
                evidence={"occurrences": p.occurrences, "since": p.since_at.isoformat()},
            )
        )

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
