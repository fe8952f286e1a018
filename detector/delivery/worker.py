"""The outbox worker: one asyncio task per webhook that drains its rows of the outbox.

Each pass (:meth:`DeliveryWorker.run_once`) does, with ``now`` read once from the injected clock:

1. if the path is on hold (it failed as a whole), do nothing until the hold ends;
2. for ``alertmanager`` webhooks, re-post every firing alert the receiver accepted once per
   ``resend_every``; a refused list is split in halves to find the refused alert, which is
   dead-lettered and never re-sent again (the same for an alertmanager digest);
3. read the due rows (heads of their fingerprint only, so order per fingerprint holds) in id order;
4. if a ``rate`` is set and more rows are due than the minute's budget allows, send budget-1 of
   them and fold the rest into ONE digest message (PagerDuty resolves are never folded: they
   wait for the budget, since only a resolve with its dedup_key closes the incident);
5. POST each and judge the answer (:func:`detector.delivery.formats.judge`). A delivered row is
   written at once. A failed row's fate waits for the next answer, since one answer cannot tell
   whose fault it is:

   - the PATH failed when the answer says so (401/403/404/410 and the formats' own cases:
     revoked token, endpoint gone), when nothing reached the receiver (connection refused,
     timeout), on ``Retry-After``, when two different rows fail back to back (two 400s included),
     or when the first row after a hold fails again. Then the whole webhook is held: every
     pending row waits until ``now`` + path backoff (≤ 30 s, jittered) or ``Retry-After``, written
     to the rows, logged once with that time, and that is exactly when the next pass tries;
   - otherwise it is the ROW's: a refused payload (400/413/422…) is dead-lettered once another
     row got through around it (the row after it in this pass, or the attempt before it), and
     reported through ``on_dead_letter``; a transient failure is retried after the row's own
     backoff (≤ 30 s), logged with the time it is really tried;

6. on the first success after a hold, make every pending row due again so the backlog drains in
   id order, and tell ``on_path_health`` the path recovered;
7. tell ``on_path_health`` when the path starts failing: at once when the receiver refused the
   webhook itself (the reason quotes its answer, ``HTTP 404 Not Found: no_service``), else after
   ``fail_after`` consecutive failures or 5 minutes of failures.

Rows past the webhook's ``max_age`` are dead-lettered when they fail again (also reported).

Store calls: what a pass writes (a delivery, a retry, a dead letter, a hold) waits in
``_writes`` until just before the next POST or the end of the pass, and the end of the pass is
one call that writes it, reads the queue's gauges and when the next row is due. A pass woken by a
commit gets its due rows from that commit's own call (:meth:`due_reader`): a pass that sends one
new alert is one store call, not four. A delivery is thus written before anything else is sent,
as before; a crash between a POST and its write sends that row again (its event id is the
receiver's idempotency key).

The service calls :meth:`wake` after a commit that added rows; between wakes the loop sleeps on
``clock.sleep_until`` (the earliest due row, hold end, budget refill or re-send), and at most
:data:`RESCAN_EVERY`, so rows re-queued from outside (``detector outbox retry``) go out without a
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import aiohttp

from detector.clock import Clock
from detector.delivery import alertmanager, formats, policy
from detector.delivery.channels import deliver
from detector.delivery.transport import Outcome
from detector.model import WebhookConfig
from detector.store import outbox
from detector.store.db import AsyncStore, Store

log = logging.getLogger("detector.delivery")

PathHealth = Callable[[str, bool, str], None]  # (webhook, failing, reason)
Counted = Literal[
    "delivery_attempts", "delivery_failures", "dead_letters", "notifications_delivered"
]
DeadLetter = Callable[[str, str, str], None]  # (webhook, event_id, reason)
RATE_WINDOW = timedelta(minutes=1)
FAILING_AFTER = timedelta(minutes=5)
KEEP_RESOLVES = frozenset({"pagerduty"})  # formats whose resolves are never folded into a digest
PATH_FAILURES_IN_PASS = 2  # different rows failing back to back = the path, not the row
IDLE_GUARD = timedelta(seconds=1)
RESCAN_EVERY = timedelta(seconds=30)  # re-read the outbox at least this often (rows re-queued)

Failed = tuple[outbox.OutboxEntry, Outcome]


@dataclass(frozen=True)
class Handed:
    """Due rows read for a worker by another store call (:meth:`DeliveryWorker.due_reader`)."""

    passes: int  # the worker's pass count when it was asked: valid only if no pass ran since
    at: datetime  # due at this time
    rows: list[outbox.OutboxEntry]


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
    held_until: datetime | None = None  # the path is on hold: the next attempt, exactly


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
        on_dead_letter: DeadLetter | None = None,
        on_count: Callable[[Counted, int], None] | None = None,
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
        self._on_dead_letter = on_dead_letter
        self._on_count = on_count
        """Told each attempt, failure, delivered notification and dead letter as it happens
        (the agent's /metrics)."""
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
        self._last_ok = False  # the latest attempt was delivered (evidence that the path works)
        self._sent_at: deque[datetime] = deque()
        self.sleeping_until: datetime | None = None  # the deadline the loop sleeps on (None: awake)
        # counters
        self._attempts = 0
        self._failures = 0
        self._delivered = 0
        self._dead = 0
        self._digests = 0
        self._last_error: str | None = None
        self._queue = outbox.QueueStats(0, None)
        self._stats_at: datetime | None = None
        self._writes: list[Callable[[Store], object]] = []
        """What the pass wrote, not yet sent to the store (``_flush``, ``_finish``)."""
        self._due_in_db: datetime | None = None
        """When the earliest row is due as the last ``_finish`` read it (None: none pending)."""
        self._passes = 0
        self._handed: Handed | None = None
        """Due rows read by a commit's own store call, for the next pass (``due_reader``)."""

    # ---------------------------------------------------------------- public

    def _count(self, metric: Counted, n: int = 1) -> None:
        if metric == "delivery_attempts":
            self._attempts += n
        elif metric == "delivery_failures":
            self._failures += n
        elif metric == "notifications_delivered":
            self._delivered += n
        else:
            self._dead += n
        if self._on_count is not None:
            self._on_count(metric, n)

    def wake(self, handed: Handed | None = None) -> None:
        """New rows were committed: run a pass now instead of at the next deadline. ``handed``:
        what the reader of :meth:`due_reader` returned, in the commit's store call."""
        if handed is not None and handed.passes == self._passes and self._parked.is_set():
            self._handed = handed
        self._woken.set()

    def due_reader(self) -> Callable[[Store], Handed] | None:
        """For the service's commit that adds rows: a function that reads, in the commit's own
        store call right after it, the rows the next pass sends, so that pass need not ask the
        store (hand the result to :meth:`wake`). None when that pass would not send them as they
        are: it runs already (it may write rows meanwhile), or the path is held or out of budget.

        The rows are then read after every write of the worker (it is parked, its last call
        done; one store thread runs calls in order) and taken only if no pass started since; a
        row that falls due between that read and the pass waits for the next pass, which its
        own ``_finish`` schedules (a read a few ms earlier, nothing else)."""
        if not self._parked.is_set() or self._hold_until is not None:
            return None
        now = self.clock.now()
        budget = self._budget(now)
        if budget is not None or self._resend_every is not None:
            return None  # storm control and re-sends: the pass reads for itself
        name, limit, passes = self.name, self._batch, self._passes

        def read(s: Store) -> Handed:
            return Handed(passes, now, outbox.due(s, name, now, limit))

        return read

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
            held_until=self._hold_until,
        )

    async def run(self) -> None:
        """Deliver forever (cancel to stop). Errors of the store are logged and retried."""
        while True:
            self._woken.clear()
            try:
                posts = await self.run_once()
                at = self._wake_at(self._due_in_db)
                now = self.clock.now()
                if posts == 0 and at is not None and at <= now:
                    at = now + IDLE_GUARD  # a pass that could send nothing must not spin
            except Exception:
                log.exception("delivery to %s: pass failed; retrying in 5s", self.name)
                now = self.clock.now()
                at = now + timedelta(seconds=5)
            rescan = now + RESCAN_EVERY  # rows may be re-queued by `detector outbox retry`
            wake_at = rescan if at is None else min(at, rescan)
            self._parked_until = wake_at
            self._parked.set()
            await self._sleep(wake_at)
            self._parked.clear()

    def idle(self) -> bool:
        """True while :meth:`run` is parked with nothing due now: no wake pending, and the time it
        wakes at (a held or backed-off row, the rate budget, a re-send, the rescan) still ahead
        on the clock."""
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
        return self._wake_at(await self.db.run(functools.partial(self._earliest, self.clock.now())))

    def _earliest(self, now: datetime, s: Store) -> datetime | None:
        """When the earliest head row is due (``now`` if one is; None: nothing pending)."""
        if outbox.due(s, self.name, now, 1):  # cheap on a long backlog
            return now
        return outbox.next_due_at(s, self.name)  # O(queue), only when nothing is due

    def _wake_at(self, due: datetime | None) -> datetime | None:
        """``due`` (the earliest row, from the store) held back by hold and rate budget, or the
        next re-send if that comes first."""
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
        self._passes += 1
        handed, self._handed = self._handed, None
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
        if handed is not None and self._handed_holds(handed, now, budget):
            rows = handed.rows  # read by the commit that woke this pass (``due_reader``)
        else:
            await self._flush()
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
        failed: list[Failed] = []  # failed in this pass, whose fault not known yet
        path_ok_before = False  # the attempt before the first of ``failed`` was delivered
        for row in singles:
            now = self.clock.now()
            prior_ok = self._last_ok
            outcome = await self._send_row(row, now)
            posts += 1
            if outcome is None:  # could not render: dead-lettered, the path is not involved
                continue
            if outcome.ok:
                await self._settle(failed, self.clock.now(), path_ok=True)
                failed.clear()
                continue
            if not failed:
                path_ok_before = prior_ok
            failed.append((row, outcome))
            if self._is_path_failure(outcome, failed):
                await self._path_failed(now, outcome, failed)
                failed.clear()
                folded = ()
                break
        if failed:  # nothing after it told whose fault it was
            await self._settle(failed, self.clock.now(), path_ok=path_ok_before)
        if folded:
            await self._send_digest(folded, self.clock.now())
            posts += 1
        await self._refresh(self.clock.now())
        return posts

    # ---------------------------------------------------------------- one row

    async def _send_row(self, row: outbox.OutboxEntry, now: datetime) -> Outcome | None:
        """POST one row; a delivery is written here, a failure is left to the caller.

        None: the payload cannot be rendered (it never will): dead-lettered here.
        """
        attempt = row.attempts + 1
        try:
            request = formats.render(row.payload, self.webhook, attempt=attempt, now=now)
        except Exception as e:  # a payload we cannot render will never render: dead letter
            self._count("delivery_failures")
            await self._dead_letter([row], now, f"cannot render: {e!r}")
            return None  # not the path's fault: health unchanged
        await self._flush()  # what was delivered before is written before this is sent
        outcome = await deliver(
            self._get_session(), self.webhook, request, event_id=row.event_id, now=now
        )
        self._count("delivery_attempts")
        self._note_sent(now)
        self._health(outcome, now)
        if outcome.ok:
            self._count("notifications_delivered")
            self._write(functools.partial(outbox.mark_delivered, ids=[row.id], now=now))
            self._after_success(now)
        else:
            self._count("delivery_failures")
            self._last_error = outcome.error or "failed"
        return outcome

    def _is_path_failure(self, outcome: Outcome, failed: Sequence[Failed]) -> bool:
        if outcome.fault == "path" or outcome.path_down or outcome.retry_after is not None:
            return True
        if len(failed) >= PATH_FAILURES_IN_PASS:
            return True  # two different rows failing back to back (two 400s included)
        return outcome.fault is None and self._path_failures > 0  # the probe after a hold

    async def _settle(self, failed: Sequence[Failed], now: datetime, *, path_ok: bool) -> None:
        """The failures were the rows' own: dead-letter refused rows, retry the others."""
        for row, outcome in failed:
            error = outcome.error or "failed"
            give_up_at = row.created_at + self.webhook.max_age
            if outcome.fault == "row" and (path_ok or outcome.definite):
                await self._dead_letter([row], now, f"refused: {outcome.answer}")
            elif now >= give_up_at:
                await self._dead_letter(
                    [row], now, f"gave up after {self.webhook.max_age} of retries: {error}"
                )
            else:
                next_at = min(now + policy.backoff(row.attempts + 1, self._rng), give_up_at)
                log.warning(
                    "delivery to %s: event %s attempt %d failed, next attempt at %s: %s",
                    self.name,
                    row.event_id,
                    row.attempts + 1,
                    next_at.isoformat(),
                    error,
                )
                await self._retry_later(row, next_at, error)

    async def _retry_later(self, row: outbox.OutboxEntry, at: datetime, error: str) -> None:
        self._write(
            functools.partial(outbox.mark_retry, ids=[row.id], next_attempt_at=at, error=error)
        )

    async def _dead_letter(
        self, rows: Sequence[outbox.OutboxEntry], now: datetime, reason: str
    ) -> None:
        """Give up on ``rows`` (written, counted, logged and reported one by one)."""
        ids = [r.id for r in rows]
        self._write(functools.partial(outbox.mark_dead, ids=ids, now=now, error=reason))
        self._count("dead_letters", len(rows))
        self._last_error = reason
        for row in rows:
            log.error("delivery to %s: event %s dead: %s", self.name, row.event_id, reason)
            if self._on_dead_letter is not None:
                self._on_dead_letter(self.name, row.event_id, reason)

    # ---------------------------------------------------------------- the path

    async def _path_failed(self, now: datetime, outcome: Outcome, failed: Sequence[Failed]) -> None:
        """Hold the whole webhook: nothing is sent until the path backoff (or Retry-After) ends.

        1. the hold ends at ``now`` + :func:`policy.path_backoff` (≤ 30 s) or ``Retry-After``;
        2. the rows that failed get one more attempt counted, their error and that time;
           those past ``max_age`` are dead-lettered instead;
        3. every other pending row of the webhook is pushed to at least that time (persisted,
           so a restart keeps the hold);
        4. one log line says why and when the next attempt is, which is when the worker wakes;
        5. if the receiver refused the webhook itself, the path is reported failing at once.
        """
        self._path_failures += 1
        delay = outcome.retry_after or policy.path_backoff(self._path_failures, self._rng)
        until = now + delay
        self._hold_until = until
        expired = [r for r, _ in failed if now >= r.created_at + self.webhook.max_age]
        gone = {r.id for r in expired}
        live: dict[str, list[int]] = {}  # error → ids (a digest's rows share one)
        for r, o in failed:
            if r.id not in gone:
                live.setdefault(o.error or "failed", []).append(r.id)
        if expired:
            error = outcome.error or "failed"
            await self._dead_letter(
                expired, now, f"gave up after {self.webhook.max_age} of retries: {error}"
            )

        def write(s: Store) -> None:
            for error, ids in live.items():
                outbox.mark_retry(s, ids, until, error)
            outbox.hold(s, self.name, until)

        self._write(write)
        log.warning(
            "delivery to %s: path failing (%s); every pending notification held, "
            "next attempt at %s",
            self.name,
            outcome.answer,
            until.isoformat(),
        )
        refused_all = len(failed) >= PATH_FAILURES_IN_PASS and all(o.fault for _, o in failed)
        if outcome.fault == "path" or refused_all:
            self._report_failing(outcome.answer)

    def _health(self, outcome: Outcome, now: datetime) -> None:
        self._last_ok = outcome.ok
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
            self._report_failing(
                f"{self._consecutive} consecutive delivery failures to {self.name}"
                f" since {self._failing_since.isoformat()}: {outcome.error}"
            )

    def _report_failing(self, reason: str) -> None:
        if self._failing:
            return
        self._failing = True
        log.error("delivery path %s failing: %s", self.name, reason)
        if self._on_path_health is not None:
            self._on_path_health(self.name, True, reason)

    def _after_success(self, now: datetime) -> None:
        if self._path_failures or self._hold_until is not None:
            self._path_failures = 0
            self._hold_until = None
            self._write(functools.partial(outbox.release, webhook=self.name, now=now))

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
        await self._flush()
        outcome = await deliver(self._get_session(), self.webhook, request, event_id=key, now=now)
        self._count("delivery_attempts")
        self._note_sent(now)
        self._health(outcome, now)
        ids = [r.id for r in rows]
        if outcome.ok:
            self._count("notifications_delivered", len(rows))
            self._digests += 1
            log.warning("delivery to %s: %d alerts sent as one digest", self.name, len(rows))
            note = f"in digest {key}"
            self._write(functools.partial(outbox.mark_delivered, ids=ids, now=now, note=note))
            self._after_success(now)
            return
        self._count("delivery_failures")
        self._last_error = outcome.error or "failed"
        if outcome.fault == "row" and len(rows) > 1 and self.webhook.format == "alertmanager":
            # one list, validated as a whole: split it to find the alert that is refused
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                await self._send_digest(part, self.clock.now())
            return
        if outcome.fault == "row":
            # the receiver refused the digest (or, split down, this one alert) itself
            await self._dead_letter(rows, now, f"digest refused: {outcome.answer}")
            return
        await self._path_failed(now, outcome, [(r, outcome) for r in rows])

    # ---------------------------------------------------------------- alertmanager re-send

    async def _resend(self, now: datetime) -> int:
        """Re-post every firing alert the receiver accepted; returns the number of POSTs.

        A refused list is split in halves until the refused alerts are found (Alertmanager
        answers 400 for the whole list when one alert is invalid); those are dead-lettered (when
        another part of the list got through, or the list was that one alert) and so never
        re-sent; the others stay refreshed.
        """
        assert self._resend_every is not None
        self._next_resend_at = now + self._resend_every
        await self._flush()
        rows = await self.db.run(lambda s: outbox.firing_snapshots(s, self.name))
        if not rows:
            return 0
        key = f"resend-{self.name}-{int(now.timestamp())}"
        posts = 0
        accepted = False
        refused: list[tuple[int, str, Outcome]] = []
        pending = [rows]
        while pending:
            part = pending.pop(0)
            request = alertmanager.render_many(
                [payload for _, _, payload in part], self.webhook, attempt=1, now=now
            )
            await self._flush()
            outcome = await deliver(
                self._get_session(), self.webhook, request, event_id=key, now=now
            )
            posts += 1
            self._count("delivery_attempts")
            self._health(outcome, now)
            if outcome.ok:
                accepted = True
                continue
            self._count("delivery_failures")
            self._last_error = outcome.error
            if outcome.fault != "row":  # the path, or transient: try the whole list next time
                log.warning(
                    "delivery to %s: re-send of firing alerts failed: %s", self.name, outcome.error
                )
                return posts
            if len(part) == 1:
                refused.append((part[0][0], part[0][1], outcome))
            else:
                half = len(part) // 2
                pending[:0] = [part[:half], part[half:]]
        if refused and (accepted or len(rows) == 1):
            for row_id, event_id, outcome in refused:
                reason = f"re-send refused: {outcome.answer}"
                self._write(functools.partial(self._refuse, row_id, now, reason))
                self._count("dead_letters")
                self._last_error = reason
                log.error("delivery to %s: event %s dead: %s", self.name, event_id, reason)
                if self._on_dead_letter is not None:
                    self._on_dead_letter(self.name, event_id, reason)
        elif refused:
            log.warning(
                "delivery to %s: re-send of firing alerts refused: %s",
                self.name,
                refused[0][2].answer,
            )
        return posts

    @staticmethod
    def _refuse(row_id: int, now: datetime, reason: str, s: Store) -> None:
        outbox.mark_refused(s, [row_id], now, reason)

    # ---------------------------------------------------------------- plumbing

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _handed_holds(self, handed: Handed, now: datetime, budget: int | None) -> bool:
        """Whether ``handed`` is what a read now would give: no write of this pass waits, no
        budget counts, and no row known to fall due between its read and now (a retry)."""
        later = self._due_in_db
        fell_due = later is not None and handed.at < later <= now
        return budget is None and not self._writes and not fell_due

    def _write(self, fn: Callable[[Store], object]) -> None:
        """Write ``fn`` with the next store call of this worker (before its next POST)."""
        self._writes.append(fn)

    async def _flush(self) -> None:
        """Write what waits in ``_writes`` now (one call; nothing if nothing waits)."""
        if self._writes:
            writes, self._writes = self._writes, []
            await self.db.run(functools.partial(_apply, writes))

    async def _refresh(self, now: datetime) -> None:
        """The end of a pass, one store call: what it wrote, then the queue's gauges and when the
        next row is due (``_due_in_db``)."""
        writes, self._writes = self._writes, []
        at = self.clock.now()

        def finish(s: Store) -> tuple[outbox.QueueStats, datetime | None]:
            _apply(writes, s)
            return outbox.queue_stats(s, self.name), self._earliest(at, s)

        self._queue, self._due_in_db = await self.db.run(finish)
        self._stats_at = now

    async def _sleep(self, at: datetime | None) -> None:
        if self._woken.is_set():
            return
        waiters: set[asyncio.Task[object]] = {asyncio.create_task(self._woken.wait())}
        if at is not None:
            waiters.add(asyncio.create_task(self.clock.sleep_until(at)))
        self.sleeping_until = at
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.sleeping_until = None
            for task in waiters:
                task.cancel()
            for task in waiters:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _apply(writes: Sequence[Callable[[Store], object]], s: Store) -> None:
    for fn in writes:
        fn(s)
