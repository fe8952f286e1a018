"""Pattern analysis for matching: Python ``re`` syntax → a Hyperscan byte pattern plus facts.

Used by ``engine`` (and ``pike``) when a matcher is built. A rule's regex is parsed with Python's
own parser (``re._parser``), then walked once to produce:

* ``hs`` — a Hyperscan pattern over the UTF-8 bytes of one line (lines never contain ``\\n`` on
  the block path). Every single-character test (literal, class, ``.``, ``\\w``…) is turned into an
  explicit byte class whose ASCII part is computed by asking Python's ``re`` itself, so on a line
  that is pure ASCII the Hyperscan pattern matches exactly the lines ``re.search`` matches. A
  character that may be non-ASCII becomes "one of its ASCII bytes or a byte ≥ 0x80, then any
  bytes ≥ 0x80", so on other lines the pattern is a superset (a UTF-8 code point, and every
  U+FFFD produced by ``errors="replace"`` from 1–3 invalid bytes, is such a run; a literal U+FFFD
  in the pattern is therefore any such run, not its own three bytes). Constructs Hyperscan
  cannot express (backreferences, lookaround, atomic groups, possessive repeats, conditionals)
  are widened to a superset and the pattern is marked inexact.
* ``hs_loose`` — only for Unicode ``\\b``/``\\B``: the same pattern without word boundaries, a
  superset on non-ASCII lines (where ASCII-only ``\\b`` would be wrong in both directions).
* ``risky`` — a static ReDoS check: a repeat of something that can itself repeat or branch (the
  shape of exponential backtracking). Polynomial backtracking (``.*a.*b``) is bounded instead by
  the prefilter (``re`` runs only on lines that match) and a line-length cap. Risky patterns
  never run through backtracking ``re`` when the linear-time Pike VM (``pike``) can
  run them.
* ``pike_ok`` — the pattern only uses constructs the Pike VM supports.
* ``literals`` — required literals (``required_literals``): a few strings of at least
  ``MIN_LITERAL`` characters, one of which every match takes in (on any line). For a pattern
  ``re`` confirms on every candidate line anyway, Hyperscan can look for them instead of the
  whole translation: a superset of candidates, far cheaper to compile.

``re._parser`` is private to CPython: it is read only on the versions in ``SUPPORTED_PYTHONS`` and
only if a probe pattern parses to the tree this module (and ``pike``) expects. Otherwise
``PARSER_PROBLEM`` says why, and ``engine`` translates nothing: every pattern runs through ``re``
on every line, under the budget, with no Pike VM behind it (``ENGINE`` and ``report()`` say so).
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

from detector.frozen import Frozen

SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13))
"""CPython versions whose ``re._parser`` trees this module and ``pike`` were checked against
(same translations, same Pike VM results). Widen it only after running the tests there."""

_PROBE = r"^(?i:a[^b-d\w.])(?P<n>xa|yb)*?[^c]z{2,3}+\b(?<=q)(?<!r)(?>s)(?-i:(?(n)t|u))\1.\Z"
"""Uses every node and argument shape the walkers here and in ``pike`` read."""
_PROBE_TREE: Any = (
    ("AT", "AT_BEGINNING"),
    ("SUBPATTERN", (None, 2, 0, (
        ("LITERAL", 97),
        ("IN", (("NEGATE", None), ("RANGE", (98, 100)), ("CATEGORY", "CATEGORY_WORD"),
                ("LITERAL", 46))),
    ))),
    ("MIN_REPEAT", (0, "MAXREPEAT", (
        ("SUBPATTERN", (1, 0, 0, (
            ("BRANCH", (None, (
                (("LITERAL", 120), ("LITERAL", 97)),
                (("LITERAL", 121), ("LITERAL", 98)),
            ))),
        ))),
    ))),
    ("NOT_LITERAL", 99),
    ("POSSESSIVE_REPEAT", (2, 3, (("LITERAL", 122),))),
    ("AT", "AT_BOUNDARY"),
    ("ASSERT", (-1, (("LITERAL", 113),))),
    ("ASSERT_NOT", (-1, (("LITERAL", 114),))),
    ("ATOMIC_GROUP", (("LITERAL", 115),)),
    ("SUBPATTERN", (None, 0, 2, (
        ("GROUPREF_EXISTS", (1, (("LITERAL", 116),), (("LITERAL", 117),))),
    ))),
    ("GROUPREF", 1),
    ("ANY", None),
    ("AT", "AT_END_STRING"),
)  # fmt: skip
"""``_PROBE``'s tree on the supported versions, named constants by name (``_shape``)."""


