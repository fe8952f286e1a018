"""The on-disk cache of compiled Hyperscan databases, so that a start or a reload need not rebuild.

Used by ``engine`` (``_build_plan``): ``DbCache.get(key)`` / ``put(key, db)`` around the one
expensive step of building a ``Matcher`` (Hyperscan's compile, seconds for ~150 real-world
patterns). The key (``db_key``) is a hash of everything the compiled database depends on: the
expressions, their ids and flags, the mode, this engine's format version, the hyperscan wheel's
version, and the CPU features Hyperscan targets (``cpu_features``). An entry is a file
``<key>.hsdb``: a magic line, the key again, a SHA-256 of the payload, and the payload
(``hyperscan.dumpb``). Nothing read back is trusted: a wrong magic, a wrong key, a checksum
that does not match or a payload ``hyperscan.loadb`` refuses makes the entry a miss (logged once
per kind and cache), and the caller's rebuild replaces it. Writes go to a temporary file renamed
into place (a concurrent reader sees a whole entry or none); an entry root writes into a
directory another user owns is given to that user (``_give_to_owner``: ``sudo detector check``
warming the service's ``/var/cache/detector``); an unwritable directory turns the cache off for
that process, with one warning. The directory is bounded: past ``max_bytes`` or
``max_entries`` the least recently used entries (by mtime, touched on every hit) are removed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from detector.digest import sha256
from detector.lazylog import logger

FORMAT = b"detector-hsdb 1\n"
"""First bytes of every entry; bump the number when the layout (or what a key covers) changes."""
SUFFIX = ".hsdb"
MAX_BYTES = 64 * 1024 * 1024
MAX_ENTRIES = 64

_CPU_FLAGS = (
    "sse2", "ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "avx2", "bmi", "bmi2", "avx512f",
    "avx512bw", "avx512vl", "avx512vbmi", "avx512vbmi2", "neon", "asimd", "sve", "sve2",
)  # fmt: skip
"""The CPU features Hyperscan's runtime dispatch and compiled databases depend on."""


