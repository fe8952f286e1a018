"""The compiled-pattern cache (matching/dbcache.py) with the real hyperscan wheel and real files:
a miss then a hit; damaged, truncated, bit-flipped and wrong-key entries rebuilt and replaced
(said once); an unwritable directory (the matcher still works, said once); eviction; the key;
``detector check`` warming it and ``--timings``."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from detector.config import load_config, sections
from detector.config.sections import default_cache_dir
from detector.matching import Matcher, PatternSpec, open_db_cache
from detector.matching import engine as engine_mod
from detector.matching.dbcache import FORMAT, SUFFIX, DbCache, cpu_features, db_key
from detector.pipeline import build_matcher

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "detector.service"
hs = importlib.import_module("hyperscan")  # a dependency: never skipped

AUTH = r"Failed password for (?P<user>\S+) from (?P<ip>[\d.]+)"
SPECS = [
    PatternSpec("auth", "match", AUTH, frozenset({"a"})),
    PatternSpec("oom", "match", r"Out of memory: Killed process (?P<pid>\d+)", frozenset({"a"})),
    PatternSpec("ignored", "ignore", r"from 10\.", frozenset({"a"})),
]  # fmt: skip
LINES = [
    "sshd[1]: Failed password for root from 203.0.113.9 port 22",
    "kernel: Out of memory: Killed process 4242 (java)",
    "nothing to see",
    "sshd[1]: Failed password for bob from 198.51.100.1",
]


def hits(m: Matcher) -> list[tuple[int, str, dict[str, str]]]:
    return [(h.line, h.rule, h.groups) for h in m.match("a", LINES)]


EXPECTED = [
    (0, "auth", {"user": "root", "ip": "203.0.113.9"}),
    (1, "oom", {"pid": "4242"}),
    (3, "auth", {"user": "bob", "ip": "198.51.100.1"}),
]


def fresh(directory: Path) -> tuple[Matcher, DbCache]:
    cache = DbCache(directory, hs)
    m = Matcher(SPECS, db_cache=cache)
    m.warm(["a"])
    return m, cache


def analyses_entry(directory: Path, specs: list[PatternSpec]) -> Path:
    return directory / (engine_mod._analyses_key(sorted({s.regex for s in specs})) + SUFFIX)


def entries(directory: Path, specs: list[PatternSpec] | None = None) -> set[Path]:
    """The database entries (not the analyses of ``specs``) in ``directory``."""
    every = set(directory.glob("*" + SUFFIX))
    return every - {analyses_entry(directory, specs or SPECS)}


def entry(directory: Path) -> Path:
    (path,) = entries(directory)
    return path


def test_a_miss_compiles_and_stores_then_the_next_matcher_loads_it(tmp_path: Path) -> None:
    first, c1 = fresh(tmp_path)
    assert first.cached == {"a": False} and c1.stats() == {"hits": 0, "misses": 2, "rejected": 0}
    assert hits(first) == EXPECTED
    stored = entry(tmp_path)
    second, c2 = fresh(tmp_path)
    assert second.cached == {"a": True} and c2.stats()["hits"] == 2  # analyses + database
    assert hits(second) == EXPECTED  # the loaded database scans (it has its own scratch)
    assert entry(tmp_path) == stored


def damage_truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def damage_flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-100] ^= 0x10  # one bit inside the serialised database
    p.write_bytes(bytes(data))


def damage_garbage(p: Path) -> None:
    p.write_bytes(b"\x00" * 4096)


def damage_empty(p: Path) -> None:
    p.write_bytes(b"")


def damage_behind_a_good_checksum(p: Path) -> None:
    """A whole entry for the right key whose checksum matches, around bytes that are not a
    database: hyperscan itself must refuse them."""
    payload = bytes(range(256)) * 8
    head = FORMAT + p.stem.encode() + b"\n"
    p.write_bytes(head + hashlib.sha256(payload).digest() + payload)


@pytest.mark.parametrize(
    "damage",
    [damage_truncate, damage_flip, damage_garbage, damage_empty, damage_behind_a_good_checksum],
    ids=lambda f: f.__name__,
)
def test_a_damaged_entry_is_rebuilt_replaced_and_said_once(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    fresh(tmp_path)
    path = entry(tmp_path)
    good = path.read_bytes()
    assert callable(damage)
    caplog.set_level(logging.WARNING, logger="detector.matching.dbcache")
    cache = DbCache(tmp_path, hs)
    for _ in range(2):  # twice through one cache: one warning
        damage(path)
        m = Matcher(SPECS, db_cache=cache)
        m.warm(["a"])
        assert m.cached == {"a": False}
        assert hits(m) == EXPECTED
    assert cache.rejected == 2
    warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0] and "rebuilding" in warnings[0]
    assert path.read_bytes() == good  # replaced by the rebuilt one
    assert fresh(tmp_path)[0].cached == {"a": True}


def test_an_entry_stored_under_another_key_is_not_trusted(tmp_path: Path) -> None:
    other = [PatternSpec("x", "match", r"something else entirely", frozenset({"a"}))]
    m = Matcher(other, db_cache=DbCache(tmp_path, hs))
    m.warm(["a"])
    (foreign,) = entries(tmp_path, other)
    fresh(tmp_path)  # the real entry beside it
    (real,) = entries(tmp_path) - {foreign, analyses_entry(tmp_path, other)}
    real.write_bytes(foreign.read_bytes())  # a valid entry, but of another pattern set
    m2, cache = fresh(tmp_path)
    assert m2.cached == {"a": False} and cache.rejected == 1
    assert hits(m2) == EXPECTED  # "something else entirely" would match nothing here


def test_an_unwritable_cache_dir_leaves_matching_working_and_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file-in-the-way"
    blocked.write_text("not a directory")
    caplog.set_level(logging.WARNING, logger="detector.matching.dbcache")
    cache = open_db_cache(blocked / "cache")
    assert cache is not None and cache is open_db_cache(blocked / "cache")  # one per directory
    for _ in range(3):  # a start and two reloads
        m = Matcher(SPECS, db_cache=cache)
        m.warm(["a"])
        assert hits(m) == EXPECTED
    said = [r.getMessage() for r in caplog.records if "cache off" in r.getMessage()]
    assert len(said) == 1 and "agent.cache_dir" in said[0]
    assert cache.disabled


def test_the_directory_is_bounded_least_recently_used_go_first(tmp_path: Path) -> None:
    cache = DbCache(tmp_path, hs, max_entries=2)
    paths = []
    for n in range(3):
        assert cache.put_bytes(f"{n:064x}", b"payload %d" % n)
        path = cache.path(f"{n:064x}")
        os.utime(path, (1_000_000 + n, 1_000_000 + n))  # distinct ages, oldest first
        paths.append(path)
    assert cache.get_bytes(f"{0:064x}") is None  # evicted by the third put
    os.utime(paths[1], (1_000_000, 1_000_000))  # now the oldest
    assert cache.get_bytes(f"{2:064x}") == b"payload 2"  # a hit makes it the newest
    by_size = DbCache(tmp_path, hs, max_bytes=1)
    assert by_size.evict() == [paths[1]]  # the newest entry always stays
    assert list(tmp_path.glob("*" + SUFFIX)) == [paths[2]]


def test_stored_analyses_are_the_analyses_and_a_wrong_one_is_not_used(tmp_path: Path) -> None:
    m1, _ = fresh(tmp_path)
    stored = analyses_entry(tmp_path, SPECS)
    assert stored.exists()
    m2, cache = fresh(tmp_path)
    assert [c.analysis for c in m2._compiled] == [c.analysis for c in m1._compiled]
    assert cache.hits == 2  # the analyses and the database
    # a whole entry with a good checksum, but the analyses of other patterns
    payload = b'[["x", "x", true, null, false, true, [], null]]'
    key = stored.stem
    stored.write_bytes(FORMAT + key.encode() + b"\n" + hashlib.sha256(payload).digest() + payload)
    m3, cache3 = fresh(tmp_path)
    assert cache3.rejected == 1
    assert [c.analysis for c in m3._compiled] == [c.analysis for c in m1._compiled]
    assert hits(m3) == EXPECTED


def test_the_key_covers_patterns_flags_mode_engine_and_cpu_features() -> None:
    base = db_key([b"a", b"b"], [1, 1], 1, "engine 1", "x86_64:avx2")
    assert base == db_key([b"a", b"b"], [1, 1], 1, "engine 1", "x86_64:avx2")
    assert len({
        base,
        db_key([b"b", b"a"], [1, 1], 1, "engine 1", "x86_64:avx2"),
        db_key([b"a", b"b"], [1, 2], 1, "engine 1", "x86_64:avx2"),
        db_key([b"a", b"b"], [1, 1], 2, "engine 1", "x86_64:avx2"),
        db_key([b"a", b"b"], [1, 1], 1, "engine 2", "x86_64:avx2"),
        db_key([b"a", b"b"], [1, 1], 1, "engine 1", "x86_64:avx512f"),
        db_key([b"ab"], [1], 1, "engine 1", "x86_64:avx2"),
    }) == 7  # fmt: skip
    info = "processor\t: 0\nflags\t\t: fpu sse2 ssse3 avx avx2 bmi2 hypervisor\n"
    assert cpu_features(info).endswith(":sse2,ssse3,avx,avx2,bmi2")
    assert hs.__version__ in engine_mod.ENGINE


CONFIG = """\
version: 1
agent: {{cache_dir: "{cache}", state: "{state}"}}
sources: {{a: {{file: "{log}"}}}}
rules:
  - name: auth
    source: a
    match: 'Failed password for (?P<user>\\S+) from (?P<ip>[\\d.]+)'
  - name: oom
    source: a
    match: 'Out of memory: Killed process (?P<pid>\\d+)'