def _shape(node: Any) -> Any:
    """A parse tree as plain data: named constants (opcodes, ``MAXREPEAT``…) as their names,
    sequences (``SubPattern``, lists, tuples) as tuples."""
    if node is None or type(node) in (int, str):
        return node
    if isinstance(node, int):
        return str(node)
    return tuple(_shape(item) for item in node)


def parser_problem(
    version: tuple[int, int], implementation: str, parser: Any, constants: Any
) -> str:
    """Why parse trees from ``parser`` (``re._parser``, with ``re._constants``) cannot be used on
    this Python, or "" if they can."""
    known = ", ".join(f"{major}.{minor}" for major, minor in SUPPORTED_PYTHONS)
    if implementation != "cpython" or version not in SUPPORTED_PYTHONS:
        return (
            f"re parser of {implementation} {version[0]}.{version[1]} not checked "
            f"(CPython {known} are)"
        )
    if parser is None or constants is None:
        return "re._parser is missing"
    try:
        tree = parser.parse(_PROBE, 0)
        if _shape(list(tree)) != _PROBE_TREE or str(constants.MAXREPEAT) != "MAXREPEAT":
            return "re._parser's parse tree is not the expected shape"
        state = tree.state
        if (state.flags, state.groups, dict(state.groupdict)) != (re.UNICODE, 2, {"n": 1}):
            return "re._parser's parse state is not the expected shape"
    except Exception as exc:  # any failure to read the tree means it cannot be used
        return f"re._parser cannot be read ({type(exc).__name__}: {exc})"
    return ""


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_parser: Any = _import("re._parser")
_c: Any = _import("re._constants")

PARSER_PROBLEM = parser_problem(sys.version_info[:2], sys.implementation.name, _parser, _c)
"""Why ``re._parser`` is not used on this Python ("" when it is)."""
MAXREPEAT: int = -1 if PARSER_PROBLEM else _c.MAXREPEAT
_NL = 0x0A
_HIGH = r"[\x80-\xff]"
_HIGH_RUN = r"[\x80-\xff]+"
"""A non-ASCII character in UTF-8 bytes: a code point (2-4 bytes), or the 1-3 invalid bytes
that ``errors="replace"`` turns into one U+FFFD. Unbounded rather than ``{1,4}``: the same on
ASCII lines (where the translation must be exact), a superset elsewhere (where ``re`` confirms
anyway), and one self-looping state instead of a chain of four for Hyperscan: the 150
fail2ban-style filters of ``bench/workloads.py`` compile ~15 % faster and scan ~6 % faster."""
_HIGH_TAIL = r"[\x80-\xff]*"
_REPLACEMENT = 0xFFFD
_FLAG_MASK = re.IGNORECASE | re.DOTALL | re.MULTILINE | re.ASCII | re.UNICODE

_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}
_AT_SOURCE = {
    "AT_BEGINNING": "^",
    "AT_BEGINNING_STRING": r"\A",
    "AT_END": "$",
    "AT_END_STRING": r"\Z",
    "AT_BOUNDARY": r"\b",
    "AT_NON_BOUNDARY": r"\B",
}


CharCache = dict[tuple[str, int], tuple[list[int], bool]]
"""(single-character regex, flags) → its ASCII code points and whether it may match non-ASCII."""


class Untranslatable(Exception):
    """The pattern has a construct with no Hyperscan equivalent, not even a superset."""


