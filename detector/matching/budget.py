"""A CPU-time budget for the ``re`` searches that confirm candidate lines in matching.

Used only by ``engine`` (the ``Matcher``): ``Watchdog.search(rx, text)`` is ``rx.search(text)`` that
raises ``BudgetExceeded`` once the search has run longer than the budget, so no backtracking regex
can hang the agent. Python's ``re`` checks for signals while it matches, so a ``SIGVTALRM`` handler
that raises interrupts it. The interval timer (``ITIMER_VIRTUAL``: process CPU time, tick = a
quarter of the budget) is armed lazily by the first search of a ``Matcher.match`` call and disarmed
by ``disarm()`` at its end, which restores the previous handler and timer. Per search only a start
time is stored; a tick interrupts a search once it has seen a full budget of process CPU time
(counted in ticks) *and* of wall time, so neither another busy thread nor a descheduled process
aborts a search early. Signal handlers can only be installed from the main thread: elsewhere
``arm()`` returns False and matching keeps its static caps instead.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from types import FrameType
from typing import Any

CONFIRM_BUDGET_S = 0.05
"""Default budget of one ``re`` confirmation (one pattern on one line), in seconds."""

_TICKS_PER_BUDGET = 4

IDLE, ARMED, UNAVAILABLE = 0, 1, 2
"""Values of ``Watchdog.state``."""


class BudgetExceeded(Exception):
    """A search ran over its budget (raised by the tick handler, only while a search that set
    ``Watchdog.started`` runs)."""


class Watchdog:
    """Budget enforcement for one ``Matcher``; used by one thread at a time."""

    __slots__ = (
        "_armed_cpu",
        "_old_handler",
        "_old_timer",
        "_seen",
        "_ticks",
        "budget_s",
        "started",
        "state",
    )

    def __init__(self, budget_s: float = CONFIRM_BUDGET_S) -> None:
        if budget_s <= 0:
            raise ValueError("budget_s must be positive")
        self.budget_s = budget_s
        self.state = IDLE
        """Read by matching before each search: ``ARMED`` means ``search`` is bounded."""
        self.started = 0.0
        """perf_counter() at the start of the running search; 0.0 when none runs."""
        self._seen = 0.0
        self._ticks = 0
        self._old_handler: Any = None
        self._old_timer: tuple[float, float] = (0.0, 0.0)
        self._armed_cpu = 0.0

    def arm(self) -> bool:
        """Make ``search`` bounded until ``disarm()``. False when that is impossible (not the
        main thread, or a handler installed outside Python); then it is not retried before
        ``disarm()``."""
        if self.state != IDLE:
            return self.state == ARMED
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGVTALRM)
        if old is None:
            self.state = UNAVAILABLE
            return False
        try:
            signal.signal(signal.SIGVTALRM, self._on_tick)
        except ValueError:  # pragma: no cover - the main-thread check above comes first
            self.state = UNAVAILABLE
            return False
        # SA_RESTART: the ticks must not interrupt system calls of other threads.
        signal.siginterrupt(signal.SIGVTALRM, False)
        self._old_handler = old
        tick = self.budget_s / _TICKS_PER_BUDGET
        self._old_timer = signal.setitimer(signal.ITIMER_VIRTUAL, tick, tick)
        if self._old_timer[0]:
            self._armed_cpu = time.process_time()
        self.started = 0.0
        self.state = ARMED
        return True

    def disarm(self) -> None:
        """Stop the ticks, restore the previous handler, then the previous timer (its countdown
        less the CPU time used meanwhile). Idempotent."""
        state, self.state = self.state, IDLE
        self.started = 0.0
        if state != ARMED:
            return
        signal.setitimer(signal.ITIMER_VIRTUAL, 0.0, 0.0)
        if signal.SIGVTALRM in signal.sigpending():
            # A last tick, generated on another thread's CPU time, not yet delivered: take it
            # now rather than let it reach the old handler (SIG_DFL would end the process).
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGVTALRM})
            try:
                signal.sigtimedwait({signal.SIGVTALRM}, 0)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # signal.signal first runs the Python handlers of signals already delivered: ours for a
        # last tick (a no-op now), or another one that may raise (KeyboardInterrupt): retry then.
        try:
            signal.signal(signal.SIGVTALRM, self._old_handler)
        except BaseException:
            signal.signal(signal.SIGVTALRM, self._old_handler)
            raise
        self._old_handler = None
        value, interval = self._old_timer
        if value:
            # an expiry that fell due while we held the timer fires at once (1 µs)
            value = max(value - (time.process_time() - self._armed_cpu), 1e-6)
            signal.setitimer(signal.ITIMER_VIRTUAL, value, interval)

    def search(self, rx: re.Pattern[str], text: str) -> re.Match[str] | None:
        """``rx.search(text)``; raises ``BudgetExceeded`` when it runs over the budget. The
        caller must be armed, and must catch the exception around this whole call (a tick may
        land just after ``rx.search`` returned). Hot loops may inline it: set ``started`` to
        ``time.perf_counter()`` before the search and to 0.0 after, inside that ``try``."""
        self.started = time.perf_counter()
        m = rx.search(text)
        self.started = 0.0
        return m

    def _on_tick(self, _signum: int, _frame: FrameType | None) -> None:
        started = self.started
        if not started:
            return
        if started != self._seen:
            # first tick of this search: it may have begun just before the tick
            self._seen = started
            self._ticks = 0
            return
        self._ticks += 1
        if self._ticks >= _TICKS_PER_BUDGET and time.perf_counter() - started >= self.budget_s:
            self.started = 0.0  # no second raise while the caller handles this one
            raise BudgetExceeded
