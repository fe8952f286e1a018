"""What the commands share, above everything they call: one way to load the config (with the
unit's env file) and to open the state file, failing with a clear message and the exit code of
the one convention every command follows, instead of a traceback.

Exit codes: ``0`` ok; ``1`` findings (``detector test``: an alert would fire; ``send-test``: the
receiver did not accept the alert); ``2`` usage or config error (bad arguments, invalid or
unreadable rules.yaml or --env-file, no or unreadable state file, an unknown webhook, rule or
template). ``detector run`` keeps its own: 2 invalid config, 3 state file error. ``130`` after
Ctrl-C; ``141`` (128 + SIGPIPE, like a command the shell saw killed by it) when the reader of the
output went away (``detector check | head -1``), quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from detector.model import Config

if TYPE_CHECKING:
    from detector.store.db import Store

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE

DEFAULT_ENV_FILE = Path("/etc/detector/detector.env")
"""The unit's ``EnvironmentFile=`` (systemd/detector.service)."""


MMAP_THRESHOLD = 256 * 1024
"""``detector run``: glibc allocates this many bytes or more with their own ``mmap``, and gives
them back at ``free``. Fixed, which keeps glibc from raising it (it does, up to 32 MiB, after a
large block is freed), so the 1 MiB read blocks never pile up in the heap."""
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def tune_malloc() -> bool:
    """Set :data:`MMAP_THRESHOLD` (glibc's ``mallopt``; elsewhere nothing, and False).

    A 1 MiB read lives from its ``pread`` to its commit, in the sweep thread's arena or the main
    one. Once glibc has raised its threshold, those blocks come from the heaps, whose free pages
    stay resident between reads and whose tops are given back only when free: the agent's peak
    memory was 8 MB higher for it (README, "Peak RSS"). Mapped, each block costs a page fault a
    page (about 0.1 ms a MiB), against matching's ~10 ms."""
    try:
        import ctypes  # noqa: PLC0415 - only the agent sets it

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


class CommandError(Exception):
    """A command cannot go on; ``cli.main`` prints the message to stderr and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def config_env(env_file: str | Path | None, default: Path = DEFAULT_ENV_FILE) -> Mapping[str, str]:
    """``os.environ`` with the env file's variables over it, for ``${VAR}`` interpolation.

    An explicit ``env_file`` must be readable (else a usage error); without one, ``default`` is
    read when it is there and readable, and a note says so when it is there but unreadable.
    What the file ignores (``export KEY=…``) is printed to stderr. ``os.environ`` is not changed.
    """
    from detector.config.envfile import read_env_file  # noqa: PLC0415 - keep --help fast

    if env_file is None:
        if not default.is_file():
            return os.environ
        if not os.access(default, os.R_OK):
            print(
                f"note: {default} is not readable by this user, so the ${{VAR}}s set there are "
                "not seen (run as root, or give --env-file)",
                file=sys.stderr,
            )
            return os.environ
        env_file = default
    try:
        parsed = read_env_file(env_file)
    except OSError as e:
        raise CommandError(f"--env-file {env_file}: cannot read: {e.strerror or e}") from e
    for warning in parsed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return {**os.environ, **parsed.values}


def load_config_or_exit(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` (with ``args.env_file``), or a :class:`CommandError` (exit 2)
    that names every problem."""
    from detector.config import ConfigError, load_config  # noqa: PLC0415 - keep --help fast

    env = config_env(getattr(args, "env_file", None))
    try:
        return load_config(args.config, env)
    except ConfigError as e:
        raise CommandError(str(e), EXIT_USAGE) from e


def open_state(config: Config) -> Store:
    from detector.store.db import Store, StoreError  # noqa: PLC0415 - `detector test` needs no SQLite

    if not config.agent.state.exists():
        raise CommandError(f"no state file at {config.agent.state} (the agent has not run yet)")
    try:
        return Store(config.agent.state)
    except StoreError as e:
        raise CommandError(str(e)) from e
