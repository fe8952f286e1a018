"""Benchmark: what the live agent costs per write() and at rest, end to end.

A service that logs line by line makes one ``write()`` per line; the agent's cost should follow the
writes it wakes for, not be a fixed price per wake-up. This runs the real agent
(``python -m detector run``) as a subprocess and measures, from ``/proc`` (its own CPU time, so
other load on the machine changes the figures little):

* **writes**: a writer process appends single-line writes to one file at 100 and 1,000 writes/s
  for ``--seconds``, and the same lines in 10 writes/s (the baseline, same lines per second).
  Every ``--probe-ms`` one of the lines is a probe that a ``group_by`` rule turns into an alert
  of its own; a receiver on 127.0.0.1 notes when each arrives: append → webhook latency. Printed:
  the agent's CPU (% of one core, from utime+stime in ``/proc/PID/stat``), CPU per write, the
  ratio to the baseline, and the latency p50/p99.
* **idle**: 20 file sources (each in its own directory) and 50 rules, nothing written, for
  ``--idle-seconds``: CPU, threads (``/proc/PID/status``) and wake-ups per second (voluntary and
  involuntary context switches summed over ``/proc/PID/task/*/status``).

``--code DIR`` runs another checkout's ``detector`` (e.g. ``git archive`` of an older commit
unpacked in DIR) under the same bench, to compare before and after. ``--repeat`` repeats the whole
set; quote the median and the range, never the best run.

    .venv/bin/python bench/bench_writes.py [--seconds 10] [--idle-seconds 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from live import ROOT, start_agent, start_receiver  # bench/live.py, next to this script

TICK = os.sysconf("SC_CLK_TCK")
PROBE = re.compile(r"probe (\d+)")
NOISE_RULES = [
    r"ERROR (?P<what>.*)",
    r"Traceback \(most recent call last\)",
    r"Out of memory: Killed process (?P<pid>\d+)",
    r"segfault at [0-9a-f]+",
    r"Failed password for \S+ from (?P<ip>\S+)",
    r'" 5\d\d \d+',
    r"CRITICAL|FATAL",
    r"connection reset by peer",
    r"disk (?:full|quota exceeded)",
]


def cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads) so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def switches(pid: int) -> int:
    """Context switches (voluntary + involuntary) summed over the process's threads: each is a
    wake-up or a preemption."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ---------------------------------------------------------------- the writer (its own process)