class Analysis(Frozen):
    """What a Python regex becomes for Hyperscan, and how exact it is."""

    hs: str | None
    """Hyperscan pattern (bytes syntax as text), or None if it could not be translated."""
    exact: bool
    """``hs`` matches exactly the ASCII lines ``re.search`` matches."""
    hs_loose: str | None
    """Superset variant for non-ASCII lines, when it differs from ``hs`` (Unicode word
    boundaries). None means ``hs`` itself is a superset on non-ASCII lines."""
    risky: bool
    pike_ok: bool
    reasons: tuple[str, ...]
    """Why the pattern is inexact / risky, for ``PatternReport.note``."""
    literals: tuple[str, ...] | None = None
    """Required literals (:func:`required_literals`): every match of the pattern, on any line,
    takes in one of them, as Hyperscan byte-pattern text; None when none is long enough."""
    skeleton: str | None = None
    """With ``literals``: the pattern's literal runs in order, gaps (``[^\\n]*``) between
    them (:func:`skeleton`), a superset of ``hs`` that Hyperscan compiles in a fraction of its
    time."""


class ParserUnavailable(Exception):
    """``re._parser`` cannot be used on this Python (``PARSER_PROBLEM``)."""


def parse(regex: str) -> Any:
    if PARSER_PROBLEM:
        raise ParserUnavailable(PARSER_PROBLEM)
    return _parser.parse(regex, 0)


def unanalysed(why: str) -> Analysis:
    """The analysis of a pattern whose parse tree cannot be read: no prefilter, no Pike VM, and
    assumed risky (so off the main thread the static caps of risky patterns apply)."""
    return Analysis(None, False, None, True, False, (f"no prefilter, no Pike VM: {why}",), None)


def char_source(op: Any, av: Any) -> str:
    """Python regex source for one single-character node (LITERAL, NOT_LITERAL, ANY, IN)."""
    name = str(op)
    if name == "LITERAL":
        return _lit(av)
    if name == "NOT_LITERAL":
        return "[^" + _lit(av) + "]"
    if name == "ANY":
        return "."
    if name == "IN":
        parts: list[str] = []
        for iop, iav in av:
            iname = str(iop)
            if iname == "NEGATE":
                parts.insert(0, "^")
            elif iname == "LITERAL":
                parts.append(_lit(iav))
            elif iname == "RANGE":
                parts.append(_lit(iav[0]) + "-" + _lit(iav[1]))
            elif iname == "CATEGORY":
                parts.append(_CATEGORIES[str(iav)])
            else:
                raise Untranslatable(f"class item {iname}")
        return "[" + "".join(parts) + "]"
    raise Untranslatable(name)


def at_source(av: Any) -> str:
    name = str(av)
    if name not in _AT_SOURCE:
        raise Untranslatable(name)
    return _AT_SOURCE[name]


def _lit(code: int) -> str:
    return f"\\U{code:08x}"


def effective_flags(flags: int, add: int, delete: int) -> int:
    """The flags inside a ``(?add-delete:...)`` group. A scoped ``(?a:...)`` replaces the
    pattern's Unicode flag (``re`` refuses to compile a test with both)."""
    if add & re.ASCII:
        flags &= ~re.UNICODE
    elif add & re.UNICODE:
        flags &= ~re.ASCII
    return (flags | add) & ~delete


def _byte_class(codes: list[int], extra: str = "") -> str:
    """``[...]`` of the given byte values as ranges, plus extra raw class text."""
    out: list[str] = []
    i = 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        out.append(f"\\x{codes[i]:02x}" if i == j else f"\\x{codes[i]:02x}-\\x{codes[j]:02x}")
        i = j + 1
    return "[" + "".join(out) + extra + "]"


