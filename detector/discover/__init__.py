"""``detector discover``: every scheduled job of a host, proposed as rules.yaml.

A command beside ``replay/`` (``detector test``): it reads the host's schedules under ``--root``
(``cron.py``: crontabs, cron.d, user crontabs, run-parts and anacron; ``timers.py``: systemd
timers and their services), optionally learns from the logs (``history.py``: ``--since 30d`` over
the journal or ``--logs FILE…``, and jobs inferred from log evidence alone), and prints the rules
(``render.py``) or writes them, marked generated, to a file an ``include:`` loads (``--write``),
never over a user's edits. Exit 0; 1 when ``--write`` found the file edited and wrote
``<file>.new`` instead; 2 for bad arguments or unreadable logs.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from detector.config.values import parse_duration
from detector.discover.cron import read_cron
from detector.discover.history import check, infer, journal_file, read_lines, scan
from detector.discover.jobs import Job, unique_names
from detector.discover.render import generated_text, render, write_generated
from detector.discover.timers import read_timers
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


def discover(
    root: Path,
    zone: str,
    *,
    logs: list[str] | None = None,
    since: timedelta | None = None,
    explicit_zone: bool = False,
    journalctl: str = "journalctl",
) -> tuple[list[Job], list[str]]:
    """The jobs under ``root`` (and in ``logs``), checked against the logs' history when
    ``logs`` or ``since`` is given; and notes on what could not be watched."""
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
    if logs or since is not None:
        with tempfile.TemporaryDirectory(prefix="detector-discover-") as folder:
            files = logs or [
                str(journal_file(root, since or timedelta(days=30), Path(folder), journalctl))
            ]
            lines = (line for path in files for line in read_lines(path, zone))
            seen, first, last = scan(lines, jobs)
        if last is None:
            notes.append("the logs hold no line with a timestamp: no history to check")
        else:
            start = last - since if since is not None else (first or last)
            jobs = [
                check(j, seen[j.name], start, last)
                if j.name in seen or j.cron or j.every
                else replace(j, history=("never seen in the logs' period",))
                for j in jobs
            ]
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
        )
    except OSError as e:
        raise CommandError(str(e)) from e
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
        f"{done.path}: {'written' if done.changed else 'unchanged'} — {len(jobs)} jobs; load it "
        "with include: in rules.yaml, then systemctl reload detector",
        file=sys.stderr,
    )
    return 0
