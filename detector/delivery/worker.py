"""The outbox worker: one asyncio task per webhook that drains its rows of the outbox.

Each pass (:meth:`DeliveryWorker.run_once`) does, with ``now`` read once from the injected clock:

1. if the path is on hold (it failed as a whole: connection refused, timeout, Retry-After, or two
   different rows failing in a row), do nothing until the hold ends;
2. for ``alertmanager`` webhooks, re-post every firing alert once per ``resend_every``;
3. read the due rows (heads of their fingerprint only, so order per fingerprint holds) in id order;
4. if a ``rate`` is set and more rows are due than the minute's budget allows, send budget-1 of
   them and fold the rest into ONE digest message (PagerDuty resolves are never folded: they
   wait for the budget, since only a resolve with its dedup_key closes the incident);
5. POST each; write the result at once (delivered / dead / retry at ``next_attempt_at``), so a
   restart continues the schedule exactly;
6. on a path failure, hold every pending row of the webhook until the path backoff ends (written
   to the rows too); on the first success after that, make every pending row due again so the
   backlog drains in id order;
7. tell ``on_path_health`` when the path starts failing (``fail_after`` consecutive failures or
   5 minutes of failures) and when it recovers.

The service calls :meth:`wake` after a commit that added rows; between wakes the loop sleeps on
``clock.sleep_until`` (the earliest due row, hold end, budget refill or re-send).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp

from detector.clock import Clock
from detector.delivery import alertmanager, formats, policy
from detector.delivery.transport import Outcome, post
from detector.model import WebhookConfig
from detector.store import outbox
from detector.store.db import AsyncStore, Store

log = logging.getLogger("detector.delivery")

PathHealth = Callable[[str, bool, str], None]
RATE_WINDOW = timedelta(minutes=1)
FAILING_AFTER = timedelta(minutes=5)
KEEP_RESOLVES = frozenset({"pagerduty"})  # formats whose resolves are never folded into a digest
PATH_FAILURES_IN_PASS = 2
IDLE_GUARD = timedelta(seconds=1)  # different rows failing back to back = the path, not the row


@dataclass(frozen=True)
class DeliveryStats:
    """Counters for ``/metrics`` and ``/status`` (since the worker started, except the queue)."""

    webhook: str
    attempts: int
    failures: int
    delivered: int
    dead: int
    digests: int
    queue_depth: int
    oldest_pending_at: datetime | None
    oldest_pending_age: timedelta | None
    failing: bool
    consecutive_failures: int
    last_error: str | None


class DeliveryWorker:
    def __init__(
        self,
        webhook: WebhookConfig,
        db: AsyncStore,
        clock: Clock,
        *,
        host: str,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
        on_path_health: PathHealth | None = None,
        batch: int = 100,
        digest_max: int = 5000,
        resend_every: timedelta | None = None,
        failing_after: timedelta = FAILING_AFTER,
    ) -> None:
        self.webhook = webhook
        self.name = webhook.name
        self.db = db
        self.clock = clock
        self.host = host
        self._session = session
        self._own_session = session is None
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._on_path_health = on_path_health
        self._batch = batch
        self._digest_max = digest_max
        if resend_every is None and webhook.format == "alertmanager":
            resend_every = alertmanager.RESEND_EVERY
        self._resend_every = resend_every
        self._next_resend_at: datetime | None = None
        self._failing_after = failing_after
        self._woken = asyncio.Event()
        # wait_idle(): set while run() is parked, with the time it wakes at (None: only a wake)
        self._parked = asyncio.Event()
        self._parked_until: datetime | None = None
        # path state (in memory; the hold is also written to the rows)
        self._hold_until: datetime | None = None
        self._path_failures = 0
        self._consecutive = 0
        self._failing_since: datetime | None = None
        self._failing = False
        self._sent_at: deque[datetime] = deque()
        # counters
        self._attempts = 0
        self._failures = 0
        self._delivered = 0
        self._dead = 0
        self._digests = 0
        self._last_error: str | None = None
        self._queue = outbox.QueueStats(0, None)
        self._stats_at: datetime | None = None

    # ---------------------------------------------------------------- public

    def wake(self) -> None:
        """New rows were committed: run a pass now instead of at the next deadline."""
        self._woken.set()

    def stats(self) -> DeliveryStats:
        now = self._stats_at
        oldest = self._queue.oldest_created_at
        return DeliveryStats(
            webhook=self.name,
            attempts=self._attempts,
            failures=self._failures,
            delivered=self._delivered,
            dead=self._dead,
            digests=self._digests,
            queue_depth=self._queue.depth,
            oldest_pending_at=oldest,
            oldest_pending_age=(now - oldest) if (now and oldest) else None,
            failing=self._failing,
            consecutive_failures=self._consecutive,
            last_error=self._last_error,
        )

    async def run(self) -> None:
        """Deliver forever (cancel to stop). Errors of the store are logged and retried."""
        while True:
            self._woken.clear()
            try:
                posts = await self.run_once()
                at = await self.next_wake_at()
                now = self.clock.now()
                if posts == 0 and at is not None and at <= now:
                    at = now + IDLE_GUARD  # a pass that could send nothing must not spin
            except Exception:
                log.exception("delivery to %s: pass failed; retrying in 5s", self.name)
                at = self.clock.now() + timedelta(seconds=5)
            self._parked_until = at
            self._parked.set()
            await self._sleep(at)
            self._parked.clear()

    def idle(self) -> bool:
        """True while :meth:`run` is parked with nothing due now: no wake pending, and the time it
        wakes at (a held or backed-off row, the rate budget, a re-send) still ahead on the clock."""
        at = self._parked_until
        parked = self._parked.is_set() and not self._woken.is_set()
        return parked and (at is None or at > self.clock.now())

    async def wait_idle(self) -> None:
        """Until :meth:`idle`: everything due now was attempted and its result recorded (tests)."""
        while not self.idle():
            if self._parked.is_set():
                await asyncio.sleep(0)  # parked, but woken or due: a pass is about to start
            else:
                await self._parked.wait()

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def next_wake_at(self) -> datetime | None:
        """When the next pass has work: earliest due row, held back by hold and rate budget."""
        now = self.clock.now()

        def earliest(s: Store) -> datetime | None:
            if outbox.due(s, self.name, now, 1):  # cheap on a long backlog
                return now
            return outbox.next_due_at(s, self.name)  # O(queue), only when nothing is due

        due = await self.db.run(earliest)
        if due is not None:
            if self._hold_until is not None:
                due = max(due, self._hold_until)
            refill = self._budget_refill_at()
            if refill is not None:
                due = max(due, refill)
        if self._resend_every is not None and self._next_resend_at is not None:
            resend = self._next_resend_at
            if self._hold_until is not None:
                resend = max(resend, self._hold_until)
            due = resend if due is None else min(due, resend)
        return due

    async def run_once(self) -> int:
        """Attempt everything due now; returns the number of POSTs made."""
        now = self.clock.now()
        posts = 0
        if self._hold_until is not None and now < self._hold_until:
            await self._refresh(now)
            return 0
        if self._resend_every is not None and (
            self._next_resend_at is None or now >= self._next_resend_at
        ):
            posts += await self._resend(now)
        budget = self._budget(now)
        if budget is not None and budget <= 0:
            await self._refresh(now)
            return posts
        limit = self._batch if budget is None else max(self._batch, self._digest_max)
        rows = await self.db.run(lambda s: outbox.due(s, self.name, now, limit))
        singles: Sequence[outbox.OutboxEntry] = rows
        folded: Sequence[outbox.OutboxEntry] = ()
        if budget is not None and len(rows) > budget:
            singles, folded = rows[: budget - 1], rows[budget - 1 :]
            if self.webhook.format in KEEP_RESOLVES:
                # a digest cannot close a PagerDuty incident: resolves wait for the budget
                folded = [r for r in folded if r.status != "resolved"]
                if not folded:  # only resolves left: spend the whole budget on them
                    singles = rows[:budget]
        failed_in_pass: list[outbox.OutboxEntry] = []
        for row in singles:
            now = self.clock.now()
            outcome = await self._send_row(row, now)
            posts += 1
            if outcome.ok or outcome.permanent:
                failed_in_pass.clear()
                continue
            failed_in_pass.append(row)
            if (
                outcome.path_down
                or outcome.retry_after is not None
                or len(failed_in_pass) >= PATH_FAILURES_IN_PASS
            ):
                await self._path_failed(now, outcome, failed_in_pass)
                folded = ()
                break
        if folded:
            await self._send_digest(folded, self.clock.now())
            posts += 1
        await self._refresh(self.clock.now())
        return posts

    # ---------------------------------------------------------------- one row

    async def _send_row(self, row: outbox.OutboxEntry, now: datetime) -> Outcome:
        attempt = row.attempts + 1
        try:
            request = formats.render(row.payload, self.webhook, attempt=attempt, now=now)
        except Exception as e:  # a payload we cannot render will never render: dead letter
            outcome = Outcome(ok=False, permanent=True, error=f"cannot render: {e!r}")
            await self._record(row, outcome, now)
            return outcome  # not the path's fault: health unchanged
        outcome = await post(
            self._get_session(), self.webhook, request, event_id=row.event_id, now=now
        )
        self._attempts += 1
        self._note_sent(now)
        await self._record(row, outcome, now)
        self._health(outcome, now)
        if outcome.ok:
            await self._after_success(now)
        return outcome

    async def _record(self, row: outbox.OutboxEntry, outcome: Outcome, now: datetime) -> None:
        ids = [row.id]
        if outcome.ok:
            self._delivered += 1
            await self.db.run(lambda s: outbox.mark_delivered(s, ids, now))
            return
        self._failures += 1
        error = outcome.error or "failed"
        self._last_error = error
        if outcome.permanent:
            self._dead += 1
            log.error("delivery to %s: event %s dead: %s", self.name, row.event_id, error)
            await self.db.run(lambda s: outbox.mark_dead(s, ids, now, error))
            return
        give_up_at = row.created_at + self.webhook.max_age
        if now >= give_up_at:
            self._dead += 1
            log.error(
                "delivery to %s: event %s dead after %s of retries: %s",
                self.name,
                row.event_id,
                self.webhook.max_age,
                error,
            )
            await self.db.run(lambda s: outbox.mark_dead(s, ids, now, f"gave up: {error}"))
            return
        delay = outcome.retry_after or policy.backoff(row.attempts + 1, self._rng)
        next_at = min(now + delay, give_up_at)
        log.warning(
            "delivery to %s: event %s attempt %d failed, retry at %s: %s",
            self.name,
            row.event_id,
            row.attempts + 1,
            next_at.isoformat(),
            error,
        )
        await self.db.run(lambda s: outbox.mark_retry(s, ids, next_at, error))

    # ---------------------------------------------------------------- the path

    async def _path_failed(
        self, now: datetime, outcome: Outcome, failed: Sequence[outbox.OutboxEntry]
    ) -> None:
        """Hold the whole webhook: nothing is sent until the path backoff (or Retry-After) ends."""
        self._path_failures += 1
        delay = outcome.retry_after or policy.backoff(self._path_failures, self._rng)
        until = now + delay
        self._hold_until = until
        live = [r.id for r in failed if now < r.created_at + self.webhook.max_age]

        def write(s: Store) -> None:
            outbox.reschedule(s, live, until)
            outbox.hold(s, self.name, until)

        await self.db.run(write)

    def _health(self, outcome: Outcome, now: datetime) -> None:
        if outcome.ok:
            was_failing, failures = self._failing, self._consecutive
            self._consecutive = 0
            self._failing_since = None
            self._failing = False
            if was_failing and self._on_path_health is not None:
                self._on_path_health(
                    self.name, False, f"delivering again after {failures} failed attempts"
                )
            return
        self._consecutive += 1
        if self._failing_since is None:
            self._failing_since = now
        if self._failing:
            return
        too_many = self._consecutive >= self.webhook.fail_after
        too_long = now - self._failing_since >= self._failing_after
        if too_many or too_long:
            self._failing = True
            reason = (
                f"{self._consecutive} consecutive delivery failures to {self.name}"
                f" since {self._failing_since.isoformat()}: {outcome.error}"
            )
            log.error("delivery path %s failing: %s", self.name, reason)
            if self._on_path_health is not None:
                self._on_path_health(self.name, True, reason)

    async def _after_success(self, now: datetime) -> None:
        if self._path_failures or self._hold_until is not None:
            self._path_failures = 0
            self._hold_until = None
            await self.db.run(lambda s: outbox.release(s, self.name, now))

    # ---------------------------------------------------------------- storm control

    def _note_sent(self, now: datetime) -> None:
        if self.webhook.rate is not None:
            self._sent_at.append(now)

    def _budget(self, now: datetime) -> int | None:
        if self.webhook.rate is None:
            return None
        while self._sent_at and self._sent_at[0] <= now - RATE_WINDOW:
            self._sent_at.popleft()
        return self.webhook.rate - len(self._sent_at)

    def _budget_refill_at(self) -> datetime | None:
        if self.webhook.rate is None or len(self._sent_at) < self.webhook.rate:
            return None
        return self._sent_at[-self.webhook.rate] + RATE_WINDOW

    async def _send_digest(self, rows: Sequence[outbox.OutboxEntry], now: datetime) -> None:
        attempt = max(r.attempts for r in rows) + 1
        request, key = formats.render_digest(
            [r.payload for r in rows], self.webhook, host=self.host, attempt=attempt, now=now
        )
        outcome = await post(self._get_session(), self.webhook, request, event_id=key, now=now)
        self._attempts += 1
        self._note_sent(now)
        self._health(outcome, now)
        ids = [r.id for r in rows]
        if outcome.ok:
            self._delivered += len(rows)
            self._digests += 1
            log.warning("delivery to %s: %d alerts sent as one digest", self.name, len(rows))
            await self.db.run(lambda s: outbox.mark_delivered(s, ids, now, f"in digest {key}"))
            await self._after_success(now)
            return
        self._failures += 1
        error = outcome.error or "failed"
        self._last_error = error
        if outcome.permanent:
            self._dead += len(rows)
            await self.db.run(lambda s: outbox.mark_dead(s, ids, now, f"digest: {error}"))
            return
        expired = [r.id for r in rows if now >= r.created_at + self.webhook.max_age]
        if expired:
            self._dead += len(expired)
            await self.db.run(lambda s: outbox.mark_dead(s, expired, now, f"gave up: {error}"))
        await self._path_failed(now, outcome, [r for r in rows if r.id not in set(expired)])

    # ---------------------------------------------------------------- alertmanager re-send

    async def _resend(self, now: datetime) -> int:
        assert self._resend_every is not None
        self._next_resend_at = now + self._resend_every
        alerts = await self.db.run(lambda s: outbox.firing_snapshots(s, self.name))
        if not alerts:
            return 0
        request = alertmanager.render_many(alerts, self.webhook, attempt=1, now=now)
        key = f"resend-{self.name}-{int(now.timestamp())}"
        outcome = await post(self._get_session(), self.webhook, request, event_id=key, now=now)
        self._attempts += 1
        self._health(outcome, now)
        if not outcome.ok:
            self._failures += 1
            self._last_error = outcome.error
            log.warning(
                "delivery to %s: re-send of firing alerts failed: %s", self.name, outcome.error
            )
        return 1

    # ---------------------------------------------------------------- plumbing

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _refresh(self, now: datetime) -> None:
        self._queue = await self.db.run(lambda s: outbox.queue_stats(s, self.name))
        self._stats_at = now

    async def _sleep(self, at: datetime | None) -> None:
        if self._woken.is_set():
            return
        waiters: set[asyncio.Task[object]] = {asyncio.create_task(self._woken.wait())}
        if at is not None:
            waiters.add(asyncio.create_task(self.clock.sleep_until(at)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()
            for task in waiters:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
