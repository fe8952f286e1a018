"""``detector silence add | list | expire``: silences in the state file of a rules.yaml.

A command beside ``outbox_cli.py``: it opens the state file the config names (``cli_support``) and
writes only the ``silences`` table (``store/silences.py``), next to the running agent, without
its lock. The agent sees a change within a second and mutes or unmutes at once: a silenced alert
is still recorded and shown by ``detector status``, but not notified; when the silence ends (or
is expired here) the agent sends what is still firing. Matchers and their labels are those of
``silences.py``; ``--rule R`` is the matcher ``rule=R`` (the only way to silence agent alerts:
``--rule detector-agent``).
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from detector.cli_support import EXIT_USAGE, CommandError, load_config_or_exit, open_state
from detector.config.values import parse_duration
from detector.silences import LabelMatcher, MatcherError, Silence
from detector.timefmt import format_duration, utc_text


def main(args: argparse.Namespace) -> int:
    # the state file's modules only here: `detector` builds this parser for every command
    from detector.store import silences as table  # noqa: PLC0415
    from detector.store.db import StoreError  # noqa: PLC0415

    now = datetime.now(UTC)
    silence = _build(args, now) if args.action == "add" else None
    if args.action == "expire" and not args.id:
        raise CommandError("detector silence expire ID: give the silence's id", EXIT_USAGE)
    config = load_config_or_exit(args)
    store = open_state(config)
    try:
        if silence is not None:
            table.add(store, silence.to_json(), silence.ends_at, now)
            print(
                f"silence {silence.id} added until {utc_text(silence.ends_at)}: "
                + ", ".join(str(m) for m in silence.matchers)
            )
            print("the running agent applies it within a second")
            return 0
        if args.action == "expire":
            try:
                row = table.expire(store, args.id, now)
            except StoreError as e:
                raise CommandError(str(e), EXIT_USAGE) from e
            if row is None:
                raise CommandError(f"no silence with id {args.id!r}", 1)
            print(f"silence {row['id']} expired; notifications resume for what still fires")
            return 0
        rows = table.load(store, now)
    finally:
        store.close()
    silences = [s for s in map(Silence.from_json, rows) if s is not None]
    if args.format == "json":
        print(json.dumps([_listed(s, now) for s in silences], indent=2))
    else:
        print(render(silences, now))
    return 0


def _build(args: argparse.Namespace, now: datetime) -> Silence:
    matchers: list[LabelMatcher] = [LabelMatcher("rule", "=", r) for r in args.rule]
    try:
        matchers += [LabelMatcher.parse(m) for m in args.match]
    except MatcherError as e:
        raise CommandError(f"--match {e}", EXIT_USAGE) from e
    if not matchers:
        raise CommandError("give --rule R or --match label=value (or both)", EXIT_USAGE)
    if not args.duration:
        raise CommandError("give --for DURATION, e.g. --for 2h", EXIT_USAGE)
    try:
        duration = parse_duration(args.duration)
    except ValueError as e:
        raise CommandError(f"--for: {e}", EXIT_USAGE) from e
    if not duration:
        raise CommandError("--for must be longer than 0s", EXIT_USAGE)
    author = args.author or os.environ.get("SUDO_USER") or os.environ.get("USER") or "unknown"
    return Silence(
        id=uuid.uuid4().hex[:12],
        matchers=tuple(matchers),
        starts_at=now,
        ends_at=now + duration,
        comment=args.comment,
        author=author,
        created_at=now,
    )


def state_of(s: Silence, now: datetime) -> str:
    if s.expired_at is not None and s.expired_at <= s.ends_at:
        return "expired"
    return "active" if s.active(now) else ("pending" if now < s.starts_at else "ended")


def _listed(s: Silence, now: datetime) -> dict[str, Any]:
    return {**s.to_json(), "state": state_of(s, now)}


def render(silences: list[Silence], now: datetime) -> str:
    if not silences:
        return "no silences (active or ended in the last 7 days)"
    lines = []
    for s in silences:
        st = state_of(s, now)
        when = (
            f"until {utc_text(s.until)} ({format_duration(s.until - now)} left)"
            if st == "active"
            else f"ended {utc_text(s.until)}"
        )
        lines.append(
            f"{s.id}  {st:<7}  {when}  by {s.author}: "
            + ", ".join(str(m) for m in s.matchers)
            + (f"  — {s.comment}" if s.comment else "")
        )
    return "\n".join(lines)
