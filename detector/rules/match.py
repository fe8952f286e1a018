"""The plain ``match:`` rule ("error"): every matching line raises (or updates) an alert.

Alerts are grouped by ``group_by`` fields (default: one alert per rule), deduplicated by the alert
book, and resolved once ``resolve_after`` has passed without a new match for that group.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from detector.matching import Hit
from detector.model import RuleConfig
from detector.rules.base import KeyedState, Signal, When
from detector.rules.common import group_key, hit_fields, human_duration, summarize
from detector.sources.base import Line


class MatchEvaluator:
    wants_all_lines = False

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        self.rule = rule
        self.state = KeyedState()  # key -> {"last": iso, "labels": {...}}
        self._heap: list[tuple[datetime, str]] = []

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role != "match":
            return []
        fields = hit_fields(hit, line)
        key, labels = group_key(self.rule.group_by, fields)
        ctx = {**fields, "line": line.text, "source": line.source}
        summary, description = summarize(self.rule, f"{self.rule.name}: {line.text[:200]}", ctx)
        self.state.put(key, {"last": when.at.isoformat(), "labels": labels})
        heapq.heappush(self._heap, (when.at + self.rule.resolve_after, key))
        return [
            Signal(
                rule=self.rule.name,
                kind="error",
                key=key,
                action="fire",
                at=when.at,
                labels={**hit.groups, **labels},
                summary=summary,
                description=description,
                sample=line.text,
                source=line.source,
            )
        ]

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return []

    def _last(self, key: str) -> datetime | None:
        value = self.state.get(key)
        return datetime.fromisoformat(value["last"]) if value else None

    def next_deadline(self) -> datetime | None:
        while self._heap:
            at, key = self._heap[0]
            last = self._last(key)
            if last is None or last + self.rule.resolve_after != at:
                heapq.heappop(self._heap)
                continue
            return at
        return None

    def due(self, now: datetime) -> list[Signal]:
        out: list[Signal] = []
        while (at := self.next_deadline()) is not None and at <= now:
            _, key = heapq.heappop(self._heap)
            quiet = self.rule.resolve_after
            self.state.drop(key)
            out.append(
                Signal(
                    rule=self.rule.name,
                    kind="error",
                    key=key,
                    action="resolve",
                    at=at,
                    summary=f"{self.rule.name}: no new match for {human_duration(quiet)}",
                )
            )
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        return None

    def state_changes(self) -> dict[str, Any | None]:
        return self.state.changes()

    def load_state(self, items: Mapping[str, Any]) -> None:
        self.state.load(items)
        for key in list(self.state.values):
            last = self._last(key)
            if last is not None:
                heapq.heappush(self._heap, (last + self.rule.resolve_after, key))
