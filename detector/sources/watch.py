"""inotify wake-ups for the file tailer: one inotify instance per event loop, read on the loop.

Sits beside ``sources/files.py``, which it only wakes. Every ``FileSource`` of the agent shares
one :class:`Hub` (per event loop and clock): one inotify file descriptor, read by the loop itself
(``loop.add_reader``: no thread, no hand-over), one watch per directory whatever the number of
sources in it, and one safety-net timer on the injected clock. A source holds a
:class:`Subscription`: the directories it wants watched, a predicate saying which file names in
them concern it, and a stat-only check that the timer calls.

*Coalescing.* An event wakes its sources at once (a lone write is read with no added delay);
then the hub stops reading the descriptor for ``COALESCE_S``, so the writes of that interval
pile up in the kernel's queue (which merges repeated events of one file) and are read, and
swept, together: a file written a thousand times a second costs at most ``1 / COALESCE_S``
sweeps a second, not one per write. The loop does not watch the inotify descriptor itself but a
private epoll instance holding it ``EPOLLONESHOT``: reading that epoll once disarms it, one
``epoll_ctl`` re-arms it after ``COALESCE_S``, and the loop's own registration never changes
(``remove_reader``/``add_reader`` each pause cost more CPU than the sweep it saved).

*What woke a source.* Each subscription collects, until its source takes them
(:meth:`Subscription.take`), the paths of the plain writes (``IN_MODIFY``, ``IN_CLOSE_WRITE``)
it was woken for; any other event (a name created, moved, deleted, changed attributes, the
directory gone, a queue overflow) or a wake by the safety net marks it ``full``: then the
source sweeps in full, else it may only read the files written (``sources/files.py``).

*The safety net.* Every ``poll_interval`` (the smallest among the subscriptions) the timer runs
each subscription's check: a few ``stat`` calls on the loop that wake the source only if a file
or directory differs from what its last sweep saw (a write inotify cannot see, e.g. through a
hard link in an unwatched directory; a queue overflow). Without inotify (not Linux, or past the
instance limit) :meth:`Hub.get` returns None, and a directory past the watch limit makes
:meth:`Subscription.watch` return False: the source then sweeps in full every ``poll_interval``
itself, as it always could.

*Why not watchdog's shared instance.* watchdog ≥ 7.0 has one (``inotify_c.InotifyFD
.get_instance()``: one descriptor, one reader thread, ``add_callback`` per path); a port of this
hub onto it (in this module's history; it covered every event above, IN_Q_OVERFLOW from 7.1)
was measured and dropped: its thread reads each event the moment it arrives, so the kernel never
merges a burst's events and every ``write()`` costs a thread wake-up, a read, an event object and
two locks under the GIL, even with the hub handing the loop one call per ``COALESCE_S``. Paired
runs of ``bench/bench_writes.py`` (2 pairs, 5 s a shape): 1,000 single-line writes/s 6.9–8.0 %
→ 8.4–10.5 % of a core (1.8–2.0x → 2.4–2.7x the same lines in 10 writes/s; the target is
≤ 5 %), idle threads with 20 sources 5–6 → 6–7 (the limit is 6). The class is also new (7.0)
and documented only by its docstrings, and it raises nothing for EACCES (it files a watch -1).
Here the loop stops reading for ``COALESCE_S`` instead, so the writes of that interval cost
nothing but the kernel's merge.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
from collections.abc import Callable
from datetime import datetime, timedelta

from detector.clock import Clock

log = logging.getLogger(__name__)

COALESCE_S = 0.025
"""After an event, inotify is read again only this much later (physical time): the latency
budget spent to turn many writes into one sweep."""

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
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
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
WRITES = IN_MODIFY | IN_CLOSE_WRITE  # events that only say a file's content grew or changed
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
READ_BYTES = 64 * 1024


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.init1 = libc.inotify_init1
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


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
        self.written: set[str] = set()  # absolute paths of the plain writes it was woken for
        self.full = True  # woken for something else too (or not told yet): a full sweep

    def take(self) -> tuple[bool, set[str]]:
        """What it was woken for since the last call: (full sweep needed, paths written)."""
        full, written = self.full, self.written
        self.full, self.written = False, set()
        return full, written

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
    """The loop's one inotify instance and safety-net timer (see the module docstring)."""

    _hubs: dict[tuple[int, int], Hub] = {}  # noqa: RUF012 - (id(loop), id(clock)) → its hub

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock, libc: _Libc, fd: int) -> None:
        self.loop = loop
        self.clock = clock
        self._libc = libc
        self.fd = fd
        self._wd_of: dict[str, int] = {}
        self._dir_of: dict[int, str] = {}
        self._subs_of: dict[str, set[Subscription]] = {}
        self._subs: set[Subscription] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._timer: asyncio.Task[None] | None = None
        # the loop watches this epoll, which holds the inotify descriptor one-shot: a pause is
        # one epoll_ctl to re-arm it, with no change to the loop's own registrations
        self._ep = select.epoll(1)
        self._ep.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
        loop.add_reader(self._ep.fileno(), self._on_readable)

    @classmethod
    def get(cls, loop: asyncio.AbstractEventLoop, clock: Clock) -> Hub | None:
        """The hub of this loop and clock, started on first use; None without inotify."""
        key = (id(loop), id(clock))
        hub = cls._hubs.get(key)
        if hub is not None and hub.loop is loop and not loop.is_closed():
            return hub
        try:
            libc = _Libc()
            fd = libc.init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as e:  # not Linux, or the instance limit
            log.info("inotify unavailable (%s); file sources poll", e)
            return None
        cls._hubs[key] = hub = Hub(loop, clock, libc, fd)
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
        if self._timer is None or self._timer.done():
            self._timer = self.loop.create_task(self._safety_net(), name="file-safety-net")
        return sub

    # ------------------------------------------------------------ watches

    def _add(self, d: str, sub: Subscription) -> bool:
        if d not in self._wd_of:
            wd = self._libc.add_watch(self.fd, os.fsencode(d), MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err != errno.ENOENT:  # e.g. the watch limit; the poll covers it
                    log.info("cannot watch %s (%s); polling it", d, os.strerror(err))
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
                self._libc.rm_watch(self.fd, wd)  # fails harmlessly if it went with its dir

    def _unsubscribe(self, sub: Subscription) -> None:
        for d in list(sub.dirs):
            self._remove(d, sub)
        sub.dirs.clear()
        self._subs.discard(sub)
        if not self._subs:
            self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._paused is not None:
            self._paused.cancel()
        with contextlib.suppress(Exception):  # the loop may be closing already
            self.loop.remove_reader(self._ep.fileno())
        self._ep.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        Hub._hubs = {k: h for k, h in Hub._hubs.items() if h is not self}

    # ------------------------------------------------------------ events

    def _on_readable(self) -> None:
        self._ep.poll(0)  # disarms the one-shot registration: the loop stops seeing it
        woken: set[Subscription] = set()
        while True:
            try:
                buf = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                break
            except OSError as e:  # should not happen; the safety net still works
                log.warning("reading inotify failed: %s", e)
                break
            self._dispatch(buf, woken)
            if len(buf) < READ_BYTES - 4096:
                break
        for sub in woken:
            sub.wake()
        # let the next events queue (and merge) in the kernel for a while: one sweep for them
        if self._paused is None:
            self._paused = self.loop.call_later(COALESCE_S, self._resume)

    def _resume(self) -> None:
        self._paused = None
        with contextlib.suppress(OSError):  # closed meanwhile
            self._ep.modify(self.fd, select.EPOLLIN | select.EPOLLONESHOT)

    def _dispatch(self, buf: bytes, woken: set[Subscription]) -> None:
        at = 0
        while at + _EVENT.size <= len(buf):
            wd, mask, _cookie, n = _EVENT.unpack_from(buf, at)
            name = os.fsdecode(buf[at + _EVENT.size : at + _EVENT.size + n].rstrip(b"\0"))
            at += _EVENT.size + n
            if mask & IN_Q_OVERFLOW:  # events were dropped: everyone looks
                for sub in self._subs:
                    sub.full = True
                woken.update(self._subs)
                continue
            d = self._dir_of.get(wd)
            if d is None:
                continue
            subs = self._subs_of.get(d, set())
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):  # the directory went
                if mask & IN_IGNORED:
                    self._dir_of.pop(wd, None)
                    self._wd_of.pop(d, None)
                    self._subs_of.pop(d, None)
                    for sub in subs:
                        sub.dirs.discard(d)  # watched again by its next sweep, if it is back
                for sub in subs:
                    sub.full = True
                woken.update(subs)
                continue
            path = None
            for sub in subs:
                if sub.wants(d, name):
                    woken.add(sub)
                    if not name or mask & ~WRITES:
                        sub.full = True
                    else:
                        path = path or os.path.join(d, name)
                        sub.written.add(path)

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
                    sub.full = True
                    sub.wake()
