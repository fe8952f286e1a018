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
spans of the file and this process evaluates their hits in order, with the same result. A
``multiline:`` source's lines are joined into events as the tailer joins them
(``replay/blocks.py`` :func:`~detector.replay.blocks.event_blocks`), in this process whatever
``--jobs`` says; rules match whole events.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from detector.config.values import parse_duration
from detector.matching.fields import RecordTime, record_time_parser
from detector.model import Config, FileSourceConfig
from detector.pipeline import Pipeline, pattern_specs, text_getter
from detector.replay.blocks import (
    ReplayBlock,
    Undecompressable,
    decompressed,
    event_blocks,
    max_line_bytes,
    multiline_of,
    serial_blocks,
)
from detector.replay.jobs import MatchPool
from detector.rules.base import When
from detector.sources.base import Line
from detector.sources.lines import BLOCK_BYTES, open_stream, sniff, zstd_available
from detector.timefmt import format_duration, iso
from detector.timestamps import TimeParser, syslog_start_year, zone_named

BLOCK = BLOCK_BYTES
_NAMES = {"gz": "gzip", "xz": "xz", "bz2": "bzip2", "zst": "zstd"}
KEEP_PER_RULE = 20
new_when = tuple.__new__
"""``new_when(When, (at, at))`` is ``When(at, at)`` at half the cost (once per line with a hit)."""


@dataclass
class ReplayResult:
    """What ``detector test`` found: counts, samples and notifications."""

    lines: int = 0
    bytes: int = 0
    seconds: float = 0.0
    matches: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    """The first KEEP_PER_RULE notifications of each rule, in order (memory stays flat however
    many a long backfill raises). Each is the webhook payload plus ``key``; ``created_at`` is
    its time on the simulated clock; ``held`` is set on digests sent at the end of the input."""
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Every notification counted by (rule, notification kind)."""
    truncated_lines: int = 0
    """Lines cut at their source's max_line_bytes (as the tailer cuts them)."""
    unparsed: Counter[str] = field(default_factory=Counter)
    """Per ``parse:`` source, lines that did not parse (matched as plain text only)."""
    events: int = 0
    """Events of ``multiline:`` sources (their lines are counted in ``lines``)."""
    split_events: int = 0
    """Events of ``multiline:`` sources that ended at ``max_lines``."""
    first_at: datetime | None = None
    """The simulated span: the first line's time, the last line's, and how far deadlines ran
    (``--until``). None: no line had a timestamp (the clock stood at the present)."""
    last_at: datetime | None = None
    until: datetime | None = None
    on_notification: Callable[[dict[str, Any]], None] | None = None
    """Called with every notification as it is raised (``--format json`` streams them)."""
    holding: bool = False
    """Set while the digests held back at the end of the input are reported."""

    @property
    def firing(self) -> int:
        return sum(n for (_, kind), n in self.counts.items() if kind in ("firing", "info"))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, payload: dict[str, Any], key: str) -> None:
        payload = {**payload, "key": key}
        if self.holding:
            payload["held"] = True
        rule = payload["rule"]
        self.counts[(rule, payload["notification"])] += 1
        if self.on_notification is not None:
            self.on_notification(payload)
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


def file_mtime(path: str) -> datetime | None:
    if path == "-":
        return None
    return datetime.fromtimestamp(os.stat(path).st_mtime, UTC)


def compression(path: str) -> str | None:
    """How ``path`` is compressed (gz, xz, bz2, zst: told by its first bytes), or None."""
    if path == "-":
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sniff(fd, zstd=True)
    finally:
        os.close(fd)


