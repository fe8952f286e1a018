"""Changes of rules.yaml on disk, as the running agent sees them.

Beside the config loader: the agent reloads when the file changes (``systemctl reload`` is the
other way). A change is a new (inode, mtime, size): editors that replace the file and editors
that rewrite it in place are both seen. It is reported once the file has stopped changing for one
poll, so an editor writing in several steps gives one reload, not one per step.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

Stamp = tuple[int, int, int]


def stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


async def file_changes(path: Path, poll_s: float) -> AsyncIterator[Stamp]:
    """Yield the new stamp of ``path`` after each settled change (forever; cancel to stop). A
    file that disappears is no change: the next one that appears is."""
    last = await asyncio.to_thread(stamp, path)
    seen = last
    while True:
        await asyncio.sleep(poll_s)
        now = await asyncio.to_thread(stamp, path)
        if now is not None and now != last and now == seen:
            last = now
            yield now
        seen = now
