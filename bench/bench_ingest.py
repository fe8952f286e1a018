"""Benchmark: the live agent's ingest path — tail a file from its beginning, match, commit.

Runs ``detector run`` (one CPU, via taskset) on the bench logs of ``bench_match.py`` (dense: ~39 %
of lines match; quiet: ~1 %) with its ~40 rules and ``start_at: beginning``, and measures the time
until the agent has committed a read position at the end of the file (read → match → evaluate →
one SQLite transaction per batch). ``grep -c -E -f`` and ripgrep on the same file and rule set run
in the same process tree for the ratio.

    .venv/bin/python bench/bench_ingest.py [--lines 1000000] [--profile dense|quiet|all]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_log  # the bench's own generator, next to this file

ROOT = Path(__file__).resolve().parents[1]


def committed_offset(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("SELECT value FROM checkpoints").fetchall()
        con.close()
    except sqlite3.Error:
        return 0
    return max((json.loads(v).get("offset", 0) for (v,) in rows), default=0)


def ingest(args: argparse.Namespace, profile: str) -> None:
    log = args.workdir / f"ingest-{profile}-{args.lines}.log"
    if not log.exists():
        gen_log.generate(log, args.lines, profile=profile)
    size = log.stat().st_size
    ere = args.workdir / "rules.ere"
    ere.write_text("\n".join(gen_log.to_ere(r) for _, r in gen_log.RULES) + "\n")
    cpu = str(min(os.sched_getaffinity(0)))

    baselines: list[tuple[str, float]] = []
    for name, argv in (
        ("grep -c -E -f (C)", ["grep", "-c", "-E", "-f", str(ere), str(log)]),
        ("ripgrep -c -f (1 thread)", ["rg", "-j1", "-c", "-f", str(ere), str(log)]),
    ):
        if not shutil.which(argv[0]):
            print(f"{argv[0]} not installed (scripts/system-deps installs it): no row")
            continue
        start = time.perf_counter()
        subprocess.run(
            ["taskset", "-c", cpu, *argv],
            env={**os.environ, "LC_ALL": "C"},
            capture_output=True,
            check=False,
        )
        baselines.append((name, time.perf_counter() - start))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "rules.yaml"
        gen_log.write_rules_yaml(cfg, log, gen_log.RULES)
        state = Path(tmp) / "state.db"
        cfg.write_text(
            cfg.read_text().replace("version: 1\n", f"version: 1\nagent: {{state: {state}}}\n")
        )
        start = time.perf_counter()
        agent = subprocess.Popen(
            ["taskset", "-c", cpu, sys.executable, "-m", "detector", "run", "-c", str(cfg)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        try:
            # the last line of the log has no newline when the generator cuts; count to the last \n
            with log.open("rb") as f:
                f.seek(max(0, size - 65536))
                tail = f.read()
            target = size - (len(tail) - tail.rfind(b"\n") - 1)
            while committed_offset(state) < target:
                time.sleep(0.05)
                if agent.poll() is not None:
                    raise SystemExit("the agent exited")
            ingest_s = time.perf_counter() - start
        finally:
            agent.terminate()
            agent.wait(timeout=30)
    grep_s = baselines[0][1]
    print(f"\nlive ingest of {args.lines:,} {profile} lines ({size / 1e6:.0f} MB), one CPU each:\n")
    print(f"| {profile} log | seconds | lines/s | vs grep |")
    print("|---|---:|---:|---:|")
    for name, seconds in baselines:
        print(f"| {name} | {seconds:.2f} | {args.lines / seconds:,.0f} | {grep_s / seconds:.2f}× |")
    print(
        f"| detector run (start_at: beginning, incl. start-up) | {ingest_s:.2f} | "
        f"{args.lines / ingest_s:,.0f} | {grep_s / ingest_s:.2f}× |",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/detector-bench"))
    ap.add_argument("--profile", choices=[*gen_log.PROFILES, "all"], default="all")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # byte-compiled as pip does at install time (see bench_match.py)
    compileall.compile_dir(ROOT / "detector", quiet=1)
    for profile in gen_log.PROFILES if args.profile == "all" else (args.profile,):
        ingest(args, profile)


if __name__ == "__main__":
    main()
