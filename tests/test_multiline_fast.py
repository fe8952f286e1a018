"""The fast paths of ``multiline:`` against their definitions, on generated input: events (texts
holding ``"\\n"``) through the matcher's Hyperscan prefilter against ``re.search`` per event, and
the block-at-a-time event assembly (``EventAssembler.push_all``) against ``push`` line by line,
under random read splits."""

from __future__ import annotations

import itertools
from datetime import timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from detector.matching import Matcher, PatternSpec, engine
from detector.model import MultilineConfig
from detector.sources.events import Event, EventAssembler
from tests.test_matching import SRC, naive

# ---------------------------------------------------------------- matching events

# pieces whose meaning turns on "\n": anchors, classes that take it in or not, lookarounds
_ATOMS = [
    "Error",
    "error",
    "^Traceback",
    "^  File",
    "(?m:^)  File",
    "Error$",
    "(?m:Error$)",
    r"\AError",
    r"Error\Z",
    r"\s+at",
    r"[^x]+",
    r"(?s:.*)",
    r".*",
    r"\d+",
    r"\bline\b",
    r"line \d+\n",
    r"(?=\n)",
    r"(?<=\n)  ",
    r"(?!\n)",
    r"(?P<n>\w+)Error",
    r"(?P<w>[a-z]+) (?P=w)",
    r"(?i:FILE)",
    "é",
    " ",
    r"\n",
    r"Traceback(?s:.*)Error",
    r"File\s+line",
    r"Error[^x]*at",
    r"8\Wat",
]
_LINE_WORDS = ["Traceback", "  File", "line 8", "Error", "error", "ValueError: x", "at x", ""]


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    flags = draw(st.sampled_from(["", "", "(?m)", "(?s)", "(?i)"]))
    return flags + "".join(
        draw(st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=3, unique=True))
    )


_lines = st.lists(st.sampled_from(_LINE_WORDS), min_size=1, max_size=4).map(" ".join) | st.text(
    alphabet="aE r\t:é\u00a0ſ", max_size=8
)
_events = st.lists(_lines, min_size=1, max_size=5).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(_patterns(), min_size=1, max_size=5),
    roles=st.lists(st.sampled_from(["match", "match", "ignore"]), min_size=5, max_size=5),
    texts=st.lists(_events | _lines, max_size=12),
)
@example(["Traceback(?s:.*)Error"], ["match"] * 5, ["Traceback\n  File\nValueError: x"])
def test_events_through_the_prefilter_match_as_re_search_on_each_event(
    patterns: list[str], roles: list[str], texts: list[str]
) -> None:
    specs = [
        PatternSpec(f"rule{i % 3}", roles[i], p, SRC)  # type: ignore[arg-type]
        for i, p in enumerate(patterns)
    ]
    assert Matcher(specs).match("s", texts) == naive(specs, "s", texts)


def test_which_patterns_stay_inside_one_line_of_an_event() -> None:
    inside = ["Error$", r"^ *File", r"[^\n]+", r"(?=\n)x", r"(?<=\n)  File", r"(\w+) \1", "."]
    across = [r"^\s*File", r"\s+at", r"[^x]", r"(?s:.)", r"a\nb", r"(?s).", r"\D", r"(?:x|\n)"]
    assert [engine._line_local(p) for p in inside] == [True] * len(inside)
    assert [engine._line_local(p) for p in across] == [False] * len(across)
    # exact line verdicts hold for the event only without anchors to the text's ends
    assert [
        engine._event_kind(p) for p in ["Error", r"\bline \d+", "(?m)^File", r"x\Z", r"\s"]
    ] == [
        2,
        2,
        1,
        1,
        0,
    ]


# ---------------------------------------------------------------- assembling events


def _one_by_one(
    spec: MultilineConfig, chunks: list[list[tuple[str, int]]]
) -> tuple[list[Event[int]], int]:
    """The definition: :meth:`EventAssembler.push`, one line at a time; and the splits."""
    asm: EventAssembler[int] = EventAssembler(spec)
    out: list[Event[int]] = []
    for chunk in chunks:
        for text, mark in chunk:
            asm.push(text, mark, out)
    last = asm.flush()
    return ([*out, last] if last is not None else out), asm.splits


@settings(max_examples=400, deadline=None)
@given(
    mode=st.sampled_from(["start", "continue"]),
    max_lines=st.integers(1, 5),
    lines=st.lists(st.sampled_from(["T", "  at", "x", "", "T at"]), max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=5),
)
def test_block_assembly_gives_the_events_of_line_by_line_assembly(
    mode: str, max_lines: int, lines: list[str], cuts: list[int]
) -> None:
    spec = MultilineConfig(
        mode=mode,  # type: ignore[arg-type]
        pattern="^T" if mode == "start" else "^ ",
        max_lines=max_lines,
        timeout=timedelta(seconds=2),
    )
    marked = [(t, i) for i, t in enumerate(lines)]
    bounds = sorted({0, len(marked), *(min(c, len(marked)) for c in cuts)})
    chunks = [marked[a:b] for a, b in itertools.pairwise(bounds)]
    asm = EventAssembler[int](spec)
    got: list[Event[int]] = []
    for chunk in chunks:
        got.extend(asm.push_all(iter(chunk)))  # an iterator, as the readers pass a zip
    last = asm.flush()
    if last is not None:
        got.append(last)
    assert (got, asm.splits) == _one_by_one(spec, chunks)
