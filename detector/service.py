"""The agent: wires sources → pipeline → store → delivery, and keeps itself honest.

Read top to bottom, this is the data flow of DESIGN.md §2:

1. ``Agent.run`` loads the config, opens the state file under its lock (a second agent on the same
   file exits 2; a corrupt or empty one is moved aside and rebuilt, and the user is told), restores
   rule state, alerts and source checkpoints, and notes how long the agent was down; the
   patterns compile in a thread meanwhile (``_compile``; the sources open, the watchdog is
   pinged, READY=1 waits for it), as they do on a reload while the old rules keep matching;
   a source whose full database is not in the cache starts on its quick literal skeleton, the
   full one compiles in the background and is taken between two batches (``_upgrade``);
2. one *pump* task per source pushes its batches into a bounded queue (back-pressure);
3. the single *processor* task takes a batch (and those already waiting behind it, up to
   ``COALESCE_BATCHES``), runs them through the :class:`Pipeline` and commits the result (state +
   alerts + outbox + checkpoints) in one transaction — only then is a read position durable;
   between batches it wakes exactly at the pipeline's next deadline and runs ``tick``;
   deadlines are held back until every source has caught up after a restart, so a line written
   while the agent was down still counts; and an expectation deadline that is due first
   *settles*: its rule's sources read what they hold and the queue is drained (``_settling``,
   at most ``agent.settle``), so a line stamped before it that is still on its way counts;
4. one delivery worker per webhook sends what the commits put in the outbox;
5. around it: signals (SIGTERM/SIGINT stop, SIGHUP reloads), a config-file watcher, sd_notify
   (READY, STATUS, WATCHDOG, RELOADING, STOPPING), the health state behind the optional HTTP
   listener and the dead man's switch, and self-monitoring (``selfmon.py``): every problem of
   the agent's own (unreadable source, failing webhook, dead letters, refused reload, state file
   failing, listener down, an unclean previous stop) goes into one problem registry
   (``problems.py``), which turns it into an agent alert once it has lasted its grace.

The agent never exits on a problem it can outlive: a state file it cannot write (disk full,
read-only) or a listen address in use leaves it running degraded — READY=1 is sent, /healthz is
503, agent alerts go out straight from memory — and it retries until the problem is gone, so that
systemd's start limit can never leave it dead and silent.

Every mutation of the pipeline happens on the processor task (reloads and agent signals are handed
to it), so commits are ordered and no lock is needed. Shutdown runs in reverse order of start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from detector import __version__
from detector.alerts import AlertBook
from detector.clock import Clock
from detector.config import ConfigError, load_config
from detector.config.watch import Snapshot, config_changes, snapshot
from detector.delivery.direct import send_from_memory
from detector.delivery.worker import DeliveryWorker, Handed
from detector.health import Health, loop_lag_monitor
from detector.http import heartbeat_loop, start_http
from detector.matching import Matcher
from detector.model import Config, FileSourceConfig, JournaldSourceConfig, SourceConfig
from detector.pipeline import Pipeline, build_matcher, upgrade_matcher
from detector.problems import AGENT_RULE, Problems
from detector.records import Commit
from detector.rules.base import Signal, When
from detector.sdnotify import Notifier, watchdog_loop
from detector.selfmon import SelfMonitor
from detector.silences import Silence
from detector.sources.base import Batch, Line, Source
from detector.store import outbox
from detector.store import silences as silence_table
from detector.store.db import AsyncStore, Store, StoreError, release_memory
from detector.store.db import alert_rows as alert_rows_of
from detector.store.runs import (
    PreviousRun,
    StateLocked,
    all_rule_state,
    begin_run,
    end_run,
    open_store,
    pruner,
)
from detector.timefmt import iso_or_none

log = logging.getLogger("detector")

QUEUE_BATCHES = 8
QUEUE_BYTES = 2 << 20
"""The queue takes no batch while it holds this many bytes of blocks (and at most QUEUE_BATCHES
batches): what is read waits in memory, 1 MiB a block, so the bound is bytes, not batches."""
COALESCE_BATCHES = 8
"""At most this many batches already waiting in the queue are processed together and committed
in one transaction (catching up: one commit per ~8 MiB instead of per 1 MiB block)..."""
COALESCE_S = 0.25
"""...and no more once processing them took this long (physical time): the event loop, and with it
the systemd watchdog ping, must not wait for eight slow batches (lines at the regex budget)."""
DEFER_S = 0.2
"""How long a commit may wait to be written (physical time): what may wait and what never does
is decided in one place, :class:`Deferral`."""
ALIVE_EVERY_S = 15.0
CONFIG_POLL_S = 1.0
OPEN_WAIT_S = 15.0
RETRY_S = 30.0
"""A state file or listen address that failed is tried again this often."""
CATCH_UP_RECHECK_S = 0.2
CATCH_UP_LIMIT_S = 120.0
OUTBOX_KEEP = timedelta(days=7)
SILENCE_POLL_S = 1.0
"""How often the agent looks whether ``detector silence`` changed the silences table: a ``stat``
of the state file and its WAL on the loop; only when those moved (or ``SILENCE_RECHECK_S``
passed), one ``PRAGMA data_version`` on the store's thread, and the table only when that moved."""
SILENCE_RECHECK_S = 15.0
"""``PRAGMA data_version`` at least this often, whatever the files' stamps say (a write within
the file system's timestamp tick that left the WAL's size as it was)."""


T = TypeVar("T")


async def in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a thread of its own, ended with the call: the agent's
    blocking calls (reading the config, opening the state file, compiling patterns) are rare, and
    ``asyncio.to_thread``'s default executor keeps every thread it ever started, idle, for
    good: one for each of the start-up's calls that ran at once (an agent at rest with 5 to 7
    threads instead of 4)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(result: T | None, error: BaseException | None) -> None:
        if fut.done():  # the awaiting task was cancelled meanwhile
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = ctx.run(fn, *args, **kwargs), None
        except BaseException as e:  # handed to the awaiting task
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (a stop)
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=getattr(fn, "__name__", "call")).start()
    return await fut


def build_source(
    cfg: SourceConfig, checkpoints: Mapping[str, Any], clock: Clock, config: Config | None = None
) -> Source:
    """The one mapping from a source config to its implementation (``config``: the rules, for
    the journal fields a journald source reads; None: every field)."""
    if isinstance(cfg, FileSourceConfig):
        from detector.sources.files import FileSource  # noqa: PLC0415 - inotify only if used

        return FileSource(cfg, checkpoints, clock)
    from detector.sources.journald import JournaldSource, journal_fields  # noqa: PLC0415

    fields = journal_fields(config, cfg.name) if config is not None else None
    return JournaldSource(cfg, checkpoints, clock, fields=fields)


def reads_other_fields(name: str, old: Config, new: Config) -> bool:
    """Whether the journald source ``name`` must be restarted to read the fields ``new``'s
    rules need (it reads only those ``old``'s rules needed)."""
    if not isinstance(new.sources.get(name), JournaldSourceConfig):
        return False
    from detector.sources.journald import journal_fields  # noqa: PLC0415

    return journal_fields(old, name) != journal_fields(new, name)


