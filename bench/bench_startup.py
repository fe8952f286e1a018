"""Start-up, reload and command start: the detector on ~150 fail2ban-style rules against itself
with one rule, and against grep.

One command (``.venv/bin/python bench/bench_startup.py``; ``--runs N`` per figure, 3 by
default) writes the rule set of ``bench/rulesets/f2b_style.py`` (150 rules over 30 sources, our
own regexes: a syslog prefix macro, a host macro, alternations, optional groups, lookarounds)
under a work directory, byte-compiles ``detector/`` first (an installed package has its .pyc;
with ``PYTHONDONTWRITEBYTECODE`` every run would compile the sources again), then measures, each
as a child process:

1. ``detector run`` from spawn to READY=1 on a real sd_notify socket: 150 rules with an empty
   compiled-pattern cache (cold), with the cache ``detector check`` warmed (warm), and one rule
   (warm); the ratios against one rule are the targets (warm ≤ 2x, cold ≤ 4x).
2. A reload (SIGHUP) to a rule set whose every pattern changed (nothing in the cache): the
   longest answer time of ``/healthz``, probed back to back on one keep-alive connection from
   RELOADING=1 to READY=1, against the same probe on the idle agent (target: < 100 ms).
3. ``detector check`` and ``detector test`` on an empty file, with one rule and with the 150
   (warm cache), against ``grep -c`` on the same file and the floor of any Python command,
   ``python -c pass`` and ``python -c 'import yaml'``, interleaved (target: ≤ 0.15 s; on a
   loaded machine read the ratios to the floor). ``--commands-only`` runs this section alone.
4. In-process: where the build time goes (the Python side: ``re``, analysis and the Pike VM;
   Hyperscan's compile per source), and what Hyperscan would cost with other choices: one
   database for all sources, prefilter mode, start-of-match tracking.

Times are medians of ``--runs`` runs, with the range; the machine is shared, so read ranges.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "rulesets"))
sys.path.insert(0, str(ROOT))

import f2b_style  # noqa: E402 - from bench/rulesets, on the path just above

DETECTOR = [sys.executable, "-m", "detector"]


def fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.3f} s ({min(values):.3f}–{max(values):.3f})"


class Notify:
    """A real sd_notify socket: ``wait_for("READY=1")`` returns when that datagram arrives."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def wait_for(
        self, what: str, proc: subprocess.Popen[bytes] | None = None, within: float = 180.0
    ) -> float:
        """When the datagram ``what`` arrives; fails at once if ``proc`` exits meanwhile (an
        agent that crashed never says READY=1: do not wait ``within`` for it)."""
        deadline = time.perf_counter() + within
        self.sock.settimeout(0.05)
        while True:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                if proc is not None and proc.poll() is not None:
                    exited = f"the agent exited ({proc.returncode}) before {what}"
                    raise RuntimeError(exited) from None
                if time.perf_counter() > deadline:
                    raise
                continue
            if what in message.split("\n"):
                return time.perf_counter()

    def drain(self) -> None:
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(4096)
        self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


