"""Matching under a CPU budget: a backtracking ``re`` confirmation never runs much longer than the
budget; over it, the Pike VM answers (same result) or the line is abandoned and reported."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from detector.matching import (
    CONFIRM_BUDGET_S,
    MAX_OVERRUNS_PER_CALL,
    MAX_OVERRUNS_PER_CALL_ALL,
    Abandoned,
    Hit,
    Matcher,
    PatternSpec,
)
from detector.matching.budget import BudgetExceeded, Watchdog
from detector.matching.pike import compile_pike

SRC = frozenset({"s"})
CPU_BOUND_S = 1.5
"""A generous bound on the CPU time of one call: the budget is 50 ms (of CPU time: see
``budget.py``), ``re`` alone would take seconds to hours. Every bound here is on the process's
CPU time, not wall time, so that a busy machine (other processes on the 2 cores) cannot fail
it."""


def one(pattern: str, **kwargs: float) -> Matcher:
    return Matcher([PatternSpec("r", "match", pattern, SRC)], **kwargs)


def timed(m: Matcher, texts: list[str]) -> list[Hit]:
    start = time.process_time()
    hits = m.match("s", texts)
    assert time.process_time() - start < CPU_BOUND_S
    return hits


@pytest.fixture(autouse=True)
def _signal_state_is_left_alone() -> Iterator[None]:
    before = (signal.getsignal(signal.SIGVTALRM), signal.getitimer(signal.ITIMER_VIRTUAL))
    yield
    assert (signal.getsignal(signal.SIGVTALRM), signal.getitimer(signal.ITIMER_VIRTUAL)) == before


# ---------------------------------------------------------------- polynomial backtracking


@pytest.mark.parametrize("n", [256, 4096])
@pytest.mark.parametrize(
    ("pattern", "groups"),
    [
        (r"(.*)(.*)(.*)\d", {}),
        (r"(?P<a>.*)(?P<b>.*)(?P<c>.*)\d", {"a": "é", "b": "", "c": ""}),
    ],
)
def test_sequential_repeats_on_non_ascii_line_that_does_not_match_are_answered_by_pike(
    pattern: str, groups: dict[str, str], n: int
) -> None:
    # \d may match non-ASCII digits, so the prefilter lets the line through; re alone would take
    # seconds (n=256) or hours (n=4096) to find that no digit is there.
    m = one(pattern)
    assert timed(m, ["é" * n, "é5"]) == [Hit(1, "r", "match", groups)]
    assert m.take_slow() == {"r": 1}
    assert m.take_abandoned() == {}


@pytest.mark.parametrize("n", [256, 4096])
@pytest.mark.parametrize(
    ("pattern", "slow"),
    [
        # a match that cannot take in a "\n": the prefilter answers for the multi-line text
        # (a journald message or a multiline event), re never runs
        (r"(.*)(.*)(.*)x", {}),
        # one that can span lines is confirmed by re on every multi-line text: bounded
        (r"([\s\S]*)([\s\S]*)([\s\S]*)x", {"r": 1}),
    ],
)
def test_sequential_repeats_on_a_line_with_a_newline_stay_bounded(
    n: int, pattern: str, slow: dict[str, int]
) -> None:
    m = one(pattern)
    assert timed(m, ["é" * n + "\nyy"]) == []  # no x, so no match
    assert m.take_slow() == slow


def test_matching_line_that_backtracks_long_gets_python_groups_from_the_pike_vm() -> None:
    pattern = r"(?P<a>.*)(?P<b>.*)(?P<c>.*)x"
    text = "x" + "é" * 4096
    expected = compile_pike(pattern).search(text)
    assert expected == {"a": "", "b": "", "c": ""}  # only split that reaches the one x
    m = one(pattern)
    assert timed(m, [text]) == [Hit(0, "r", "match", expected)]
    assert m.take_slow() == {"r": 1}
    assert m.take_slow() == {}


def test_64k_line_with_ordinary_named_pattern_is_confirmed_by_re_quickly() -> None:
    pattern = r'"level": "(?P<level>\w+)", "msg": "(?P<msg>[^"]*)"'
    payload = ", ".join(f'"k{i}": "value {i}"' for i in range(5000))
    text = '{"level": "error", "msg": "disk full", ' + payload + "}"
    assert len(text) > 65536
    m = one(pattern)
    start = time.process_time()
    hits = m.match("s", [text])
    assert time.process_time() - start < 0.3
    found = re.search(pattern, text)
    assert found is not None
    assert hits == [Hit(0, "r", "match", found.groupdict())]
    assert m.take_slow() == {}


# ---------------------------------------------------------------- no linear engine


@pytest.mark.parametrize(
    ("pattern", "bad", "why"),
    [
        (r"^(\w+\s?)+$(?<=z)", "a" * 40 + "y", "lookaround"),
        (r"(?<=x)(.*)(.*)y", "y" + "x" * 4096, "lookaround"),
        (r"^(?P<w>\w+\s?)+\1!", "a" * 40 + "b!", "backreference"),
    ],
)
def test_catastrophic_pattern_without_linear_engine_abandons_the_line_and_reports_it(
    pattern: str, bad: str, why: str
) -> None:
    m = one(pattern)
    assert f"{why}: no linear engine" in m.report()[0].note
    start = time.process_time()
    hits = m.match("s", ["short", bad, bad])
    assert time.process_time() - start < 2 * CPU_BOUND_S
    assert [h.line for h in hits] == []
    assert m.take_abandoned() == {"r": Abandoned("r", 2, len(bad), bad[:200])}
    assert m.take_abandoned() == {}


def test_abandoning_one_line_keeps_the_other_lines_and_rules_exact() -> None:
    specs = [
        PatternSpec("slow", "match", r"^(\w+\s?)+$(?<=z)", SRC),
        PatternSpec("slow", "match", r"^hello", SRC),
        PatternSpec("other", "match", r"(?P<first>\w)", SRC),
    ]
    m = Matcher(specs)
    bad = "a" * 40 + "y"
    assert timed(m, ["aaz", bad, "hello"]) == [
        Hit(0, "slow", "match", {}),
        Hit(0, "other", "match", {"first": "a"}),
        Hit(1, "other", "match", {"first": "a"}),
        Hit(2, "slow", "match", {}),
        Hit(2, "other", "match", {"first": "h"}),
    ]
    assert m.take_abandoned() == {"slow": Abandoned("slow", 1, 41, bad)}


def test_abandoned_sample_is_the_first_200_characters_and_longest_is_tracked() -> None:
    m = one(r"^(\w+\s?)+$(?<=z)", budget_s=0.02)
    first, longer = "a" * 300 + "y", "b" * 500 + "y"
    count, hits = m.match_block("s", f"{first}\n{longer}\n".encode())
    assert (count, hits) == (2, [])
    assert m.take_abandoned() == {"r": Abandoned("r", 2, 501, first[:200])}


def test_budget_bounds_the_wait_per_line() -> None:
    m = one(r"^(\w+\s?)+$(?<=z)", budget_s=0.02)
    start, cpu = time.perf_counter(), time.process_time()
    assert m.match("s", ["a" * 40 + "y"] * 4) == []
    assert time.perf_counter() - start >= 4 * 0.02  # each line really ran its budget
    assert time.process_time() - cpu < 4 * 0.02 * 10  # and no more (CPU: a busy machine)
    assert m.take_abandoned()["r"].lines == 4


def test_a_flood_of_undecidable_lines_is_bounded_per_call_and_reported_untried() -> None:
    """Each line is bounded by the budget; a block full of such lines must be bounded too. After
    MAX_OVERRUNS_PER_CALL overruns a rule tries none of its other candidates of that call (they
    are abandoned and counted as untried); other rules stay exact; the next call tries again."""
    specs = [
        PatternSpec("slow", "match", r"^(\w+\s?)+$(?<=z)", SRC),
        PatternSpec("errors", "match", r"ERROR (?P<what>\w+)", SRC),
    ]
    m = Matcher(specs, budget_s=0.02)
    bad = "a" * 40 + "y"
    lines = [bad] * 500 + ["ERROR disk"]
    start, cpu = time.perf_counter(), time.process_time()
    count, hits = m.match_block("s", ("\n".join(lines) + "\n").encode())
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert count == 501
    assert hits == [Hit(500, "errors", "match", {"what": "disk"})]
    tried = MAX_OVERRUNS_PER_CALL
    assert elapsed >= tried * 0.02  # the tried ones really ran their budget
    assert cpu < 500 * 0.02 / 4  # but not all 500 (10 s): those were never tried
    # "ERROR disk" is a candidate of `slow` too (its prefilter is a superset), and untried
    assert m.take_abandoned() == {
        "slow": Abandoned("slow", 501, 41, bad, untried=501 - tried),
    }
    assert m.match("s", [bad, "aaz"]) == [Hit(1, "slow", "match", {})]  # tried again
    assert m.take_abandoned() == {"slow": Abandoned("slow", 1, 41, bad)}


def test_many_rules_of_undecidable_lines_are_bounded_together_per_call() -> None:
    """Twenty such rules would each try MAX_OVERRUNS_PER_CALL lines (160 budgets); together they
    stop at MAX_OVERRUNS_PER_CALL_ALL, and every line is still accounted for. A rule that never
    ran over keeps its own re meanwhile (no Pike VM, nothing abandoned)."""
    specs = [PatternSpec(f"slow{k}", "match", rf"^(\w+\s?)+$(?<=z{k})", SRC) for k in range(20)]
    specs.append(PatternSpec("good", "match", r"(?P<first>a)", SRC))
    m = Matcher(specs, budget_s=0.01, pike_s_per_call=0.0)  # any Pike VM use would abandon
    bad = "a" * 40 + "y"
    count, hits = m.match_block("s", ("\n".join([bad] * 30) + "\n").encode())
    assert count == 30 and hits == [Hit(i, "good", "match", {"first": "a"}) for i in range(30)]
    assert m.take_slow() == {}  # "good" never went to the Pike VM
    abandoned = m.take_abandoned()
    assert "good" not in abandoned
    assert sum(a.lines for a in abandoned.values()) == 20 * 30  # every candidate accounted for
    tried = sum(a.lines - a.untried for a in abandoned.values())
    assert tried == MAX_OVERRUNS_PER_CALL_ALL < 20 * MAX_OVERRUNS_PER_CALL


def test_a_flood_of_long_lines_through_the_pike_vm_is_bounded_per_call() -> None:
    """The Pike VM is linear but slow on long lines (a risky pattern with a capture): after
    ``pike_s_per_call`` of it in one call the other lines are abandoned untried and recorded,
    so that sixteen 64 KiB lines x several such rules cannot hold the loop past the watchdog."""
    m = one(r"(?P<w>^(\w+\s?)+$)", budget_s=0.01, pike_s_per_call=0.05)
    assert "Pike VM answers" in m.report()[0].note
    # "…" is no \w for Python but a high byte for the prefilter, which is a superset there: a
    # candidate that does not match, on which re backtracks without end; the Pike VM decides
    long = ("word " * 10_000).strip() + "\u2026"
    count, hits = m.match_block("s", ("\n".join([long] * 10) + "\n").encode())
    assert (count, hits) == (10, [])
    abandoned = m.take_abandoned()["r"]
    slow = m.take_slow()["r"]  # decided by the Pike VM until its time was used up
    assert abandoned.lines == abandoned.untried >= 5  # one 50 KiB line is well over 50 ms
    assert slow + abandoned.lines == 10
    assert m.match("s", [long]) == []  # the next call starts afresh: decided again
    assert m.take_slow() == {"r": 1} and m.take_abandoned() == {}


def test_a_busy_log_through_a_risky_capturing_rule_is_matched_whole() -> None:
    """Nested repetition with a capture (key=value pairs) on every line of a busy log: re
    confirms (the Pike VM, ~1000x slower, only stands behind the budget), so no bound of the
    batch is reached and every line matches, groups and all."""
    m = one(r"app: (?P<pairs>(\w+=\S+\s?)+)$")
    lines = [f"web1 app: user=u{i} path=/api/{i} status=200 ms={i % 500}" for i in range(20_000)]
    count, hits = m.match_block("s", ("\n".join(lines) + "\n").encode())
    assert count == len(hits) == 20_000
    assert hits[7].groups == {"pairs": "user=u7 path=/api/7 status=200 ms=7"}
    assert m.take_abandoned() == {} and m.take_slow() == {}


# ---------------------------------------------------------------- signal hygiene


def test_handler_and_timer_set_by_someone_else_are_restored_after_an_overrun() -> None:
    calls: list[int] = []

    def theirs(signum: int, _frame: FrameType | None) -> None:
        calls.append(signum)

    old = signal.signal(signal.SIGVTALRM, theirs)
    signal.setitimer(signal.ITIMER_VIRTUAL, 500.0, 250.0)
    try:
        before = signal.getitimer(signal.ITIMER_VIRTUAL)
        m = one(r"^(\w+\s?)+$(?<=z)")
        assert m.match("s", ["a" * 40 + "y"]) == []
        assert m.take_abandoned()["r"].lines == 1
        assert signal.getsignal(signal.SIGVTALRM) is theirs
        value, interval = signal.getitimer(signal.ITIMER_VIRTUAL)
        assert interval == before[1]
        # their countdown goes on (less our CPU time; 10 ms: timer granularity)
        assert before[0] - 1.0 < value <= before[0] + 0.01
        assert calls == []  # no tick of ours reached their handler
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0.0, 0.0)
        signal.signal(signal.SIGVTALRM, old)


class _Exploding(list[str]):
    """Lines whose read of line 1 fails: the prefilter scan reads the joined text, then the
    confirmation of line 0 arms the watchdog before line 1 is read by index. Records whether
    the watchdog's handler was installed when it failed (else the test would prove nothing)."""

    armed_at_failure: bool | None = None

    def __getitem__(self, i: object) -> str:  # type: ignore[override]
        if i == 1:
            self.armed_at_failure = signal.getsignal(signal.SIGVTALRM) is not signal.SIG_DFL
            raise RuntimeError("boom")
        return str(super().__getitem__(i))  # type: ignore[call-overload]


