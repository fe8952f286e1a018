"""Self-monitoring: what the agent notices about itself, fed into the problem registry.

Sits beside the flow, owned by ``service.py``. The agent's parts report here — a delivery
worker's path failing or recovering, a dead letter, a refused configuration, the state file
failing, the listener unable to bind, the previous run's unclean end — and sources are asked for
their problems; each becomes a keyed problem in :class:`~detector.problems.Problems`, which decides
when it is reported. The :meth:`SelfMonitor.run` task reports what is due, hands the resulting
agent alerts to the processor (``emit``), and keeps systemd's STATUS= text in step.

Where agent alerts go: a failing webhook's own ``fallback``, else ``agent.fallback``, else every
other webhook (never only the one that is failing); everything else to ``agent.fallback``, else
every webhook that is not failing right now (a failing one would only hold it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from detector.clock import Clock
from detector.model import Config
from detector.problems import Problems
from detector.rules.base import Signal
from detector.sdnotify import Notifier
from detector.sources.base import SourceProblem

log = logging.getLogger("detector")

POLL_S = 2.0
"""How often sources are asked for their problems and the outbox gauges are refreshed."""
CONFIG_GRACE = timedelta(minutes=1)
"""A rules.yaml seen changing on disk and refused is reported only if it stays invalid this long
(an editor's half-saved file is not worth a page). A refused explicit reload (SIGHUP,
``systemctl reload``) is reported at once."""
RESTART_SETTLED = timedelta(minutes=10)
"""The "restarted after an unclean stop" alert resolves after this long without another one."""


class SelfMonitor:
    def __init__(
        self,
        *,
        problems: Problems,
        clock: Clock,
        notifier: Notifier,
        emit: Callable[[Signal], None],
        status_line: Callable[[], str],
    ) -> None:
        self.problems = problems
        self.clock = clock
        self.notifier = notifier
        self.emit = emit
        self.status_line = status_line
        self.config: Config | None = None
        self._changed = asyncio.Event()
        self._failing_webhooks: set[str] = set()
        self._source_seq: dict[str, int] = {}
        self._last_status = ""
        problems.on_change = self._changed.set

    # ---------------------------------------------------------------- the task

    async def run(self, poll: Callable[[], Awaitable[None]]) -> None:
        """Report what is due, hand agent alerts to the processor, refresh STATUS=; wake on any
        change, at the registry's next deadline, and every POLL_S to ``poll`` the sources."""
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        while True:
            if loop.time() >= next_poll:
                await poll()
                next_poll = loop.time() + POLL_S
            self.flush()
            self._changed.clear()
            waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._changed.wait())}
            deadline = self.problems.next_deadline()
            if deadline is not None:
                waits.add(asyncio.ensure_future(self.clock.sleep_until(deadline)))
            waits.add(asyncio.ensure_future(asyncio.sleep(max(0.0, next_poll - loop.time()))))
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for fut in pending:
                fut.cancel()

    def flush(self) -> list[Signal]:
        """Report what is due now and emit the agent alerts it produced (also called directly by
        the service when it cannot wait for the task, e.g. while the state file is failing)."""
        self.problems.due(self.clock.now())
        signals = [self._routed(s) for s in self.problems.take_signals()]
        for s in signals:
            self.emit(s)
        status = self.status_line()
        if status != self._last_status:
            self._last_status = status
            self.notifier.status(status)
        return signals

    # ---------------------------------------------------------------- reports

    def sources(self, found: Mapping[str, list[SourceProblem]]) -> None:
        """The sources' current problems (``Source.problems()`` of each running source)."""
        now = self.clock.now()
        grace = self.config.agent.source_grace if self.config else timedelta(minutes=5)
        keep: list[str] = []
        for name, problems in found.items():
            for p in problems:
                if not p.active:
                    continue
                key = f"source/{name}/{p.key}"
                keep.append(key)
                self.problems.raise_(
                    key,
                    "source",
                    f"source {name}: {p.message}",
                    now,
                    # a problem with occurrences is an event (entries lost in a cursor gap),
                    # not a condition that may pass by itself: no grace
                    grace=timedelta(0) if p.occurrence else grace,
                    source=name,
                    occurrence=self._new_occurrence(key, p.occurrence),
                )
        self.problems.clear_prefix("source/", now, keep)
        for key in [k for k in self._source_seq if k not in keep]:
            del self._source_seq[key]

    def rules_over_cap(self, folded: Mapping[str, tuple[int, int]]) -> None:
        """The rules holding their ``max_keys`` and folding further keys into a digest alert:
        ``{rule: (keys folded, max_keys)}`` (``Pipeline.over_cap``). One agent alert per rule,
        cleared once the rule is back below its cap."""
        now = self.clock.now()
        keep: list[str] = []
        for rule, (n, cap) in folded.items():
            key = f"max_keys/{rule}"
            keep.append(key)
            self.problems.raise_(
                key,
                "agent",
                f"rule {rule}: {n:,} keys past max_keys ({cap:,}) folded into one digest alert",
                now,
                description=(
                    f"Rule {rule} keeps at most {cap:,} keys (group_by values) apart; the rest "
                    "are counted in its digest alert, not alerted one by one. Raise max_keys if "
                    "these keys are expected, or narrow the rule's group_by."
                ),
            )
        self.problems.clear_prefix("max_keys/", now, keep)

    def _new_occurrence(self, key: str, seq: int) -> bool:
        """A source problem is a new occurrence when its ``occurrence`` number moved on (a
        second cursor gap, another journalctl crash), not when its text was only refreshed."""
        last = self._source_seq.get(key)
        self._source_seq[key] = seq
        return last is not None and seq != last

    def path_health(self, webhook: str, failing: bool, reason: str) -> None:
        """A delivery worker's path started failing, or recovered."""
        now = self.clock.now()
        key = f"delivery/{webhook}"
        if failing:
            self._failing_webhooks.add(webhook)
            self.problems.raise_(
                key,
                "delivery",
                f"delivery to {webhook} failing: {reason}",
                now,
                description=(
                    f"Notifications for {webhook} are kept in the outbox and sent when it "
                    "answers again (`detector outbox` lists them)."
                ),
                notify=self.route_around(webhook),
            )
        else:
            self._failing_webhooks.discard(webhook)
            self.problems.clear(key, now, f"delivery to {webhook} recovered")

    def dead_letter(self, webhook: str, event_id: str, reason: str) -> None:
        """A notification was given up on (the receiver rejected that payload for good)."""
        self.problems.raise_(
            f"dead-letter/{webhook}",
            "dead-letter",
            f"{webhook} rejected a notification for good: {reason}",
            self.clock.now(),
            description=(
                f"Last: event {event_id}. `detector outbox` lists dead letters; "
                f"`detector outbox retry --webhook {webhook}` sends them again."
            ),
            notify=self.route_around(webhook),
            occurrence=True,
        )

    def dead_letters_cleared(self, webhook: str) -> None:
        self.problems.clear(f"dead-letter/{webhook}", self.clock.now(), "no dead letters left")

    def config_refused(self, path: str, error: str, *, explicit: bool) -> None:
        self.problems.raise_(
            "config",
            "config",
            f"configuration reload refused: {path} is invalid",
            self.clock.now(),
            grace=timedelta(0) if explicit else CONFIG_GRACE,
            description=error,
        )

    def config_ok(self) -> None:
        self.problems.clear("config", self.clock.now(), "configuration loaded")

    def state_failed(self, error: str) -> None:
        self.problems.raise_(
            "state",
            "state",
            f"state file cannot be written: {error}",
            self.clock.now(),
            description=(
                "The agent keeps running on what it holds in memory and does not advance its "
                "read positions, so nothing is lost; it retries the state file and catches up "
                "once it can write again. Check free space and permissions."
            ),
        )

    def state_ok(self) -> None:
        self.problems.clear("state", self.clock.now(), "state file writable again")

    def listener_failed(self, listen: str, error: str) -> None:
        self.problems.raise_(
            "http",
            "http",
            f"cannot listen on {listen}: {error}",
            self.clock.now(),
            description="/healthz, /metrics and /status are unavailable; retrying.",
        )

    def listener_ok(self) -> None:
        self.problems.clear("http", self.clock.now(), "listener up")

    def unclean_restart(self, text: str) -> None:
        now = self.clock.now()
        self.problems.raise_(
            "restart", "restart", text, now, occurrence=True, expires_after=RESTART_SETTLED
        )

    def _routed(self, s: Signal) -> Signal:
        """An agent alert with no receivers of its own goes to ``agent.fallback``, else to every
        webhook that is not failing right now (a failing one would only hold it)."""
        if s.notify or s.action != "fire" or self.config is None or self.config.agent.fallback:
            return s
        working = tuple(w for w in sorted(self.config.webhooks) if w not in self._failing_webhooks)
        if not working or len(working) == len(self.config.webhooks):
            return s
        return dataclasses.replace(s, notify=working)

    def route_around(self, webhook: str) -> tuple[str, ...]:
        """Who hears about trouble with ``webhook``: its fallback, else agent.fallback, else
        every other webhook that is not failing itself."""
        if self.config is None:
            return ()
        cfg = self.config.webhooks.get(webhook)
        chosen = (cfg.fallback if cfg else ()) or self.config.agent.fallback
        if not chosen:
            chosen = tuple(
                w for w in sorted(self.config.webhooks) if w not in self._failing_webhooks
            )
        return tuple(w for w in chosen if w != webhook)