class _Translator:
    def __init__(self, loose_boundaries: bool, cache: CharCache) -> None:
        self.loose = loose_boundaries
        self.exact = True
        self.has_unicode_boundary = False
        self.reasons: list[str] = []
        self._cache = cache

    def inexact(self, why: str) -> None:
        self.exact = False
        if why not in self.reasons:
            self.reasons.append(why)

    # -- single characters
    def char_set(self, op: Any, av: Any, flags: int) -> tuple[list[int], bool]:
        """(ASCII code points other than newline it matches, may it match non-ASCII)."""
        src = char_source(op, av)
        key = (src, flags)
        if key in self._cache:
            return self._cache[key]
        rx = re.compile(src, flags & _FLAG_MASK)
        ascii_codes = [c for c in range(128) if c != _NL and rx.match(chr(c))]
        name = str(op)
        if name == "LITERAL":
            may_high = av >= 128 or (
                bool(flags & re.IGNORECASE) and not flags & re.ASCII and chr(av).lower() in "iks"
            )
        elif name == "IN":
            may_high = _class_may_be_high(av, flags)
        else:
            may_high = True
        self._cache[key] = (ascii_codes, may_high)
        return ascii_codes, may_high

    def single(self, op: Any, av: Any, flags: int) -> str:
        if str(op) == "LITERAL" and av >= 128 and not flags & re.IGNORECASE:
            if av == _REPLACEMENT:  # also what errors="replace" makes of any invalid bytes
                return _HIGH_RUN
            data = chr(av).encode("utf-8", "surrogatepass")
            return "".join(f"\\x{b:02x}" for b in data)
        codes, may_high = self.char_set(op, av, flags)
        if not codes and not may_high:
            raise Untranslatable("a character class that matches nothing")
        if not may_high:
            return _byte_class(codes)
        if not codes:
            return _HIGH_RUN
        # one ASCII byte, or a run of high bytes: the same on ASCII lines as
        # (?:[ascii]|[\x80-\xff]+), a superset elsewhere, and cheaper for Hyperscan to build
        # (no alternation) inside counted repeats
        return _byte_class(codes, r"\x80-\xff") + _HIGH_TAIL

    def single_run(self, op: Any, av: Any, flags: int) -> str | None:
        """A class usable under an unbounded repeat: one byte class, or None if not simple."""
        if str(op) not in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            return None
        if str(op) == "LITERAL" and av >= 128 and not flags & re.IGNORECASE:
            return None
        codes, may_high = self.char_set(op, av, flags)
        if not codes:
            return _HIGH if may_high else None
        return _byte_class(codes, r"\x80-\xff" if may_high else "")

    # -- structure
    def seq(self, items: Any, flags: int) -> str:
        return "".join(self.node(op, av, flags) for op, av in items)

    def node(self, op: Any, av: Any, flags: int) -> str:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            return self.single(op, av, flags)
        if name == "AT":
            at = str(av)
            if at in ("AT_BEGINNING", "AT_BEGINNING_STRING", "AT_BEGINNING_LINE"):
                return "^"
            if at in ("AT_END", "AT_END_STRING", "AT_END_LINE"):
                return "$"
            if at in ("AT_BOUNDARY", "AT_NON_BOUNDARY"):
                if not flags & re.ASCII:
                    self.has_unicode_boundary = True
                    if self.loose:
                        return ""
                if at == "AT_NON_BOUNDARY" and sys.version_info < (3, 14):
                    # Python before 3.14: \B never matches an empty string; Hyperscan's does,
                    # on an empty line (a superset: re confirms)
                    self.inexact("\\B (Python's never matches an empty line)")
                return r"\b" if at == "AT_BOUNDARY" else r"\B"
            raise Untranslatable(at)
        if name == "SUBPATTERN":
            _gid, add, delete, sub = av
            return "(?:" + self.seq(sub, effective_flags(flags, add, delete)) + ")"
        if name == "BRANCH":
            return "(?:" + "|".join(self.seq(alt, flags) for alt in av[1]) + ")"
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, sub = av
            if name == "POSSESSIVE_REPEAT":
                self.inexact("possessive repeat (widened to a plain repeat)")
            if hi == MAXREPEAT and len(sub) == 1:
                run = self.single_run(sub[0][0], sub[0][1], flags)
                if run is not None:
                    return run + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}")
            if hi == 0:  # x{0} matches the empty string (and Hyperscan refuses {0,0})
                return ""
            body = "(?:" + self.seq(sub, flags) + ")"
            if hi == MAXREPEAT:
                return body + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}")
            return body + f"{{{lo},{hi}}}"
        if name == "ATOMIC_GROUP":
            self.inexact("atomic group (widened to a plain group)")
            return "(?:" + self.seq(av, flags) + ")"
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            self.inexact("backreference (widened)")
            if name == "GROUPREF_EXISTS":
                _g, yes, no = av
                return "(?:" + self.seq(yes, flags) + "|" + self.seq(no or [], flags) + ")"
            return r"[^\n]*"
        if name in ("ASSERT", "ASSERT_NOT"):
            self.inexact("lookaround (dropped for the prefilter)")
            return ""
        raise Untranslatable(name)


