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

if TYPE_CHECKING:
    from detector.model import Config
    from detector.store.db import Store

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE

DEFAULT_ENV_FILE = Path("/etc/detector/detector.env")
"""The unit's ``EnvironmentFile=`` (systemd/detector.service)."""


MALLOC_ARENAS = 1
"""``detector run``: glibc's malloc arenas (``mallopt(M_ARENA_MAX)``; ``MALLOC_ARENA_MAX`` in
the environment overrides it)."""
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def tune_malloc() -> bool:
    """One malloc arena for the agent's threads, whose reads reuse their memory (glibc;
    elsewhere nothing, and False).

    The sweeps read their 1 MiB blocks in a pool thread and the event loop frees them: each
    thread's arena would keep its own freed blocks for reuse (an arena per thread, up to 8 per
    CPU), one shared arena keeps one set. The threads take turns under the GIL anyway, so the
    arena's lock is not contended. And the freed blocks stay on the heap for the next reads
    (``lines.keep_read_buffers``) rather than given back and faulted in again: up to a block
    and a quarter, not the replay's 4 MiB, since what is larger in the agent grows with its
    state (a dict of 100,000 ``group_by`` keys): mapped, it is given back whole when it
    grows again (at 4 MiB those keys held 5 MB more of freed heap, 89 → 94.6 MB). (A fixed
    ``M_MMAP_THRESHOLD`` of 256 KiB, each block mapped and given back at free, cut the peak 3–4
    MB more but cost 3–4 % of ingest CPU in page faults: README, "Peak RSS".)"""
    from detector.sources.lines import BLOCK_BYTES, keep_read_buffers, mallopt  # noqa: PLC0415

    keep_read_buffers(mmap_threshold=BLOCK_BYTES + BLOCK_BYTES // 4)
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    return mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


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
