"""``Matcher.warm`` with several workers (plain threads, ``Matcher._build_all``): the same
databases and matches as one at a time, every source built once, and a source that cannot be
built (here: ``cancelled`` says stop) raises in the caller once every source was tried."""

from __future__ import annotations

import threading

import pytest

from detector.matching.engine import CompileCancelled, Matcher, PatternSpec

SOURCES = [f"s{i}" for i in range(5)]
LINES = [f"ERROR {s} {n}" for s in SOURCES for n in (1, 22)] + ["INFO fine", "ERROR nobody"]


def specs() -> list[PatternSpec]:
    return [PatternSpec(f"r-{s}", "match", rf"ERROR {s} (?P<n>\d+)", (s,)) for s in SOURCES]


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_several_workers_build_what_one_builds(workers: int) -> None:
    alone, together = Matcher(specs()), Matcher(specs())
    alone.warm(SOURCES)
    together.warm(SOURCES, workers=workers)
    assert sorted(together.stage) == SOURCES == sorted(together.build_s)
    for s in SOURCES:
        assert together.match(s, LINES) == alone.match(s, LINES)
        assert [h.rule for h in together.match(s, LINES)] == [f"r-{s}", f"r-{s}"]


def test_a_failed_build_is_raised_once_every_source_was_tried() -> None:
    asked: list[str] = []
    lock = threading.Lock()

    def cancelled() -> bool:  # asked once per source before its build
        with lock:
            asked.append(threading.current_thread().name)
            return len(asked) >= 2

    matcher = Matcher(specs())
    with pytest.raises(CompileCancelled):
        matcher.warm(SOURCES, workers=2, cancelled=cancelled)
    assert len(asked) == len(SOURCES)  # each source once, by the workers' threads
    assert threading.current_thread().name not in asked
    assert matcher.stage == {}  # nothing half-installed
