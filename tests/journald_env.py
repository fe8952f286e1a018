"""A private systemd-journald for tests: start a namespace instance, write entries, clean up.

Used by ``tests/test_journald.py`` and ``bench/bench_journald.py`` (and by anyone who needs a real
journal to read from). Runs as root: it starts ``/lib/systemd/systemd-journald NAMESPACE``, which
listens on ``/run/systemd/journal.NAMESPACE/socket`` (native protocol datagrams) and stores entries
under ``/var/log/journal/<machine-id>.NAMESPACE``; ``journalctl --namespace=NAMESPACE`` reads them.

What this machine taught us (systemd 252):

- ``journalctl --namespace=NAME`` reads the namespace (``--follow`` included: it watches the
  namespace's journal directory with inotify, so it works whether or not journald is running).
- journald runs with ``SYSTEMD_LOG_TARGET=console`` (there is no main journal or kmsg to log to in
  a container) and ``SYSTEMD_LOG_LEVEL=info``; its own output goes to ``log_path``, which is put
  into the error when it fails to start.

- journald needs ``/etc/machine-id``; :func:`ensure_machine_id` creates one if it is missing or
  empty (and :meth:`JournaldNamespace.stop` does not remove it: other tools may rely on it by then).
- A namespace instance **exits after ~30 s without clients** (it expects socket activation by
  systemd, which a test machine does not have). Datagram senders do not count; we keep one stdout
  stream connection open for the fixture's lifetime.
- Rate limiting (10 000 entries / 30 s per cgroup) would drop benchmark traffic: the fixture writes
  ``/etc/systemd/journald@NAMESPACE.conf`` with ``RateLimitIntervalSec=0`` and removes it at stop.
- ``_SYSTEMD_UNIT`` is derived by journald from the sender's cgroup, so :meth:`send_as_unit` runs
  the sender in ``<cgroup2>/system.slice/<unit>`` and keeps it alive until journald processed the
  entries (``journalctl --sync``), then removes the cgroup.

If journald cannot be started, :func:`start_journald_namespace` raises :class:`JournaldUnavailable`
with journald's own output: tests must fail loudly, never skip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

JOURNALD = Path("/lib/systemd/systemd-journald")
MACHINE_ID = Path("/etc/machine-id")
START_TIMEOUT_S = 10.0

Fields = Mapping[str, str | bytes]


class JournaldUnavailable(RuntimeError):
    """A private journald could not be started here; the message says why."""


def encode_native(fields: Fields) -> bytes:
    """One entry in journald's native protocol.

    ``KEY=value\\n`` for simple values; ``KEY\\n<u64 le length><bytes>\\n`` for values that
    contain a newline (or are bytes), which is binary safe.
    """
    out = bytearray()
    for key, value in fields.items():
        data = value.encode() if isinstance(value, str) else value
        if isinstance(value, bytes) or b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def ensure_machine_id(path: Path = MACHINE_ID) -> str:
    """Return the machine id, creating ``/etc/machine-id`` first if it is missing or empty."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if len(text) != 32:
        text = uuid.uuid4().hex
        path.write_text(text + "\n")
    return text


def cgroup2_root() -> Path:
    """Where the unified cgroup hierarchy is mounted (``/sys/fs/cgroup`` or ``.../unified``)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    raise JournaldUnavailable("no cgroup2 hierarchy mounted: cannot give entries a _SYSTEMD_UNIT")


_UNIT_SENDER = """
import base64, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for line in iter(sys.stdin.readline, "\\n"):
    s.sendto(base64.b64decode(line), sys.argv[1])
