"""Matching: the fast matcher gives exactly what per-line Python ``re.search`` gives, and no
user regex can make it hang."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

from detector.matching import ENGINE, Hit, Matcher, PatternSpec, engine
from detector.matching.pike import compile_pike
from detector.matching.translate import analyse
from tests.helpers import loghub_log

SRC = frozenset({"s"})


def naive(specs: list[PatternSpec], source: str, texts: list[str]) -> list[Hit]:
    """The specification: every pattern on every line with re.search."""
    active = [(s, re.compile(s.regex)) for s in specs if source in s.sources]
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


def specs_of(*patterns: str) -> list[PatternSpec]:
    return [PatternSpec(f"r{i}", "match", p, SRC) for i, p in enumerate(patterns)]


def loghub_lines() -> list[str]:
    lines: list[str] = []
    for path in loghub_log():
        lines.extend(path.read_text(encoding="utf-8", errors="replace").splitlines()[:150])
    return lines


def test_engine_is_hyperscan_when_the_wheel_is_installed() -> None:
    assert ENGINE.startswith("hyperscan")


TRICKY = [
    r"Failed password for .* from (?P<ip>\S+)",
    r"(?i)error",
    r"\bfoo\b",
    r"^(\w+\s?)+$",
    r"(?P<a>x)(?=y)",
    r"(?<!a)b(?P<rest>c+)",
    r"(\w)\1",
    r"[^a-z]{3}",
    r"ſ",
    r"(?i)k",
    r"(?i)[k-s]+t",
    r"^$",
    r"\d{2,3}",
    r"(?P<w>é+)",
    r"\w+ \W \s\S",
    r"(?P<x>(a+)+b)",
    r"(?s:.)x$",
    r"\Aab\Z",
    r"(?a)\w+é",
    r"(?P<n>\d+)?z",
    r"a++b",
    r"(?>a+)b",
    r"(?P<a>a)?(?(a)b|c)",
    r"[\d.]+:",
    r"x{0}y",
]
TRICKY_LINES = [
    "Failed password for root from 1.2.3.4 port 22",
    "an Error here",
    "ERROR ok",
    "foo bar",
    "foó",
    "éfoo",
    "xy",
    "aa bb",
    "",
    "ABC",
    "Kelvin K",
    "ſ and S",
    "12345",
    "éé foo",
    "a" * 12 + "c ab",
    "hello world",
    "ıT İST",
    "Ⅻ ١٢٣ bla",
    "ab",
    "bcc abcc",
    "word - xy",
    "word \u00a0 x\u2003y",
    "a\tb\x1cc",
    "z",
    "9z",
    "aab",
    "ac",
    "1.2.3:",
    "\ufffd\x00y",
    "éx",
]


def test_tricky_patterns_match_exactly_like_re_search() -> None:
    specs = specs_of(*TRICKY)
    assert Matcher(specs).match("s", TRICKY_LINES) == naive(specs, "s", TRICKY_LINES)


def test_match_block_on_raw_bytes_equals_match_on_decoded_lines() -> None:
    specs = specs_of(*TRICKY)
    raw = b"\n".join(t.encode() for t in TRICKY_LINES) + b"\n\xff\xfeab\nfo\xc3o\n"
    lines = raw.decode("utf-8", "replace").split("\n")[:-1]
    count, hits = Matcher(specs).match_block("s", raw)
    assert count == len(lines)
    assert hits == naive(specs, "s", lines)


def test_lines_containing_newlines_are_matched_as_whole_lines() -> None:
    specs = specs_of(r"^b", r"a$", r"a\nb", r"(?m)^b")
    texts = ["x", "a\nb", "b"]
    assert Matcher(specs).match("s", texts) == naive(specs, "s", texts)


def test_empty_lines_match_empty_patterns_wherever_they_are() -> None:
    specs = specs_of(r"^$", r"x*", r"(?P<q>\w*)$")
    texts = ["", "ab", ""]
    assert Matcher(specs).match("s", texts) == naive(specs, "s", texts)
    assert Matcher(specs).match_block("s", b"\nab\n\n") == (3, naive(specs, "s", texts))


def test_ignore_pattern_suppresses_only_its_own_rule() -> None:
    specs = [
        PatternSpec("errors", "match", r"ERROR (?P<what>\w+)", SRC),
        PatternSpec("errors", "ignore", r"ERROR harmless", SRC),
        PatternSpec("other", "match", r"ERROR", SRC),
    ]
    hits = Matcher(specs).match("s", ["ERROR harmless", "ERROR disk"])
    assert hits == [
        Hit(0, "other", "match", {}),
        Hit(1, "errors", "match", {"what": "disk"}),
        Hit(1, "other", "match", {}),
    ]


def test_rules_only_see_lines_of_their_sources() -> None:
    specs = [
        PatternSpec("a", "match", "x", frozenset({"one"})),
        PatternSpec("b", "match", "x", frozenset({"two"})),
    ]
    m = Matcher(specs)
    assert m.match("one", ["x"]) == [Hit(0, "a", "match", {})]
    assert m.match("two", ["x"]) == [Hit(0, "b", "match", {})]
    assert m.match("three", ["x"]) == []


def test_case_insensitive_ascii_letters_match_their_unicode_foldings() -> None:
    # Python folds k→K (Kelvin), s→ſ, i→İ/ı: the prefilter must let these lines through.
    specs = specs_of(r"(?i)k", r"(?i)s", r"(?i)i", r"(?i)[a-z]")
    folding = [chr(c) for c in range(128, 0x10000) if re.fullmatch(r"(?i)[a-z]", chr(c))]
    assert set(folding) == {"\u0130", "\u0131", "\u017f", "\u212a"}
    assert Matcher(specs).match("s", folding) == naive(specs, "s", folding)


def test_report_names_the_engine_and_explains_fallbacks() -> None:
    specs = specs_of(r"plain", r"(?P<x>(a+)+b)", r"(\w+)+\1", r"(?<=a)b")
    reports = Matcher(specs).report()
    assert reports[0].engine == "hyperscan (exact on ASCII lines)"
    assert "Pike VM answers" in reports[1].note and "nested repetition" in reports[1].note
    assert "no linear fallback" in reports[2].engine
    assert "counts as not matching" in reports[2].note and "backreference" in reports[2].note
    assert "lookaround" in reports[3].note and "lookaround: no linear engine" in reports[3].note


# ---------------------------------------------------------------- ReDoS


REDOS = [r"^(\w+\s?)+$", r"(?P<w>^(\w+\s?)+$)", r"(a+)+b", r"(?P<x>(a|aa)+)c", r"(.*a){12}"]


@pytest.mark.parametrize("pattern", REDOS)
def test_catastrophic_patterns_finish_fast_on_long_lines(pattern: str) -> None:
    lines = ["a" * 5000 + "!", "é" * 40 + "!", "a" * 40 + "!", "aaaa" * 100 + "c ab"]
    m = Matcher(specs_of(pattern))
    start = time.process_time()
    m.match("s", lines)
    assert time.process_time() - start < 2.0


def test_catastrophic_pattern_with_named_group_still_returns_python_groups() -> None:
    m = Matcher(specs_of(r"(?P<x>(a+)+b)"))
    hits = m.match("s", ["a" * 40 + "c ab"])
    assert hits == [Hit(0, "r0", "match", {"x": "ab"})]


def test_risky_pattern_that_needs_backtracking_matches_long_lines_under_the_budget() -> None:
    m = Matcher(specs_of(r"(\w+)+\1!"))
    long_line = "ab" * 200 + "bb!"
    start = time.process_time()
    assert m.match("s", ["xx!", long_line, "yz!"]) == [
        Hit(0, "r0", "match", {}),
        Hit(1, "r0", "match", {}),
    ]
    assert time.process_time() - start < 2.0
    assert m.take_abandoned() == {}


# ---------------------------------------------------------------- Pike VM


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        (r"(a*)*", "b"),
        (r"(a|ab)(?P<c>c|bcd)(?P<d>d*)", "abcd"),
        (r"x{2,3}?(?P<r>.*)", "axxxxb"),
        (r"(?i)^(?P<w>\w+\s?)+$", "Hello wörld x"),
        (r"(?P<a>a|)+b", "aab"),
        (r"\bfoo", "xx foo"),
        (r"(?:(?P<a>a)|b)*", "ab"),
        (r"(?P<q>a??)(?P<r>a*)", "aa"),
    ],
)
def test_pike_vm_gives_python_groups(pattern: str, text: str) -> None:
    m = re.search(pattern, text)
    expected = None if m is None else {k: v for k, v in m.groupdict().items() if v is not None}
    assert compile_pike(pattern).search(text) == expected


def test_translation_is_exact_for_plain_patterns_and_marks_widened_ones() -> None:
    assert analyse(r"sshd\[\d+\]: Failed").exact
    assert not analyse(r"(\w)\1").exact
    assert analyse(r"\bword\b").hs_loose is not None
    assert analyse(r"(?a)\bword\b").hs_loose is None


# ---------------------------------------------------------------- differential (hypothesis)

ATOMS = [
    r"\d+",
    r"\w+",
    r"\S+",
    r"\s+",
    r"[A-Z][a-z]+",
    r"[0-9a-f]{2,}",
    r".*",
    r".+?",
    r"\b",
    r"[^ ]+",
    r"(?P<g{n}>\w+)",
    r"(?P<g{n}>\d+(?:\.\d+)*)",
    r"(?:error|fail|warn)",
    r"=",
    r":",
    r" ",
    r"\.",
    r"-",
    r"\[",
    r"\]",
    r"(?=\d)",
    r"(?!x)",
    r"(?<= )",
    r"(\w)(?:\1)",
    r"(?i:user)",
    r"(?P<g{n}>[^\]]*)",
    r"$",
    r"^",
    r"[\[:]",
    r"\W",
    r"\D",
]


def _words() -> list[str]:
    words: set[str] = set()
    for line in loghub_lines()[::15]:
        words.update(w for w in re.split(r"\W+", line) if 2 < len(w) < 12)
    return sorted(words)


WORDS = _words()
LINES = loghub_lines()


@st.composite
def regexes(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 4))
    parts: list[str] = []
    for k in range(n):
        if draw(st.booleans()):
            parts.append(re.escape(draw(st.sampled_from(WORDS))))
        else:
            parts.append(draw(st.sampled_from(ATOMS)).replace("{n}", str(k)))
    flags = draw(st.sampled_from(["", "", "(?i)", "(?a)"]))
    pattern = flags + "".join(parts)
    if draw(st.integers(0, 4)) == 0:
        pattern = f"{pattern}|{re.escape(draw(st.sampled_from(WORDS)))}"
    return pattern


def _mutate(line: str, how: int) -> str:
    return [line, line.upper(), line.replace("a", "é"), line + " ſ K", line[: len(line) // 2], ""][
        how
    ]


@settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    patterns=st.lists(regexes(), min_size=1, max_size=6),
    picks=st.lists(st.tuples(st.integers(0, len(LINES) - 1), st.integers(0, 5)), max_size=40),
    roles=st.lists(st.sampled_from(["match", "match", "ignore", "fail"]), min_size=6, max_size=6),
)
def test_fast_matcher_equals_naive_re_on_random_rules_and_loghub_lines(
    patterns: list[str], picks: list[tuple[int, int]], roles: list[str]
) -> None:
    specs = [
        PatternSpec(f"rule{i % 3}", roles[i], p, SRC)  # type: ignore[arg-type]
        for i, p in enumerate(patterns)
    ]
    texts = [_mutate(LINES[i], how) for i, how in picks]
    # A generous budget: armed (main thread, no line-length caps) but never reached here.
    matcher = Matcher(specs, budget_s=10.0)
    assert matcher.match("s", texts) == naive(specs, "s", texts)
    data = "".join(t + "\n" for t in texts).encode()
    if texts:
        got: dict[int, str] = {}
        assert matcher.match_block("s", data, got) == (len(texts), naive(specs, "s", texts))
        # the decoded text of every line with a hit (at least), each the line's own
        assert {h.line for h in naive(specs, "s", texts)} <= set(got)
        assert all(texts[i] == t for i, t in got.items())
    assert matcher.take_abandoned() == {}


def test_matcher_without_hyperscan_still_matches_like_re(monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulates a host without the wheel (the module falls back to per-line re + Pike VM).
    monkeypatch.setattr(engine, "_hs", None)
    specs = specs_of(*TRICKY)
    assert Matcher(specs).match("s", TRICKY_LINES) == naive(specs, "s", TRICKY_LINES)


@settings(max_examples=60, deadline=None, database=None)
@given(
    patterns=st.lists(regexes(), min_size=1, max_size=5),
    texts=st.lists(
        st.text(alphabet="aeKkSsiI01 _-:.[]=éſıİ\u212a١\u00a0\x1c\ufffd", max_size=30), max_size=20
    ),
)
def test_fast_matcher_equals_naive_re_on_unicode_lines(
    patterns: list[str], texts: list[str]
) -> None:
    specs = specs_of(*patterns)
    assert Matcher(specs).match("s", texts) == naive(specs, "s", texts)


@pytest.mark.parametrize(
    ("machine", "wheel"),
    [("x86_64", True), ("aarch64", True), ("arm64", True), ("armv7l", False), ("ppc64le", False)],
)
def test_the_hyperscan_wheel_is_required_exactly_where_pypi_has_one(
    machine: str, wheel: bool
) -> None:
    """hyperscan 0.9 ships wheels (Vectorscan) for x86_64, aarch64 and arm64: those hosts get
    the fast engine; elsewhere requiring it would make pip build it from source and fail."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    (req,) = [Requirement(d) for d in project["dependencies"] if d.startswith("hyperscan")]
    assert req.marker is not None
    assert req.marker.evaluate({"platform_machine": machine}) is wheel


