"""Matching throughput: the detector against ``grep -c -E -f`` and ripgrep on the same files.

One command (``.venv/bin/python bench/bench_match.py``; ``--lines N`` to change the input size,
``--profile dense|quiet`` for one workload) generates two logs with ``gen_log.py`` — *dense*, a
host under attack where ~39 % of lines match a rule, and *quiet*, a healthy host where ~1 % do —
plus a *backfill*, the quiet log four times over (``--backfill N``), checks on each that the
translated ERE file agrees with Python ``re`` rule by rule, then runs, each as a child process
pinned to one CPU: GNU grep (C locale), ripgrep (one thread; skipped with a note when not
installed), the matcher alone replaying the file in the 1 MiB blocks of ``detector test``
(``Matcher.match_block``), the whole ``detector test`` replay (matcher + rule evaluation + alerts)
and ``detector test --jobs 2`` (given two CPUs). It prints lines/s, MB/s, peak RSS and the ratio to
grep as markdown tables, checks that grep, ripgrep and the matcher count the same matching lines,
and ends with the matcher at 10/50/200/500 rules on a prefix of the dense log, and with a risky
capturing key=value rule on a log where every line matches it.

``--workload`` adds the rule sets and log profiles of ``workloads.py`` (``host43``: 43 realistic
host rules, ~3 % of lines hit; ``f2b150``: 150 fail2ban-style filters with lookarounds and host
macros; ``simple``: five literal-ish rules, ~32 % hit, grep's best case), each at ``--sizes``
(400k and 2M lines) and at 8M (the 2M log four times over), with ``--repeat`` runs of every
command, interleaved, reported as the median and the range of the ratios; and the live agent on
the 2M log (``bench_ingest``). ``--quick``: 400k lines only, no 8M, one live run, no gen_log
workloads.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_ingest
import gen_log
import workloads

from detector.matching import ENGINE, Matcher, PatternSpec
from detector.replay import BLOCK  # the block size of `detector test`


@dataclass(frozen=True)
class Row:
    name: str
    lines: int
    seconds: float
    size: int
    peak_rss_kb: int
    output: str
    cpu_s: float = 0.0
    """User + system CPU seconds (GNU time): less disturbed than the wall time on a busy host."""

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


GNU_TIME = "/usr/bin/time"
"""Reports a command's own peak RSS. ``ru_maxrss`` of a child forked from this process is useless
for that: Linux carries the parent's high-water mark over the exec, so every child would show at
least this process's ~45 MB (scripts/system-deps installs Debian's ``time``)."""


def measure(
    name: str,
    argv: list[str],
    lines: int,
    size: int,
    env: dict[str, str] | None = None,
    cpus: int = 1,
) -> Row:
    """Run ``argv`` to completion on ``cpus`` CPUs (one unless told); wall time and the peak RSS
    of its largest process (GNU time: the command or, for ``--jobs``, its biggest worker)."""
    if not os.access(GNU_TIME, os.X_OK):
        raise SystemExit(f"{GNU_TIME} missing: run scripts/system-deps (Debian package 'time')")
    cpu = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:cpus])
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            [GNU_TIME, "-q", "-f", "%M %U %S", "-o", rss.name, "taskset", "-c", cpu, *argv],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
        peak, user, system = rss.read().split()[-3:]
    if proc.returncode not in (0, 1):  # grep exits 1 when nothing matched
        raise RuntimeError(f"{argv[0]} failed with {proc.returncode}")
    cpu_s = float(user) + float(system)
    return Row(name, lines, seconds, size, int(peak), proc.stdout.strip(), cpu_s)


def worker(log: Path, rules_json: Path, max_lines: int) -> None:
    """Child process: replay ``log`` through the matcher, print a JSON summary."""
    started = time.perf_counter()
    rule_set = json.loads(rules_json.read_text())
    matcher = Matcher([PatternSpec(n, "match", r, frozenset({"bench"})) for n, r in rule_set])
    matcher.match_block("bench", b"warm-up\n")  # builds the Hyperscan database
    built = time.perf_counter()
    lines = hits = 0
    matched_lines = 0
    rest = b""
    with log.open("rb") as f:
        while lines < max_lines:
            chunk = f.read(BLOCK)
            if not chunk:
                break
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            n, found = matcher.match_block("bench", chunk[:cut])
            lines += n
            hits += len(found)
            matched_lines += len({h.line for h in found})
    summary = {
        "lines": lines,
        "hits": hits,
        "matched_lines": matched_lines,
        "build_s": round(built - started, 3),
        "match_s": round(time.perf_counter() - built, 3),
        "engine": ENGINE,
    }
    print(json.dumps(summary))


def check_ere(sample: Path, rule_set: list[tuple[str, str]], env: dict[str, str]) -> list[str]:
    """Rules whose grep -E count differs from Python re on the sample (should be none)."""
    texts = sample.read_text(encoding="utf-8").split("\n")[:-1]
    bad: list[str] = []
    for name, regex in rule_set:
        rx = re.compile(regex)
        expected = sum(1 for t in texts if rx.search(t))
        out = subprocess.run(
            ["grep", "-c", "-E", "-e", gen_log.to_ere(regex), str(sample)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        ).stdout
        if int(out or 0) != expected:
            bad.append(f"{name}: re {expected}, grep {out.strip()}")
    return bad


def prefix(log: Path, out: Path, lines: int) -> tuple[Path, int]:
    if not out.exists():
        with log.open("rb") as src, out.open("wb") as dst:
            for n, line in enumerate(src):
                if n >= lines:
                    break
                dst.write(line)
    return out, out.stat().st_size


def workload(
    args: argparse.Namespace,
    work: Path,
    profile: str,
    env: dict[str, str],
    log: Path | None = None,
    lines: int | None = None,
) -> list[Row]:
    """Every run on one generated log (``log`` of ``lines`` lines, else the profile's log of
    ``--lines``): grep, ripgrep, the matcher, ``detector test`` (1 and 2 jobs). Prints the
    table; returns the rows (grep first)."""
    if log is None:
        log = work / f"{profile}-{args.lines}.log"
        if not log.exists():
            print(f"generating {log} …", flush=True)
            gen_log.generate(log, args.lines, profile=profile)
    n_lines = lines or args.lines
    size = log.stat().st_size
    rule_set = gen_log.RULES
    rules_yaml = gen_log.write_rules_yaml(work / f"rules-{profile}.yaml", log, rule_set)
    sample, _ = prefix(log, work / f"sample-{profile}-100k.log", 100_000)
    bad = check_ere(sample, rule_set, env)
    print(
        f"ERE translation on a {profile} sample: {len(rule_set) - len(bad)}/{len(rule_set)} "
        "rules agree with re" + ("" if not bad else "; MISMATCH " + "; ".join(bad)),
        flush=True,
    )
    ere = str(work / "rules.ere")
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    rows = [
        measure("grep -c -E -f (C)", ["grep", "-c", "-E", "-f", ere, str(log)], n_lines, size, env)
    ]
    if shutil.which("rg"):
        # -j1: one thread, like everything else here (one file is searched by one thread anyway)
        rows.append(
            measure(
                "ripgrep -c -f (1 thread)",
                ["rg", "-j1", "-c", "-f", ere, str(log)],
                n_lines,
                size,
                env,
            )
        )
    else:
        print("ripgrep not installed (scripts/system-deps installs it): no ripgrep row")
    rows.append(
        measure(
            f"detector matcher, {len(rule_set)} rules",
            [*me, str(log), str(work / "rules.json"), str(n_lines)],
            n_lines,
            size,
        )
    )
    # The full agent path: `detector test` = block reads + matcher + rule evaluation + alerts.
    replay_argv = [
        sys.executable,
        "-m",
        "detector",
        "test",
        "-c",
        str(rules_yaml),
        str(log),
        "--quiet",
        "--no-progress",
    ]
    rows.append(measure("detector test (replay)", replay_argv, n_lines, size))
    # Backfill: two worker processes match, the main process evaluates; given two CPUs.
    rows.append(
        measure(
            "detector test --jobs 2 (2 CPUs)",
            [*replay_argv, "--jobs", "2"],
            n_lines,
            size,
            cpus=2,
        )
    )
    grep = rows[0]
    info = json.loads(next(r for r in rows if r.name.startswith("detector matcher")).output)
    counts = {r.name: r.output for r in rows if not r.name.startswith("detector")}
    agree = all(int(c) == info["matched_lines"] for c in counts.values())
    share = info["matched_lines"] / n_lines
    print(
        f"\n{profile}: {n_lines:,} lines, {size / 1e6:.0f} MB, {share:.1%} of lines matched "
        f"({info['hits']:,} hits); lines matched by any rule: grep, ripgrep and detector "
        + ("agree" if agree else f"DISAGREE: {counts} vs {info['matched_lines']}")
        + "\n"
    )
    print(f"| {profile} log | lines/s | MB/s | peak RSS | vs grep |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.name} | {row.lines_per_s:,.0f} | {row.mb_per_s:.1f} | "
            f"{row.peak_rss_kb / 1024:.1f} MB | {row.lines_per_s / grep.lines_per_s:.2f}× |"
        )
    print(flush=True)
    return rows


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else (ys[mid - 1] + ys[mid]) / 2


def bench_workload(
    args: argparse.Namespace, work: Path, w: workloads.Workload, lines: int, env: dict[str, str]
) -> dict[str, list[float]]:
    """``w`` at ``lines`` lines: grep, ripgrep (the engine that can run the rules, see
    ``workloads.grep_argv``), ``detector test`` and ``detector test --jobs 2``, each ``--repeat``
    times, the commands interleaved (a busy shared machine slows them alike). Prints a table of
    medians and ratio ranges; returns the seconds per command."""
    base = work / f"{w.name}-{min(lines, 2_000_000)}.log"
    if not base.exists():
        print(f"generating {base} …", flush=True)
        workloads.generate(base, w, min(lines, 2_000_000))
    log = base
    if lines > 2_000_000:  # the 2M log k times over: a backfill
        log = work / f"{w.name}-{lines}.log"
        if not log.exists():
            with base.open("rb") as src, log.open("wb") as dst:
                for _ in range(lines // 2_000_000):
                    src.seek(0)
                    shutil.copyfileobj(src, dst, 16 << 20)
    size = log.stat().st_size
    pats = workloads.write_patterns(w, work / f"{w.name}.pat")
    rules_yaml = gen_log.write_rules_yaml(work / f"rules-{w.name}-{lines}.yaml", log, w.rules)
    replay = [
        sys.executable, "-m", "detector", "test", "-c", str(rules_yaml), str(log), "--quiet",
        "--no-progress",
    ]  # fmt: skip
    cmds: list[tuple[str, list[str], int]] = [
        (f"grep -c ({'-E -f' if w.grep == 'ere' else '-P, pipeline'}, C)",
         workloads.grep_argv(w, pats, log, lines), 1),
    ]  # fmt: skip
    if shutil.which("rg"):
        cmds.append(
            ("ripgrep (1 thread)" + (" -P, pipeline" if w.grep == "pcre" else ""),
             workloads.rg_argv(w, pats, log, lines), 1)
        )  # fmt: skip
    cmds += [
        ("detector test", replay, 1),
        ("detector test --jobs 2 (2 CPUs)", [*replay, "--jobs", "2"], 2),
    ]
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in cmds}
    cpu_s: dict[str, list[float]] = {name: [] for name, _, _ in cmds}
    counts: dict[str, str] = {}
    for _ in range(args.repeat):
        for name, argv, cpus in cmds:
            row = measure(name, argv, lines, size, env, cpus=cpus)
            seconds[name].append(row.seconds)
            cpu_s[name].append(row.cpu_s)
            counts[name] = row.output
    greps = [c for n, c in counts.items() if not n.startswith("detector")]
    agree = len(set(greps)) == 1
    print(
        f"\n{w.name} ({w.about}): {lines:,} lines, {size / 1e6:.0f} MB, {args.repeat} runs; "
        f"matching lines {greps[0]}: grep and ripgrep {'agree' if agree else 'DISAGREE'}\n"
    )
    print(f"| {w.name}, {lines:,} lines | median s | lines/s | vs grep (range) | vs ripgrep |")
    print("|---|---:|---:|---:|---:|")
    grep_s = seconds[cmds[0][0]]
    rg_s = seconds.get(cmds[1][0]) if len(cmds) == 4 else None
    for name, times in seconds.items():
        ratios = [g / t for g, t in zip(grep_s, times, strict=True)]
        vs_rg = "" if rg_s is None else f"{_median(rg_s) / _median(times):.2f}×"
        print(
            f"| {name} | {_median(times):.2f} | {lines / _median(times):,.0f} | "
            f"{_median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | {vs_rg} |"
        )
    print("\nCPU seconds (user + system), median (range): " + "; ".join(
        f"{name} {_median(t):.2f} ({min(t):.2f}–{max(t):.2f})" for name, t in cpu_s.items()
    ))  # fmt: skip
    print(flush=True)
    return seconds


def live_workload(
    args: argparse.Namespace, work: Path, w: workloads.Workload, lines: int, env: dict[str, str]
) -> None:
    """The live agent (``bench_ingest``: steady state, one CPU) on ``w``'s log, beside grep in
    the same run, ``--repeat`` times (once with ``--quick``)."""
    log = work / f"{w.name}-{lines}.log"
    if not log.exists():
        workloads.generate(log, w, lines)
    pats = workloads.write_patterns(w, work / f"{w.name}.pat")
    target = bench_ingest._last_newline_end(log)
    cpu = str(min(os.sched_getaffinity(0)))
    ratios: list[float] = []
    for _ in range(1 if args.quick else args.repeat):
        grep = measure("grep", workloads.grep_argv(w, pats, log, lines), lines, 0, env)
        with tempfile.TemporaryDirectory() as tmp:
            watched = Path(tmp) / "incoming"
            watched.mkdir()
            steady = bench_ingest._run_agent(
                Path(tmp) / "steady",
                cpu,
                watched / "*.log",
                target,
                arrive=(log, watched / log.name),
                rules=w.rules,
            ).wall_s
        ratios.append(grep.seconds / steady)
    print(
        f"| {w.name}, {lines:,} lines | live agent (steady state, 1 CPU) | "
        f"{_median(ratios):.2f}× grep ({min(ratios):.2f}–{max(ratios):.2f}) |",
        flush=True,
    )


def run_workloads(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    names = list(workloads.WORKLOADS) if args.workload == "all" else [args.workload]
    sizes = [400_000] if args.quick else args.sizes
    for name in names:
        w = workloads.WORKLOADS[name]
        for lines in sizes:
            bench_workload(args, work, w, lines, env)
    print("live ingest:\n\n| workload | run | vs grep (range) |\n|---|---|---:|")
    for name in names:
        live_workload(args, work, workloads.WORKLOADS[name], sizes[-1] if args.quick else
                      2_000_000, env)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--scale-lines", type=int, default=500_000)
    ap.add_argument(
        "--backfill", type=int, default=4, help="the quiet log this many times over (0: no run)"
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/detector-bench"))
    ap.add_argument("--profile", choices=[*gen_log.PROFILES, "all"], default="all")
    ap.add_argument("--worker", nargs=3, metavar=("LOG", "RULES_JSON", "MAX_LINES"))
    ap.add_argument(
        "--workload",
        choices=["gen", *workloads.WORKLOADS, "all", "none"],
        default="all",
        help="the workloads.py rule sets to run (gen: only gen_log's dense/quiet/backfill)",
    )
    ap.add_argument(
        "--sizes",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[400_000, 2_000_000, 8_000_000],
        help="line counts for --workload (over 2M: the 2M log repeated)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of each --workload command")
    ap.add_argument("--quick", action="store_true", help="400k lines, one live run, no gen")
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), int(args.worker[2]))
        return

    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    # Byte-compile the package as pip does at install time: with PYTHONDONTWRITEBYTECODE set
    # (as on some CI machines) every `detector test` would otherwise compile its sources anew.
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "detector", quiet=1)
    env = dict(os.environ, LC_ALL="C")
    rule_set = gen_log.RULES
    (work / "rules.ere").write_text("\n".join(gen_log.to_ere(r) for _, r in rule_set) + "\n")
    (work / "rules.json").write_text(json.dumps(rule_set))
    if args.workload != "gen" and args.workload != "none":
        run_workloads(args, work, env)
    if args.quick or args.workload not in ("gen", "all"):
        return
    profiles = gen_log.PROFILES if args.profile == "all" else (args.profile,)
    for profile in profiles:
        workload(args, work, profile, env)
    if "quiet" in profiles and args.backfill > 1:
        # A backfill: the quiet log, --backfill times over (a large archive of a healthy host),
        # where --jobs 2 is meant to approach ripgrep.
        quiet = work / f"quiet-{args.lines}.log"
        big = work / f"backfill-{args.backfill}x{args.lines}.log"
        if not big.exists():
            with quiet.open("rb") as src, big.open("wb") as dst:
                for _ in range(args.backfill):
                    src.seek(0)
                    shutil.copyfileobj(src, dst, 16 << 20)
        workload(args, work, "backfill", env, big, args.backfill * args.lines)

    log = work / f"dense-{args.lines}.log"
    if not log.exists():
        gen_log.generate(log, args.lines)
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    part, part_size = prefix(log, work / f"prefix-{args.scale_lines}.log", args.scale_lines)
    print(f"cost per line vs rule count ({args.scale_lines:,} dense lines):\n")
    print("| rules | lines/s | MB/s | peak RSS | matching only | build |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (10, 50, 200, 500):
        rules_n = work / f"rules-{n}.json"
        rules_n.write_text(json.dumps(gen_log.rules(n)))
        row = measure(
            f"detector {n} rules",
            [*me, str(part), str(rules_n), str(args.scale_lines)],
            args.scale_lines,
            part_size,
        )
        info = json.loads(row.output)
        print(
            f"| {n} | {row.lines_per_s:,.0f} | {row.mb_per_s:.1f} | "
            f"{row.peak_rss_kb / 1024:.1f} MB | "
            f"{1e9 * info['match_s'] / info['lines']:.0f} ns/line | {info['build_s']:.1f} s |"
        )
    risky(work, env)


KV_RULE = ("kv-pairs", r"app\[\d+\]: (?P<pairs>(?:\w+=\S+\s?)+)$")
"""A key=value rule with nested repetition ("risky": it can backtrack exponentially), whose
capture must be extracted on every line it matches."""


def risky(work: Path, env: dict[str, str], lines: int = 500_000) -> None:
    """The matcher on a log where every line matches a risky capturing rule, beside grep: re
    confirms such patterns under the budget, with the (much slower) Pike VM only behind it."""
    log = work / f"kv-{lines}.log"
    if not log.exists():
        with log.open("w") as f:
            for i in range(lines):
                f.write(
                    f"Nov 25 10:{i // 60 % 60:02d}:{i % 60:02d} web{i % 7} app[{300 + i % 900}]: "
                    f"user=u{i % 97} path=/api/v1/items/{i} status={(200, 200, 404, 500)[i % 4]} "
                    f"ms={i % 700}\n"
                )
    size = log.stat().st_size
    rules_json = work / "rules-kv.json"
    rules_json.write_text(json.dumps([KV_RULE]))
    ere = work / "rules-kv.ere"
    ere.write_text(gen_log.to_ere(KV_RULE[1]) + "\n")
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    grep = measure("grep", ["grep", "-c", "-E", "-f", str(ere), str(log)], lines, size, env)
    row = measure("kv", [*me, str(log), str(rules_json), str(lines)], lines, size)
    info = json.loads(row.output)
    agree = int(grep.output) == info["matched_lines"] == lines
    print(
        f"\na risky capturing rule (`{KV_RULE[1]}`) on {lines:,} lines that all match it "
        f"(grep and detector {'agree' if agree else 'DISAGREE'}):\n"
    )
    print("| run | lines/s | MB/s | vs grep |")
    print("|---|---:|---:|---:|")
    for name, r in (("grep -c -E -f (C)", grep), ("detector matcher", row)):
        print(
            f"| {name} | {r.lines_per_s:,.0f} | {r.mb_per_s:.1f} | "
            f"{r.lines_per_s / grep.lines_per_s:.2f}× |"
        )


if __name__ == "__main__":
    main()
