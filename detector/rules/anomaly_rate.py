"""``anomaly: rate`` rules: bursts and drops of the line rate against a learned baseline.

Sits with the other evaluators between matching and the alert book. Without ``match:`` the rule
sees every line of its sources (``observe_line``), with it only the matching lines (``observe``).
:class:`RateEvaluator` counts lines per bucket (aligned to multiples of ``bucket`` since the epoch)
per key (the rule, or the ``by`` field / ``source``) and closes buckets at their exact end
(``next_deadline``). The baseline is an EWMA of mean and variance (variance floored at the mean, as
for Poisson counts), updated with values clipped to the band so that an incident does not become
the new normal, plus one such baseline per hour of day (UTC) that takes over once it has data from
an earlier day, and one per hour of the week once it has data from an earlier week. A bucket is
anomalous when it is ``sensitivity`` deviations and at least ``min_delta`` lines away from the
baseline; ``for_buckets`` in a row fire, one normal bucket resolves (saying how long the burst or
drop lasted and its most extreme bucket, kept in the key's row while it fires). A key fires only
after ``learn`` worth of learned buckets; buckets the agent did not fully see (start-up, downtime)
are neither judged nor learned. Every key is one state row (``k:<key>``), the open bucket one more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detector.matching import Hit
from detector.model import AnomalyRateSpec, RuleConfig
from detector.rules.base import Signal, When
from detector.rules.common import hit_fields, plural, resolved, summarize
from detector.rules.state import META_KEY, KeyCap, KeyedState
from detector.sources.base import Line
from detector.timefmt import at_or_none, format_duration, iso, parse_iso_or_none


@dataclass
class _Ewma:
    """Mean and variance of bucket counts, exponentially weighted (JSON: ``[mean, var, n]``)."""

    mean: float = 0.0
    var: float = 0.0
    n: int = 0

    def sd(self) -> float:
        return math.sqrt(max(self.var, self.mean, 1.0))

    def update(self, x: float, alpha_min: float) -> None:
        self.n += 1
        alpha = max(1.0 / self.n, alpha_min)
        diff = x - self.mean
        incr = alpha * diff
        self.mean += incr
        self.var = (1 - alpha) * (self.var + diff * incr)

    def to_json(self) -> list[float]:
        return [self.mean, self.var, self.n]

    @staticmethod
    def from_json(value: Any) -> _Ewma:
        mean, var, n = value
        return _Ewma(float(mean), float(var), int(n))


@dataclass
class _RateKey:
    labels: dict[str, str]
    overall: _Ewma
    hours: dict[int, tuple[_Ewma, int]]  # hour of day -> (baseline, day ordinal of first data)
    week: dict[int, tuple[_Ewma, int]] = field(default_factory=dict)  # hour of week, likewise
    streak: int = 0
    direction: str = ""
    firing: bool = False
    since_at: datetime | None = None
    """While firing: the start of the first anomalous bucket; None: unknown (an earlier row)."""
    what: str = ""
    """While firing: ``burst`` or ``drop``, as it fired."""
    peak: int = 0
    """While firing: the most extreme bucket count since it fired (highest burst, lowest drop)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "labels": self.labels,
            "overall": self.overall.to_json(),
            "hours": {str(h): [e.to_json(), day] for h, (e, day) in self.hours.items()},
            "week": {str(h): [e.to_json(), day] for h, (e, day) in self.week.items()},
            "streak": self.streak,
            "direction": self.direction,
            "firing": self.firing,
        }
        if self.firing and self.since_at is not None:  # only while firing: rows as before else
            out["fired"] = {"since": iso(self.since_at), "what": self.what, "peak": self.peak}
        return out

    @staticmethod
    def decode(_key: str, value: Any) -> _RateKey | None:
        return _RateKey.from_json(value) if isinstance(value, Mapping) else None

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> _RateKey:
        k = _RateKey(
            labels={str(k): str(v) for k, v in value.get("labels", {}).items()},
            overall=_Ewma.from_json(value["overall"]),
            hours={
                int(h): (_Ewma.from_json(e), int(day)) for h, (e, day) in value["hours"].items()
            },
            week={
                int(h): (_Ewma.from_json(e), int(day))
                for h, (e, day) in value.get("week", {}).items()
            },
            streak=int(value.get("streak", 0)),
            direction=str(value.get("direction", "")),
            firing=bool(value.get("firing", False)),
        )
        fired = value.get("fired")
        if k.firing and isinstance(fired, Mapping):
            since_at = at_or_none(fired.get("since"))
            what, peak = fired.get("what"), fired.get("peak")
            if since_at is not None and what in ("burst", "drop") and isinstance(peak, int):
                k.since_at, k.what, k.peak = since_at, what, peak
        return k


