"""A real systemd for tests: PID 1 of its own namespaces, the agent installed as a user would.

Used by ``tests/test_systemd_real.py``. Runs as root. :func:`boot_systemd` starts

    unshare --pid --fork --mount --uts --ipc --mount-proc sh -c \\
      'mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /var/tmp && ... && \\
       mount -t tmpfs tmpfs /var/cache && exec /lib/systemd/systemd'

and :class:`SystemdNamespace` runs ``systemctl``/``journalctl`` inside with ``nsenter``. Its
:meth:`~SystemdNamespace.stop` kills the namespace's PID 1 (the kernel then kills every process of
the PID namespace) and removes the cgroups it created. :class:`Installation` installs the package
into a venv made from the system Python, the unit file under a unique name and a drop-in, the way
docs/install.md says.

What is shared with the machine, and what we do about it (systemd 252):

- The filesystem is the machine's, except what is mounted in the namespace. At boot
  systemd-tmpfiles empties /tmp and /var/tmp: both get their own tmpfs first (NEVER leave them
  out: it would empty the machine's). /var/log/journal gets one too, so the namespace's journald
  does not write into (or beside) the machine's persistent journal, and so does /var/cache: the
  unit's ``CacheDirectory=detector`` (and ``detector check`` run as root, whose default it is)
  then fill the namespace's ``/var/cache/detector``, never the machine's (a real install's).
  systemd mounts its own tmpfs on /run (it is not a mount point here), so units and drop-ins
  written to ``/proc/<pid1>/root/run/systemd/system`` exist only inside. Everything else the
  test installs goes under ``/opt/detector-test-<hex>`` (not /tmp: that is another tmpfs inside)
  and is removed.
- The boot target is ``sysinit.target``, not ``default.target``: the machine's enabled services
  (a database, Alertmanager, timers that fetch package lists) must not start a second time on
  the shared network and disks. The unit's default dependencies pull in nothing more.
- ``container=`` is set for PID 1 (the container interface): systemd then skips the units that
  would touch the real machine's clock, random seed and pstore, and reads its "kernel command
  line" from its own arguments, where :data:`MASKED` masks the units of sysinit.target that change
  kernel-wide or machine-wide state (sysctls, binfmt handlers, modules, remounts, /etc files).
- The network is shared (no ``--net``): a receiver on 127.0.0.1 in the test process is reachable.
- cgroups are the machine's: systemd creates ``init.scope``, ``system.slice``, … at the root of
  each mounted hierarchy and moves its processes there; :meth:`SystemdNamespace.stop` removes
  every cgroup directory that did not exist before the boot.

If systemd cannot boot, :func:`boot_systemd` raises :class:`SystemdUnavailable` with its output:
the test fails loudly, it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = Path("/lib/systemd/systemd")
SYSTEM_PYTHON = Path("/usr/bin/python3")
UNIT_FILE = ROOT / "systemd" / "detector.service"
CGROUP_ROOT = Path("/sys/fs/cgroup")
BOOT_TIMEOUT_S = 60.0

# Units of sysinit.target masked inside (each would change the machine, not the namespace):
MASKED = (
    "systemd-sysctl.service",  # kernel-wide sysctls (pid_max, fs.protected_*)
    "systemd-binfmt.service",  # kernel-wide binfmt_misc handlers
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-modules-load.service",  # kernel modules
    "systemd-remount-fs.service",  # remounts per /etc/fstab: superblock options are shared
    "systemd-sysusers.service",  # would add users to the machine's /etc/passwd
    "systemd-firstboot.service",  # would prompt (or write /etc) without a machine id
    "systemd-machine-id-commit.service",  # writes /etc/machine-id
    "systemd-update-utmp.service",  # boot records in the machine's /var/log/wtmp
)
BOOT_SCRIPT = (
    "mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /var/tmp"
    " && { [ ! -d /var/log/journal ] || mount -t tmpfs tmpfs /var/log/journal; }"
    " && mount -t tmpfs -o mode=0755 tmpfs /var/cache"
    ' && exec "$@"'
)


class SystemdUnavailable(RuntimeError):
    """systemd could not be booted here; the message says why (with its output)."""


def _cgroup_dirs() -> set[Path]:
    out: set[Path] = set()
    for dirpath, _dirs, _files in os.walk(CGROUP_ROOT):
        out.add(Path(dirpath))
    return out


@dataclass
class SystemdNamespace:
    """A booted systemd. Create with :func:`boot_systemd`; always :meth:`stop` it."""

    process: subprocess.Popen[bytes]  # unshare (outside the namespaces)
    log_path: Path
    cgroups_before: set[Path]
    pid: int = 0  # the namespace's PID 1, as seen from here

    @property
    def root(self) -> Path:
        """The namespace's filesystem as seen from here (its own /run, /tmp, /var/tmp)."""
        return Path(f"/proc/{self.pid}/root")

    def run(
        self, *argv: str, check: bool = False, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespaces (PID, mount, UTS, IPC) of systemd."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-p", "-m", "-u", "-i", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def systemctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, timeout=timeout)

    def journalctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("journalctl", "--no-pager", *args)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p A,B unit`` as a dict."""
        out = self.systemctl("show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_booted(self, within: float = BOOT_TIMEOUT_S) -> str:
        """Until ``systemctl is-system-running --wait`` says running or degraded."""
        deadline = time.monotonic() + within
        state = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemdUnavailable(
                    f"systemd exited with {self.process.returncode} while booting:\n"
                    + self.output()
                )
            if not self.pid:
                children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
                with contextlib.suppress(OSError, ValueError, IndexError):  # not forked yet
                    self.pid = int(children.read_text().split()[0])
            if self.pid:
                left = max(1.0, deadline - time.monotonic())
                with contextlib.suppress(subprocess.TimeoutExpired):
                    state = self.systemctl("is-system-running", "--wait", timeout=left).stdout
                    state = state.strip()
                    if state in ("running", "degraded"):
                        return state
            time.sleep(0.1)  # polling: PID 1 is not up yet or its bus socket is not there
        raise SystemdUnavailable(
            f"systemd did not finish booting within {within} s (state {state!r}); "
            f"its output:\n{self.output()}"
        )

    def stop(self) -> None:
        """Kill PID 1 (so the whole PID namespace), reap unshare, remove the new cgroups."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()  # unshare itself, should the child never have appeared
        self.process.wait(30)
        deadline = time.monotonic() + 30
        for cg in sorted(_cgroup_dirs() - self.cgroups_before, key=lambda p: -len(p.parts)):
            while True:  # a cgroup is busy until the killed processes are gone
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()