# ------------------------------------- Hyperscan reports out of order, and before a line's end

# A pattern whose translation holds a ``$`` inside an alternation gets no ``[^\n]*$`` suffix
# (Hyperscan refuses more pattern after an end anchor): it reports wherever a branch ends,
# mid-line, and at the start of a line when a branch matches empty. Hyperscan learns that a
# ``$`` matched only when it reads the ``"\n"``, so it reports the earlier line's end *after*
# such an empty match at the next line's start: events come out of offset order.


def test_a_hit_reported_after_a_later_offset_stays_on_its_own_line() -> None:
    specs = specs_of(r"\d+", r"x?|z$")  # r1 matches empty at every offset
    texts = ["a 12", "b"]
    matcher = Matcher(specs)
    data = "".join(t + "\n" for t in texts).encode()
    events: list[int] = []
    db = matcher._plan("s").db
    db.scan(data, match_event_handler=lambda _h, _f, to, _fl, _c: events.append(to))
    assert events != sorted(events)  # the premise: Hyperscan reports 4 (r0) after 5 (r1)
    assert matcher.match("s", texts) == naive(specs, "s", texts)
    assert matcher.match_block("s", data) == (2, naive(specs, "s", texts))


def test_a_match_reported_mid_line_still_confirms_on_the_whole_line() -> None:
    specs = specs_of(r"(?P<x>bar.*)|foo$", r"(?P<y>\w+)\b|z$")
    texts = ["xbar baz", "foo", "qux quux"]
    data = "".join(t + "\n" for t in texts).encode()
    assert Matcher(specs).match_block("s", data) == (3, naive(specs, "s", texts))


