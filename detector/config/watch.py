"""Changes of rules.yaml and the files it includes on disk, as the running agent sees them.

Beside the config loader: the agent reloads when one of its config files changes (``systemctl
reload`` is the other way). A change is a new (inode, mtime, size) of the main file or of an
included one, a new file matching an ``include:`` glob, or an included file removed: editors that
replace a file and editors that rewrite it in place are both seen. It is reported once the files
have stopped changing for one poll, so an editor writing in several steps gives one reload, not
one per step.
"""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

Stamp = tuple[int, int, int]
Snapshot = tuple[tuple[str, ...], Stamp | None, frozenset[tuple[str, Stamp | None]]]
"""(the include globs watched, the main file's stamp, (path, stamp) of each included file)."""


def stamp(path: Path | str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def snapshot(main: Path, includes: Iterable[str]) -> Snapshot:
    """The stamps of ``main`` and of every file its include globs (or paths) match now."""
    globs = tuple(includes)
    found: set[tuple[str, Stamp | None]] = set()
    for pattern in globs:
        paths = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        found.update((p, stamp(p)) for p in paths)
    return (globs, stamp(main), frozenset(found))


async def config_changes(
    main: Path, base: Callable[[], Snapshot], poll_s: float
) -> AsyncIterator[Snapshot]:
    """Yield a snapshot after each settled change of ``main`` or of what its include globs
    match (forever; cancel to stop). ``base()``: the snapshot taken right after the config was
    last read (a new one after every reload, ok or refused): its globs are the ones watched, and
    a change is a difference from it. A main file that disappears is no change (the next one
    that appears is); an included file that disappears is one."""
    current = base()
    last = seen = current
    while True:
        await asyncio.sleep(poll_s)
        if base() is not current:  # the files were read again: what they are now is known
            current = base()
            last = seen = current
        # a few stat calls, on the loop (no thread hand-over every second). Where rules.yaml
        # sits on a mount that hangs, they hang the loop, and with it the watchdog ping: systemd
        # then restarts the agent (WatchdogSec=), which is said, rather than it waiting silently
        now = snapshot(main, current[0])
        if now[1] is not None and now != last and now == seen:
            last = now
            yield now
        seen = now