"""


def test_detector_check_warms_the_cache_the_agent_then_loads(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.yaml"
    cache = tmp_path / "cache"
    cfg.write_text(CONFIG.format(cache=cache, state=tmp_path / "s.db", log=tmp_path / "a.log"))
    out = subprocess.run(
        [sys.executable, "-m", "detector", "check", "-c", str(cfg)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(entries(cache, SPECS[:2])) == 1 and analyses_entry(cache, SPECS[:2]).exists()
    matcher = build_matcher(load_config(cfg))  # what the agent builds at start
    assert matcher.cached == {"a": True}


def test_the_cache_dir_defaults_to_systemds_then_home_and_can_be_off(tmp_path: Path) -> None:
    cfg = tmp_path / "rules.yaml"
    body = CONFIG.format(cache="x", state=tmp_path / "s.db", log=tmp_path / "a.log")
    cfg.write_text(body.replace('cache_dir: "x", ', ""))
    env = {"CACHE_DIRECTORY": "/run/elsewhere", "HOME": "/home/u"}
    assert load_config(cfg, env).agent.cache_dir == Path("/run/elsewhere")
    cfg.write_text(body.replace('cache_dir: "x"', "cache_dir: off"))
    assert load_config(cfg, env).agent.cache_dir is None


def test_the_default_cache_dir_is_the_units_for_root_and_the_users_otherwise() -> None:
    # systemd/detector.service's CacheDirectory=detector (tests/conftest.py points the constant
    # at the run's own directory; test_systemd_cache_real.py checks the real one under systemd)
    assert "\nCacheDirectory=detector\n" in UNIT.read_text()
    assert inspect.getsource(sections).count('SYSTEM_CACHE_DIR = Path("/var/cache/detector")') == 1
    unit = sections.SYSTEM_CACHE_DIR
    home = {"HOME": "/home/u"}
    # systemd's $CACHE_DIRECTORY first, as root or not (a drop-in may name another directory)
    assert default_cache_dir({"CACHE_DIRECTORY": "/srv/c:/srv/d", **home}, 0) == Path("/srv/c")
    assert default_cache_dir({"CACHE_DIRECTORY": "/srv/c"}, 1000) == Path("/srv/c")
    # root (`sudo detector check`): the unit's directory, whatever its home or XDG says
    assert default_cache_dir({"HOME": "/root", "XDG_CACHE_HOME": "/root/.x"}, 0) == unit
    assert default_cache_dir({}, 0) == unit
    # anyone else: the XDG user cache
    assert default_cache_dir({"XDG_CACHE_HOME": "/home/u/.x", **home}, 1000) == Path(
        "/home/u/.x/detector"
    )
    assert default_cache_dir({"XDG_CACHE_HOME": "rel", **home}, 1000) == Path(
        "/home/u/.cache/detector"
    )
    assert default_cache_dir({}, 1000) is None


def test_an_entry_root_writes_belongs_to_the_cache_directorys_owner(tmp_path: Path) -> None:
    """`sudo detector check` into the unit's /var/cache/detector (owned by its dynamic user):
    the entries must be the user's, or the service could not read them (mode 0600)."""
    assert os.geteuid() == 0, "this test chowns: it runs as root, like the systemd tests"
    service = tmp_path / "service"
    service.mkdir()
    os.chown(service, 61234, 61235)  # what DynamicUser= picks
    mine = tmp_path / "mine"
    _m, cache = fresh(service)
    _m, own = fresh(mine)
    written = [p for p in service.iterdir() if p.suffix == SUFFIX]
    assert written and cache.disabled == ""
    for p in written:
        st = p.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (61234, 61235, 0o600), p
    assert all(p.stat().st_uid == 0 for p in mine.iterdir())  # root's own: left alone
    assert mine.stat().st_mode & 0o777 == 0o700
    assert own.disabled == ""


