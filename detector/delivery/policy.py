"""Retry policy: which answers are success, whose fault a failure is, and when to try again.

Pure functions (time and randomness are arguments), used by the transport and the worker after
every attempt:

1. 2xx is success, whatever the body (receivers answer "ok", JSON or HTML alike);
2. 4xx other than 408, 425, 429 is permanent: the same request will never succeed. Whose fault it
   is decides what happens next (:func:`judge`):

   - 401, 403, 404, 410 are the PATH's: the token was revoked or the endpoint is gone, so no row
     can get through. The worker holds the webhook's whole backlog and reports the path failing;
     the rows go out, in order, once someone fixes the webhook;
   - any other 4xx (400, 413, 422…) is the ROW's: that payload is refused. The worker dead-letters
     the row only when another row got through around it; two rows refused back to back are the
     path again.

   A format module may know better for its service (Slack's 400 ``invalid_token``,
   PagerDuty's 400 about the routing key): :func:`detector.delivery.formats.judge` asks it first;
3. everything else — 3xx (redirects are not followed: a login page is not a delivery), 408, 425,
   429, 5xx, timeouts, connection errors, malformed responses — is transient;
4. a transient failure of one row is retried after exponential backoff with full jitter (base 1 s,
   cap 30 s); a failing path is held for an exponential backoff with equal jitter (at most 30 s),
   so a receiver that comes back is tried again within 30 s; ``Retry-After`` (seconds or HTTP-date)
   on a 429/503 wins over both (up to an hour).
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

BASE = timedelta(seconds=1)
CAP = timedelta(seconds=30)
RETRY_AFTER_MAX = timedelta(hours=1)
TRANSIENT_4XX = frozenset({408, 425, 429})
PATH_4XX = frozenset({401, 403, 404, 410})  # auth revoked / endpoint gone: every row fails
RETRY_AFTER_STATUSES = frozenset({429, 503})

Verdict = Literal["ok", "permanent", "transient"]
Answer = Literal["ok", "transient", "path", "row"]


def classify(status: int) -> Verdict:
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500 and status not in TRANSIENT_4XX:
        return "permanent"
    return "transient"


def judge(status: int) -> Answer:
    """The default reading of a status: ``ok``, ``transient``, or whose fault: ``path``/``row``."""
    verdict = classify(status)
    if verdict != "permanent":
        return verdict
    return "path" if status in PATH_4XX else "row"


def backoff(
    attempt: int, rng: random.Random, base: timedelta = BASE, cap: timedelta = CAP
) -> timedelta:
    """Full jitter: uniform in [0, min(cap, base · 2^(attempt-1))] for attempt ≥ 1."""
    exp = min(cap.total_seconds(), base.total_seconds() * 2 ** min(max(attempt - 1, 0), 30))
    return timedelta(seconds=rng.uniform(0, exp))


def path_backoff(
    failures: int, rng: random.Random, base: timedelta = BASE, cap: timedelta = CAP
) -> timedelta:
    """Equal jitter: uniform in [e/2, e] with e = min(cap, base · 2^(failures-1)).

    The lower half keeps a dead receiver from being probed many times a second; the cap keeps a
    receiver that came back from waiting more than ``cap`` for its backlog.
    """
    exp = min(cap.total_seconds(), base.total_seconds() * 2 ** min(max(failures - 1, 0), 30))
    return timedelta(seconds=rng.uniform(exp / 2, exp))


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """``Retry-After: 120`` or ``Retry-After: Wed, 21 Oct 2026 07:28:00 GMT``; None if absent/bad.

    Capped at :data:`RETRY_AFTER_MAX` so a hostile or broken receiver cannot park us for a week.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)  # the standard says an integer; Discord and others send "1.5"
    except ValueError:
        seconds = None
    if seconds is not None:
        if math.isnan(seconds) or seconds < 0:
            return None
        delay = timedelta(seconds=min(seconds, RETRY_AFTER_MAX.total_seconds()))
    else:
        try:
            at = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        delay = max(at - now, timedelta(0))
    return min(delay, RETRY_AFTER_MAX)