_BRANCHES = [r"", r"x?", r"\b", r"\d+", r"\w+\b", r"(?P<g{n}>\w+)", r"(?P<g{n}>\S+).*", r"=\S*"]


@st.composite
def eager_regexes(draw: st.DrawFn, k: int) -> str:
    """A pattern with ``$`` in one alternative (no line-end suffix for Hyperscan) and others
    that may end mid-line or match empty: the reports that come early or out of order."""
    alts = [
        draw(st.sampled_from(_BRANCHES)).replace("{n}", str(k)),
        re.escape(draw(st.sampled_from(WORDS))) + "$",
    ]
    if draw(st.booleans()):
        alts.append(re.escape(draw(st.sampled_from(WORDS))) + draw(st.sampled_from(_BRANCHES)))
    body = "|".join(draw(st.permutations(alts)))
    return draw(st.sampled_from(["", "(?i)", "(?a)"])) + body.replace("{n}", str(k + 10))


@settings(max_examples=60, deadline=None, database=None)
@given(
    data=st.data(),
    n_eager=st.integers(1, 4),
    plain=st.lists(regexes(), max_size=8),
    picks=st.lists(st.tuples(st.integers(0, len(LINES) - 1), st.integers(0, 5)), max_size=60),
)
def test_fast_matcher_equals_naive_re_when_hyperscan_reports_early_or_out_of_order(
    data: st.DataObject, n_eager: int, plain: list[str], picks: list[tuple[int, int]]
) -> None:
    eager = [data.draw(eager_regexes(k)) for k in range(n_eager)]
    specs = specs_of(*eager, *plain)
    texts = [_mutate(LINES[i], how) for i, how in picks]
    matcher = Matcher(specs, budget_s=10.0)
    assert matcher.match("s", texts) == naive(specs, "s", texts)
    block = "".join(t + "\n" for t in texts).encode()
    assert matcher.match_block("s", block) == (len(texts), naive(specs, "s", texts))


