"""Required literals and skeletons (``translate.required_literals``, ``translate.skeleton``):
Hyperscan looks for the skeleton instead of the whole translation for patterns ``re`` confirms on
every candidate line anyway. That is only right if every line a pattern matches holds one of the
literals and matches the skeleton, on decoded text and on raw bytes alike. The agent starts on
the skeletons when the full databases are not cached (``Matcher.warm(quick=True)``) and takes the
full ones once ``Matcher.upgrade`` built them: the same answers before, after and in between."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from detector.matching import Matcher, PatternSpec, engine, translate
from detector.matching.translate import MIN_LITERAL, analyse, literal_text, required_literals
from tests.test_matching import LINES, SRC, _mutate, naive, regexes, specs_of

# -------------------------------------------------------------- a grammar of patterns and lines

_WORDS = ["Failed", "passwd", "user ", " from ", "Kelvin", "disk is", "café", "session", "closed",
          "é", "ſ", "K", "İ", "ı", "\ufffd", "sk", "ab", "x"]  # fmt: skip
_CLASSES: list[tuple[str, list[str]]] = [
    ("[aA]", ["a", "A"]),
    ("[sS]", ["s", "S", "ſ"]),
    ("[kK]", ["k", "K", "\u212a"]),
    ("[éE]", ["é", "E", "É"]),
    ("[:=]", [":", "="]),
    (r"\d", ["1", "١"]),
    (".", ["q", "é", "\ufffd"]),
    (r"\w", ["w", "é", "_"]),
    ("[^x]", ["y", "ſ"]),
    ("\ufffd", ["\ufffd"]),
    (r"\s", [" ", "\u00a0"]),
]


def _variants(text: str) -> list[str]:
    """The text and what a case-insensitive pattern also matches (ſ, K, ı fold to s, k, i)."""
    folded = text.replace("s", "ſ").replace("k", "\u212a").replace("i", "ı").replace("S", "ſ")
    return [text, text.upper(), text.swapcase(), folded, folded.upper()]


@st.composite
def nodes(draw: st.DrawFn, depth: int, names: list[int]) -> tuple[str, list[str]]:
    """(regex, strings its part of a match may take in: lookarounds take in nothing)."""
    kinds = ["word"] * 4 + ["class"] * 2 + ["zero"] + (["group"] * 6 if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "word":
        word = draw(st.sampled_from(_WORDS))
        return re.escape(word), [word, word, word, *_variants(word)]
    if kind == "class":
        return draw(st.sampled_from(_CLASSES))
    if kind == "zero":
        return draw(
            st.sampled_from([r"\b", r"\B", "^", "$", "(?=a)", "(?!x)", "(?<=b)", "(?<!é)"])
        ), [""]
    inner, samples = draw(seqs(depth + 1, names))
    other, other_samples = draw(seqs(depth + 1, names))
    shape = draw(st.integers(0, 11))
    if shape == 0:
        return f"(?:{inner})?", [*samples, ""]
    if shape == 1:
        return f"(?:{inner}|{other})", samples + other_samples
    if shape == 2:
        return f"(?:{inner}){{2}}", [a + b for a in samples[:3] for b in samples[:3]]
    if shape == 3:
        return f"(?:{inner}){{1,3}}", [*samples, *(a * 3 for a in samples)]
    if shape == 4:
        return f"(?:{inner})+", [*samples, *(a + a for a in samples)]
    if shape == 5:
        return f"(?:{inner})*", ["", *samples]
    if shape == 6:
        names.append(len(names))
        return f"(?P<g{len(names)}>{inner})", samples
    if shape == 7:
        names.append(len(names))
        g = f"b{len(names)}"
        return f"(?P<{g}>{inner})(?P={g})", [a + a for a in samples]
    if shape == 8:
        return f"(?>{inner})", samples
    if shape == 9:
        return f"(?:{inner})++", samples
    if shape == 10:
        return f"(?{draw(st.sampled_from(['i', '-i', 'a']))}:{inner})", samples
    return f"(?={inner}){other}", other_samples


@st.composite
def seqs(draw: st.DrawFn, depth: int, names: list[int]) -> tuple[str, list[str]]:
    parts = draw(st.lists(nodes(depth, names), min_size=1, max_size=4))
    regex = "".join(r for r, _ in parts)
    samples = ["".join(draw(st.sampled_from(s)) for _, s in parts) for _ in range(4)]
    return regex, samples


@st.composite
def patterns_and_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    flags = draw(st.sampled_from(["", "", "(?i)", "(?a)", "(?ai)"]))
    regex, samples = draw(seqs(0, []))
    if flags == "(?ai)" or flags == "(?a)":  # a scoped (?a:) inside would be refused with (?u)
        regex = regex.replace("(?a:", "(?:")
    pattern = flags + regex
    around = st.sampled_from(["", "", "", " ", "x", "é", "Failed ", "sshd[1]: ", "\ufffd"])
    lines = [draw(around) + s + draw(around) for s in samples]
    lines += [draw(st.sampled_from(_variants(line))) for line in lines]
    return pattern, lines


def _holds_literal(literals: tuple[str, ...], data: bytes) -> bool:
    # the literals are Hyperscan byte-pattern text: \xNN and [\xNN\xNN], Python syntax too
    return any(re.search(lit.encode("ascii"), data) for lit in literals)


_INVALID = [b"\xff", b"\xc3", b"\xe2\x82", b"\x80", b"\xed\xa0\x80"]


def _check_superset(pattern: str, lines: list[str], splice: list[int]) -> int:
    """Every line (decoded, or raw with invalid bytes spliced in) the pattern matches holds one
    of its required literals; returns how many matched lines were checked."""
    try:
        rx = re.compile(pattern)
    except re.error:
        return 0
    analysis = analyse(pattern)
    literals = analysis.literals
    if literals is None:
        return 0
    assert analysis.skeleton is not None
    skeleton = re.compile(analysis.skeleton.encode("ascii"))  # Python syntax too
    assert min(len(literal_text(x)) for x in literals) >= MIN_LITERAL, literals
    checked = 0
    for k, line in enumerate(lines):
        data = line.encode("utf-8", "surrogatepass")
        if rx.search(line):
            checked += 1
            assert _holds_literal(literals, data), (pattern, line, literals)
            assert skeleton.search(data), (pattern, line, analysis.skeleton)
        cut = splice[k % len(splice)] % (len(data) + 1) if splice else 0
        raw = data[:cut] + _INVALID[k % len(_INVALID)] + data[cut:]
        if rx.search(raw.decode("utf-8", "replace")):
            checked += 1
            assert _holds_literal(literals, raw), (pattern, raw, literals)
            assert skeleton.search(raw), (pattern, raw, analysis.skeleton)
    return checked


@settings(max_examples=600, deadline=None, database=None)
@given(case=patterns_and_lines(), splice=st.lists(st.integers(0, 200), max_size=4))
def test_every_line_a_pattern_matches_holds_one_of_its_required_literals(
    case: tuple[str, list[str]], splice: list[int]
) -> None:
    pattern, lines = case
    if analyse(pattern).literals is None:
        event("no literals")
    else:
        checked = _check_superset(pattern, lines, splice)
        event("literals, matched lines checked" if checked else "literals, no line matched")


@settings(max_examples=300, deadline=None, database=None)
@given(
    pattern=regexes(),
    picks=st.lists(st.tuples(st.integers(0, len(LINES) - 1), st.integers(0, 5)), max_size=40),
    splice=st.lists(st.integers(0, 200), max_size=4),
)
def test_required_literals_of_the_translation_tests_patterns_on_loghub_lines(
    pattern: str, picks: list[tuple[int, int]], splice: list[int]
) -> None:
    lines = [_mutate(LINES[i], how) for i, how in picks]
    # and lines built to match: the pattern's own words in a loghub line
    words = [w for w in re.findall(r"[A-Za-z0-9_]{3,}", pattern)]
    lines += [f"{LINES[i]} {' '.join(words)}" for i, _ in picks[:5]]
    checked = _check_superset(pattern, lines, splice)
    event("matched lines checked" if checked else "nothing to check")


@settings(max_examples=150, deadline=None, database=None)
@given(cases=st.lists(patterns_and_lines(), min_size=1, max_size=4))
def test_the_matcher_with_literal_prefilters_equals_naive_re(
    cases: list[tuple[str, list[str]]],
) -> None:
    patterns = [p for p, _ in cases if _compiles(p)]
    lines = [line for _, ls in cases for line in ls]
    if not patterns:
        return
    specs = specs_of(*patterns)
    matcher = Matcher(specs, budget_s=10.0)
    matcher.warm(["s"], quick=True)
    used = sum(engine._literal_prefilter(c) for c in matcher._compiled)
    event(f"{used} of {len(patterns)} patterns on literals")
    skeleton = engine._has_skeleton(matcher._compiled)
    assert matcher.stage == {"s": "skeleton" if skeleton else "full"}
    want = naive(specs, "s", lines)
    block = "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
    blocks = all("\n" not in line for line in lines) and block.decode(
        "utf-8", "replace"
    ) == "".join(line + "\n" for line in lines)
    for stage in ("skeleton", "full"):
        assert matcher.match("s", lines) == want, stage
        if blocks:
            assert matcher.match_block("s", block) == (len(lines), want), stage
        assert matcher.upgrade() == (["s"] if stage == "skeleton" and skeleton else [])
    assert matcher.stage == {"s": "full"}
    assert matcher.take_abandoned() == {}


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


# -------------------------------------------------------------- what is (and is not) a literal


def _lits(pattern: str) -> list[str] | None:
    literals = analyse(pattern).literals
    return None if literals is None else [literal_text(x) for x in literals]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        # alternations multiply out, optional parts give both strings
        (r"(?:Failed|Invalid) password for (?:invalid user )?(?P<u>\S+)",
         ["Failed password for ", "Failed password for invalid user ",
          "Invalid password for ", "Invalid password for invalid user "]),
        # zero-width parts take in nothing: the literal runs across them, lookaround text unused
        (r"(?<![\w.])error\b: (?=disk)(?P<d>\w+)", ["error: "]),
        # the best sub-sequence: the longest shortest member
        (r"(?P<h>\S+) port \d+ closed by remote host", [" closed by remote host"]),
        # a group that must occur (x{1,3}) gives its own literal; one that may not, none
        (r"\d+(?:timeout: )+\d+", ["timeout: "]),
        (r"(?P<a>\w+)(?:timeout: )*", None),
        # under Unicode (?i), s k i may be ſ K ı: they end a literal
        (r"(?i)(?P<a>\w)abcdefsxyzw", ["ABCDEF"]),
        (r"(?ai)(?P<a>\w)abcdefsxyzw", ["ABCDEFSXYZW"]),
        # a non-ASCII character is its UTF-8 bytes, U+FFFD (invalid bytes too) ends a literal
        ("(?P<a>\\w)café crème", ["café crème"]),
        ("(?P<a>\\w)abcde\ufffdxy", ["abcde"]),
        # shorter than MIN_LITERAL on one branch: no literal prefilter
        (r"(?P<a>\w)(?:error|fail)", None),
        (r"(?P<a>\w+)(?:id=|uid=)", None),
        # backreferences and conditionals are unknown text, the rest still counts
        (r"(?P<q>\W)quoted(?P=q) value", ["quoted"]),
    ],
)  # fmt: skip
def test_required_literals_of_known_shapes(pattern: str, expected: list[str] | None) -> None:
    assert _lits(pattern) == expected


def test_the_literal_sets_stay_small() -> None:
    # 5 x 5 x 5 alternatives: the product is refused past MAX_LITERALS, a factor is kept
    pattern = "(?P<a>x)" + "(?:aaaaa|bbbbb|ccccc|ddddd|eeeee)" * 3
    literals = analyse(pattern).literals
    assert literals is not None and len(literals) <= translate.MAX_LITERALS
    assert required_literals(translate.parse("x?"), 0) is None


def test_only_patterns_re_confirms_anyway_use_their_literals() -> None:
    exact_plain = r"Out of memory: Killed process \d+"  # Hyperscan's verdict is the answer
    named = r"Out of memory: Killed process (?P<pid>\d+)"  # re extracts the group anyway
    lookaround = r"(?<!not )Killed process \d+"  # inexact: re confirms
    ignore_named = r"Killed process (?P<pid>\d+)"  # an ignore pattern's groups are not needed
    specs = [
        *specs_of(exact_plain, named, lookaround),
        PatternSpec("r1", "ignore", ignore_named, SRC),
    ]
    matcher = Matcher(specs)
    matcher.warm(["s"], quick=True)
    assert matcher.stage == {"s": "skeleton"}
    assert [engine._literal_prefilter(c) for c in matcher._compiled] == [
        False,
        True,
        True,
        False,
    ]
    # `detector check`: the full database's prefilter, and the skeleton a cold start begins with
    reports = matcher.report()
    assert reports[0].engine == "hyperscan (exact on ASCII lines)"
    assert "skeleton" not in reports[0].note
    assert reports[1].engine == "hyperscan (exact on ASCII lines) + re"
    assert reports[2].engine == "hyperscan prefilter + re (no linear fallback)"
    for r in reports[1:3]:
        assert "a hyperscan literal skeleton (1 required literals) finds" in r.note
        assert "until the full database is compiled in the background" in r.note
    assert "holding one of 'Out of memory: Killed process '" in (reports[1].note)
    lines = ["Out of memory: Killed process 12", "not Killed process 3", "Killed process 4", "x"]
    want = naive(specs, "s", lines)
    assert want and matcher.match("s", lines) == want
    skeleton_db = matcher._plans["s"].db
    assert matcher.upgrade() == ["s"]
    assert matcher.stage == {"s": "skeleton"}  # taken by the next match call, not before
    assert matcher.match("s", lines) == want
    assert matcher.stage == {"s": "full"} and matcher._plans["s"].db is not skeleton_db


def test_a_quick_start_takes_a_cached_full_database_else_the_skeleton_not_cached(
    tmp_path: Path,
) -> None:
    """``warm(quick=True)`` (the agent's start): the full database when the cache holds it
    (``detector check`` or an earlier run put it there), else the skeleton (compiled, never
    cached: the cache's entries are for full databases), and ``upgrade`` stores the full one;
    ``warm()`` alone (``detector test``, ``detector check``) is always the full one."""
    import importlib

    from detector.matching.dbcache import SUFFIX, DbCache

    hs = importlib.import_module("hyperscan")
    specs = specs_of(r"Out of memory: Killed process (?P<pid>\d+)", r"error \d+")
    lines = ["Out of memory: Killed process 12", "error 3", "Out of memory: Killed process x"]
    want = naive(specs, "s", lines)

    def files(directory: Path) -> set[str]:
        return {p.name for p in directory.glob("*" + SUFFIX)}

    def started(directory: Path, quick: bool = True) -> Matcher:
        matcher = Matcher(specs, db_cache=DbCache(directory, hs))
        matcher.warm(["s"], quick=quick)
        assert matcher.match("s", lines) == want
        return matcher

    cold = tmp_path / "cold"
    first = started(cold)
    assert (first.stage, first.cached) == ({"s": "skeleton"}, {"s": False})
    analyses = files(cold)
    assert len(analyses) == 1  # no database: the skeleton's is not stored
    again = started(cold)  # stopped before the upgrade: the skeleton compiled again
    assert (again.stage, again.cached) == ({"s": "skeleton"}, {"s": False})
    assert first.upgrade() == ["s"] and first.match("s", lines) == want
    assert (first.stage, first.cached) == ({"s": "full"}, {"s": False})
    assert len(files(cold) - analyses) == 1  # the full database
    # cached: the full one at once
    warm = started(cold)
    assert (warm.stage, warm.cached) == ({"s": "full"}, {"s": True})
    assert warm.upgrade() == []
    # detector check / test: the full database, never the skeleton
    checked = tmp_path / "checked"
    full = started(checked, quick=False)
    assert (full.stage, full.cached) == ({"s": "full"}, {"s": False})
    after_check = started(checked)
    assert (after_check.stage, after_check.cached) == ({"s": "full"}, {"s": True})
    assert len(files(checked)) == 2  # the analyses and the full database: no skeleton
