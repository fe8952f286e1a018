"""``detector discover``: every scheduled job of a host, proposed as rules.yaml.

A command beside ``replay/`` (``detector test``): it reads the host's schedules under ``--root``
(``cron.py``: crontabs, cron.d, user crontabs, run-parts and anacron; ``timers.py``: systemd
timers and their services), optionally learns from the logs (``history.py``: ``--since 30d`` over
the journal or ``--logs FILE…``, and jobs inferred from log evidence alone), and prints the rules
(``render.py``) or writes them, marked generated, to a file an ``include:`` loads (``--write``),
never over a user's edits; with a history, ``rehearse.py`` replays the proposed rules over it
(``detector test``'s replay) and says what each would have raised. Exit 0; 1 when ``--write``
found the file edited and wrote ``<file>.new`` instead; 2 for bad arguments or unreadable logs.
"""

from __future__ import annotations

import argparse
import heapq
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from detector.config.values import parse_duration
from detector.discover.cron import read_cron
from detector.discover.history import (
    LogLine,
    Seen,
    check,
    infer,
    journal_lines,
    read_lines,
    scan,
)
from detector.discover.jobs import Job, SourceSpec, slug, unique_names
from detector.discover.rehearse import History, history_line, rehearse
from detector.discover.render import generated_text, merge_sources, render, write_generated
from detector.discover.timers import read_timers
from detector.model import JournaldSourceConfig
from detector.sources.journald import filter_args
from detector.timefmt import utc_text
from detector.timestamps import host_zone
from detector.unitfiles import root_zone, zone_ok


def _zone(args: argparse.Namespace, root: Path) -> str:
    if args.timezone:
        return str(args.timezone)
    found = root_zone(root)
    if found:
        return found
    host = host_zone()
    return host.key if isinstance(host, ZoneInfo) else "UTC"


def _written(f: TextIO, lines: Iterable[LogLine]) -> Iterator[LogLine]:
    """``lines``, each also written to ``f`` as a history line (:func:`rehearse.history_line`) as it
    passes."""
    for line in lines:
        f.write(history_line(line))
        yield line


def _journal_filters(src: SourceSpec) -> list[str]:
    """The journalctl arguments the live source would read with (a file source: none, the
    whole journal stands for the file's lines)."""
    journald = src.body.get("journald")
    if not isinstance(journald, dict):
        return []
    return filter_args(
        JournaldSourceConfig(
            src.name,
            units=tuple(journald.get("units", ())),
            identifiers=tuple(journald.get("identifiers", ())),
        )
    )


