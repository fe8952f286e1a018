"""The plain records that travel down the flow: where a source resumes (``Checkpoint``), an outbox
row, what one batch changed (``Commit``) and where the state file lives by default.

Sources produce checkpoints, the pipeline and the alert book build commits, the store persists
them and the config loader needs the default state path. The module sits at the bottom of the
import layers (it imports nothing from ``detector``), so each of them can use these types without
importing another stage — and without SQLite (``detector test`` starts faster)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol


class HasRow(Protocol):
    """What ``Commit.changed`` holds: an alert whose row is built when the commit is written."""

    @property
    def kind(self) -> str: ...

    def to_row(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where to resume. ``key`` is unique within a source (a file identity, or "cursor")."""

    source: str
    key: str
    value: Mapping[str, Any]
    """JSON-serialisable. ``{}`` with ``delete=True`` removes the checkpoint (file gone)."""
    delete: bool = False


@dataclass(frozen=True)
class OutboxRow:
    """A notification owed to a webhook, as the outbox stores it."""

    webhook: str
    event_id: str
    fingerprint: str
    status: str  # "firing" | "resolved"
    payload: Mapping[str, Any]  # the alert snapshot (alerts.Alert.to_json()); rendered at delivery
    created_at: datetime


@dataclass
class Commit:
    """Everything one batch (or one round of deadlines) changed."""

    checkpoints: list[Checkpoint] = field(default_factory=list)
    rule_state: dict[str, dict[str, Any | None]] = field(default_factory=dict)
    alerts: dict[str, Mapping[str, Any] | None] = field(default_factory=dict)  # fingerprint -> row
    changed: dict[str, HasRow | None] = field(default_factory=dict)
    """Changed alerts whose rows are not built yet (fingerprint -> the alert, None: deleted): the
    live agent's pipeline leaves them to :meth:`seal`, run once when the commit is written, so an
    alert that every batch of a commit changes has its row built once, not once a batch. A
    fingerprint is in ``alerts`` or in ``changed``, never both (the later change wins)."""
    outbox: list[OutboxRow] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (
            self.checkpoints
            or self.rule_state
            or self.alerts
            or self.changed
            or self.outbox
            or self.meta
        )

    def absorb(self, later: Commit) -> None:
        """Add what ``later`` (the next batch's commit) changed: committing the two together is
        the same as committing this one, then ``later``."""
        self.checkpoints.extend(later.checkpoints)
        for rule, changes in later.rule_state.items():
            self.rule_state.setdefault(rule, {}).update(changes)
        for fp in later.alerts.keys() & self.changed.keys():
            del self.changed[fp]
        for fp in later.changed.keys() & self.alerts.keys():
            del self.alerts[fp]
        self.alerts.update(later.alerts)
        self.changed.update(later.changed)
        self.outbox.extend(later.outbox)
        self.meta.update(later.meta)

    def seal(self) -> None:
        """Build the rows of ``changed`` (the alerts as they are now). On the thread that owns
        the alerts (the event loop), before the commit goes to the store thread: the rows are
        then the state that the commit's read positions produced."""
        if self.changed:
            changed, self.changed = self.changed, {}
            for fp, alert in changed.items():
                self.alerts[fp] = alert.to_row() if alert is not None else None


def default_state_path(env: Mapping[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY/state.db`` (systemd StateDirectory=), else ./detector-state.db."""
    state_dir = (os.environ if env is None else env).get("STATE_DIRECTORY")
    if state_dir:
        return Path(state_dir.split(":")[0]) / "state.db"
    return Path("detector-state.db")
