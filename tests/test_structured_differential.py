"""The fast parsers of ``parse:`` sources against their definitions, on generated lines: the
logfmt regex tokenizer against the character scanner, and the JSON fast path against the
standard library decoder (values as text, numbers as written, and which lines are refused)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from detector import structured
from detector.structured import ParseError, Record, lookup, parse_json, parse_logfmt, text_of

# ---------------------------------------------------------------- logfmt

# the characters the grammar turns on, and some it does not
_LOGFMT_ALPHABET = ' =="\\\\\\ut\tn/a0Fd8c\x00\x01\x7fé😀\n\r\x1f\xa0='
_LOGFMT_TOKENS = st.sampled_from(
    [
        "key=value",
        'msg="quoted value"',
        'err="say \\"hi\\""',
        "bare",
        "a=",
        'b=""',
        "\\u00e9",
        "\\ud83d\\ude00",
        "\\ud83d",
        "\\",
        '"',
        "=",
        " ",
        "\t",
        "x=1=2",
    ]
)


def _outcome(parse: Any, text: str) -> Any:
    try:
        return ("ok", parse(text))
    except ParseError as e:
        return ("error", str(e))


@settings(max_examples=1500, deadline=None)
@given(
    st.one_of(
        st.text(st.sampled_from(_LOGFMT_ALPHABET), max_size=40),
        st.lists(st.one_of(_LOGFMT_TOKENS, st.text(_LOGFMT_ALPHABET, max_size=4)), max_size=10).map(
            "".join
        ),
    )
)
@example('a="x"b=1')  # a pair right after a closing quote
@example('a="\\u12" b')  # \u without 4 hex digits: kept as written
@example('a="tab\\there \\u00e9\\ud83d\\ude00 \\q" b=')
@example('a="open\\')  # a backslash before the end: never closed
@example("a=1 =2")
def test_the_logfmt_tokenizer_agrees_with_the_character_scanner(text: str) -> None:
    assert _outcome(parse_logfmt, text) == _outcome(structured._scan_logfmt, text)


# ---------------------------------------------------------------- JSON

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_number_texts = st.sampled_from(
    ["-0", "0", "-0.0", "1.50", "1e3", "1E400", "-1e-5", "12345678901234567890", "01", "1.", ".5"]
)


def _written(value: Any, rnd: Any) -> str:
    """``value`` as JSON text, spaced and escaped in varied ways."""
    sep = rnd.choice([(",", ":"), (", ", ": "), (" ,\t", " :\r\n")])
    return json.dumps(value, separators=sep, ensure_ascii=rnd.choice([True, False]))


def _texts(outcome: Any) -> Any:
    """A parse result as what fields see: every path's text."""
    if outcome[0] != "ok":
        return outcome
    rec = Record(outcome[1])
    return ("ok", dict(rec), {k: text_of(v) for k, v in outcome[1].items()})


@settings(max_examples=600, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), _values, max_size=6),
    st.randoms(use_true_random=False),
    st.lists(st.tuples(st.integers(0, 200), _number_texts | st.sampled_from(list('{}[],:"\\ '))))
    | st.just([]),
)
def test_the_json_fast_path_agrees_with_the_standard_library(
    obj: dict[str, Any], rnd: Any, edits: list[tuple[int, str]]
) -> None:
    text = _written(obj, rnd)
    for where, piece in edits:  # mutations: numbers as written, broken syntax
        at = min(where, len(text))
        text = text[:at] + piece + text[at:]
    fast = _outcome(structured._parse_json_record, text)
    slow = _outcome(structured._parse_json_stdlib, text)
    assert (fast[0], _texts(fast)) == (slow[0], _texts(slow))
    assert _outcome(parse_json, text)[0] == slow[0]


@pytest.mark.parametrize(
    "text",
    [
        '{"a": -0, "b": [-0, 1], "c": -0.0}',
        '{"n": NaN, "i": -Infinity}',
        '{"s": "\\ud800 lone"}',
        '{"a": 1, "a": 2, "b": 3}',
        ' \t{"a": 1}\r\n',
        '{"a": 1}\x0c',
        '{"a": "x\x01y"}',
        "\ufeff{}",
        '{"big": ' + "9" * 4400 + "}",
        '{"e": 1E400, "f": 1.50}',
    ],
)
def test_json_edge_cases_parse_as_the_standard_library_parses_them(text: str) -> None:
    fast = _outcome(structured._parse_json_record, text)
    slow = _outcome(structured._parse_json_stdlib, text)
    assert fast[0] == slow[0]
    assert _texts(fast) == _texts(slow)
    if fast[0] == "ok":
        paths = [k for k in slow[1] if isinstance(k, str)]
        assert [lookup(fast[1], p) for p in paths] == [lookup(slow[1], p) for p in paths]


@pytest.mark.parametrize("depth", [10, 399, 400, 600, 2000])
def test_deep_lines_parse_as_the_standard_library_parses_them(depth: int) -> None:
    # long enough for the bracket count; deep ones go to the json module (recursion limits)
    text = '{"pad": "' + "x" * 1000 + '", "deep": ' + "[" * depth + "]" * depth + "}"
    fast = _outcome(structured._parse_json_record, text)
    slow = _outcome(structured._parse_json_stdlib, text)
    assert fast == slow


def test_json_numbers_stay_as_written_through_the_public_parser() -> None:
    rec = parse_json('{"a": -0, "b": 7, "c": [1, -0], "d": {"e": 2}}')
    assert rec == {"a": "-0", "b": "7", "c": ["1", "-0"], "d": {"e": "2"}}
    assert all(isinstance(v, str) for v in (rec["a"], rec["b"], *rec["c"], rec["d"]["e"]))
    assert lookup(rec, "c") == "[1,-0]"
