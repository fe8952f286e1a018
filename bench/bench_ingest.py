"""Benchmark: the live agent's ingest path — tail a file, match, evaluate, commit.

Runs ``detector run`` (one CPU, via taskset) on the bench logs of ``bench_match.py`` (dense: ~39 %
of lines match; quiet: ~1 %) with its ~40 rules, and measures the time until the agent has
committed a read position at the end of the file (read → match → evaluate → one SQLite
transaction per batch), two ways:

* **steady state**: the agent is up and ready (its start-up is measured on its own), then the log
  appears in the directory it watches (a hard link, so no copying is timed) and is read from its
  beginning, as a new file is. That is the ingest throughput of a running agent.
* **cold**: the agent starts with ``start_at: beginning`` on the existing log; start-up included.

``grep -c -E -f`` and ripgrep on the same file and rule set run in the same process tree for the
ratio.

``--multiline`` adds the ``multiline:`` workload: the same log with a 7-line Python traceback
after every 20th line, read steady state by a plain source and by a ``multiline: {start: …}``
source (one event per log line and its traceback), in lines/s each.

    .venv/bin/python bench/bench_ingest.py [--lines 2000000] [--profile dense|quiet|all]
        [--workload host43,f2b150,simple|all] [--multiline] [--repeat 3] [--rss-rules 200]
        [--code OTHER_CHECKOUT]

``--workload`` runs the same on ``workloads.py``'s rule sets and logs, beside bench_match.py's
grep and ripgrep commands for them (``grep -c -E -f``, or the ``grep -v -P`` pipeline of
``f2b150``); ``--code`` runs another checkout's agent beside this one's, interleaved.

Each command runs ``--repeat`` times, interleaved; printed are the median and the range of the
seconds and of the ratios to grep (each run paired with its repeat's grep), by wall time and by
CPU time of the process (``/proc/PID/stat`` for the agent, ``getrusage`` for grep: the steadier
figure on a shared machine), the agent's system seconds and minor page faults (the memory of
its reads given back and faulted in again shows there), and its peak RSS (``VmHWM``), also for a
steady run at ``--rss-rules`` rules (``gen_log.rules``: the realistic rules padded with service
rules).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_log  # the bench's own generator, next to this file
import workloads

ROOT = Path(__file__).resolve().parents[1]


def committed_offset(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = con.execute("SELECT value FROM checkpoints").fetchall()
        con.close()
    except sqlite3.Error:
        return 0
    return max((json.loads(v).get("offset", 0) for (v,) in rows), default=0)


@dataclass
class Case:
    """One workload: a log, its rules, and the grep commands to compare with (the first is the
    baseline of the ratios)."""

    label: str
    log: Path
    lines: int
    rules: list[tuple[str, str]]
    greps: list[tuple[str, list[str]]]
    rss_rules: bool = True
    """Also a steady run at ``--rss-rules`` rules (gen_log's padded set: the gen_log profiles)."""


def profile_case(args: argparse.Namespace, profile: str) -> Case:
    log = args.workdir / f"ingest-{profile}-{args.lines}.log"
    if not log.exists():
        gen_log.generate(log, args.lines, profile=profile)
    ere = args.workdir / "rules.ere"
    ere.write_text("\n".join(gen_log.to_ere(r) for _, r in gen_log.RULES) + "\n")
    greps = [
        ("grep -c -E -f (C)", ["grep", "-c", "-E", "-f", str(ere), str(log)]),
        ("ripgrep -c -f (1 thread)", ["rg", "-j1", "-c", "-f", str(ere), str(log)]),
    ]
    return Case(profile, log, args.lines, gen_log.RULES, greps)


def workload_case(args: argparse.Namespace, name: str) -> Case:
    """``workloads.py``'s ``name`` at ``--lines``, with bench_match's grep and ripgrep commands
    (``grep -c -E -f``, or for the PCRE rule sets the ``grep -v -P`` pipeline)."""
    w = workloads.WORKLOADS[name]
    log = args.workdir / f"{w.name}-{args.lines}.log"  # the file bench_match.py writes
    if not log.exists():
        print(f"generating {log} …", flush=True)
        workloads.generate(log, w, args.lines)
    pats = workloads.write_patterns(w, args.workdir / f"{w.name}.pat")
    pcre = w.grep == "pcre"
    greps = [
        (
            f"grep -c ({'-P, pipeline' if pcre else '-E -f'}, C)",
            workloads.grep_argv(w, pats, log, args.lines),
        ),
        (
            "ripgrep (1 thread)" + (" -P, pipeline" if pcre else ""),
            workloads.rg_argv(w, pats, log, args.lines),
        ),
    ]
    return Case(w.name, log, args.lines, w.rules, greps, rss_rules=False)


def ingest(args: argparse.Namespace, case: Case) -> None:
    log = case.log
    size = log.stat().st_size
    cpu = str(min(os.sched_getaffinity(0)))
    codes: list[tuple[str, Path]] = [("", ROOT)]
    if args.code is not None:  # another checkout beside this one: before / after, paired
        codes = [(" [--code]", args.code.resolve()), (" [this]", ROOT)]

    target = _last_newline_end(log)
    rows: dict[str, list[Run]] = {}
    grep_name = case.greps[0][0]
    for _ in range(args.repeat):  # interleaved: each repeat runs every command once
        for name, argv in case.greps:
            tool = "rg" if name.startswith("ripgrep") else "grep"
            if not shutil.which(tool):
                print(f"{tool} not installed (scripts/system-deps installs it): no row")
                continue
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(
                ["taskset", "-c", cpu, *argv],
                env={**os.environ, "LC_ALL": "C"},
                capture_output=True,
                check=False,
            )
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            rows.setdefault(name, []).append(Run(wall, used, 0.0))
        with tempfile.TemporaryDirectory() as tmp:
            runs: list[tuple[str, int | None, bool]] = [
                ("detector run, steady state (the log appears while the agent runs)", None, False),
                ("detector run, cold (start_at: beginning, start-up included)", None, True),
            ]
            if case.rss_rules and args.rss_rules:
                runs.append(
                    (f"detector run, steady state, {args.rss_rules} rules", args.rss_rules, False)
                )
            for name, rules, cold in runs:
                for suffix, code in codes:
                    home = Path(tmp) / f"run{len(list(Path(tmp).iterdir()))}"
                    watched = home.parent / f"{home.name}-in"
                    watched.mkdir()
                    run = _run_agent(  # cold: the log is there at start; else it arrives
                        home,
                        cpu,
                        log if cold else watched / "*.log",
                        target,
                        arrive=None if cold else (log, watched / log.name),
                        rules=case.rules if rules is None else gen_log.rules(rules),
                        code=code,
                    )
                    rows.setdefault(name + suffix, []).append(run)
    grep = rows[grep_name]
    print(
        f"\nlive ingest of {case.lines:,} {case.label} lines ({size / 1e6:.0f} MB, "
        f"{len(case.rules)} rules), one CPU each, "
        f"{args.repeat} interleaved run(s): median (range); the ratios pair each run with the "
        "grep of its own repeat (wall time, and CPU time of the process):\n"
    )
    print(
        f"| {case.label} log | seconds | lines/s | vs grep (wall) | vs grep (CPU) | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in rows.items():
        walls = [r.wall_s for r in runs]
        rates = [case.lines / w for w in walls]
        by_wall = [g.wall_s / r.wall_s for g, r in zip(grep, runs, strict=False)]
        by_cpu = [g.cpu_s / r.cpu_s for g, r in zip(grep, runs, strict=False) if r.cpu_s]
        rss = [r.peak_mb for r in runs if r.peak_mb]
        print(
            f"| {name} | {_span(walls, '.2f')} | {_span(rates, ',.0f')} "
            f"| {_span(by_wall, '.2f')}x | {_span(by_cpu, '.2f')}x "
            f"| {_span(rss, '.0f') if rss else '-'} |"
        )
    print("\nCPU seconds, median (range): " + "; ".join(
        f"{name} {_span([r.cpu_s for r in runs], '.2f')}" for name, runs in rows.items()
    ))  # fmt: skip
    print("of it system seconds; minor faults, median (range): " + "; ".join(
        f"{name} {_span([r.sys_s for r in runs if r.peak_mb], '.2f')} s, "
        f"{_span([float(r.minflt) for r in runs if r.peak_mb], ',.0f')}"
        for name, runs in rows.items() if runs[0].peak_mb
    ))  # fmt: skip
    for suffix, _ in codes:
        steady = rows.get(
            "detector run, steady state (the log appears while the agent runs)" + suffix
        )
        if steady:
            startups = [r.startup_s for r in steady]
            print(
                f"agent{suffix} start-up (process start to ready): {_span(startups, '.2f')} s",
                flush=True,
            )


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    peak_mb: float
    startup_s: float = 0.0
    sys_s: float = 0.0
    """Of ``cpu_s``, the kernel's (``stime``): page faults, reads, futexes."""
    minflt: int = 0
    """Minor page faults meanwhile (the memory of reads given back and touched again)."""


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    lo, hi, mid = min(values), max(values), statistics.median(values)
    if format(lo, fmt) == format(hi, fmt):
        return format(mid, fmt)
    return f"{mid:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def _stat(pid: int) -> tuple[float, float, int]:
    """(CPU seconds, of them system seconds, minor faults) of ``pid`` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[12]) / tick, int(fields[7])


def _peak_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) / 1024
    return 0.0


MULTILINE = r"{start: '^(?:[A-Z][a-z]{2} [ \d]\d |\d+\.\d+\.\d+\.\d+ )'}"
"""A new event at each line of the bench log (syslog stamp or an access log's client address)."""
TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/srv/app/views.py", line 88, in handle',
    "    result = process(request.json)",
    '  File "/srv/app/jobs.py", line 41, in process',
    '    return int(payload["count"]) / payload["parts"]',
    "ZeroDivisionError: division by zero",
    "",
]


def multiline(args: argparse.Namespace, profile: str) -> None:
    """The ``multiline:`` workload (module docstring): plain beside multiline, same data."""
    base = args.workdir / f"ingest-{profile}-{args.lines}.log"
    if not base.exists():
        gen_log.generate(base, args.lines, profile=profile)
    log = args.workdir / f"ingest-{profile}-{args.lines}-tracebacks.log"
    if not log.exists():
        with base.open() as src, log.open("w") as out:
            for i, line in enumerate(src):
                out.write(line)
                if i % 20 == 19:
                    out.write("\n".join(TRACEBACK[:-1]) + "\n")
    lines = sum(1 for _ in log.open("rb"))
    size = log.stat().st_size
    cpu = str(min(os.sched_getaffinity(0)))
    end = _last_newline_end(log)
    with log.open("rb") as f:  # a multiline source holds its last event: it starts here
        f.seek(max(0, end - 65536))
        tail = f.read(end - f.tell())
    last_start = end - len(tail) + tail[:-1].rfind(b"\n") + 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec, target in (
            ("plain source", None, end),
            ("multiline source (start:)", MULTILINE, last_start),
        ):
            home = Path(tmp) / name.split()[0]
            watched = home.parent / f"{home.name}-in"
            watched.mkdir()
            seconds = _run_agent(
                home,
                cpu,
                watched / "*.log",
                target,
                arrive=(log, watched / log.name),
                multiline=spec,
            ).wall_s
            rows.append((name, seconds))
    print(f"\nmultiline: {lines:,} lines ({size / 1e6:.0f} MB, a traceback every 20 lines), ")
    print("steady state, one CPU:\n")
    print("| source | seconds | lines/s | MB/s |")
    print("|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {lines / seconds:,.0f} | {size / seconds / 1e6:.0f} |")


def _last_newline_end(log: Path) -> int:
    """Where the agent's read position ends up: after the log's last newline."""
    size = log.stat().st_size
    with log.open("rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    return size - (len(tail) - tail.rfind(b"\n") - 1)


def _run_agent(
    home: Path,
    cpu: str,
    path: Path,
    target: int,
    arrive: tuple[Path, Path] | None = None,
    multiline: str | None = None,
    rules: list[tuple[str, str]] | None = None,
    code: Path = ROOT,
) -> Run:
    """Start ``detector run`` on one file source ``path`` (beginning of the file if it exists at
    start-up, or, with ``arrive``, a file linked into place once the agent is ready). Returns
    the seconds until the read position reached ``target``, the agent's CPU seconds meanwhile
    (``/proc/PID/stat``; taskset execs it, so its pid is the agent's), its peak RSS and its
    start-up seconds. ``code``: the checkout whose ``detector`` package runs (``python -m`` puts
    the working directory first on the path)."""
    home.mkdir()
    cfg = home / "rules.yaml"
    gen_log.write_rules_yaml(cfg, path, gen_log.RULES if rules is None else rules)
    if multiline is not None:
        text = cfg.read_text()
        at = text.index("start_at: beginning}") + len("start_at: beginning")
        cfg.write_text(f"{text[:at]}, multiline: {multiline}{text[at:]}")
    state = home / "state.db"
    cfg.write_text(
        cfg.read_text().replace("version: 1\n", f"version: 1\nagent: {{state: {state}}}\n")
    )
    err = home / "agent.log"
    start = time.perf_counter()
    with err.open("wb") as err_f:
        agent = subprocess.Popen(
            ["taskset", "-c", cpu, sys.executable, "-m", "detector", "run", "-c", str(cfg)],
            cwd=code,
            stderr=err_f,
        )
    try:
        if arrive is None:
            begin = start
            startup = 0.0
        else:
            while b"INFO detector: ready" not in err.read_bytes():
                _check_alive(agent, err)
                time.sleep(0.005)
            startup = time.perf_counter() - start
            # steady state: a running agent has its full pattern databases (not cached: compiled
            # after READY, on the literal skeletons meanwhile)
            while b"literal skeletons until" in err.read_bytes() and not any(
                m in err.read_bytes() for m in (b"full pattern databases compiled", b"failed")
            ):
                _check_alive(agent, err)
                time.sleep(0.05)
            time.sleep(0.5)  # let the first sweep and the watcher settle
            begin = time.perf_counter()
            at0 = _stat(agent.pid)
            os.link(*arrive)
        if arrive is None:
            at0 = (0.0, 0.0, 0)
        while committed_offset(state) < target:
            _check_alive(agent, err)
            time.sleep(0.005)
        wall = time.perf_counter() - begin
        cpu, sys_s, minflt = (b - a for a, b in zip(at0, _stat(agent.pid), strict=True))
        return Run(wall, cpu, _peak_mb(agent.pid), startup, sys_s, int(minflt))
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def _check_alive(agent: subprocess.Popen[bytes], err: Path) -> None:
    if agent.poll() is not None:
        raise SystemExit(f"the agent exited:\n{err.read_text(errors='replace')[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/detector-bench"))
    ap.add_argument(
        "--profile",
        choices=[*gen_log.PROFILES, "all", "none"],
        default=None,
        help="gen_log profiles (default: all, or none with --workload)",
    )
    ap.add_argument(
        "--workload",
        type=lambda t: [w for w in t.split(",") if w] if t != "all" else list(workloads.WORKLOADS),
        default=[],
        help=f"workloads.py rule sets, comma-separated ({', '.join(workloads.WORKLOADS)}, all)",
    )
    ap.add_argument("--multiline", action="store_true", help="the multiline: workload too")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of every command")
    ap.add_argument(
        "--rss-rules", type=int, default=200, help="rules of the extra steady run (0: none)"
    )
    ap.add_argument(
        "--code",
        type=Path,
        help="another checkout (a git worktree of main, say) whose agent runs beside this one's",
    )
    args = ap.parse_args()
    for name in args.workload:
        if name not in workloads.WORKLOADS:
            ap.error(f"unknown workload {name!r}")
    profile = args.profile or ("none" if args.workload else "all")
    args.workdir.mkdir(parents=True, exist_ok=True)
    # byte-compiled as pip does at install time (see bench_match.py)
    compileall.compile_dir(ROOT / "detector", quiet=1)
    if args.code is not None:
        compileall.compile_dir(args.code / "detector", quiet=1)
    for name in args.workload:
        ingest(args, workload_case(args, name))
    profiles = {"all": gen_log.PROFILES, "none": ()}.get(profile, (profile,))
    for p in profiles:
        ingest(args, profile_case(args, p))
        if args.multiline:
            multiline(args, p)


if __name__ == "__main__":
    main()