print("sent", flush=True)
sys.stdin.read()
"""


@dataclass
class JournaldNamespace:
    """A running private journald. Create with :func:`start_journald_namespace`."""

    name: str
    machine_id: str
    log_path: Path
    conf_path: Path
    process: subprocess.Popen[bytes] | None = None
    _keepalive: socket.socket | None = None
    _sender: socket.socket = field(
        default_factory=lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    )

    @property
    def run_dir(self) -> Path:
        return Path(f"/run/systemd/journal.{self.name}")

    @property
    def socket_path(self) -> str:
        return str(self.run_dir / "socket")

    @property
    def storage_dirs(self) -> list[Path]:
        suffix = f"{self.machine_id}.{self.name}"
        return [Path("/var/log/journal") / suffix, Path("/run/log/journal") / suffix]

    # ------------------------------------------------------------------ writing

    def send(self, fields: Fields) -> None:
        """Write one entry (a datagram; journald stores it asynchronously: see :meth:`sync`)."""
        self._sender.sendto(encode_native(fields), self.socket_path)

    def send_many(self, entries: Sequence[Fields]) -> None:
        for entry in entries:
            self._sender.sendto(encode_native(entry), self.socket_path)

    def send_as_unit(self, unit: str, entries: Sequence[Fields]) -> None:
        """Write entries from a process running in the cgroup of ``unit`` (→ ``_SYSTEMD_UNIT``)."""
        slice_dir = cgroup2_root() / "system.slice"
        cg = slice_dir / unit
        cg.mkdir(parents=True, exist_ok=True)
        script = f'echo $$ > {cg}/cgroup.procs && exec "$0" -I -S -c "$1" "$2"'
        proc = subprocess.Popen(
            ["sh", "-c", script, sys.executable, _UNIT_SENDER, self.socket_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            for entry in entries:
                proc.stdin.write(base64.b64encode(encode_native(entry)) + b"\n")
            proc.stdin.write(b"\n")
            proc.stdin.flush()
            if proc.stdout.readline().strip() != b"sent":
                raise RuntimeError(f"unit sender for {unit} failed (exit {proc.wait(5)})")
            self.sync()  # journald looks the cgroup up while the sender is still alive
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
            with contextlib.suppress(OSError):
                cg.rmdir()
            with contextlib.suppress(OSError):
                slice_dir.rmdir()

    # ------------------------------------------------------------------ reading, maintenance

    def journalctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["journalctl", f"--namespace={self.name}", "--no-pager", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def sync(self) -> None:
        """Return once journald has stored every entry sent before this call."""
        self.journalctl("--sync")

    def entries(self, *matches: str) -> list[dict[str, Any]]:
        """Every stored entry matching ``FIELD=value`` matches, parsed from ``--output=json``."""
        self.sync()
        out = self.journalctl("--output=json", "--all", *matches).stdout
        return [json.loads(line) for line in out.splitlines() if line]

    def rotate(self) -> None:
        """Archive the active journal file and start a new one."""
        self.journalctl("--rotate")

    def vacuum_archived(self) -> None:
        """Delete every archived journal file (the oldest entries): a cursor there is gone."""
        self.journalctl("--vacuum-files=1")

    def start(self, boot_id: str | None = None) -> None:
        """Start journald and wait until it answers; raise :class:`JournaldUnavailable` if not.

        ``boot_id`` (32 hex digits) makes journald stamp entries with that ``_BOOT_ID`` instead of
        this boot's (it runs in a private mount namespace where ``/proc/sys/kernel/random/boot_id``
        is bind-mounted over): how tests produce entries of a "previous boot".
        """
        argv = [str(JOURNALD), self.name]
        if boot_id is not None:
            fake = self.log_path.with_suffix(".boot_id")
            fake.write_text(str(uuid.UUID(boot_id)) + "\n")
            script = 'mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@"'
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
            argv += [str(fake), str(JOURNALD), self.name]
        env = {**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_LOG_TARGET": "console"}
        with self.log_path.open("ab") as log:
            self.process = process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                output = self.log_path.read_text(errors="replace")
                self.stop()
                raise JournaldUnavailable(
                    f"systemd-journald {self.name} exited with {process.returncode}: {output}"
                )
            keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                keep.connect(str(self.run_dir / "stdout"))
                # stdout-stream header: identifier, unit, priority, level prefix, forward flags
                keep.sendall(b"detector-test-keepalive\n\n6\n0\n0\n0\n0\n")
                self._keepalive = keep
                self.sync()
                return
            except (OSError, subprocess.CalledProcessError) as exc:
                keep.close()
                self._keepalive = None
                if time.monotonic() > deadline:
                    output = self.log_path.read_text(errors="replace")
                    self.stop()
                    raise JournaldUnavailable(
                        f"systemd-journald {self.name} did not become ready in "
                        f"{START_TIMEOUT_S} s ({exc}): {output}"
                    ) from exc
                time.sleep(0.05)

    def restart(self, boot_id: str | None = None) -> None:
        """Stop journald, keeping its journal files, and start it again ("a reboot")."""
        self.terminate()
        self.start(boot_id)

    def terminate(self) -> None:
        """Stop journald (its journal files stay)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None

    def stop(self) -> None:
        """Kill journald and remove its sockets, storage and config."""
        self.terminate()
        self._sender.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        for d in self.storage_dirs:
            shutil.rmtree(d, ignore_errors=True)
        for path in (self.conf_path, self.log_path, self.log_path.with_suffix(".boot_id")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_journald_namespace(
    name: str | None = None, log_dir: Path | None = None, boot_id: str | None = None
) -> JournaldNamespace:
    """Start a private journald for namespace ``name`` (default: a fresh unique one).

    ``boot_id``: see :meth:`JournaldNamespace.start`.
    """
    if os.geteuid() != 0:
        raise JournaldUnavailable("starting a private journald needs root")
    if not JOURNALD.exists() or shutil.which("journalctl") is None:
        raise JournaldUnavailable(
            f"{JOURNALD} or journalctl is missing: install the Debian package systemd "
            "(scripts/system-deps does)"
        )
    name = name or f"dt{uuid.uuid4().hex[:12]}"
    machine_id = ensure_machine_id()
    conf_path = Path(f"/etc/systemd/journald@{name}.conf")
    conf_path.parent.mkdir(parents=True, exist_ok=True)
    conf_path.write_text(
        "[Journal]\n"
        "RateLimitIntervalSec=0\n"
        "ForwardToSyslog=no\nForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\n"
    )
    log_path = (log_dir or Path("/tmp")) / f"journald-{name}.log"
    ns = JournaldNamespace(name, machine_id, log_path, conf_path)
    ns.start(boot_id)
    return ns


# Fixtures: import the ``*_fixture`` names into a test module to use ``journald``,
# ``private_journald`` (the attribute names differ so test parameters do not shadow imports).


@pytest.fixture(scope="session", name="journald_session")
def journald_session_fixture() -> Iterator[JournaldNamespace]:
    """One private journald shared by the session; tests separate entries by a unique field."""
    ns = start_journald_namespace()
    try:
        yield ns
    finally:
        ns.stop()


@pytest.fixture(name="journald")
def journald_fixture(journald_session: JournaldNamespace) -> JournaldNamespace:
    """The session journald, checked to be alive (it must not have exited on idle)."""
    assert journald_session.alive(), journald_session.log_path.read_text(errors="replace")
    return journald_session


@pytest.fixture(name="private_journald")
def private_journald_fixture() -> Iterator[JournaldNamespace]:
    """A journald of this test's own (for tests that rotate and vacuum)."""
    ns = start_journald_namespace()
    try:
        yield ns
    finally:
        ns.stop()


def unique_tag() -> str:
    """A per-test field value: entries with ``DETECTOR_TEST=<tag>`` belong to one test."""
    return uuid.uuid4().hex


class Collector:
    """Consume a source's ``batches()`` in a task and keep what it yielded (with arrival times)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.batches: list[Any] = []
        self.arrivals: list[float] = []  # time.monotonic() when each batch was yielded
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for batch in self.source.batches():
            self.batches.append(batch)
            self.arrivals.append(time.monotonic())
            self._changed.set()

    @property
    def lines(self) -> list[Any]:
        return [line for batch in self.batches for line in batch.lines]

    def texts(self) -> list[str]:
        return [line.text for line in self.lines]

    async def wait_for(self, predicate: Any, within: float = 10.0, what: str = "") -> None:
        """Wait until ``predicate()`` holds (re-checked on every batch and every 20 ms)."""
        deadline = time.monotonic() + within
        while not predicate():
            if self._task.done():
                self._task.result()
                raise AssertionError(f"source stopped before {what or predicate}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what or predicate}; have {self.texts()[-5:]}, "
                    f"status {self.source.status()}, problems {self.source.problems()}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.02)

    async def wait_lines(self, n: int, within: float = 10.0) -> list[str]:
        await self.wait_for(lambda: len(self.lines) >= n, within, f"{n} lines")
        return self.texts()

    async def close(self) -> None:
        await self.source.aclose()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
