"""Rule evaluation of ``detector test`` on its own, and the whole replay beside grep, for two
checkouts at once (``--code DIR``: another checkout's ``detector``, e.g. a ``git worktree`` of
main), interleaved run by run so that a busy machine slows both alike.

``.venv/bin/python bench/bench_eval.py --code ../base`` generates the ``host43`` log of
``workloads.py`` (``--lines``, default 2M; over 2M, the 2M log repeated, as in
``bench_match.py``), then:

1. *evaluation alone*: in a child process per checkout, the replay's blocks are read and matched
   once, then ``replay()`` runs ``--repeat`` times on them; the CPU time spent in
   ``Pipeline.process_texts`` (timestamps, Lines, ``observe``, the alert book, deadlines) is
   the evaluation's, reported as median and minimum;
2. *whole process*: ``grep -c -E -f`` and ``detector test --quiet`` of each checkout (with
   ``--jobs N`` when given: on N CPUs), wall and CPU time (user + sys, children included), and
   the ratio to grep of the same round, as median and range.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_log
import workloads

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import os, statistics, sys, time
from datetime import UTC, datetime
from detector.config import load_config
from detector import pipeline as P
import detector.replay as R
cfg, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = load_config(cfg, dict(os.environ))
serial, cache = R.serial_blocks, {}
def blocks(path, *a, **k):  # matched once, then replayed from memory
    if path not in cache:
        cache[path] = list(serial(path, *a, **k))
    return (b for b in cache[path])
R.serial_blocks = blocks
spent = [0.0]
process_texts = P.Pipeline.process_texts
def timed(self, *a, **k):
    t = time.process_time()
    try:
        return process_texts(self, *a, **k)
    finally:
        spent[0] += time.process_time() - t
P.Pipeline.process_texts = timed
runs = []
for i in range(n + 1):  # the first run reads and matches
    spent[0] = 0.0
    R.replay(config, [(log, R.pick_source(config, log, None))],
             present=datetime(2026, 12, 1, tzinfo=UTC))
    if i:
        runs.append(spent[0])
print(statistics.median(runs), min(runs))
"""


def _evaluation(code: Path, cfg: Path, log: Path, repeat: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cfg), str(log), str(repeat)],
        cwd=code,
        env=dict(os.environ, PYTHONPATH=str(code)),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def _run(argv: list[str], cpus: int, cwd: Path | None = None) -> tuple[float, float]:
    """Wall and CPU seconds (user + sys of the command and its children) of ``argv``."""
    cpu = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cpus])
    env = dict(os.environ, LC_ALL="C")
    if cwd is not None:
        env["PYTHONPATH"] = str(cwd)
    with tempfile.NamedTemporaryFile("r") as f:
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-q", "-f", "%U %S", "-o", f.name, "taskset", "-c", cpu, *argv],
            stdout=subprocess.PIPE,  # not /dev/null: GNU grep would stop at the first match
            env=env,
            cwd=cwd,
            check=False,
        )
        wall = time.perf_counter() - start
        user, sys_ = map(float, f.read().split()[-2:])
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{argv} failed with {proc.returncode}")
    return wall, user + sys_


def _span(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f}× ({min(xs):.2f}–{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--code", type=Path, help="another checkout, measured beside this one")
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=5, help="rounds of each measurement")
    ap.add_argument("--jobs", type=int, default=1, help="detector test --jobs (on as many CPUs)")
    ap.add_argument("--no-eval", action="store_true", help="only the whole-process rounds")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/detector-bench-eval"))
    args = ap.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    w = workloads.WORKLOADS["host43"]
    base = work / f"host43-{min(args.lines, 2_000_000)}.log"
    if not base.exists():
        print(f"generating {base} …", flush=True)
        workloads.generate(base, w, min(args.lines, 2_000_000))
    log = base
    if args.lines > 2_000_000:  # the 2M log k times over, as bench_match.py does
        log = work / f"host43-{args.lines}.log"
        if not log.exists():
            with base.open("rb") as src, log.open("wb") as dst:
                for _ in range(args.lines // 2_000_000):
                    src.seek(0)
                    shutil.copyfileobj(src, dst, 16 << 20)
    cfg = gen_log.write_rules_yaml(work / f"rules-host43-{args.lines}.yaml", log, w.rules)
    pats = workloads.write_patterns(w, work / "host43.pat")
    trees = {"this": ROOT} | ({"--code": args.code.resolve()} if args.code else {})

    if not args.no_eval:
        evals: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(2):  # two children per checkout, interleaved
            for name, code in trees.items():
                evals[name].append(_evaluation(code, cfg, log, args.repeat)[0])
        print(f"\nhost43, {args.lines:,} lines: evaluation alone (CPU s in process_texts)\n")
        for name, xs in evals.items():
            print(f"| {name} | {statistics.median(xs):.3f} s ({min(xs):.3f}–{max(xs):.3f}) |")

    argv = [sys.executable, "-m", "detector", "test", "-c", str(cfg), str(log), "--quiet"]
    argv += ["--no-progress"] + (["--jobs", str(args.jobs)] if args.jobs > 1 else [])
    rounds: dict[str, list[tuple[float, float]]] = {"grep": [], **{n: [] for n in trees}}
    for r in range(args.repeat):
        rounds["grep"].append(_run(workloads.grep_argv(w, pats, log, args.lines), 1))
        names = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in names:
            rounds[name].append(_run(argv, args.jobs, trees[name]))
    grep = rounds["grep"]
    print(f"\nhost43, {args.lines:,} lines, --jobs {args.jobs}, {args.repeat} rounds\n")
    print("| run | wall s | vs grep (wall) | CPU s | vs grep (CPU) |\n|---|---:|---:|---:|---:|")
    for name in trees:
        xs = rounds[name]
        by_wall = [g[0] / x[0] for g, x in zip(grep, xs, strict=True)]
        by_cpu = [g[1] / x[1] for g, x in zip(grep, xs, strict=True)]
        print(
            f"| {name} | {statistics.median(x[0] for x in xs):.2f} | {_span(by_wall)} | "
            f"{statistics.median(x[1] for x in xs):.2f} | {_span(by_cpu)} |"
        )
    g_wall, g_cpu = statistics.median(g[0] for g in grep), statistics.median(g[1] for g in grep)
    print(f"| grep | {g_wall:.2f} | | {g_cpu:.2f} | |")


if __name__ == "__main__":
    main()
