"""Retry policy: which answers are success, which are worth retrying, and when to retry.

Pure functions (time and randomness are arguments), used by the worker after every attempt:

1. 2xx is success, whatever the body (receivers answer "ok", JSON or HTML alike);
2. 4xx other than 408, 425, 429 is permanent (the request itself is wrong: dead letter at once);
3. everything else — 3xx (redirects are not followed: a login page is not a delivery), 408, 425,
   429, 5xx, timeouts, connection errors, malformed responses — is transient;
4. a transient failure is retried after exponential backoff with full jitter (base 1 s, cap 5 min),
   or after ``Retry-After`` (seconds or HTTP-date) when a 429/503 carries one.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

BASE = timedelta(seconds=1)
CAP = timedelta(minutes=5)
RETRY_AFTER_MAX = timedelta(hours=1)
TRANSIENT_4XX = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})

Verdict = Literal["ok", "permanent", "transient"]


def classify(status: int) -> Verdict:
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500 and status not in TRANSIENT_4XX:
        return "permanent"
    return "transient"


def backoff(
    attempt: int, rng: random.Random, base: timedelta = BASE, cap: timedelta = CAP
) -> timedelta:
    """Full jitter: uniform in [0, min(cap, base · 2^(attempt-1))] for attempt ≥ 1."""
    exp = min(cap.total_seconds(), base.total_seconds() * 2 ** min(max(attempt - 1, 0), 30))
    return timedelta(seconds=rng.uniform(0, exp))


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