def _class_may_be_high(items: Any, flags: int) -> bool:
    unicode = not flags & re.ASCII
    fold = bool(flags & re.IGNORECASE) and unicode
    for iop, iav in items:
        iname = str(iop)
        if iname == "NEGATE":
            return True
        if iname == "LITERAL" and (iav >= 128 or (fold and chr(iav).lower() in "iks")):
            return True
        if iname == "RANGE":
            lo, hi = iav
            if hi >= 128:
                return True
            if fold and any(lo <= ord(ch) <= hi for ch in "iksIKS"):
                return True
        if iname == "CATEGORY" and (unicode or str(iav).startswith("CATEGORY_NOT")):
            return True
    return False


# ---------------------------------------------------------------- required literals

MIN_LITERAL = 5
"""Shortest required literal worth a prefilter, in characters. A shorter one (``" "``,
``"id="``) is on most lines of a log: every line would be a candidate and ``re`` would run on
it. A pattern whose required literals include a shorter one keeps its full translation."""
MAX_LITERALS = 16
"""Most required literals one pattern may have (the cross product of alternations grows
fast): past it, the analysis settles for a shorter sub-sequence, or none."""
_MAX_UNIT_CODES = 2
"""Most ASCII characters one position of a literal may be (a letter in either case)."""

_Unit = str
"""One character position of a literal, as Hyperscan byte-pattern text."""
_Strings = frozenset[tuple[_Unit, ...]]
_EMPTY: _Strings = frozenset({()})


def _score(strings: _Strings | None) -> tuple[int, int]:
    """How selective requiring one of ``strings`` is: the shortest first, then fewer."""
    if not strings:
        return (-1, 0)
    return (min(len(s) for s in strings), -len(strings))


def _better(a: _Strings | None, b: _Strings | None) -> _Strings | None:
    return b if _score(b) > _score(a) else a