def test_signal_state_is_restored_when_matching_raises_midway() -> None:
    m = one(r"(?P<w>\w+)")
    lines = _Exploding(["abc", "def"])
    with pytest.raises(RuntimeError, match="boom"):
        m.match("s", lines)
    assert lines.armed_at_failure is True
    assert signal.getsignal(signal.SIGVTALRM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)
    assert m.match("s", ["xyz"]) == [Hit(0, "r", "match", {"w": "xyz"})]


def test_watchdog_is_armed_only_while_matching_lines_that_need_confirmation() -> None:
    seen: list[object] = []
    m = Matcher(
        [
            PatternSpec("plain", "match", r"ERROR", SRC),
            PatternSpec("named", "match", r"(?P<w>WARN)", SRC),
        ]
    )

    class Probe(list[str]):
        def __getitem__(self, i: object) -> str:  # type: ignore[override]
            seen.append(signal.getsignal(signal.SIGVTALRM))
            return str(super().__getitem__(i))  # type: ignore[call-overload]

    # exact plain pattern on ASCII lines: no confirmation, never armed (the hits come from the
    # scan of the joined text alone: a line may not even be read by index)
    assert m.match("s", Probe(["ERROR x", "ERROR y"])) == [
        Hit(0, "plain", "match", {}),
        Hit(1, "plain", "match", {}),
    ]
    assert all(h is signal.SIG_DFL for h in seen)
    seen.clear()
    assert m.match("s", Probe(["WARN x", "WARN y"])) == [
        Hit(0, "named", "match", {"w": "WARN"}),
        Hit(1, "named", "match", {"w": "WARN"}),
    ]
    # armed by the confirmation of line 0, so armed when line 1 is read for its confirmation
    assert seen[-1] is not signal.SIG_DFL and callable(seen[-1])
    assert all(h is signal.SIG_DFL for h in seen[:-1])


