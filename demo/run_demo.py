"""``make demo``: the agent on the bundled rules.yaml, fed by a log generator, alerting a local
receiver that prints what it gets. Stop it with Ctrl-C.

Everything lives under demo/run/ (logs and the state file) and is started afresh each time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = never)")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    run = ROOT / "demo" / "run"
    shutil.rmtree(run, ignore_errors=True)
    (run / "nginx").mkdir(parents=True)
    for name in ("app.log", "auth.log", "nginx/access.log"):
        (run / name).touch()
    env = {
        **os.environ,
        "DETECTOR_LOG_DIR": str(run),
        "STATE_DIRECTORY": str(run),
        "DETECTOR_WEBHOOK_URL": f"http://127.0.0.1:{args.port}/alerts",
        "PYTHONUNBUFFERED": "1",
    }
    py = sys.executable
    procs = [
        subprocess.Popen(
            [py, str(ROOT / "demo" / "receiver.py"), "--port", str(args.port)], env=env
        ),
    ]
    time.sleep(1.0)
    procs.append(
        subprocess.Popen(
            [py, "-m", "detector", "run", "-c", str(ROOT / "rules.yaml")], env=env, cwd=ROOT
        )
    )
    time.sleep(1.5)
    procs.append(subprocess.Popen([py, str(ROOT / "demo" / "generate.py"), str(run)], env=env))
    print(
        f"demo running: logs in {run}, alerts print below (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    try:
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                print("demo: a process exited early", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
