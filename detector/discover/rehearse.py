"""What the proposed rules would have done over the history: ``detector discover --since``'s dry
run through ``detector test``'s machinery.

After ``history.py`` checked each job against the logs and widened its window, and before
``render.py`` writes the result: the rules are rendered and loaded with the config loader, each
source's history (the journal entries its journalctl filter returns, or the ``--logs`` lines,
written one a line under their UTC time: :func:`history_line`) is replayed by
:func:`detector.replay.replay` — the agent's pipeline, windows, heartbeats and error rules, on a
simulated clock from the start of the period to its end — and each rule's alerts become a line of
its job's history: "would have alerted 1x: missed on 2026-11-14", "would not have alerted".
Rules that ``history.py`` disabled (a job that fails on most runs) are replayed enabled, so the
count says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from detector.config import ConfigError, parse_config
from detector.discover.history import LogLine
from detector.discover.jobs import Job
from detector.discover.render import render
from detector.replay import ReplayResult, replay


@dataclass(frozen=True)
class History:
    """The period checked, and per source name the file of the lines that source would have
    read in it."""

    start: datetime
    end: datetime
    files: Mapping[str, Path]


def history_line(line: LogLine) -> str:
    """One line of a history file: ``<ISO 8601 UTC, microseconds> <text>`` (a journal message's
    own newlines become spaces: one entry, one line)."""
    text = line.text.replace("\r", " ").replace("\n", " ")
    return f"{line.at.astimezone(UTC).isoformat(timespec='microseconds')} {text}\n"


def _day(text: object, tz: ZoneInfo) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return f"{at.astimezone(tz):%Y-%m-%d}"


def _days(days: list[str], most: int = 5) -> str:
    days = sorted(set(days))
    more = f" and {len(days) - most} more" if len(days) > most else ""
    return ", ".join(days[:most]) + more


def told(rule: str, kind: str, result: ReplayResult, tz: ZoneInfo) -> str:
    """What ``rule`` did in ``result``: "would have alerted 2x: missed on D1, D2"."""
    count = result.counts[(rule, "firing")]
    if not count:
        return "would not have alerted"
    fired = [n for n in result.notifications if n["rule"] == rule and n["notification"] == "firing"]
    days: list[str] = []
    for n in fired:
        evidence: dict[str, Any] = n.get("evidence") or {}
        day = _day(evidence.get("window_start_at"), tz) if kind == "window" else None
        day = day or _day(n.get("created_at"), tz)
        if day is not None:
            days.append(day)
    what = {"window": "missed on", "heartbeat": "silent on"}.get(kind, "failed on")
    out = f"would have alerted {count}x"
    if days:
        out += f": {what} {_days(days)}"
    if kind != "error" and count > result.counts[(rule, "resolved")]:
        out += " (still firing at the end)"
    return out


def rehearse(jobs: list[Job], history: History) -> tuple[list[Job], list[str]]:
    """``jobs`` with what their rules would have raised over ``history`` (``Job.replayed``);
    and notes on what could not be replayed."""
    body = yaml.safe_load(render([replace(j, enabled=True) for j in jobs]))
    rules: list[dict[str, Any]] = list(body.get("rules") or [])
    zone_of: dict[str, ZoneInfo] = {}
    job_of: dict[str, str] = {}
    for job in jobs:
        for name in (job.name, f"{job.name}-fails"):
            zone_of[name] = ZoneInfo(job.timezone)
            job_of[name] = job.name
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in rules:
        by_source.setdefault(str(r["source"]), []).append(r)
    said: dict[str, list[str]] = {}
    notes: list[str] = []
    for source, its_rules in by_source.items():
        path = history.files.get(source)
        if path is None:
            continue
        text = yaml.safe_dump(
            {
                "version": 1,
                "sources": {source: {"file": str(path), "timezone": "UTC"}},
                "rules": its_rules,
            },
            sort_keys=False,
            allow_unicode=True,
            width=1 << 16,
        )
        try:
            config = parse_config(text, str(path.with_suffix(".yaml")), env={})
        except ConfigError as e:
            notes.append(f"source {source}: its rules could not be replayed: {'; '.join(e.errors)}")
            continue
        result = replay(
            config,
            [(str(path), source)],
            started_at=history.start,
            until=history.end,
            present=history.end,
        )
        for rule in config.rules:
            line = f"{rule.name} {told(rule.name, rule.kind, result, zone_of[rule.name])}"
            said.setdefault(job_of[rule.name], []).append(line)
    return [replace(j, replayed=tuple(said.get(j.name, ()))) for j in jobs], notes
