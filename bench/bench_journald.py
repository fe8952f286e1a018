"""Benchmark of the journald source against a real private journald (prints markdown tables).

1. Throughput: N entries (realistic fields, ~1 in 1,000 an error) are written to a private
   journald namespace; then, in the same run, (a) ``journalctl`` alone into a pipe we drain
   (``-o json``, ``-o json --output-fields=`` of the rules' fields, ``-o export``, ``-o cat``:
   what journalctl can export), (b) ``JournaldSource`` from the beginning until caught up, on
   each reader (``journalctl``: the fallback; ``sd-journal``: the binding), reading every field
   (``fields=None``, as before issue 20.5) and only the rules' fields (``FIELDS``), and (c) each
   with a ``Matcher`` of 20 rules run over every batch. Entries/s: the median and the range over
   ``--repeat`` interleaved rounds, and the median as a ratio to ``journalctl -o json`` alone.
2. Latency: a following source; entries are sent one at a time (``sendto`` on the native socket)
   and the time from just before ``sendto`` to the batch holding the entry being yielded is taken,
   one entry every 5 ms and in bursts of 200; p50/p99/max, next to the same measurement on a bare
   ``journalctl --follow`` (journald's own share: it signals followers through inotify at most
   every 250 ms, see ``POST_CHANGE_TIMER_INTERVAL_USEC`` in systemd's journal-file.c).

Run as root: ``.venv/bin/python bench/bench_journald.py [--entries 100000] [--repeat 3]
[--latency 500]`` (``--latency 0``: throughput only).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
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
) -> float:
    cfg = JournaldSourceConfig(
        name="jd", namespace=ns.name, start_at="beginning", match={"DETECTOR_TEST": (tag,)}
    )
    src = JournaldSource(cfg, {}, SystemClock(), reader=reader, fields=fields)
    assert src.reader == reader, src.reader_why
    seen = hits = 0
    t0 = time.perf_counter()
    async for batch in src.batches():
        seen += len(batch.lines)
        if matcher is not None:
            hits += len(matcher.match("jd", [line.text for line in batch.lines]))
        if seen >= n and src.caught_up():
            break
    secs = time.perf_counter() - t0
    await src.aclose()
    assert seen == n, seen
    if matcher is not None:
        assert hits == n // 1000 * 2, hits  # ERROR [mod] and status=5xx on every error line
    return secs


def journalctl_alone(ns: JournaldNamespace, tag: str, *output: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        ["journalctl", f"--namespace={ns.name}", *(output or ["--output=json"]), "--all",
         "--no-pager", f"DETECTOR_TEST={tag}"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    while proc.stdout.read(1 << 20):
        pass
    proc.wait()
    return time.perf_counter() - t0


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
        rates: dict[str, list[float]] = {label: [] for label, _ in stages}
        for _ in range(args.repeat):  # interleaved: each round sees the same machine
            for label, run in stages:
                got = run()
                secs = await got if asyncio.iscoroutine(got) else got
                rates[label].append(n / secs)
        med = {label: statistics.median(r) for label, r in rates.items()}
        base = med[stages[0][0]]
        print(f"{args.repeat} interleaved rounds; median and range of entries/s\n")
        print("| stage | entries/s (median) | range | x `journalctl -o json` (median) |")
        print("|---|---:|---:|---:|")
        for label, _ in stages:
            r = rates[label]
            print(
                f"| {label} | {med[label]:,.0f} | {min(r):,.0f}–{max(r):,.0f} "
                f"| {med[label] / base:.2f}x |"
            )
        print()
        for label in ("journalctl reader", "sd-journal"):
            every, some = (
                med[f"{label}, every field + Matcher"],
                med[f"{label}, rules' fields + Matcher"],
            )
            print(f"{label} + Matcher: rules' fields / every field: {some / every:.2f}x")
        per_round = [
            a / b
            for a, b in zip(
                rates["sd-journal, rules' fields + Matcher"], rates[stages[0][0]], strict=True
            )
        ]
        print(
            "sd-journal, rules' fields + Matcher / `journalctl -o json`, per round: "
            + ", ".join(f"{x:.2f}x" for x in per_round)
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
