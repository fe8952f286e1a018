"""Logging set-up: native journal entries under systemd, plain lines for people, JSON for machines.

Called once by ``detector run`` (``cli.cmd_run``) before the agent starts, and used by the short
commands that systemd runs around it (``detector check`` as ExecStartPre, ``detector reload`` as
ExecReload) to report an error. When stderr is the journal (``$JOURNAL_STREAM`` names the device
and inode of fd 2, as systemd sets it for ``StandardError=journal``), each record is sent to
journald's native socket as ONE entry with its syslog ``PRIORITY``, the ``CODE_*`` fields and
``DETECTOR_LOGGER``, and no timestamp of our own (the journal has its own): a multi-line message
(a config error listing, a traceback) stays one entry, which the stream protocol cannot do since
it splits on newlines. When the socket cannot be used, a record falls back to the stream's
``<N>`` priority prefix on stderr with its newlines written as ``\\n``, so it still stays one
entry at its priority. A terminal or a file gets the plain text lines it always had.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
"""journald's native socket. Under ``LogNamespace=NAME`` systemd mounts the namespace's socket
(``/run/systemd/journal.NAME/socket``) here; ``$DETECTOR_JOURNAL_SOCKET`` overrides it."""

SYSLOG_IDENTIFIER = "detector"

MAX_MESSAGE_BYTES = 64 * 1024
"""A MESSAGE longer than this is cut (with a note of how much was cut): an entry is sent as one
datagram, and the protocol's way around the datagram size limit (a sealed memfd passed with
SCM_RIGHTS) is not implemented. 64 KiB holds any config error listing or traceback."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def syslog_priority(levelno: int) -> int:
    """Python level → syslog priority: CRITICAL 2 (crit), ERROR 3, WARNING 4, INFO 6, DEBUG 7."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the journal stream systemd connected: ``$JOURNAL_STREAM`` is
    ``DEVICE:INODE`` (decimal) and matches ``fstat(fd)``. A child whose stderr was redirected
    elsewhere inherits the variable but not the match."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def encode_native(fields: Mapping[str, str]) -> bytes:
    """One entry in the native protocol: ``KEY=value\\n``, or for a value with a newline the
    binary-safe ``KEY\\n<little-endian u64 length><bytes>\\n``."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def stream_line(priority: int, message: str) -> str:
    """The stream-protocol fallback: ``<N>`` prefix, newlines written as ``\\n`` (one entry)."""
    return f"<{priority}>" + message.replace("\r", "").replace("\n", "\\n") + "\n"


def _cut(message: str) -> str:
    data = message.encode("utf-8", "replace")
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    kept = data[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")
    return f"{kept}\n… [{len(data) - MAX_MESSAGE_BYTES} more bytes cut]"


class JournalHandler(logging.Handler):
    """Each record → one native journal entry; the stream ``<N>`` form on ``stream`` if the
    socket refuses it (then a one-time note says why, on the same fallback)."""

    def __init__(
        self,
        socket_path: str | None = None,
        identifier: str = SYSLOG_IDENTIFIER,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.socket_path = (
            socket_path or os.environ.get("DETECTOR_JOURNAL_SOCKET") or (JOURNAL_SOCKET)
        )
        self.identifier = identifier
        self.stream = stream if stream is not None else sys.stderr
        import socket  # noqa: PLC0415 - under journald only: the commands start without it

        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._fallback_noted = False
        self.setFormatter(logging.Formatter("%(message)s"))

    def message_of(self, record: logging.LogRecord) -> str:
        text = self.format(record)
        if record.name != "detector" and not record.name.startswith("detector."):
            text = f"{record.name}: {text}"  # aiohttp, asyncio: say who is talking
        return _cut(text)

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        out = {
            "MESSAGE": self.message_of(record),
            "PRIORITY": str(syslog_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
            "DETECTOR_LOGGER": record.name,
        }
        return {k: v for k, v in out.items() if v}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = self.fields(record)
            try:
                self._sock.sendto(encode_native(fields), self.socket_path)
                return
            except OSError as e:
                if not self._fallback_noted:
                    self._fallback_noted = True
                    note = f"journal socket {self.socket_path} unusable ({e}); logging to stderr"
                    self.stream.write(stream_line(4, note))
            self.stream.write(stream_line(int(fields["PRIORITY"]), fields.get("MESSAGE", "")))
            self.stream.flush()
        except Exception:  # logging must never raise into the agent
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def resolve(fmt: str, environ: Mapping[str, str] | None = None) -> str:
    """``auto`` → ``journal`` when stderr is the journal, else ``text``; others unchanged."""
    if fmt == "auto":
        return "journal" if stderr_is_journal(environ) else "text"
    return fmt


def setup(fmt: str = "auto", level: str = "INFO") -> str:
    """Send every record to stderr or the journal per ``fmt`` (one of ``model.LOG_FORMATS``);
    returns the format in effect."""
    fmt = resolve(fmt)
    handler: logging.Handler
    if fmt == "journal":
        handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return fmt


def print_error(text: str) -> None:
    """What a short command (check, reload) says when it fails: on stderr as before, or, when
    stderr is the journal, as one entry at priority err (``journalctl -u detector -p err``)."""
    if not stderr_is_journal():
        print(text, file=sys.stderr)
        return
    handler = JournalHandler()
    try:
        handler.emit(logging.LogRecord("detector", logging.ERROR, "", 0, text, None, None))
    finally:
        handler.close()
