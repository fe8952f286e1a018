"""inotify wake-ups for the file tailer: watchdog's one shared inotify instance, handed to the loop.

Sits beside ``sources/files.py``, which it only wakes. Every ``FileSource`` of the agent shares
one :class:`Hub` (per event loop and clock) on watchdog's process-wide inotify instance
(``watchdog.observers.inotify_c.InotifyFD.get_instance()``, watchdog ≥ 7.0: one file descriptor
and one reader thread for every watch of the process): one watch per directory whatever the
number of sources in it, and one safety-net timer on the injected clock. A source holds a
:class:`Subscription`: the directories it wants watched, a predicate saying which file names in
them concern it, and a stat-only check that the timer calls.

*Coalescing.* watchdog's thread only notes an event for the hub; the first one of a quiet spell
is handed to the loop at once (``call_soon_threadsafe``: a lone write is read with no added
delay), which wakes the sources whose file names the events carry; for ``COALESCE_S`` after that
the thread keeps noting events but hands nothing over, and what it noted meanwhile is handed
over in one go when the interval ends: a file written a thousand times a second costs at most
``1 / COALESCE_S`` hand-overs and sweeps a second, not one per write.

*The safety net.* Every ``poll_interval`` (the smallest among the subscriptions) the timer runs
each subscription's check: a few ``stat`` calls on the loop that wake the source only if a file
or directory differs from what its last sweep saw (a write inotify cannot see, e.g. through a
hard link in an unwatched directory). A kernel queue overflow wakes every source. Without
inotify (not Linux, or past the instance limit) :meth:`Hub.get` returns None, and a directory
past the watch limit makes :meth:`Subscription.watch` return False: the source then sweeps in
full every ``poll_interval`` itself, as it always could.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from detector.clock import Clock

if TYPE_CHECKING:
    from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

log = logging.getLogger(__name__)

COALESCE_S = 0.025
"""After handing events to the loop, the next ones are handed over only this much later
(physical time): the latency budget spent to turn many writes into one sweep."""

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_Event = tuple[int, int, bytes]  # wd, mask, file name (b"" for the directory itself)


def _shared_inotify() -> InotifyFD:
    """watchdog's process-wide inotify instance and its reader thread (started on first use)."""
    from watchdog.observers.inotify_c import InotifyFD  # noqa: PLC0415 - raises off Linux

    return InotifyFD.get_instance()


class Subscription:
    """One source's interest: directories, which names in them, and its safety-net check."""

    def __init__(
        self,
        hub: Hub,
        wake: Callable[[], None],
        wants: Callable[[str, str], bool],
        check: Callable[[], bool],
        every: timedelta,
    ) -> None:
        self.hub = hub
        self.wake = wake
        self.wants = wants  # (directory, file name) → does an event there concern the source?
        self.check = check  # True: something changed that a sweep must look at
        self.every = every
        self.dirs: set[str] = set()
        self.checked_at: datetime | None = None

    def watch(self, dirs: set[str]) -> bool:
        """Watch exactly ``dirs``; False if one of them cannot be watched (then poll it)."""
        ok = True
        for d in dirs - self.dirs:
            ok = self.hub._add(d, self) and ok
        for d in self.dirs - dirs:
            self.hub._remove(d, self)
        self.dirs = {d for d in dirs if self in self.hub._subs_of.get(d, ())}
        return ok and self.dirs == dirs

    def close(self) -> None:
        self.hub._unsubscribe(self)


