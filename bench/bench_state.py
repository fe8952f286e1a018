"""Benchmark of the state that grows with the work (issue 20.6): prints figures and ratios.

Runs the real pipeline and a real SQLite state file in-process, one batch per read (1,000 lines,
one arrival time each, committed like the agent does), with time passed in:

1. threshold ingest: one rule on every line, without a threshold and with ``count`` 1, 100,
   100k and 1M (``within: 1h``): lines/s and the ratio to the plain rule (target ≤ 1.5x slower);
2. RSS with 20k and 100k distinct ``group_by`` values (open error alerts, ``max_keys`` raised
   above them, and at the default 10,000), measured in a fresh process before and after a restart
   (a second process loading the same state file); target < 100 MB;
3. peak RSS while ingesting with 200 rules (target ≤ 60 MB).

Run: ``.venv/bin/python bench/bench_state.py [--quick]``. Each figure comes from its own child
process (``--child``), so that one measurement's memory does not inflate the next.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.config.load import parse_config
from detector.pipeline import Pipeline
from detector.rules.base import When
from detector.sources.base import Line
from detector.store.db import Store, alert_rows, release_memory
from detector.store.runs import all_rule_state

T0 = datetime(2026, 3, 1, tzinfo=UTC)
BATCH = 1000


def _rss_mb(field: str = "VmRSS") -> float:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1]) / 1024
    return 0.0


def _config(rules: str, state: Path) -> Any:
    text = f"""
