"""Benchmark of the journald source against a real private journald (prints markdown tables).

1. Throughput: N entries (realistic fields, ~1 in 1,000 an error) are written to a private
   journald namespace; then, in the same run, (a) the journal's own speed: ``journalctl`` alone
   into a pipe we drain (``-o json``, ``-o json --output-fields=`` of the rules' fields,
   ``-o export``, ``-o cat``) and the sd-journal binding alone (``next`` and ``get`` of the rules'
   fields, no Python objects of ours), (b) ``JournaldSource`` from the beginning until caught up,
   on each reader (``journalctl``: the fallback; ``sd-journal``: the binding), reading every
   field (``fields=None``, as before issue 20.5) and only the rules' fields (``FIELDS``), and (c)
   each with a ``Matcher`` of 20 rules run over every batch. Each stage is timed by the wall
   clock *and* by the CPU time of the process doing the work (ours, plus the journalctl child's
   for the fallback reader; the child's alone for ``journalctl`` alone): on a shared machine the
   wall clock says how much of a core we were given, the CPU time what a read costs. Beside them,
   per stage: the CPU journald spent meanwhile (nothing: a read never asks it) and what every
   other process on the machine used (``/proc/stat``), which is what makes a low wall-clock round
   low. Median and range over ``--repeat`` interleaved rounds.
2. Latency: a following source; entries are sent one at a time (``sendto`` on the native socket)
   and the time from just before ``sendto`` to the batch holding the entry being yielded is taken,
   one entry every 5 ms and in bursts of 200; p50/p99/max, next to the same measurement on a bare
   ``journalctl --follow`` (journald's own share: it signals followers through inotify at most
   every 250 ms, see ``POST_CHANGE_TIMER_INTERVAL_USEC`` in systemd's journal-file.c).

Run as root: ``.venv/bin/python bench/bench_journald.py [--entries 100000] [--repeat 3]
[--latency 500] [--stages sd-journal,alone]`` (``--latency 0``: throughput only; ``--stages``:
only the stages whose label holds one of the words).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from live import start_agent, start_receiver  # bench/live.py, next to this script

from detector.clock import SystemClock
from detector.matching import Matcher, PatternSpec
from detector.model import JournaldSourceConfig
from detector.sources.journald import JournaldSource
from tests.journald_env import JournaldNamespace, start_journald_namespace, unique_tag

RULES = [
    r"upstream timed out .* upstream: \"(?P<upstream>[^\"]+)\"",
    r"Failed password for .* from (?P<ip>\S+)",
    r"backup (complete|failed)",
    r"(?i)out of memory",
    r"segfault at [0-9a-f]+",
    r"etl (?P<job>\w+) (started|finished)",
    r"disk (?P<dev>\w+) full",
    r"connection refused",
    r"certificate (has )?expired",
    r"panic:",
    r"Traceback \(most recent call last\)",
    r"ERROR \[(?P<mod>\w+)\]",
    r"status=(?P<code>5\d\d)",
    r"deadlock detected",
    r"too many open files",
    r"I/O error, dev (?P<dev>\w+)",
    r"link is down",
    r"OOM killer",
    r"slow query: (?P<ms>\d+) ms",
    r"replication lag (?P<s>\d+)s",
]


def workload(tag: str, n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        if i % 1000 == 999:
            msg = f"ERROR [billing] request {i} failed: status=503"
        else:
            msg = f"GET /api/v1/items/{i} 200 {i % 97} ms user=u{i % 311} region=eu-west-1"
        out.append(
            {
                "MESSAGE": msg,
                "PRIORITY": "3" if i % 1000 == 999 else "6",
                "SYSLOG_IDENTIFIER": "webapp",
                "DETECTOR_TEST": tag,
                "REQUEST_ID": f"{i:012x}",
            }
        )
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


FIELDS = ("MESSAGE", "SYSLOG_IDENTIFIER")
"""What the benchmark's sources read when given a field list: ``MESSAGE`` and one field a rule
might group by (``journal_fields`` of a config whose rules name ``SYSLOG_IDENTIFIER``)."""


async def read_all(
    ns: JournaldNamespace,
    tag: str,
    n: int,
    matcher: Matcher | None,
    reader: str = "sd-journal",
    fields: tuple[str, ...] | None = FIELDS,
) -> None:
    cfg = JournaldSourceConfig(
        name="jd", namespace=ns.name, start_at="beginning", match={"DETECTOR_TEST": (tag,)}
    )
    src = JournaldSource(cfg, {}, SystemClock(), reader=reader, fields=fields)
    assert src.reader == reader, src.reader_why
    seen = hits = 0
    async for batch in src.batches():
        seen += len(batch.lines)
        if matcher is not None:
            hits += len(matcher.match("jd", [line.text for line in batch.lines]))
        if seen >= n and src.caught_up():
            break
    await src.aclose()
    assert seen == n, seen
    if matcher is not None:
        assert hits == n // 1000 * 2, hits  # ERROR [mod] and status=5xx on every error line


def journalctl_alone(ns: JournaldNamespace, tag: str, *output: str) -> None:
    proc = subprocess.Popen(
        ["journalctl", f"--namespace={ns.name}", *(output or ["--output=json"]), "--all",
         "--no-pager", f"DETECTOR_TEST={tag}"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    while proc.stdout.read(1 << 20):
        pass
    assert proc.wait() == 0


def binding_alone(ns: JournaldNamespace, tag: str, n: int) -> None:
    """What the sd-journal binding itself costs for what our reader asks of it: ``next``, a
    ``get`` of each of the rules' fields and the entry's time, making no Python object of ours
    (the floor of an in-process reader)."""
    from systemd import journal  # noqa: PLC0415 - only this stage needs it

    r = journal._Reader(journal.LOCAL_ONLY, None, None, ns.name)
    r.data_threshold = 0
    r.add_match(f"DETECTOR_TEST={tag}".encode())
    nxt, get, get_realtime = r._next, r._get, r._get_realtime
    seen = 0
    while nxt(1):
        for f in FIELDS:
            get(f)
        get_realtime()
        seen += 1
    r.close()
    assert seen == n, seen


HZ = os.sysconf("SC_CLK_TCK")


def cpu_self_children() -> tuple[float, float]:
    """CPU seconds (user + sys) of this process and of its waited-for children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_of(pid: int) -> float:
    """CPU seconds a running process has used (``/proc/PID/stat`` utime + stime)."""
    after_comm = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_comm[11]) + int(after_comm[12])) / HZ


