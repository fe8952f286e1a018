"""``anomaly:`` rules: new kinds of lines (``anomaly: new``), rate bursts and drops (``rate``).

Sits with the other evaluators between matching and the alert book. Without ``match:`` a rule sees
every line of its sources (``observe_line``), with it only the matching lines (``observe``).

- :class:`NewKindEvaluator` mines templates online (``detector.templates``). During the learning
  period (a duration, or ``learn_lines`` lines) templates are learned silently; afterwards a line
  that starts a new template fires one alert (key = template id) showing the template and the
  first example. Further lines of that template raise the alert's count until the template has
  been quiet for ``resolve_after``, when the alert resolves. At most ``max_alerts_per_hour``
  such alerts per hour; the rest go into one digest (an ``info``) at the end of that hour.
  Every template is one state key (``t:<id>``), so a batch rewrites only the templates it touched.
- :class:`RateEvaluator` counts lines per bucket (aligned to multiples of ``bucket`` since the
  epoch) per key (the rule, or the ``by`` field / ``source``) and closes buckets at their exact end
  (``next_deadline``). The baseline is an EWMA of mean and variance (variance floored at the mean,
  as for Poisson counts), updated with values clipped to the band so that an incident does not
  become the new normal, plus one such baseline per hour of day (UTC) that takes over once it has
  data from an earlier day, and one per hour of the week once it has data from an earlier week.
  A bucket is anomalous when it is ``sensitivity`` deviations and at least ``min_delta`` lines
  away from the baseline; ``for_buckets`` in a row fire, one normal bucket resolves. A key fires
  only after ``learn`` worth of learned buckets; buckets the agent did not fully see (start-up,
  downtime) are neither judged nor learned.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from detector.matching import Hit
from detector.model import AnomalyNewSpec, AnomalyRateSpec, RuleConfig
from detector.rules.base import Signal, When
from detector.rules.common import hit_fields, human_duration, summarize
from detector.sources.base import Line
from detector.templates import Template, TemplateMiner

HOUR = timedelta(hours=1)
MAX_TEMPLATES = 5000  # per rule; beyond, the templates unseen for longest are forgotten
DIGEST_LIST = 20  # templates named in a digest's description
TEMPLATE_KEY = "t:"
KNOWN_KEY = "known:"
"""Marks written by ``detector templates --known``. The agent never writes these keys, so a mark
made while it runs cannot be overwritten by the agent's own update of the template row."""
META_KEY = "meta"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _at(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ====================================================================== anomaly: new


@dataclass(frozen=True)
class TemplateInfo:
    """One learned template, as ``detector templates`` lists it."""

    id: str
    template: str
    count: int
    first_at: datetime | None
    last_at: datetime | None
    example: str
    known: bool
    learned: bool
    """Created during the learning period (never alerted)."""
    alerted: bool


def list_templates(items: Mapping[str, Any]) -> list[TemplateInfo]:
    """The templates in a rule's stored state (``rule_state`` rows of one rule), most frequent
    first."""
    out = []
    for key, value in items.items():
        if not key.startswith(TEMPLATE_KEY) or not isinstance(value, Mapping):
            continue
        try:
            t = Template.from_json(key[len(TEMPLATE_KEY) :], value)
        except (KeyError, TypeError, ValueError):
            continue
        out.append(
            TemplateInfo(
                id=t.id,
                template=t.text,
                count=t.count,
                first_at=t.first_at,
                last_at=t.last_at,
                example=t.example,
                known=t.known,
                learned=bool(t.extra.get("learned", False)),
                alerted=bool(t.extra.get("alerted", False)),
            )
        )
    out.sort(key=lambda i: (-i.count, i.id))
    return out


def mark_known(items: Mapping[str, Any], template_id: str, known: bool = True) -> dict[str, Any]:
    """The state change that marks a template as known (the CLI commits it into ``rule_state``).

    A known template never alerts and does not raise an open alert's count. The running agent
    reads it at its next start or reload. Raises ``KeyError`` for an unknown template id.
    """
    key = TEMPLATE_KEY + template_id
    value = items.get(key)
    if not isinstance(value, Mapping):
        raise KeyError(template_id)
    return {key: {**value, "known": known}, KNOWN_KEY + template_id: known}


@dataclass
class _Storm:
    """The current hour of new-template alerts: how many went out, which wait for the digest."""

    started_at: datetime | None = None
    sent: int = 0
    digest: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"started_at": _iso(self.started_at), "sent": self.sent, "digest": self.digest}

    @staticmethod
    def from_json(value: Any) -> _Storm:
        if not isinstance(value, Mapping):
            return _Storm()
        digest = value.get("digest")
        return _Storm(
            _at(value.get("started_at")),
            int(value.get("sent", 0)),
            [str(d) for d in digest] if isinstance(digest, list) else None,
        )


