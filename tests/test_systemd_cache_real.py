"""The compiled-pattern cache under a real systemd: ``CacheDirectory=detector`` and a big rule set.

systemd boots in its own namespaces (tests/systemd_env.py: its /var/cache is a tmpfs, so
``/var/cache/detector`` is the namespace's). The unit file goes in unchanged with a drop-in for the
paths, ``WatchdogSec=3s`` and, until the last step, no ``ExecStartPre=`` (whose ``detector check``
would warm the cache before the agent starts). 450 rules over 30 sources (the bench's
fail2ban-style set in three variants) take several seconds to compile, longer than the watchdog:

1. cold cache: the agent compiles in a thread while its event loop pings the watchdog, first the
   literal skeletons (READY=1), then the full databases (the cache directory fills with those);
   the unit reaches active without a watchdog kill;
2. a restart loads every database from the cache ("... 30 of 30 sources from the cache", no
   skeleton);
3. a damaged entry is refused, its source starts on its skeleton, the full database is rebuilt
   and replaced ("29 of 30"; step 4's start loads it);
4. ``detector check`` run by root outside the unit (no ``$CACHE_DIRECTORY``) fills the same
   ``/var/cache/detector`` (half its databases removed first), with entries the unit's dynamic
   user owns: the next start is warm.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.rulesets import f2b_style
from detector.matching.dbcache import FORMAT, SUFFIX
from tests.systemd_env import (
    Installation,
    SystemdNamespace,
    installation_fixture,
    systemd_ns_fixture,
)

__all__ = ["installation_fixture", "systemd_ns_fixture"]

pytestmark = [pytest.mark.systemd, pytest.mark.slow]

WATCHDOG_S = 3  # the first ping comes ~1.5 s after exec (imports) on a loaded machine
VARIANTS = 3  # x 150 rules
SOURCES = 30
COMPILED = re.compile(
    r"patterns compiled in ([\d.]+)s \((\d+) of (\d+) sources from the cache\)"
    r"(?:; (\d+) on literal skeletons)?"
)
UPGRADED = re.compile(r"full pattern databases compiled in ([\d.]+)s \((\d+) sources\)")
HEADER = len(FORMAT) + 64 + 1 + 32  # magic, key, newline, SHA-256: then the payload


def big_rules(log_dir: Path) -> str:
    """450 rules: ``bench/rulesets/f2b_style.py``'s 150 in three variants (other databases)."""
    text = f2b_style.rules_yaml(log_dir)
    head, _, rules = text.partition("rules:\n")
    for v in range(1, VARIANTS):
        for name, source, regex, _ in f2b_style.rules(v):
            rules += (
                f"  - name: {name}-v{v}\n    source: {source}\n    match: {json.dumps(regex)}\n"
            )
    return head + "rules:\n" + rules


