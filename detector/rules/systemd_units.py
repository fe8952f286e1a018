"""``systemd_units:`` rules — systemd's own journal entries about its units, with no D-Bus.

Sits in the rules stage beside ``window.py`` and ``heartbeat.py``: the matcher hands the evaluator
the lines of the rule's built-in pattern (``config.kinds.SYSTEMD_UNITS_MATCH``), the evaluator
reads which unit an entry is about and what happened to it, and the signals go to the alert book.

**Failed units** (``failed: true``). An entry of systemd's (``SYSLOG_IDENTIFIER=systemd``: PID 1,
or a user manager with ``USER_UNIT=``) ``MESSAGE_ID=d9b373ed…`` — ``x.service: Failed with
result 'exit-code'.`` — fires one alert per unit (key ``unit=x.service``), its text naming the
result and the main process's exit from the entry before it (``MESSAGE_ID=98e32220…``, ``Main
process exited, code=exited, status=1/FAILURE``; fields ``UNIT_RESULT``, ``EXIT_CODE``,
``EXIT_STATUS``). The unit's next success resolves it: ``x.service: Deactivated successfully.``
(``7ad2d189…``) or ``Finished x.service`` (``39f53479…``, a oneshot), at once; ``Started
x.service`` (a long-running service) once it stayed up ``up_for`` without exiting again.

**Timers** (``timers: true``). Each timer found under ``root`` when the rules were loaded
(``detector.unitfiles``) is watched by a window rule (``OnCalendar=``: its service must start in
each window, ``AccuracySec=`` + ``RandomizedDelaySec=`` + ``grace`` long) or a heartbeat
(``OnUnitActiveSec=``: at least every period + the same slack), fed by ``Starting x.service`` /
``Started x.service``; they fire when the service did not run when due and resolve at its next run
("arrived 4m late"), with the window's exact DST, downtime and maintenance semantics. Their alerts
are keyed ``timer=x.timer``.

Entries carry their fields live (journald). ``detector test`` reads the same from text: a
``journalctl -o json`` line is parsed here for its fields; a ``short-iso`` line
(``… systemd[1]: x.service: Failed with result 'exit-code'.``) by its message alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from detector.matching import Hit
from detector.model import HeartbeatSpec, RuleConfig, SystemdTimer, WindowSpec
from detector.rules.base import Evaluator, Signal, When
from detector.rules.common import Hold, resolved, summarize
from detector.rules.heartbeat import HeartbeatEvaluator
from detector.rules.window import WindowEvaluator
from detector.schedule import DeadlineHeap
from detector.sources.base import Line
from detector.sources.journald import entry_to_line
from detector.timefmt import at_or_none, format_duration, iso_or_none, utc_text

# systemd's catalog (src/systemd/sd-messages.h), checked against systemd 252's entries
UNIT_FAILURE_RESULT = "d9b373ed55a64feb8242e02dbe79a49c"  # "x: Failed with result 'exit-code'."
UNIT_PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"  # "x: Main process exited, code=…"
UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"  # "x: Deactivated successfully."
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"  # "Started x" / "Finished x" (JOB_RESULT=done)
UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"  # "Starting x - Description..."

_UNIT = r"[\w@:.\\-]+\.(?:service|socket|timer|mount|automount|swap|target|path|slice|scope)"
_FAILED = re.compile(rf"^(?P<unit>{_UNIT}): Failed with result '(?P<result>[\w-]+)'")
_EXITED = re.compile(
    rf"^(?P<unit>{_UNIT}): (?P<what>(?:Main|Control) process exited, "
    r"code=(?P<code>\w+), status=(?P<status>[^\s,]+))"
)
_SUCCESS = re.compile(rf"^(?P<unit>{_UNIT}): (?:Deactivated successfully|Succeeded)\.")
_JOB = re.compile(rf"^(?P<verb>Starting|Started|Finished) (?P<unit>{_UNIT})(?:\s|\.|$)")
_PREFIX = re.compile(r"\bsystemd\[(?P<pid>\d+)\]: ")


@dataclass(slots=True)
class _Event:
    unit: str
    what: str  # failed | exited | success | started | starting
    user: str = ""  # the uid of a user manager's unit; '' for PID 1
    result: str = ""
    code: str = ""
    status: str = ""
    exit_text: str = ""  # "Main process exited, code=exited, status=1/FAILURE"


def _fields_of(line: Line) -> Mapping[str, str] | None:
    if line.fields:
        return line.fields
    text = line.text
    if text.startswith("{") and '"MESSAGE"' in text:  # `journalctl -o json` in detector test
        try:
            entry = json.loads(text)
        except ValueError:
            return None
        if isinstance(entry, dict):
            return entry_to_line(line.source, entry).fields
    return None


def parse_event(line: Line) -> _Event | None:
    """What one of systemd's entries says about a unit; None for anything else."""
    fields = _fields_of(line)
    user = ""
    if fields is not None:
        if fields.get("SYSLOG_IDENTIFIER") != "systemd" and fields.get("_PID") != "1":
            return None
        message = fields.get("MESSAGE", "")
        unit = fields.get("UNIT") or ""
        if not unit and fields.get("USER_UNIT"):
            unit, user = fields["USER_UNIT"], fields.get("_UID", "?")
        mid = fields.get("MESSAGE_ID", "")
    else:
        m = _PREFIX.search(line.text)
        message = line.text[m.end() :] if m else line.text
        unit, mid = "", ""
    event = _from_text(message)
    if event is None:
        if not (unit and mid):
            return None
        event = _from_id(mid, message, fields or {}, unit)
        if event is None:
            return None
    if unit:
        event.unit = unit
    event.user = user
    if fields is not None:
        event.result = fields.get("UNIT_RESULT") or event.result
        event.code = fields.get("EXIT_CODE") or event.code
        event.status = event.status or fields.get("EXIT_STATUS", "")
    return event