def machine_busy() -> float:
    """CPU seconds every CPU of the machine has been busy or stolen by the hypervisor (the
    ``cpu`` line of ``/proc/stat``: user nice system idle iowait irq softirq steal)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / HZ


@dataclass
class Sample:
    """One stage of one round."""

    wall: float
    """Seconds on the wall clock."""
    cpu: float
    """CPU seconds of the processes doing the work: ours and our children (journalctl)."""
    child: float
    """Of which the children's."""
    journald: float
    """CPU seconds journald used meanwhile."""
    others: float
    """CPU seconds (and steal) of every other process of the machine meanwhile."""


async def measure(ns: JournaldNamespace, run: Any) -> Sample:
    assert ns.process is not None
    jpid = ns.process.pid
    busy0, jd0, (me0, kids0), t0 = (
        machine_busy(),
        cpu_of(jpid),
        cpu_self_children(),
        time.perf_counter(),
    )
    got = run()
    if asyncio.iscoroutine(got):
        await got
    wall = time.perf_counter() - t0
    busy1, jd1, (me1, kids1) = machine_busy(), cpu_of(jpid), cpu_self_children()
    me, kids, jd = me1 - me0, kids1 - kids0, jd1 - jd0
    return Sample(wall, me + kids, kids, jd, max(0.0, busy1 - busy0 - me - kids - jd))