class Hub:
    """The loop's share of watchdog's inotify instance, and its safety-net timer (see the
    module docstring). It is the watchdog callback of each of its watches: ``on_event``,
    ``on_watch_deleted`` and ``on_queue_overflow`` run in watchdog's reader thread and only note
    the event; everything else runs on the loop."""

    _hubs: dict[tuple[int, int], Hub] = {}  # noqa: RUF012 - (id(loop), id(clock)) → its hub

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock, inotify: InotifyFD) -> None:
        self.loop = loop
        self.clock = clock
        self._inotify = inotify
        self._id: Any = id(self)  # this hub's callback id on each watch (a watchdog CallbackId)
        self._wd_of: dict[str, int] = {}
        self._dir_of: dict[int, str] = {}
        self._subs_of: dict[str, set[Subscription]] = {}
        self._subs: set[Subscription] = set()
        self._timer: asyncio.Task[None] | None = None
        self._window: asyncio.TimerHandle | None = None
        # shared with watchdog's thread, under _lock: the events noted since the last hand-over
        # (repeated writes of one file are one entry) and whether a hand-over or its coalescing
        # window is under way (then a new event is only noted: no self-pipe write)
        self._lock = threading.Lock()
        self._pending: dict[_Event, None] = {}
        self._handing = False
        self._closed = False

    @classmethod
    def get(cls, loop: asyncio.AbstractEventLoop, clock: Clock) -> Hub | None:
        """The hub of this loop and clock, started on first use; None without inotify."""
        key = (id(loop), id(clock))
        hub = cls._hubs.get(key)
        if hub is not None and hub.loop is loop and not loop.is_closed():
            return hub
        try:
            inotify = _shared_inotify()
        except Exception as e:  # not Linux (ImportError, UnsupportedLibcError), the instance limit
            log.info("inotify unavailable (%s); file sources poll", e)
            return None
        cls._hubs[key] = hub = Hub(loop, clock, inotify)
        return hub

    def subscribe(
        self,
        wake: Callable[[], None],
        wants: Callable[[str, str], bool],
        check: Callable[[], bool],
        every: timedelta,
    ) -> Subscription:
        sub = Subscription(self, wake, wants, check, every)
        self._subs.add(sub)
        self._closed = False
        if self._timer is None or self._timer.done():
            self._timer = self.loop.create_task(self._safety_net(), name="file-safety-net")
        return sub

    # ------------------------------------------------------------ watches

    def _add(self, d: str, sub: Subscription) -> bool:
        if d not in self._wd_of:
            try:
                wd = self._inotify.add_callback(os.fsencode(d), MASK, self, self._id)  # type: ignore[arg-type]
            except OSError as e:
                if e.errno != errno.ENOENT:  # e.g. the watch limit; the poll covers it
                    log.info("cannot watch %s (%s); polling it", d, e.strerror)
                return False
            if wd < 0:  # watchdog does not raise for EACCES: it files a watch -1
                with contextlib.suppress(OSError):
                    self._inotify.remove_callbacks([(wd, self._id)])
                log.info("cannot watch %s (%s); polling it", d, os.strerror(errno.EACCES))
                return False
            self._wd_of[d], self._dir_of[wd] = wd, d
        self._subs_of.setdefault(d, set()).add(sub)
        return True

    def _remove(self, d: str, sub: Subscription) -> None:
        subs = self._subs_of.get(d)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs_of[d]
            wd = self._wd_of.pop(d, None)
            if wd is not None:
                self._dir_of.pop(wd, None)
                self._forget([wd])

    def _forget(self, wds: list[int]) -> None:
        """Drop this hub's callback from those watches (watchdog removes a watch left unused;
        one that went with its directory is already gone, harmlessly)."""
        with contextlib.suppress(OSError):
            self._inotify.remove_callbacks([(wd, self._id) for wd in wds])  # type: ignore[misc]

    def _unsubscribe(self, sub: Subscription) -> None:
        for d in list(sub.dirs):
            self._remove(d, sub)
        sub.dirs.clear()
        self._subs.discard(sub)
        if not self._subs:
            self.close()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._forget(list(self._dir_of))
        self._wd_of.clear()
        self._dir_of.clear()
        self._subs_of.clear()
        with self._lock:
            self._pending.clear()
            self._handing = False
        Hub._hubs = {k: h for k, h in Hub._hubs.items() if h is not self}

    # ------------------------------------------------------------ events: watchdog's thread

    def on_event(self, event: InotifyEvent) -> None:
        self._note((event.wd, event.mask, event.name))

    def on_watch_deleted(self, wd: int) -> None:
        self._note((wd, IN_IGNORED, b""))

    def on_queue_overflow(self) -> None:
        self._note((-1, IN_Q_OVERFLOW, b""))

    def _note(self, event: _Event) -> None:
        with self._lock:
            self._pending[event] = None
            if self._handing:
                return
            self._handing = True
        with contextlib.suppress(RuntimeError):  # the loop closed (no source left on it)
            self.loop.call_soon_threadsafe(self._hand_over)

    # ------------------------------------------------------------ events: the loop

    def _hand_over(self) -> None:
        with self._lock:
            events, self._pending = self._pending, {}
        if self._closed:
            return
        woken: set[Subscription] = set()
        for event in events:
            self._dispatch(event, woken)
        for sub in woken:
            sub.wake()
        # the events of the next COALESCE_S are only noted meanwhile: one sweep for them
        self._window = self.loop.call_later(COALESCE_S, self._window_ends)

    def _window_ends(self) -> None:
        self._window = None
        with self._lock:
            if not self._pending:
                self._handing = False
                return
        self._hand_over()

    def _dispatch(self, event: _Event, woken: set[Subscription]) -> None:
        wd, mask, raw = event
        if mask & IN_Q_OVERFLOW:  # events were dropped: everyone looks
            woken.update(self._subs)
            return
        d = self._dir_of.get(wd)
        if d is None:
            return
        subs = self._subs_of.get(d, set())
        if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):  # the directory went
            if mask & IN_IGNORED:
                self._dir_of.pop(wd, None)
                self._wd_of.pop(d, None)
                self._subs_of.pop(d, None)
                for sub in subs:
                    sub.dirs.discard(d)  # watched again by its next sweep, if it is back
            woken.update(subs)
            return
        name = os.fsdecode(raw)
        woken.update(s for s in subs if s.wants(d, name))

    # ------------------------------------------------------------ the safety net

    async def _safety_net(self) -> None:
        while self._subs:
            every = min(s.every for s in self._subs)
            await self.clock.sleep_until(self.clock.now() + every)
            now = self.clock.now()
            for sub in list(self._subs):
                if sub.checked_at is not None and now - sub.checked_at < sub.every:
                    continue
                sub.checked_at = now
                try:
                    changed = sub.check()
                except Exception:  # a file closed by a sweep meanwhile, say: let it look
                    changed = True
                if changed:
                    sub.wake()