def _from_text(message: str) -> _Event | None:
    if m := _FAILED.match(message):
        return _Event(m["unit"], "failed", result=m["result"])
    if m := _EXITED.match(message):
        return _Event(m["unit"], "exited", code=m["code"], status=m["status"], exit_text=m["what"])
    if m := _SUCCESS.match(message):
        return _Event(m["unit"], "success")
    if m := _JOB.match(message):
        verb = {"Starting": "starting", "Started": "started", "Finished": "success"}[m["verb"]]
        return _Event(m["unit"], verb)
    return None


def _from_id(mid: str, message: str, fields: Mapping[str, str], unit: str) -> _Event | None:
    """An entry whose text the patterns do not know (another systemd version's wording)."""
    if mid == UNIT_FAILURE_RESULT:
        return _Event(unit, "failed", result=fields.get("UNIT_RESULT", "?"))
    if mid == UNIT_PROCESS_EXIT:
        code, status = fields.get("EXIT_CODE", "?"), fields.get("EXIT_STATUS", "?")
        return _Event(unit, "exited", code=code, status=status, exit_text=message)
    if mid == UNIT_SUCCESS:
        return _Event(unit, "success")
    if mid == UNIT_STARTING:
        return _Event(unit, "starting")
    if mid == UNIT_STARTED and fields.get("JOB_RESULT", "done") == "done":
        return _Event(unit, "started" if message.startswith("Started") else "success")
    return None


@dataclass(slots=True)
class _Failed:
    since_at: datetime
    labels: dict[str, str]
    text: str  # "result 'exit-code'; main process exited, code=exited, status=1/FAILURE"
    up_at: datetime | None = None  # started again: resolves at up_at + up_for


