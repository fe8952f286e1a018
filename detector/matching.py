"""Matching: every rule's patterns compiled once, applied to a batch of lines in one pass.

Sits between sources and rules. ``Matcher.match(source, texts)`` returns the hits of every pattern
of every rule bound to that source; rules then see only their hits. Semantics are exactly Python
``re.search`` per line with the pattern's own flags; named groups that took part become fields.

NOTE: this is the simple reference implementation of the contract; the block-wise multi-pattern
prefilter replaces its inner loop without changing the contract.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Role = Literal["match", "ignore", "fail", "start", "end"]
ENGINE = "re (per line)"


@dataclass(frozen=True)
class PatternSpec:
    rule: str
    role: Role
    regex: str
    sources: frozenset[str]


@dataclass(frozen=True, slots=True)
class Hit:
    line: int
    """Index of the line in the texts passed to ``match``."""
    rule: str
    role: Role
    groups: dict[str, str]
    """Named groups that participated in the match."""


@dataclass(frozen=True)
class PatternReport:
    rule: str
    role: Role
    engine: str
    note: str = ""


class Matcher:
    def __init__(self, specs: Sequence[PatternSpec]) -> None:
        self._specs = list(specs)
        self._compiled = [re.compile(s.regex) for s in self._specs]

    def match(self, source: str, texts: Sequence[str]) -> list[Hit]:
        """Hits in line order, then in spec order. A rule's ``ignore`` pattern suppresses that
        rule's other hits on the same line and is itself never returned."""
        active = [
            (spec, rx)
            for spec, rx in zip(self._specs, self._compiled, strict=True)
            if source in spec.sources
        ]
        hits: list[Hit] = []
        for i, text in enumerate(texts):
            ignored: set[str] = set()
            line_hits: list[Hit] = []
            for spec, rx in active:
                m = rx.search(text)
                if m is None:
                    continue
                if spec.role == "ignore":
                    ignored.add(spec.rule)
                    continue
                groups = {k: v for k, v in m.groupdict().items() if v is not None}
                line_hits.append(Hit(i, spec.rule, spec.role, groups))
            hits.extend(h for h in line_hits if h.rule not in ignored)
        return hits

    def report(self) -> list[PatternReport]:
        return [PatternReport(s.rule, s.role, ENGINE) for s in self._specs]