def test_in_another_thread_the_matcher_keeps_the_static_caps_and_never_raises() -> None:
    specs = [
        PatternSpec("risky", "match", r"^(\w+\s?)+$(?<=z)", SRC),
        PatternSpec("named", "match", r"(?P<user>\w+)@(?P<host>\w+)", SRC),
    ]
    long_named = "x " * 2500 + "bob@host"
    texts = ["a" * 300 + "y", "aaz", long_named]
    out: list[object] = []

    def work() -> None:
        try:
            m = Matcher(specs)
            out.append(m.match("s", texts))
            out.append(m.take_abandoned())
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            out.append(exc)

    start = time.process_time()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(30)
    assert time.process_time() - start < 10
    assert out == [
        [
            Hit(1, "risky", "match", {}),
            Hit(2, "named", "match", {"user": "bob", "host": "host"}),
        ],
        {},  # a capped line is not an abandoned one (the cap is documented, static)
    ]


def test_watchdog_search_raises_over_budget_and_is_plain_search_otherwise() -> None:
    wd = Watchdog(0.02)
    assert wd.arm() and wd.arm()  # idempotent while armed
    try:
        found = wd.search(re.compile(r"b+"), "abbc")
        assert found is not None and found.group() == "bb"
        start = time.process_time()
        with pytest.raises(BudgetExceeded):
            wd.search(re.compile(r"^(\w+\s?)+$"), "a" * 40 + "!")
        assert time.process_time() - start < CPU_BOUND_S
        assert wd.started == 0.0
    finally:
        wd.disarm()
    wd.disarm()


