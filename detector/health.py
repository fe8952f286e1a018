"""The agent's self-knowledge: counters, gauges and current problems, rendered for humans and tools.

Sits beside the flow: every stage reports into one :class:`Health` owned by ``service.py``
(lines read per source, matches per rule, alerts, deliveries, outbox depth, loop lag, and problems
such as an unreadable source or a failing webhook). It does no I/O: ``http.py`` serves
:meth:`Health.render_prometheus` on /metrics, :meth:`Health.status_json` on /status and
:meth:`Health.reasons` on /healthz; the heartbeat asks :meth:`Health.healthy` and the systemd
watchdog :meth:`Health.live`. Metric names are a closed ``Literal``: a typo fails type-checking.

The Prometheus text format (0.0.4) is written here rather than with prometheus-client: the agent
needs a dozen counters and gauges with fixed labels, the format is small and tested against a
parser, and one less dependency is one less thing to audit on every host.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from detector import __version__
from detector.clock import Clock
from detector.problems import Component, Problem, Problems
from detector.sources.base import SourceProblem
from detector.timefmt import iso

log = logging.getLogger(__name__)

MetricName = Literal[
    "lines_read",
    "lines_matched",
    "truncated_lines",
    "unparsed_lines",
    "alerts",
    "notifications_queued",
    "notifications_delivered",
    "delivery_attempts",
    "delivery_failures",
    "dead_letters",
    "outbox_depth",
    "last_event_at",
    "loop_lag_seconds",
    "config_reloads",
    "heartbeats",
]
MetricKind = Literal["counter", "gauge"]


@dataclass(frozen=True)
class MetricSpec:
    family: str  # Prometheus name as exposed (counters end in _total)
    kind: MetricKind
    help: str
    labels: tuple[str, ...]


METRICS: Mapping[MetricName, MetricSpec] = MappingProxyType(
    {
        "lines_read": MetricSpec(
            "detector_lines_read_total", "counter", "Lines read from a source.", ("source",)
        ),
        "lines_matched": MetricSpec(
            "detector_lines_matched_total", "counter", "Lines matched by a rule.", ("rule",)
        ),
        "truncated_lines": MetricSpec(
            "detector_truncated_lines_total",
            "counter",
            "Lines cut at max_line_bytes.",
            ("source",),
        ),
        "unparsed_lines": MetricSpec(
            "detector_unparsed_lines_total",
            "counter",
            "Lines of a parse: source that did not parse (still matched as plain text).",
            ("source",),
        ),
        "alerts": MetricSpec(
            "detector_alerts_total",
            "counter",
            "Alert state changes raised (firing, resolved, repeat).",
            ("kind", "state"),
        ),
        "notifications_queued": MetricSpec(
            "detector_notifications_queued_total",
            "counter",
            "Notifications queued for a webhook (outbox rows written).",
            ("webhook",),
        ),
        "notifications_delivered": MetricSpec(
            "detector_notifications_delivered_total",
            "counter",
            "Notifications a webhook accepted (alone or in a digest).",
            ("webhook",),
        ),
        "delivery_attempts": MetricSpec(
            "detector_delivery_attempts_total",
            "counter",
            "Delivery attempts (HTTP requests) to a webhook.",
            ("webhook",),
        ),
        "delivery_failures": MetricSpec(
            "detector_delivery_failures_total",
            "counter",
            "Failed delivery attempts (HTTP requests) to a webhook.",
            ("webhook",),
        ),
        "dead_letters": MetricSpec(
            "detector_dead_letters_total",
            "counter",
            "Notifications given up on (dead-lettered) for a webhook.",
            ("webhook",),
        ),
        "outbox_depth": MetricSpec(
            "detector_outbox_depth",
            "gauge",
            "Notifications waiting in the outbox for a webhook.",
            ("webhook",),
        ),
        "last_event_at": MetricSpec(
            "detector_last_event_timestamp_seconds",
            "gauge",
            "Unix time of the last line read from a source.",
            ("source",),
        ),
        "loop_lag_seconds": MetricSpec(
            "detector_loop_lag_seconds",
            "gauge",
            "Event-loop lag at the last measurement.",
            (),
        ),
        "config_reloads": MetricSpec(
            "detector_config_reloads_total",
            "counter",
            "Configuration reloads by result (ok, refused).",
            ("result",),
        ),
        "heartbeats": MetricSpec(
            "detector_heartbeats_total",
            "counter",
            "Dead man's switch pings by result (sent, failed, skipped_unhealthy).",
            ("result",),
        ),
    }
)

# Derived at render time (from the outbox's oldest entry and the clock), not stored as values.
_OUTBOX_AGE = MetricSpec(
    "detector_outbox_oldest_age_seconds",
    "gauge",
    "Age of the oldest undelivered notification for a webhook (0 when empty).",
    ("webhook",),
)

# Entity sections of /status: metrics keyed by one of these labels are grouped under it.
_ENTITY_SECTIONS = {"source": "sources", "rule": "rules", "webhook": "webhooks"}


class Health:
    """Counters, gauges and problems of one running agent. Not thread-safe: use it from the loop."""

    def __init__(
        self, clock: Clock, version: str = __version__, problems: Problems | None = None
    ) -> None:
        self._clock = clock
        self.registry = problems if problems is not None else Problems()
        self._version = version
        self._started_at = clock.now()
        self._values: dict[MetricName, dict[tuple[str, ...], float]] = {m: {} for m in METRICS}
        self._outbox_oldest: dict[str, datetime | None] = {}
        self._sections: dict[str, Callable[[], Mapping[str, Any]]] = {}

    # ------------------------------------------------------------------ metrics

    def inc(self, metric: MetricName, by: float = 1, **labels: str) -> None:
        """Add ``by`` (≥ 0) to a counter, e.g. ``inc("lines_read", 120, source="syslog")``."""
        spec = METRICS[metric]
        if spec.kind != "counter":
            raise ValueError(f"{metric} is a {spec.kind}, use set_gauge")
        if by < 0:
            raise ValueError(f"counter {metric} cannot go down (by={by})")
        key = _label_key(metric, spec, labels)
        series = self._values[metric]
        series[key] = series.get(key, 0.0) + by

    def set_gauge(self, metric: MetricName, value: float, **labels: str) -> None:
        spec = METRICS[metric]
        if spec.kind != "gauge":
            raise ValueError(f"{metric} is a {spec.kind}, use inc")
        self._values[metric][_label_key(metric, spec, labels)] = value

    def set_time(self, metric: MetricName, at: datetime, **labels: str) -> None:
        """Set a timestamp gauge (``last_event_at``) from an aware datetime."""
        self.set_gauge(metric, at.timestamp(), **labels)

    def set_outbox(self, webhook: str, depth: int, oldest_at: datetime | None) -> None:
        """The outbox for ``webhook``: how many are waiting, and when the oldest was created."""
        self.set_gauge("outbox_depth", depth, webhook=webhook)
        self._outbox_oldest[webhook] = oldest_at

    def value(self, metric: MetricName, **labels: str) -> float:
        """The current value of one series (0 if never set)."""
        return self._values[metric].get(_label_key(metric, METRICS[metric], labels), 0.0)

    def forget(self, label: str, value: str) -> None:
        """Drop every series whose ``label`` is ``value`` (a source or rule removed by reload)."""
        for metric, spec in METRICS.items():
            if label in spec.labels:
                i = spec.labels.index(label)
                series = self._values[metric]
                for key in [k for k in series if k[i] == value]:
                    del series[key]
        if label == "webhook":
            self._outbox_oldest.pop(value, None)

    # ------------------------------------------------------------------ problems

    def set_problem(
        self, key: str, component: Component, message: str, *, fatal: bool = False
    ) -> bool:
        """Raise (or update) a problem with no grace in the registry. True if it is new."""
        new = self.registry.get(key) is None
        self.registry.raise_(key, component, message, self._clock.now(), fatal=fatal)
        return new

    def clear_problem(self, key: str) -> bool:
        """Clear a problem. True if there was one."""
        return self.registry.clear(key, self._clock.now())

    def apply_source_problem(self, problem: SourceProblem) -> bool:
        """Mirror a source's :class:`SourceProblem` (raise or clear). True if anything changed."""
        key = f"source/{problem.source}/{problem.key}"
        if not problem.active:
            return self.clear_problem(key)
        old = self.registry.get(key)
        message = f"{problem.source}: {problem.message}"
        self.set_problem(key, "source", message)
        return old is None or old.message != message

    def problems(self) -> list[Problem]:
        """The problems past their grace: what makes the agent unhealthy."""
        return self.registry.reported()

    def healthy(self) -> bool:
        """No reported problem: /healthz is 200 and the dead man's switch is pinged."""
        return not self.registry.reported()

    def live(self) -> bool:
        """No fatal problem: the systemd watchdog keeps being pinged."""
        return not any(p.fatal for p in self.registry.reported())

    def reasons(self) -> list[str]:
        return [p.reason for p in self.problems()]

    # ------------------------------------------------------------------ views

    def add_status_section(self, name: str, provider: Callable[[], Mapping[str, Any]]) -> None:
        """Add a section to /status (e.g. the sources' own ``status()`` snapshots)."""
        self._sections[name] = provider

    def render_prometheus(self) -> str:
        """All metrics in the Prometheus text exposition format 0.0.4."""
        now = self._clock.now()
        out: list[str] = []
        for metric, spec in METRICS.items():
            _render_family(out, spec, self._values[metric].items())
            if metric == "outbox_depth":
                ages = {
                    (webhook,): _age(now, oldest) for webhook, oldest in self._outbox_oldest.items()
                }
                _render_family(out, _OUTBOX_AGE, ages.items())
        by_component: dict[tuple[str, ...], float] = {}
        for p in self.problems():
            by_component[(p.component,)] = by_component.get((p.component,), 0.0) + 1
        extra = (
            (MetricSpec("detector_healthy", "gauge", "1 when no problem is active.", ()),
             {(): float(self.healthy())}),
            (MetricSpec("detector_problems", "gauge", "Active problems by component.",
                        ("component",)), by_component),
            (MetricSpec("detector_start_time_seconds", "gauge", "Unix time the agent started.",
                        ()), {(): self._started_at.timestamp()}),
            (MetricSpec("detector_build_info", "gauge", "Version of the running agent.",
                        ("version",)), {(self._version,): 1.0}),
        )  # fmt: skip
        for spec, values in extra:
            _render_family(out, spec, values.items())
        return "\n".join(out) + "\n"

    def status_json(self) -> dict[str, Any]:
        """A JSON-able snapshot for /status and ``detector status``."""
        now = self._clock.now()
        result: dict[str, Any] = {
            "status": "ok" if self.healthy() else "degraded",
            "healthy": self.healthy(),
            "live": self.live(),
            "version": self._version,
            "now": now.isoformat(),
            "started_at": self._started_at.isoformat(),
            "uptime_seconds": (now - self._started_at).total_seconds(),
            "reasons": self.reasons(),
            "problems": [
                {
                    "key": p.key,
                    "component": p.component,
                    "message": p.message,
                    "since_at": p.since_at.isoformat(),
                    "fatal": p.fatal,
                }
                for p in self.problems()
            ],
            "loop_lag_seconds": self.value("loop_lag_seconds"),
            "sources": {},
            "rules": {},
            "webhooks": {},
        }
        for metric, spec in METRICS.items():
            section = _ENTITY_SECTIONS.get(spec.labels[0]) if len(spec.labels) == 1 else None
            for key, value in sorted(self._values[metric].items()):
                if section is not None:
                    entry = result[section].setdefault(key[0], {})
                    entry[metric] = _iso(value) if metric == "last_event_at" else value
                elif spec.labels:  # e.g. alerts{kind,state} → {"alerts": {kind: {state: n}}}
                    node = result.setdefault(metric, {})
                    for label_value in key[:-1]:
                        node = node.setdefault(label_value, {})
                    node[key[-1]] = value
        for webhook, oldest in self._outbox_oldest.items():
            entry = result["webhooks"].setdefault(webhook, {})
            entry["outbox_oldest_age_seconds"] = _age(now, oldest)
        for name, provider in self._sections.items():
            try:
                result[name] = dict(provider())
            except Exception as exc:  # a broken section must not break /status
                log.exception("status section %s failed", name)
                result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return result


