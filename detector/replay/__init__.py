"""``detector test``: replay log files through the real pipeline with simulated time.

Nothing is sent and no state is written: an in-memory pipeline (the same ``Pipeline`` the agent
runs) sees the lines, and time is taken from the lines themselves (ISO 8601, syslog, nginx/apache
common log format, or ``--time-format``). Deadlines — silence, windows, threshold expiry — run
between hits in time order, so a replay reports what the live agent would have reported.

Reading is the file tailer's (``replay/blocks.py`` over ``sources/lines.py``): 1 MiB of bytes at a
time, split once, lines cut at the source's ``max_line_bytes`` exactly as the tailer cuts them; a
``Line`` object is built only for lines some rule hit, and timestamps are parsed only for those
lines and for the last line of each block (to advance the clock). That is what keeps a replay at
grep-like speed. ``--jobs N`` (backfills, ``replay/jobs.py``): N worker processes read and match
spans of the file and this process evaluates their hits in order, with the same result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detector.model import Config, FileSourceConfig
from detector.pipeline import Pipeline, pattern_specs, text_getter
from detector.replay.blocks import ReplayBlock, max_line_bytes, serial_blocks
from detector.replay.jobs import MatchPool
from detector.rules.base import When
from detector.sources.base import Line
from detector.sources.lines import BLOCK_BYTES
from detector.timestamps import TimeParser

BLOCK = BLOCK_BYTES
KEEP_PER_RULE = 20


@dataclass
class ReplayResult:
    lines: int = 0
    bytes: int = 0
    seconds: float = 0.0
    matches: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    """The first KEEP_PER_RULE notifications of each rule, in order (memory stays flat however
    many a long backfill raises)."""
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Every notification counted by (rule, notification kind)."""
    truncated_lines: int = 0
    """Lines cut at their source's max_line_bytes (as the tailer cuts them)."""

    @property
    def firing(self) -> int:
        return sum(n for (_, kind), n in self.counts.items() if kind in ("firing", "info"))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, payload: dict[str, Any]) -> None:
        rule = payload["rule"]
        self.counts[(rule, payload["notification"])] += 1
        if self._kept[rule] < KEEP_PER_RULE:
            self._kept[rule] += 1
            self.notifications.append(payload)

    _kept: Counter[str] = field(default_factory=Counter)


