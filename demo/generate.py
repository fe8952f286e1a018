"""Writes demo log lines: normal traffic, application errors and an SSH brute force.

Used by ``make demo`` (demo/run_demo.py). Deterministic enough to show every alert kind of the
bundled rules.yaml within about 20 seconds.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime
from pathlib import Path


def stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def syslog_stamp() -> str:
    return datetime.now(UTC).strftime("%b %d %H:%M:%S")


def clf_stamp() -> str:
    return datetime.now(UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def write(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--seconds", type=float, default=3600.0)
    args = ap.parse_args()
    d: Path = args.dir
    (d / "nginx").mkdir(parents=True, exist_ok=True)
    app, auth, access = d / "app.log", d / "auth.log", d / "nginx" / "access.log"
    for p in (app, auth, access):
        p.touch()
    rng = random.Random(7)
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < args.seconds:
        tick += 1
        write(app, f"{stamp()} INFO api: request served in {rng.randint(3, 90)}ms")
        write(app, f"{stamp()} INFO api: health-check ok")
        status = 200 if tick % 9 else 502
        ip = f"198.51.100.{rng.randint(1, 254)}"
        write(access, f'{ip} - - [{clf_stamp()}] "GET /api HTTP/1.1" {status} 157 "-" "curl/8.0"')
        if tick % 4 == 0:
            write(app, f"{stamp()} ERROR billing: payment provider returned 502")
        if 6 <= tick <= 14:
            write(
                auth,
                f"{syslog_stamp()} demo-host sshd[{4000 + tick}]: Failed password for root "
                f"from 203.0.113.7 port 22 ssh2",
            )
        time.sleep(1.0)


if __name__ == "__main__":
    main()
