"""The agent: wires sources → pipeline → store → delivery, and keeps itself honest.

Read top to bottom, this is the data flow of DESIGN.md §2:

1. ``Agent.run`` loads the config, opens the state file, restores rule state, alerts and source
   checkpoints, and notes how long the agent was down;
2. one *pump* task per source pushes its batches into a bounded queue (back-pressure);
3. the single *processor* task takes a batch, runs it through the :class:`Pipeline` and commits the
   result (state + alerts + outbox + checkpoint) in one transaction — only then is the read position
   durable; between batches it wakes exactly at the pipeline's next deadline and runs ``tick``;
   deadlines are held back until every source has caught up after a restart, so a line written
   while the agent was down still counts;
4. delivery workers send what the commits put in the outbox;
5. around it: signals (SIGTERM/SIGINT stop, SIGHUP reloads), a config-file watcher, sd_notify, the
   health state, the optional HTTP listener and dead man's switch, and self-monitoring that turns
   the agent's own problems into alerts.

Every mutation of the pipeline happens on the processor task (reloads and agent signals are handed
to it), so no lock is needed and commits are ordered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from detector.alerts import AGENT_RULE
from detector.clock import Clock
from detector.config import ConfigError, load_config
from detector.model import SourceConfig
from detector.pipeline import Pipeline
from detector.rules.base import Signal, When
from detector.sources.base import Batch, Line, Source
from detector.store.db import AsyncStore, Commit, Store

log = logging.getLogger("detector")

QUEUE_BATCHES = 8
ALIVE_EVERY_S = 15.0
SELF_CHECK_EVERY_S = 2.0
CONFIG_POLL_S = 1.0


def build_source(cfg: SourceConfig, checkpoints: Mapping[str, Any], clock: Clock) -> Source:
    """The one mapping from a source config to its implementation."""
    from detector.model import FileSourceConfig  # noqa: PLC0415 - keep the mapping in one place

    if isinstance(cfg, FileSourceConfig):
        from detector.sources.files import FileSource  # noqa: PLC0415

        return FileSource(cfg, checkpoints, clock)
    from detector.sources.journald import JournaldSource  # noqa: PLC0415

    return JournaldSource(cfg, checkpoints, clock)


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
    """What the agent knows about itself, for status, /healthz and agent alerts."""

    started_at: datetime
    caught_up: bool = False
    problems: dict[str, _Problem] = field(default_factory=dict)
    batches: int = 0
    commits: int = 0


class Agent:
    def __init__(self, config_path: Path, clock: Clock, env: Mapping[str, str] | None = None):
        self.config_path = Path(config_path)
        self.clock = clock
        self.env = env
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._pending_signals: list[Signal] = []
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=QUEUE_BATCHES)
        self.sources: dict[str, _Running] = {}
        self.down_since: datetime | None = None

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

    # ---------------------------------------------------------------- start-up

    async def run(self) -> int:
        config = await asyncio.to_thread(load_config, self.config_path, self.env)
        self.config = config
        now = self.clock.now()
        self.state = AgentState(started_at=now)
        store = await asyncio.to_thread(Store, config.agent.state)
        self.db = AsyncStore(store)
        last_alive = await self.db.run(lambda s: s.get_meta("last_alive_at"))
        alert_rows = await self.db.run(lambda s: s.load_alerts())
        states = await self.db.run(_all_rule_state)
        self.pipeline = Pipeline(config, now, lambda r: states.get(r, {}), alert_rows)
        if last_alive is not None:
            self.down_since = datetime.fromisoformat(last_alive)
            self.pipeline.note_downtime(self.down_since, now)
            log.info("agent was down since %s; catching up before deadlines run", last_alive)
        log.info(
            "detector starting: %d sources, %d rules, %d webhooks, state %s",
            len(config.sources),
            len(config.rules),
            len(config.webhooks),
            config.agent.state,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                for name, cfg in config.sources.items():
                    await self._start_source(name, cfg)
                tg.create_task(self._processor(), name="processor")
                tg.create_task(self._alive_loop(), name="alive")
                tg.create_task(self._watch_config(), name="config-watch")
                tg.create_task(self._self_check_loop(), name="self-check")
                await self._stop.wait()
                raise _Stop
        except* _Stop:
            pass
        finally:
            await self._shutdown()
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

    async def _shutdown(self) -> None:
        for name in list(self.sources):
            with contextlib.suppress(Exception):
                await self._stop_source(name)
        with contextlib.suppress(Exception):
            await self._mark_alive()
        self.db.close()

    # ---------------------------------------------------------------- the processor

    def _all_caught_up(self) -> bool:
        if self.state.caught_up:
            return True
        if not all(r.source.caught_up() for r in self.sources.values()):
            return False
        if not self.queue.empty():
            return False
        self.state.caught_up = True
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
            waits: set[asyncio.Future[Any]] = {getter, asyncio.ensure_future(self._wake.wait())}
            sleeper = None
            if deadline is not None:
                sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
                waits.add(sleeper)
            elif not caught_up:
                sleeper = asyncio.ensure_future(asyncio.sleep(0.2))  # re-check catch-up
                waits.add(sleeper)
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for fut in pending:
                if fut is not getter:
                    fut.cancel()
            if getter in done:
                batch = getter.result()
                getter = None
                await self._handle_batch(batch)
        if getter is not None:
            getter.cancel()

    def _when_for(self, now: datetime) -> Any:
        catching_up = not self.state.caught_up and self.down_since is not None
        earliest = self.down_since if catching_up and self.down_since else now
        default = When(now, earliest)

        def when_for(line: Line) -> When:
            if line.event_at is not None:
                return When.exact(line.event_at)
            return default

        return when_for

    async def _handle_batch(self, batch: Batch) -> None:
        now = self.clock.now()
        commit = self.pipeline.process(batch, self._when_for(now), now)
        self.state.batches += 1
        await self._commit(commit)

    async def _commit(self, commit: Commit) -> None:
        if commit.empty():
            return
        now = self.clock.now()
        commit.meta["last_alive_at"] = now.isoformat()
        await self.db.run(lambda s: s.commit(commit, now))
        self.state.commits += 1
        for row in commit.outbox:
            log.info(
                "alert %s %s: %s",
                row.payload.get("notification"),
                row.webhook,
                row.payload.get("summary"),
            )

    # ---------------------------------------------------------------- reload

    async def _reload(self) -> None:
        try:
            config = await asyncio.to_thread(load_config, self.config_path, self.env)
        except ConfigError as e:
            log.error("reload refused, the running configuration stays in force:\n%s", e)
            self._pending_signals.append(
                Signal(
                    rule=AGENT_RULE,
                    kind="agent",
                    key="config",
                    action="fire",
                    at=self.clock.now(),
                    summary=f"configuration reload refused: {self.config_path} is invalid",
                    description=str(e),
                )
            )
            return
        old = self.config
        changed = [
            n for n, c in old.sources.items() if n not in config.sources or config.sources[n] != c
        ]
        for name in changed:
            await self._stop_source(name)
        while not self.queue.empty():  # everything already read is processed under the old rules
            await self._handle_batch(self.queue.get_nowait())
        now = self.clock.now()
        states = await self.db.run(_all_rule_state)
        commit = self.pipeline.reconfigure(config, now, lambda r: states.get(r, {}))
        self.pipeline.apply_signals(
            [Signal(rule=AGENT_RULE, kind="agent", key="config", action="resolve", at=now)], now
        )
        self.pipeline._collect(commit, ())
        await self._commit(commit)
        self.config = config
        for name, cfg in config.sources.items():
            if name not in self.sources:
                await self._start_source(name, cfg)
        log.info(
            "configuration reloaded: %d rules, %d sources", len(config.rules), len(config.sources)
        )

    async def _watch_config(self) -> None:
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
        while True:
            await asyncio.sleep(ALIVE_EVERY_S)
            await self._mark_alive()

    async def _mark_alive(self) -> None:
        meta = {"last_alive_at": self.clock.now().isoformat()}

        def write(store: Store) -> None:
            store.set_meta(meta)

        await self.db.run(write)

    async def _self_check_loop(self) -> None:
        while True:
            await asyncio.sleep(SELF_CHECK_EVERY_S)
            self._check_sources()

    def _check_sources(self) -> None:
        now = self.clock.now()
        grace = self.config.agent.source_grace
        seen: set[str] = set()
        for name, running in self.sources.items():
            for p in running.source.problems():
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
                    self.raise_agent_signal(
                        Signal(
                            rule=AGENT_RULE,
                            kind="agent",
                            key=key,
                            action="fire",
                            at=now,
                            summary=f"source {name}: {p.message}",
                            source=name,
                        )
                    )
        for key in [k for k in self.state.problems if k.startswith("source:") and k not in seen]:
            gone = self.state.problems.pop(key)
            log.info("%s: recovered (%s)", key, gone.message)
            if gone.alerted:
                self.raise_agent_signal(
                    Signal(rule=AGENT_RULE, kind="agent", key=key, action="resolve", at=now)
                )


class _Stop(Exception):
    pass


def _all_rule_state(store: Store) -> dict[str, dict[str, Any]]:
    return {rule: store.load_rule_state(rule) for rule in store.rules_with_state()}