class Deferral:
    """Which commit may wait to be written, and the one that waits (``pending``): the one place
    that decides it (``Agent._commit`` asks :meth:`offer` before every write).

    The pipeline in memory is always exactly the state file plus ``pending``: nothing is
    processed between a pipeline step and its commit, and the next commit absorbs the pending
    one (committing the two together is committing one, then the other). So a crash while one
    waits loses nothing and counts nothing twice: its read positions were not written either,
    and its lines, read again, produce the same state.

    *May wait* (at most ``DEFER_S``, then written; until then absorbed by any later commit) —
    a batch's or a deadline round's commit (``defer=True``) holding only:

    - read positions that move a checkpoint the state file already holds (``known``);
    - rule state;
    - rule alerts changed without a notification (an open alert's count, last hit and samples:
      what every batch of a busy log changes; their rows are built once, when written).

    *Never waits* (written at once, with what waits before it):

    - a notification (an outbox row): its POST waits for its commit, so waiting is latency;
    - an agent record (``meta``), an agent alert, an alert deleted: the agent's own state and
      problems are never behind what it says;
    - a file's first checkpoint (a new file, a rotated one found, where a first start begins), a
      checkpoint deleted, a journal's first cursor: lost in a crash, the next start would not
      know the file or where it began and would apply ``start_at`` again, skipping lines;
    - anything once the agent stops, and the commits that are not a batch's or a deadline
      round's (agent signals, silences, the start-up schedules, a reload's);
    - what waits is written at once before a reload reads rule state back, at a stop and when a
      test waits for idle (``Agent._flush_asked``), and ``DEFER_S`` after it began to wait.

    The processor's order obeys the same rule the other way round: a batch handed over before a
    due deadline runs never waits behind it; it is processed first and its lines are judged as
    of the deadline, like a settle's reads (``Agent._handle_handed``, ``Agent._when_for``)."""

    def __init__(self, due: Callable[[], None]) -> None:
        self.pending: Commit | None = None
        self.known: set[tuple[str, str]] = set()
        """(source, key) of every checkpoint in the state file (read at start, then kept by
        :meth:`written`)."""
        self._due = due  # called DEFER_S after a commit began to wait
        self._timer: asyncio.TimerHandle | None = None

    def offer(self, commit: Commit, *, defer: bool, stopping: bool) -> Commit | None:
        """The commit to write now: ``commit`` after what waits (None: nothing to write, or it
        waits, held as ``pending``). ``defer``: a batch's or a deadline round's commit."""
        if self.pending is not None:
            self.pending.absorb(commit)
            commit, self.pending = self.pending, None
        if commit.empty():
            return None
        if defer and not stopping and self._may_wait(commit):
            self.pending = commit
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(DEFER_S, self._fire)
            return None
        self.cancel_timer()
        return commit

    def take(self) -> Commit | None:
        """What waits, to write now whatever it holds (at the stop)."""
        commit, self.pending = self.pending, None
        self.cancel_timer()
        return commit

    def written(self, commit: Commit) -> None:
        """``commit`` is in the state file: its checkpoints are known from now on."""
        for cp in commit.checkpoints:
            if cp.delete:
                self.known.discard((cp.source, cp.key))
            else:
                self.known.add((cp.source, cp.key))

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _may_wait(self, commit: Commit) -> bool:
        if commit.outbox or commit.meta:
            return False
        if any(a is None or a.kind == "agent" for a in commit.changed.values()):
            return False
        if any(row is None or row["kind"] == "agent" for row in commit.alerts.values()):
            return False
        known = self.known
        return all(not cp.delete and (cp.source, cp.key) in known for cp in commit.checkpoints)

    def _fire(self) -> None:
        self._timer = None
        if self.pending is not None:
            self._due()