def _label_key(metric: str, spec: MetricSpec, labels: Mapping[str, str]) -> tuple[str, ...]:
    if set(labels) != set(spec.labels):
        raise ValueError(f"{metric} takes labels {spec.labels}, got {tuple(labels)}")
    return tuple(str(labels[name]) for name in spec.labels)


def _age(now: datetime, oldest_at: datetime | None) -> float:
    return 0.0 if oldest_at is None else max(0.0, (now - oldest_at).total_seconds())


def _iso(timestamp: float) -> str:
    return iso(datetime.fromtimestamp(timestamp, UTC))


def _render_family(
    out: list[str],
    spec: MetricSpec,
    series: Iterable[tuple[tuple[str, ...], float]],
) -> None:
    out.append(f"# HELP {spec.family} {_escape_help(spec.help)}")
    out.append(f"# TYPE {spec.family} {spec.kind}")
    for key, value in sorted(series):
        if spec.labels:
            pairs = ",".join(
                f'{name}="{_escape_label(v)}"' for name, v in zip(spec.labels, key, strict=True)
            )
            out.append(f"{spec.family}{{{pairs}}} {_format_value(value)}")
        else:
            out.append(f"{spec.family} {_format_value(value)}")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


async def loop_lag_monitor(
    health: Health,
    *,
    interval: timedelta | None = None,
    threshold: timedelta = timedelta(seconds=5),
    hold: timedelta = timedelta(minutes=1),
) -> None:
    """Measure event-loop lag forever: sleep ``interval``, record how late we woke up.

    A stall that begins just after a probe went to sleep shows as ``interval`` less than it
    lasted, so the default ``interval`` is a fifth of ``threshold`` (at most 1 s: one wake-up a
    second at rest for the default 5 s): every stall over 1.2 times the threshold is seen.

    A lag above ``threshold`` raises the ``loop-lag`` problem (component ``loop``), which stays
    for ``hold`` after the last high reading so that a scrape or a heartbeat can see it. Runs until
    cancelled. Lag is physical: it is measured on the event loop's own monotonic clock, not on the
    agent's injectable clock (a test's FakeClock jumping ahead is not a stalled loop).
    """
    limit = threshold.total_seconds()
    period = min(1.0, limit / 5) if interval is None else interval.total_seconds()
    last_high: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(period)
        now = loop.time()
        lag = max(0.0, now - started - period)
        health.set_gauge("loop_lag_seconds", lag)
        if lag > limit:
            last_high = now
            message = f"event loop stalled for {lag:.1f}s (limit {limit:g}s)"
            if health.set_problem("loop-lag", "loop", message):
                log.error("%s", message)
        elif last_high is not None and now - last_high >= hold.total_seconds():
            last_high = None
            health.clear_problem("loop-lag")
            log.info("event loop lag back under %gs", limit)
