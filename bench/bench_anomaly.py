"""Benchmark of the ``anomaly`` rules on real and synthetic data (prints markdown tables).

1. New kinds of lines, on the Loghub 2k samples (real logs with ground-truth templates per line):
   learn online on the first 1,000 raw lines of each dataset, then run the second 1,000 and compare
   the lines put in a template created after learning with the truth (a line is truly new if its
   ground-truth template never occurred in the first half). Our miner runs next to ``drain3`` with
   default settings on the same raw lines, in the same run. Then the grouping accuracy (Loghub's
   metric) of both on the full 2k, and the mining speed.
2. Rate bursts and drops, on a synthetic week-long stream with daily seasonality and injected
   incidents, through the real ``RateEvaluator`` with time passed in: precision, recall and delay.

Run: ``.venv/bin/python bench/bench_anomaly.py [--content] [--original]``; ``--content`` mines the
ground-truth Content column instead of raw lines (the setting of published results), ``--original``
scores against the original rather than the corrected Loghub labels.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drain3 import TemplateMiner as Drain3Miner
from drain3.template_miner_config import TemplateMinerConfig

from detector.model import AnomalyNewSpec, AnomalyRateSpec, RuleConfig
from detector.rules.anomaly_new import NewKindEvaluator
from detector.rules.anomaly_rate import RateEvaluator, _Ewma, _RateKey
from detector.rules.base import Signal, When
from detector.sources.base import Line
from detector.templates import TemplateMiner

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
LOGHUB = TESTDATA / "loghub"
HALF = 1000


@dataclass(frozen=True)
class Dataset:
    name: str
    raw: list[str]
    content: list[str]
    truth: list[str]  # ground-truth event id per line


def load(name: str, original: bool) -> Dataset:
    raw = (LOGHUB / "2k" / name / f"{name}_2k.log").read_text(errors="replace").splitlines()
    if original:
        structured = LOGHUB / "2k" / name / f"{name}_2k.log_structured.csv"
    else:
        structured = LOGHUB / "2k_corrected" / name / f"{name}_2k.log_structured_corrected.csv"
    with structured.open(newline="", errors="replace") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(raw), (name, len(rows), len(raw))
    return Dataset(
        name, raw, [r["Content"] for r in rows], [r["EventTemplate"] or r["EventId"] for r in rows]
    )


# ---------------------------------------------------------------- the two miners

Miner = Callable[[], Callable[[str], str]]  # a factory of "line -> cluster id" functions


def ours() -> Callable[[str], str]:
    miner = TemplateMiner()
    return lambda line: miner.add(line).template.id


def drain3_default() -> Callable[[str], str]:
    miner = Drain3Miner(config=TemplateMinerConfig())  # the defaults, without looking for an ini
    return lambda line: str(miner.add_log_message(line)["cluster_id"])


MINERS: dict[str, Miner] = {"ours": ours, "drain3": drain3_default}


# ---------------------------------------------------------------- metrics


def grouping_accuracy(pred: Sequence[str], truth: Sequence[str]) -> float:
    """Loghub's GA: a line counts if its cluster holds exactly the lines of its true template."""
    by_pred: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pred):
        by_pred[p].append(i)
    truth_sizes = Counter(truth)
    good = 0
    for ids in by_pred.values():
        events = {truth[i] for i in ids}
        if len(events) == 1 and truth_sizes[truth[ids[0]]] == len(ids):
            good += len(ids)
    return good / len(truth)


def prf(flagged: Sequence[bool], truly: Sequence[bool]) -> tuple[float, float, float]:
    tp = sum(f and t for f, t in zip(flagged, truly, strict=True))
    fp = sum(f and not t for f, t in zip(flagged, truly, strict=True))
    fn = sum(t and not f for f, t in zip(flagged, truly, strict=True))
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f1


@dataclass
class Score:
    p: float
    r: float
    f1: float
    ga: float
    seconds: float
    lines: int


def evaluate(make: Miner, ds: Dataset, lines: Sequence[str]) -> Score:
    assign = make()
    t0 = time.perf_counter()
    pred = [assign(line) for line in lines]
    seconds = time.perf_counter() - t0
    learned = set(pred[:HALF])
    seen_truth = set(ds.truth[:HALF])
    flagged = [p not in learned for p in pred[HALF:]]
    truly = [t not in seen_truth for t in ds.truth[HALF:]]
    p, r, f1 = prf(flagged, truly)
    return Score(p, r, f1, grouping_accuracy(pred, ds.truth), seconds, len(lines))