# Shapes the translation once got wrong or dropped: a literal U+FFFD (what errors="replace" makes
# of invalid bytes, which the raw-block scan sees as they are), counted repeats of {0} (which
# Hyperscan refuses as {0,0}), scoped (?a:...) flags, classes that may be non-ASCII under counts.
EDGE_ATOMS = [
    "\ufffd",
    "[\ufffd]",
    "\ufffd+",
    "[^a]\ufffd",
    "x{0}",
    "(?:ab){0}",
    "(?P<z{n}>\\w){0}",
    "(?:\\b){0}",
    "(?=q){0}",
    "(?a:\\w+)",
    "(?a:\\d{1,3})",
    "\\w{2,3}",
    "\\W{1,2}",
    ".{2}",
    "\\S{0,2}",
    "[é\ufffd]",
    "a",
    "b",
    " ",
]


@st.composite
def edge_regexes(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 3))
    atoms = [draw(st.sampled_from(EDGE_ATOMS)).replace("{n}", str(k)) for k in range(n)]
    return draw(st.sampled_from(["", "(?i)"])) + "".join(atoms)


_EDGE_BYTES = [b"a", b"b", b"x", b" ", b"1", b"\xff", b"\xfe", b"\x80", b"\xe2\x82", b"\xc3\xa9",
               b"\xef\xbf\xbd", b"\xf0\x9f\x98\x80", b"\xc3"]  # fmt: skip