def boot_systemd(log_dir: Path) -> SystemdNamespace:
    """Boot systemd as PID 1 of new namespaces and wait until it is up."""
    if os.geteuid() != 0:
        raise SystemdUnavailable("booting systemd in namespaces needs root")
    if not SYSTEMD.exists():
        raise SystemdUnavailable(f"{SYSTEMD} does not exist (scripts/system-deps installs it)")
    log_path = log_dir / f"systemd-{uuid.uuid4().hex[:8]}.log"
    argv = ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--mount-proc"]
    argv += ["sh", "-c", BOOT_SCRIPT, "sh", str(SYSTEMD), "--system", "--unit=sysinit.target"]
    argv += [f"systemd.mask={unit}" for unit in MASKED]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "container": "detector-test"}
    before = _cgroup_dirs()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    ns = SystemdNamespace(proc, log_path, before)
    try:
        ns.wait_booted()
    except BaseException:
        ns.stop()
        raise
    return ns


# ---------------------------------------------------------------------- the installation


@dataclass
class Installation:
    """The package in a venv of the system Python under ``/opt/detector-test-<hex>``.

    Layout: ``venv/`` (``pip install`` of this checkout), ``etc/rules.yaml``, ``log/``. The unit
    gets a unique name so nothing of a real installation is touched.
    """

    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def unit(self) -> str:
        return f"detector-test-{self.tag}.service"

    @property
    def detector(self) -> Path:
        return self.root / "venv" / "bin" / "detector"

    @property
    def rules(self) -> Path:
        return self.root / "etc" / "rules.yaml"

    @property
    def state_directory(self) -> str:
        return f"detector-test-{self.tag}"

    def install_package(self) -> None:
        """``python3 -m venv`` from the system Python, ``pip install`` of this checkout."""
        for sub in ("etc", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        venv = self.root / "venv"
        steps = [
            [str(SYSTEM_PYTHON), "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
        ]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                raise AssertionError(f"{argv} failed ({done.returncode}):\n{done.stderr}")

    def drop_in(self, **extra: str) -> str:
        """The drop-in a user would write: our paths instead of /usr/local/bin, /etc/detector.

        Every ``Exec*=`` and ``EnvironmentFile=`` line of the unit naming those paths is reset
        and rewritten; the unique State/ConfigurationDirectory keeps a real install's untouched.
        """
        text = UNIT_FILE.read_text()
        rewritten: dict[str, list[str]] = {}
        for line in text.splitlines():
            m = re.match(r"^(Exec\w+|EnvironmentFile)=(.*)$", line)
            if m:
                rewritten.setdefault(m[1], []).append(self._paths(m[2]))
        out = ["[Service]"]
        for key, values in rewritten.items():
            out += [f"{key}=", *(f"{key}={v}" for v in values)]
        out += ["StateDirectory=", f"StateDirectory={self.state_directory}"]
        out += ["ConfigurationDirectory="]
        out += [f"{k}={v}" for k, v in extra.items()]
        return "\n".join(out) + "\n"

    def _paths(self, value: str) -> str:
        value = value.replace("/usr/local/bin/detector", str(self.detector))
        return value.replace("/etc/detector/", f"{self.root}/etc/")

    def install_unit(self, ns: SystemdNamespace, **extra: str) -> None:
        """The unit file (unchanged) and the drop-in into the namespace's /run/systemd/system."""
        units = ns.root / "run" / "systemd" / "system"
        units.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(UNIT_FILE, units / self.unit)
        (units / f"{self.unit}.d").mkdir(exist_ok=True)
        (units / f"{self.unit}.d" / "test.conf").write_text(self.drop_in(**extra))

    def write_rules(self, text: str) -> None:
        """Replace rules.yaml atomically (the agent watches it; it must never see half a file)."""
        tmp = self.rules.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(self.rules)

    def remove(self) -> None:
        """The installation and the state directory systemd created on the machine's /var/lib."""
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(Path("/var/lib/private") / self.state_directory, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (Path("/var/lib") / self.state_directory).unlink()


# Fixtures: import the ``*_fixture`` names into a test module to use ``systemd_ns`` and
# ``installation``.


@pytest.fixture(name="installation", scope="module")
def installation_fixture() -> Iterator[Installation]:
    inst = Installation(Path(f"/opt/detector-test-{uuid.uuid4().hex[:8]}"))
    had_private = Path("/var/lib/private").exists()
    try:
        inst.install_package()
        yield inst
    finally:
        inst.remove()
        if not had_private:
            with contextlib.suppress(OSError):
                Path("/var/lib/private").rmdir()


@pytest.fixture(name="systemd_ns")
def systemd_ns_fixture(tmp_path: Path) -> Iterator[SystemdNamespace]:
    """A booted systemd for this test, killed (with everything it started) afterwards."""
    ns = boot_systemd(tmp_path)
    try:
        yield ns
    finally:
        ns.stop()