def cpu_features(cpuinfo: str | None = None) -> str:
    """The machine and the CPU features Hyperscan picks its target by, as one stable string
    (read from /proc/cpuinfo when not given; only the machine where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("flags", "Features"):
            flags.update(value.split())
            break  # the first CPU stands for all (Hyperscan looks at the one it runs on)
    machine = os.uname().machine  # platform.machine(), without importing platform
    return machine + ":" + ",".join(f for f in _CPU_FLAGS if f in flags)


def db_key(
    exprs: Sequence[bytes], flags: Sequence[int], mode: int, engine: str, features: str
) -> str:
    """The cache key of one database: hex SHA-256 over everything that decides its bytes."""
    h = sha256()
    h.update(FORMAT)
    for part in (engine.encode(), features.encode(), str(mode).encode(), str(len(exprs)).encode()):
        h.update(len(part).to_bytes(4, "big") + part)
    for i, (e, f) in enumerate(zip(exprs, flags, strict=True)):
        h.update(f"{i}:{f}:{len(e)}:".encode() + e)
    return h.hexdigest()


class DbCache:
    """One cache directory. ``hs`` is the hyperscan module (``dumpb``/``loadb``); the directory
    is created on the first ``put``. Shared by the threads of a process that compile (a reload's
    and the background full-database build can overlap): its counters and warnings are kept
    under a lock; several processes may share a directory (atomic renames, checksums)."""

    def __init__(
        self,
        directory: Path,
        hs: Any,
        *,
        max_bytes: int = MAX_BYTES,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.directory = Path(directory)
        self._hs = hs
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.disabled = ""
        """Why this cache stopped writing ("" while it works)."""
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        """Entries that were there but failed to verify or load (then rebuilt)."""
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def _tally(self, hit: bool, rejected: bool = False) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
                self.rejected += rejected

    def path(self, key: str) -> Path:
        return self.directory / (key + SUFFIX)

    def get(self, key: str, mode: int) -> Any:
        """The database stored under ``key``, or None (absent, or not trustworthy: then the
        caller rebuilds and ``put`` replaces it)."""
        loaded: list[Any] = []
        payload = self.get_bytes(key, verify=lambda b: loaded.append(self._load(b, mode)))
        return None if payload is None else loaded[0]

    def _load(self, payload: bytes, mode: int) -> Any:
        db = self._hs.loadb(payload, mode)
        db.scratch = self._hs.Scratch(db)  # loadb gives none; scan needs one
        return db

    def put(self, key: str, db: Any) -> bool:
        """Store ``db`` under ``key`` (replacing what was there); then evict past the bounds.
        False (and one warning per cache) if the directory cannot be written."""
        if self.disabled:
            return False
        try:
            payload = bytes(self._hs.dumpb(db))
        except Exception as e:  # pragma: no cover - a database the wheel cannot serialise
            self._warn("dump", f"cannot serialise a compiled pattern database: {e}")
            return False
        return self.put_bytes(key, payload)

    def get_bytes(self, key: str, verify: Callable[[bytes], object] | None = None) -> bytes | None:
        """The verified payload stored under ``key`` (None if absent or unusable). ``verify``
        raising on the payload makes it unusable too (a database hyperscan refuses)."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self._tally(hit=False)
            return None
        except OSError as e:
            self._warn("read", f"cannot read the compiled-pattern cache {path}: {e}; rebuilding")
            self._tally(hit=False)
            return None
        problem, payload = _unpack(raw, key)
        if not problem and verify is not None:
            try:
                verify(payload)
            except Exception as e:  # hyperscan.error, or anything raised on bad bytes
                problem = f"refused ({type(e).__name__}: {e})"
        if problem:
            self._tally(hit=False, rejected=True)
            self._warn(
                "bad", f"compiled-pattern cache entry {path} is unusable ({problem}); rebuilding it"
            )
            return None
        self._tally(hit=True)
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used: evicted last
        return payload

    def put_bytes(self, key: str, payload: bytes) -> bool:
        """Store ``payload`` under ``key``, checksummed, by an atomic rename; then evict."""
        if self.disabled:
            return False
        data = FORMAT + key.encode("ascii") + b"\n" + sha256(payload).digest() + payload
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            import tempfile  # noqa: PLC0415 - on a miss only: commands start without it

            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    self._give_to_owner(f.fileno())
                    f.write(data)
                os.replace(tmp, self.path(key))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            self.disabled = f"cannot write {self.directory}: {e.strerror or e}"
            self._warn(
                "write",
                f"compiled-pattern cache off: {self.disabled} (every start compiles the "
                "patterns; set agent.cache_dir to a writable directory, or 'off')",
            )
            return False
        self.evict()
        return True

    def _give_to_owner(self, fd: int) -> None:
        """A new entry written by root goes to the directory's owner: ``sudo detector check``
        warms ``/var/cache/detector``, which systemd made for the unit's (dynamic) user, and
        that user must be able to read (mode 0600) and replace what root wrote. systemd's own
        chown at start does not help: it skips the tree when the top directory is already the
        user's. Not root, or a directory root owns: nothing to do. A chown refused (root
        squashed on a network file system) is said once; the service then rebuilds the entry."""
        if os.geteuid() != 0:
            return
        st = os.stat(self.directory)
        if (st.st_uid, st.st_gid) == (0, 0):
            return
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError as e:
            self._warn(
                "chown",
                f"cannot give compiled-pattern cache entries in {self.directory} to its owner "
                f"(uid {st.st_uid}): {e.strerror or e}; the service will compile them again",
            )

    def evict(self) -> list[Path]:
        """Remove the least recently used entries past ``max_entries`` / ``max_bytes``."""
        entries: list[tuple[float, int, Path]] = []
        with contextlib.suppress(OSError):
            for p in self.directory.iterdir():
                if p.suffix == SUFFIX and not p.name.startswith("."):
                    with contextlib.suppress(OSError):
                        st = p.stat()
                        entries.append((st.st_mtime, st.st_size, p))
        entries.sort(reverse=True)  # newest first
        kept_bytes = 0
        removed: list[Path] = []
        for n, (_mtime, size, p) in enumerate(entries):
            kept_bytes += size
            if n >= self.max_entries or (n > 0 and kept_bytes > self.max_bytes):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        return removed

    def stats(self) -> Mapping[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "rejected": self.rejected}

    def _warn(self, kind: str, text: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        logger(__name__).warning("%s", text)


def _unpack(raw: bytes, key: str) -> tuple[str, bytes]:
    """(problem, payload): problem is "" when ``raw`` is a whole entry for ``key``."""
    if not raw.startswith(FORMAT):
        return "not a cache entry of this version", b""
    rest = raw[len(FORMAT) :]
    stored_key, sep, rest = rest.partition(b"\n")
    if not sep or stored_key != key.encode("ascii"):
        return "stored under another key", b""
    digest, payload = rest[:32], rest[32:]
    if len(digest) < 32 or sha256(payload).digest() != digest:
        return "checksum mismatch (truncated or damaged)", b""
    return "", payload
