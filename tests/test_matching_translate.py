"""Pattern translation reads CPython's private ``re._parser``: it is used only on the Pythons it was
checked on and only when the parse tree has the shape it reads; elsewhere matching degrades to
``re`` alone on every line (same results, reported), never a crash."""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from packaging.specifiers import SpecifierSet

from detector.matching import ENGINE, Matcher, engine, translate
from detector.matching.pike import PikeUnsupported, compile_pike
from detector.matching.translate import (
    SUPPORTED_PYTHONS,
    ParserUnavailable,
    analyse,
    parser_problem,
)
from tests.test_matching import TRICKY, TRICKY_LINES, naive, regexes, specs_of

ROOT = Path(__file__).resolve().parents[1]
PARSER = importlib.import_module("re._parser")
CONSTANTS = importlib.import_module("re._constants")
UNCHECKED = "re parser of cpython 3.99 not checked (CPython 3.11, 3.12, 3.13 are)"


def test_translation_is_pinned_to_the_pythons_it_was_checked_on() -> None:
    # Widening or narrowing this list means running the matching tests on those Pythons first.
    assert SUPPORTED_PYTHONS == ((3, 11), (3, 12), (3, 13))
    # The package's requires-python starts at the oldest of them, and this Python is one.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    allowed = SpecifierSet(project["requires-python"])
    assert [v for v in SUPPORTED_PYTHONS if f"{v[0]}.{v[1]}" in allowed] == list(SUPPORTED_PYTHONS)
    assert "3.10" not in allowed
    assert sys.version_info[:2] in SUPPORTED_PYTHONS
    assert translate.PARSER_PROBLEM == ""
    assert "no Pike VM" not in ENGINE
    for version in SUPPORTED_PYTHONS:
        assert parser_problem(version, "cpython", PARSER, CONSTANTS) == ""


@pytest.mark.parametrize(
    ("version", "implementation"),
    [((3, 10), "cpython"), ((3, 14), "cpython"), ((4, 0), "cpython"), ((3, 11), "pypy")],
)
def test_an_unchecked_python_is_not_translated(
    version: tuple[int, int], implementation: str
) -> None:
    problem = parser_problem(version, implementation, PARSER, CONSTANTS)
    assert problem == (
        f"re parser of {implementation} {version[0]}.{version[1]} not checked "
        "(CPython 3.11, 3.12, 3.13 are)"
    )


def _parse_other(regex: str, flags: int) -> Any:
    return PARSER.parse(regex.replace("(?P<n>xa|yb)", "(?P<n>xa)"), flags)


def _parse_new_signature(regex: str) -> Any:
    return PARSER.parse(regex, 0)


@pytest.mark.parametrize(
    ("parser", "constants", "problem"),
    [
        (None, CONSTANTS, "re._parser is missing"),
        (PARSER, None, "re._parser is missing"),
        (
            SimpleNamespace(parse=_parse_other),
            CONSTANTS,
            "re._parser's parse tree is not the expected shape",
        ),
        (
            SimpleNamespace(parse=_parse_new_signature),
            CONSTANTS,
            "re._parser cannot be read (TypeError: _parse_new_signature() takes 1 positional "
            "argument but 2 were given)",
        ),
        (PARSER, SimpleNamespace(), "re._parser cannot be read (AttributeError: "),
        (PARSER, SimpleNamespace(MAXREPEAT=4294967295), "not the expected shape"),
    ],
)
def test_a_parser_of_another_shape_is_not_used(parser: Any, constants: Any, problem: str) -> None:
    assert problem in parser_problem((3, 12), "cpython", parser, constants)


def test_without_the_parser_the_matcher_matches_like_re_on_every_line_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(translate, "PARSER_PROBLEM", UNCHECKED)
    specs = specs_of(*TRICKY)
    matcher = Matcher(specs)
    assert matcher.match("s", TRICKY_LINES) == naive(specs, "s", TRICKY_LINES)
    data = "".join(t + "\n" for t in TRICKY_LINES).encode()
    assert matcher.match_block("s", data) == (len(TRICKY_LINES), naive(specs, "s", TRICKY_LINES))
    # with no Pike VM behind the budget, only the exponential ^(\w+\s?)+$ gives up, on the long
    # line it cannot match anyway (reported, never a stall)
    assert set(matcher.take_abandoned()) == {"r3"}
    assert TRICKY[3] == r"^(\w+\s?)+$"
    for report in matcher.report():
        assert report.engine == "no prefilter (every line) + re (no linear fallback)"
        assert f"no prefilter, no Pike VM: {UNCHECKED}" in report.note
    # direct callers get a clear error, not a crash deep inside the tree walk
    with pytest.raises(ParserUnavailable, match=re.escape(UNCHECKED)):
        analyse("abc")
    with pytest.raises(ParserUnavailable, match=re.escape(UNCHECKED)):
        compile_pike("abc")


def test_engine_names_the_degraded_path() -> None:
    wheel = SimpleNamespace(__version__="0.9.1")
    assert engine.engine_name(wheel, "") == ("hyperscan 0.9.1 block prefilter + re/Pike VM confirm")
    assert engine.engine_name(wheel, UNCHECKED) == (
        f"re per line (hyperscan 0.9.1 unused, no prefilter, no Pike VM: {UNCHECKED})"
    )
    assert engine.engine_name(None, UNCHECKED) == (
        f"re per line (no prefilter, no Pike VM: {UNCHECKED})"
    )
    assert engine.engine_name(None, "") == (
        "re + Pike VM per line (pure Python: hyperscan not installed)"
    )
    assert engine.engine_name(engine._hs, translate.PARSER_PROBLEM) == ENGINE


def test_without_the_parser_a_backtracking_line_is_abandoned_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(translate, "PARSER_PROBLEM", UNCHECKED)
    matcher = Matcher(specs_of(r"(a+)+b", r"a"))
    line = "a" * 40
    hits = matcher.match("s", [line])
    assert [h.rule for h in hits] == ["r1"]
    abandoned = matcher.take_abandoned()
    assert list(abandoned) == ["r0"]
    assert abandoned["r0"].lines == 1
    assert abandoned["r0"].sample == line


def _broken_pike(regex: str) -> Any:
    raise ValueError(f"unexpected node in {regex}")


def test_a_pattern_the_pike_builder_fails_on_keeps_its_prefilter_and_is_matched_with_re(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "compile_pike", _broken_pike)
    specs = specs_of(*TRICKY)
    matcher = Matcher(specs)
    assert matcher.match("s", TRICKY_LINES) == naive(specs, "s", TRICKY_LINES)
    note = matcher.report()[0].note  # the prefilter stays, only the Pike VM is missing
    assert "Pike VM failed (ValueError: unexpected node in Failed password" in note


def _analysed_without_fallback(pattern: str) -> None:
    analyse(pattern)
    with contextlib.suppress(PikeUnsupported):
        compile_pike(pattern)
    for report in Matcher(specs_of(pattern)).report():
        assert "pattern analysis failed" not in report.note, pattern
        assert "Pike VM failed" not in report.note, pattern


def test_the_tree_walkers_read_every_tricky_pattern() -> None:
    for pattern in TRICKY:
        _analysed_without_fallback(pattern)


@settings(max_examples=150, deadline=None, database=None)
@given(pattern=regexes())
def test_the_tree_walkers_read_every_random_pattern(pattern: str) -> None:
    # The fallback for trees the walkers do not expect must never hide a walker bug here.
    re.compile(pattern)
    _analysed_without_fallback(pattern)
