"""``detector test``: replay log files through the real pipeline with simulated time.

Nothing is sent and no state is written: an in-memory pipeline (the same ``Pipeline`` the agent
runs) sees the lines, and time is taken from the lines themselves (ISO 8601, syslog, nginx/apache
common log format, or ``--time-format``). Deadlines — silence, windows, threshold expiry — run
between hits in time order, so a replay reports what the live agent would have reported.

Reading is block-wise: 1 MiB of bytes at a time, decoded and split once; a ``Line`` object is built
only for lines some rule hit, and timestamps are parsed only for those lines and for the last line
of each block (to advance the clock). That is what keeps a replay at grep-like speed.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import IO, Any

from detector.model import Config, FileSourceConfig
from detector.pipeline import Pipeline
from detector.rules.base import When
from detector.sources.base import Line

BLOCK = 1 << 20
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?\s?(Z|[+-]\d\d:?\d\d)?"
)
_SYSLOG = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)")
_CLF = re.compile(r"\[(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-]\d{4})\]")


def _tz(text: str | None) -> tzinfo:
    if not text or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4])))


class TimeParser:
    """Finds a timestamp in a line; the first format that works is kept for the rest."""

    def __init__(self, time_format: str | None, year: int) -> None:
        self.year = year
        self.fixed = time_format
        self._order: list[Callable[[str], datetime | None]] = [self._iso, self._syslog, self._clf]
        self._cache: dict[str, datetime] = {}
        self._stamp_lens: list[int] = []
        """Lines of a log start with stamps of a few lengths: a stamp seen before (followed by a
        space) is answered from the cache without a regex or a datetime construction."""

    def parse(self, text: str) -> datetime | None:
        cache = self._cache
        for n in self._stamp_lens:
            if text[n : n + 1] == " ":
                hit = cache.get(text[:n])
                if hit is not None:
                    return hit
        at = self._parse(text)
        if at is not None and self._last_start == 0:
            if len(cache) > 4096:
                cache.clear()
            n = self._last_end
            if n not in self._stamp_lens and len(self._stamp_lens) < 4:
                self._stamp_lens.append(n)
            cache[text[:n]] = at
        return at

    def _parse(self, text: str) -> datetime | None:
        self._last_start = -1
        self._last_end = 0
        if self.fixed is not None:
            return self._strptime(text)
        for i, fn in enumerate(self._order):
            at = fn(text)
            if at is not None:
                if i:
                    self._order.insert(0, self._order.pop(i))
                return at
        return None

    def _strptime(self, text: str) -> datetime | None:
        assert self.fixed is not None
        for cut in range(min(len(text), 64), 5, -1):
            try:
                at = datetime.strptime(text[:cut], self.fixed)  # noqa: DTZ007 - tz set below
            except ValueError:
                continue
            return at if at.tzinfo else at.replace(tzinfo=UTC)
        return None

    def _iso(self, text: str) -> datetime | None:
        m = _ISO.match(text) or _ISO.search(text, 0, 64)
        if m is None:
            return None
        self._last_start, self._last_end = m.start(), m.end()
        y, mo, d, h, mi, s, frac, tz = m.groups()
        us = int((frac or "0")[:6].ljust(6, "0"))
        try:
            return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), us, tzinfo=_tz(tz))
        except ValueError:
            return None

    def _syslog(self, text: str) -> datetime | None:
        m = _SYSLOG.match(text)
        if m is None or m.group(1) not in _MONTHS:
            return None
        self._last_start, self._last_end = m.start(), m.end()
        mon, day, h, mi, s = m.groups()
        try:
            return datetime(self.year, _MONTHS[mon], int(day), int(h), int(mi), int(s), tzinfo=UTC)
        except ValueError:
            return None

    @staticmethod
    def _clf(text: str) -> datetime | None:
        m = _CLF.search(text)
        if m is None or m.group(2) not in _MONTHS:
            return None
        d, mon, y, h, mi, s, tz = m.groups()
        return datetime(int(y), _MONTHS[mon], int(d), int(h), int(mi), int(s), tzinfo=_tz(tz))


@dataclass
class ReplayResult:
    lines: int = 0
    bytes: int = 0
    seconds: float = 0.0
    matches: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)

    @property
    def firing(self) -> list[dict[str, Any]]:
        return [n for n in self.notifications if n["notification"] in ("firing", "info")]


def read_blocks(stream: IO[bytes]) -> Iterator[list[str]]:
    """Yield lists of decoded lines, a block at a time (CRLF and invalid UTF-8 handled)."""
    rest = b""
    while True:
        chunk = stream.read(BLOCK)
        if not chunk:
            break
        data = rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 1 :]
        text = data[:cut].decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        yield text.split("\n")
    if rest:
        yield [rest.decode("utf-8", "replace").rstrip("\r")]


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
) -> ReplayResult:
    """Replay ``files`` — (path, source name) pairs — through a fresh in-memory pipeline."""
    result = ReplayResult()
    start = time.perf_counter()
    clock_now = datetime.now(UTC)
    pipeline = Pipeline(config, clock_now, lambda _rule: {})
    pipeline.alerts.record = result.notifications  # every notification, webhooks or not
    current: list[datetime | None] = [None]

    for path, source in files:
        parser = TimeParser(time_format, clock_now.year)
        stream: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        try:
            for texts in read_blocks(stream):
                result.lines += len(texts)
                result.bytes += sum(map(len, texts)) + len(texts)

                def line_at(
                    i: int, texts: list[str] = texts, source: str = source, path: str = path
                ) -> Line:
                    return Line(source, texts[i], path=path)

                def when_for(line: Line, parser: TimeParser = parser) -> When:
                    at = parser.parse(line.text)
                    if at is None:
                        at = current[0] or clock_now
                    elif current[0] is None or at > current[0]:
                        current[0] = at
                    return When.exact(at)

                if current[0] is None:
                    for t in texts[:50]:
                        first = parser.parse(t)
                        if first is not None:
                            current[0] = first
                            pipeline.tick(first)
                            break
                now = current[0] or clock_now
                pipeline.process_texts(source, texts, line_at, when_for, now, interleave_ticks=True)
                for t in reversed(texts[-50:]):
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
            if stream is not sys.stdin.buffer:
                stream.close()
    result.seconds = time.perf_counter() - start
    result.matches = Counter(pipeline.lines_matched)
    return result


def main(args: argparse.Namespace) -> int:
    from detector.config import ConfigError, load_config  # noqa: PLC0415

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    files = [(f, pick_source(config, f, args.source)) for f in args.files]
    total = sum(Path(f).stat().st_size for f, _ in files if f != "-")
    show = not args.no_progress and sys.stderr.isatty() and total > 32 * BLOCK

    def progress(done: int) -> None:
        pct = min(100, int(done * 100 / max(total, 1)))
        bar = "#" * (pct // 4)
        print(f"\r[{bar:<25}] {pct:3d}%", end="", file=sys.stderr, flush=True)

    result = replay(
        config,
        files,
        time_format=args.time_format,
        progress=progress if show else None,
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
        print(f"\n{len(result.notifications)} notifications:")
        for n in result.notifications:
            when = n["last_seen_at"] if n["notification"] != "resolved" else n["resolved_at"]
            print(f"  {when}  {n['notification'].upper():<8} [{n['severity']}] {n['summary']}")
            if n["notification"] == "firing":
                for s in n["samples"][: args.samples]:
                    print(f"      | {s[:160]}")
    firing = len(result.firing)
    print(f"\n{firing} alerts would have fired")
    return 1 if firing else 0
