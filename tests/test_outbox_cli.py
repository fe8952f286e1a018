"""``detector outbox`` and ``detector outbox retry`` against a real state file, as a subprocess."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from detector.records import Commit, OutboxRow
from detector.store import outbox
from detector.store.db import Store
from tests.test_cli import run

NOW = datetime(2026, 11, 25, 10, tzinfo=UTC)


def _state(path: Path) -> None:
    """ops: one pending, one failing (retrying), two dead; other: one dead."""
    s = Store(path)
    rows = [
        OutboxRow("ops", ev, fp, "firing", {"rule": "app-errors", "summary": ev}, NOW)
        for ev, fp in [("ev-new", "f1"), ("ev-retry", "f2"), ("ev-dead", "f3"), ("ev-gone", "f4")]
    ]
    rows.append(OutboxRow("other", "ev-other", "f5", "firing", {"rule": "db"}, NOW))
    s.commit(Commit(outbox=rows), NOW)
    ids = {ev: i for i, ev in s.execute("SELECT id, event_id FROM outbox")}
    outbox.mark_retry(s, [ids["ev-retry"]], NOW + timedelta(seconds=17), "HTTP 503: down")
    outbox.mark_dead(s, [ids["ev-dead"], ids["ev-gone"]], NOW, "refused: HTTP 400 Bad Request")
    outbox.mark_dead(s, [ids["ev-other"]], NOW, "gave up after 1 day")
    s.close()


def test_outbox_lists_pending_failing_and_dead_rows_per_webhook(tmp_path: Path) -> None:
    _state(tmp_path / "state.db")
    env = {"STATE_DIRECTORY": str(tmp_path)}
    out = run("outbox", "-c", "rules.yaml", env=env)
    assert out.returncode == 0, out.stderr
    assert "WEBHOOK ops: 1 pending, 1 failing, 2 dead" in out.stdout
    assert "WEBHOOK other: 0 pending, 0 failing, 1 dead" in out.stdout
    retry_line = next(line for line in out.stdout.splitlines() if "ev-retry" in line)
    assert "2026-11-25T10:00:17" in retry_line and "HTTP 503: down" in retry_line
    assert "detector outbox retry" in out.stdout

    js = json.loads(run("outbox", "-c", "rules.yaml", "--json", env=env).stdout)
    assert js["ops"]["counts"] == {"pending": 1, "failing": 1, "dead": 2}
    (retrying,) = [r for r in js["ops"]["rows"] if r["event_id"] == "ev-retry"]
    assert retrying["next_attempt_at"] == "2026-11-25T10:00:17+00:00"
    assert retrying["last_error"] == "HTTP 503: down" and retrying["attempts"] == 1
    only = json.loads(
        run("outbox", "-c", "rules.yaml", "--json", "--webhook", "other", env=env).stdout
    )
    assert list(only) == ["other"]


def test_outbox_retry_requeues_dead_letters_by_webhook_or_event_id(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    _state(state)
    env = {"STATE_DIRECTORY": str(tmp_path)}
    one = run("outbox", "retry", "-c", "rules.yaml", "--id", "ev-dead", env=env)
    assert one.returncode == 0, one.stderr
    assert "re-queued ops ev-dead" in one.stdout and "1 dead letters re-queued" in one.stdout

    rest = run("outbox", "retry", "-c", "rules.yaml", "--webhook", "ops", env=env)
    assert "re-queued ops ev-gone" in rest.stdout and "1 dead letters re-queued" in rest.stdout

    s = Store(state)
    try:
        rows = {r.event_id: r for r in outbox.listing(s)}
    finally:
        s.close()
    assert rows["ev-dead"].state == "pending" and rows["ev-dead"].attempts == 0
    assert rows["ev-dead"].last_error is None
    assert rows["ev-gone"].state == "pending"
    assert rows["ev-other"].state == "dead"  # another webhook: untouched

    missing = run("outbox", "retry", "-c", "rules.yaml", "--id", "no-such-event", env=env)
    assert missing.returncode == 1 and "no dead letter with event id" in missing.stderr


def test_outbox_retry_of_a_webhook_not_in_the_config_warns(tmp_path: Path) -> None:
    _state(tmp_path / "state.db")
    out = run(
        "outbox",
        "retry",
        "-c",
        "rules.yaml",
        "--webhook",
        "other",
        env={"STATE_DIRECTORY": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    assert "webhook 'other' is not in the config" in out.stdout


def test_outbox_without_a_state_file_says_so(tmp_path: Path) -> None:
    out = run("outbox", "-c", "rules.yaml", env={"STATE_DIRECTORY": str(tmp_path / "none")})
    assert out.returncode == 2  # a usage error, as for every command
    assert "has not run yet" in out.stderr