agent: {{state: {state}}}
webhooks: {{hook: {{url: "http://127.0.0.1:9/"}}}}
sources: {{s: {{file: /var/log/bench.log}}}}
rules:
{rules}
"""
    return parse_config(text, "bench.yaml")


def _run(config: Any, state: Path, lines: list[list[str]]) -> tuple[float, Pipeline]:
    """Feed the batches through a pipeline on the state file; CPU seconds taken (a busy shared
    machine stretches wall time, not this), and the pipeline
    (whose memory is what a measurement of the state's memory must see alive)."""
    store = Store(state)
    store.migrate()
    states = all_rule_state(store)
    rows = alert_rows(store.load_alert_chunks())  # as the service loads them
    pipeline = Pipeline(config, T0, lambda r: states.get(r, {}), rows)
    states.clear()
    release_memory()  # as the service does once the state is loaded
    pipeline.warm()
    start = time.process_time()  # CPU time: the work is all on this thread (SQLite's too)
    for i, batch in enumerate(lines):
        now = T0 + timedelta(seconds=i * 0.5)
        commit = pipeline.process_texts("s", batch, _line_at(batch), _at(When.exact(now)), now)
        store.commit(commit, now)
    took = time.process_time() - start
    store.close()
    return took, pipeline


def _at(when: When) -> Any:
    return lambda _line: when


def _line_at(batch: list[str]) -> Any:
    return lambda i: Line("s", batch[i])


def child_ingest(count: int, n_lines: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        rule = '  - {name: r, source: s, match: "login failed for (?P<ip>\\\\S+)"'
        if count:
            rule += f", threshold: {{count: {count}, within: 1h}}"
        config = _config(rule + "}", state)
        batches = [
            [f"login failed for 10.0.0.{j % 7}" for j in range(BATCH)]
            for _ in range(n_lines // BATCH)
        ]
        took, _ = _run(config, state, batches)
        return {"lines_per_s": n_lines / took, "state_mb": state.stat().st_size / 2**20}


def child_keys(keys: int, max_keys: int | None, phase: str, state: Path) -> dict[str, float]:
    cap = "" if max_keys is None else f", max_keys: {max_keys}"
    rule = (
        '  - {name: r, source: s, match: "login failed for (?P<ip>\\\\S+)", '
        f"group_by: [ip], resolve_after: 1d{cap}}}"
    )
    config = _config(rule, state)
    batches: list[list[str]] = []
    if phase == "before":
        batches = [
            [
                f"login failed for 10.{k >> 16}.{(k >> 8) & 255}.{k & 255}"
                for k in range(s, s + BATCH)
            ]
            for s in range(0, keys, BATCH)
        ]
    _, pipeline = _run(config, state, batches)
    del batches
    rss = _rss_mb()  # with the pipeline, and so the keys' state, alive
    return {"rss_mb": rss, "alerts": len(pipeline.alerts.alerts)}


def child_rules(n_rules: int, n_lines: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        rules = "\n".join(
            f'  - {{name: r{i}, source: s, match: "event{i} (?P<ip>\\\\S+) failed"}}'
            for i in range(n_rules)
        )
        config = _config(rules, state)
        batches = [
            [f"event{(b * BATCH + j) % (n_rules * 5)} 10.0.0.{j % 9} failed" for j in range(BATCH)]
            for b in range(n_lines // BATCH)
        ]
        _run(config, state, batches)
        return {"peak_rss_mb": _rss_mb("VmHWM")}


def _span(values: list[float], fmt: str) -> str:
    lo, hi, mid = min(values), max(values), statistics.median(values)
    if format(lo, fmt) == format(hi, fmt):
        return format(mid, fmt)
    return f"{mid:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def _child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer lines, for a smoke run")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the ingest runs")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "ingest":
            r = child_ingest(int(rest[0]), int(rest[1]))
        elif kind == "keys":
            cap = None if rest[1] == "none" else int(rest[1])
            r = child_keys(int(rest[0]), cap, rest[2], Path(rest[3]))
        else:
            r = child_rules(int(rest[0]), int(rest[1]))
        print(json.dumps(r))
        return
    n = 200_000 if a.quick else 1_000_000
    counts = (0, 1, 100, 100_000, 1_000_000)
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in counts}
    for _ in range(a.repeat):  # interleaved: a busy machine slows every rule of a round alike
        for count in counts:
            runs[count].append(_child("ingest", str(count), str(n)))
    print(
        f"## Threshold ingest ({n:,} lines, one rule on every line; {a.repeat} interleaved "
        "rounds, lines per CPU second: median (range); each ratio pairs a round with its plain "
        "rule)\n"
    )
    print("| rule | lines/s | vs plain | state file |")
    print("|---|---:|---:|---:|")
    plain = [r["lines_per_s"] for r in runs[0]]
    for count in counts:
        rates = [r["lines_per_s"] for r in runs[count]]
        ratios = [p / r for p, r in zip(plain, rates, strict=True)]
        name = "plain match" if not count else f"threshold count {count:,}"
        print(
            f"| {name} | {_span(rates, ',.0f')} | {_span(ratios, '.2f')}x slower "
            f"| {runs[count][-1]['state_mb']:.2f} MB |"
        )
    print("\n## RSS with distinct group_by values (open error alerts)\n")
    print("| keys | max_keys | RSS before | RSS after restart | after / before |")
    print("|---:|---:|---:|---:|---:|")
    for keys in (20_000, 100_000):
        for cap in (str(keys + 1), "10000"):
            with tempfile.TemporaryDirectory() as tmp:
                state = str(Path(tmp) / "state.db")
                before = _child("keys", str(keys), cap, "before", state)["rss_mb"]
                after = _child("keys", str(keys), cap, "after", state)["rss_mb"]
            print(
                f"| {keys:,} | {int(cap):,} | {before:.0f} MB | {after:.0f} MB "
                f"| {after / before:.2f} |"
            )
    print("\n## Peak RSS while ingesting\n")
    one = _child("rules", "1", str(n // 4))["peak_rss_mb"]
    many = _child("rules", "200", str(n // 4))["peak_rss_mb"]
    print(f"1 rule: {one:.0f} MB; 200 rules: {many:.0f} MB ({many / one:.2f}x)")


if __name__ == "__main__":
    main()