def sample_lines(
    path: str, block: int = BLOCK, most: int = 100_000, *, whole: bool = True
) -> list[str]:
    """A line at every ``block`` bytes of ``path`` and its last line, in order: enough to count
    the New Years a syslog file spans without reading it (:func:`syslog_start_year`). A
    compressed file cannot be read at an offset: it is decompressed once for this, streamed
    (unless ``whole`` is false and its first block has no syslog stamp: then that block's
    lines, the year does not matter)."""
    out: list[str] = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        kind = sniff(fd, zstd=True)
        if kind is not None:
            return _stream_samples(fd, path, kind, block, whole=whole)
        size = os.fstat(fd).st_size
        step = max(block, size // most + 1)
        for pos in range(0, size, step):
            data = os.pread(fd, 4096, pos)
            if pos:
                cut = data.find(b"\n")
                data = data[cut + 1 :] if cut >= 0 else b""
            out.append(data.split(b"\n", 1)[0].decode("utf-8", "replace"))
        if size:
            tail = os.pread(fd, 4096, max(0, size - 4096)).rstrip(b"\r\n").rsplit(b"\n", 1)
            out.append(tail[-1].decode("utf-8", "replace"))
    finally:
        os.close(fd)
    return out


def _stream_samples(fd: int, path: str, kind: str, block: int, *, whole: bool) -> list[str]:
    """:func:`sample_lines` of a compressed file: the first line of each ``block`` of its
    decompressed bytes and its last line."""
    out: list[str] = []
    tail = b""  # the last 4 KiB read
    with open_stream(fd, kind) as stream:
        first = True
        while data := decompressed(stream, block, path, kind):
            if first and not whole:
                lines = data.split(b"\n")[:-1] or [data]
                texts = [t.decode("utf-8", "replace") for t in lines]
                if syslog_start_year(texts, datetime.now(UTC)) is None:
                    return texts
            head = data
            if not first:  # the line the block starts in began in the one before
                cut = head.find(b"\n")
                head = head[cut + 1 :] if cut >= 0 else b""
            out.append(head.split(b"\n", 1)[0].decode("utf-8", "replace"))
            first = False
            tail = data[-4096:] if len(data) >= 4096 else (tail + data)[-4096:]
    if out:
        out.append(tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].decode("utf-8", "replace"))
    return out


def time_parser(
    config: Config, source: str, path: str, time_format: str | None, present: datetime
) -> TimeParser | RecordTime:
    """How the stamps of ``path`` are read: the source's ``time_format:`` (``--time-format``
    wins), ``time_regex:`` and ``timezone:`` (default: the host's zone); syslog stamps get the
    year of the file's mtime, rolled back by the New Years the file spans (standard input: the
    present year)."""
    src = config.sources.get(source)
    if isinstance(src, FileSourceConfig) and src.parse is not None and src.time_field:
        return RecordTime(src.parse, src.time_field, record_time_parser(src, time_format))
    fmt = time_format or (src.time_format if isinstance(src, FileSourceConfig) else None)
    regex = src.time_regex if isinstance(src, FileSourceConfig) else None
    zone = zone_named(src.timezone if isinstance(src, FileSourceConfig) else None)
    latest = file_mtime(path) or present
    year = latest.astimezone(zone).year
    if path != "-":
        samples = sample_lines(path, whole=regex is not None)
        if regex is not None:
            pattern = TimeParser(None, year, time_regex=regex)
            samples = [
                m.group(pattern.group)
                for t in samples
                if pattern.regex is not None and (m := pattern.regex.search(t)) is not None
            ]
        first = syslog_start_year(samples, latest, zone)
        if first is not None:
            year = first
    return TimeParser(fmt, year, zone=zone, time_regex=regex, rolling=True)