def discover(
    root: Path,
    zone: str,
    *,
    logs: list[str] | None = None,
    since: timedelta | None = None,
    explicit_zone: bool = False,
    journalctl: str = "journalctl",
    namespace: str | None = None,
    now: datetime | None = None,
) -> tuple[list[Job], list[str]]:
    """The jobs under ``root`` (and in ``logs``), checked against the logs' history when
    ``logs`` or ``since`` is given — the journal's last ``since`` before ``now`` when no
    ``logs`` (``namespace``: that journal namespace's) — and replayed over it; and notes on what
    could not be watched."""
    cron_jobs, notes = read_cron(root, zone)
    timer_jobs, why = read_timers(root, zone)
    jobs = [*cron_jobs, *timer_jobs]
    notes += why
    if logs:
        found, why = infer(logs, zone, explicit_zone)
        notes += why
        known = [re.compile(p) for j in jobs for p in (j.ran, j.failed) if p]
        jobs += [
            j
            for j in found
            if not any(rx.search(j.ran_sample or j.failed_sample or "") for rx in known)
        ]
    jobs = unique_names(jobs)
    if not logs and since is None:
        return jobs, notes
    with tempfile.TemporaryDirectory(prefix="detector-discover-") as folder:
        where = Path(folder)
        files: dict[str, Path] = {}
        seen: dict[str, Seen] = defaultdict(Seen)
        if logs:
            path = where / "logs.history"
            merged = heapq.merge(*(read_lines(p, zone) for p in logs), key=lambda x: x.at)
            with path.open("w", encoding="utf-8", errors="replace", newline="\n") as f:
                seen, first, last = scan(_written(f, merged), jobs)
            files = {src.name: path for src in merge_sources(jobs)}
            if last is None:
                notes.append("the logs hold no line with a timestamp: no history to check")
                return jobs, notes
            end = last
            start = last - since if since is not None else (first or last)
        else:
            assert since is not None
            end = now or datetime.now(UTC)
            start = end - since
            entries = False
            for src in merge_sources(jobs):
                lines = journal_lines(
                    root,
                    start,
                    end,
                    _journal_filters(src),
                    namespace=namespace,
                    journalctl=journalctl,
                )
                path = files[src.name] = where / f"{slug(src.name)}.history"
                with path.open("w", encoding="utf-8", errors="replace", newline="\n") as f:
                    here, some, _last = scan(_written(f, lines), jobs, src.name)
                entries = entries or some is not None
                for name, s in here.items():
                    seen[name].ran += s.ran
                    seen[name].failed += s.failed
            if not entries:
                notes.append(
                    f"the journal holds no entry of these jobs' sources from {utc_text(start)} to "
                    f"{utc_text(end)}: no history to check"
                )
                return jobs, notes
        jobs = [
            check(j, seen[j.name], start, end)
            if j.name in seen or j.cron or j.every
            else replace(j, history=("never seen in the logs' period",))
            for j in jobs
        ]
        jobs, why = rehearse(jobs, History(start, end, files))
        notes += why
    return jobs, notes


def main(args: argparse.Namespace) -> int:
    from detector.cli_support import EXIT_FINDINGS, CommandError  # noqa: PLC0415

    root = Path(args.root or "/")
    if not root.is_dir():
        raise CommandError(f"--root {root}: not a directory")
    if args.timezone and not zone_ok(args.timezone):
        raise CommandError(
            f"--timezone {args.timezone}: not an IANA time zone (e.g. Europe/Berlin)"
        )
    since = None
    if args.since:
        try:
            since = parse_duration(args.since)
        except ValueError as e:
            raise CommandError(f"--since {args.since}: {e}") from None
    journal = root / "var/log/journal"
    from_journal = since is not None and not args.logs and not args.namespace
    if from_journal and root != Path("/") and not journal.is_dir():
        raise CommandError(
            f"--since {args.since}: no journal under --root {root} ({journal} is not a "
            "directory): give the logs to learn from with --logs FILE…"
        )
    for name in args.logs or ():
        try:
            Path(name).open("rb").close()
        except OSError as e:
            raise CommandError(f"{name}: cannot read: {e.strerror or e}") from e
    try:
        jobs, notes = discover(
            root,
            _zone(args, root),
            logs=list(args.logs or ()),
            since=since,
            explicit_zone=bool(args.timezone),
            namespace=args.namespace,
        )
    except OSError as e:
        raise CommandError(str(e)) from e
    for job in jobs:  # before it is included: what each rule would have raised
        for line in job.replayed:
            print(f"detector test over the history: {line}", file=sys.stderr)
    body = render(jobs, notes)
    if not args.write:
        sys.stdout.write(generated_text(body))
        return 0
    done = write_generated(Path(args.write), body)
    if done.refused:
        print(
            f"{args.write} was edited since it was generated (or was not generated): left as it "
            f"is; the new proposal is in {done.path} — compare and merge by hand",
            file=sys.stderr,
        )
        return EXIT_FINDINGS
    print(
        f"{done.path}: {'written' if done.changed else 'unchanged'} — {len(jobs)} jobs; rules.yaml "
        "loads it with include: [rules.d/*.yaml] (the bundled one has it); detector check, then "
        "systemctl reload detector",
        file=sys.stderr,
    )
    return 0
