"""Maintenance windows: when the ``maintenance:`` entries of rules.yaml hold, as exact instants.

Pure time arithmetic beside the model, used by the pipeline in two places: the alert book's mute
decision (``silences.Muter``: a rule's alerts are recorded but not notified while one of its
windows holds) and the expectation rules (heartbeat, window, pair), which ask
:meth:`Maintenance.overlapping` whether a silence or a slot overlapped a window, so that nothing
fires inside it nor falsely right after it. A recurring window opens at each ``cron`` time in its
IANA ``timezone`` (Debian cron semantics via cronsim, the same DST handling as ``rules/window.py``:
a time in the spring-forward gap opens at the first instant after it, an ambiguous fall-back time
opens once) and lasts ``for`` of elapsed time; a one-off window is ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

from detector.model import MaintenanceConfig

Span = tuple[datetime, datetime]
MAX_STEPS = 10_000
"""At most this many window openings are looked at in one question (a minutely cron)."""


def _opens_after(m: MaintenanceConfig, t: datetime) -> Iterator[datetime]:
    """The openings of ``m`` strictly after ``t``, in UTC, increasing."""
    if m.cron is None:
        if m.start is not None and m.start > t:
            yield m.start
        return
    from zoneinfo import ZoneInfo  # noqa: PLC0415 - a cron window only: most configs have none

    from cronsim import CronSim  # noqa: PLC0415

    zone = ZoneInfo(m.timezone)
    last = t
    for n, opened in enumerate(CronSim(m.cron, t.astimezone(zone))):
        if n >= MAX_STEPS:
            return
        at = opened.astimezone(UTC)
        if at > last:  # a fixed time in a repeated (fall-back) hour opens once
            last = at
            yield at


class Maintenance:
    """The maintenance windows of one config."""

    def __init__(self, entries: Sequence[MaintenanceConfig]) -> None:
        self.entries = tuple(entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    @staticmethod
    def applies(m: MaintenanceConfig, rule: str) -> bool:
        return not m.rules or rule in m.rules

    def spans(self, rule: str | None, a: datetime, b: datetime) -> list[tuple[Span, int]]:
        """Every window (of the entries that apply to ``rule``; None: any entry) overlapping
        ``[a, b]``, with its entry's index, earliest first."""
        out: list[tuple[Span, int]] = []
        for i, m in enumerate(self.entries):
            if rule is not None and not self.applies(m, rule):
                continue
            # a window overlaps [a, b] iff it opens at or before b and ends after a
            for opened in _opens_after(m, a - m.duration - timedelta(microseconds=1)):
                if opened > b:
                    break
                end = opened + m.duration
                if end > a:
                    out.append(((opened, end), i))
        return sorted(out)

    def overlapping(self, rule: str, a: datetime, b: datetime) -> Span | None:
        """The first window of ``rule`` overlapping ``[a, b]`` (merged with the windows that
        overlap it in turn), or None."""
        found = self.spans(rule, a, b)
        if not found:
            return None
        start, end = found[0][0]
        for _ in range(100):
            more = [s for s, _i in self.spans(rule, start, end) if s[1] > end]
            if not more:
                break
            end = max(s[1] for s in more)
        return start, end

    def active(self, rule: str, t: datetime) -> tuple[Span, int] | None:
        """The window of ``rule`` holding at ``t`` that ends last, with its entry's index."""
        found = [(s, i) for s, i in self.spans(rule, t, t) if s[0] <= t < s[1]]
        return max(found, key=lambda f: f[0][1]) if found else None

    def next_change(self, t: datetime, horizon: timedelta = timedelta(days=400)) -> datetime | None:
        """The first instant after ``t`` at which some window opens or ends."""
        best: datetime | None = None
        for m in self.entries:
            for opened in _opens_after(m, t - m.duration):
                for edge in (opened, opened + m.duration):
                    if edge > t and (best is None or edge < best):
                        best = edge
                if opened > t or (best is not None and opened > best):
                    break
                if opened > t + horizon:
                    break
        return best

    def upcoming(self, t: datetime) -> list[tuple[Span, MaintenanceConfig]]:
        """Per entry, the window holding at ``t`` or else the next one (``detector status``)."""
        out: list[tuple[Span, MaintenanceConfig]] = []
        for m in self.entries:
            opened = next(_opens_after(m, t - m.duration), None)
            if opened is not None:
                out.append(((opened, opened + m.duration), m))
        return out