class SystemdUnitsEvaluator:
    """Failed units and timers whose service did not run when due (module docstring)."""

    wants_all_lines = False

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        assert rule.systemd_units is not None, "SystemdUnitsEvaluator needs rule.systemd_units"
        self.rule = rule
        self.spec = rule.systemd_units
        self._failed: dict[str, _Failed] = {}
        self._exits: dict[str, str] = {}
        """The last process exit of each unit (the entry before its "Failed with result")."""
        self._ups = DeadlineHeap()
        self._stored: dict[str, Any] = {}
        self._stored_sub: dict[str, Any] = {}
        """The timers' rows as they last reported them (they report changes only)."""
        self._timers: dict[str, Evaluator] = {}
        self._timer_of: dict[str, SystemdTimer] = {}
        self._by_service: dict[str, list[str]] = {}
        if self.spec.timers:
            for t in self.spec.schedules:
                tkey = f"{t.timer}|{t.schedule}"
                self._timers[tkey] = _timer_evaluator(rule, t, now)
                self._timer_of[tkey] = t
                self._by_service.setdefault(t.service, []).append(tkey)
        per_timer: dict[str, int] = {}
        for t in self._timer_of.values():
            per_timer[t.timer] = per_timer.get(t.timer, 0) + 1
        self._key_of = {
            tkey: f"timer={t.timer}"
            + (f"\x1fschedule={t.schedule}" if per_timer[t.timer] > 1 else "")
            for tkey, t in self._timer_of.items()
        }

    # ---------------------------------------------------------------- Evaluator

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role != "match":
            return []
        event = parse_event(line)
        if event is None:
            return []
        out: list[Signal] = []
        if event.what in ("starting", "started") and not event.user:
            for tkey in self._by_service.get(event.unit, ()):
                sub = self._timers[tkey]
                sub_hit = Hit(hit.line, sub.rule.name, "match", {})
                out += self._retag(tkey, sub.observe(sub_hit, line, when))
        if not self.spec.failed or not self.spec.watches(event.unit):
            return out
        key = f"unit={event.unit}" + (f"\x1fuser={event.user}" if event.user else "")
        if event.what == "exited":
            self._exits[key] = event.exit_text or f"code={event.code}, status={event.status}"
            self._up_cancel(key)
        elif event.what == "failed":
            out.append(self._fire(key, event, line, when))
        elif event.what == "success":
            if key in self._failed:
                out.append(self._resolve(key, when.at, "succeeded"))
            self._exits.pop(key, None)
        elif event.what == "started" and key in self._failed:
            failed = self._failed[key]
            failed.up_at = when.at
            self._ups.push(key, when.at + self.spec.up_for)
            if not self.spec.up_for:
                out += self.due(when.at)
        return out

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return []

    def next_deadline(self) -> datetime | None:
        times = [self._ups.next_at(), *(t.next_deadline() for t in self._timers.values())]
        return min((t for t in times if t is not None), default=None)

    def due(self, now: datetime) -> list[Signal]:
        out: list[Signal] = []
        for key in self._ups.pop_due(now):
            failed = self._failed.get(key)
            if failed is not None and failed.up_at is not None:
                up = format_duration(self.spec.up_for)
                out.append(self._resolve(key, failed.up_at + self.spec.up_for, f"up for {up}"))
        for tkey, sub in self._timers.items():
            deadline = sub.next_deadline()
            if deadline is not None and deadline <= now:
                out += self._retag(tkey, sub.due(now))
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        for sub in self._timers.values():
            sub.note_downtime(since, until)

    def set_maintenance(self, hold: Hold | None) -> None:
        """Maintenance windows hold the timers' windows (failures are told, muted there)."""
        for sub in self._timers.values():
            set_hold = getattr(sub, "set_maintenance", None)
            if set_hold is not None:
                set_hold(hold)

    # ---------------------------------------------------------------- failed units

    def _fire(self, key: str, event: _Event, line: Line, when: When) -> Signal:
        exit_text = self._exits.pop(key, "")
        self._up_cancel(key)
        text = f"result '{event.result}'"
        if exit_text:
            text += f"; {exit_text[:1].lower()}{exit_text[1:]}"
        labels = {"unit": event.unit, **({"user": event.user} if event.user else {})}
        status = re.search(r"status=(\S+)", exit_text)
        ctx = {
            **labels,
            "result": event.result,
            "exit": exit_text,
            "exit_status": status[1] if status else "",
            "line": line.text,
            "source": line.source,
        }
        who = f"{event.unit}" + (f" (user {event.user})" if event.user else "")
        default = f"{self.rule.name}: {who} failed: {text}"
        summary, description = summarize(self.rule, default, ctx)
        previous = self._failed.get(key)
        since_at = previous.since_at if previous is not None else when.at
        self._failed[key] = _Failed(since_at, labels, text)
        return Signal(
            rule=self.rule.name,
            kind="error",
            key=key,
            action="fire",
            at=when.at,
            labels=labels,
            summary=summary,
            description=description,
            sample=line.text,
            evidence={"unit": event.unit, "result": event.result, "exit": exit_text},
            source=line.source,
        )

    def _resolve(self, key: str, at: datetime, how: str) -> Signal:
        failed = self._failed.pop(key)
        self._ups.remove(key)
        what = (
            f"{how} at {utc_text(at)}, {format_duration(at - failed.since_at)} after it failed "
            f"({failed.text})"
        )
        return Signal(
            rule=self.rule.name,
            kind="error",
            key=key,
            action="resolve",
            at=at,
            labels=failed.labels,
            **resolved(self.rule, failed.labels, what),
        )

    def _up_cancel(self, key: str) -> None:
        failed = self._failed.get(key)
        if failed is not None and failed.up_at is not None:
            failed.up_at = None
            self._ups.remove(key)

    # ---------------------------------------------------------------- timers

    def _retag(self, tkey: str, signals: list[Signal]) -> list[Signal]:
        t, base = self._timer_of[tkey], self._key_of[tkey]
        for s in signals:
            s.rule = self.rule.name
            s.key = base + (f"#{s.key.lstrip('#')}" if s.key else "")
            s.labels = {"timer": t.timer, "unit": t.service, **s.labels}
        return signals

    # ---------------------------------------------------------------- state

    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {}
        for key, f in self._failed.items():
            snap[f"f:{key}"] = {
                "since": iso_or_none(f.since_at),
                "labels": f.labels,
                "text": f.text,
                "up": iso_or_none(f.up_at),
            }
        for key, exit_text in self._exits.items():
            snap[f"x:{key}"] = exit_text
        for tkey, sub in self._timers.items():
            for k, v in sub.state_changes().items():
                self._stored_sub[f"t:{tkey}\x1e{k}"] = v
        snap.update({k: v for k, v in self._stored_sub.items() if v is not None})
        return snap

    def state_changes(self) -> dict[str, Any | None]:
        snap = self._snapshot()
        out: dict[str, Any | None] = {k: v for k, v in snap.items() if self._stored.get(k) != v}
        out.update({k: None for k in self._stored if k not in snap})
        self._stored = snap
        return out

    def load_state(self, items: Mapping[str, Any]) -> None:
        self._stored = dict(items)
        self._stored_sub = {}
        subs: dict[str, dict[str, Any]] = {}
        for k, v in items.items():
            if k.startswith("f:") and isinstance(v, Mapping):
                since = at_or_none(v.get("since"))
                labels = v.get("labels")
                if since is None or not isinstance(labels, Mapping):
                    continue
                up = at_or_none(v.get("up"))
                key = k[2:]
                self._failed[key] = _Failed(
                    since, {str(a): str(b) for a, b in labels.items()}, str(v.get("text", "")), up
                )
                if up is not None:
                    self._ups.push(key, up + self.spec.up_for)
            elif k.startswith("x:") and isinstance(v, str):
                self._exits[k[2:]] = v
            elif k.startswith("t:") and "\x1e" in k:
                tkey, sub_key = k[2:].split("\x1e", 1)
                subs.setdefault(tkey, {})[sub_key] = v
                self._stored_sub[k] = v
        for tkey, sub_items in subs.items():
            if tkey in self._timers:
                self._timers[tkey].load_state(sub_items)


def _timer_evaluator(rule: RuleConfig, t: SystemdTimer, now: datetime) -> Evaluator:
    base = replace(
        rule,
        name=f"{rule.name} {t.timer}",
        match=f"Starting {t.service}",
        summary=None,
        description=None,
        group_by=(),
        systemd_units=None,
    )
    if t.every is not None:
        spec = HeartbeatSpec(every=t.every, grace=t.grace)
        summary = (
            f"{{rule}}: {t.service} did not start for {{silent_for}} (last {{last_seen}}; "
            f"{t.schedule}, expected every {{every}})"
        )
        return HeartbeatEvaluator(
            replace(base, kind="heartbeat", heartbeat=spec, summary=summary), now
        )
    assert t.cron is not None
    window = WindowSpec(cron=t.cron, within=t.within, timezone=t.timezone)
    return WindowEvaluator(replace(base, kind="window", window=window), now)
