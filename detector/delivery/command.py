"""The ``exec`` format: run a command with the alert as JSON on its stdin, under a timeout.

Sits beside the HTTP POST: :func:`detector.delivery.exec_format.render` builds the generic
``json`` format's payload (or the webhook's ``template``) as the bytes to feed, and
:func:`detector.delivery.channels.deliver` calls :func:`run` instead of an HTTP POST, so retries,
path holds, dead letters and agent alerts are the outbox worker's as for every webhook. The
command (an argv list, no shell) runs in its own process group with a clean environment
(``PATH``, ``LANG``, ``LC_ALL``, ``TZ`` and ``HOME`` from the agent, nothing else: no secret of
the agent's leaks into it) plus ``DETECTOR_EVENT_ID``,
``DETECTOR_WEBHOOK``, ``DETECTOR_NOTIFICATION`` (firing, repeat, resolved, info), ``DETECTOR_RULE``,
``DETECTOR_SEVERITY`` and ``DETECTOR_ATTEMPT``. Its exit status decides:

- 0: delivered;
- :data:`EX_DATAERR` (65, sysexits' "the input data was incorrect"): this alert is refused, a dead
  letter at once;
- 126/127 (not executable, not found, as a shell reports them), or the command cannot be started:
  the path's fault: the webhook is held and reported failing at once;
- anything else, a signal, or the ``timeout`` (default 10s; the whole process group is killed):
  transient, retried with backoff.

The start of stdout and stderr (:data:`OUTPUT_CHARS` each) goes into the outcome's text, which the
worker logs and stores with the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping

from detector.delivery.common import RenderedRequest
from detector.delivery.exec_format import exec_url
from detector.delivery.transport import Outcome, redact
from detector.model import WebhookConfig

EX_DATAERR = 65
NOT_RUNNABLE = frozenset({126, 127})
OUTPUT_CHARS = 500
READ_CAP = 64 * 1024
KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra)
    return env


async def _read(stream: asyncio.StreamReader | None) -> bytes:
    """The first :data:`READ_CAP` bytes of ``stream``; the rest is read and dropped."""
    if stream is None:
        return b""
    buf = bytearray()
    while chunk := await stream.read(READ_CAP):
        if len(buf) < READ_CAP:
            buf += chunk[: READ_CAP - len(buf)]
    return bytes(buf)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.close()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _clip_output(raw: bytes) -> str:
    text = " ".join(raw.decode(errors="replace").split())
    return text if len(text) <= OUTPUT_CHARS else text[:OUTPUT_CHARS] + "…"


async def run(webhook: WebhookConfig, request: RenderedRequest) -> Outcome:
    """Run the webhook's command once for one rendered alert; never raises for a delivery
    problem."""
    argv = webhook.command
    where = exec_url(argv)
    timeout = webhook.timeout.total_seconds()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(request.headers),
            start_new_session=True,  # its own process group: a timeout kills all of it
            close_fds=True,
        )
    except OSError as e:
        return Outcome(
            ok=False,
            permanent=True,
            fault="path",
            error=redact(f"{where}: cannot start: {e.strerror or type(e).__name__}", webhook),
        )
    work = asyncio.gather(_feed(proc, request.body()), _read(proc.stdout), _read(proc.stderr))
    try:
        _, out, err = await asyncio.wait_for(asyncio.shield(work), timeout)
        code = await proc.wait()
    except TimeoutError:
        _kill_group(proc)
        _, out, err = await work  # the pipes close as the group dies
        await proc.wait()
        return Outcome(
            ok=False,
            path_down=True,
            error=redact(
                f"{where}: timed out after {timeout:g}s (killed){_said(out, err)}", webhook
            ),
        )
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    said = _said(out, err)
    if code == 0:
        return Outcome(ok=True, body=redact(said.removeprefix("; "), webhook))
    what = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    error = redact(f"{where}: {what}{said}", webhook)
    if code == EX_DATAERR:
        return Outcome(ok=False, permanent=True, fault="row", definite=True, error=error)
    if code in NOT_RUNNABLE:
        return Outcome(ok=False, permanent=True, fault="path", error=error)
    return Outcome(ok=False, error=error)


def _said(out: bytes, err: bytes) -> str:
    parts = []
    if out.strip():
        parts.append(f"stdout: {_clip_output(out)}")
    if err.strip():
        parts.append(f"stderr: {_clip_output(err)}")
    return "".join(f"; {p}" for p in parts)
