"""The typed configuration: frozen dataclasses (``detector.frozen``) that ``detector.config``
builds from rules.yaml.

Everything downstream of config reads these, never raw YAML dicts. Durations are ``timedelta``;
patterns are Python ``re`` syntax strings (compiled by ``matching.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from detector.frozen import Frozen

Severity = Literal["info", "warning", "error", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error", "critical")

RuleKind = Literal[
    "error",
    "threshold",
    "heartbeat",
    "window",
    "pair",
    "anomaly_new",
    "anomaly_rate",
    "systemd_units",
]
AlertKind = Literal["error", "threshold", "silence", "window", "pair", "anomaly", "agent"]
LogFormat = Literal["auto", "text", "json", "journal"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "text", "json", "journal")
"""The agent's log (``logs.py``). ``auto``: the journal if stderr is the journal, else text;
``journal`` forces native entries."""


class Location(Frozen):
    """Where something was written in rules.yaml (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# ---------------------------------------------------------------- agent, defaults


class AgentConfig(Frozen):
    """The ``agent:`` section: the state file, the host name, the listener, the cache."""

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
    settle: timedelta = timedelta(seconds=2)  # an expectation deadline waits this long, at most,
    # for the sources of its rule to hand over what they hold (service.py, "settle")
    log_format: LogFormat = "auto"  # see detector/logs.py
    cache_dir: Path | None = None  # compiled-pattern cache (matching/dbcache.py); None = off


class FlapSpec(Frozen):
    """``flap: {changes: K, within: T}``: more than K state changes within T fold the alert's
    notifications into one until it has not changed for T (see ``alerts.py``)."""

    changes: int
    within: timedelta


class Defaults(Frozen):
    """The ``defaults:`` section: what a rule that does not say otherwise gets."""

    severity: Severity = "warning"
    notify: tuple[str, ...] = ()  # webhook names; empty = every webhook
    repeat: timedelta | None = timedelta(hours=4)  # None = never repeat
    resolve_after: timedelta = timedelta(minutes=15)
    owner: str | None = None
    runbook: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    pending_for: timedelta = timedelta(0)  # `for:` — how long a condition holds before firing
    keep_firing_for: timedelta = timedelta(0)  # how long an alert stays firing after it clears
    flap: FlapSpec | None = None  # None = no flap detection
    max_keys: int = 10_000  # keys (alerts) a rule keeps apart; the rest fold into one digest


# ---------------------------------------------------------------- sources


class MultilineConfig(Frozen):
    """A source's ``multiline:``: how its lines join into events (``sources/events.py``)."""

    mode: Literal[
        "start", "continue", "none"
    ]  # none: only docker's pieces join; start: a matching line begins an event; continue: a
    pattern: str  # matching line belongs to the event before it (Python regex, re.search)
    max_lines: int = 200  # an event this long is emitted; the next line begins a new one
    timeout: timedelta = timedelta(seconds=2)  # live: a pending event this quiet is emitted
    # a parse: source's records (set from the source, not a multiline: key): the patterns see
    # each record's message; joined records are one record whose message is their lines
    parse: Literal["json", "logfmt"] | None = None
    message: str | None = None  # the message's dotted path (FileSourceConfig.message)
    partial: bool = False  # docker: a message without its trailing newline goes on in the next


class FileSourceConfig(Frozen):
    """A ``file:`` source: its paths or globs and how they are read."""

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
    parse: Literal["json", "logfmt"] | None = None  # structured lines: fields (structured.py)
    message: str | None = None  # parse: the field that is the line's text (dotted path)
    time_field: str | None = None  # parse: the field that is the line's time (`time:`)
    partial: bool = False  # `parse: docker`: pieces of a line over 16 KiB are joined
    multiline: MultilineConfig | None = None  # lines joined into events; None: one line each


class JournaldSourceConfig(Frozen):
    """A ``journald:`` source: the units, identifiers and fields it reads."""

    name: str
    units: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    priority: int | None = None  # 0 emerg .. 7 debug; entries at this priority or more urgent
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    namespace: str | None = None
    start_at: Literal["end", "beginning"] = "end"
    journalctl: str = "journalctl"
    location: Location | None = None
    multiline: MultilineConfig | None = None  # entries' messages joined into events


SourceConfig = FileSourceConfig | JournaldSourceConfig


# ---------------------------------------------------------------- webhooks

WebhookFormat = Literal[
    "json", "slack", "discord", "teams", "ntfy", "pagerduty", "alertmanager", "email", "exec"
]
WEBHOOK_FORMATS: tuple[WebhookFormat, ...] = (
    "json",
    "slack",
    "discord",
    "teams",
    "ntfy",
    "pagerduty",
    "alertmanager",
    "email",
    "exec",
)


class SmtpConfig(Frozen):
    """Where ``format: email`` webhooks hand their mail (see detector/delivery/smtp.py)."""

    host: str
    port: int = 587
    starttls: bool = True  # STARTTLS after connecting (required when true)
    tls: bool = False  # implicit TLS from the first byte (port 465)
    username: str | None = None
    password: str | None = None  # never logged
    ca_file: str | None = None  # PEM file of the CA to trust instead of the system's


class WebhookConfig(Frozen):
    """One entry of ``webhooks:``: where alerts go and in which format."""

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
    smtp: SmtpConfig | None = None  # email
    mail_from: str | None = None  # email: the From: address
    mail_to: tuple[str, ...] = ()  # email: the recipients
    command: tuple[str, ...] = ()  # exec: argv of the command fed the alert as JSON on stdin
    location: Location | None = None


# ---------------------------------------------------------------- rules


class ThresholdSpec(Frozen):
    """``threshold:``: count matches within a window, per ``by:`` key."""

    count: int
    within: timedelta
    by: tuple[str, ...] = ()  # captured group / field names that split the count
    reset_on: str | None = None  # a line matching it (same by: values) clears the key's count
    distinct: str | None = None  # count distinct values of this captured field, not matches


class HeartbeatSpec(Frozen):
    """``heartbeat:``: a line expected every ``every``, per ``by:`` key."""

    every: timedelta
    grace: timedelta = timedelta(0)
    by: str | None = None
    keys: tuple[str, ...] = ()  # expected keys; one never seen fires too


class WindowSpec(Frozen):
    """``window:``: a line expected within ``within`` after each cron time."""

    cron: str  # 5-field cron expression
    within: timedelta
    timezone: str = "UTC"
    min_count: int = 1
    too_early: Literal["ignore", "info"] = "ignore"


class PairSpec(Frozen):
    """``pair:``: an ``end`` line expected within ``within`` of each ``start`` line."""

    start: str
    end: str
    within: timedelta
    min_duration: timedelta | None = None
    on_orphan_end: Literal["ignore", "alert"] = "ignore"
    on_double_start: Literal["ignore", "alert"] = "alert"


class AnomalyNewSpec(Frozen):
    """``anomaly: new``: log templates learned, then a new one alerts."""

    learn: timedelta | None = timedelta(days=1)
    learn_lines: int | None = None  # if set, learning ends after this many lines instead
    max_alerts_per_hour: int = 10
    masks: tuple[tuple[str, str], ...] = ()  # (regex, replacement) user masks
    similarity: float = 0.5


class AnomalyRateSpec(Frozen):
    """``anomaly: rate``: a per-bucket line rate against its robust baseline."""

    bucket: timedelta = timedelta(minutes=1)
    sensitivity: float = 4.0  # deviations (robust z-score) to count as anomalous
    for_buckets: int = 2  # consecutive anomalous buckets before firing
    min_delta: int = 10  # and at least this absolute difference from the baseline
    learn: timedelta = timedelta(hours=1)
    by: str | None = None
    direction: Literal["both", "up", "down"] = "both"


class SystemdTimer(Frozen):
    """When a timer's service is due, read from its unit file (``detector.unitfiles``): a window
    (``cron`` in ``timezone``, ``within`` long) or, with ``every``, at least every ``every`` +
    ``grace``."""

    timer: str  # "backup.timer"
    service: str  # the unit it starts: Unit=, else the timer's name as .service
    schedule: str  # as written: "OnCalendar=*-*-* 02:00:00"
    cron: str | None = None
    timezone: str = "UTC"
    within: timedelta = timedelta(minutes=1)
    every: timedelta | None = None
    grace: timedelta = timedelta(minutes=1)


class SystemdUnitsSpec(Frozen):
    """``systemd_units: {failed, timers, units, exclude, up_for, grace, root, timezone}``: the
    built-in rules over systemd's own journal entries (``rules/systemd_units.py``)."""

    failed: bool = True  # a unit that fails: one alert per unit, resolved by its next success
    timers: bool = False  # a timer whose service did not start when due
    units: tuple[str, ...] = ("*",)  # globs of units watched
    exclude: tuple[str, ...] = ()  # globs of units never watched
    up_for: timedelta = timedelta(minutes=1)  # a long-running service up this long succeeded
    grace: timedelta = timedelta(minutes=1)  # added to a timer's AccuracySec+RandomizedDelaySec
    root: str = "/"  # where the timers' unit files are read (etc/systemd/system, lib/…, usr/lib/…)
    timezone: str = "UTC"  # zone of OnCalendar= without one (default at load: the host's)
    schedules: tuple[SystemdTimer, ...] = ()  # the timers found under root at load

    def watches(self, unit: str) -> bool:
        return any(fnmatchcase(unit, g) for g in self.units) and not any(
            fnmatchcase(unit, g) for g in self.exclude
        )


class RuleConfig(Frozen):
    """One rule of ``rules:``, with its kind's spec and the defaults applied."""

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
    notify_own: bool = False  # notify: written on the rule itself (it then wins over routes:)
    owner: str | None = None
    runbook: str | None = None
    repeat: timedelta | None = timedelta(hours=4)
    resolve_after: timedelta = timedelta(minutes=15)
    enabled: bool = True
    samples: tuple[str, ...] = ()  # example lines that must match (checked by `detector check`)
    fields: Mapping[str, str] = field(default_factory=dict)  # path -> regex; all must match
    threshold: ThresholdSpec | None = None
    heartbeat: HeartbeatSpec | None = None
    window: WindowSpec | None = None
    pair: PairSpec | None = None
    anomaly_new: AnomalyNewSpec | None = None
    anomaly_rate: AnomalyRateSpec | None = None
    systemd_units: SystemdUnitsSpec | None = None
    pending_for: timedelta = timedelta(0)  # `for:`; 0 = fire at once
    keep_firing_for: timedelta = timedelta(0)
    flap: FlapSpec | None = None
    max_keys: int = 10_000  # group_by keys kept apart; past it, one digest alert for the rest
    location: Location | None = None


class MaintenanceConfig(Frozen):
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


class IncludeConfig(Frozen):
    """One item of the top-level ``include:`` list and the files it matched."""

    pattern: str  # as written (``${VAR}`` expanded)
    glob: str  # the path or glob looked up: a relative one is joined to the main file's directory
    files: tuple[str, ...]  # the files read for it, sorted; () for a glob that matches nothing
    location: Location | None = None


# ---------------------------------------------------------------- routes


class RouteConfig(Frozen):
    """One entry of ``routes:``: an alert whose labels equal every ``match`` value and fully
    match every ``match_re`` regex goes to ``webhooks`` (see ``routing.py``)."""

    webhooks: tuple[str, ...]
    match: Mapping[str, str] = field(default_factory=dict)
    match_re: Mapping[str, str] = field(default_factory=dict)
    continue_: bool = False  # `continue: true`: later routes are tried too
    location: Location | None = None


class Config(Frozen):
    """A whole rules.yaml (with its includes), as the loader validated it."""

    path: str
    agent: AgentConfig
    defaults: Defaults
    sources: Mapping[str, SourceConfig]
    webhooks: Mapping[str, WebhookConfig]
    rules: tuple[RuleConfig, ...]
    routes: tuple[RouteConfig, ...] = ()
    warnings: tuple[str, ...] = ()  # non-fatal findings (no owner/runbook, …) for `detector check`
    maintenance: tuple[MaintenanceConfig, ...] = ()
    files: tuple[str, ...] = ()  # every file read: ``path``, then the included ones in order
    includes: tuple[IncludeConfig, ...] = ()  # the include: items (a reload watches their globs)
