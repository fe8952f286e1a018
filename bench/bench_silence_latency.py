"""Benchmark: how late silence alerts fire relative to their deadlines, end to end.

Starts the real agent (``python -m detector run``) with N short heartbeat rules (every 2–4 s) on one
file, writes one line per rule, and lets every rule go silent. A receiver on 127.0.0.1 records the
arrival time of each alert; lateness = arrival − the alert's deadline (its ``startsAt``, which the
heartbeat rule sets to exactly last match + every). Prints p50/p90/p99/max.

    .venv/bin/python bench/bench_silence_latency.py [--rules 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from live import start_agent, start_receiver  # bench/live.py, next to this script


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rules", type=int, default=200)
    args = ap.parse_args()
    arrivals: list[tuple[float, dict[str, object]]] = []
    done = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        now = time.time()
        for alert in body["alerts"]:
            if alert["status"] == "firing":
                arrivals.append((now, alert))
        if len(arrivals) >= args.rules:
            done.set()
        return web.Response(text="ok")

    runner, port = await start_receiver(handle)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        log = d / "hb.log"
        log.touch()
        rules = "\n".join(
            f"  - {{name: hb{i}, source: app, match: 'hb{i}\\b', expect: {{every: {2 + i % 3}s}}}}"
            for i in range(args.rules)
        )
        (d / "rules.yaml").write_text(
            f"version: 1\nagent: {{state: {d / 'state.db'}, host: bench}}\n"
            f"webhooks: {{hook: {{url: 'http://127.0.0.1:{port}/hook'}}}}\n"
            f"sources: {{app: {{file: '{log}'}}}}\nrules:\n{rules}\n"
        )
        agent, drain = await start_agent(Path(str(d / "rules.yaml")))
        with log.open("a") as f:
            f.write("".join(f"hb{i} alive\n" for i in range(args.rules)))
        try:
            await asyncio.wait_for(done.wait(), timeout=60)
        finally:
            agent.terminate()
            await agent.wait()
            drain.cancel()
    await runner.cleanup()
    late = []
    for arrived, alert in arrivals:
        deadline = datetime.fromisoformat(str(alert["startsAt"]).replace("Z", "+00:00"))
        late.append((arrived - deadline.astimezone(UTC).timestamp()) * 1000)
    print(f"silence alert lateness over {len(late)} heartbeat rules (ms after the deadline):")
    print("| p50 | p90 | p99 | max | mean |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {quantile(late, 0.5):.0f} | {quantile(late, 0.9):.0f} | {quantile(late, 0.99):.0f} "
        f"| {max(late):.0f} | {statistics.fmean(late):.0f} |"
    )


if __name__ == "__main__":
    asyncio.run(main())