def writer(
    path: str, writes_per_s: float, seconds: float, lines_per_write: int, probe_ms: int, seq: int
) -> None:
    """Append ``lines_per_write`` lines per write, ``writes_per_s`` writes a second, paced on an
    absolute schedule; one line every ``probe_ms`` is a probe (numbered from ``seq``: each probe
    is a new alert). Prints {probe id: time written}."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    n = int(writes_per_s * seconds)
    start = time.time() + 0.05
    probes: dict[int, float] = {}
    next_probe = start
    for i in range(n):
        at = start + i / writes_per_s
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        lines = []
        probe = None
        for _ in range(lines_per_write):
            seq += 1
            if probe is None and time.time() >= next_probe:
                probe = seq
                next_probe += probe_ms / 1000
                lines.append(f"2026-01-01T00:00:00Z INFO worker: probe {seq} handled\n")
            else:
                lines.append(f"2026-01-01T00:00:00Z INFO worker: request {seq} GET /api ok 200\n")
        os.write(fd, "".join(lines).encode())
        if probe is not None:
            probes[probe] = time.time()
    os.close(fd)
    print(json.dumps(probes))


# ---------------------------------------------------------------- the runs


@dataclass
class WriteRun:
    writes_per_s: float
    lines_per_write: int
    cpu_pct: float
    writes: int
    p50_ms: float
    p99_ms: float
    probes: int
    arrived: int


@dataclass
class IdleRun:
    sources: int
    rules: int
    cpu_pct: float
    threads: int
    wakeups_per_s: float


def _config(d: Path, port: int, sources: dict[str, Path], rules: list[str]) -> Path:
    src = "\n".join(f"  {name}: {{file: '{path}'}}" for name, path in sources.items())
    cfg = d / "rules.yaml"
    cfg.write_text(
        f"version: 1\nagent: {{state: {d / 'state.db'}, host: bench}}\n"
        f"webhooks: {{hook: {{url: 'http://127.0.0.1:{port}/hook'}}}}\n"
        f"sources:\n{src}\nrules:\n" + "\n".join(rules) + "\n"
    )
    return cfg


async def run_writes(
    code: Path, seconds: float, probe_ms: int, shapes: list[tuple[float, int]]
) -> list[WriteRun]:
    arrivals: dict[int, float] = {}

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        now = time.time()
        for alert in body["alerts"]:
            m = PROBE.search(str(alert.get("annotations", {}).get("summary", "")))
            if alert["status"] == "firing" and m:
                arrivals.setdefault(int(m.group(1)), now)
        return web.Response(text="ok")

    runner, port = await start_receiver(handle)
    out: list[WriteRun] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        log = d / "app.log"
        log.touch()
        rules = [
            "  - {name: probe, source: app, match: 'probe (?P<id>\\d+) handled', "
            "group_by: [id], summary: 'probe {id}', repeat: never}",
            *(
                f"  - {{name: r{i}, source: app, match: '{rx}'}}"
                for i, rx in enumerate(NOISE_RULES)
            ),
        ]
        agent, drain = await start_agent(_config(d, port, {"app": log}, rules), code)
        try:
            for n, (writes_per_s, lines_per_write) in enumerate(shapes):
                arrivals.clear()
                await asyncio.sleep(1.0)
                before = cpu_s(agent.pid)
                t0 = time.monotonic()
                w = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--writer",
                    json.dumps(
                        [str(log), writes_per_s, seconds, lines_per_write, probe_ms, n * 10**8]
                    ),
                    stdout=asyncio.subprocess.PIPE,
                )
                stdout, _ = await w.communicate()
                cpu = (cpu_s(agent.pid) - before) / (time.monotonic() - t0) * 100
                probes = {int(k): v for k, v in json.loads(stdout).items()}
                await asyncio.sleep(2.0)  # the last probes' alerts on their way
                late = [(arrivals[k] - t) * 1000 for k, t in probes.items() if k in arrivals]
                out.append(
                    WriteRun(
                        writes_per_s,
                        lines_per_write,
                        cpu,
                        int(writes_per_s * seconds),
                        quantile(late, 0.5),
                        quantile(late, 0.99),
                        len(probes),
                        len(late),
                    )
                )
        finally:
            agent.terminate()
            await agent.wait()
            drain.cancel()
    await runner.cleanup()
    return out


async def run_idle(code: Path, seconds: float, n_sources: int, n_rules: int) -> IdleRun:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    runner, port = await start_receiver(handle)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sources: dict[str, Path] = {}
        for i in range(n_sources):
            (d / f"svc{i}").mkdir()
            sources[f"s{i}"] = d / f"svc{i}" / "app.log"
            sources[f"s{i}"].write_text("2026-01-01T00:00:00Z INFO started\n")
        rules = [
            f"  - {{name: r{i}, source: s{i % n_sources}, "
            f"match: '{NOISE_RULES[i % len(NOISE_RULES)]}'}}"
            for i in range(n_rules)
        ]
        agent, drain = await start_agent(_config(d, port, sources, rules), code)
        try:
            await asyncio.sleep(3.0)  # start-up work done
            c0, s0, t0 = cpu_s(agent.pid), switches(agent.pid), time.monotonic()
            await asyncio.sleep(seconds)
            c1, s1, t1 = cpu_s(agent.pid), switches(agent.pid), time.monotonic()
            n_threads = threads(agent.pid)
        finally:
            agent.terminate()
            await agent.wait()
            drain.cancel()
    await runner.cleanup()
    return IdleRun(
        n_sources, n_rules, (c1 - c0) / (t1 - t0) * 100, n_threads, (s1 - s0) / (t1 - t0)
    )


def _span(values: list[float], fmt: str) -> str:
    """The median and, over more than one run, the range: ``6.1 (5.3–8.2)``."""
    lo, hi, mid = min(values), max(values), statistics.median(values)
    if format(lo, fmt) == format(hi, fmt):
        return format(mid, fmt)
    return f"{mid:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="writing time per shape")
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--probe-ms", type=int, default=100, help="one probe line this often")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose detector runs")
    ap.add_argument("--no-idle", action="store_true")
    args = ap.parse_args()
    # (writes/s, lines per write): each single-line rate, then its lines in 10 writes/s
    shapes = [(100.0, 1), (10.0, 10), (1000.0, 1), (10.0, 100)]
    writes: dict[tuple[float, int], list[WriteRun]] = {s: [] for s in shapes}
    idle: list[IdleRun] = []
    for _ in range(args.repeat):
        for r in await run_writes(args.code, args.seconds, args.probe_ms, shapes):
            writes[(r.writes_per_s, r.lines_per_write)].append(r)
        if not args.no_idle:
            idle.append(await run_idle(args.code, args.idle_seconds, 20, 50))
    print(f"code: {args.code}; {args.repeat} run(s): median (range over runs)")
    print(
        "\n| writes/s × lines | agent CPU % of a core | CPU µs per write | vs same lines in "
        "10 writes/s | append → webhook p50 / p99 ms | probes arrived |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for (rate, lines), runs in writes.items():
        base = writes[(10.0, int(rate * lines / 10))]
        ratios = [r.cpu_pct / b.cpu_pct for r, b in zip(runs, base, strict=True) if b.cpu_pct]
        per_write = [r.cpu_pct / 100 / r.writes_per_s * 1e6 for r in runs]
        print(
            f"| {rate:g} × {lines} | {_span([r.cpu_pct for r in runs], '.1f')} "
            f"| {_span(per_write, '.0f')} | {_span(ratios, '.1f') if ratios else '-'}x "
            f"| {_span([r.p50_ms for r in runs], '.1f')} "
            f"/ {_span([r.p99_ms for r in runs], '.1f')} "
            f"| {sum(r.arrived for r in runs)}/{sum(r.probes for r in runs)} |"
        )
    if idle:
        i0 = idle[0]
        print(
            f"\nidle, {i0.sources} file sources (one directory each), {i0.rules} rules, "
            f"{args.idle_seconds:g} s:"
        )
        print("\n| agent CPU % of a core | threads | wake-ups/s |")
        print("|---:|---:|---:|")
        print(
            f"| {_span([r.cpu_pct for r in idle], '.2f')} "
            f"| {_span([float(r.threads) for r in idle], '.0f')} "
            f"| {_span([r.wakeups_per_s for r in idle], '.0f')} |"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--writer":
        writer(*json.loads(sys.argv[2]))
    else:
        asyncio.run(main())