def spawn(cfg: Path, notify: Notify, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``detector run``; seconds until READY=1."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*DETECTOR, "run", "-c", str(cfg)],
        env={**env, "NOTIFY_SOCKET": notify.path},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ready = notify.wait_for("READY=1", proc)
    return proc, ready - started


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def min_time(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
        out.append(time.perf_counter() - started)
    return out


class Prober(threading.Thread):
    """GET /healthz back to back on one keep-alive connection; the longest answer time of the
    probes that started inside a window (``mark_start`` … ``mark_end``)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float]] = []  # (started, seconds)
        self.halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.halt.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                continue
            self.samples.append((t0, time.perf_counter() - t0))

    def longest(self, start: float, end: float) -> tuple[float, int]:
        inside = [s for t, s in self.samples if start <= t <= end]
        return (max(inside) if inside else float("nan")), len(inside)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def startup(work: Path, runs: int, env: dict[str, str], notify: Notify) -> dict[str, list[float]]:
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    for _, source, _, _ in f2b_style.rules():
        (logs / f"{source}.log").touch()
    results: dict[str, list[float]] = {"cold": [], "warm": [], "one": []}
    for n in range(runs):
        for case in ("cold", "warm", "one"):
            cache = work / (f"cache-cold-{n}" if case == "cold" else "cache-warm")
            agent = f'state: "{work}/state-{case}.db", cache_dir: "{cache}"'
            count = 1 if case == "one" else f2b_style.N_RULES
            cfg = write(work / f"{case}.yaml", f2b_style.rules_yaml(logs, count, agent=agent))
            if case != "cold":
                subprocess.run([*DETECTOR, "check", "-c", str(cfg)], env=env, check=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
            proc, seconds = spawn(cfg, notify, env)
            stop(proc)
            results[case].append(seconds)
    return results


def reload(work: Path, runs: int, env: dict[str, str], notify: Notify) -> list[tuple[float, float]]:
    """Per run: (longest /healthz answer during a reload that compiles everything, the same on
    the idle agent over as long)."""
    logs = work / "logs"
    port = free_port()
    agent = f'state: "{work}/state-reload.db", cache_dir: "{work}/cache-reload", '
    agent += f"listen: 127.0.0.1:{port}"
    cfg = write(work / "reload.yaml", f2b_style.rules_yaml(logs, agent=agent))
    proc, _ = spawn(cfg, notify, env)
    prober = Prober(port)
    prober.start()
    out = []
    try:
        for n in range(1, runs + 1):
            # the file watcher reloads an edited file by itself too (then from the cache):
            # let it pass, forget its datagrams, then measure the idle agent
            time.sleep(2.5)
            notify.drain()
            idle_from = time.perf_counter()
            time.sleep(1.0)
            idle_to = time.perf_counter()
            write(cfg, f2b_style.rules_yaml(logs, variant=n, agent=agent))
            started = time.perf_counter()
            proc.send_signal(signal.SIGHUP)
            notify.wait_for("RELOADING=1", proc)
            ended = notify.wait_for("READY=1", proc)
            during, probes = prober.longest(started, ended)
            idle, _ = prober.longest(idle_from, idle_to)
            print(f"  reload {n}: {ended - started:.2f} s, {probes} probes meanwhile")
            out.append((during, idle))
    finally:
        prober.halt.set()
        prober.join()
        stop(proc)
    return out


def build_profile() -> None:
    """Where a 150-rule build goes, in this process, with the cache off."""
    import hyperscan as hs  # noqa: PLC0415

    from detector.matching import Matcher, PatternSpec, engine  # noqa: PLC0415

    rules = f2b_style.rules()
    specs = [PatternSpec(n, "match", r, frozenset({s})) for n, s, r, _ in rules]
    t0 = time.perf_counter()
    matcher = Matcher(specs)
    python_s = time.perf_counter() - t0
    captured: list[list[bytes]] = []
    real = engine._compile_db

    def spy(exprs: list[bytes]) -> Any:
        captured.append(list(exprs))
        return real(exprs)

    engine._compile_db = spy  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        matcher.warm(sorted({s for _, s, _, _ in rules}))
        hs_s = time.perf_counter() - t0
    finally:
        engine._compile_db = real  # type: ignore[assignment]

    def compile_s(sets: list[list[bytes]], extra: int) -> float:
        t = time.perf_counter()
        for exprs in sets:
            db = hs.Database(mode=hs.HS_MODE_BLOCK)
            db.compile(expressions=exprs, ids=list(range(len(exprs))), elements=len(exprs),
                       flags=[engine._hs_flags() | extra] * len(exprs))  # fmt: skip
        return time.perf_counter() - t

    flat = [e for s in captured for e in s]
    print("\n## Where the build of 150 rules goes (cache off, in-process)\n")
    print("| step | seconds |\n|---|---:|")
    print(f"| Python: `re.compile`, translation/analysis, Pike VM programs | {python_s:.3f} |")
    print(f"| Hyperscan, one database per source ({len(captured)}) | {hs_s:.3f} |")
    print(f"| Hyperscan, the same {len(flat)} expressions in one database | "
          f"{compile_s([flat], 0):.3f} |")  # fmt: skip
    print(f"| Hyperscan, one database per expression | {compile_s([[e] for e in flat], 0):.3f} |")
    try:
        print(f"| … per source with `HS_FLAG_PREFILTER` | "
              f"{compile_s(captured, hs.HS_FLAG_PREFILTER):.3f} |")  # fmt: skip
    except hs.error as e:
        print(f"| … per source with `HS_FLAG_PREFILTER` | refused: {e} |")
    try:
        print(f"| … per source with `HS_FLAG_SOM_LEFTMOST` (not used) | "
              f"{compile_s(captured, hs.HS_FLAG_SOM_LEFTMOST):.3f} |")  # fmt: skip
    except hs.error as e:
        print(f"| … per source with `HS_FLAG_SOM_LEFTMOST` (not used) | refused: {e} |")
    costly = sorted(((compile_s([[e]], 0), e) for e in flat), reverse=True)[:3]
    for seconds, e in costly:
        print(f"| costliest expression alone: `{e[:60].decode()}…` | {seconds:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--command-runs", type=int, default=7, help="runs of each command (3.)")
    ap.add_argument(
        "--commands-only", action="store_true", help="only section 3: the commands' start"
    )
    args = ap.parse_args()
    compileall.compile_dir(str(ROOT / "detector"), quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory(prefix="detector-startup-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.commands_only:
            commands(work, env, args.command_runs)
            return
        notify = Notify(work)
        try:
            sources = len({s for _, s, _, _ in f2b_style.rules()})
            print(f"# Start-up and reload, {f2b_style.N_RULES} fail2ban-style rules over "
                  f"{sources} sources, {args.runs} runs\n")  # fmt: skip
            res = startup(work, args.runs, env, notify)
            one = statistics.median(res["one"])
            print("| `detector run` to READY=1 | median (range) | vs one rule |\n|---|---:|---:|")
            for case, label in (("one", "1 rule"), ("warm", "150 rules, warm cache"),
                                ("cold", "150 rules, cold cache")):  # fmt: skip
                ratio = statistics.median(res[case]) / one
                print(f"| {label} | {fmt(res[case])} | {ratio:.2f}× |")
            print("\n## Reload to 150 changed rules (nothing cached): longest /healthz answer\n")
            pairs = reload(work, args.runs, env, notify)
            print("\n| run | during the reload | idle agent |\n|---|---:|---:|")
            for n, (during, idle) in enumerate(pairs, 1):
                print(f"| {n} | {during * 1000:.0f} ms | {idle * 1000:.0f} ms |")
            commands(work, env, args.command_runs)
        finally:
            notify.close()
    build_profile()


def commands(work: Path, env: dict[str, str], runs: int) -> None:
    """Section 3: ``detector check`` and ``detector test`` on an empty file, interleaved with
    the floor of any Python command (``python -c pass``, and with the YAML parser imported) and
    grep; the ratios to the floor are what a loaded machine does not change much."""
    print(f"\n## Command start on an empty file (median and range of {runs}, interleaved)\n")
    empty = write(work / "empty.log", "")
    logs = work / "logs"
    one_cfg = write(work / "one-cmd.yaml", f2b_style.rules_yaml(
        logs, 1, agent=f'cache_dir: "{work}/cache-warm"'))  # fmt: skip
    all_cfg = write(work / "all-cmd.yaml", f2b_style.rules_yaml(
        logs, agent=f'cache_dir: "{work}/cache-warm"'))  # fmt: skip
    cmds: dict[str, list[str]] = {
        "`grep -c -E`": ["grep", "-c", "-E", "Failed password", str(empty)],
        "`python -c pass`": [sys.executable, "-c", "pass"],
        "`python -c 'import yaml'`": [sys.executable, "-c", "import yaml"],
    }
    for label, cfg in (("1 rule", one_cfg), ("150 rules", all_cfg)):
        cmds[f"`detector check`, {label}"] = [*DETECTOR, "check", "-c", str(cfg)]
        cmds[f"`detector test`, {label}"] = [*DETECTOR, "test", "-c", str(cfg), str(empty)]
    for label in ("1 rule", "150 rules"):  # the warm cache the labels say
        min_time(cmds[f"`detector check`, {label}"], 1, env)
    times: dict[str, list[float]] = {label: [] for label in cmds}
    for _ in range(runs):
        for label, cmd in cmds.items():
            times[label] += min_time(cmd, 1, env)
    floor = statistics.median(times["`python -c pass`"])
    with_yaml = statistics.median(times["`python -c 'import yaml'`"])
    print("| command | median (range) | vs `python -c pass` | vs `import yaml` |")
    print("|---|---:|---:|---:|")
    for label, got in times.items():
        mid = statistics.median(got)
        print(f"| {label} | {fmt(got)} | {mid / floor:.2f}× | {mid / with_yaml:.2f}× |")


if __name__ == "__main__":
    main()