class _Literals:
    """The walk of :func:`required_literals`. ``node``/``seq`` return (exact, required):

    * exact — every string the node can take in is one of these (zero-width parts take in
      nothing), or None when that set is unknown or too large;
    * required — every match of the node takes in a string containing one of these, or None.

    Lookarounds take in nothing here and contribute nothing (a lookahead of an event's text may
    look past the line the match is on)."""

    def __init__(self, translator: _Translator) -> None:
        self.t = translator

    def unit(self, op: Any, av: Any, flags: int) -> _Unit | None:
        name = str(op)
        if name == "LITERAL" and av >= 128 and not flags & re.IGNORECASE:
            if av == _REPLACEMENT:  # on raw bytes, also 1-3 invalid bytes: not one string
                return None
            data = chr(av).encode("utf-8", "surrogatepass")
            return "".join(f"\\x{b:02x}" for b in data)
        try:
            codes, may_high = self.t.char_set(op, av, flags)
        except Untranslatable:
            return None
        if may_high or not codes or len(codes) > _MAX_UNIT_CODES:
            return None
        if len(codes) == 1:
            return f"\\x{codes[0]:02x}"
        return _byte_class(codes)

    def seq(self, items: Any, flags: int) -> tuple[_Strings | None, _Strings | None]:
        run: _Strings = _EMPTY
        whole = True  # ``run`` is the exact set of the whole sequence so far
        best: _Strings | None = None
        for op, av in items:
            exact, required = self.node(op, av, flags)
            best = _better(best, required)
            if exact is None:
                best = _better(best, run)
                run, whole = _EMPTY, False
                continue
            if len(run) * len(exact) > MAX_LITERALS:
                best = _better(best, run)
                run, whole = exact, False
                continue
            run = frozenset(x + y for x in run for y in exact)
        best = _better(best, run)
        return (run if whole else None), best

    def node(self, op: Any, av: Any, flags: int) -> tuple[_Strings | None, _Strings | None]:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            unit = self.unit(op, av, flags)
            if unit is None:
                return None, None
            one = frozenset({(unit,)})
            return one, one
        if name in ("AT", "ASSERT", "ASSERT_NOT"):
            return _EMPTY, None
        if name == "SUBPATTERN":
            _gid, add, delete, sub = av
            return self.seq(sub, effective_flags(flags, add, delete))
        if name == "ATOMIC_GROUP":
            return self.seq(av, flags)
        if name == "BRANCH":
            alts = [self.seq(alt, flags) for alt in av[1]]
            exact: _Strings | None = None
            if all(e is not None for e, _ in alts):
                exact = frozenset().union(*(e for e, _ in alts if e is not None))
                if len(exact) > MAX_LITERALS:
                    exact = None
            required: _Strings | None = None
            if all(r for _, r in alts):
                required = frozenset().union(*(r for _, r in alts if r is not None))
                if len(required) > MAX_LITERALS or () in required:
                    required = None
            return exact, _better(required, exact)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, sub = av
            if hi == 0:
                return _EMPTY, None
            body_exact, body_required = self.seq(sub, flags)
            exact = None
            if body_exact is not None and hi == 1:
                exact = body_exact if lo == 1 else body_exact | _EMPTY
            elif body_exact is not None and lo == hi and len(body_exact) ** lo <= MAX_LITERALS:
                exact = _EMPTY
                for _ in range(lo):
                    exact = frozenset(x + y for x in exact for y in body_exact)
            return exact, (body_required if lo >= 1 else None)
        return None, None  # backreferences, conditionals, anything unknown: no literal known

    # -- the skeleton: the pattern's literals in order, anything else a gap
    def skeleton(self, items: Any, flags: int) -> list[_Part]:
        """Parts of a superset of ``items`` on one line: alternations of literal strings, byte
        classes, and ``_GAP`` (``[^\\n]*``) for whatever the walk cannot pin down."""
        parts: list[_Part] = []
        run: _Strings = _EMPTY

        def flush() -> None:
            if run == _EMPTY:
                return
            if () in run:  # an optional run: its text may be absent
                parts.append(_GAP_PART)
            else:
                parts.append((_alternation(run), _score(run)[0]))

        for op, av in items:
            exact, _required = self.node(op, av, flags)
            if exact is not None and len(run) * len(exact) <= MAX_LITERALS:
                run = frozenset(x + y for x in run for y in exact)
                continue
            flush()
            run = _EMPTY
            if exact is not None:
                run = exact
                continue
            parts.extend(self.skeleton_node(op, av, flags))
        flush()
        return parts

    def skeleton_node(self, op: Any, av: Any, flags: int) -> list[_Part]:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            # a class (\\d, [^\\]]...): one ASCII byte of it, or a run of high bytes
            try:
                codes, may_high = self.t.char_set(op, av, flags)
            except Untranslatable:
                return [_GAP_PART]
            if not codes:
                return [_GAP_PART]
            if may_high:
                return [(_byte_class(codes, r"\x80-\xff") + _HIGH_ANY, 0)]
            return [(_byte_class(codes), 0)]
        if name == "SUBPATTERN":
            _gid, add, delete, sub = av
            return self.skeleton(sub, effective_flags(flags, add, delete))
        if name == "ATOMIC_GROUP":
            return self.skeleton(av, flags)
        if name == "BRANCH":
            alts = [self.skeleton(alt, flags) for alt in av[1]]
            # an alternative without a literal run (a host: digits, hex or a name): a gap
            if not all(any(w >= _MIN_SKELETON_RUN for _, w in alt) for alt in alts):
                return [_GAP_PART]
            texts = [_render(alt, strip=False) or "" for alt in alts]
            return [("(?:" + "|".join(texts) + ")", 0)]
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            lo, hi, sub = av
            if lo == hi <= 4:  # x{n}: the body n times
                return [part for _ in range(lo) for part in self.skeleton(sub, flags)]
            if lo >= 1:  # the body at least once: its skeleton, then anything
                return [*self.skeleton(sub, flags), _GAP_PART]
        return [_GAP_PART]