@settings(max_examples=150, deadline=None, database=None)
@given(
    patterns=st.lists(edge_regexes(), min_size=1, max_size=4),
    lines=st.lists(
        st.lists(st.sampled_from(_EDGE_BYTES), max_size=8).map(b"".join), min_size=1, max_size=12
    ),
)
def test_raw_blocks_with_invalid_utf8_match_like_re_on_their_replaced_text(
    patterns: list[str], lines: list[bytes]
) -> None:
    specs = specs_of(*patterns)
    texts = [line.decode("utf-8", "replace") for line in lines]
    want = naive(specs, "s", texts)
    matcher = Matcher(specs, budget_s=10.0)
    got: dict[int, str] = {}
    assert matcher.match_block("s", b"\n".join(lines) + b"\n", got) == (len(lines), want)
    assert {h.line for h in want} <= set(got)
    assert all(texts[i] == t for i, t in got.items())
    assert matcher.match("s", texts) == want


@pytest.mark.parametrize(
    "pattern", ["ab{0}c", "x{0}", "(?:a{0})+b", "(?a:\\d{1,3}(?:\\.\\d{1,3}){3})", "(?a:\\w+)x"]
)
def test_zero_counts_and_scoped_ascii_keep_an_exact_prefilter(pattern: str) -> None:
    a = analyse(pattern)
    assert a.hs is not None and a.exact, a
    matcher = Matcher(specs_of(pattern))
    (report,) = matcher.report()
    assert report.engine == "hyperscan (exact on ASCII lines)", report
    plan = matcher._plan("s")  # Hyperscan took it: not a pattern run with re on every line
    assert plan.db is not None and plan.always == (), plan


def test_non_boundary_on_an_empty_line_is_decided_as_re_decides() -> None:
    r"""``\B`` on an empty line: Python's ``re`` (before 3.14) finds no match, Hyperscan's
    ``\B`` does, so the pattern is confirmed by ``re``, not taken on Hyperscan's word (found by
    the literal-prefilter property test, pattern ``\B`` beside ``Failed``)."""
    specs = specs_of("Failed", r"\B", r"a\B")
    lines = ["Failed", "", "ab", "a b", ""]
    matcher = Matcher(specs)
    assert matcher.match("s", lines) == naive(specs, "s", lines)
    block = "".join(line + "\n" for line in lines).encode()
    assert matcher.match_block("s", block) == (len(lines), naive(specs, "s", lines))