def replay(
    config: Config,
    files: list[tuple[str, str]],
    *,
    time_format: str | None = None,
    progress: Callable[[int], None] | None = None,
    jobs: int = 1,
    block: int = BLOCK,
    started_at: datetime | None = None,
    until: datetime | None = None,
    until_after: timedelta | None = None,
    present: datetime | None = None,
    on_notification: Callable[[dict[str, Any]], None] | None = None,
) -> ReplayResult:
    """Replay ``files`` — (path, source name) pairs — through a fresh in-memory pipeline.

    The simulated clock starts at the first line's time (``started_at``, if given, instead)
    and every deadline runs at its own time, before the first line later than it. ``until``
    (default: the last line's time; ``until_after``: that long after it) is how far deadlines
    play out after the last line; then
    the digests rules hold back are reported. ``present`` (default: now) is the time of a
    replay without any timestamp, and the mtime of standard input.

    With ``jobs`` > 1, ``jobs`` worker processes match the blocks of each regular file bigger
    than one block, and this process evaluates their hits in line order: same result, less
    time. Standard input (``-``) and compressed files are always read here. ``block`` is the
    read size in bytes."""
    result = ReplayResult(on_notification=on_notification)
    start = time.perf_counter()
    present = present or datetime.now(UTC)
    pipeline = Pipeline(config, started_at or present, lambda _rule: {})
    pipeline.alerts.record = result.record  # every notification, webhooks or not
    pipeline.signal_time = True  # stamped at the line or deadline that caused it
    pipeline.keep_rows = False  # nothing is stored: no alert or outbox rows built
    current: list[datetime | None] = [started_at]
    pool: MatchPool | None = None
    try:
        for path, source in files:
            parser = time_parser(config, source, path, time_format, present)
            all_texts = pipeline.needs_texts(source)  # an all-lines rule, or parse:
            max_line = max_line_bytes(config, source)
            blocks: Generator[ReplayBlock, None, None]
            multiline = multiline_of(config, source)
            if multiline is not None:  # events may span two workers' reads: read here
                blocks = event_blocks(path, multiline, max_line=max_line, block=block)
            elif (
                jobs > 1
                and path != "-"
                and os.path.getsize(path) > block
                and compression(path) is None  # a stream is read in order, here
            ):
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
                    result.lines += len(texts) if b.lines is None else b.lines
                    if b.lines is not None:
                        result.events += len(texts)
                        result.split_events += b.splits
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

                    if current[0] is None:  # the clock starts at the first line's time
                        for t in (*b.head, *b.tail):
                            first = parser.parse(t)
                            if first is not None:
                                current[0] = first
                                pipeline.start_at(first)
                                result.first_at = first
                                break
                    now = current[0] or present
                    # a line without a time of its own happened at the last time seen
                    seen = [When.exact(now)]

                    def when_of(
                        text: str,
                        own: datetime | None = None,
                        parse: Callable[[str], datetime | None] = parser.parse,
                        seen: list[When] = seen,
                    ) -> When:
                        # When.of(at, seen[0]), inlined: this runs once per line with a hit;
                        # own: a field's time (parse:), else the text's
                        at = own or parse(text)
                        if at is None:
                            return seen[0]
                        last = seen[0]
                        if at is last.at:  # the same stamp again (the parser's cache)
                            return last
                        if current[0] is None or at > current[0]:
                            current[0] = at
                            last = seen[0] = new_when(When, (at, at))
                            return last
                        return new_when(When, (at, at))

                    def when_for(line: Line, when_of: Callable[..., When] = when_of) -> When:
                        return when_of(line.text, line.event_at)

                    pipeline.note_abandoned(b.abandoned)
                    pipeline.process_texts(
                        source,
                        texts,
                        line_at,
                        when_for,
                        now,
                        interleave_ticks=True,
                        hits=b.hits,
                        when_of=when_of,
                    )
                    for t in reversed(b.tail):
                        last = parser.parse(t)
                        if last is not None:
                            if current[0] is None or last > current[0]:
                                current[0] = last
                            break
                    if current[0] is not None:
                        pipeline.advance(current[0])
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
    if result.first_at is None and started_at is not None and current[0] != started_at:
        result.first_at = started_at
    result.last_at = current[0] if result.first_at is not None else None
    end = until if until is not None else current[0]
    if until_after is not None and current[0] is not None:
        end = current[0] + until_after
    if end is not None and (current[0] is None or end > current[0]):
        pipeline.advance(end)
    result.until = end if result.first_at is not None or until is not None else None
    result.holding = True
    for ev in pipeline.evaluators.values():
        held = getattr(ev, "held", None)
        if held is not None:
            pipeline.apply_signals(held(), end or present)
    result.holding = False
    result.seconds = time.perf_counter() - start
    result.matches = Counter(pipeline.lines_matched)
    for name in config.sources:
        if pipeline.lines_unparsed(name):
            result.unparsed[name] = pipeline.lines_unparsed(name)
    return result


def parse_until(text: str | None, present: datetime) -> datetime | str | None:
    """``--until``: None (the last line's time), ``now`` (the present), ``+DURATION`` (after the
    last line: returned as text, resolved by the caller) or a time (ISO 8601; without an offset
    in the host's zone). Raises ValueError."""
    if text is None:
        return None
    if text == "now":
        return present
    if text.startswith("+"):
        parse_duration(text[1:])
        return text
    at = datetime.fromisoformat(text)
    return at if at.tzinfo is not None else at.replace(tzinfo=zone_named(None))


def span_text(result: ReplayResult) -> str:
    """The simulated span, in words."""
    if result.first_at is None or result.last_at is None:
        return "simulated time: no line had a timestamp, so every line was taken at the present"
    first, last = iso(result.first_at, zulu=True), iso(result.last_at, zulu=True)
    out = f"simulated time: {first} to {last} ({format_duration(result.last_at - result.first_at)})"
    if result.until is not None and result.until != result.last_at:
        out += f", deadlines played out until {iso(result.until, zulu=True)}"
    return out


