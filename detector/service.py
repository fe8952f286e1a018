"""The agent: wires sources → pipeline → store → delivery, and keeps itself honest.

Read top to bottom, this is the data flow of DESIGN.md §2:

1. ``Agent.run`` loads the config, opens the state file (a corrupt one is moved aside and rebuilt,
   and the user is told), restores rule state, alerts and source checkpoints, and notes how long
   the agent was down;
2. one *pump* task per source pushes its batches into a bounded queue (back-pressure);
3. the single *processor* task takes a batch (and those already waiting behind it, up to
   ``COALESCE_BATCHES``), runs them through the :class:`Pipeline` and commits the result (state +
   alerts + outbox + checkpoints) in one transaction — only then is a read position durable;
   between batches it wakes exactly at the pipeline's next deadline and runs ``tick``;
   deadlines are held back until every source has caught up after a restart, so a line written
   while the agent was down still counts;
4. one delivery worker per webhook sends what the commits put in the outbox;
5. around it: signals (SIGTERM/SIGINT stop, SIGHUP reloads), a config-file watcher, sd_notify
   (READY, STATUS, WATCHDOG, RELOADING, STOPPING), the health state behind the optional HTTP
   listener and the dead man's switch, and self-monitoring that turns the agent's own problems
   (unreadable source, failing webhook, refused reload, corrupt state) into agent alerts.

Every mutation of the pipeline happens on the processor task (reloads and agent signals are handed
to it), so commits are ordered and no lock is needed. Shutdown runs in reverse order of start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from detector import __version__
from detector.alerts import AGENT_RULE
from detector.clock import Clock
from detector.config import ConfigError, load_config
from detector.delivery.worker import DeliveryWorker
from detector.health import Health, loop_lag_monitor
from detector.http import heartbeat_loop, start_http
from detector.model import FileSourceConfig, SourceConfig
from detector.pipeline import Pipeline
from detector.rules.base import Signal, When
from detector.sdnotify import Notifier, watchdog_loop
from detector.sources.base import Batch, Line, Source
from detector.store import outbox
from detector.store.db import AsyncStore, Store, StoreError
from detector.store.records import Commit

log = logging.getLogger("detector")

QUEUE_BATCHES = 8
COALESCE_BATCHES = 8
"""At most this many batches already waiting in the queue are processed together and committed
in one transaction (catching up: one commit per ~8 MiB instead of per 1 MiB block)..."""
COALESCE_S = 0.25
"""...and no more once processing them took this long (physical time): the event loop, and with it
the systemd watchdog ping, must not wait for eight slow batches (lines at the regex budget)."""
ALIVE_EVERY_S = 15.0
SELF_CHECK_EVERY_S = 2.0
CONFIG_POLL_S = 1.0
CATCH_UP_RECHECK_S = 0.2
CATCH_UP_LIMIT_S = 120.0
OUTBOX_KEEP = timedelta(days=7)


def build_source(cfg: SourceConfig, checkpoints: Mapping[str, Any], clock: Clock) -> Source:
    """The one mapping from a source config to its implementation."""
    if isinstance(cfg, FileSourceConfig):
        from detector.sources.files import FileSource  # noqa: PLC0415 - inotify only if used

        return FileSource(cfg, checkpoints, clock)
    from detector.sources.journald import JournaldSource  # noqa: PLC0415

    return JournaldSource(cfg, checkpoints, clock)


def open_store(path: Path, now: datetime) -> tuple[Store, str | None]:
    """Open the state file. A file SQLite cannot read as a database is moved aside and a new one
    is created; the returned message says so (it becomes an agent alert). Other errors (locked,
    read-only, disk full) are raised: moving a good file aside would lose state."""
    try:
        return Store(path), None
    except StoreError as e:
        text = str(e).lower()
        if "not a database" not in text and "malformed" not in text:
            raise
        aside = path.with_name(f"{path.name}.corrupt-{now.strftime('%Y%m%dT%H%M%SZ')}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        return Store(path), (
            f"state file {path} was unreadable ({e}); moved aside to {aside} and started afresh: "
            "read positions restart per start_at and open alerts were forgotten"
        )


@dataclass
class _Running:
    cfg: SourceConfig
    source: Source
    task: asyncio.Task[None]


@dataclass
class _Problem:
    since: datetime
    message: str
    alerted: bool = False


@dataclass
class AgentState:
    """What the agent knows about itself beyond the metrics (for /status and agent alerts)."""

    started_at: datetime
    caught_up: bool = False
    problems: dict[str, _Problem] = field(default_factory=dict)
    batches: int = 0
    commits: int = 0


class Agent:
    def __init__(
        self,
        config_path: Path,
        clock: Clock,
        env: Mapping[str, str] | None = None,
        notifier: Notifier | None = None,
        catch_up_limit_s: float = CATCH_UP_LIMIT_S,
    ) -> None:
        self.config_path = Path(config_path)
        self.clock = clock
        self.env = env
        self.notifier = notifier or Notifier()
        self.catch_up_limit_s = catch_up_limit_s
        self.health = Health(clock)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._pending_signals: list[Signal] = []
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=QUEUE_BATCHES)
        self.sources: dict[str, _Running] = {}
        self.workers: dict[str, tuple[DeliveryWorker, asyncio.Task[None]]] = {}
        self.down_since: datetime | None = None
        self._delivery_seen: dict[tuple[str, str], int] = {}
        # wait_idle(): while the processor is parked with nothing to do, what it waits on and the
        # deadline the clock would wake it at (None while it works); the event tells waiters.
        self._parked: tuple[set[asyncio.Future[Any]], datetime | None] | None = None
        self._parked_event = asyncio.Event()

    # ---------------------------------------------------------------- public controls

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def raise_agent_signal(self, s: Signal) -> None:
        """Hand an agent alert to the processor (callable from any task on the loop)."""
        self._pending_signals.append(s)
        self._wake.set()

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
            for worker, _task in list(self.workers.values()):
                await worker.wait_idle()
            if self._idle_now():
                return
            await asyncio.sleep(0)  # parked, but a wake-up is on its way: let it run, look again

    def _idle_now(self) -> bool:
        if self._parked is None:
            return False
        waits, deadline = self._parked
        return (
            not self._wake.is_set()  # reload, agent signal or stop pending
            and self.queue.empty()
            and not any(f.done() for f in waits)  # a batch taken, or the deadline reached
            and (deadline is None or deadline > self.clock.now())
            and self.state.caught_up
            and all(r.source.caught_up() for r in self.sources.values())
            and all(w.idle() for w, _task in self.workers.values())
        )

    def _agent_signal(
        self, key: str, fire: bool, summary: str = "", description: str = "", **kw: Any
    ) -> None:
        self.raise_agent_signal(
            Signal(
                rule=AGENT_RULE,
                kind="agent",
                key=key,
                action="fire" if fire else "resolve",
                at=self.clock.now(),
                summary=summary,
                description=description,
                **kw,
            )
        )

    # ---------------------------------------------------------------- start-up

    async def run(self) -> int:
        config = await asyncio.to_thread(load_config, self.config_path, self.env)
        self.config = config
        now = self.clock.now()
        self.state = AgentState(started_at=now)
        self._started_loop_time = asyncio.get_running_loop().time()
        store, corrupt = await asyncio.to_thread(open_store, config.agent.state, now)
        self.db = AsyncStore(store)
        last_alive = await self.db.run(lambda s: s.get_meta("last_alive_at"))
        alert_rows = await self.db.run(lambda s: s.load_alerts())
        states = await self.db.run(_all_rule_state)
        self.pipeline = Pipeline(config, now, lambda r: states.get(r, {}), alert_rows)
        await asyncio.to_thread(self.pipeline.warm)
        await self._commit(self.pipeline.apply_signals([], now))  # initial schedules
        if corrupt:
            log.error("%s", corrupt)
            self._agent_signal("state", True, "state file was corrupt and was rebuilt", corrupt)
        if last_alive is not None:
            self.down_since = datetime.fromisoformat(last_alive)
            self.pipeline.note_downtime(self.down_since, now)
            log.info("agent was down since %s; catching up before deadlines run", last_alive)
        log.info(
            "detector %s starting: %d sources, %d rules, %d webhooks, state %s",
            __version__,
            len(config.sources),
            len(config.rules),
            len(config.webhooks),
            config.agent.state,
        )
        previous_handlers = _handle_signals(
            asyncio.get_running_loop(), stop=self.request_stop, reload=self.request_reload
        )
        self.health.add_status_section("agent", self._status_section)
        runner = None
        self.session = aiohttp.ClientSession()
        try:
            if config.agent.listen:
                runner = await start_http(
                    self.health, config.agent.listen, config.agent.listen_token
                )
                log.info("HTTP listener on %s (/healthz /metrics /status)", config.agent.listen)
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                for webhook in config.webhooks:
                    self._start_worker(webhook)
                for name, cfg in config.sources.items():
                    await self._start_source(name, cfg)
                tg.create_task(self._processor(), name="processor")
                tg.create_task(self._alive_loop(), name="alive")
                tg.create_task(self._watch_config(), name="config-watch")
                tg.create_task(self._self_check_loop(), name="self-check")
                tg.create_task(watchdog_loop(self.notifier, self.clock, self.health.live))
                tg.create_task(loop_lag_monitor(self.health), name="loop-lag")
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
                await self._stop.wait()
                raise _Stop
        except* _Stop:
            pass
        finally:
            self.notifier.stopping()
            await self._shutdown(runner)
            for sig, handler in previous_handlers.items():
                if handler is not None:  # None: installed outside Python, nothing to put back
                    signal.signal(sig, handler)
        log.info("detector stopped")
        return 0

    async def _start_source(self, name: str, cfg: SourceConfig) -> None:
        checkpoints = await self.db.run(lambda s: s.load_checkpoints(name))
        source = build_source(cfg, checkpoints, self.clock)
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

    def _start_worker(self, name: str) -> None:
        webhook = self.config.webhooks[name]
        worker = DeliveryWorker(
            webhook,
            self.db,
            self.clock,
            host=self.config.agent.host,
            session=self.session,
            on_path_health=self._on_path_health,
        )
        task = self.tg.create_task(worker.run(), name=f"delivery:{name}")
        self.workers[name] = (worker, task)

    async def _stop_worker(self, name: str) -> None:
        worker, task = self.workers.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.aclose()

    async def _shutdown(self, runner: Any) -> None:
        """Reverse order of start-up: sources, workers, listener, HTTP session, state file."""
        last_status = self._snapshot()  # while the sources are still there to describe
        for name in list(self.sources):
            with contextlib.suppress(Exception):
                await self._stop_source(name)
        for name in list(self.workers):
            with contextlib.suppress(Exception):
                await self._stop_worker(name)
        if runner is not None:
            await runner.cleanup()
        await self.session.close()
        with contextlib.suppress(Exception):
            await self._mark_alive(last_status)
        self.db.close()

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
        getter: asyncio.Task[Batch] | None = None
        while not self._stop.is_set():
            if self._reload_requested:
                if getter is not None:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    getter = None
                self._reload_requested = False
                await self._reload()
            if self._pending_signals:
                signals, self._pending_signals = self._pending_signals, []
                await self._commit(self.pipeline.apply_signals(signals, self.clock.now()))
            caught_up = self._all_caught_up()
            deadline = self.pipeline.next_deadline() if caught_up else None
            now = self.clock.now()
            if deadline is not None and deadline <= now:
                await self._commit(self.pipeline.tick(now))
                continue
            if getter is None:
                getter = asyncio.create_task(self.queue.get())
            self._wake.clear()
            waker = asyncio.ensure_future(self._wake.wait())
            waits: set[asyncio.Future[Any]] = {getter, waker}
            if deadline is not None:
                waits.add(asyncio.ensure_future(self.clock.sleep_until(deadline)))
            elif not caught_up:
                waits.add(asyncio.ensure_future(asyncio.sleep(CATCH_UP_RECHECK_S)))
            self._parked = (waits, deadline)  # for wait_idle()
            if caught_up:
                self._parked_event.set()
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            self._parked = None
            self._parked_event.clear()
            for fut in pending:
                if fut is not getter:
                    fut.cancel()
            if getter in done:
                batch = getter.result()
                getter = None
                await self._handle_batches(batch, COALESCE_BATCHES)
        if getter is not None:
            getter.cancel()

    def _when_for(self, now: datetime) -> Callable[[Line], When]:
        catching_up = not self.state.caught_up and self.down_since is not None
        earliest = self.down_since if catching_up and self.down_since else now
        default = When(now, earliest)

        def when_for(line: Line) -> When:
            if line.event_at is not None:
                return When.exact(line.event_at)
            return default

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
        matched_before = dict(self.pipeline.lines_matched)
        commit = Commit()
        batches: list[Batch] = []
        batch: Batch | None = first
        while batch is not None:
            batches.append(batch)
            commit.absorb(self.pipeline.process(batch, when_for, now))
            more = len(batches) < most and time.perf_counter() - started < COALESCE_S
            batch = self.queue.get_nowait() if more and not self.queue.empty() else None
        self.state.batches += len(batches)
        await self._commit(commit)
        h = self.health
        for source in {b.source for b in batches}:
            read = self.pipeline.lines_read[source] - read_before.get(source, 0)
            h.inc("lines_read", read, source=source)
        for batch in batches:
            if batch.truncated_lines:
                h.inc("truncated_lines", batch.truncated_lines, source=batch.source)
            if batch.lines or batch.block:
                last = (batch.lines[-1].event_at if batch.lines else None) or now
                h.set_time("last_event_at", last, source=batch.source)
        for rule, n in self.pipeline.lines_matched.items():
            if n != matched_before.get(rule, 0):
                h.inc("lines_matched", n - matched_before.get(rule, 0), rule=rule)

    async def _commit(self, commit: Commit) -> None:
        if commit.empty():
            return
        now = self.clock.now()
        commit.meta["last_alive_at"] = now.isoformat()
        try:
            await self.db.run(lambda s: s.commit(commit, now))
        except StoreError as e:
            # Fatal for the watchdog: systemd restarts the agent; the batch is re-read then.
            self.health.set_problem("state", "state", str(e), fatal=True)
            log.error("cannot commit to the state file: %s", e)
            raise
        self.state.commits += 1
        woken: set[str] = set()
        seen_events: set[str] = set()
        for row in commit.outbox:
            p = row.payload
            if row.event_id not in seen_events:
                seen_events.add(row.event_id)
                self.health.inc("alerts", kind=str(p["kind"]), state=str(p["notification"]))
                log.info("alert %s [%s] %s", p["notification"], p["severity"], p["summary"])
            self.health.inc("notifications", webhook=row.webhook)
            if row.webhook not in woken and row.webhook in self.workers:
                woken.add(row.webhook)
                self.workers[row.webhook][0].wake()

    # ---------------------------------------------------------------- reload

    async def _reload(self) -> None:
        self.notifier.reloading()
        try:
            config = await asyncio.to_thread(load_config, self.config_path, self.env)
        except (ConfigError, OSError) as e:
            log.error("reload refused, the running configuration stays in force:\n%s", e)
            self.health.inc("config_reloads", result="refused")
            self.health.set_problem("config", "config", f"reload refused: {e}".splitlines()[0])
            self._agent_signal(
                "config",
                True,
                f"configuration reload refused: {self.config_path} is invalid",
                str(e),
            )
            self.notifier.ready(self._status_line())
            return
        old = self.config
        changed = [
            n for n, c in old.sources.items() if n not in config.sources or config.sources[n] != c
        ]
        for name in changed:
            await self._stop_source(name)
        while not self.queue.empty():  # everything already read is processed under the old rules
            await self._handle_batches(self.queue.get_nowait())
        now = self.clock.now()
        states = await self.db.run(_all_rule_state)
        commit = self.pipeline.reconfigure(config, now, lambda r: states.get(r, {}))
        await asyncio.to_thread(self.pipeline.warm)
        resolved = self.pipeline.apply_signals(
            [Signal(rule=AGENT_RULE, kind="agent", key="config", action="resolve", at=now)], now
        )
        commit.alerts.update(resolved.alerts)
        commit.outbox.extend(resolved.outbox)
        await self._commit(commit)
        self.config = config
        self.health.clear_problem("config")
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
        log.info(
            "configuration reloaded: %d rules, %d sources", len(config.rules), len(config.sources)
        )

    async def _watch_config(self) -> None:
        """Reload when rules.yaml changes on disk (inode, mtime or size: editors that replace the
        file and editors that rewrite it in place are both seen)."""

        def stamp() -> tuple[int, int, int] | None:
            try:
                st = os.stat(self.config_path)
            except OSError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)

        last = await asyncio.to_thread(stamp)
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            now_stamp = await asyncio.to_thread(stamp)
            if now_stamp is not None and now_stamp != last:
                last = now_stamp
                log.info("%s changed on disk; reloading", self.config_path)
                self.request_reload()

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
                await self.db.run(_pruner(now - OUTBOX_KEEP))

    async def _mark_alive(self, status: dict[str, Any] | None = None) -> None:
        meta = {
            "last_alive_at": self.clock.now().isoformat(),
            "agent_status": status or self._snapshot(),
        }

        def write(store: Store) -> None:
            store.set_meta(meta)

        await self.db.run(write)

    async def _self_check_loop(self) -> None:
        while True:
            await asyncio.sleep(SELF_CHECK_EVERY_S)
            self._check_sources()
            for name, (worker, _task) in self.workers.items():
                st = worker.stats()
                self.health.set_outbox(name, st.queue_depth, st.oldest_pending_at)
                for metric, value in (
                    ("delivery_attempts", st.attempts),
                    ("delivery_failures", st.failures),
                    ("dead_letters", st.dead),
                ):
                    before = self._delivery_seen.get((name, metric), 0)
                    delta = value - before if value >= before else value  # worker restarted
                    self._delivery_seen[(name, metric)] = value
                    if delta:
                        self.health.inc(metric, delta, webhook=name)  # type: ignore[arg-type]

    def _check_sources(self) -> None:
        """Source problems: logged at once, on /healthz at once, alerted after ``source_grace``."""
        now = self.clock.now()
        grace = self.config.agent.source_grace
        seen: set[str] = set()
        for name, running in self.sources.items():
            for p in running.source.problems():
                self.health.apply_source_problem(p)
                if not p.active:
                    continue
                key = f"source:{name}:{p.key}"
                seen.add(key)
                known = self.state.problems.get(key)
                if known is None:
                    log.error("source %s: %s", name, p.message)
                    known = self.state.problems[key] = _Problem(now, p.message)
                if not known.alerted and now - known.since >= grace:
                    known.alerted = True
                    self._agent_signal(key, True, f"source {name}: {p.message}", source=name)
        for key in [k for k in self.state.problems if k.startswith("source:") and k not in seen]:
            gone = self.state.problems.pop(key)
            log.info("%s: recovered (%s)", key, gone.message)
            _, name, pkey = key.split(":", 2)
            self.health.clear_problem(f"source/{name}/{pkey}")
            if gone.alerted:
                self._agent_signal(key, False, f"{key}: recovered")

    def _on_path_health(self, webhook: str, failing: bool, reason: str) -> None:
        key = f"delivery:{webhook}"
        cfg = self.config.webhooks.get(webhook)
        fallback = tuple(cfg.fallback if cfg and cfg.fallback else self.config.agent.fallback)
        notify = tuple(w for w in fallback if w != webhook)
        if failing:
            log.error("delivery to %s failing: %s", webhook, reason)
            self.health.set_problem(key, "delivery", f"delivery to {webhook} failing: {reason}")
        else:
            log.info("delivery to %s recovered", webhook)
            self.health.clear_problem(key)
        if notify:
            self._agent_signal(
                key,
                failing,
                f"delivery to {webhook} failing: {reason}"
                if failing
                else f"delivery to {webhook} recovered",
                notify=notify,
            )

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
                    "last_match_at": _iso_or_none(p.last_match_at.get(name)),
                    "next_deadline": _iso_or_none(ev.next_deadline()),
                    "matched": p.lines_matched.get(name, 0),
                }
                for name, ev in p.evaluators.items()
            },
        }

    def _status_line(self) -> str:
        firing = len(self.pipeline.alerts.firing()) if hasattr(self, "pipeline") else 0
        problems = len(self.health.problems())
        return (
            f"{len(self.sources)} sources, {len(self.config.rules)} rules, {firing} firing, "
            f"{problems} problems"
        )

    def _status_section(self) -> Mapping[str, Any]:
        return {
            "started_at": self.state.started_at.isoformat(),
            "caught_up": self.state.caught_up,
            "batches": self.state.batches,
            "sources": {n: r.source.status() for n, r in self.sources.items()},
            "firing": [a.summary for a in self.pipeline.alerts.firing()],
        }


class _Stop(Exception):
    pass


def _handle_signals(
    loop: asyncio.AbstractEventLoop, *, stop: Callable[[], None], reload: Callable[[], None]
) -> dict[signal.Signals, Any]:
    """SIGTERM and SIGINT stop, SIGHUP reloads; returns the handlers they replace.

    Plain Python signal handlers that hand over to the loop with ``call_soon_threadsafe``, not
    ``loop.add_signal_handler``: that one makes every signal the process receives write a byte to
    asyncio's self-pipe (``signal.set_wakeup_fd``), the regex budget's SIGVTALRM ticks
    (matching_budget, every 12.5 ms of CPU) included. The pipe holds 278 bytes; a few seconds of
    budgeted matching filled it, printed a BlockingIOError per tick, and a SIGTERM arriving then
    was lost. Here a signal's own handler always runs (Python runs it in the main thread at the
    next bytecode, and retries an interrupted ``epoll_wait`` after it), and its callback waits in
    the loop's ready queue, whatever the state of the pipe."""
    actions = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: reload}

    def on_signal(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(actions[signal.Signals(signum)])

    return {sig: signal.signal(sig, on_signal) for sig in actions}


def _iso_or_none(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat(timespec="seconds")


def _pruner(before: datetime) -> Callable[[Store], int]:
    return lambda store: outbox.prune(store, before)


def _all_rule_state(store: Store) -> dict[str, dict[str, Any]]:
    return {rule: store.load_rule_state(rule) for rule in store.rules_with_state()}
