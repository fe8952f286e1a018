"""Benchmark (in-process part): what 10,000 heartbeat rules cost the agent.

Measures, for N heartbeat evaluators built the way the pipeline builds them: memory (tracemalloc),
the cost of one observed match, and the cost of an *idle* scheduling round — the work the service
does when it wakes and nothing is due — done two ways: asking every evaluator for its
``next_deadline()`` (what ``Pipeline.next_deadline``/``tick`` do today), and popping a
``DeadlineHeap`` of rule names (``detector.schedule``). Also a round where every rule fires.

    .venv/bin/python bench/bench_silence.py [--rules 10000] [--keys 0]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from detector.matching import Hit
from detector.model import HeartbeatSpec, RuleConfig
from detector.rules.base import When
from detector.rules.heartbeat import HeartbeatEvaluator
from detector.schedule import DeadlineHeap
from detector.sources.base import Line

T0 = datetime(2026, 1, 10, 10, 0, tzinfo=UTC)


def build(n: int, keys: int) -> list[HeartbeatEvaluator]:
    out = []
    for i in range(n):
        spec = HeartbeatSpec(
            every=timedelta(minutes=5) + timedelta(seconds=i % 600),
            grace=timedelta(minutes=1),
            by="job" if keys else None,
            keys=tuple(f"j{k}" for k in range(keys)),
        )
        rule = RuleConfig(
            name=f"alive-{i}", kind="heartbeat", sources=("s",), match=f"app{i}", heartbeat=spec
        )
        out.append(HeartbeatEvaluator(rule, T0))
    return out


def per_round(fn: Callable[[], None], rounds: int) -> float:
    t = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - t) / rounds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--keys", type=int, default=0, help="expected `by:` keys per rule (0: unkeyed)")
    args = ap.parse_args()
    n = args.rules

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    evs = build(n, args.keys)
    for ev in evs:
        ev.state_changes()
    mem = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()

    line = Line("s", "app alive")
    at = T0 + timedelta(seconds=30)
    hits = [Hit(0, ev.rule.name, "match", {"job": "j0"}) for ev in evs]
    t = time.perf_counter()
    for ev, h in zip(evs, hits, strict=True):
        ev.observe(h, line, When.exact(at))
    observe_us = (time.perf_counter() - t) / n * 1e6

    idle_now = T0 + timedelta(minutes=2)

    def scan() -> None:  # what the pipeline does today on each wake-up
        for ev in evs:
            d = ev.next_deadline()
            if d is not None and d <= idle_now:
                ev.due(idle_now)

    heap = DeadlineHeap()
    by_name = {ev.rule.name: ev for ev in evs}
    for ev in evs:
        heap.push(ev.rule.name, ev.next_deadline())

    def heap_round() -> None:
        for name in heap.pop_due(idle_now):
            e = by_name[name]
            e.due(idle_now)
            heap.push(name, e.next_deadline())

    scan_ms = per_round(scan, 20) * 1e3
    heap_us = per_round(heap_round, 1000) * 1e6

    late = T0 + timedelta(hours=1)
    t = time.perf_counter()
    fired = 0
    for name in heap.pop_due(late):
        e = by_name[name]
        fired += len(e.due(late))
        heap.push(name, e.next_deadline())
    fire_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    changed = sum(len(ev.state_changes()) for ev in evs)
    state_ms = (time.perf_counter() - t) * 1e3

    print(f"heartbeat rules: {n} (keys per rule: {args.keys or 'unkeyed'})")
    print(f"memory (evaluators + configs): {mem / 1e6:.1f} MB = {mem / n:.0f} B/rule")
    print(f"observe one match: {observe_us:.2f} us")
    print(f"idle round, scan all next_deadline(): {scan_ms:.2f} ms")
    print(f"idle round, DeadlineHeap.pop_due(): {heap_us:.2f} us")
    print(f"round where all fire: {fire_ms:.1f} ms for {fired} signals")
    print(f"state_changes after it: {state_ms:.1f} ms for {changed} keys")


if __name__ == "__main__":
    main()