def test_check_timings_lists_the_rules_by_compile_cost_and_matches_the_sample(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "rules.yaml"
    cfg.write_text(
        CONFIG.format(cache=tmp_path / "c", state=tmp_path / "s.db", log=tmp_path / "a.log")
    )
    sample = tmp_path / "sample.log"
    sample.write_text("\n".join(LINES) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "detector", "check", "-c", str(cfg), "--timings", "1",
         "--sample", str(sample)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "timings: all patterns compiled in" in text and "source a: database" in text
    assert "slowest 1 of 2 rules, each alone on 4 sample lines:" in text
    (line,) = [x for x in text.splitlines() if x.startswith("  rule ") and "compile" in x]
    assert "match" in line and ("(2 lines)" in line or "(1 lines)" in line)


def test_threads_sharing_a_cache_lose_no_count_and_warn_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload's compile and the background full-database build share the process's cache:
    every lookup is counted once (hits, misses and rejected entries), and a bad entry is
    warned about once, whichever thread finds it first."""
    cache = DbCache(tmp_path / "c", hs)
    assert cache.put_bytes("a" * 64, b"payload")
    bad = cache.path("b" * 64)
    bad.write_bytes(b"not an entry")
    rounds, threads = 3000, 6
    start = threading.Barrier(threads)

    def lookups() -> None:
        start.wait()
        for _ in range(rounds):
            assert cache.get_bytes("a" * 64) == b"payload"
            assert cache.get_bytes("c" * 64) is None  # absent
            assert cache.get_bytes("b" * 64) is None  # unusable

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython can: races show
    try:
        with caplog.at_level(logging.WARNING):
            workers = [threading.Thread(target=lookups) for _ in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
    finally:
        sys.setswitchinterval(interval)
    assert cache.stats() == {
        "hits": rounds * threads,
        "misses": 2 * rounds * threads,
        "rejected": rounds * threads,
    }
    assert sum("is unusable" in r.getMessage() for r in caplog.records) == 1