_Part = tuple[str, int]
"""A piece of a skeleton: its byte-pattern text, and its shortest literal (0: not a literal)."""
_GAP = r"[^\n]*"
_GAP_PART: _Part = (_GAP, 0)
_HIGH_ANY = r"[\x80-\xff]*"
_MIN_SKELETON_RUN = 3
"""An alternation in a skeleton is kept only if each branch has a literal run this long."""


def _alternation(strings: _Strings) -> str:
    texts = sorted("".join(s) for s in strings)
    return texts[0] if len(texts) == 1 else "(?:" + "|".join(texts) + ")"


def _render(parts: list[_Part], strip: bool) -> str | None:
    """The parts as one expression, gaps merged, and with ``strip`` dropped at both ends (a
    search finds the text anywhere on the line); None if nothing but gaps is left."""
    out: list[str] = []
    for part, _w in parts:
        if part == _GAP and out and out[-1] == _GAP:
            continue
        out.append(part)
    if all(part == _GAP for part in out):
        return None
    if strip:
        while out[0] == _GAP:
            out.pop(0)
        while out[-1] == _GAP:
            out.pop()
    return "".join(out)


def required_literals(
    tree: Any, flags: int, translator: _Translator | None = None
) -> tuple[str, ...] | None:
    """Literals one of which every match of the parsed pattern takes in, each at least
    ``MIN_LITERAL`` characters (as Hyperscan byte-pattern text, sorted), or None.

    A literal's character is an ASCII character (or its two cases) that cannot stand for a
    non-ASCII one (so not ``i``, ``k``, ``s`` under Unicode ``(?i)``: ``ı``, ``K``, ``ſ``), or
    the UTF-8 bytes of a non-ASCII one (not U+FFFD, which ``errors="replace"`` makes of invalid
    bytes): the same bytes are on the line whenever the decoded line holds it."""
    walker = _Literals(translator or _Translator(loose_boundaries=False, cache={}))
    _exact, required = walker.seq(list(tree), flags)
    if not required or _score(required)[0] < MIN_LITERAL:
        return None
    return tuple(sorted("".join(s) for s in required))


def skeleton(tree: Any, flags: int, translator: _Translator | None = None) -> str | None:
    """A superset of the parsed pattern on one line, as a Hyperscan byte pattern: its literal
    runs (``_Literals``: the same characters as ``required_literals``) in order, with
    ``[^\\n]*`` for every part between them (classes, repeats, captures of hosts…), anchors
    and lookarounds dropped. None if it has no literal at all."""
    walker = _Literals(translator or _Translator(loose_boundaries=False, cache={}))
    return _render(walker.skeleton(list(tree), flags), strip=True)


# ---------------------------------------------------------------- risk analysis


def _can_vary(items: Any) -> bool:
    """Can this sequence match strings of different lengths or via different branches?"""
    for op, av in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if av[0] != av[1]:
                return True
            if _can_vary(av[2]):
                return True
        elif name == "BRANCH":
            return True
        elif name == "SUBPATTERN":
            if _can_vary(av[3]):
                return True
        elif name == "ATOMIC_GROUP":
            if _can_vary(av):
                return True
        elif name in ("GROUPREF", "GROUPREF_EXISTS"):
            return True
    return False


def _single_chars(items: Any) -> list[tuple[Any, Any]]:
    out: list[tuple[Any, Any]] = []
    for op, av in items:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            out.append((op, av))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            out.extend(_single_chars(av[2]))
        elif name == "SUBPATTERN":
            out.extend(_single_chars(av[3]))
        elif name == "BRANCH":
            for alt in av[1]:
                out.extend(_single_chars(alt))
        elif name == "ATOMIC_GROUP":
            out.extend(_single_chars(av))
        else:
            out.append((op, av))  # anything else: assume it may match the delimiter
    return out


def _iterations_delimited(body: Any, flags: int) -> bool:
    """Does each iteration start with a literal character nothing else in the body can match
    (``(?:\\.\\d+)*``, ``(?:/[^/]+)*``)? Then an iteration can only start at that character and
    the repeat cannot split the text in many ways."""
    items = list(body)
    while items and str(items[0][0]) == "SUBPATTERN":
        items = list(items[0][1][3]) + items[1:]
    if not items or str(items[0][0]) != "LITERAL":
        return False
    delimiter = chr(items[0][1])
    for op, av in _single_chars(items[1:]):
        try:
            src = char_source(op, av)
        except Untranslatable:
            return False
        if re.compile(src, flags & _FLAG_MASK).match(delimiter):
            return False
    return True