def pick_source(config: Config, path: str, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in config.sources:
            raise SystemExit(
                f"--source {wanted!r}: no such source (have {', '.join(config.sources)})"
            )
        return wanted
    import fnmatch  # noqa: PLC0415

    for name, src in config.sources.items():
        if isinstance(src, FileSourceConfig) and any(
            fnmatch.fnmatch(path, pat) or Path(path).name == Path(pat).name for pat in src.paths
        ):
            return name
    if len(config.sources) == 1:
        return next(iter(config.sources))
    raise SystemExit(
        f"{path}: matches no file source's path; say which source it stands for with --source "
        f"(one of {', '.join(config.sources)})"
    )


def replay(
    config: Config,
    files: list[tuple[str, str]],
    *,
    time_format: str | None = None,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    block: int = BLOCK,
    started_at: datetime | None = None,
) -> ReplayResult:
    """Replay ``files`` — (path, source name) pairs — through a fresh in-memory pipeline.

    With ``jobs`` > 1, ``jobs`` worker processes match the blocks of each regular file bigger
    than one block, and this process evaluates their hits in line order: same result, less
    time. Standard input (``-``) is always read here. ``block`` is the read size in bytes.
    ``started_at`` (default: now) is the time before the first timestamp is read: rules start
    their clocks there."""
    result = ReplayResult()
    start = time.perf_counter()
    clock_now = started_at or datetime.now(UTC)
    pipeline = Pipeline(config, clock_now, lambda _rule: {})
    pipeline.alerts.record = result.record  # every notification, webhooks or not
    current: list[datetime | None] = [None]
    pool: MatchPool | None = None
    try:
        for path, source in files:
            parser = TimeParser(time_format, clock_now.year)
            all_texts = any(
                ev.wants_all_lines and source in ev.rule.sources
                for ev in pipeline.evaluators.values()
            )
            max_line = max_line_bytes(config, source)
            blocks: Generator[ReplayBlock, None, None]
            if jobs > 1 and path != "-" and os.path.getsize(path) > block:
                if pool is None:
                    for name in {s for _p, s in files}:
                        pipeline.matcher.match(name, [])  # compiled once, before the fork
                    pool = MatchPool(pipeline.matcher, pattern_specs(config.rules), jobs)
                blocks = pool.blocks(path, source, all_texts, max_line, block)
            else:
                blocks = serial_blocks(
                    path,
                    pipeline.matcher,
                    source,
                    max_line=max_line,
                    block=block,
                    all_texts=all_texts,
                )
            try:
                for b in blocks:
                    texts = b.texts
                    result.lines += len(texts)
                    result.bytes += b.chars
                    result.truncated_lines += b.truncated

                    text = text_getter(texts)

                    def line_at(
                        i: int,
                        text: Callable[[int], str] = text,
                        source: str = source,
                        path: str = path,
                    ) -> Line:
                        return Line(source, text(i), None, path)

                    if current[0] is None:
                        for t in b.head:
                            first = parser.parse(t)
                            if first is not None:
                                current[0] = first
                                pipeline.tick(first)
                                break
                    now = current[0] or clock_now
                    # a line without a time of its own happened at the last time seen
                    seen = [When.exact(now)]

                    def when_for(
                        line: Line, parser: TimeParser = parser, seen: list[When] = seen
                    ) -> When:
                        at = parser.parse(line.text)
                        if at is not None and (current[0] is None or at > current[0]):
                            current[0] = at
                            seen[0] = When(at, at)
                        return When.of(at, seen[0])

                    pipeline.note_abandoned(b.abandoned)
                    pipeline.process_texts(
                        source, texts, line_at, when_for, now, interleave_ticks=True, hits=b.hits
                    )
                    for t in reversed(b.tail):
                        last = parser.parse(t)
                        if last is not None:
                            if current[0] is None or last > current[0]:
                                current[0] = last
                            break
                    if current[0] is not None:
                        pipeline.tick(current[0])
                    if progress is not None:
                        progress(result.bytes)
            finally:
                blocks.close()  # the file it reads, at once
    except BaseException:
        if pool is not None:
            pool.close(abort=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()
    result.seconds = time.perf_counter() - start
    result.matches = Counter(pipeline.lines_matched)
    return result


def main(args: argparse.Namespace) -> int:
    from detector.cli_support import load_config_or_exit  # noqa: PLC0415 - the CLI layer

    config = load_config_or_exit(args)
    files = [(f, pick_source(config, f, args.source)) for f in args.files]
    total = sum(Path(f).stat().st_size for f, _ in files if f != "-")
    show = not args.no_progress and sys.stderr.isatty() and total > 32 * BLOCK

    def progress(done: int) -> None:
        pct = min(100, int(done * 100 / max(total, 1)))
        bar = "#" * (pct // 4)
        print(f"\r[{bar:<25}] {pct:3d}%", end="", file=sys.stderr, flush=True)

    jobs: int = getattr(args, "jobs", 1)
    if jobs > 1 and "-" in args.files:
        print(
            f"note: --jobs {jobs} does not apply to standard input (-): it is read in one process",
            file=sys.stderr,
        )
    result = replay(
        config,
        files,
        time_format=args.time_format,
        progress=progress if show else None,
        jobs=jobs,
    )
    if show:
        print(file=sys.stderr)
    rate = result.lines / result.seconds if result.seconds else 0.0
    print(
        f"{result.lines} lines, {result.bytes / 1e6:.1f} MB in {result.seconds:.2f} s "
        f"({rate:,.0f} lines/s)"
    )
    if not args.quiet:
        print(f"\n{'rule':<32} {'kind':<13} {'matches':>9}")
        for rule in config.rules:
            print(f"{rule.name:<32} {rule.kind:<13} {result.matches.get(rule.name, 0):>9}")
        shown = len(result.notifications)
        more = f" (the first {KEEP_PER_RULE} of each rule shown)" if shown < result.total else ""
        print(f"\n{result.total} notifications{more}:")
        for n in result.notifications:
            when = n["last_seen_at"] if n["notification"] != "resolved" else n["resolved_at"]
            print(f"  {when}  {n['notification'].upper():<8} [{n['severity']}] {n['summary']}")
            if n["notification"] == "firing":
                for s in n["samples"][: args.samples]:
                    print(f"      | {s[:160]}")
    firing = result.firing
    print(f"\n{firing} alerts would have fired")
    return 1 if firing else 0