MAX_CATCH_UP_BUCKETS = 10_000  # a longer gap (suspend) is skipped as unseen
MAX_RATE_KEYS = 1000  # distinct ``by`` values per rule; the rest are counted together
OTHER_KEY = "(other)"


class RateEvaluator:
    """``anomaly: rate``: bursts and drops of the line rate against a learned baseline."""

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        self.rule = rule
        self.spec: AnomalyRateSpec = rule.anomaly_rate or AnomalyRateSpec()
        self.wants_all_lines = rule.match is None and not rule.fields
        self._bucket_s = self.spec.bucket.total_seconds()
        if self._bucket_s <= 0:
            raise ValueError(f"rule {rule.name!r}: anomaly bucket must be positive")
        # EWMA spans: about an hour of buckets (at least 10) overall; a week of data per hour of
        # day; four weeks per hour of the week.
        self._alpha = 2.0 / (max(10.0, 3600.0 / self._bucket_s) + 1.0)
        self._alpha_hour = 1.0 / max(7.0 * 3600.0 / self._bucket_s, 7.0)
        self._alpha_week = 1.0 / max(4.0 * 3600.0 / self._bucket_s, 4.0)  # about four weeks
        self.started_at = now
        self.bucket_start = self._floor(now)
        self.partial = True  # the first bucket was not seen from its start
        self.counts: dict[str, int] = {}
        self.keys: dict[str, _RateKey] = {}
        self._rows = KeyedState(self.keys, lambda _, k: k.to_json(), "k:")
        self._touch = self._rows.touch
        self._open_dirty = True
        self.cap = KeyCap(rule, min(rule.max_keys, MAX_RATE_KEYS))
        """``by`` values kept apart: ``max_keys``, at most ``MAX_RATE_KEYS``; the rest are
        counted together under ``OTHER_KEY`` (the rule's digest), and how many there are is
        what the agent alert about it says."""
        if self.spec.by is None:
            self._key("", {})

    # ------------------------------------------------------------------ buckets

    def _floor(self, at: datetime) -> datetime:
        ts = at.timestamp()
        return datetime.fromtimestamp(ts - ts % self._bucket_s, UTC)

    @property
    def bucket_end(self) -> datetime:
        return self.bucket_start + self.spec.bucket

    def _key(self, key: str, labels: dict[str, str]) -> _RateKey:
        k = self.keys.get(key)
        if k is None:
            k = self.keys[key] = _RateKey(labels, _Ewma(), {})
            self._touch(key)
        return k

    def _count(self, hit: Hit | None, line: Line, when: When) -> list[Signal]:
        out = self.due(when.at) if when.at >= self.bucket_end else []
        key, labels = "", {}
        if self.spec.by is not None:
            fields = hit_fields(hit, line)
            value = fields.get(self.spec.by)
            if value is None and self.spec.by == "source":
                value = line.source
            key = value if value is not None else ""
            labels = {self.spec.by: key}
        if key not in self.keys:
            if len(self.keys) >= self.cap.limit:
                self.cap.note(key)  # counted for the agent alert; OTHER_KEY is the digest
                key, labels = OTHER_KEY, {self.spec.by or "key": OTHER_KEY}
            if key not in self.keys:
                self._key(key, labels)
        self.counts[key] = self.counts.get(key, 0) + 1
        self._open_dirty = True
        return out

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role != "match":
            return []
        return self._count(hit, line, when)

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return self._count(None, line, when)

    def next_deadline(self) -> datetime | None:
        return self.bucket_end

    def due(self, now: datetime) -> list[Signal]:
        out: list[Signal] = []
        closed = 0
        while self.bucket_end <= now:
            if closed >= MAX_CATCH_UP_BUCKETS:  # skip the rest of the gap as unseen
                self.bucket_start = self._floor(now)
                self.partial = True
                self.counts = {}
                break
            out.extend(self._close())
            closed += 1
        return out

    def _close(self) -> list[Signal]:
        out: list[Signal] = []
        start, end = self.bucket_start, self.bucket_end
        if not self.partial:
            learn_buckets = self.spec.learn.total_seconds() / self._bucket_s
            for key, k in self.keys.items():
                judge = k.overall.n >= learn_buckets  # each key learns before it can fire
                signal = self._judge(
                    k, key, self.counts.get(key, 0), start=start, end=end, judge=judge
                )
                if signal is not None:
                    out.append(signal)
                self._touch(key)
        self.bucket_start = end
        self.partial = False
        self.counts = {}
        self._open_dirty = True
        return out

    def _baseline(self, k: _RateKey, start: datetime) -> tuple[_Ewma, str]:
        today = start.toordinal()
        week = k.week.get(start.weekday() * 24 + start.hour)
        if week is not None and week[1] <= today - 7:
            return week[0], "hour-of-week"  # has data from an earlier week
        hour = k.hours.get(start.hour)
        if hour is not None and hour[1] < today:
            return hour[0], "hour-of-day"  # has data from an earlier day
        return k.overall, "recent"

    def _judge(
        self, k: _RateKey, key: str, count: int, *, start: datetime, end: datetime, judge: bool
    ) -> Signal | None:
        base, which = self._baseline(k, start)
        mean, sd = base.mean, base.sd()
        band = self.spec.sensitivity * sd
        delta = count - mean
        up = delta > band and delta >= self.spec.min_delta
        down = -delta > band and -delta >= self.spec.min_delta
        if self.spec.direction == "up":
            down = False
        elif self.spec.direction == "down":
            up = False
        anomalous = (up or down) and base.n > 0
        # learn, with the value clipped to the band so that an incident is not the new normal
        clipped = min(max(count, mean - band), mean + band) if base.n >= 10 else count
        k.overall.update(clipped, self._alpha)
        for slots, slot, alpha in (
            (k.hours, start.hour, self._alpha_hour),
            (k.week, start.weekday() * 24 + start.hour, self._alpha_week),
        ):
            if slot not in slots:
                slots[slot] = (_Ewma(), start.toordinal())
            slots[slot][0].update(clipped, alpha)
        if not judge:
            k.streak = 0
            return None
        if not anomalous:
            k.streak = 0
            if not k.firing:
                return None
            return self._resolve(k, key, count, mean, sd, start=start, end=end, which=which)
        direction = "up" if up else "down"
        what = "burst" if up else "drop"
        k.streak = k.streak + 1 if k.direction == direction else 1
        k.direction = direction
        if k.firing and k.what == what:
            k.peak = max(k.peak, count) if up else min(k.peak, count)
        if k.firing or k.streak < self.spec.for_buckets:
            return None
        k.firing = True
        k.since_at = start - (k.streak - 1) * self.spec.bucket
        k.what, k.peak = what, count
        ctx = {
            "count": count,
            "expected": round(mean),
            "direction": direction,
            **k.labels,
        }
        by = f" ({self.spec.by}={k.labels.get(self.spec.by or '', '')})" if self.spec.by else ""
        default = (
            f"{self.rule.name}: line rate {what}{by}: {count} lines per "
            f"{format_duration(self.spec.bucket)}, usually {mean:.0f} ± {sd:.0f}"
        )
        summary, description = summarize(self.rule, default, ctx)
        return Signal(
            rule=self.rule.name,
            kind="anomaly",
            key=key,
            action="fire",
            at=end,
            labels=k.labels,
            summary=summary,
            description=description
            or f"{k.streak} buckets in a row beyond {self.spec.sensitivity:g} deviations "
            f"({which} baseline).",
            count=1,
            evidence=self._evidence(count, mean, sd, start=start, which=which, direction=direction),
        )

    def _resolve(
        self,
        k: _RateKey,
        key: str,
        count: int,
        mean: float,
        sd: float,
        *,
        start: datetime,
        end: datetime,
        which: str,
    ) -> Signal:
        """A firing key's first normal bucket: "line rate back to normal after a 12m burst: 11
        lines per 1m (usual 10 ± 3, peak 240)" (without the burst's length and peak for a key
        restored from a row of an earlier version)."""
        per = f"{plural(count, 'line')} per {format_duration(self.spec.bucket)}"
        what = f"line rate back to normal: {per} (usual {mean:.0f} ± {sd:.0f})"
        if k.since_at is not None:
            lasted = format_duration(start - k.since_at)
            extreme = "peak" if k.what == "burst" else "low"
            what = (
                f"line rate back to normal after a {lasted} {k.what}: {per} "
                f"(usual {mean:.0f} ± {sd:.0f}, {extreme} {k.peak})"
            )
        k.firing, k.since_at, k.what, k.peak = False, None, "", 0
        return Signal(
            rule=self.rule.name,
            kind="anomaly",
            key=key,
            action="resolve",
            at=end,
            labels=k.labels,
            evidence=self._evidence(count, mean, sd, start=start, which=which, direction=""),
            **resolved(self.rule, k.labels, what),
        )

    def _evidence(
        self, count: int, mean: float, sd: float, *, start: datetime, which: str, direction: str
    ) -> dict[str, Any]:
        return {
            "count": count,
            "expected": round(mean, 2),
            "sd": round(sd, 2),
            "bucket_start": iso(start, keep_offset=True),
            "bucket_s": self._bucket_s,
            "baseline": which,
            **({"direction": direction} if direction else {}),
        }

    def note_downtime(self, since: datetime, until: datetime) -> None:
        """Buckets the agent did not see are skipped: neither judged nor learned."""
        if until < self.bucket_start:
            return
        self.bucket_start = self._floor(until)
        self.partial = True
        self.counts = {}
        for k in self.keys.values():
            k.streak = 0
        self._open_dirty = True

    # ------------------------------------------------------------------ state

    def state_changes(self) -> dict[str, Any | None]:
        out = self._rows.changes() | self.cap.changes()
        if self._open_dirty:
            out[META_KEY] = {
                "started_at": iso(self.started_at, keep_offset=True),
                "bucket_start": iso(self.bucket_start, keep_offset=True),
                "partial": self.partial,
                "counts": dict(self.counts),
            }
            self._open_dirty = False
        return out

    def load_state(self, items: Mapping[str, Any]) -> None:
        # a row of an older format is left out: that key learns afresh
        items = self.cap.load(items)
        self.keys.update(self._rows.load(items, _RateKey.decode))
        self.cap.restored(0)  # rate keys are never forgotten: no digest to resolve
        meta = items.get(META_KEY)
        if isinstance(meta, Mapping):
            self.started_at = parse_iso_or_none(meta.get("started_at")) or self.started_at
            start = parse_iso_or_none(meta.get("bucket_start"))
            if start is not None:
                self.bucket_start = start
                self.partial = bool(meta.get("partial", False))
                counts = meta.get("counts")
                if isinstance(counts, Mapping):
                    self.counts = {str(k): int(v) for k, v in counts.items()}
        self._open_dirty = False