def _risky(items: Any, flags: int) -> list[str]:
    reasons: list[str] = []
    for op, av in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            _lo, hi, sub = av
            if hi > 1 and _can_vary(sub) and not _iterations_delimited(sub, flags):
                reasons.append("nested repetition (can backtrack exponentially)")
            reasons.extend(_risky(sub, flags))
        elif name == "SUBPATTERN":
            reasons.extend(_risky(av[3], effective_flags(flags, av[1], av[2])))
        elif name == "BRANCH":
            for alt in av[1]:
                reasons.extend(_risky(alt, flags))
        elif name == "ATOMIC_GROUP":
            reasons.extend(_risky(av, flags))
        elif name in ("ASSERT", "ASSERT_NOT"):
            reasons.extend(_risky(av[1], flags))
        elif name == "GROUPREF_EXISTS":
            reasons.extend(_risky(av[1], flags))
            reasons.extend(_risky(av[2] or [], flags))
    return reasons


_PIKE_UNSUPPORTED = {
    "GROUPREF": "backreference",
    "GROUPREF_EXISTS": "conditional group",
    "ASSERT": "lookaround",
    "ASSERT_NOT": "lookaround",
    "ATOMIC_GROUP": "atomic group",
    "POSSESSIVE_REPEAT": "possessive repeat",
}


def _pike_blockers(items: Any) -> list[str]:
    out: list[str] = []
    for op, av in items:
        name = str(op)
        if name in _PIKE_UNSUPPORTED:
            out.append(_PIKE_UNSUPPORTED[name])
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            out.extend(_pike_blockers(av[2]))
        elif name == "SUBPATTERN":
            out.extend(_pike_blockers(av[3]))
        elif name == "BRANCH":
            for alt in av[1]:
                out.extend(_pike_blockers(alt))
        elif name == "ATOMIC_GROUP":
            out.extend(_pike_blockers(av))
        elif name in ("ASSERT", "ASSERT_NOT"):
            out.extend(_pike_blockers(av[1]))
        elif name == "GROUPREF_EXISTS":
            out.extend(_pike_blockers(av[1]))
            out.extend(_pike_blockers(av[2] or []))
    return out


def analyse(regex: str, cache: CharCache | None = None) -> Analysis:
    """Translate and classify one pattern (raises ``re.error`` if Python rejects it). ``cache``
    may be shared between the patterns of one matcher."""
    cache = {} if cache is None else cache
    tree = parse(regex)
    flags = tree.state.flags
    risky_reasons = list(dict.fromkeys(_risky(list(tree), flags)))
    blockers = list(dict.fromkeys(_pike_blockers(list(tree))))
    strict = _Translator(loose_boundaries=False, cache=cache)
    literals = required_literals(tree, flags, strict)
    skel = skeleton(tree, flags, strict) if literals is not None else None
    try:
        hs: str | None = strict.seq(list(tree), flags)
    except Untranslatable as exc:
        return Analysis(
            None,
            False,
            None,
            bool(risky_reasons),
            not blockers,
            (f"no prefilter: {exc}", *risky_reasons),
            literals,
            skel,
        )
    hs_loose = None
    if strict.has_unicode_boundary:
        hs_loose = _Translator(loose_boundaries=True, cache=cache).seq(list(tree), flags)
    reasons = tuple(strict.reasons) + tuple(risky_reasons)
    return Analysis(
        hs, strict.exact, hs_loose, bool(risky_reasons), not blockers, reasons, literals, skel
    )


_UNIT = re.compile(r"\[\\x([0-9a-f]{2})\\x[0-9a-f]{2}\]|\\x([0-9a-f]{2})")


def literal_text(literal: str) -> str:
    """A required literal (byte-pattern text) as readable text: a position that is either case
    of a letter shown as its first (upper) case."""
    data = bytes(int(m.group(1) or m.group(2), 16) for m in _UNIT.finditer(literal))
    return data.decode("utf-8", "replace")