def until(predicate: Callable[[], bool], within: float) -> bool:
    """Poll ``predicate`` (journalctl, systemctl) until it holds or ``within`` s have passed."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)  # polling another process's journal: there is no event to wait on
    return True


@pytest.mark.timeout(240)
def test_big_rule_set_starts_under_the_watchdog_and_restarts_from_the_cache(
    systemd_ns: SystemdNamespace, installation: Installation
) -> None:
    ns, inst, unit = systemd_ns, installation, installation.unit
    logs = inst.root / "log"
    inst.write_rules(big_rules(logs))
    for name in re.findall(r'file: "[^"]*/([\w-]+)\.log"', inst.rules.read_text()):
        (logs / f"{name}.log").write_text("")
        (logs / f"{name}.log").chmod(0o644)
    cache = ns.root / "var" / "cache" / "detector"  # the namespace's (a tmpfs)
    no_pre = {"WatchdogSec": f"{WATCHDOG_S}s", "ExecStartPre": ""}
    inst.install_unit(ns, **no_pre)
    assert ns.systemctl("daemon-reload").returncode == 0

    def status() -> str:
        journal = ns.journalctl("-u", unit, "-n", "40", "-o", "short-monotonic").stdout
        return ns.systemctl("status", "-n", "0", unit).stdout + "\n" + journal

    def start(how: str) -> tuple[int, float, int, int]:
        """``systemctl start``/``restart``: must end active with no restart; then the agent's
        "patterns compiled" line of this run: (pid, seconds, sources from the cache, sources on
        their skeletons); with skeletons, waits for the full databases' line too (its seconds
        added)."""
        done = ns.systemctl(how, unit)
        state = ns.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts", "Result")
        assert done.returncode == 0 and state["ActiveState"] == "active", (
            f"systemctl {how} failed ({done.returncode}): {done.stderr}\n{state}\n{status()}"
        )
        assert state["NRestarts"] == "0", f"restarted during the start: {state}\n{status()}"
        pid = int(state["MainPID"])
        found: list[re.Match[str]] = []

        def logged() -> bool:
            out = ns.journalctl(f"_PID={pid}", "-o", "cat").stdout
            found[:] = list(COMPILED.finditer(out))
            return bool(found)

        assert until(logged, 15), f"no 'patterns compiled' line from pid {pid}:\n{status()}"
        m = found[-1]
        assert int(m[3]) == SOURCES, m[0]
        skeletons = int(m[4] or 0)
        if not skeletons:
            return pid, float(m[1]), int(m[2]), 0
        upgraded: list[re.Match[str]] = []

        def full() -> bool:
            out = ns.journalctl(f"_PID={pid}", "-o", "cat").stdout
            upgraded[:] = list(UPGRADED.finditer(out))
            return bool(upgraded)

        assert until(full, 60), f"no 'full pattern databases' line from pid {pid}:\n{status()}"
        assert int(upgraded[-1][2]) == skeletons, (m[0], upgraded[-1][0])
        return pid, float(m[1]) + float(upgraded[-1][1]), int(m[2]), skeletons

    def entries() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in cache.iterdir() if p.suffix == SUFFIX}

    # 1. cold: compiled by the agent (the skeletons, then the full databases in the background),
    # for longer than the watchdog, which never fires
    _pid, seconds, cached, skeletons = start("start")
    assert cached == 0, f"the cache was not cold: {cached} sources from it"
    assert skeletons > 0, "no source started on its literal skeletons"
    assert seconds > WATCHDOG_S, (
        f"the compile took {seconds}s: no longer than WatchdogSec={WATCHDOG_S}s, so this run "
        "does not show that the watchdog is pinged while compiling (use more rules)"
    )
    journal = ns.journalctl("-u", unit).stdout
    assert "Watchdog timeout" not in journal, journal[-3000:]
    assert cache.is_symlink() and os.readlink(cache) == "private/detector", "DynamicUser layout"
    cold = entries()
    assert len(cold) >= SOURCES, sorted(cold)
    owner = cache.stat().st_uid
    assert owner != 0 and {(cache / n).stat().st_uid for n in cold} == {owner}

    # 2. warm: every database from the cache
    _pid, seconds, cached, skeletons = start("restart")
    assert cached == SOURCES, f"a warm restart took {cached} of {SOURCES} from the cache"
    assert skeletons == 0, f"a warm restart started {skeletons} sources on their skeletons"

    # 3. a damaged entry: refused (said so), rebuilt, replaced by a good one
    victim = next(n for n, raw in sorted(cold.items()) if not raw[HEADER:].startswith(b"["))
    raw = bytearray(cold[victim])  # a database, not the analyses (JSON)
    raw[HEADER + len(raw[HEADER:]) // 2] ^= 0xFF
    (cache / victim).write_bytes(bytes(raw))
    pid, seconds, cached, skeletons = start("restart")  # waits for the rebuild (the upgrade)
    assert cached == SOURCES - 1, f"{cached} from the cache after damaging {victim}"
    assert skeletons == 1, f"{skeletons} sources on their skeletons after damaging {victim}"
    said = ns.journalctl(f"_PID={pid}", "-o", "cat").stdout
    assert f"{victim} is unusable (checksum mismatch" in said, said[-3000:]
    assert (cache / victim).read_bytes() != bytes(raw), f"{victim} was not replaced"

    # 4. root's `detector check` (no $CACHE_DIRECTORY) warms the unit's cache, for its user
    assert ns.systemctl("stop", unit).returncode == 0
    databases = sorted(n for n, raw in entries().items() if not raw[HEADER:].startswith(b"["))
    dropped = [n for n in databases[::2] if n != victim]  # the rebuilt one must load (below)
    for name in dropped:  # half the databases: root's check compiles those again
        (cache / name).unlink()
    env = ["env", "-i", "PATH=/usr/bin:/bin", "HOME=/root"]
    done = ns.run(*env, str(inst.detector), "check", "-c", str(inst.rules), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    warmed = entries()
    assert set(dropped) <= set(warmed), "root's check wrote elsewhere than /var/cache/detector"
    assert {(cache / n).stat().st_uid for n in warmed} == {owner}, "not given to the unit's user"
    _pid, seconds, cached, skeletons = start("start")
    assert (cached, skeletons) == (SOURCES, 0), (
        f"after root's check (and the rebuild of {victim}): {cached} of {SOURCES} from the cache"
    )
    assert ns.systemctl("stop", unit).returncode == 0
