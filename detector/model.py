"""The typed configuration: frozen dataclasses that ``detector.config`` builds from rules.yaml.

Everything downstream of config reads these, never raw YAML dicts. Durations are ``timedelta``;
patterns are Python ``re`` syntax strings (compiled by ``matching.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

Severity = Literal["info", "warning", "error", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error", "critical")

RuleKind = Literal[
    "error", "threshold", "heartbeat", "window", "pair", "anomaly_new", "anomaly_rate"
]
AlertKind = Literal["error", "threshold", "silence", "window", "pair", "anomaly", "agent"]


@dataclass(frozen=True)
class Location:
    """Where something was written in rules.yaml (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# ---------------------------------------------------------------- agent, defaults


@dataclass(frozen=True)
class AgentConfig:
    state: Path
    host: str
    listen: str | None = None  # "127.0.0.1:9465"; None = no HTTP listener
    listen_token: str | None = None  # bearer token for the listener
    heartbeat: str | None = (
        None  # dead man's switch URL, pinged every heartbeat_every while healthy
    )
    heartbeat_every: timedelta = timedelta(minutes=1)
    fallback: tuple[str, ...] = ()  # webhooks for agent alerts (and delivery failures)
    source_grace: timedelta = timedelta(minutes=5)  # a source broken this long -> agent alert
    log_format: Literal["auto", "text", "json", "journal"] = "auto"  # see detector/logs.py
    cache_dir: Path | None = None  # compiled-pattern cache (matching/dbcache.py); None = off


@dataclass(frozen=True)
class Defaults:
    severity: Severity = "warning"
    notify: tuple[str, ...] = ()  # webhook names; empty = every webhook
    repeat: timedelta | None = timedelta(hours=4)  # None = never repeat
    resolve_after: timedelta = timedelta(minutes=15)
    owner: str | None = None
    runbook: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class FileSourceConfig:
    name: str
    paths: tuple[str, ...]  # paths or globs
    start_at: Literal["end", "beginning"] = "end"
    max_line_bytes: int = 64 * 1024
    poll_interval: timedelta = timedelta(seconds=1)  # stat sweep (safety net under inotify)
    location: Location | None = None
    rotated: str | None = None  # glob of rotated copies beyond logrotate's own names (olddir)
    exclude: tuple[str, ...] = ()  # globs never read (full path, or file name if no '/')
    # how `detector test` reads the lines' own time (the live agent uses arrival time)
    timezone: str | None = None  # IANA zone of stamps without an offset; None: the host's zone
    time_format: str | None = None  # strptime format of the stamp
    time_regex: str | None = None  # where the stamp is: its `time` group, else its first group


@dataclass(frozen=True)
class JournaldSourceConfig:
    name: str
    units: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    priority: int | None = None  # 0 emerg .. 7 debug; entries at this priority or more urgent
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    namespace: str | None = None
    start_at: Literal["end", "beginning"] = "end"
    journalctl: str = "journalctl"
    location: Location | None = None


SourceConfig = FileSourceConfig | JournaldSourceConfig


# ---------------------------------------------------------------- webhooks

WebhookFormat = Literal["json", "slack", "discord", "teams", "ntfy", "pagerduty", "alertmanager"]
WEBHOOK_FORMATS: tuple[WebhookFormat, ...] = (
    "json",
    "slack",
    "discord",
    "teams",
    "ntfy",
    "pagerduty",
    "alertmanager",
)


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    url: str
    format: WebhookFormat = "json"
    secret: str | None = None  # HMAC-SHA256 signing key; never logged
    headers: Mapping[str, str] = field(default_factory=dict)
    routing_key: str | None = None  # pagerduty
    topic: str | None = None  # ntfy
    template: str | None = None  # optional custom body
    timeout: timedelta = timedelta(seconds=10)
    connect_timeout: timedelta = timedelta(seconds=5)
    max_age: timedelta = timedelta(hours=24)  # give up (dead letter) after this long
    rate: int | None = None  # max messages per minute; beyond: digest
    fallback: tuple[str, ...] = ()  # where "delivery to <this> failing" goes
    fail_after: int = 3  # consecutive failures before the failing-path agent alert
    location: Location | None = None


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class ThresholdSpec:
    count: int
    within: timedelta
    by: tuple[str, ...] = ()  # captured group / field names that split the count


@dataclass(frozen=True)
class HeartbeatSpec:
    every: timedelta
    grace: timedelta = timedelta(0)
    by: str | None = None
    keys: tuple[str, ...] = ()  # expected keys; one never seen fires too


@dataclass(frozen=True)
class WindowSpec:
    cron: str  # 5-field cron expression
    within: timedelta
    timezone: str = "UTC"
    min_count: int = 1
    too_early: Literal["ignore", "info"] = "ignore"


@dataclass(frozen=True)
class PairSpec:
    start: str
    end: str
    within: timedelta
    min_duration: timedelta | None = None
    on_orphan_end: Literal["ignore", "alert"] = "ignore"
    on_double_start: Literal["ignore", "alert"] = "alert"


@dataclass(frozen=True)
class AnomalyNewSpec:
    learn: timedelta | None = timedelta(days=1)
    learn_lines: int | None = None  # if set, learning ends after this many lines instead
    max_alerts_per_hour: int = 10
    masks: tuple[tuple[str, str], ...] = ()  # (regex, replacement) user masks
    similarity: float = 0.5


@dataclass(frozen=True)
class AnomalyRateSpec:
    bucket: timedelta = timedelta(minutes=1)
    sensitivity: float = 4.0  # deviations (robust z-score) to count as anomalous
    for_buckets: int = 2  # consecutive anomalous buckets before firing
    min_delta: int = 10  # and at least this absolute difference from the baseline
    learn: timedelta = timedelta(hours=1)
    by: str | None = None
    direction: Literal["both", "up", "down"] = "both"


@dataclass(frozen=True)
class RuleConfig:
    name: str
    kind: RuleKind
    sources: tuple[str, ...]
    match: str | None = None  # Python regex; None only for anomaly rules over every line
    ignore: str | None = None
    fail: str | None = None  # window rules: ends the window as failed
    severity: Severity = "warning"
    summary: str | None = None  # str.format-style template over fields
    description: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    group_by: tuple[str, ...] = ()  # captured fields that split one rule into separate alerts
    notify: tuple[str, ...] = ()  # resolved: never empty after load (all webhooks if unset)
    owner: str | None = None
    runbook: str | None = None
    repeat: timedelta | None = timedelta(hours=4)
    resolve_after: timedelta = timedelta(minutes=15)
    enabled: bool = True
    samples: tuple[str, ...] = ()  # example lines that must match (checked by `detector check`)
    threshold: ThresholdSpec | None = None
    heartbeat: HeartbeatSpec | None = None
    window: WindowSpec | None = None
    pair: PairSpec | None = None
    anomaly_new: AnomalyNewSpec | None = None
    anomaly_rate: AnomalyRateSpec | None = None
    location: Location | None = None


@dataclass(frozen=True)
class MaintenanceConfig:
    """One ``maintenance:`` entry: a recurring window (``cron`` in ``timezone``, lasting ``for``)
    or a one-off one (``start`` … ``end``). ``rules`` empty: every rule (never agent alerts)."""

    duration: timedelta  # ``for:``; for a one-off window, end - start
    cron: str | None = None
    timezone: str = "UTC"
    start: datetime | None = None  # one-off (aware)
    rules: tuple[str, ...] = ()
    comment: str = ""
    location: Location | None = None

    def describe(self) -> str:
        if self.cron is not None:
            return f"maintenance '{self.cron}' ({self.timezone}) for {self.duration}"
        return f"maintenance from {self.start}"


@dataclass(frozen=True)
class Config:
    path: str
    agent: AgentConfig
    defaults: Defaults
    sources: Mapping[str, SourceConfig]
    webhooks: Mapping[str, WebhookConfig]
    rules: tuple[RuleConfig, ...]
    warnings: tuple[str, ...] = ()  # non-fatal findings (no owner/runbook, …) for `detector check`
    maintenance: tuple[MaintenanceConfig, ...] = ()
