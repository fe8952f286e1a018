"""inotify wake-ups for the file tailer: a watchdog Observer on the directories of its files.

Sits beside ``sources/files.py``, which it only wakes: the observer's thread calls
``loop.call_soon_threadsafe(event.set)`` on any change in a watched directory and does nothing
else; the tailer's sweep, run on the loop's side, then reads what changed. Without inotify (or
past the watch limit) :meth:`Watcher.start` and :meth:`Watcher.watch` log it and the tailer's
sweep every ``poll_interval`` still finds everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

OBSERVER_STOP_TIMEOUT = 5.0  # seconds to wait for the watchdog thread to end


@dataclass
class Watcher:
    """A watchdog Observer whose handler only sets an asyncio.Event on the loop."""

    observer: Any
    handler: Any
    watches: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def start(loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> Watcher | None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler  # noqa: PLC0415
            from watchdog.observers import Observer  # noqa: PLC0415

            class _Wake(FileSystemEventHandler):
                def on_any_event(self, event: FileSystemEvent) -> None:
                    # The loop may be closed already: then nobody is left to wake.
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(wake.set)

            observer = Observer()
            observer.daemon = True
            observer.start()
        except Exception as e:  # no inotify: the poll sweep still works
            log.info("file watcher unavailable (%s); polling only", e)
            return None
        return Watcher(observer, _Wake())

    def watch(self, dirs: set[str]) -> None:
        from watchdog import events as ev  # noqa: PLC0415

        wanted = [
            ev.FileCreatedEvent,
            ev.FileModifiedEvent,
            ev.FileAttribEvent,
            ev.FileMovedEvent,
            ev.FileDeletedEvent,
            ev.FileClosedEvent,
            ev.DirCreatedEvent,
            ev.DirDeletedEvent,
            ev.DirMovedEvent,
        ]
        for d in dirs - self.watches.keys():
            try:
                self.watches[d] = self.observer.schedule(self.handler, d, event_filter=wanted)
            except Exception as e:  # e.g. the inotify watch limit; the poll sweep covers it
                log.info("cannot watch %s (%s); polling it", d, e)
                self.watches[d] = None
        for d in self.watches.keys() - dirs:
            w = self.watches.pop(d)
            if w is not None:
                with contextlib.suppress(Exception):  # gone with its directory already
                    self.observer.unschedule(w)

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(OBSERVER_STOP_TIMEOUT)