def rng(values: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


async def latency(ns: JournaldNamespace, count: int, burst: int) -> list[float]:
    tag = unique_tag()
    cfg = JournaldSourceConfig(name="jd", namespace=ns.name, match={"DETECTOR_TEST": (tag,)})
    src = JournaldSource(cfg, {}, SystemClock())
    sent: dict[str, float] = {}
    lat: list[float] = []
    done = asyncio.Event()

    async def consume() -> None:
        async for batch in src.batches():
            now = time.perf_counter()
            for line in batch.lines:
                lat.append(now - sent[line.text])
            if len(lat) >= count:
                done.set()
                return

    task = asyncio.ensure_future(consume())
    child = src.reader == "journalctl"  # sd-journal follows in-process: no child to wait for
    while not src.caught_up() or (child and src.status()["pid"] is None):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # let the follow journalctl settle into its wait
    for i in range(count):
        text = f"lat {i}"
        payload = {"MESSAGE": text, "DETECTOR_TEST": tag}
        sent[text] = time.perf_counter()
        ns.send(payload)
        if (i + 1) % burst == 0:
            await asyncio.sleep(0.005 if burst == 1 else 0.2)
    await asyncio.wait_for(done.wait(), 60)
    await task
    await src.aclose()
    return [x * 1000 for x in lat]


async def latency_plain(ns: JournaldNamespace, count: int, burst: int) -> list[float]:
    """The same measurement on a bare ``journalctl --follow`` (no source): journald's share."""
    tag = unique_tag()
    proc = await asyncio.create_subprocess_exec(
        "journalctl", f"--namespace={ns.name}", "--output=json", "--all", "--follow",
        "--lines=0", f"DETECTOR_TEST={tag}", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    # journalctl gives no readiness signal: send probes until one comes through
    while True:
        ns.send({"MESSAGE": "probe", "DETECTOR_TEST": tag})
        try:
            await asyncio.wait_for(proc.stdout.readline(), 0.5)
            break
        except TimeoutError:
            continue
    await asyncio.sleep(0.3)
    while True:  # drain the other probes
        try:
            await asyncio.wait_for(proc.stdout.readline(), 0.3)
        except TimeoutError:
            break
    sent: list[float] = []
    lat: list[float] = []

    async def consume() -> None:
        assert proc.stdout is not None
        while len(lat) < count:
            await proc.stdout.readline()
            lat.append(time.perf_counter() - sent[len(lat)])

    task = asyncio.ensure_future(consume())
    for i in range(count):
        sent.append(time.perf_counter())
        ns.send({"MESSAGE": f"lat {i}", "DETECTOR_TEST": tag})
        if (i + 1) % burst == 0:
            await asyncio.sleep(0.005 if burst == 1 else 0.2)
    await asyncio.wait_for(task, 60)
    proc.terminate()
    await proc.wait()
    return [x * 1000 for x in lat]


async def end_to_end(ns: JournaldNamespace, count: int) -> list[float]:
    """sendto → webhook received, through the real agent (a subprocess) and a local receiver."""
    tag = unique_tag()
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    all_in = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        now = time.perf_counter()
        for alert in body["alerts"]:
            got.setdefault(alert["labels"]["n"], now)
        if len(got) >= count:
            all_in.set()
        return web.Response(text="ok")

    runner, port = await start_receiver(handle)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "rules.yaml"
        cfg.write_text(
            f"version: 1\nagent: {{state: {tmp}/state.db, host: bench}}\n"
            f"webhooks: {{hook: {{url: 'http://127.0.0.1:{port}/hook'}}}}\n"
            f"sources: {{jd: {{journald: {{namespace: {ns.name}, "
            f"match: {{DETECTOR_TEST: {tag}}}}}}}}}\n"
            "rules:\n  - {name: probe, source: jd, match: 'e2e-probe (?P<n>\\d+)', group_by: [n]}\n"
        )
        agent, drain = await start_agent(Path(str(cfg)))
        for i in range(count):
            sent[str(i)] = time.perf_counter()
            ns.send({"MESSAGE": f"e2e-probe {i}", "DETECTOR_TEST": tag})
            await asyncio.sleep(0.02)
        try:
            await asyncio.wait_for(all_in.wait(), timeout=60)
        finally:
            agent.terminate()
            await agent.wait()
            drain.cancel()
    await runner.cleanup()
    return [(got[k] - sent[k]) * 1000 for k in sent if k in got]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--latency", type=int, default=500, help="0: throughput only")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stages", default="", help="only stages whose label holds one of these")
    args = ap.parse_args()
    ns = start_journald_namespace()
    try:
        tag = unique_tag()
        t0 = time.perf_counter()
        ns.send_many(workload(tag, args.entries))
        ns.sync()
        write_s = time.perf_counter() - t0
        n = args.entries
        print(f"\n### journald source throughput ({n:,} entries, ~1 KB JSON each)\n")
        print(f"write (sendto + journald store): {n / write_s:,.0f} entries/s\n")
        matcher = Matcher(
            [PatternSpec(f"r{i}", "match", rx, frozenset({"jd"})) for i, rx in enumerate(RULES)]
        )
        out_fields = "--output-fields=" + ",".join(FIELDS)
        stages: list[tuple[str, Any]] = [
            ("`journalctl -o json` alone", lambda: journalctl_alone(ns, tag)),
            (
                "`journalctl -o json --output-fields=…` alone",
                lambda: journalctl_alone(ns, tag, "--output=json", out_fields),
            ),
            ("`journalctl -o export` alone", lambda: journalctl_alone(ns, tag, "--output=export")),
            ("`journalctl -o cat` alone", lambda: journalctl_alone(ns, tag, "--output=cat")),
            ("sd-journal binding alone, rules' fields", lambda: binding_alone(ns, tag, n)),
            (
                "journalctl reader, every field",
                lambda: read_all(ns, tag, n, None, "journalctl", None),
            ),
            (
                "journalctl reader, every field + Matcher",
                lambda: read_all(ns, tag, n, matcher, "journalctl", None),
            ),
            ("journalctl reader, rules' fields", lambda: read_all(ns, tag, n, None, "journalctl")),
            (
                "journalctl reader, rules' fields + Matcher",
                lambda: read_all(ns, tag, n, matcher, "journalctl"),
            ),
            ("sd-journal, every field", lambda: read_all(ns, tag, n, None, fields=None)),
            (
                "sd-journal, every field + Matcher",
                lambda: read_all(ns, tag, n, matcher, fields=None),
            ),
            ("sd-journal, rules' fields", lambda: read_all(ns, tag, n, None)),
            ("sd-journal, rules' fields + Matcher", lambda: read_all(ns, tag, n, matcher)),
        ]
        if args.stages:
            words = args.stages.split(",")
            stages = [st for st in stages if any(w in st[0] for w in words)]
        samples: dict[str, list[Sample]] = {label: [] for label, _ in stages}
        for _ in range(args.repeat):  # interleaved: each round sees the same machine
            for label, run in stages:
                samples[label].append(await measure(ns, run))
        print(
            f"{args.repeat} interleaved rounds; median (range). Entries/s by the wall clock and "
            "per CPU second of the reading processes (ours, plus the journalctl child's for the "
            "fallback; the child's alone for `journalctl` alone); the share of a core they got "
            "(CPU / wall); what journald and every other process on the machine used meanwhile, "
            "in cores.\n"
        )
        print(
            "| stage | entries/s, wall | entries/s of CPU | CPU s / 100k entries | share of a core "
            "| journald, cores | others, cores |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, _ in stages:
            got = samples[label]
            child = (
                ""
                if not any(x.child for x in got)
                else (f", child {statistics.median(x.child for x in got) * 1e5 / n:.2f}")
            )
            print(
                f"| {label} | {rng([n / x.wall for x in got])} | {rng([n / x.cpu for x in got])} "
                f"| {rng([x.cpu * 1e5 / n for x in got], '.2f')}{child} "
                f"| {rng([x.cpu / x.wall for x in got], '.2f')} "
                f"| {rng([x.journald / x.wall for x in got], '.2f')} "
                f"| {rng([x.others / x.wall for x in got], '.2f')} |"
            )
        print()
        for base in ("`journalctl -o json` alone", "`journalctl -o export` alone"):
            if base not in samples:
                continue
            for label in [lb for lb in samples if lb.endswith("+ Matcher")]:
                pairs = list(zip(samples[label], samples[base], strict=True))
                by_wall = statistics.median(b.wall / x.wall for x, b in pairs)
                by_cpu = statistics.median(b.cpu / x.cpu for x, b in pairs)
                print(f"{label} / {base}, per round (median): {by_wall:.2f}x by the wall clock, "
                      f"{by_cpu:.2f}x by CPU")  # fmt: skip
        head, floor = (
            "sd-journal, rules' fields + Matcher",
            "sd-journal binding alone, rules' fields",
        )
        if head in samples:
            print(
                f"\n{head}, each round: entries/s by the wall clock / per CPU second; the share "
                "of a core it got and the cores the other processes used; its CPU per entry as a "
                "multiple of the binding's alone in the same round (the machine's speed drifts: "
                "this does not)"
            )
            for i, x in enumerate(samples[head]):
                vs = (
                    f", {x.cpu / samples[floor][i].cpu:.2f}x the binding"
                    if floor in samples
                    else ""
                )
                print(
                    f"- {n / x.wall:,.0f} / {n / x.cpu:,.0f} ({x.cpu / x.wall:.2f} of a core, "
                    f"others {x.others / x.wall:.2f}{vs})"
                )
        if args.latency <= 0:
            return

        print(f"\n### sendto → batch yielded latency ({args.latency} entries)\n")
        print("| traffic | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|")
        for label, burst in (("1 entry / 5 ms", 1), ("bursts of 200", 200)):
            for who, fn in (("bare journalctl -f", latency_plain), ("JournaldSource", latency)):
                lat = await fn(ns, args.latency, burst)
                print(
                    f"| {label}, {who} | {statistics.median(lat):.2f} | {pct(lat, 99):.2f} "
                    f"| {max(lat):.2f} |"
                )
        lat = await end_to_end(ns, 200)
        print("\n### sendto → webhook received, through the agent (200 entries, one / 20 ms)\n")
        print("| p50 ms | p99 ms | max ms |")
        print("|---:|---:|---:|")
        print(f"| {statistics.median(lat):.0f} | {pct(lat, 99):.0f} | {max(lat):.0f} |")
    finally:
        ns.stop()


if __name__ == "__main__":
    asyncio.run(main())
