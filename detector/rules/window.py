"""``expect: {cron, within}`` rules — expected activity in scheduled windows.

Sits in the rules stage beside ``heartbeat.py`` and ``pair.py``: the service feeds the evaluator
the hits of its rule (``observe``) and wakes it exactly at ``next_deadline()`` (``due``); the
signals go to the alert book. Semantics:

**Window** (``expect: {cron, within, timezone, min_count, too_early}``, rule ``fail:``). A window
opens at each cron time, computed in the IANA ``timezone``, and closes ``within`` (elapsed time)
later; both ends are inclusive. It is satisfied by ``min_count`` matches inside it; a ``fail:`` line
inside it (even after it was satisfied) ends it as failed and fires at once; a ``fail:`` line
outside every window is ignored. At the close of an unsatisfied window the rule fires;
a match after a failed window ends, or enough matches after a missed one, before the next window
opens, resolve it ("nightly-backup: 'backup complete' arrived 37m late (window 02:00–03:00
Europe/Berlin)", "succeeded at 02:40, 26m after the failure at 02:14 (window …)"); otherwise the
next satisfied window resolves it ("… on time again at 02:05 (window …)"). Overlapping windows
each count a match. With ``too_early: info`` a match outside every window (and resolving nothing)
sends an info. A window that had opened before the rule was first run is not watched.
DST, for a fixed-time expression such as ``30 2 * * *`` (cron fields, Debian cron semantics, via
``cronsim``): on the spring-forward day the nonexistent 02:30 opens at the first valid instant
after the gap (03:00 in Europe/Berlin and America/New_York); on the fall-back day an ambiguous
02:30 (Europe/Berlin) opens once, at its first occurrence (CEST, UTC+2); ``within`` is always
elapsed time, so a 1h window closes one real hour later. Expressions with ``*`` in the minute or
hour field follow real time and run in both repeated hours. ``0 2 29 2 *`` opens every leap year.

**Downtime.** ``note_downtime(since, until)`` tells the evaluator when the agent was not running.
The service holds ``due()`` back until the sources caught up, so a line written during the downtime
is observed first: a window satisfied by it never fires (a line with an uncertain time
``When(at, earliest)`` counts for every window overlapping ``[earliest, at]``). A deadline that
passed unsatisfied still fires, once, saying the agent was down for part of the period. A late
window match that is already over when its line is read (its exact timestamp is past a deadline
that was not yet evaluated) is an ``info``, not a fire: nothing is left open, yet nothing is
swallowed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from detector.matching import Hit
from detector.model import RuleConfig, WindowSpec
from detector.rules.base import Signal, When
from detector.rules.common import Hold, downtime_note, hit_fields, resolved, summarize
from detector.rules.state import KeyedState
from detector.sources.base import Line
from detector.timefmt import at_or_none, format_duration, iso_or_none

MAX_WINDOWS = 1000
"""At most this many windows are kept (a minutely cron after a week of downtime)."""

WindowStatus = Literal["open", "ok", "failed", "missed"]


@dataclass(slots=True)
class _Win:
    open_at: datetime
    close_at: datetime
    count: int = 0
    late: int = 0
    status: WindowStatus = "open"
    failed_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "close": iso_or_none(self.close_at),
            "count": self.count,
            "late": self.late,
            "status": self.status,
            "failed_at": iso_or_none(self.failed_at),
        }


class WindowEvaluator:
    """Expected activity in cron-defined windows (see the module docstring for the semantics)."""

    wants_all_lines = False

    def __init__(self, rule: RuleConfig, now: datetime) -> None:
        assert rule.window is not None, "WindowEvaluator needs rule.window"
        self.rule = rule
        self.spec: WindowSpec = rule.window
        try:
            self.zone = ZoneInfo(self.spec.timezone)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(
                f"rule {rule.name!r}: unknown timezone {self.spec.timezone!r}"
            ) from None
        try:
            CronSim(self.spec.cron, now.astimezone(self.zone))
        except CronSimError as e:
            raise ValueError(f"rule {rule.name!r}: bad cron {self.spec.cron!r}: {e}") from None
        self._spec_id = "|".join(
            (
                self.spec.cron,
                str(self.spec.within.total_seconds()),
                self.spec.timezone,
                str(self.spec.min_count),
            )
        )
        self._next_open = self.opens_after(now - timedelta(microseconds=1))
        self._wins: list[_Win] = []
        self._last_open: datetime | None = None
        """The latest window materialised: matches after it closed are late for it."""
        self._firing_open: datetime | None = None
        self._firing = False
        self._down: tuple[datetime, datetime] | None = None
        self._hold: Hold | None = None
        self._rows = KeyedState[Any]({}, _as_is)
        """The rows as last stored: each round's snapshot is compared with them (``sync``)."""

    # ---------------------------------------------------------------- schedule

    def opens(self, t: datetime) -> Iterator[datetime]:
        """Window openings strictly after ``t`` (aware), in UTC, increasing; ends if the cron
        expression has no match within 50 years (cronsim's horizon)."""
        last = t
        for opened in CronSim(self.spec.cron, t.astimezone(self.zone)):
            opened_utc = opened.astimezone(UTC)
            if opened_utc > last:  # a fixed-time job in a repeated (fall-back) hour: once
                last = opened_utc
                yield opened_utc

    def opens_after(self, t: datetime) -> datetime | None:
        """The first window opening strictly after ``t``; None if never again."""
        return next(self.opens(t), None)

    def _advance(self, t: datetime) -> None:
        """Materialise every window that opened at or before ``t`` (at most MAX_WINDOWS: after a
        long downtime, only the latest ones)."""
        nxt = self._next_open
        if nxt is None or nxt > t:
            return
        later = self.opens(nxt)
        new: list[datetime] = []
        jumped = False
        while nxt is not None and nxt <= t:
            new.append(nxt)
            if len(new) > MAX_WINDOWS and not jumped:  # skip to the last MAX_WINDOWS before t
                jumped = True
                back = CronSim(self.spec.cron, t.astimezone(self.zone), reverse=True)
                oldest = list(itertools.islice(back, MAX_WINDOWS))[-1].astimezone(UTC)
                if oldest <= new[-1]:
                    new = [o for o in new if o >= oldest]
                else:
                    later = self.opens(oldest - timedelta(seconds=1))
                    new = []
            nxt = next(later, None)
        self._next_open = nxt
        for opened in new:
            w = _Win(opened, opened + self.spec.within)
            if self._hold is not None and self._hold(w.open_at, w.close_at) is not None:
                w.status = "ok"  # overlaps maintenance: skipped, never missed
            self._wins.append(w)
        self._last_open = new[-1] if new else self._last_open
        if len(self._wins) > MAX_WINDOWS:
            del self._wins[: len(self._wins) - MAX_WINDOWS]

    def set_maintenance(self, hold: Hold | None) -> None:
        """The rule's maintenance windows: a slot that overlaps one is skipped (taken as
        satisfied), that day's slot included when it opened already."""
        self._hold = hold
        if hold is not None:
            for w in self._wins:
                if w.status == "open" and hold(w.open_at, w.close_at) is not None:
                    w.status = "ok"

    def _prune(self, t: datetime) -> None:
        latest_open = max((w.open_at for w in self._wins if w.open_at <= t), default=None)
        self._wins = [
            w
            for w in self._wins
            if not (
                (w.status == "ok" and w.close_at < t)
                or (
                    w.status in ("missed", "failed")
                    and latest_open is not None
                    and w.open_at < latest_open
                )
            )
        ]

    def _fmt(self, at: datetime) -> str:
        return at.astimezone(self.zone).strftime("%H:%M")

    def _window_text(self, w: _Win) -> str:
        o, c = w.open_at.astimezone(self.zone), w.close_at.astimezone(self.zone)
        if o.utcoffset() != c.utcoffset():  # a DST change inside the window: name both offsets
            return f"between {o:%Y-%m-%d %H:%M %Z} and {c:%Y-%m-%d %H:%M %Z} ({self.spec.timezone})"
        if o.date() == c.date():
            return f"between {o:%H:%M} and {c:%H:%M} {self.spec.timezone} on {o:%Y-%m-%d}"
        return f"between {o:%Y-%m-%d %H:%M} and {c:%Y-%m-%d %H:%M} {self.spec.timezone}"

    def _ctx(self, w: _Win, extra: Mapping[str, Any]) -> dict[str, Any]:
        o = w.open_at.astimezone(self.zone)
        return {
            "count": w.count,
            "min_count": self.spec.min_count,
            "window_start": self._fmt(w.open_at),
            "window_end": self._fmt(w.close_at),
            "window_date": f"{o:%Y-%m-%d}",
            "timezone": self.spec.timezone,
            **extra,
        }

    def _signal(
        self,
        action: Literal["fire", "resolve", "info"],
        at: datetime,
        w: _Win | None,
        default: str,
        ctx: Mapping[str, Any],
        *,
        line: Line | None = None,
        description: str = "",
        count: int = 1,
        evidence: Mapping[str, Any] | None = None,
    ) -> Signal:
        summary, desc = summarize(self.rule, default, ctx)
        ev: dict[str, Any] = {"timezone": self.spec.timezone, "cron": self.spec.cron}
        if w is not None:
            ev |= {
                "window_start_at": iso_or_none(w.open_at),
                "window_end_at": iso_or_none(w.close_at),
                "count": w.count,
                "min_count": self.spec.min_count,
            }
        ev |= evidence or {}
        return Signal(
            rule=self.rule.name,
            kind="window",
            key="" if action != "info" else "too_early",
            action=action,
            at=at,
            summary=summary,
            description=desc or description,
            sample=None if line is None else line.text,
            count=count,
            evidence=ev,
            source=None if line is None else line.source,
        )

    def _pattern(self) -> str:
        return f"'{self.rule.match}'" if self.rule.match else "a match"

    # ---------------------------------------------------------------- Evaluator

    def observe(self, hit: Hit, line: Line, when: When) -> list[Signal]:
        if hit.role not in ("match", "fail"):
            return []
        self._advance(when.at)
        inside = [w for w in self._wins if w.open_at <= when.at and w.close_at >= when.earliest]
        fields = {**hit_fields(hit, line), "line": line.text, "source": line.source}
        if hit.role == "fail":
            return self._observe_fail(inside, line, when, fields)
        out: list[Signal] = []
        for w in inside:
            if w.status == "open":
                w.count += 1
                if w.count >= self.spec.min_count:
                    w.status = "ok"
                    if self._firing:
                        out.append(self._resolve(w, when, line, fields, late_by=None))
            elif w.status == "ok":
                w.count += 1
            else:  # failed or missed (a line exactly at the close, after it fired)
                out.extend(self._late(w, when, line, fields))
        if not inside:
            last = self._wins[-1] if self._wins else None
            if (
                last is not None
                and last.open_at == self._last_open
                and last.status != "ok"
                and last.close_at < when.earliest
            ):
                out.extend(self._late(last, when, line, fields))
            elif self.spec.too_early == "info":
                out.append(self._too_early(when, line, fields))
        return out

    def _observe_fail(
        self, inside: list[_Win], line: Line, when: When, fields: Mapping[str, Any]
    ) -> list[Signal]:
        out: list[Signal] = []
        for w in inside:
            if w.status not in ("open", "ok"):
                continue
            w.status = "failed"
            w.failed_at = when.at
            w.late = 0
            self._firing, self._firing_open = True, w.open_at
            default = (
                f"{self.rule.name}: failed at {self._fmt(when.at)} (window {self._window_text(w)})"
            )
            ctx = self._ctx(w, fields)
            out.append(self._signal("fire", when.at, w, default, ctx, line=line))
        return out

    def _late(self, w: _Win, when: When, line: Line, fields: Mapping[str, Any]) -> list[Signal]:
        """A match after ``w`` ended (closed or failed) and before the next window opened."""
        w.late += 1
        enough = w.late >= 1 if w.status == "failed" else w.count + w.late >= self.spec.min_count
        if not enough:
            return []
        before, w.status = w.status, "ok"
        late_by = max(when.at - w.close_at, timedelta(0))
        if before == "open":
            # The close passed but was not evaluated yet (the agent is catching up): nothing
            # fired, so there is nothing to resolve; say once that it came late.
            note = downtime_note(self._down, w.open_at, when.at)
            default = (
                f"{self.rule.name}: {self._pattern()} arrived at {self._fmt(when.at)} "
                f"{self.spec.timezone}, {format_duration(late_by)} late "
                f"(window {self._window_text(w)})"
            )
            ctx = self._ctx(w, {**fields, "late_by": format_duration(late_by)})
            evidence = {"late_by_s": late_by.total_seconds()}
            sig = self._signal(
                "info", when.at, w, default, ctx, line=line, description=note, evidence=evidence
            )
            return [replace(sig, key="late")]
        if not self._firing:
            return []
        if before == "failed":
            return [self._resolve(w, when, line, fields, late_by=None, after_failure=True)]
        return [self._resolve(w, when, line, fields, late_by=late_by)]

    def _resolve(
        self,
        w: _Win,
        when: When,
        line: Line,
        fields: Mapping[str, Any],
        *,
        late_by: timedelta | None,
        after_failure: bool = False,
    ) -> Signal:
        """The resolve when ``w`` is satisfied after the rule fired: late, after a failure, or
        the next window on time. Its summary says which, and when (``_window_short``)."""
        self._firing, self._firing_open = False, None
        window = f"(window {self._window_short(w)})"
        at = self._fmt(when.at)
        if after_failure:
            failed_at = w.failed_at or when.at
            after = format_duration(max(when.at - failed_at, timedelta(0)))
            what = (
                f"succeeded at {at}, {after} after the failure at {self._fmt(failed_at)} {window}"
            )
        elif late_by is not None:
            what = f"{self._pattern()} arrived {format_duration(late_by)} late {window}"
        else:
            what = f"{self._pattern()} on time again at {at} {window}"
        evidence: dict[str, Any] = {"timezone": self.spec.timezone, "cron": self.spec.cron}
        evidence |= {
            "window_start_at": iso_or_none(w.open_at),
            "window_end_at": iso_or_none(w.close_at),
            "count": w.count,
            "min_count": self.spec.min_count,
        }
        if late_by is not None:
            evidence["late_by_s"] = late_by.total_seconds()
        return Signal(
            rule=self.rule.name,
            kind="window",
            key="",
            action="resolve",
            at=when.at,
            sample=line.text,
            evidence=evidence,
            source=line.source,
            **resolved(self.rule, {}, what),
        )

    def _window_short(self, w: _Win) -> str:
        """A window for a title: ``02:00–03:00 Europe/Berlin``; with dates when it spans days,
        with each end's zone abbreviation when a DST change falls inside it."""
        o, c = w.open_at.astimezone(self.zone), w.close_at.astimezone(self.zone)
        fmt = "%H:%M" if o.date() == c.date() else "%Y-%m-%d %H:%M"
        if o.utcoffset() != c.utcoffset():
            fmt += " %Z"
        return f"{o.strftime(fmt)}–{c.strftime(fmt)} {self.spec.timezone}"

    def _too_early(self, when: When, line: Line, fields: Mapping[str, Any]) -> Signal:
        nxt = self._next_open
        if nxt is None:
            default = (
                f"{self.rule.name}: {self._pattern()} at {self._fmt(when.at)}, outside any window"
            )
            ctx: dict[str, Any] = {**fields, "count": 1}
            return self._signal("info", when.at, None, default, ctx, line=line)
        w = _Win(nxt, nxt + self.spec.within)
        early_by = nxt - when.at
        default = (
            f"{self.rule.name}: {self._pattern()} at {self._fmt(when.at)} {self.spec.timezone}, "
            f"outside any window ({format_duration(early_by)} before the window "
            f"{self._window_text(w)})"
        )
        ctx = self._ctx(w, {**fields, "early_by": format_duration(early_by)})
        return self._signal(
            "info",
            when.at,
            w,
            default,
            ctx,
            line=line,
            evidence={"early_by_s": early_by.total_seconds()},
        )

    def observe_line(self, line: Line, when: When) -> list[Signal]:
        return []

    def next_deadline(self) -> datetime | None:
        closes = [w.close_at for w in self._wins if w.status == "open"]
        if self._next_open is not None:
            closes.append(self._next_open + self.spec.within)
        return min(closes, default=None)

    def due(self, now: datetime) -> list[Signal]:
        self._advance(now)
        missed = [w for w in self._wins if w.status == "open" and w.close_at <= now]
        out: list[Signal] = []
        if missed:
            for w in missed:
                w.status = "missed"
            w = missed[-1]
            note = next(
                (n for m in missed if (n := downtime_note(self._down, m.open_at, m.close_at))),
                "",
            )
            got = f" (only {w.count} of {self.spec.min_count})" if self.spec.min_count > 1 else ""
            default = f"{self.rule.name}: no {self._pattern()} {self._window_text(w)}{got}"
            if len(missed) > 1:
                default += f", and {len(missed) - 1} earlier window(s) missed"
            if note:
                default += "; the agent was down during part of the window"
            self._firing, self._firing_open = True, w.open_at
            ctx = self._ctx(w, {"agent_down": bool(note), "missed": len(missed)})
            out.append(
                self._signal("fire", now, w, default, ctx, description=note, count=len(missed))
            )
        self._prune(now)
        return out

    def note_downtime(self, since: datetime, until: datetime) -> None:
        self._down = (since, until)

    # ---------------------------------------------------------------- state

    def _snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "spec": self._spec_id,
            "next_open": iso_or_none(self._next_open),
            "last_open": iso_or_none(self._last_open),
        }
        if self._firing:
            snap["firing"] = {"open": iso_or_none(self._firing_open)}
        for w in self._wins:
            snap[f"w:{iso_or_none(w.open_at)}"] = w.to_json()
        return snap

    def state_changes(self) -> dict[str, Any | None]:
        self._rows.sync(self._snapshot())
        return self._rows.changes()

    def load_state(self, items: Mapping[str, Any]) -> None:
        self._rows.values = dict(items)
        firing = items.get("firing")
        if isinstance(firing, Mapping):
            self._firing = True
            self._firing_open = at_or_none(firing.get("open"))
        if items.get("spec") != self._spec_id:
            return  # a different schedule: its windows no longer apply
        if "next_open" in items:
            nxt = items["next_open"]
            if nxt is None:
                self._next_open = None  # the cron expression has no further match
            elif (parsed := at_or_none(nxt)) is not None:
                self._next_open = parsed
        wins: list[_Win] = []
        for key, value in items.items():
            if not key.startswith("w:") or not isinstance(value, Mapping):
                continue
            open_at, close_at = at_or_none(key[2:]), at_or_none(value.get("close"))
            status = value.get("status")
            count, late = value.get("count"), value.get("late")
            if (
                open_at is None
                or close_at is None
                or status not in ("open", "ok", "failed", "missed")
                or not isinstance(count, int)
                or not isinstance(late, int)
            ):
                continue
            wins.append(
                _Win(open_at, close_at, count, late, status, at_or_none(value.get("failed_at")))
            )
        self._wins = sorted(wins, key=lambda w: w.open_at)
        last = items.get("last_open")
        self._last_open = at_or_none(last) or (self._wins[-1].open_at if self._wins else None)


def _as_is(_key: str, value: Any) -> Any:
    return value
