"""Matching: every rule's patterns compiled once, applied to a batch of lines in one pass.

Sits between sources and rules: ``Matcher.match(source, texts)`` (or ``match_block`` on raw bytes)
returns the ``Hit``\\ s of every pattern of every rule bound to that source, with Python ``re``
semantics per line. This is the package's one public face; the rest of the code imports from here.
Inside: ``engine`` (the ``Matcher``: Hyperscan block prefilter when the wheel is installed, else
pure Python, then confirmation), ``translate`` (``re`` syntax → Hyperscan pattern and risk
analysis), ``pike`` (the linear-time Pike VM) and ``budget`` (the CPU budget of one ``re``
search).
"""

from detector.matching.budget import CONFIRM_BUDGET_S
from detector.matching.engine import (
    ENGINE,
    MAX_OVERRUNS_PER_CALL,
    MAX_OVERRUNS_PER_CALL_ALL,
    PIKE_S_PER_CALL,
    RE_MAX_CHARS,
    RISKY_RE_MAX_CHARS,
    Abandoned,
    Hit,
    Matcher,
    PatternReport,
    PatternSpec,
    Role,
    RuleTiming,
    open_db_cache,
    rule_timings,
)

__all__ = [
    "CONFIRM_BUDGET_S",
    "ENGINE",
    "MAX_OVERRUNS_PER_CALL",
    "MAX_OVERRUNS_PER_CALL_ALL",
    "PIKE_S_PER_CALL",
    "RE_MAX_CHARS",
    "RISKY_RE_MAX_CHARS",
    "Abandoned",
    "Hit",
    "Matcher",
    "PatternReport",
    "PatternSpec",
    "Role",
    "RuleTiming",
    "open_db_cache",
    "rule_timings",
]