def new_kind_tables(content: bool, original: bool) -> None:
    names = sorted(p.name for p in (LOGHUB / "2k").iterdir() if p.is_dir())
    scores: dict[str, dict[str, Score]] = {m: {} for m in MINERS}
    truly_new: dict[str, int] = {}
    for name in names:
        ds = load(name, original)
        lines = ds.content if content else ds.raw
        seen = set(ds.truth[:HALF])
        truly_new[name] = sum(t not in seen for t in ds.truth[HALF:])
        for m, make in MINERS.items():
            scores[m][name] = evaluate(make, ds, lines)
    what = "Content column" if content else "raw lines (headers included)"
    labels = "original" if original else "corrected"
    print(f"\n### New kinds of lines: Loghub 2k, {what}, {labels} labels\n")
    print("Learn on lines 1-1000, flag lines 1001-2000 put in a template created after learning.\n")
    print(
        "| dataset | truly new lines | ours P | ours R | ours F1 "
        "| drain3 P | drain3 R | drain3 F1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        o, d = scores["ours"][name], scores["drain3"][name]
        print(
            f"| {name} | {truly_new[name]} | {o.p:.3f} | {o.r:.3f} | {o.f1:.3f} "
            f"| {d.p:.3f} | {d.r:.3f} | {d.f1:.3f} |"
        )

    def avg(m: str, attr: str) -> float:
        return sum(float(getattr(s, attr)) for s in scores[m].values()) / len(names)

    print(
        f"| **average** | | {avg('ours', 'p'):.3f} | {avg('ours', 'r'):.3f} "
        f"| **{avg('ours', 'f1'):.3f}** | {avg('drain3', 'p'):.3f} | {avg('drain3', 'r'):.3f} "
        f"| **{avg('drain3', 'f1'):.3f}** |"
    )
    print(f"\n### Grouping accuracy (Loghub GA) on the full 2k, {what}, {labels} labels\n")
    print("| dataset | ours GA | drain3 GA |")
    print("|---|---:|---:|")
    for name in names:
        print(f"| {name} | {scores['ours'][name].ga:.3f} | {scores['drain3'][name].ga:.3f} |")
    print(f"| **average** | **{avg('ours', 'ga'):.3f}** | **{avg('drain3', 'ga'):.3f}** |")
    print(f"\n### Mining speed ({what}, all datasets, one core, same run)\n")
    print("| miner | lines/s |")
    print("|---|---:|")
    notes = {"ours": "ours (with masking)", "drain3": "drain3 defaults (no masking)"}
    for m in MINERS:
        n = sum(s.lines for s in scores[m].values())
        secs = sum(s.seconds for s in scores[m].values())
        print(f"| {notes[m]} | {n / secs:,.0f} |")
    per_dataset = [ds.content if content else ds.raw for ds in (load(n, original) for n in names)]
    print(f"| `anomaly: new` evaluator, end to end | {evaluator_speed(per_dataset):,.0f} |")


def evaluator_speed(datasets: Sequence[Sequence[str]]) -> float:
    """Lines/s through NewKindEvaluator.observe_line (mining, counts, alerts, state changes every
    500 lines), one evaluator per dataset learning on its first 1,000 lines."""
    spec = AnomalyNewSpec(learn=None, learn_lines=HALF, max_alerts_per_hour=10**9)
    rule = RuleConfig(name="new", kind="anomaly_new", sources=("s",), anomaly_new=spec)
    w = When.exact(datetime(2026, 1, 5, 1, tzinfo=UTC))
    n = 0
    seconds = 0.0
    for texts in datasets:
        e = NewKindEvaluator(rule, datetime(2026, 1, 5, tzinfo=UTC))
        lines = [Line(source="s", text=t) for t in texts]
        started = time.perf_counter()
        for i, line in enumerate(lines):
            e.observe_line(line, w)
            if i % 500 == 0:
                e.state_changes()
        seconds += time.perf_counter() - started
        n += len(lines)
    return n / seconds


# ---------------------------------------------------------------- rate anomalies


@dataclass(frozen=True)
class Incident:
    kind: str  # "burst" | "drop"
    start: int  # bucket index
    length: int  # buckets
    factor: float


def synthetic_stream(days: int, seed: int) -> tuple[list[int], list[Incident]]:
    """Per-minute counts: a daily cycle (quiet nights, busy days, a lunchtime peak 12-13 UTC),
    Poisson-like noise, and incidents injected after the first (learning) day."""
    rnd = random.Random(seed)
    minutes = days * 1440
    base = []
    for m in range(minutes):
        hour = (m % 1440) / 60
        rate = 60 + 140 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) if 6 <= hour < 20 else 60
        if 12 <= hour < 13:
            rate *= 2.5  # the usual daily peak
        base.append(rate)
    incidents: list[Incident] = []
    m = 1440 + rnd.randrange(60, 600)
    while m < minutes - 120:
        kind = rnd.choice(["burst", "drop"])
        factor = rnd.choice([3.0, 5.0, 10.0]) if kind == "burst" else rnd.choice([0.0, 0.1, 0.3])
        inc = Incident(kind, m, rnd.randrange(5, 40), factor)
        incidents.append(inc)
        m += inc.length + rnd.randrange(300, 900)
    for inc in incidents:
        for i in range(inc.start, inc.start + inc.length):
            base[i] *= inc.factor
    counts = [max(0, round(rnd.gauss(lam, math.sqrt(lam)))) if lam > 0 else 0 for lam in base]
    return counts, incidents


