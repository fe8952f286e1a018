"""Line, Batch and the Source protocol: the contract between sources and the rest of the agent.

A source yields :class:`Batch` es. The service matches each batch, updates rule state and commits,
in one SQLite transaction, the state, the new alerts and ``batch.checkpoint``. A source restarts
from the checkpoints it was given at construction; anything after them is read again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from detector.newlines import count_newlines
from detector.records import Checkpoint

if TYPE_CHECKING:  # asyncio only in annotations: `detector test` starts without it
    import asyncio


@dataclass(slots=True)
class Line:
    """One line. Not frozen on purpose: a frozen dataclass costs about 3x more to build, and one
    Line is built per line read on the hot path. Treat it as immutable."""

    source: str
    """Name of the source in rules.yaml."""
    text: str
    """The line, decoded with errors="replace", without its line ending."""
    event_at: datetime | None = None
    """The source's own timestamp (journald ``__REALTIME_TIMESTAMP``), aware UTC; None for files."""
    path: str | None = None
    """The file the line came from (None for journald)."""
    fields: Mapping[str, str] | None = None
    """Structured fields (journald fields), None for plain files. Captured groups are added by
    matching, not here."""


@dataclass(slots=True)
class Batch:
    """Lines read from one source, with the checkpoints they end at."""

    source: str
    lines: list[Line]
    checkpoints: list[Checkpoint] = field(default_factory=list)
    """Checkpoints to commit with this batch (after its last line). May be several: e.g. the end of
    a rotated file and the start of its successor."""
    truncated_lines: int = 0
    """How many lines in this batch were cut at max_line_bytes (for metrics)."""
    block: bytes | None = None
    """The batch's lines as raw bytes instead of ``lines`` (which is then empty): whole lines,
    each ending in ``b"\\n"``, none with a ``\\r`` or longer than the source's max_line_bytes.
    A file source sends most of what it reads this way, so that only lines a rule needs are ever
    decoded (with ``errors="replace"``, like every line) or made into a :class:`Line`."""
    block_path: str | None = None
    """The file the block came from (``Line.path`` of its lines)."""

    def line_count(self) -> int:
        return len(self.lines) + (count_newlines(self.block) if self.block else 0)

    def all_lines(self) -> list[Line]:
        """Every line of the batch as a :class:`Line` (decoding the block: for tests and tools,
        not the hot path)."""
        if not self.block:
            return list(self.lines)
        texts = self.block.decode("utf-8", "replace").split("\n")[:-1]
        return [*self.lines, *(Line(self.source, t, path=self.block_path) for t in texts)]


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """A condition the agent must tell the user about (unreadable file, journalctl failing…).

    ``active=False`` clears a problem with the same ``key``.
    """

    source: str
    key: str
    message: str
    active: bool = True
    occurrence: int = 0
    """Raised by the source each time the problem happens anew (a second cursor gap, another
    crash of journalctl): the agent notifies again instead of only counting."""


class Source(Protocol):
    name: str
    opened: asyncio.Event
    """Set once the source has fixed where it starts reading: what is written after it is
    read. The agent waits for it (bounded) before READY=1."""

    def batches(self) -> AsyncIterator[Batch]:
        """Yield batches forever (until cancelled). Must never raise for bad input."""
        ...

    def problems(self) -> list[SourceProblem]:
        """Current problems (for /healthz, status and agent alerts)."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for `detector status` and /status."""
        ...

    def caught_up(self) -> bool:
        """True once everything that existed at start-up has been read (deadlines wait for it)."""
        ...

    def read_now(self) -> asyncio.Future[None]:
        """Read what the source holds now (a file sweep; the journal's newest entry): the future
        is done once every line it held at this call has been handed out, i.e. is in the agent's
        queue. The agent asks before an expectation deadline runs (``agent.settle``); a source
        that cannot read (journalctl failing) leaves it pending."""
        ...

    async def aclose(self) -> None:
        """Release what the source holds (watcher threads, child processes, descriptors)."""
        ...


class ReadRequests:
    """A source's bookkeeping for :meth:`Source.read_now`: requests are numbered; a read that
    began after request ``n`` and handed out all it found serves every request up to ``n``."""

    __slots__ = ("_asked", "_waiting")

    def __init__(self) -> None:
        self._asked = 0
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    def ask(self) -> asyncio.Future[None]:
        import asyncio  # noqa: PLC0415 - `detector test` starts without asyncio

        self._asked += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((self._asked, fut))
        return fut

    def begin(self) -> int:
        """A read begins: what it hands out serves the requests made so far."""
        return self._asked

    def served(self, upto: int) -> None:
        """The read begun at ``begin() == upto`` handed out everything it found."""
        still = []
        for n, fut in self._waiting:
            if n <= upto:
                if not fut.done():
                    fut.set_result(None)
            elif not fut.done():
                still.append((n, fut))
        self._waiting = still