def json_line(n: dict[str, Any]) -> str:
    """One notification for scripts and CI: its time, the alert's kind, rule, key, the
    notification (firing, repeat, resolved, info) and the summary."""
    out = {
        "time": n["created_at"],
        "kind": n["kind"],
        "rule": n["rule"],
        "key": n["key"],
        "notification": n["notification"],
        "severity": n["severity"],
        "summary": n["summary"],
    }
    if n.get("held"):
        out["held"] = True
    return json.dumps(out, ensure_ascii=False)


def main(args: argparse.Namespace) -> int:
    from detector.cli_support import CommandError, load_config_or_exit  # noqa: PLC0415

    config = load_config_or_exit(args)
    files = [(f, pick_source(config, f, args.source)) for f in args.files]
    total = sum(Path(f).stat().st_size for f, _ in files if f != "-")
    show = not args.no_progress and sys.stderr.isatty() and total > 32 * BLOCK
    as_json = getattr(args, "format", "text") == "json"
    present = datetime.now(UTC)
    try:
        until = parse_until(getattr(args, "until", None), present)
    except ValueError:
        raise CommandError(
            f"--until {args.until}: expected now, +DURATION (e.g. +6h: after the last line) or "
            "a time such as 2026-03-01T12:00:00Z"
        ) from None

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
    joined = sorted({s for _f, s in files if multiline_of(config, s) is not None})
    if jobs > 1 and joined:
        print(
            f"note: --jobs {jobs} does not apply to multiline sources ({', '.join(joined)}): "
            "an event may span two workers' reads, so their files are read in one process",
            file=sys.stderr,
        )
    for f, _ in files:
        kind = compression(f)
        if kind == "zst" and not zstd_available():
            raise CommandError(
                f"{f}: zstd-compressed, and the optional zstandard package is not installed — "
                "pip install zstandard (or the detector[zstd] extra), or decompress it first "
                "(zstd -d)"
            )
        if kind is not None and jobs > 1:
            print(
                f"note: --jobs {jobs} does not apply to {f} ({_NAMES[kind]}-compressed): a "
                "compressed file is decompressed as a stream, in one process",
                file=sys.stderr,
            )
    run = functools.partial(
        replay,
        config,
        files,
        time_format=args.time_format,
        progress=progress if show else None,
        jobs=jobs,
        present=present,
        on_notification=(lambda n: print(json_line(n))) if as_json else None,
    )
    try:
        if isinstance(until, str):  # +DURATION: after the last line, found by the replay itself
            result = run(until_after=parse_duration(until[1:]))
        else:
            result = run(until=until)
    except Undecompressable as e:
        raise CommandError(str(e)) from e
    if show:
        print(file=sys.stderr)
    firing = result.firing
    if as_json:
        return 1 if firing else 0
    rate = result.lines / result.seconds if result.seconds else 0.0
    print(
        f"{result.lines} lines, {result.bytes / 1e6:.1f} MB in {result.seconds:.2f} s "
        f"({rate:,.0f} lines/s)"
    )
    print(span_text(result))
    for name, count in sorted(result.unparsed.items()):
        src = config.sources[name]
        mode = src.parse if isinstance(src, FileSourceConfig) else None
        print(
            f"source {name}: {count} line{'s' if count != 1 else ''} did not parse as {mode} "
            "(matched as plain text only)"
        )
    if result.events:
        split = f", {result.split_events} ended at max_lines" if result.split_events else ""
        print(f"{result.events} multiline events{split}")
    if not args.quiet:
        print(f"\n{'rule':<32} {'kind':<13} {'matches':>9}")
        for rule in config.rules:
            print(f"{rule.name:<32} {rule.kind:<13} {result.matches.get(rule.name, 0):>9}")
        shown = len(result.notifications)
        more = f" (the first {KEEP_PER_RULE} of each rule shown)" if shown < result.total else ""
        print(f"\n{result.total} notifications{more}:")
        for n in result.notifications:
            kind = "HELD" if n.get("held") else n["notification"].upper()
            print(f"  {n['created_at']}  {kind:<8} [{n['severity']}] {n['summary']}")
            if n["notification"] == "firing":
                for s in n["samples"][: args.samples]:
                    for row in s.split("\n")[:40]:  # an event: its lines, each marked
                        print(f"      | {row[:160]}")
        if any(n.get("held") for n in result.notifications):
            print("  (HELD: held back for an hourly digest when the input ended; sent at its end)")
    print(f"\n{firing} alerts would have fired")
    return 1 if firing else 0
