"""Scalar text to values: ``${VAR}`` interpolation from the environment and durations.

Sits under the config loader (``nodes.py`` calls :func:`interpolate` on every string value and
:func:`parse_duration` on every duration); :func:`format_duration` is its inverse, used to show
durations back to people, and :func:`redact` puts the ``${VAR}`` back in place of each value taken
from the environment in every message the loader prints (secrets are never shown). ``${VAR}`` and
``${VAR:-default}`` are replaced in every string value (not in keys); ``$$`` is a literal dollar; a
``$`` not followed by ``{`` or ``$`` stays as it is (so regex anchors need no escaping); a
set-but-empty VAR takes the ``:-`` default. Durations are integer or decimal amounts with units
``w d h m s ms`` from largest to smallest, e.g. ``30s``, ``1h30m``, ``1.5h``, ``500ms``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_DURATION_UNITS: Mapping[str, int] = {  # microseconds, largest first
    "w": 7 * 86_400_000_000,
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
_UNIT_ORDER = list(_DURATION_UNITS)
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")


def parse_duration(text: str) -> timedelta:
    """``"30s"``, ``"5m"``, ``"1h30m"``, ``"2d"``, ``"1w"``, ``"500ms"``, ``"1.5h"`` → timedelta.

    Raises ``ValueError`` with a hint; a bare number is refused because its unit is a guess.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration — write 30s or 5m")
    if re.fullmatch(r"[+-]?\d+(?:\.\d+)?", s):
        raise ValueError(f"'{s}' has no unit — write 30s or 5m (units: ms s m h d w)")
    if s.startswith("-"):
        raise ValueError(f"'{s}' is negative — durations are 0s or more")
    pos = 0
    total = Decimal(0)
    last = -1
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(
                f"cannot read '{s}' as a duration"
                + (f" (stuck at '{s[pos:]}')" if pos else "")
                + " — write e.g. 30s, 5m, 1h30m, 2d (units: ms s m h d w)"
            )
        unit = m.group(2)
        idx = _UNIT_ORDER.index(unit)
        if idx <= last:
            raise ValueError(
                f"'{s}': units must go from largest to smallest, each once — e.g. 1h30m, not 30m1h"
            )
        last = idx
        total += Decimal(m.group(1)) * _DURATION_UNITS[unit]
        pos = m.end()
    return timedelta(microseconds=int(total))


def format_duration(d: timedelta) -> str:
    """The inverse of :func:`parse_duration`: ``timedelta(minutes=90)`` → ``"1h30m"``."""
    total = (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    if total < 0:
        raise ValueError("negative durations cannot be written")
    if total == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("w", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    secs, micros = divmod(total, 1_000_000)
    if micros % 1000 == 0:
        if secs:
            parts.append(f"{secs}s")
        if micros:
            parts.append(f"{micros // 1000}ms")
    else:
        parts.append(f"{secs}.{micros:06d}".rstrip("0") + "s")
    return "".join(parts)


def interpolate(
    text: str, env: Mapping[str, str], used: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """Replace ``${VAR}``/``${VAR:-default}``/``$$`` in ``text``; returns (result, problems).
    ``used`` collects ``{name: value}`` of each variable taken from ``env`` (for :func:`redact`)."""
    out: list[str] = []
    problems: list[str] = []
    i = 0
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            k = text.find("}", j + 2)
            if k < 0:
                problems.append(
                    f"unterminated '${{' in '{text}' — close it with '}}', or write $$ for a "
                    "literal dollar sign"
                )
                out.append(text[j:])
                break
            body = text[j + 2 : k]
            name, sep, default = body.partition(":-")
            if not _VAR_NAME.fullmatch(name):
                problems.append(
                    f"'${{{body}}}' is not a valid variable reference — write ${{NAME}} or "
                    "${NAME:-default} (letters, digits, _), or $$ for a literal dollar sign"
                )
            else:
                value = env.get(name)
                if value is None or (sep and value == ""):
                    if sep:
                        out.append(default)
                    else:
                        problems.append(
                            f"environment variable {name} is not set — set it in the "
                            f"environment, or give a default: ${{{name}:-value}}"
                        )
                else:
                    out.append(value)
                    if used is not None:
                        used[name] = value
            i = k + 1
        else:
            out.append("$")
            i = j + 1
    return "".join(out), problems


REDACT_MIN = 4
"""Values shorter than this are not replaced (as in the delivery's redaction): no secret is that
short, and replacing "1" or "on" would garble every message it occurs in."""


def redact(text: str, used: Mapping[str, str]) -> str:
    """``text`` with every value taken from the environment shown as its ``${NAME}`` instead:
    error messages and warnings never print a secret. Longest values first, so a value that
    contains another is replaced whole."""
    for name, value in sorted(used.items(), key=lambda item: len(item[1]), reverse=True):
        if len(value) >= REDACT_MIN and value in text:
            text = text.replace(value, f"${{{name}}}")
    return text
