"""``make bench``: every benchmark in turn, each printing its own markdown tables.

Each script also runs on its own (see its docstring). Matching and ingest compare against
``grep -c -E -f`` on the same input in the same run; journald needs root (a private journald).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ("matching and replay vs grep", ["bench_match.py"]),
    ("live ingest vs grep", ["bench_ingest.py"]),
    ("start-up and reload, 150 fail2ban-style rules", ["bench_startup.py"]),
    ("silence: 10,000 heartbeat rules in memory", ["bench_silence.py"]),
    ("silence: alert lateness, end to end", ["bench_silence_latency.py"]),
    ("delivery: outbox throughput and memory", ["bench_delivery.py"]),
    ("live agent: cost per write() and at rest", ["bench_writes.py"]),
    ("journald source", ["bench_journald.py"]),
    ("anomaly detection on Loghub (vs drain3)", ["bench_anomaly.py"]),
]


def main() -> int:
    failed = []
    for title, argv in SCRIPTS:
        print(f"\n## {title}\n", flush=True)
        rc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], check=False)
        if rc.returncode:
            failed.append(title)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
