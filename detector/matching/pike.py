"""A linear-time regex runner (Pike VM) for patterns that could make ``re`` backtrack for ever.

Used by ``engine`` (the ``Matcher``) to confirm a candidate line and extract its groups when a
rule's pattern is classified risky (nested repetition…). It runs the parse tree of Python's own
parser as a thread-list NFA: time is O(len(line) × program size), whatever the pattern or the line.
Every character test and every anchor is delegated to a tiny compiled Python ``re`` of that one
node with the pattern's flags in effect there, so character semantics (Unicode ``\\w``, case
folding, ``\\b`` next to non-ASCII letters) are Python's own. Threads are kept in priority order
and a repeat that made no progress stops looping, which gives Python's leftmost-first result and
its captures. Backreferences, lookaround, atomic groups and possessive repeats are not supported
(``compile_pike`` raises ``PikeUnsupported``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from detector.frozen import Frozen
from detector.matching.translate import (
    _FLAG_MASK,
    MAXREPEAT,
    at_source,
    char_source,
    effective_flags,
    parse,
)

MAX_PROGRAM = 5000
"""Instructions at most (counted repeats are expanded); bigger patterns are not run here."""

_CHAR, _ASSERT, _SPLIT, _JMP, _SAVE, _MARK, _LOOP, _MATCH = range(8)

Test = Callable[[str, int], "re.Match[str] | None"]
Instr = tuple[Any, ...]


class PikeUnsupported(Exception):
    pass


class PikeProgram(Frozen):
    """A regex compiled for the Pike VM."""

    code: tuple[Instr, ...]
    groups_end: int
    """Capture slots (2 per group, group 0 included); loop marks follow them."""
    slots: int
    groupindex: dict[str, int]

    def search(self, text: str) -> dict[str, str] | None:
        """Named groups (that took part) of the leftmost-first match, or None if no match."""
        caps = run(self, text)
        if caps is None:
            return None
        out: dict[str, str] = {}
        for name, gid in self.groupindex.items():
            start, end = caps[2 * gid], caps[2 * gid + 1]
            if start is not None and end is not None:
                out[name] = text[start:end]
        return out


class _Builder:
    def __init__(self) -> None:
        self.code: list[list[Any]] = []
        self.loops = 0
        self.tests: dict[tuple[str, int], Test] = {}

    def emit(self, *ins: Any) -> int:
        if len(self.code) >= MAX_PROGRAM:
            raise PikeUnsupported(f"pattern needs more than {MAX_PROGRAM} instructions")
        self.code.append(list(ins))
        return len(self.code) - 1

    def test(self, src: str, flags: int) -> Test:
        key = (src, flags & _FLAG_MASK)
        if key not in self.tests:
            self.tests[key] = re.compile(src, key[1]).match
        return self.tests[key]

    def seq(self, items: Any, flags: int) -> None:
        for op, av in items:
            self.node(op, av, flags)

    def node(self, op: Any, av: Any, flags: int) -> None:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            self.emit(_CHAR, self.test(char_source(op, av), flags))
        elif name == "AT":
            self.emit(_ASSERT, self.test(at_source(av), flags))
        elif name == "SUBPATTERN":
            gid, add, delete, sub = av
            inner = effective_flags(flags, add, delete)
            if gid is not None:
                self.emit(_SAVE, 2 * gid)
            self.seq(sub, inner)
            if gid is not None:
                self.emit(_SAVE, 2 * gid + 1)
        elif name == "BRANCH":
            alts = av[1]
            jumps: list[int] = []
            for k, alt in enumerate(alts):
                if k < len(alts) - 1:
                    split = self.emit(_SPLIT, 0, 0)
                    self.code[split][1] = split + 1
                    self.seq(alt, flags)
                    jumps.append(self.emit(_JMP, 0))
                    self.code[split][2] = len(self.code)
                else:
                    self.seq(alt, flags)
            for j in jumps:
                self.code[j][1] = len(self.code)
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            self.repeat(av, flags, greedy=name == "MAX_REPEAT")
        else:
            raise PikeUnsupported(name)

    def repeat(self, av: Any, flags: int, greedy: bool) -> None:
        lo, hi, sub = av
        for _ in range(lo):
            self.seq(sub, flags)
        if hi == MAXREPEAT:
            slot = self.loops
            self.loops += 1
            head = self.emit(_SPLIT, 0, 0)
            self.emit(_MARK, slot)
            self.seq(sub, flags)
            self.emit(_LOOP, slot, head, 0)
            end = len(self.code)
            self.code[head][1:3] = [head + 1, end] if greedy else [end, head + 1]
            self.code[end - 1][3] = end
            return
        splits: list[int] = []
        for _ in range(hi - lo):
            split = self.emit(_SPLIT, 0, 0)
            self.code[split][1:3] = [split + 1, -1] if greedy else [-1, split + 1]
            splits.append(split)
            self.seq(sub, flags)
        end = len(self.code)
        for split in splits:
            ins = self.code[split]
            ins[ins.index(-1)] = end


def compile_pike(regex: str) -> PikeProgram:
    tree = parse(regex)
    builder = _Builder()
    builder.emit(_SAVE, 0)
    builder.seq(list(tree), tree.state.flags)
    builder.emit(_SAVE, 1)
    builder.emit(_MATCH)
    groups = tree.state.groups
    return PikeProgram(
        code=tuple(tuple(ins) for ins in builder.code),
        groups_end=2 * groups + 2,
        slots=2 * groups + 2 + builder.loops,
        groupindex=dict(tree.state.groupdict),
    )


def run(prog: PikeProgram, text: str) -> tuple[int | None, ...] | None:
    """Leftmost-first search; the capture slots of the match, or None."""
    code = prog.code
    groups_end = prog.groups_end
    loops = prog.slots > groups_end
    empty: tuple[int | None, ...] = (None,) * prog.slots
    n = len(text)
    matched: tuple[int | None, ...] | None = None
    clist: list[tuple[int, tuple[int | None, ...]]] = []
    visited: set[object] = set()

    def add(
        target: list[tuple[int, tuple[int | None, ...]]],
        seen: set[object],
        pc: int,
        caps: tuple[int | None, ...],
        i: int,
    ) -> None:
        stack = [(pc, caps)]
        while stack:
            pc, caps = stack.pop()
            # A thread's future depends on its pc and on which loop iterations began right
            # here (a repeat stops after an empty iteration): that pair is the NFA state.
            key: object = (pc, *[m == i for m in caps[groups_end:]]) if loops else pc
            if key in seen:
                continue
            seen.add(key)
            ins = code[pc]
            op = ins[0]
            if op == _JMP:
                stack.append((ins[1], caps))
            elif op == _SPLIT:
                stack.append((ins[2], caps))
                stack.append((ins[1], caps))
            elif op in (_SAVE, _MARK):
                k = ins[1] if op == _SAVE else groups_end + ins[1]
                stack.append((pc + 1, (*caps[:k], i, *caps[k + 1 :])))
            elif op == _LOOP:
                # No progress since this iteration began: stop looping (as Python's re does).
                stack.append((ins[3] if caps[groups_end + ins[1]] == i else ins[2], caps))
            elif op == _ASSERT:
                if ins[1](text, i) is not None:
                    stack.append((pc + 1, caps))
            else:
                target.append((pc, caps))

    for i in range(n + 1):
        if matched is None:
            add(clist, visited, 0, empty, i)
        if not clist:
            if matched is not None:
                break
            visited = set()
            continue
        nlist: list[tuple[int, tuple[int | None, ...]]] = []
        nvisited: set[object] = set()
        for pc, caps in clist:
            ins = code[pc]
            if ins[0] == _MATCH:
                matched = caps
                break
            if ins[1](text, i) is not None:
                add(nlist, nvisited, pc + 1, caps, i + 1)
        clist, visited = nlist, nvisited
    return matched