class RecentOnly(RateEvaluator):
    """The same evaluator without the hour-of-day baseline (what seasonality buys)."""

    def _baseline(self, k: _RateKey, start: datetime) -> tuple[_Ewma, str]:
        return k.overall, "recent"


def run_rate(cls: type[RateEvaluator], counts: list[int]) -> tuple[list[Signal], float]:
    t0 = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday, 00:00
    spec = AnomalyRateSpec(bucket=timedelta(minutes=1), learn=timedelta(days=1))
    rule = RuleConfig(name="rate", kind="anomaly_rate", sources=("s",), anomaly_rate=spec)
    e = cls(rule, t0)
    line = Line(source="s", text="x")
    signals: list[Signal] = []
    started = time.perf_counter()
    for n in counts:
        deadline = e.next_deadline()
        assert deadline is not None
        w = When.exact(deadline - spec.bucket)
        for _ in range(n):
            e.observe_line(line, w)
        signals += e.due(deadline)
    return signals, sum(counts) / (time.perf_counter() - started)


def rate_table(days: int = 8, seeds: Sequence[int] = (1, 2, 3)) -> None:
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    print(
        f"\n### Rate anomalies: synthetic {days}-day streams (1-min buckets, seeds {list(seeds)})\n"
    )
    print(
        "Daily cycle 60-200 lines/min with a 2.5x lunchtime peak; bursts x3/x5/x10 and drops to "
        "0/10%/30% lasting 5-39 min, injected after day 1 (learning). Defaults: sensitivity 4, "
        "for 2 buckets, min delta 10. A fire counts if it falls inside an incident (or within 2 "
        "buckets after it); delay is from incident start to the fire.\n"
    )
    print(
        "| baseline | incidents | recall (burst) | recall (drop) | precision | false alerts/day "
        "| median delay | lines/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, cls in (
        ("seasonal + recent (ours)", RateEvaluator),
        ("recent EWMA only", RecentOnly),
    ):
        found = {"burst": 0, "drop": 0}
        total = {"burst": 0, "drop": 0}
        tp = fp = 0
        delays: list[float] = []
        speed = []
        for seed in seeds:
            counts, incidents = synthetic_stream(days, seed)
            signals, lps = run_rate(cls, counts)
            speed.append(lps)
            fires = [s for s in signals if s.action == "fire"]
            hit_incidents: set[int] = set()
            for s in fires:
                minute = int((s.at - t0).total_seconds() // 60)
                match = [
                    i
                    for i, inc in enumerate(incidents)
                    if inc.start < minute <= inc.start + inc.length + 2
                ]
                if match:
                    tp += 1
                    if match[0] not in hit_incidents:
                        hit_incidents.add(match[0])
                        delays.append(minute - incidents[match[0]].start)
                else:
                    fp += 1
            for i, inc in enumerate(incidents):
                total[inc.kind] += 1
                found[inc.kind] += i in hit_incidents
        delays.sort()
        median = delays[len(delays) // 2] if delays else float("nan")
        n_inc = total["burst"] + total["drop"]
        print(
            f"| {name} | {n_inc} | {found['burst'] / total['burst']:.2f} "
            f"| {found['drop'] / total['drop']:.2f} | {tp / max(tp + fp, 1):.2f} "
            f"| {fp / (len(seeds) * (days - 1)):.2f} | {median:.0f} min | {min(speed):,.0f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--content", action="store_true")
    ap.add_argument("--original", action="store_true")
    ap.add_argument("--no-rate", action="store_true")
    args = ap.parse_args()
    new_kind_tables(args.content, args.original)
    if not args.no_rate:
        rate_table()


if __name__ == "__main__":
    main()
