"""SHA-256 and BLAKE2b without importing :mod:`hashlib`: the same digests, a faster start.

``import hashlib`` loads OpenSSL (``_hashlib``, ~2 ms, the largest single import of
``detector check`` after the config's own), yet what the commands hash is small: the compiled
pattern cache's keys and its entries' checksums (``matching/dbcache.py``), alert fingerprints
(``alerts.py``), folded keys (``rules/state.py``). CPython's own implementations, which hashlib
itself falls back to, give the same bytes; OpenSSL's SHA-256 (~7x faster per byte) is still used
for what is over 1 MiB (a large cached database), imported then.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol


class Hash(Protocol):
    """What of a hashlib hash object the callers use."""

    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def _builtin(names: tuple[str, ...], attr: str) -> Any:
    for name in names:
        try:
            return getattr(importlib.import_module(name), attr)
        except ImportError:
            continue
    return getattr(importlib.import_module("hashlib"), attr)  # pragma: no cover - no builtin


_SHA256 = _builtin(("_sha2", "_sha256"), "sha256")  # Python 3.12+, 3.11
_BLAKE2B = _builtin(("_blake2",), "blake2b")  # hashlib.blake2b is this one anyway
OPENSSL_FROM = 1 << 20
"""From this many bytes on, :func:`sha256` hashes with OpenSSL's (importing hashlib)."""


def sha256(data: bytes = b"") -> Hash:
    """``hashlib.sha256(data)``: the same object's methods and digest."""
    if len(data) > OPENSSL_FROM:
        import hashlib  # noqa: PLC0415 - a large payload only

        return hashlib.sha256(data)
    return _SHA256(data)  # type: ignore[no-any-return]


def blake2b(data: bytes = b"", *, digest_size: int = 64) -> Hash:
    """``hashlib.blake2b(data, digest_size=…)``."""
    return _BLAKE2B(data, digest_size=digest_size)  # type: ignore[no-any-return]