class BatchQueue(asyncio.Queue[Batch]):
    """An :class:`asyncio.Queue` of batches that is also full while it holds ``max_bytes`` of
    blocks or more (the hooks ``_put``/``_get`` are those ``asyncio.PriorityQueue`` uses)."""

    def __init__(self, max_bytes: int, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.arrived: Callable[[], None] = lambda: None
        """Called with each batch put: the processor's doorbell (it takes batches with
        ``get_nowait``, no task waiting in ``get`` per batch)."""

    def full(self) -> bool:
        return self.bytes >= self.max_bytes or super().full()

    def _put(self, item: Batch) -> None:
        self.bytes += len(item.block) if item.block else 0
        super()._put(item)
        self.arrived()

    def _get(self) -> Batch:
        item = super()._get()
        self.bytes -= len(item.block) if item.block else 0
        return item


@dataclass
class _Running:
    cfg: SourceConfig
    source: Source
    task: asyncio.Task[None]


@dataclass
class _Settle:
    """A due expectation deadline waiting until its sources have handed over what they held
    (``Source.read_now``), at most until ``until`` on the clock (``agent.settle``)."""

    deadline: datetime
    until: datetime
    reads: dict[str, asyncio.Future[None]]

    def ready(self, now: datetime) -> bool:
        return now >= self.until or all(f.done() for f in self.reads.values())


@dataclass
class AgentState:
    """What the agent knows about itself beyond the metrics (for /status and agent alerts)."""

    started_at: datetime
    caught_up: bool = False
    batches: int = 0
    commits: int = 0


class Agent:
    def __init__(
        self,
        config_path: Path,
        clock: Clock,
        *,
        env: Mapping[str, str] | None = None,
        notifier: Notifier | None = None,
        catch_up_limit_s: float = CATCH_UP_LIMIT_S,
        loop_lag_limit: timedelta = timedelta(seconds=5),
    ) -> None:
        self.config_path = Path(config_path)
        self.clock = clock
        self.env = env
        self.notifier = notifier or Notifier()
        self.catch_up_limit_s = catch_up_limit_s
        self.loop_lag_limit = loop_lag_limit
        self.problems = Problems()
        self.health = Health(clock, problems=self.problems)
        self.monitor = SelfMonitor(
            problems=self.problems,
            clock=clock,
            notifier=self.notifier,
            emit=self.raise_agent_signal,
            status_line=self._status_line,
        )
        self._stop = asyncio.Event()
        self._wake = False  # a reload, agent signal, stop… the processor has not looked at yet
        self._bell: asyncio.Future[None] | None = None  # what the parked processor awaits
        self._reload_requested = False
        self._reload_explicit = False
        self._watch_base: Snapshot | None = None  # the config's files as last read
        self.previous: PreviousRun | None = None
        self._db: AsyncStore | None = None
        self._exit_code = 0  # 2: refused to start (another agent holds the state file)
        self._pending_signals: list[Signal] = []
        self._pending_silences: list[Silence] | None = None
        self._compiling: tuple[Config, asyncio.Future[Matcher], Snapshot] | None = None
        """A reload's new config and its matcher compiling in a thread (``_begin_reload``)."""
        self._upgrading: tuple[asyncio.Future[list[str]], threading.Event] | None = None
        """The full databases of the newest matcher compiling in a thread (``_upgrade``), until
        their compile has ended and said so."""
        self.queue = BatchQueue(QUEUE_BYTES, maxsize=QUEUE_BATCHES)
        self.queue.arrived = self._ring
        self.sources: dict[str, _Running] = {}
        self.workers: dict[str, tuple[DeliveryWorker, asyncio.Task[None]]] = {}
        self.down_since: datetime | None = None
        # wait_idle(): while the processor is parked with nothing to do, what it waits on and the
        # deadline the clock would wake it at (None while it works); the event tells waiters.
        self._parked: tuple[set[asyncio.Future[Any]], datetime | None] | None = None
        self._parked_event = asyncio.Event()
        self._settle: _Settle | None = None
        """An expectation deadline that is due, waiting for its sources' reads (``_settling``)."""
        self._due_at: datetime | None = None
        """The due deadline a batch being processed was handed over before (``_handle_handed``):
        its lines are judged as of it."""
        self._lagging: dict[str, asyncio.Future[None]] = {}
        """Sources whose read outlived a settle: not waited for again until it is done."""
        self.deferral = Deferral(self._defer_due)
        """What may wait to be written, and what waits (see :class:`Deferral`)."""
        self._flush_asked = False

    @property
    def db(self) -> AsyncStore:
        """The state file (open once ``_open_state`` succeeded; nothing runs before that)."""
        assert self._db is not None, "the state file is not open"
        return self._db

    # ---------------------------------------------------------------- public controls

    def _nudge(self) -> None:
        """Something for the processor to look at (a reload, an agent signal, a stop…)."""
        self._wake = True
        self._ring()

    def _ring(self) -> None:
        """Wake the parked processor (a batch put, a nudge, a deadline or a compile done)."""
        if self._bell is not None and not self._bell.done():
            self._bell.set_result(None)

    def _ring_cb(self, _fut: asyncio.Future[Any]) -> None:
        self._ring()

    def request_stop(self) -> None:
        self._stop.set()
        self._nudge()

    def request_reload(self, explicit: bool = True) -> None:
        """Reload rules.yaml. ``explicit``: asked for (SIGHUP, ``systemctl reload``), so a refusal
        is reported at once; the file watcher's reloads get a grace period."""
        self._reload_requested = True
        self._reload_explicit = self._reload_explicit or explicit
        self._nudge()

    def raise_agent_signal(self, s: Signal) -> None:
        """Hand an agent alert to the processor (callable from any task on the loop)."""
        self._pending_signals.append(s)
        self._nudge()

    async def wait_idle(self) -> None:
        """Return once the agent has nothing left to do right now. For in-process tests: drive
        the agent to idle, then assert what did (or did not) happen.

        Idle means: the processor is parked with the queue empty, every source caught up, no
        reload or agent signal pending and no deadline due on the clock; and every delivery
        worker is parked with nothing due now (held or backed-off rows wait for the clock and do
        not count). Lines a source has not noticed yet are not seen: first wait for them to be
        read (``pipeline.lines_read``), then for idle. Never returns once the agent stopped."""
        while True:
            await self._parked_event.wait()
            if self.deferral.pending is not None:  # idle means written: ask for it now
                self._flush_asked = True
                self._nudge()
                await asyncio.sleep(0)
                continue
            for worker, _task in list(self.workers.values()):
                await worker.wait_idle()
            if self._idle_now():
                return
            await asyncio.sleep(0)  # parked, but a wake-up is on its way: let it run, look again

    @property
    def settling(self) -> frozenset[str]:
        """The sources a due expectation deadline still waits for (``agent.settle``)."""
        if self._settle is None:
            return frozenset()
        return frozenset(n for n, f in self._settle.reads.items() if not f.done())

    def _idle_now(self) -> bool:
        if self._parked is None:
            return False
        waits, deadline = self._parked
        return (
            not self._wake  # reload, agent signal or stop pending
            and self.deferral.pending is None  # a commit waits to be written
            and self._settle is None  # a due deadline waits for its sources' reads
            and self._compiling is None  # a reload's patterns are compiling
            and self._upgrading is None  # the full databases are compiling
            and self.queue.empty()
            and not any(f.done() for f in waits)  # a batch taken, or the deadline reached
            and (deadline is None or deadline > self.clock.now())
            and self.state.caught_up
            and all(r.source.caught_up() for r in self.sources.values())
            and all(w.idle() for w, _task in self.workers.values())
        )

    # ---------------------------------------------------------------- start-up

    async def run(self) -> int:
        config = await in_thread(load_config, self.config_path, self.env)
        self.config = config
        await self._rebase_watch(tuple(i.glob for i in config.includes), None)
        self.monitor.config = config
        now = self.clock.now()
        self.state = AgentState(started_at=now)
        self._started_loop_time = asyncio.get_running_loop().time()
        previous_handlers = _handle_signals(
            asyncio.get_running_loop(), stop=self.request_stop, reload=self.request_reload
        )
        self.health.add_status_section("agent", self._status_section)
        self._runner: Any = None
        self.session = aiohttp.ClientSession()
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                tg.create_task(watchdog_loop(self.notifier, self.clock, self.health.live))
                tg.create_task(
                    loop_lag_monitor(self.health, threshold=self.loop_lag_limit), name="loop-lag"
                )
                tg.create_task(self.monitor.run(self._poll), name="self-monitor")
                if config.agent.listen:
                    await self._listen()
                if not await self._open_state():
                    raise _Stop
                await self._start(tg)
                await self._stop.wait()
                raise _Stop
        except* _Stop:
            pass
        finally:
            self.notifier.stopping()
            await self._shutdown()
            for sig, handler in previous_handlers.items():
                if handler is not None:  # None: installed outside Python, nothing to put back
                    signal.signal(sig, handler)
        log.info("detector stopped")
        return self._exit_code

    async def _open_state(self) -> bool:
        """Open the state file and prove it takes a write, before READY=1. If it cannot (disk
        full, read-only, a directory in the way), stay up degraded: tell systemd we are running
        (with the reason in STATUS=), report the problem straight from memory, and try again
        every RETRY_S. False if asked to stop meanwhile."""
        config = self.config
        book: AlertBook | None = None
        while True:
            now = self.clock.now()
            try:
                store, corrupt = await in_thread(open_store, config.agent.state, now)
                prior = await in_thread(begin_run, store, now)
                break
            except StateLocked as e:  # another agent on this file: a configuration error
                log.error("cannot start: %s", e)
                self._exit_code = 2
                return False
            except StoreError as e:
                log.error("%s", e)
                self.monitor.state_failed(str(e))
                if book is None:
                    book = AlertBook(config.agent.host, {}, config.webhooks, config.agent.fallback)
                    self.notifier.ready(self._status_line())
                await self._send_from_memory(book, self.monitor.flush())
                if not await self._pause(RETRY_S):
                    return False
        self._db = AsyncStore(store)
        if book is not None:  # resolve the alert sent from memory the same way
            self.monitor.state_ok()
            await self._send_from_memory(book, self.monitor.flush())
        self.previous = prior
        self._corrupt = corrupt
        return True

    async def _start(self, tg: asyncio.TaskGroup) -> None:
        """Compile the patterns in a thread while the sources open (their pumps wait on the
        bounded queue) and the event loop, with the watchdog ping, runs; READY=1 only once the
        matcher is ready and the processor runs."""
        config = self.config
        compiling = asyncio.ensure_future(self._compile(config))
        alert_rows = alert_rows_of(await self.db.run(lambda s: s.load_alert_chunks()))
        states = await self.db.run(all_rule_state)
        self.deferral.known = await self.db.run(_checkpoint_keys)
        for webhook in config.webhooks:
            self._start_worker(webhook)
        for name, cfg in config.sources.items():
            await self._start_source(name, cfg)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({compiling, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not compiling.done():  # a stop while compiling: do not wait for the rest of it
            compiling.cancel()
            log.info("stopping while the patterns compile: the compile is abandoned")
            raise _Stop
        matcher = compiling.result()
        now = self.clock.now()
        self.pipeline = Pipeline(
            config, now, lambda r: states.get(r, {}), alert_rows, matcher=matcher
        )
        self.pipeline.lazy_rows = True  # alert rows built once a commit, when it is written
        release_memory()  # what loading the state left free goes back to the system
        silences = await self.db.run(functools.partial(_read_silences, now=now))
        await self._commit(self.pipeline.set_silences(silences, now))  # initial schedules
        self.problems.adopt(
            [
                a.key
                for a in self.pipeline.alerts.firing()
                if a.rule == AGENT_RULE and not a.key.startswith(("regex:", "rule:"))
            ],
            now,
        )
        if self._corrupt:
            self.problems.raise_(
                "state-rebuilt", "state", "state file was corrupt and was rebuilt", now,
                description=self._corrupt, expires_after=timedelta(hours=1),
            )  # fmt: skip
        if self.previous is not None and self.previous.last_alive_at is not None:
            self.down_since = self.previous.last_alive_at
            self.pipeline.note_downtime(self.down_since, now)
            log.info("agent was down since %s; catching up before deadlines run", self.down_since)
        log.info(
            "detector %s starting: %d sources, %d rules, %d webhooks, state %s",
            __version__,
            len(config.sources),
            len(config.rules),
            len(config.webhooks),
            config.agent.state,
        )
        await self._sources_opened()
        # alive from now on (the next start measures its downtime from the last such mark): the
        # first commits, of positions only, may wait (DEFER_S), a kill may come before them
        await self._mark_alive()
        tg.create_task(self._processor(), name="processor")
        tg.create_task(self._alive_loop(), name="alive")
        tg.create_task(self._silence_loop(), name="silences")
        tg.create_task(self._watch_config(), name="config-watch")
        if config.agent.heartbeat:
            tg.create_task(
                heartbeat_loop(
                    config.agent.heartbeat,
                    config.agent.heartbeat_every,
                    self.health,
                    self.clock,
                    self.session,
                ),
                name="heartbeat",
            )
        self.notifier.ready(self._status_line())
        log.info("ready")
        self._upgrade(self.pipeline.matcher)  # after READY=1: it must not delay it

    async def _sources_opened(self) -> None:
        """Before READY=1: every source has fixed where it starts (``systemctl start`` returning
        means a line written now is read, even with ``start_at: end``). Bounded: a source that
        hangs is logged, not waited for."""
        waits = [asyncio.ensure_future(r.source.opened.wait()) for r in self.sources.values()]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=OPEN_WAIT_S)
        for fut in pending:
            fut.cancel()
        slow = [n for n, r in self.sources.items() if not r.source.opened.is_set()]
        if slow:
            log.warning("ready before %s opened (over %gs)", ", ".join(slow), OPEN_WAIT_S)

    async def _listen(self) -> None:
        """Start the HTTP listener; an address in use (or any bind error) is a problem, not a
        crash: retried every RETRY_S in the background."""
        listen = self.config.agent.listen
        assert listen is not None
        try:
            self._runner = await start_http(self.health, listen, self.config.agent.listen_token)
        except OSError as e:
            reason = e.strerror or str(e)
            log.error("cannot listen on %s: %s", listen, reason)
            self.monitor.listener_failed(listen, reason)
            self.tg.create_task(self._listen_later(), name="listen-retry")
            return
        self.monitor.listener_ok()
        log.info("HTTP listener on %s (/healthz /metrics /status)", listen)

    async def _listen_later(self) -> None:
        if await self._pause(RETRY_S):
            await self._listen()

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` on the agent's clock; False if a stop was asked for meanwhile."""
        stop = asyncio.ensure_future(self._stop.wait())
        timer = asyncio.ensure_future(
            self.clock.sleep_until(self.clock.now() + timedelta(seconds=seconds))
        )
        await asyncio.wait({stop, timer}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (stop, timer):
            fut.cancel()
        return not self._stop.is_set()

    async def _send_from_memory(self, book: AlertBook, signals: list[Signal]) -> Commit:
        def delivered(webhook: str) -> None:
            self.health.inc("notifications_delivered", webhook=webhook)

        return await send_from_memory(
            book, signals, self.config.webhooks, self.session, self.clock, on_delivered=delivered
        )

    async def _start_source(self, name: str, cfg: SourceConfig) -> None:
        checkpoints = await self.db.run(lambda s: s.load_checkpoints(name))
        source = build_source(cfg, checkpoints, self.clock, self.config)
        task = self.tg.create_task(self._pump(source), name=f"source:{name}")
        self.sources[name] = _Running(cfg, source, task)

    async def _stop_source(self, name: str) -> None:
        running = self.sources.pop(name)
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task
        await running.source.aclose()

    async def _pump(self, source: Source) -> None:
        async for batch in source.batches():
            await self.queue.put(batch)
            del batch  # not held while the source reads the next one

    def _start_worker(self, name: str) -> None:
        webhook = self.config.webhooks[name]
        worker = DeliveryWorker(
            webhook,
            self.db,
            self.clock,
            host=self.config.agent.host,
            session=self.session,
            on_path_health=self.monitor.path_health,
            on_dead_letter=self.monitor.dead_letter,
            on_count=lambda metric, n: self.health.inc(metric, n, webhook=name),
        )
        task = self.tg.create_task(worker.run(), name=f"delivery:{name}")
        self.workers[name] = (worker, task)

    async def _stop_worker(self, name: str) -> None:
        worker, task = self.workers.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.aclose()

    async def _shutdown(self) -> None:
        """Reverse order of start-up: sources, workers, listener, HTTP session, state file (a
        clean stop is marked there: the next start knows this one was not a crash)."""
        last_status = self._snapshot() if hasattr(self, "pipeline") else None
        if self._compiling is not None:  # a reload's compile: abandoned, not waited for
            self._compiling[1].cancel()
        if self._upgrading is not None:  # the full databases' compile: likewise
            self._upgrading[1].set()
            self._upgrading[0].cancel()
        for name in list(self.sources):
            with contextlib.suppress(Exception):
                await self._stop_source(name)
        await self._write_deferred()
        for name in list(self.workers):
            with contextlib.suppress(Exception):
                await self._stop_worker(name)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.session.close()
        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._mark_alive(last_status, stopped=True)
            self._db.close()

    # ---------------------------------------------------------------- the processor

    def _all_caught_up(self) -> bool:
        """True once every source has read its backlog (then deadlines run). A source that cannot
        catch up (journalctl failing, say) holds deadlines back for at most CATCH_UP_LIMIT_S:
        silence detection must not depend on the slowest source."""
        if self.state.caught_up:
            return True
        behind = [n for n, r in self.sources.items() if not r.source.caught_up()]
        waited = asyncio.get_running_loop().time() - self._started_loop_time
        if behind and waited < self.catch_up_limit_s:
            return False
        if not self.queue.empty():
            return False
        self.state.caught_up = True
        if self.previous is not None and self.previous.unclean:
            text = self.previous.describe(self.clock.now(), sum(self.pipeline.lines_read.values()))
            log.error("%s", text)
            self.monitor.unclean_restart(text)
        if behind:
            log.warning(
                "deadlines are live although %s did not catch up within %.0f s",
                ", ".join(behind),
                self.catch_up_limit_s,
            )
        else:
            log.info("all sources caught up; deadlines are live")
        return True

    async def _processor(self) -> None:
        """The one writer: handles what it is asked (a flush, a reload, agent signals,
        silences), runs due deadlines, and otherwise parks on one future (``_bell``) that a
        batch put, a nudge, the next deadline on the clock or a compile done resolves: no task
        per batch, no ``asyncio.wait`` per wake-up."""
        # kept until it fires: the sleep until the next deadline, while that deadline stays
        sleeper: tuple[datetime, asyncio.Future[Any]] | None = None
        # parked since a batch was last taken: the next batch put counts as handed over while
        # parked until the deadline (``_handle_handed``), even if the processor finds it after
        # other work
        armed = False
        while not self._stop.is_set():
            self._wake = False  # what is asked from here on is looked at below, or wakes it
            if self._flush_asked:  # DEFER_S passed, or wait_idle() asks
                self._flush_asked = False
                await self._commit(Commit())
            if self._compiling is not None and self._compiling[1].done():
                config, compiled, before = self._compiling
                self._compiling = None
                await self._reload(config, compiled.result(), before)
            if self._reload_requested and self._compiling is None:
                # a reload asked for while one compiles waits for it (then reads the file again)
                self._reload_requested = False
                explicit, self._reload_explicit = self._reload_explicit, False
                await self._begin_reload(explicit)
            if self._pending_signals:
                signals = self._take_signals()
                await self._commit(self.pipeline.apply_signals(signals, self.clock.now()))
            if self._pending_silences is not None:
                silences, self._pending_silences = self._pending_silences, None
                now = self.clock.now()
                await self._commit(self.pipeline.set_silences(silences, now))
                active = [x.id for x in silences if x.active(now)]
                log.info("silences applied: %d active %s", len(active), " ".join(active))
            caught_up = self._all_caught_up()
            deadline = self.pipeline.next_deadline() if caught_up else None
            now = self.clock.now()
            settle: _Settle | None = None
            if deadline is not None and deadline <= now:
                if armed and not self.queue.empty():  # a batch handed over meanwhile goes first
                    armed = False
                    await self._handle_handed(self.queue.get_nowait(), deadline)
                    continue
                settle = self._settling(deadline, now)
                if settle is None or settle.ready(now):
                    await self._drain_queue()  # what the sources handed over, before the tick
                    self._settled()
                    await self._commit(self.pipeline.tick(now), defer=True)
                    continue
            elif self._settle is not None:  # what it waited for arrived: no longer due
                self._settle = None
            if self._wake or self._flush_asked:
                continue  # asked for something meanwhile: look again before parking
            armed = True
            stale = sleeper is None or sleeper[0] != deadline or sleeper[1].done()
            if settle is None and deadline is not None and stale:
                if sleeper is not None:
                    sleeper[1].cancel()
                sleeper = (deadline, self._sleep_until(deadline))
            if self.queue.empty():
                await self._park(settle, deadline, caught_up, sleeper)
            if not self.queue.empty():
                armed = False
                await self._handle_handed(self.queue.get_nowait(), deadline)
        if sleeper is not None:
            sleeper[1].cancel()
        await self._write_deferred()

    def _sleep_until(self, at: datetime) -> asyncio.Future[Any]:
        """A sleep on the clock that rings the processor's bell when it ends."""
        fut = asyncio.ensure_future(self.clock.sleep_until(at))
        fut.add_done_callback(self._ring_cb)
        return fut

    async def _park(
        self,
        settle: _Settle | None,
        deadline: datetime | None,
        caught_up: bool,
        sleeper: tuple[datetime, asyncio.Future[Any]] | None,
    ) -> None:
        """Until the bell rings: a batch put, a nudge, and, by what the processor waits for
        now, the settle's reads or its delay, the next deadline on the clock (the sleep kept
        while that deadline stays the same: ``sleeper``), a reload's compile, the re-check of
        sources still catching up."""
        bell = self._bell = asyncio.get_running_loop().create_future()
        waits: set[asyncio.Future[Any]] = {bell}
        temporary: list[asyncio.Future[Any]] = []  # cancelled after: made for this park only
        if settle is not None:  # the reads, and the settle delay on the clock
            temporary.extend(asyncio.shield(f) for f in settle.reads.values() if not f.done())
            temporary.append(asyncio.ensure_future(self.clock.sleep_until(settle.until)))
        elif deadline is not None:
            assert sleeper is not None and sleeper[0] == deadline
            waits.add(sleeper[1])  # it rings the bell itself (``_sleep_until``)
        elif not caught_up:
            temporary.append(asyncio.ensure_future(asyncio.sleep(CATCH_UP_RECHECK_S)))
        watched = [*temporary, *self._compiling_futures()]
        for fut in watched:
            fut.add_done_callback(self._ring_cb)
        waits.update(watched)
        self._parked = (waits, deadline)  # for wait_idle()
        if caught_up:
            self._parked_event.set()
        try:
            await bell
        finally:
            self._parked = None
            self._parked_event.clear()
            self._bell = None
            for fut in watched:
                fut.remove_done_callback(self._ring_cb)
            for fut in temporary:
                fut.cancel()

    async def _handle_handed(self, batch: Batch, deadline: datetime | None) -> None:
        """``_handle_batches`` of a batch the processor took while parked until ``deadline``
        (the pipeline's next one). If that deadline is due by now, the batch was handed over
        before it ran: its lines are judged as a settle's reads are (``_when_for``), since they
        may have been written before it, an instant before the clock passed it."""
        due = deadline is not None and deadline <= self.clock.now()
        self._due_at = deadline if due else None
        try:
            await self._handle_batches(batch, COALESCE_BATCHES)
        finally:
            self._due_at = None

    def _settling(self, deadline: datetime, now: datetime) -> _Settle | None:
        """The settle of the due ``deadline``: before an expectation deadline runs, every source
        its rules read is asked to read what it holds now (a file sweep, the journal's newest
        entry) and hand it over, so that a line stamped before the deadline but still on its way
        (journald's delivery, a write an instant before, a batch in the queue) is seen first.
        At most ``agent.settle`` on the clock: a source stuck longer does not hold deadlines (its
        own problem is reported as ever), nor is it waited for again until its read is done.
        None: nothing to wait for (no expectation rule due, or only lagging sources)."""
        if self._settle is not None:
            return self._settle
        if self.config.agent.settle <= timedelta(0):
            return None
        for name, fut in list(self._lagging.items()):
            if fut.done() or name not in self.sources:
                del self._lagging[name]
        names = self.pipeline.settle_sources(now)
        reads = {
            n: self.sources[n].source.read_now()
            for n in sorted(names)
            if n in self.sources and n not in self._lagging
        }
        if not reads:
            return None
        self._settle = _Settle(deadline, now + self.config.agent.settle, reads)
        return self._settle

    def _settled(self) -> None:
        """The settled deadline runs now: note the sources that did not make it in time."""
        settle, self._settle = self._settle, None
        if settle is None:
            return
        late = {n: f for n, f in settle.reads.items() if not f.done()}
        if late:
            self._lagging.update(late)
            log.warning(
                "deadline %s ran although %s had not handed over what it holds within "
                "agent.settle (%gs)",
                settle.deadline.isoformat(),
                ", ".join(late),
                self.config.agent.settle.total_seconds(),
            )

    async def _drain_queue(self) -> None:
        """Process the batches waiting in the queue now (not those put meanwhile: bounded)."""
        left = self.queue.qsize()
        while left > 0 and not self.queue.empty():
            done_before = self.state.batches
            await self._handle_batches(self.queue.get_nowait(), left)
            left -= self.state.batches - done_before

    def _compiling_futures(self) -> tuple[asyncio.Future[Matcher], ...]:
        return () if self._compiling is None else (self._compiling[1],)

    def _take_signals(self) -> list[Signal]:
        signals, self._pending_signals = self._pending_signals, []
        return signals

    def _when_for(self, now: datetime) -> Callable[[Line], When]:
        catching_up = not self.state.caught_up and self.down_since is not None
        earliest = self.down_since if catching_up and self.down_since else now
        due = self._settle.deadline if self._settle is not None else self._due_at
        if due is not None:
            # read for a due deadline, or handed over before it ran: a line without its own
            # time may have been written before it (an instant before, read an instant after):
            # judged in its favour
            earliest = min(earliest, due)
        default = When(now, earliest)

        def when_for(line: Line) -> When:
            return When.of(line.event_at, default)

        return when_for

    async def _handle_batches(self, first: Batch, most: int = 1) -> None:
        """Run ``first`` and the batches already waiting behind it in the queue (up to ``most``
        in all, for at most ``COALESCE_S``) through the pipeline, in queue order, and commit what
        they changed, read positions included, in one transaction: a crash before it re-reads
        them all."""
        started = time.perf_counter()
        now = self.clock.now()
        when_for = self._when_for(now)
        read_before = dict(self.pipeline.lines_read)
        unparsed_before = {b: self.pipeline.lines_unparsed(b) for b in self.sources}
        matched_before = dict(self.pipeline.lines_matched)
        commit = Commit()
        batches: list[Batch] = []
        batch: Batch | None = first
        while batch is not None:
            batches.append(batch)
            commit.absorb(self.pipeline.process(batch, when_for, now))
            batch.block = None  # matched: its bytes are not held until the commit is written
            more = len(batches) < most and time.perf_counter() - started < COALESCE_S
            batch = self.queue.get_nowait() if more and not self.queue.empty() else None
        self.state.batches += len(batches)
        await self._commit(commit, defer=True)
        h = self.health
        for source in {b.source for b in batches}:
            read = self.pipeline.lines_read[source] - read_before.get(source, 0)
            h.inc("lines_read", read, source=source)
            unparsed = self.pipeline.lines_unparsed(source) - unparsed_before.get(source, 0)
            if unparsed > 0:
                h.inc("unparsed_lines", unparsed, source=source)
        for batch in batches:
            if batch.truncated_lines:
                h.inc("truncated_lines", batch.truncated_lines, source=batch.source)
            if batch.lines or batch.block_path:  # lines, or a block (let go of above)
                last = (batch.lines[-1].event_at if batch.lines else None) or now
                h.set_time("last_event_at", last, source=batch.source)
        for rule, n in self.pipeline.lines_matched.items():
            if n != matched_before.get(rule, 0):
                h.inc("lines_matched", n - matched_before.get(rule, 0), rule=rule)

    async def _commit(self, commit: Commit, *, defer: bool = False) -> None:
        """Write ``commit`` in one transaction, together with what waits before it, unless
        :class:`Deferral` lets it wait. ``defer``: a batch's or a deadline round's commit.

        If the state file fails (disk full, read-only), the agent does not exit: it reports the
        problem with alerts sent straight from memory, holds the commit (read positions
        included: nothing read is lost) and retries it every RETRY_S; meanwhile the bounded
        queue stops the sources. A stop while it waits drops the commit: what it held is read
        again at the next start."""
        ready = self.deferral.offer(commit, defer=defer, stopping=self._stop.is_set())
        if ready is None:  # nothing to write, or it may wait
            return
        commit = ready
        db = self.db
        failing = False
        while True:
            now = self.clock.now()
            commit.meta["last_alive_at"] = now.isoformat()
            commit.seal()  # the alerts' rows, here on the loop: as the read positions left them
            readers: dict[str, Callable[[Store], Handed] | None] = {}
            for row in commit.outbox:  # the woken workers' next rows, read in the same call
                if row.webhook not in readers and row.webhook in self.workers:
                    readers[row.webhook] = self.workers[row.webhook][0].due_reader()
            try:
                handed = await db.run(
                    functools.partial(_commit_and_read, c=commit, now=now, readers=readers)
                )
                break
            except StoreError as e:
                (log.error if not failing else log.warning)(
                    "cannot commit to the state file (retrying every %gs): %s", RETRY_S, e
                )
                failing = True
                self.monitor.state_failed(str(e))
                signals = self.monitor.flush() + self._take_signals()
                commit.absorb(await self._send_from_memory(self.pipeline.alerts, signals))
                if not await self._pause(RETRY_S):
                    return
        if failing:
            self.monitor.state_ok()
        self.state.commits += 1
        self.deferral.written(commit)
        woken: set[str] = set()
        seen_events: set[str] = set()
        for row in commit.outbox:
            p = row.payload
            if row.event_id not in seen_events:
                seen_events.add(row.event_id)
                self.health.inc("alerts", kind=str(p["kind"]), state=str(p["notification"]))
                log.info("alert %s [%s] %s", p["notification"], p["severity"], p["summary"])
            self.health.inc("notifications_queued", webhook=row.webhook)
            if row.webhook not in woken and row.webhook in self.workers:
                woken.add(row.webhook)
                self.workers[row.webhook][0].wake(handed.get(row.webhook))

    def _defer_due(self) -> None:
        """``DEFER_S`` after a commit began to wait: the processor writes it (``_flush_asked``)."""
        self._flush_asked = True
        self._nudge()

    async def _write_deferred(self) -> None:
        """Write the deferred commit now (the processor has stopped: at shutdown). A state file
        that fails drops it: its lines are read again at the next start."""
        commit = self.deferral.take()
        if commit is None or self._db is None:
            return
        commit.meta["last_alive_at"] = self.clock.now().isoformat()
        commit.seal()
        try:
            await self._db.run(functools.partial(Store.commit, c=commit, now=self.clock.now()))
        except StoreError as e:
            log.warning("cannot commit to the state file at the stop: %s", e)
            return
        self.state.commits += 1
        self.deferral.written(commit)

    async def _compile(self, config: Config) -> Matcher:
        """``build_matcher(config)`` in a thread (Hyperscan releases the GIL while it compiles),
        the time it took logged. Quick: a source whose full database is not cached gets its
        literal skeleton (exact matches, a slower scan), and ``_upgrade`` builds the full ones
        in the background once the matcher is in use."""
        started = time.perf_counter()
        cancel = threading.Event()
        try:
            matcher = await in_thread(build_matcher, config, cancel.is_set, quick=True)
        except asyncio.CancelledError:
            cancel.set()  # the thread stops after the databases it is building
            raise
        cached = sum(matcher.cached.values())
        skeletons = sum(stage == "skeleton" for stage in matcher.stage.values())
        log.info(
            "patterns compiled in %.2fs (%d of %d sources from the cache)%s",
            time.perf_counter() - started,
            cached,
            len(matcher.cached),
            f"; {skeletons} on literal skeletons until their full databases are compiled"
            if skeletons
            else "",
        )
        return matcher

    def _upgrade(self, matcher: Matcher) -> None:
        """Compile the full databases of ``matcher``'s sources on their literal skeletons (if
        any) in a thread (``upgrade_matcher``); its next ``match`` calls take them, on the
        processor, between two batches. Called once the matcher is in use (READY=1 sent): the
        compile takes a CPU. Any earlier such compile is told to stop: its matcher is gone."""
        if self._upgrading is not None:
            self._upgrading[1].set()
            self._upgrading = None
        if "skeleton" not in matcher.stage.values():
            return
        started = time.perf_counter()
        cancel = threading.Event()
        fut = asyncio.ensure_future(in_thread(upgrade_matcher, matcher, cancel.is_set))
        self._upgrading = (fut, cancel)

        def done(fut: asyncio.Future[list[str]]) -> None:
            if self._upgrading is not None and self._upgrading[0] is fut:
                self._upgrading = None
            if fut.cancelled():
                return
            e = fut.exception()  # retrieved (CompileCancelled too): no "never retrieved"
            if cancel.is_set():
                return
            if e is not None:
                log.error(
                    "compiling the full pattern databases failed (%s: %s): the literal "
                    "skeletons stay in use (same matches, slower)",
                    type(e).__name__,
                    e,
                )
                return
            log.info(
                "full pattern databases compiled in %.2fs (%d sources), in use from the next batch",
                time.perf_counter() - started,
                len(fut.result()),
            )

        fut.add_done_callback(done)

    # ---------------------------------------------------------------- reload

    async def _begin_reload(self, explicit: bool = True) -> None:
        """First half of a reload, on the processor task: read and validate rules.yaml, then
        start compiling its patterns in a thread (``_compiling``). Meanwhile the processor keeps
        matching with the old rules; ``_reload`` swaps once the new matcher is ready."""
        self.notifier.reloading()
        assert self._watch_base is not None
        before = await in_thread(snapshot, self.config_path, self._watch_base[0])
        try:
            config = await in_thread(load_config, self.config_path, self.env)
        except (ConfigError, OSError) as e:
            # the include globs of the refused file when known: the fix of a file it newly
            # includes is a change too
            await self._rebase_watch(
                (e.watch or None) if isinstance(e, ConfigError) else None, before
            )
            log.error("reload refused, the running configuration stays in force:\n%s", e)
            self.health.inc("config_reloads", result="refused")
            self.monitor.config_refused(str(self.config_path), str(e), explicit=explicit)
            self.notifier.ready(self._status_line())
            await self._note_reload(str(e))
            return
        self._compiling = (config, asyncio.ensure_future(self._compile(config)), before)

    async def _reload(self, config: Config, matcher: Matcher, before: Snapshot) -> None:
        """Second half: switch to ``config`` with its compiled ``matcher``, on the processor
        task (the one writer), between two batches; ``before``: the config files as they were
        when the first half read them (the watch's new baseline)."""
        old = self.config
        changed = [
            n
            for n, c in old.sources.items()
            if n not in config.sources
            or config.sources[n] != c
            or reads_other_fields(n, old, config)
        ]
        for name in changed:
            await self._stop_source(name)
        while not self.queue.empty():  # everything already read is processed under the old rules
            await self._handle_batches(self.queue.get_nowait())
        await self._commit(Commit())  # the deferred one: the rule state is read back next
        now = self.clock.now()
        states = await self.db.run(all_rule_state)
        commit = self.pipeline.reconfigure(config, now, lambda r: states.get(r, {}), matcher)
        await self._commit(commit)
        self.config = config
        await self._rebase_watch(tuple(i.glob for i in config.includes), before)
        self.monitor.config = config
        self.monitor.config_ok()
        self.health.inc("config_reloads", result="ok")
        for name in [n for n in self.workers if old.webhooks.get(n) != config.webhooks.get(n)]:
            await self._stop_worker(name)
        for name in config.webhooks:
            if name not in self.workers:
                self._start_worker(name)
        for name, cfg in config.sources.items():
            if name not in self.sources:
                await self._start_source(name, cfg)
        self.notifier.ready(self._status_line())
        self._upgrade(matcher)
        log.info(
            "configuration reloaded: %d rules, %d sources", len(config.rules), len(config.sources)
        )
        await self._note_reload(None)

    async def _note_reload(self, error: str | None) -> None:
        """The answer `detector reload` waits for: meta ``reload``, its seq one higher after every
        attempt (read from the file, so it keeps growing across restarts)."""
        at, path = self.clock.now().isoformat(), str(self.config_path)

        def write(store: Store) -> None:
            seq = int((store.get_meta("reload") or {}).get("seq", 0)) + 1
            answer = {"seq": seq, "ok": error is None, "error": error, "at": at, "config": path}
            store.set_meta({"reload": answer})

        await self.db.run(write)

    async def _rebase_watch(self, globs: tuple[str, ...] | None, before: Snapshot | None) -> None:
        """The config's files were just read: the watch's new baseline is ``before`` (their
        stamps taken before the read, so a change made meanwhile is still a change), or, for
        new include ``globs`` (None: the same as before), their stamps now."""
        if before is not None and (globs is None or globs == before[0]):
            self._watch_base = before
            return
        assert globs is not None
        self._watch_base = await in_thread(snapshot, self.config_path, globs)

    async def _watch_config(self) -> None:
        """Reload when rules.yaml or a file it includes changes on disk, appears or goes
        (debounced; a refusal of such a reload is only reported after the config grace: an
        editor's half-saved file pages nobody)."""

        def base() -> Snapshot:
            assert self._watch_base is not None  # taken at start, before this task runs
            return self._watch_base

        async for _ in config_changes(self.config_path, base, CONFIG_POLL_S):
            log.info("%s (or a file it includes) changed on disk; reloading", self.config_path)
            self.request_reload(explicit=False)

    # ---------------------------------------------------------------- self-monitoring

    async def _alive_loop(self) -> None:
        last_prune = self.clock.now()
        while True:
            await asyncio.sleep(ALIVE_EVERY_S)
            await self._mark_alive()
            self.notifier.status(self._status_line())
            now = self.clock.now()
            if now - last_prune > timedelta(hours=1):
                last_prune = now
                await self.db.run(pruner(now - OUTBOX_KEEP))

    async def _silence_loop(self) -> None:
        """Pick up silences added or expired by ``detector silence`` without a reload: hand
        them to the processor (the one writer of alert state) when the table changed."""
        loop = asyncio.get_running_loop()
        path = self.db.store.path
        stamp, checked = _stamp(path), loop.time()  # before the read: a change after it shows
        seen = await self.db.run(silence_table.version)
        while True:
            await asyncio.sleep(SILENCE_POLL_S)
            now_stamp = _stamp(path)
            if now_stamp == stamp and loop.time() - checked < SILENCE_RECHECK_S:
                continue  # no connection wrote the state file: data_version cannot have moved
            stamp, checked = now_stamp, loop.time()
            try:
                version = await self.db.run(silence_table.version)
                if version == seen:
                    continue
                seen = version
                now = self.clock.now()
                silences = await self.db.run(functools.partial(_read_silences, now=now))
            except StoreError as e:  # the commit path reports a failing state file
                log.warning("cannot read the silences: %s", e)
                continue
            if [s.to_json() for s in silences] != [
                s.to_json() for s in self.pipeline.muter.silences
            ]:
                self._pending_silences = silences
                self._nudge()

    async def _mark_alive(
        self, status: dict[str, Any] | None = None, stopped: bool = False
    ) -> None:
        now = self.clock.now()
        meta: dict[str, Any] = {
            "last_alive_at": now.isoformat(),
            "agent_status": status or self._snapshot(),
        }
        if stopped:
            meta["agent_run"] = end_run(self.state.started_at, now)
        await self.db.run(lambda store: store.set_meta(meta))

    async def _poll(self) -> None:
        """Every few seconds (self-monitor task): the sources' problems, the outbox gauges, and
        whether dead letters reported earlier are still there (they
        leave when `detector outbox retry` queues them again, or when pruned)."""
        now = self.clock.now()
        # the sources open while the patterns compile (``_start``); the pipeline, and what it
        # knows of unparsed lines and capped keys, exists only once they are compiled
        built = hasattr(self, "pipeline")
        self.monitor.sources(
            {
                n: [*r.source.problems(), *(self.pipeline.parse_problems(n, now) if built else ())]
                for n, r in self.sources.items()
            }
        )
        if built:
            self.monitor.rules_over_cap(self.pipeline.over_cap())
        dead_reported = [p.key for p in self.problems.reported() if p.component == "dead-letter"]
        if dead_reported and self._db is not None:
            counts = await self.db.run(outbox.state_counts)
            for key in dead_reported:
                webhook = key.split("/", 1)[1]
                if not counts.get(webhook, {}).get("dead"):
                    self.monitor.dead_letters_cleared(webhook)
        for name, (worker, _task) in self.workers.items():
            st = worker.stats()
            self.health.set_outbox(name, st.queue_depth, st.oldest_pending_at)

    def _snapshot(self) -> dict[str, Any]:
        """What `detector status` shows beyond the stored state: read positions and sizes, the
        agent's current problems, and per rule its last match and next deadline."""
        p = self.pipeline
        return {
            "at": self.clock.now().isoformat(),
            "sources": {n: r.source.status() for n, r in self.sources.items()},
            "problems": self.health.reasons(),
            "rules": {
                name: {
                    "last_match_at": iso_or_none(
                        p.last_match_at.get(name), timespec="seconds", keep_offset=True
                    ),
                    "next_deadline": iso_or_none(
                        ev.next_deadline(), timespec="seconds", keep_offset=True
                    ),
                    "matched": p.lines_matched.get(name, 0),
                }
                for name, ev in p.evaluators.items()
            },
        }

    def _status_line(self) -> str:
        """systemd's STATUS= text: the counts, and the first problem if there is one."""
        firing = len(self.pipeline.alerts.firing()) if hasattr(self, "pipeline") else 0
        problems = self.health.problems()
        line = (
            f"{len(self.sources)} sources, {len(self.config.rules)} rules, {firing} firing, "
            f"{len(problems)} problems"
        )
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            line = f"degraded: {problems[0].reason}{more}; {line}"
        return line

    def _status_section(self) -> Mapping[str, Any]:
        return {
            "started_at": self.state.started_at.isoformat(),
            "caught_up": self.state.caught_up,
            "batches": self.state.batches,
            "sources": {n: r.source.status() for n, r in self.sources.items()},
            "firing": [a.summary for a in self.pipeline.alerts.firing()]
            if hasattr(self, "pipeline")  # /status answers while the patterns compile
            else [],
        }


def _commit_and_read(
    store: Store,
    c: Commit,
    now: datetime,
    readers: Mapping[str, Callable[[Store], Handed] | None],
) -> dict[str, Handed]:
    """``Store.commit``, then, in the same store call (one hand-over to the store thread, not
    one more per woken worker), each woken worker's due rows (``DeliveryWorker.due_reader``).
    A read that fails leaves that worker to read for itself: the commit stands."""
    store.commit(c, now)
    out: dict[str, Handed] = {}
    for name, read in readers.items():
        if read is not None:
            with contextlib.suppress(sqlite3.Error):
                out[name] = read(store)
    return out


def _stamp(path: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """What a write of any connection to the state file changes: the inode, size and mtime of
    the file and of its WAL (where a commit goes; a checkpoint writes the file)."""
    out: list[tuple[int, int, int] | None] = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            st = os.stat(p)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _checkpoint_keys(store: Store) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in store.conn.execute("SELECT source, key FROM checkpoints")}


def _read_silences(store: Store, now: datetime) -> list[Silence]:
    rows = silence_table.load(store, now)
    return [s for s in map(Silence.from_json, rows) if s is not None]


class _Stop(Exception):
    pass


def _handle_signals(
    loop: asyncio.AbstractEventLoop, *, stop: Callable[[], None], reload: Callable[[], None]
) -> dict[signal.Signals, Any]:
    """SIGTERM and SIGINT stop, SIGHUP reloads; returns the handlers they replace.

    Plain Python signal handlers that hand over to the loop with ``call_soon_threadsafe``, not
    ``loop.add_signal_handler``: that one makes every signal the process receives write a byte to
    asyncio's self-pipe (``signal.set_wakeup_fd``), the regex budget's SIGVTALRM ticks
    (matching.budget, every 12.5 ms of CPU) included. The pipe holds 278 bytes; a few seconds of
    budgeted matching filled it, printed a BlockingIOError per tick, and a SIGTERM arriving then
    was lost. Here a signal's own handler always runs (Python runs it in the main thread at the
    next bytecode, and retries an interrupted ``epoll_wait`` after it), and its callback waits in
    the loop's ready queue, whatever the state of the pipe."""
    actions = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: reload}

    def on_signal(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(actions[signal.Signals(signum)])

    return {sig: signal.signal(sig, on_signal) for sig in actions}
