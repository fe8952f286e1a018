"""What the read-only commands (status, templates, send-test) share: load the config and open
the state file, failing with a clear message and exit code instead of a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from detector.model import Config

if TYPE_CHECKING:
    from detector.store.db import Store


class CommandError(Exception):
    """A command cannot go on; ``cli.main`` prints the message to stderr and exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def load(path: str | Path) -> Config:
    from detector.config import ConfigError, load_config  # noqa: PLC0415 - keep --help fast

    try:
        return load_config(path)
    except ConfigError as e:
        raise CommandError(str(e), 2) from e


def open_state(config: Config) -> Store:
    from detector.store.db import Store, StoreError  # noqa: PLC0415 - `detector test` needs no SQLite

    if not config.agent.state.exists():
        raise CommandError(f"no state file at {config.agent.state} (the agent has not run yet)")
    try:
        return Store(config.agent.state)
    except StoreError as e:
        raise CommandError(str(e)) from e
