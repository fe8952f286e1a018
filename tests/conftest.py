"""Fixtures shared by the delivery tests: a real SQLite state file, the store's single-writer
thread, an HTTP session and a receiver on 127.0.0.1 (a module may define its own to override)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from detector.config import sections
from detector.store.db import AsyncStore, Store
from tests.receiver import Receiver

# The compiled-pattern cache of every agent and command the tests start (in-process or as a
# subprocess, which inherits it): one fresh directory per test run, never the user's
# ~/.cache/detector, so no run reuses another's entries.
os.environ["CACHE_DIRECTORY"] = tempfile.mkdtemp(prefix="detector-test-cache-")
# A config loaded in-process with an env of its own ({}: no $CACHE_DIRECTORY) falls back, as root
# (the suite's usual user), to root's default, the machine's /var/cache/detector: the same
# directory instead (subprocesses read $CACHE_DIRECTORY above first).
sections.SYSTEM_CACHE_DIR = Path(os.environ["CACHE_DIRECTORY"])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


@pytest.fixture
async def db(store: Store) -> AsyncIterator[AsyncStore]:
    a = AsyncStore(store)
    yield a
    a.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """A bound, non-blocking ``NOTIFY_SOCKET`` datagram socket (path, socket) for sd_notify
    messages; in a short /tmp directory: AF_UNIX paths are limited to 108 bytes and pytest's
    tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as directory:
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield path, sock
        finally:
            sock.close()