class NewKindEvaluator:
    """``anomaly: new``: one alert per kind of line never seen before (after learning)."""

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        self.rule = rule
        self.spec: AnomalyNewSpec = rule.anomaly_new or AnomalyNewSpec()
        self.wants_all_lines = rule.match is None
        self.miner = TemplateMiner(similarity=self.spec.similarity, masks=self.spec.masks)
        self.started_at = now
        self.lines = 0
        self.learning = self.spec.learn_lines is not None or self.spec.learn is not None
        self.storm = _Storm()
        self._open: dict[str, datetime] = {}  # template id -> resolve at (quiet until)
        self._heap: list[tuple[datetime, str]] = []  # (resolve at, id); stale entries skipped
        self._dirty: set[str] = set()
        self._meta_dirty = True

    # ------------------------------------------------------------------ lines

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role != "match":
            return []
        return self._line(line, when)

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return self._line(line, when)

    def _still_learning(self, at: datetime) -> bool:
        if self.spec.learn_lines is not None:
            done = self.lines >= self.spec.learn_lines
        else:
            done = self.spec.learn is None or at >= self.started_at + self.spec.learn
        if done:
            self.learning = False
            self._meta_dirty = True
        return not done

    def _line(self, line: Line, when: When) -> list[Signal]:
        at = when.at
        learning = self.learning and self._still_learning(at)
        res = self.miner.add(line.text)
        t = res.template
        t.count += 1
        t.last_at = at
        self._dirty.add(t.id)
        if learning:
            self.lines += 1
            self._meta_dirty = True
        if res.created:
            t.first_at = at
            t.example = line.text[:2000]
            if learning:
                t.extra["learned"] = True
            if len(self.miner.templates) > MAX_TEMPLATES:
                self._forget_oldest()
            if not learning and not t.known:
                return self._new_kind(t, line, at)
            return []
        if t.id in self._open and not t.known:
            return self._more(t, line, at)
        return []

    def _signal_ctx(self, t: Template, line: Line) -> dict[str, Any]:
        return {
            "template": t.text,
            "template_id": t.id,
            "line": line.text,
            "count": t.count,
            "source": line.source,
        }

    def _new_kind(self, t: Template, line: Line, at: datetime) -> list[Signal]:
        out = self._roll_storm(at)
        if self.storm.started_at is None:
            self.storm.started_at = at
        self._meta_dirty = True
        if self.storm.sent >= self.spec.max_alerts_per_hour:
            self.storm.digest = [*(self.storm.digest or []), t.id]
            t.extra["alerted"] = "digest"
            return out
        self.storm.sent += 1
        t.extra["alerted"] = True
        self._keep_open(t, at)
        default = f"{self.rule.name}: new kind of line: {_short(t.text)}"
        summary, description = summarize(self.rule, default, self._signal_ctx(t, line))
        out.append(
            Signal(
                rule=self.rule.name,
                kind="anomaly",
                key=t.id,
                action="fire",
                at=at,
                labels={"template_id": t.id},
                summary=summary,
                description=description
                or f"Template: {t.text}\nFirst example: {t.example}\nFirst seen: {_iso(at)}",
                sample=t.example,
                count=1,
                evidence={"template": t.text, "template_id": t.id, "first_at": _iso(at)},
                source=line.source,
            )
        )
        return out

    def _more(self, t: Template, line: Line, at: datetime) -> list[Signal]:
        self._keep_open(t, at)
        return [
            Signal(
                rule=self.rule.name,
                kind="anomaly",
                key=t.id,
                action="fire",
                at=at,
                labels={"template_id": t.id},
                sample=line.text,
                count=1,
                evidence={"template": t.text},
                source=line.source,
            )
        ]

    def _keep_open(self, t: Template, at: datetime) -> None:
        until = at + self.rule.resolve_after
        self._open[t.id] = until
        t.extra["open_until"] = _iso(until)
        heapq.heappush(self._heap, (until, t.id))

    def _forget_oldest(self) -> None:
        """Bound the state: drop the tenth of the templates unseen for longest (never open ones)."""
        far = datetime.max.replace(tzinfo=UTC)
        victims = sorted(
            (t for t in self.miner.templates.values() if t.id not in self._open),
            key=lambda t: t.last_at or far,
        )[: MAX_TEMPLATES // 10]
        for t in victims:
            self.miner.remove(t.id)
            self._dirty.add(t.id)

    # ------------------------------------------------------------------ time

    def _roll_storm(self, now: datetime) -> list[Signal]:
        """End the storm hour if it is over, with the digest of what it held back."""
        s = self.storm
        if s.started_at is None or now < s.started_at + HOUR:
            return []
        end = s.started_at + HOUR
        held = [self.miner.templates[i] for i in s.digest or [] if i in self.miner.templates]
        self.storm = _Storm()
        self._meta_dirty = True
        if not held:
            return []
        lines = [f"- {t.id}: {_short(t.text)} (e.g. {_short(t.example, 200)})" for t in held]
        more = len(held) - DIGEST_LIST
        return [
            Signal(
                rule=self.rule.name,
                kind="anomaly",
                key=f"digest:{_iso(end)}",
                action="info",
                at=end,
                summary=f"{self.rule.name}: {len(held)} more new kinds of lines in the last hour",
                description="\n".join(lines[:DIGEST_LIST])
                + (f"\n… and {more} more (see `detector templates`)" if more > 0 else ""),
                sample=held[0].example,
                count=len(held),
                evidence={"template_ids": [t.id for t in held]},
            )
        ]

    def next_deadline(self) -> datetime | None:
        while self._heap and self._open.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        candidates = [self._heap[0][0]] if self._heap else []
        if self.storm.started_at is not None and self.storm.digest:
            candidates.append(self.storm.started_at + HOUR)
        return min(candidates, default=None)

    def due(self, now: datetime) -> list[Signal]:
        out = self._roll_storm(now)
        while self._heap and self._heap[0][0] <= now:
            at, tid = heapq.heappop(self._heap)
            if self._open.get(tid) != at:
                continue  # kept open by a later line: a later entry stands for it
            del self._open[tid]
            t = self.miner.templates.get(tid)
            if t is None:
                continue
            t.extra.pop("open_until", None)
            self._dirty.add(tid)
            out.append(
                Signal(
                    rule=self.rule.name,
                    kind="anomaly",
                    key=tid,
                    action="resolve",
                    at=at,
                    labels={"template_id": tid},
                    summary=f"{self.rule.name}: new kind of line quiet for "
                    f"{human_duration(self.rule.resolve_after)}: {_short(t.text)}",
                )
            )
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        return None

    # ------------------------------------------------------------------ state

    def state_changes(self) -> dict[str, Any | None]:
        out: dict[str, Any | None] = {}
        for tid in self._dirty:
            t = self.miner.templates.get(tid)
            out[TEMPLATE_KEY + tid] = t.to_json() if t is not None else None
        self._dirty.clear()
        if self._meta_dirty:
            out[META_KEY] = {
                "started_at": _iso(self.started_at),
                "lines": self.lines,
                "learning": self.learning,
                "next_id": self.miner.next_id,
                "storm": self.storm.to_json(),
            }
            self._meta_dirty = False
        return out

    def load_state(self, items: Mapping[str, Any]) -> None:
        meta = items.get(META_KEY)
        next_id = None
        if isinstance(meta, Mapping):
            self.started_at = _at(meta.get("started_at")) or self.started_at
            self.lines = int(meta.get("lines", 0))
            self.learning = bool(meta.get("learning", self.learning))
            next_id = int(meta.get("next_id", 1))
            self.storm = _Storm.from_json(meta.get("storm"))
        templates: list[Template] = []
        for key, value in items.items():
            if not key.startswith(TEMPLATE_KEY) or not isinstance(value, Mapping):
                continue
            try:
                templates.append(Template.from_json(key[len(TEMPLATE_KEY) :], value))
            except (KeyError, TypeError, ValueError):
                continue  # unreadable (older format): that kind of line will be learned afresh
        for t in templates:
            mark = items.get(KNOWN_KEY + t.id)
            if isinstance(mark, bool):
                t.known = mark
        self.miner.load(templates, next_id)
        for t in templates:
            until = _at(t.extra.get("open_until"))
            if until is not None and not t.known:
                self._open[t.id] = until
                heapq.heappush(self._heap, (until, t.id))
        self._meta_dirty = False


# ====================================================================== anomaly: rate


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

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "overall": self.overall.to_json(),
            "hours": {str(h): [e.to_json(), day] for h, (e, day) in self.hours.items()},
            "week": {str(h): [e.to_json(), day] for h, (e, day) in self.week.items()},
            "streak": self.streak,
            "direction": self.direction,
            "firing": self.firing,
        }

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> _RateKey:
        return _RateKey(
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


MAX_CATCH_UP_BUCKETS = 10_000  # a longer gap (suspend) is skipped as unseen
MAX_RATE_KEYS = 1000  # distinct ``by`` values per rule; the rest are counted together
OTHER_KEY = "(other)"


class RateEvaluator:
    """``anomaly: rate``: bursts and drops of the line rate against a learned baseline."""

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        self.rule = rule
        self.spec: AnomalyRateSpec = rule.anomaly_rate or AnomalyRateSpec()
        self.wants_all_lines = rule.match is None
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
        self._dirty: set[str] = set()
        self._open_dirty = True
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
            self._dirty.add(key)
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
            if len(self.keys) >= MAX_RATE_KEYS:
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
                self._dirty.add(key)
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
            k.firing = False
            return Signal(
                rule=self.rule.name,
                kind="anomaly",
                key=key,
                action="resolve",
                at=end,
                labels=k.labels,
                summary=f"{self.rule.name}: line rate back to normal: {count} lines per "
                f"{human_duration(self.spec.bucket)} (usual {mean:.0f} ± {sd:.0f})",
                evidence=self._evidence(count, mean, sd, start=start, which=which, direction=""),
            )
        direction = "up" if up else "down"
        k.streak = k.streak + 1 if k.direction == direction else 1
        k.direction = direction
        if k.firing or k.streak < self.spec.for_buckets:
            return None
        k.firing = True
        what = "burst" if up else "drop"
        ctx = {
            "count": count,
            "expected": round(mean),
            "direction": direction,
            **k.labels,
        }
        by = f" ({self.spec.by}={k.labels.get(self.spec.by or '', '')})" if self.spec.by else ""
        default = (
            f"{self.rule.name}: line rate {what}{by}: {count} lines per "
            f"{human_duration(self.spec.bucket)}, usually {mean:.0f} ± {sd:.0f}"
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

    def _evidence(
        self, count: int, mean: float, sd: float, *, start: datetime, which: str, direction: str
    ) -> dict[str, Any]:
        return {
            "count": count,
            "expected": round(mean, 2),
            "sd": round(sd, 2),
            "bucket_start": _iso(start),
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
        out: dict[str, Any | None] = {
            "k:" + key: self.keys[key].to_json() for key in self._dirty if key in self.keys
        }
        self._dirty.clear()
        if self._open_dirty:
            out[META_KEY] = {
                "started_at": _iso(self.started_at),
                "bucket_start": _iso(self.bucket_start),
                "partial": self.partial,
                "counts": dict(self.counts),
            }
            self._open_dirty = False
        return out

    def load_state(self, items: Mapping[str, Any]) -> None:
        for key, value in items.items():
            if not key.startswith("k:") or not isinstance(value, Mapping):
                continue
            try:
                self.keys[key[2:]] = _RateKey.from_json(value)
            except (KeyError, TypeError, ValueError):
                continue  # older format: that key learns afresh
        meta = items.get(META_KEY)
        if isinstance(meta, Mapping):
            self.started_at = _at(meta.get("started_at")) or self.started_at
            start = _at(meta.get("bucket_start"))
            if start is not None:
                self.bucket_start = start
                self.partial = bool(meta.get("partial", False))
                counts = meta.get("counts")
                if isinstance(counts, Mapping):
                    self.counts = {str(k): int(v) for k, v in counts.items()}
        self._open_dirty = False
