"""The light layout of an :class:`~detector.alerts.Alert` (issue 20.6: shared per-rule fields,
rare fields made only when set, one sample held as a string, the error rule's default summary
rebuilt from the first sample) reads, stores and notifies exactly what a plain record of the same
fields would: against a model of the fields, and through a real SQLite restart, also from a row
as the earlier layout wrote it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.alerts import (
    _BASE_FIELDS,
    _RARE_FIELDS,
    FIELDS,
    MAX_SAMPLES,
    Alert,
    AlertBook,
    clip_sample,
    fingerprint,
)
from detector.records import Commit
from detector.rules.base import Signal
from detector.store.db import Store, alert_rows
from tests.helpers import at, rule

# Rows as the previous layout (a dataclass with every field its own) wrote them, verbatim.
OLD_ROWS = [
    '{"fingerprint": "29b0e6fc0dfa0550", "rule": "e", "kind": "error", "key": "ip=1", "status":'
    ' "firing", "severity": "warning", "summary": "e: failed for 1", "description": "", "labels":'
    ' {"ip": "1", "host": "h", "rule": "e", "severity": "warning", "kind": "error", "source":'
    ' "s"}, "owner": null, "runbook": null, "host": "h", "source": "s", "first_seen_at":'
    ' "2026-03-01T12:00:00.000Z", "last_seen_at": "2026-03-01T12:00:00.000Z", "resolved_at":'
    ' null, "count": 1, "samples": ["failed for 1"], "evidence": {}, "notify": ["hook"],'
    ' "last_notified_at": "2026-03-01T12:00:00.000Z", "muted": null, "owed": null,'
    ' "pending_until": null, "clearing_until": null, "flapping_since": null, "clearing_summary":'
    ' null, "changes": [], "flap_changes": 0}',
    '{"fingerprint": "62fef31e22f6c313", "rule": "e", "kind": "error", "key": "ip=2", "status":'
    ' "firing", "severity": "warning", "summary": "e: failed again 2", "description": "",'
    ' "labels": {"ip": "2", "host": "h", "rule": "e", "severity": "warning", "kind": "error",'
    ' "source": "s"}, "owner": null, "runbook": null, "host": "h", "source": "s",'
    ' "first_seen_at": "2026-03-01T12:00:01.000Z", "last_seen_at": "2026-03-01T12:00:02.000Z",'
    ' "resolved_at": null, "count": 2, "samples": ["failed for 2", "failed again 2"],'
    ' "evidence": {}, "notify": ["hook"], "last_notified_at": "2026-03-01T12:00:02.000Z",'
    ' "muted": null, "owed": null, "pending_until": null, "clearing_until": null,'
    ' "flapping_since": null, "clearing_summary": null, "changes": [], "flap_changes": 0}',
]


def _restart(tmp: Path, rows: dict[str, Any], cfg: Any) -> AlertBook:
    store = Store(tmp / "state.db")
    store.migrate()
    store.commit(Commit(alerts=rows), at(0))
    store.close()
    store = Store(tmp / "state.db")
    again = AlertBook("h", {"e": cfg}, ["hook"])
    again.load(alert_rows(store.load_alert_chunks()))
    store.close()
    return again


def test_rows_of_the_earlier_layout_load_and_store_back_byte_for_byte(tmp_path: Path) -> None:
    cfg = rule("e", group_by=("ip",))
    rows = {(r := json.loads(text))["fingerprint"]: r for text in OLD_ROWS}
    book = _restart(tmp_path, rows, cfg)
    assert [json.dumps(a.to_row()) for a in book.alerts.values()] == OLD_ROWS
    one = book.alerts["29b0e6fc0dfa0550"]
    assert one._summary is None and one._samples == "failed for 1"  # the light form
    assert one.summary == "e: failed for 1" and one.samples == ["failed for 1"]
    assert one._rare is None and one.labels == rows[one.fingerprint]["labels"]
    # the next hit of the loaded alert: told nothing, its summary and samples move on as before
    book.apply(
        [Signal("e", "error", "ip=1", "fire", at(9), {"ip": "1"}, "e: again 1", sample="again 1")],
        at(9),
    )
    assert (one.summary, one.samples, one.count) == ("e: again 1", ["failed for 1", "again 1"], 2)
    assert book.take()[1] == []


def test_rare_fields_read_their_defaults_and_are_made_only_when_set() -> None:
    book = AlertBook("h", {"e": rule("e")}, ["hook"])
    book.apply([Signal("e", "error", "", "fire", at(0), {}, "e: x", sample="x")], at(0))
    alert = book.firing()[0]
    assert alert._rare is None
    assert (alert.resolved_at, alert.muted, alert.changes, alert.flap_changes) == (
        None,
        None,
        (),
        0,
    )
    alert.clearing_until = alert.clearing_summary = None  # a default: still nothing made
    assert alert._rare is None
    alert.owed = "firing"
    assert alert._rare is not None and alert.owed == "firing" and alert.pending_until is None
    other = Alert.from_row(alert.to_row())
    assert other == alert and other.owed == "firing"
    other.repeat_at = at(5)  # not a compared field
    assert other == alert
    other.flap_changes = 3
    assert other != alert


def test_every_field_given_alone_to_the_constructor_reads_back_as_given() -> None:
    """``Alert.__init__`` builds the shared ``_base`` tuple and the ``_rare`` list by hand (it
    runs once per alert); their order must be the descriptors' (``_BASE_FIELDS``,
    ``_RARE_FIELDS``, derived from the indices). One field at a time set to a value of its own,
    every other field must keep what it was given."""
    base: dict[str, Any] = {
        "fingerprint": "f", "rule": "r", "kind": "error", "key": "k", "status": "firing",
        "severity": "warning", "summary": "s", "description": "d", "labels": {"a": "b"},
        "owner": None, "runbook": None, "host": "h", "source": None, "first_seen_at": at(0),
        "last_seen_at": at(1),
    }  # fmt: skip
    assert set(_BASE_FIELDS) | set(_RARE_FIELDS) <= set(FIELDS)
    assert not set(_BASE_FIELDS) & set(_RARE_FIELDS)
    plain = Alert(**base)
    for n, name in enumerate(FIELDS):
        if name in ("samples", "labels", "evidence", "summary"):
            continue  # read back transformed (a list, a view, the default summary): below
        value: Any = (
            (f"v{n}",) if name in ("notify", "changes")
            else n + 10 if name in ("count", "flap_changes")
            else at(100 + n) if name.endswith(("_at", "_until", "_since"))
            else {"m": n} if name == "muted"
            else f"v{n}"
        )  # fmt: skip
        alert = Alert(**{**base, name: value})
        assert getattr(alert, name) == value, name
        others = [f for f in FIELDS if f != name]
        assert [getattr(alert, f) for f in others] == [getattr(plain, f) for f in others], name
    given = Alert(**{**base, "samples": ["x", "y"], "evidence": {"e": 1}})
    assert (given.samples, dict(given.evidence), dict(given.labels), given.summary) == (
        ["x", "y"],
        {"e": 1},
        {"a": "b"},
        "s",
    )


SAMPLE = st.one_of(
    st.text(alphabet="ab \n", max_size=8),
    st.integers(150, 260).map(lambda n: "x" * n),  # the summary cuts at 200
    st.integers(1990, 2100).map(lambda n: ("line\n" * n)[:n]),  # clipped as a sample
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hits=st.lists(
        st.tuples(st.sampled_from(["k1", "k2"]), SAMPLE, st.sampled_from(["default", "own", ""])),
        min_size=1,
        max_size=9,
    ),
    fast=st.booleans(),
)
def test_summary_and_samples_are_what_a_plain_record_keeps_across_a_restart(
    tmp_path_factory: Any, hits: list[tuple[str, str, str]], fast: bool
) -> None:
    """The summary is the last one given (the default ``"<rule>: <line[:200]>"``, another, or
    none: the earlier stays), the samples the first ``MAX_SAMPLES`` lines clipped; the same after
    the alerts are stored and loaded again, and in every notification's payload."""
    cfg = rule("e", group_by=("k",))
    book = AlertBook("h", {"e": cfg}, ["hook"])
    book.fast = fast
    model: dict[str, tuple[str, list[str]]] = {}
    told: list[tuple[str, str, list[str]]] = []
    for i, (k, text, how) in enumerate(hits):
        key = f"k={k}"
        summary = {"default": f"e: {text[:200]}", "own": f"own {i}", "": ""}[how]
        s = Signal("e", "error", key, "fire", at(i), {"k": k}, summary, sample=text)
        book.apply([s], at(i))
        if key not in model:  # opens: a firing notice with this hit's summary and sample
            told.append((fingerprint("e", key), summary, [clip_sample(text)]))
        was, samples = model.get(key, ("", []))
        model[key] = (summary or was, [*samples, clip_sample(text)][:MAX_SAMPLES])
    rows, outbox = book.take()
    assert [(o.fingerprint, o.payload["summary"], o.payload["samples"]) for o in outbox] == told
    for key, (summary, samples) in model.items():
        alert = book.alerts[fingerprint("e", key)]
        assert (alert.summary, alert.samples) == (summary, samples)
        assert (alert.to_row()["summary"], alert.to_row()["samples"]) == (summary, samples)
        payload = alert.payload("repeat", "id", at(0))
        assert (payload["summary"], payload["samples"]) == (summary, samples)
    again = _restart(tmp_path_factory.mktemp("s"), rows, cfg)
    assert again.alerts == book.alerts
    for fp, alert in again.alerts.items():
        assert alert.to_row() == book.alerts[fp].to_row()