def test_watchdog_cannot_arm_outside_the_main_thread() -> None:
    result: list[bool] = []
    wd = Watchdog()
    thread = threading.Thread(target=lambda: result.append(wd.arm()), daemon=True)
    thread.start()
    thread.join(10)
    wd.disarm()
    assert result == [False]
    with pytest.raises(ValueError, match="positive"):
        Watchdog(0)


# ---------------------------------------------------------------- report


def test_report_says_which_bound_applies_to_each_pattern() -> None:
    specs = [
        PatternSpec("plain", "match", r"ERROR", SRC),
        PatternSpec("named", "match", r"(?P<x>\w+)=", SRC),
        PatternSpec("nested", "match", r"(?P<x>(a+)+b)", SRC),
        PatternSpec("backref", "match", r"(\w)\1", SRC),
    ]
    reports = Matcher(specs, budget_s=0.2).report()
    assert CONFIRM_BUDGET_S == 0.05
    assert reports[0].note == ""
    pike_note = (
        "each re search has a 200 ms CPU budget; over it, the Pike VM answers (linear time, same "
        f"result), and after {MAX_OVERRUNS_PER_CALL} such lines in one batch it answers the "
        "rule's other candidates of that batch at once"
    )
    assert reports[1].note == pike_note
    # nested repetition: re first all the same (~1000x faster on ordinary lines), Pike VM behind
    assert reports[2].engine.endswith("+ re")
    assert reports[2].note == f"nested repetition (can backtrack exponentially); {pike_note}"
    assert reports[3].note.endswith(
        "each re search has a 200 ms CPU budget; a line that exceeds it counts as not matching "
        "and raises an agent alert (backreference: no linear engine); after "
        f"{MAX_OVERRUNS_PER_CALL} such lines in one batch ({MAX_OVERRUNS_PER_CALL_ALL} for all "
        "rules together), the rule's other candidates of that batch are skipped (and counted)"
    )
    assert "50 ms CPU budget" in Matcher(specs).report()[1].note
