"""Matching: every rule's patterns compiled once, applied to a batch of lines in one pass.

Sits between sources and rules. ``Matcher.match(source, texts)`` returns the hits of every pattern
of every rule bound to that source; rules then see only their hits. Semantics are exactly Python
``re.search`` per line with the pattern's own flags; named groups that took part become fields.

How (DESIGN.md §6): the lines of a batch are joined into one UTF-8 block and scanned once by a
Hyperscan database holding every pattern of the source (translated by ``translate``).
Each Hyperscan pattern ends in ``[^\\n]*$`` so it reports at most once per line. On a pure-ASCII
line the translation is exact, so a pattern without named groups needs no further work, nor one
whose hits need not carry them (``PatternSpec.groups``: ``groups`` gives them when the rule reads
them after all); on other lines it is a superset, so a line Hyperscan does not report never
matches. Reported lines that need it are confirmed, and their groups extracted, per pattern:

* ``re`` under a CPU budget (``budget``, ``CONFIRM_BUDGET_S`` per pattern and line) —
  every pattern, risky ones (nested repetition, ``translate`` decides) included: ``re``
  is ~1000x faster than the Pike VM on ordinary lines. A search that runs over the budget is
  answered by the Pike VM (``pike``: linear time in the line length, Python's own
  character semantics, leftmost-first captures) when it can run the pattern (same result,
  counted per rule as ``slow``); otherwise (backreferences, lookaround, atomic or possessive
  parts, conditionals) the line counts as not matching for that pattern and is recorded for
  ``take_abandoned()``, which the agent turns into an alert. After ``MAX_OVERRUNS_PER_CALL``
  overruns of a rule in one ``match`` call (``MAX_OVERRUNS_PER_CALL_ALL`` for all rules
  together), its other candidate lines of that call skip ``re``: the Pike VM answers them, or,
  without one, they are abandoned untried (and recorded too), so a flood of them costs a bounded
  time; likewise the Pike VM confirmations of a call after ``PIKE_S_PER_CALL`` seconds of them.

Guarantee: candidate detection is linear-time (Hyperscan automata); confirming one line against one
pattern costs at most the budget plus a linear-time Pike VM run, all the budget overruns of one
call at most ``MAX_OVERRUNS_PER_CALL_ALL`` budgets, and all its Pike VM runs about
``PIKE_S_PER_CALL``. No result is ever changed silently: the only lines whose answer can differ
from ``re.search`` are the abandoned ones, and they are reported. ``report()`` says per pattern
which bound applies (for ``detector check``). The budget needs signals, so it only works in the
main thread (the agent and ``detector test`` match there). A ``Matcher`` used from another thread
keeps the static caps instead: lines over ``RE_MAX_CHARS`` go to the Pike VM when it can run the
pattern, risky patterns always do, and risky patterns it cannot run treat lines over
``RISKY_RE_MAX_CHARS`` as not matching (polynomial backtracking otherwise).
Patterns Hyperscan rejects take the same confirmation path without the prefilter. A text
containing ``\\n`` (a ``multiline:`` event, a journald message) goes through the prefilter for
the patterns that can never take in a ``\\n`` (then confirmed by ``re``, whose ``^``/``$`` are
the text's), and through ``re`` alone for the others. Without the ``hyperscan`` wheel every line
goes through that path (``ENGINE`` says so); so it does on a Python whose ``re._parser``
``translate`` cannot read (``PARSER_PROBLEM``), with no Pike VM behind the budget either
(``ENGINE`` and ``report()`` say so). The Hyperscan database of a source is compiled on its
first ``match`` (``match(source, [])`` warms it up), or by ``warm``; the agent's start warms it
``quick``: a source without its full database in the cache gets the *literal skeleton* of the
patterns ``re`` confirms anyway (``_exprs``: quick to compile, slower to scan), and ``upgrade``,
run in another thread, builds the full one, which the next ``match`` call takes. A ``Matcher``
is used by one thread at a time (``upgrade`` aside).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import re
import sys
import threading
import warnings
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any, Literal, NamedTuple

from detector.digest import sha256
from detector.frozen import Frozen
from detector.matching import translate as _translate
from detector.matching.budget import ARMED, CONFIRM_BUDGET_S, BudgetExceeded, Watchdog
from detector.matching.dbcache import DbCache, cpu_features, db_key
from detector.matching.pike import PikeProgram, PikeUnsupported, compile_pike
from detector.matching.translate import (
    _PIKE_UNSUPPORTED,
    Analysis,
    CharCache,
    analyse,
    unanalysed,
)
from detector.newlines import SHORT, count_newlines

# Imported by name, not with an import statement: mypy then types ``_hs`` as Any whether or not
# the wheel is installed (a static import is a module with it and a redefinition without it).
_hs: Any
try:
    _hs = importlib.import_module("hyperscan")
except ImportError:  # pragma: no cover - exercised on hosts without the wheel
    _hs = None

Role = Literal["match", "ignore", "fail", "start", "end", "reset"]
Confirm = Literal["re", "pike", "re-capped"]
Stage = Literal["full", "skeleton"]

RE_MAX_CHARS = 4096
"""Without the budget (not the main thread): longest line confirmed with ``re`` when the Pike VM
can run the pattern."""
MAX_OVERRUNS_PER_CALL = 8
"""A rule whose ``re`` ran over the budget this many times in one ``match`` call (one batch, one
block) runs ``re`` on none of its other candidate lines of that call: the Pike VM answers them, or,
for a pattern it cannot run, they are abandoned, and reported, untried. Each line is bounded by
the budget; this bounds a flood of such lines (``MAX_OVERRUNS_PER_CALL`` x budget per rule and
call), so that one block of them cannot hold the agent's event loop, and the systemd watchdog
ping, for minutes."""
MAX_OVERRUNS_PER_CALL_ALL = 40
"""The same bound for all such rules of a ``match`` call together (40 x 50 ms = 2 s): many rules
of that kind must not add up to a stall either."""
PIKE_S_PER_CALL = 5.0
"""The Pike VM is linear in the line length but slow (~0.6 s for a 64 KiB line with captures):
after this much of it in one ``match`` call, the call's remaining Pike confirmations are abandoned
untried (and recorded). Normal work stays far below it (a 1 MiB block of 100-character lines
through a risky pattern: ~1 s); a flood of long lines through several risky patterns would
otherwise hold the event loop past the systemd watchdog."""
DB_FORMAT = "detector-engine 2"
"""Part of the compiled-database cache key: bump it when the expressions built from the same
patterns, or the way they are compiled, change meaning (``_hs_expr``, ``_hs_flags``,
``_prefilter``), or the stored analyses' layout changes (2: required literals)."""
RISKY_RE_MAX_CHARS = 256
"""Without the budget (not the main thread): longest line confirmed for risky patterns the Pike
VM cannot run; longer lines never match."""


def engine_name(hs: Any, parser_problem: str) -> str:
    """What ``ENGINE`` says, given the hyperscan module (or None) and ``PARSER_PROBLEM``."""
    if parser_problem:
        unused = "" if hs is None else f"hyperscan {getattr(hs, '__version__', '?')} unused, "
        return f"re per line ({unused}no prefilter, no Pike VM: {parser_problem})"
    if hs is not None:
        return f"hyperscan {getattr(hs, '__version__', '?')} block prefilter + re/Pike VM confirm"
    return "re + Pike VM per line (pure Python: hyperscan not installed)"


ENGINE = engine_name(_hs, _translate.PARSER_PROBLEM)


class PatternSpec(Frozen):
    """One regex of a rule (its role: match, ignore, fail, start, end or reset) and its sources."""

    rule: str
    role: Role
    regex: str
    sources: frozenset[str]
    groups: bool = True
    """Its hits carry their named groups. False: the rule reads them only now and then and asks
    :meth:`Matcher.groups` then; its hits come with none (``{}``), so that where Hyperscan's
    verdict is exact no ``re`` runs at all (``pipeline.hits_carry_groups`` decides)."""


class Hit(NamedTuple):
    """One pattern matching one line. A NamedTuple, not a frozen dataclass: one is built per hit
    (and again from the tuples ``detector test --jobs`` workers send), at half the cost."""

    line: int
    """Index of the line in the texts passed to ``match``."""
    rule: str
    role: Role
    groups: dict[str, str]
    """Named groups that participated in the match."""


class Abandoned(Frozen):
    """Lines on which one rule's pattern ran over the budget and had no linear engine to fall
    back on: they counted as not matching for that pattern."""

    rule: str
    lines: int
    """Abandoned confirmations (one pattern on one line) since the last ``take_abandoned()``."""
    longest: int
    """Length in characters of the longest such line."""
    sample: str
    """The first 200 characters of the first such line."""
    untried: int = 0
    """Of ``lines``, those not even tried: the rule (or all rules together) had run over the
    budget ``MAX_OVERRUNS_PER_CALL`` (``MAX_OVERRUNS_PER_CALL_ALL``) times in that ``match`` call
    already."""


class PatternReport(Frozen):
    """How one pattern is matched (``detector check`` prints it)."""

    rule: str
    role: Role
    engine: str
    note: str = ""


class _Compiled:
    """One pattern ready to confirm lines. Its Pike VM program is built on first use (most
    patterns never need it, and building one costs about as much as analysing the pattern):
    at once only for a risky pattern, whose confirmation mode depends on it."""

    __slots__ = ("_pike", "analysis", "confirm", "named", "rx", "spec")

    def __init__(
        self,
        spec: PatternSpec,
        rx: re.Pattern[str],
        analysis: Analysis,
        named: bool,
        pike: tuple[PikeProgram | None, str] | None = None,
    ) -> None:
        self.spec = spec
        self.rx = rx
        self.analysis = analysis
        self.named = named
        """Groups must be extracted (named groups, not an ignore pattern, and its hits carry
        them: ``PatternSpec.groups``)."""
        self._pike = pike
        """(program or None, why not) once built."""
        self.confirm: Confirm = "re"
        if analysis.risky:
            self.confirm = "pike" if self.pike is not None else "re-capped"

    @property
    def deferred(self) -> bool:
        """It has named groups its hits leave out (``PatternSpec.groups``): ``Matcher.groups``
        extracts them when the rule reads them."""
        return not self.spec.groups and bool(self.rx.groupindex) and self.spec.role != "ignore"

    @property
    def pike(self) -> PikeProgram | None:
        """The Pike VM program (None if it cannot run the pattern: ``no_pike`` says why)."""
        if self._pike is None:
            self._pike = _build_pike(self.spec.regex, self.analysis)
        return self._pike[0]

    @property
    def no_pike(self) -> str:
        """Why the Pike VM cannot run the pattern ("" if it can)."""
        if self._pike is None:
            self._pike = _build_pike(self.spec.regex, self.analysis)
        return self._pike[1]


class _Plan(Frozen):
    """Everything needed to match one source's lines."""

    active: tuple[_Compiled, ...]
    db: Any
    """Hyperscan database, or None."""
    ids: tuple[tuple[int, int], ...]
    """Hyperscan id → (index into ``active``, variant: 0 strict, 1 loose, 2 strict+loose)."""
    always: tuple[int, ...]
    """``active`` indexes without a prefilter: candidates on every line."""
    skeleton: bool = False
    """Built with the literal skeletons (``_exprs``): there a report of a pattern that has one
    is never the answer (:func:`_answers`)."""


# variant of a Hyperscan pattern: which lines its report counts for
_BOTH, _ASCII_ONLY, _HIGH_ONLY = 0, 1, 2


class CompileCancelled(Exception):
    """:meth:`Matcher.warm` gave up at its ``cancelled`` callback (the source not built yet)."""


class _HidInfo(NamedTuple):
    """What :meth:`Matcher._scan_block` needs of one Hyperscan id's pattern."""

    at: int
    """Index into the plan's ``active``."""
    variant: int
    plain: bool
    """Exact on ASCII lines, no groups to extract: a report there is the answer."""
    compiled: _Compiled
    rule: str
    role: Role
    ignore: bool


class Matcher:
    def __init__(
        self,
        specs: Sequence[PatternSpec],
        *,
        budget_s: float = CONFIRM_BUDGET_S,
        pike_s_per_call: float = PIKE_S_PER_CALL,
        db_cache: DbCache | None = None,
    ) -> None:
        cache: CharCache = {}
        known = _stored_analyses(specs, db_cache)
        # re's FutureWarnings ("possible nested set") were shown to the user by `detector check`
        # (config.nodes.regex); compiling the same and derived patterns here must stay quiet.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # a regex shared by several rules (the same filter on several sources) is
            # analysed once: on a cold cache the analysis is most of the Python side
            analysed = dict(known)
            self._compiled = []
            for spec in specs:
                c = _compile(spec, cache, analysed.get(spec.regex))
                analysed.setdefault(spec.regex, c.analysis)
                self._compiled.append(c)
        if db_cache is not None and not known:
            _store_analyses(self._compiled, db_cache)
        self.deferred = frozenset((c.spec.rule, c.spec.role) for c in self._compiled if c.deferred)
        """(rule, role) of the patterns with named groups whose hits leave them out
        (``PatternSpec.groups``): :meth:`groups` gives them."""
        self._with_groups: dict[tuple[str, Role], _Compiled] = {}
        """Per pattern of ``deferred``, the same pattern extracting its groups (:meth:`groups`)."""
        self._plans: dict[str, _Plan] = {}
        self.db_cache = db_cache
        self.build_s: dict[str, float] = {}
        """Per source, seconds its Hyperscan database took to compile (or load from the cache)."""
        self.cached: dict[str, bool] = {}
        """Per source, whether its database came from the cache."""
        self.stage: dict[str, Stage] = {}
        """Per source, which database it matches with: ``"skeleton"`` (``warm(quick=True)``
        without the full one in the cache) until :meth:`upgrade` has built the full one and a
        ``match`` call has taken it; ``"full"`` otherwise."""
        self._upgrades: dict[str, tuple[_Plan, float, bool, Stage]] = {}
        """Full plans built by :meth:`upgrade` (another thread), not taken yet (``_plan``)."""
        self._upgrade_lock = threading.Lock()
        self._budget_s = budget_s
        self._watchdog = Watchdog(budget_s)
        self._abandoned: dict[str, Abandoned] = {}
        self._slow: dict[str, int] = {}
        self._overruns: dict[str, int] = {}
        """``re`` budget overruns in the current ``match`` call, per rule."""
        self._overrun_total = 0
        """Their sum."""
        self._pike_s = 0.0
        """Seconds spent in the Pike VM in the current ``match`` call."""
        self._pike_s_per_call = pike_s_per_call
        self._tables: dict[int, tuple[_HidInfo, ...]] = {}
        """Per plan (by id): :meth:`_block_table`."""
        self._local: dict[int, tuple[int, ...]] = {}
        """Per plan (by id; a plan lives as long as the matcher, or until ``_take_upgrades``
        drops it): :func:`_event_kind` of each of its patterns."""

    # ------------------------------------------------------------ public API

    def match(self, source: str, texts: Sequence[str]) -> list[Hit]:
        """Hits in line order, then in spec order. A rule's ``ignore`` pattern suppresses that
        rule's other hits on the same line and is itself never returned."""
        plan = self._plan(source)
        if not plan.active or not texts:
            return []
        try:
            return self._match(plan, texts)
        finally:
            self._watchdog.disarm()
            self._end_call()

    def match_block(
        self, source: str, data: bytes, texts: dict[int, str] | None = None
    ) -> tuple[int, list[Hit]]:
        """Match raw bytes holding whole lines separated by ``b"\\n"`` (a final newline is
        optional). Returns (number of lines, hits); ``Hit.line`` indexes those lines. Same result
        as ``match`` on the lines decoded with ``errors="replace"``, but only lines with
        candidate hits are ever decoded; ``texts``, if given, receives the decoded text of (at
        least) every line with a hit, by line index. The newlines are counted once, during the
        scan."""
        plan = self._plan(source)
        if not plan.active or not data:
            return count_newlines(data) + (0 if not data or data.endswith(b"\n") else 1), []
        try:
            return self._match_block(plan, data, texts)
        finally:
            self._watchdog.disarm()
            self._end_call()

    def groups(self, rule: str, role: Role, text: str) -> dict[str, str]:
        """The named groups of ``rule``'s ``role`` pattern (one of ``deferred``) on ``text``, a
        line it matched: what its hit left out. As ``match`` confirms: ``re`` under the budget,
        the Pike VM behind it, so the groups are found — except where ``re`` runs over its
        budget on a pattern too large for a Pike VM program (over its instruction cap): then {}
        (the hit stands, Hyperscan's verdict being exact; the alert it opens has no group
        labels), and the line is not recorded as abandoned, since it was not treated as not
        matching. The overruns count toward the bounds of the current batch
        (``MAX_OVERRUNS_PER_CALL``: reset when the next ``match`` call ends), so hits whose
        groups each run over cost the budget a bounded number of times per batch."""
        c = self._with_groups.get((rule, role))
        if c is None:
            [plain] = [x for x in self._compiled if (x.spec.rule, x.spec.role) == (rule, role)]
            c = _Compiled(plain.spec, plain.rx, plain.analysis, True, plain._pike)
            self._with_groups[(rule, role)] = c
        before = self._abandoned.get(rule)
        try:
            found = self._confirm(c, text)
        finally:
            self._watchdog.disarm()
        if found is None:
            if before is None:  # a match all the same: not an abandoned line
                self._abandoned.pop(rule, None)
            else:
                self._abandoned[rule] = before
            return {}
        return found

    def take_abandoned(self) -> dict[str, Abandoned]:
        """Per rule, the lines abandoned (over the budget, no linear engine) since the last call;
        they were treated as not matching. Resets the record."""
        out, self._abandoned = self._abandoned, {}
        return out

    def take_slow(self) -> dict[str, int]:
        """Per rule, the ``re`` confirmations that ran over the budget and were answered by the
        Pike VM instead (same result) since the last call. Resets the counts."""
        out, self._slow = self._slow, {}
        return out

    def warm(
        self,
        sources: Sequence[str],
        workers: int = 1,
        cancelled: Callable[[], bool] | None = None,
        *,
        quick: bool = False,
    ) -> None:
        """Build the per-source databases of ``sources`` now (they are otherwise built on the
        first ``match``), ``workers`` of them at a time (Hyperscan compiles without the GIL).
        Safe off the main thread, on a ``Matcher`` no other thread uses yet: the service builds
        a new one this way while the old one keeps matching. ``cancelled`` is asked before each
        source: once it says True, :class:`CompileCancelled` is raised as soon as the databases
        being built finish (the agent stopping does not wait for the whole rule set).

        ``quick`` (the agent's start): a source whose full database is not in the cache gets
        the literal skeleton database instead (``_exprs``: ~1/4 of the compile, the same
        matches, a slower scan; ``stage`` says ``"skeleton"``; not cached) and
        :meth:`upgrade` builds the full one later; a cached full database is always taken."""
        todo = [s for s in dict.fromkeys(sources) if s not in self._plans]
        build = functools.partial(self._build_source, cancelled=cancelled, quick=quick)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            built = self._build_all(build, todo, workers)
        for source, (plan, seconds, hit, stage) in zip(todo, built, strict=True):
            self._plans[source] = plan
            self.build_s[source] = seconds
            self.cached[source] = hit
            self.stage[source] = stage

    def upgrade(self, workers: int = 1, cancelled: Callable[[], bool] | None = None) -> list[str]:
        """Build the full database of every source that matches with its skeleton (``stage``),
        in the calling thread, meant to be another one than the matching thread, which keeps
        matching meanwhile: each ``match`` call takes the full plans built by then, between two
        calls (everything else of the matcher, its counts of abandoned and slow lines included,
        stays). The full databases go to the cache. Returns the sources built;
        ``cancelled``: as for :meth:`warm` (what was built before it said True is kept)."""
        todo = [s for s, stage in list(self.stage.items()) if stage == "skeleton"]

        def one(source: str) -> None:
            result = self._build_source(source, cancelled)
            with self._upgrade_lock:
                self._upgrades[source] = result

        # no warnings filter here: catch_warnings is not thread-safe, and building a plan from
        # the analyses compiles no Python regex
        self._build_all(one, todo, workers)
        return todo

    @staticmethod
    def _build_all(build: Callable[[str], Any], todo: list[str], workers: int) -> list[Any]:
        """``[build(s) for s in todo]``, ``workers`` at a time, as ``ThreadPoolExecutor.map``
        does it: every source is tried, then the error of the first that failed is raised. Plain
        threads: ``concurrent.futures`` imports ``logging``, ~4 ms of every ``detector check``
        and ``test`` of a config with two sources."""
        if workers <= 1 or len(todo) <= 1:
            return [build(source) for source in todo]
        results: list[Any] = [None] * len(todo)
        failed: dict[int, BaseException] = {}
        jobs = iter(enumerate(todo))
        take = threading.Lock()

        def work() -> None:
            while True:
                with take:
                    job = next(jobs, None)
                if job is None:
                    return
                try:
                    results[job[0]] = build(job[1])
                except BaseException as e:  # raised below, in the caller's thread
                    failed[job[0]] = e

        threads = [threading.Thread(target=work) for _ in range(min(workers, len(todo)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            raise failed[min(failed)]
        return results

    def _build_source(
        self, source: str, cancelled: Callable[[], bool] | None = None, quick: bool = False
    ) -> tuple[_Plan, float, bool, Stage]:
        if cancelled is not None and cancelled():
            raise CompileCancelled(source)
        started = perf_counter()
        hit: list[bool] = []
        active = tuple(c for c in self._compiled if source in c.spec.sources)
        stage: Stage = "full"
        if quick and _has_skeleton(active):
            plan = _cached_full_plan(active, self.db_cache, hit)
            if plan is None:
                # not cached: needed only until the full one is, and the cache's 64 entries
                # are better spent on full databases (of this and other rule sets)
                plan = _build_plan(active, None, hit, skeleton=True)
                stage = "skeleton"
        else:
            plan = _build_plan(active, self.db_cache, hit)
        return plan, perf_counter() - started, bool(hit), stage

    def report(self) -> list[PatternReport]:
        return [_report(c, self._budget_s) for c in self._compiled]

    # ------------------------------------------------------------ internals

    def _match(self, plan: _Plan, texts: Sequence[str]) -> list[Hit]:
        if plan.db is None:
            return self._slow_lines(plan, texts, range(len(texts)))
        joined = "\n".join(texts)
        multiline: list[int] = []
        if joined.count("\n") != len(texts) - 1:
            multiline = [i for i, t in enumerate(texts) if "\n" in t]
            bad = set(multiline)
            joined = "\n".join("" if i in bad else t for i, t in enumerate(texts))
        # A final newline: Hyperscan does not report an empty match at the very end of data.
        data = joined.encode("utf-8", "surrogatepass") + b"\n"
        cands, _ = self._scan(plan, data, None)
        hits = self._finish(plan, cands, lambda i: texts[i], len(texts), set(multiline))
        if multiline:
            hits.extend(self._event_lines(plan, texts, multiline))
            hits.sort(key=lambda h: h.line)  # stable: spec order kept within a line
        return hits

    def _match_block(
        self, plan: _Plan, data: bytes, line_text: dict[int, str] | None
    ) -> tuple[int, list[Hit]]:
        if plan.db is None or plan.always:
            nlines = count_newlines(data) + (0 if data.endswith(b"\n") else 1)
            every = data.decode("utf-8", "replace").split("\n")[:nlines]
            hits = self._match(plan, every)
            if line_text is not None:
                for h in hits:
                    line_text[h.line] = every[h.line]
            return nlines, hits

        if not data.endswith(b"\n"):
            data += b"\n"  # see match()
        return self._scan_block(plan, data, line_text)

    def _plan(self, source: str) -> _Plan:
        if self._upgrades:
            self._take_upgrades()
        plan = self._plans.get(source)
        if plan is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                plan, self.build_s[source], self.cached[source], self.stage[source] = (
                    self._build_source(source)
                )
            self._plans[source] = plan
        return plan

    def _take_upgrades(self) -> None:
        """Switch to the full plans :meth:`upgrade` built (on the matching thread, between two
        ``match`` calls)."""
        with self._upgrade_lock:
            upgrades, self._upgrades = self._upgrades, {}
        for source, (plan, seconds, hit, stage) in upgrades.items():
            old = self._plans.get(source)
            if old is not None:
                self._local.pop(id(old), None)  # keyed by id: the old plan is dropped
                self._tables.pop(id(old), None)
            self._plans[source] = plan
            self.build_s[source] = seconds
            self.cached[source] = hit
            self.stage[source] = stage

    def _scan(
        self,
        plan: _Plan,
        data: bytes,
        line_text: dict[int, str] | None,
        *,
        count_lines: bool = False,
    ) -> tuple[dict[int, dict[int, bool]], int]:
        """One Hyperscan pass over ``data`` (whole lines, the last one ending in a newline):
        line → {active index: hyperscan's verdict is exact}, and the number of lines if
        ``count_lines`` (else 0). Newlines are counted once, between events, on the way.
        ``line_text``, if given, receives the decoded text of every reported line.

        The events are sorted first: Hyperscan does not report in offset order. A pattern with
        a ``$`` inside an alternation (no ``[^\\n]*$`` suffix, see :func:`_hs_expr`) reports
        where a branch ends, mid-line, or at a line's start when one matches empty, and a ``$``
        match is known (and reported) only once the ``"\\n"`` after it is read: after such an
        empty match at the next line's start."""
        events: list[tuple[int, int]] = []
        append = events.append

        def on_match(hid: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            append((to, hid))

        plan.db.scan(data, match_event_handler=on_match)
        events.sort()
        cands: dict[int, dict[int, bool]] = {}
        ids = plan.ids
        exact = [_answers(c, plan) for c in plan.active]
        end = len(data)
        line = 0
        pos = 0
        all_ascii = is_ascii = data.isascii()  # one fast pass; then no per-line check
        count = data.count  # short spans; count_newlines the long ones (newlines.py)
        find = data.find
        line_end = -1  # offset of the newline ending the current line
        per: dict[int, bool] = {}
        for to, hid in events:
            if to > line_end:  # a line not seen yet (a later match on it may end mid-line)
                if to == end:  # an empty match after the final newline: no line of the data
                    break
                line += count(b"\n", pos, to) if to - pos < SHORT else count_newlines(data, pos, to)
                pos = to
                start = data.rfind(b"\n", 0, to) + 1
                line_end = find(b"\n", to)
                if not all_ascii:
                    is_ascii = data[start:line_end].isascii()
                if line_text is not None:
                    line_text[line] = data[start:line_end].decode("utf-8", "replace")
                per = cands[line] = {}  # sorted: each line comes once
            index, variant = ids[hid]
            if variant == _ASCII_ONLY and not is_ascii:
                continue
            if variant == _HIGH_ONLY and is_ascii:
                continue
            per[index] = is_ascii and exact[index]
        return cands, (line + count_newlines(data, pos) if count_lines else 0)

    def _block_table(self, plan: _Plan) -> tuple[_HidInfo, ...]:
        """Per Hyperscan id of ``plan``, what :meth:`_scan_block` needs of its pattern, looked
        up once per plan (plans live as long as the matcher, or until ``_take_upgrades`` drops
        them: by id, so their entries go with them)."""
        table = self._tables.get(id(plan))
        if table is None:
            rows = []
            for index, variant in plan.ids:
                c = plan.active[index]
                rows.append(
                    _HidInfo(
                        index,
                        variant,
                        _answers(c, plan) and not c.named,
                        c,
                        c.spec.rule,
                        c.spec.role,
                        c.spec.role == "ignore",
                    )
                )
            table = self._tables[id(plan)] = tuple(rows)
        return table

    def _scan_block(
        self, plan: _Plan, data: bytes, line_text: dict[int, str] | None
    ) -> tuple[int, list[Hit]]:
        """``match_block`` with a database and no ``always`` pattern: one Hyperscan pass over
        ``data`` (whole lines, the last one ending in a newline), then one walk over the sorted
        events: the line of each (newlines counted once, between events), ``re`` only where
        Hyperscan's verdict is not exact there or groups are wanted, and the hits. Only lines
        that need ``re`` or have a hit are decoded (into ``line_text``, if given). Same result
        as :meth:`_scan` then :meth:`_finish`, which :meth:`match` uses (see :meth:`_scan` on
        the order of the events)."""
        events: list[tuple[int, int]] = []
        append = events.append

        def on_match(hid: int, _from: int, to: int, _flags: int, _ctx: object) -> None:
            append((to, hid))

        plan.db.scan(data, match_event_handler=on_match)
        count = data.count  # short spans; count_newlines the long ones (newlines.py)
        if not events:
            return count_newlines(data), []
        events.sort()
        table = self._block_table(plan)
        hits: list[Hit] = []
        hit = hits.append
        end = len(data)
        find = data.find
        rfind = data.rfind
        all_ascii = is_ascii = data.isascii()  # one fast pass; then no per-line check
        confirm = self._confirm_fast
        new_hit = tuple.__new__
        line = pos = 0
        k, n = 0, len(events)
        while k < n:
            to, hid = events[k]
            k += 1
            if to == end:  # an empty match after the final newline: no line of the data
                break
            line += count(b"\n", pos, to) if to - pos < SHORT else count_newlines(data, pos, to)
            pos = to
            # a report ends at its line's newline (the [^\n]*$ suffix), or before it
            line_end = to if data[to] == 10 else find(b"\n", to)
            start = -1
            if not all_ascii:
                start = rfind(b"\n", 0, to) + 1
                is_ascii = data[start:line_end].isascii()
            if k < n and events[k][0] <= line_end:
                # more than one report on this line: confirm in spec order, ignore applies
                per: dict[int, _HidInfo] = {}
                while True:
                    info = table[hid]
                    if info[1] == _BOTH or (info[1] == _ASCII_ONLY) == is_ascii:
                        per[info[0]] = info
                    if k == n or events[k][0] > line_end:
                        break
                    hid = events[k][1]
                    k += 1
                if not per:
                    continue
                if start < 0:
                    start = rfind(b"\n", 0, to) + 1
                text = data[start:line_end].decode("utf-8", "replace")
                found: list[Hit] = []
                ignored: set[str] = set()
                for at in sorted(per):
                    _at, _v, plain, c, rule, role, ignore = per[at]
                    groups = {} if is_ascii and plain else confirm(c, text)
                    if groups is None:
                        continue
                    if ignore:
                        ignored.add(rule)
                    else:
                        found.append(new_hit(Hit, (line, rule, role, groups)))
                if ignored:
                    found = [h for h in found if h.rule not in ignored]
                if found:
                    if line_text is not None:
                        line_text[line] = text
                    hits.extend(found)
                continue
            _at, variant, plain, c, rule, role, ignore = table[hid]
            if variant != _BOTH and (variant == _ASCII_ONLY) != is_ascii:
                continue
            if is_ascii and plain:  # Hyperscan's verdict is the answer: no re
                if ignore:
                    continue
                if line_text is not None:
                    if start < 0:
                        start = rfind(b"\n", 0, to) + 1
                    line_text[line] = data[start:line_end].decode("utf-8", "replace")
                hit(new_hit(Hit, (line, rule, role, {})))
                continue
            if start < 0:
                start = rfind(b"\n", 0, to) + 1
            text = data[start:line_end].decode("utf-8", "replace")
            groups = confirm(c, text)
            if groups is None or ignore:
                continue
            if line_text is not None:
                line_text[line] = text
            hit(new_hit(Hit, (line, rule, role, groups)))
        return line + count_newlines(data, pos), hits

    def _confirm_fast(self, c: _Compiled, text: str) -> dict[str, str] | None:
        """:meth:`_confirm`, with its common case (the budget armed, no overruns in this call)
        first and inlined: this runs once per candidate line."""
        watchdog = self._watchdog
        if self._overruns or not (watchdog.state == ARMED or watchdog.arm()):
            return self._confirm(c, text)  # the general path: caps, overruns
        try:  # watchdog.search(c.rx, text), inlined
            watchdog.started = perf_counter()
            m = c.rx.search(text)
            watchdog.started = 0.0
        except BudgetExceeded:
            return self._over_budget(c, text)
        if m is None:
            return None
        return _fields_of(m) if c.named else {}

    def _finish(
        self,
        plan: _Plan,
        cands: dict[int, dict[int, bool]],
        text_of: Callable[[int], str],
        nlines: int,
        skip: set[int],
    ) -> list[Hit]:
        hits: list[Hit] = []
        if plan.always:
            for i in range(nlines):
                if i not in skip:
                    per = cands.setdefault(i, {})
                    for index in plan.always:
                        per[index] = False
        active = plan.active
        extend = hits.extend
        for i in sorted(cands):  # in order already, but for the lines of ``always``
            if skip and i in skip:
                continue
            per = cands[i]
            if len(per) == 1:  # the common case, without the general _line's set and sort
                ((index, exact),) = per.items()
                c = active[index]
                groups: dict[str, str] | None = {}
                if not exact or c.named:
                    groups = self._confirm(c, text_of(i))
                if groups is not None and c.spec.role != "ignore":
                    hits.append(Hit(i, c.spec.rule, c.spec.role, groups))
                continue
            extend(self._line(plan, i, text_of(i), per))
        return hits

    def _slow_lines(
        self, plan: _Plan, texts: Sequence[str], lines: Sequence[int] | range
    ) -> list[Hit]:
        everything = dict.fromkeys(range(len(plan.active)), False)
        hits: list[Hit] = []
        for i in lines:
            hits.extend(self._line(plan, i, texts[i], everything))
        return hits

    def _event_lines(self, plan: _Plan, texts: Sequence[str], which: Sequence[int]) -> list[Hit]:
        """The hits of the texts ``which`` that hold ``"\\n"`` (multiline events, journald
        messages): a pattern whose match can never take in a ``"\\n"`` (:func:`_line_local`)
        matches such a text only inside one of its lines, where its Hyperscan pattern (``^`` and
        ``$`` at every line, lookarounds dropped) finds a superset: those texts are scanned as
        one buffer, and ``re`` confirms only the texts it reports (its exact verdict on a line
        holds for the text only without ``^``/``$``, which are the text's: :func:`_event_kind`).
        Other patterns run ``re`` on every such text, as :meth:`_slow_lines` does."""
        kinds = self._local.get(id(plan))
        if kinds is None:
            kinds = self._local[id(plan)] = tuple(
                _event_kind(c.spec.regex) if plan.db is not None and i not in plan.always else 0
                for i, c in enumerate(plan.active)
            )
        local = [k > 0 for k in kinds]
        if not any(local):
            return self._slow_lines(plan, texts, which)
        always = {i: False for i, ok in enumerate(local) if not ok}
        firsts: list[int] = []  # the buffer's line index of each text's first line
        n = 0
        for i in which:
            firsts.append(n)
            n += texts[i].count("\n") + 1
        joined = "\n".join([texts[i] for i in which])
        data = joined.encode("utf-8", "surrogatepass") + b"\n"  # see _match
        cands, _ = self._scan(plan, data, None)
        per_text: dict[int, dict[int, bool]] = {}
        for line, found in cands.items():
            got = per_text.setdefault(bisect_right(firsts, line) - 1, {})
            for index, exact in found.items():
                if local[index]:
                    # exact on the line: exact on the text, for a pattern without ^ $ \A \Z
                    got[index] = got.get(index, False) or (exact and kinds[index] == 2)
        hits: list[Hit] = []
        for k, i in enumerate(which):
            reported = per_text.get(k)
            if reported is None and not always:
                continue
            todo = {**reported, **always} if reported else always
            hits.extend(self._line(plan, i, texts[i], todo))
        return hits

    def _line(self, plan: _Plan, i: int, text: str, cands: dict[int, bool]) -> list[Hit]:
        found: list[Hit] = []
        ignored: set[str] = set()
        for index in sorted(cands):
            c = plan.active[index]
            groups: dict[str, str] | None = {}
            if not cands[index] or c.named:
                groups = self._confirm(c, text)
            if groups is None:
                continue
            if c.spec.role == "ignore":
                ignored.add(c.spec.rule)
            else:
                found.append(Hit(i, c.spec.rule, c.spec.role, groups))
        if ignored:
            return [h for h in found if h.rule not in ignored]
        return found

    def _confirm(self, c: _Compiled, text: str) -> dict[str, str] | None:
        """Does the pattern match this line (Python semantics)? Its named groups if so."""
        overruns = self._overruns.get(c.spec.rule, 0) if self._overruns else 0
        if overruns and (
            overruns >= MAX_OVERRUNS_PER_CALL or self._overrun_total >= MAX_OVERRUNS_PER_CALL_ALL
        ):
            # this call's lines keep running this rule's re over the budget: stop trying re (a
            # rule that has not run over in this call keeps its re, whatever the others do)
            if c.pike is not None:
                return self._pike(c, text)
            self._abandon(c.spec.rule, text, untried=True)
            return None
        watchdog = self._watchdog
        if watchdog.state == ARMED or watchdog.arm():
            # Risky patterns too: re is ~1000x faster than the Pike VM on ordinary lines, and the
            # budget hands the pathological ones over to the Pike VM.
            try:  # watchdog.search(c.rx, text), inlined: this runs once per confirmation
                watchdog.started = perf_counter()
                m = c.rx.search(text)
                watchdog.started = 0.0
            except BudgetExceeded:
                return self._over_budget(c, text)
        else:
            # Not the main thread: no budget, the static caps instead (module docstring).
            if c.confirm == "pike":
                return self._pike(c, text)
            if c.pike is not None and len(text) > RE_MAX_CHARS:
                return self._pike(c, text)
            if c.confirm == "re-capped" and len(text) > RISKY_RE_MAX_CHARS:
                return None
            m = c.rx.search(text)
        if m is None:
            return None
        return _fields_of(m) if c.named else {}

    def _over_budget(self, c: _Compiled, text: str) -> dict[str, str] | None:
        rule = c.spec.rule
        self._overruns[rule] = self._overruns.get(rule, 0) + 1
        self._overrun_total += 1
        if c.pike is not None:
            return self._pike(c, text, slow=True)
        self._abandon(rule, text, untried=False)
        return None

    def _pike(self, c: _Compiled, text: str, *, slow: bool = False) -> dict[str, str] | None:
        """``c.pike.search(text)``, unless this call already spent ``PIKE_S_PER_CALL`` in the
        Pike VM: then the line is abandoned untried (and recorded). ``slow``: it answers for an
        ``re`` search that ran over the budget (counted for ``take_slow()``)."""
        assert c.pike is not None
        if self._pike_s >= self._pike_s_per_call:
            self._abandon(c.spec.rule, text, untried=True)
            return None
        if slow:
            self._slow[c.spec.rule] = self._slow.get(c.spec.rule, 0) + 1
        started = perf_counter()
        try:
            return c.pike.search(text)
        finally:
            self._pike_s += perf_counter() - started

    def _end_call(self) -> None:
        """Forget the per-call bounds' accounting (at the end of every ``match`` call)."""
        if self._overruns:
            self._overruns.clear()
            self._overrun_total = 0
        self._pike_s = 0.0

    def _abandon(self, rule: str, text: str, *, untried: bool) -> None:
        old = self._abandoned.get(rule)
        if old is None:
            self._abandoned[rule] = Abandoned(rule, 1, len(text), text[:200], int(untried))
        else:
            self._abandoned[rule] = Abandoned(
                rule,
                old.lines + 1,
                max(old.longest, len(text)),
                old.sample,
                old.untried + untried,
            )


class RuleTiming(Frozen):
    """What a rule's patterns cost (``detector check --timings``)."""

    rule: str
    compile_s: float
    """Its patterns alone: analysis, ``re``, the Pike VM and the Hyperscan database (no cache)."""
    match_s: float | None
    """Its patterns alone over the sample lines (each line through each of its sources), or None
    without a sample."""
    matched: int
    """Sample lines it matched (or ignored)."""


def rule_timings(specs: Sequence[PatternSpec], sample: Sequence[str] | None) -> list[RuleTiming]:
    """What each rule costs, measured one rule at a time (``detector check --timings``): seconds
    to compile its patterns, and to match ``sample`` with them. Slowest to compile first."""
    by_rule: dict[str, list[PatternSpec]] = {}
    for spec in specs:
        by_rule.setdefault(spec.rule, []).append(spec)
    out: list[RuleTiming] = []
    for rule, mine in by_rule.items():
        sources = sorted(set().union(*(s.sources for s in mine)))
        started = perf_counter()
        matcher = Matcher(mine)
        matcher.warm(sources)
        compile_s = perf_counter() - started
        match_s: float | None = None
        matched = 0
        if sample is not None:
            started = perf_counter()
            for source in sources:
                matched += len({h.line for h in matcher.match(source, sample)})
            match_s = perf_counter() - started
        out.append(RuleTiming(rule, compile_s, match_s, matched))
    out.sort(key=lambda t: (-t.compile_s, t.rule))
    return out


def _analyses_key(regexes: Sequence[str]) -> str:
    """Cache key of the analyses of ``regexes``: they depend on the regexes, on Python's
    ``re`` parser (its version) and on the translator's code (its source, hashed)."""
    h = sha256(f"analysis {DB_FORMAT} {sys.version}\0".encode())
    h.update(Path(_translate.__file__).read_bytes())
    for r in regexes:
        h.update(b"\0" + r.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _stored_analyses(specs: Sequence[PatternSpec], db_cache: DbCache | None) -> dict[str, Analysis]:
    """The analyses of ``specs``' regexes from the cache ({} when absent or unusable: then they
    are analysed again, and stored)."""
    if db_cache is None or _translate.PARSER_PROBLEM or not specs:
        return {}
    regexes = sorted({s.regex for s in specs})
    try:
        key = _analyses_key(regexes)
    except OSError:  # pragma: no cover - the translator's own source unreadable
        return {}
    out: dict[str, Analysis] = {}

    def parse(payload: bytes) -> None:
        rows = json.loads(payload)
        for regex, hs, exact, loose, risky, pike_ok, reasons, literals, skeleton in rows:
            if not (
                isinstance(regex, str)
                and isinstance(reasons, list)
                and (literals is None or isinstance(literals, list))
            ):
                raise ValueError("not an analysis")
            out[regex] = Analysis(
                hs,
                bool(exact),
                loose,
                bool(risky),
                bool(pike_ok),
                tuple(reasons),
                None if literals is None else tuple(literals),
                skeleton,
            )
        if set(out) != set(regexes):
            raise ValueError("not the analyses of these patterns")

    if db_cache.get_bytes(key, verify=parse) is None:
        return {}
    return out


def _store_analyses(compiled: Sequence[_Compiled], db_cache: DbCache) -> None:
    if _translate.PARSER_PROBLEM or not compiled:
        return
    by_regex = {c.spec.regex: c.analysis for c in compiled}
    rows = [
        [
            r,
            a.hs,
            a.exact,
            a.hs_loose,
            a.risky,
            a.pike_ok,
            list(a.reasons),
            None if a.literals is None else list(a.literals),
            a.skeleton,
        ]
        for r, a in sorted(by_regex.items())
    ]
    with contextlib.suppress(OSError):
        db_cache.put_bytes(_analyses_key(sorted(by_regex)), json.dumps(rows).encode())


def _compile(spec: PatternSpec, cache: CharCache, known: Analysis | None = None) -> _Compiled:
    rx = re.compile(spec.regex)
    named = bool(rx.groupindex) and spec.role != "ignore" and spec.groups
    problem = _translate.PARSER_PROBLEM
    if not problem:
        try:
            return _compile_analysed(spec, rx, named, cache, known)
        except Exception as exc:  # a parse tree the walkers do not expect: match without them
            problem = f"pattern analysis failed ({type(exc).__name__}: {exc})"
    # re alone, under the budget; "re-capped" off the main thread (risk unknown)
    analysis = unanalysed(problem)
    return _Compiled(spec, rx, analysis, named, (None, "pattern not analysed"))


def _compile_analysed(
    spec: PatternSpec,
    rx: re.Pattern[str],
    named: bool,
    cache: CharCache,
    known: Analysis | None = None,
) -> _Compiled:
    analysis = known if known is not None else analyse(spec.regex, cache)
    return _Compiled(spec, rx, analysis, named)


def _build_pike(regex: str, analysis: Analysis) -> tuple[PikeProgram | None, str]:
    """The Pike VM program of ``regex`` (analysed as ``analysis``), or None and why not."""
    if _translate.PARSER_PROBLEM:
        return None, "pattern not analysed"
    try:
        # compile_pike stops at the first construct it cannot run: that names the reason
        pike = compile_pike(regex)
    except PikeUnsupported as exc:
        return None, _PIKE_UNSUPPORTED.get(str(exc), str(exc))
    except Exception as exc:  # a parse tree the builder does not expect: no Pike VM
        return None, f"Pike VM failed ({type(exc).__name__}: {exc})"
    if not analysis.pike_ok:  # pragma: no cover - the two agree
        return None, "unsupported construct"
    return pike, ""


def _event_kind(regex: str) -> int:
    """0: ``regex`` may take in a ``"\\n"`` (or unsure); 1: it cannot (:func:`_line_local`);
    2: nor has it ``^``, ``$``, ``\\A`` or ``\\Z`` (``(?m)`` or not): then it matches a text
    exactly where it matches one of the text's lines on its own (``\\b`` sees a ``"\\n"`` as it
    sees a line's edge), and Hyperscan's exact verdict on a line holds for the text."""
    if not _line_local(regex):
        return 0
    try:
        return 1 if _has_text_anchor(list(_translate.parse(regex))) else 2
    except Exception:
        return 1


_TEXT_ANCHORS = frozenset({"AT_BEGINNING", "AT_BEGINNING_STRING", "AT_END", "AT_END_STRING"})


def _has_text_anchor(items: Any) -> bool:
    for op, av in items:
        name = str(op)
        if name == "AT":
            if str(av) in _TEXT_ANCHORS:
                return True
        elif name == "SUBPATTERN":
            if _has_text_anchor(av[3]):
                return True
        elif name == "BRANCH":
            if any(_has_text_anchor(alt) for alt in av[1]):
                return True
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if _has_text_anchor(av[2]):
                return True
        elif name == "ATOMIC_GROUP":
            if _has_text_anchor(av):
                return True
        elif name == "GROUPREF_EXISTS":
            if _has_text_anchor(av[1]) or _has_text_anchor(av[2] or []):
                return True
        elif name in ("ASSERT", "ASSERT_NOT"):
            if _has_text_anchor(av[1]):
                return True
        elif name not in ("LITERAL", "NOT_LITERAL", "ANY", "IN", "GROUPREF"):
            return True  # unknown: as if it had one
    return False


def _line_local(regex: str) -> bool:
    """No match of ``regex`` can take in a ``"\\n"``: none of its characters, classes or ``.``
    (with its flags) matches one (lookarounds do not count: they take nothing in, and the
    Hyperscan pattern drops them). False when unsure."""
    try:
        tree = _translate.parse(regex)
        return not _may_take_newline(list(tree), tree.state.flags)
    except Exception:  # a tree the walk does not expect: the safe answer
        return False


def _may_take_newline(items: Any, flags: int) -> bool:
    for op, av in items:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            src = _translate.char_source(op, av)
            if re.compile(src, flags & _translate._FLAG_MASK).match("\n"):
                return True
        elif name == "SUBPATTERN":
            _gid, add, delete, sub = av
            if _may_take_newline(sub, _translate.effective_flags(flags, add, delete)):
                return True
        elif name == "BRANCH":
            if any(_may_take_newline(alt, flags) for alt in av[1]):
                return True
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if _may_take_newline(av[2], flags):
                return True
        elif name == "ATOMIC_GROUP":
            if _may_take_newline(av, flags):
                return True
        elif name == "GROUPREF_EXISTS":
            _g, yes, no = av
            if _may_take_newline(yes, flags) or _may_take_newline(no or [], flags):
                return True
        elif name not in ("AT", "GROUPREF", "ASSERT", "ASSERT_NOT"):
            return True  # unknown: it might
    return False


def _hs_flags() -> int:
    assert _hs is not None
    return int(_hs.HS_FLAG_MULTILINE | _hs.HS_FLAG_ALLOWEMPTY)


def _hs_expr(pattern: str) -> bytes:
    """Make every match end at the end of its line, so a pattern reports once per line.

    Hyperscan refuses an end anchor followed by more pattern; a ``$`` in the translation (the
    only unescaped ``$`` it emits) already pins matches to the line end."""
    if "$" in pattern:
        return ("(?:" + pattern + ")").encode("ascii")
    return ("(?:" + pattern + r")[^\n]*$").encode("ascii")


def _literal_prefilter(c: _Compiled) -> bool:
    """Does Hyperscan look for the pattern's required literals rather than its translation?

    Where its verdict is not needed as the answer: ``re`` confirms every candidate line of a
    pattern that is not exact (lookarounds, backreferences…) or whose named groups are needed
    (``_finish``/``_line``: ``not exact or named``). There any superset of the lines it matches
    will do, and a handful of literals compiles in a fraction of the time of the full
    translation (~25 ms for a fail2ban-style pattern). So it does in a skeleton plan for a
    pattern with named groups that its hits need not carry (``PatternSpec.groups``): ``re``
    confirms it there (:func:`_answers`), its exact translation takes over with the full plan.
    Patterns whose required literals are shorter than ``translate.MIN_LITERAL`` (common on
    every line) keep the translation."""
    a = c.analysis
    captures = bool(c.rx.groupindex) and c.spec.role != "ignore"
    return a.literals is not None and a.skeleton is not None and (not a.exact or captures)


def _answers(c: _Compiled, plan: _Plan) -> bool:
    """Is a report of ``c`` on an ASCII line in ``plan`` the answer? Where its translation is
    exact and Hyperscan looks for it, not for its literal skeleton (``_literal_prefilter``)."""
    return c.analysis.exact and not (plan.skeleton and _literal_prefilter(c))


def _exprs(
    active: tuple[_Compiled, ...], skeleton: bool
) -> tuple[list[bytes], list[tuple[int, int]], list[int]]:
    """The Hyperscan expressions of a source's patterns, their ids (``_Plan.ids``) and the
    patterns without one (``_Plan.always``); ``skeleton``: the literal skeleton of the patterns
    that have one (``_literal_prefilter``) instead of their translation (quicker to compile,
    slower to scan: ``Matcher.warm``'s ``quick``). A pattern without a translation takes its
    skeleton either way (better than every line)."""
    exprs: list[bytes] = []
    ids: list[tuple[int, int]] = []
    always: list[int] = []
    for index, c in enumerate(active):
        a = c.analysis
        if _literal_prefilter(c) and (skeleton or a.hs is None):
            assert a.skeleton is not None
            exprs.append(_hs_expr(a.skeleton))
            ids.append((index, _BOTH))
            continue
        if a.hs is None:
            always.append(index)
            continue
        if a.hs_loose is None:
            exprs.append(_hs_expr(a.hs))
            ids.append((index, _BOTH))
        else:
            exprs.append(_hs_expr(a.hs))
            ids.append((index, _ASCII_ONLY))
            exprs.append(_hs_expr(a.hs_loose))
            ids.append((index, _HIGH_ONLY))
    return exprs, ids, always


def _has_skeleton(active: Sequence[_Compiled]) -> bool:
    """Does the skeleton plan of these patterns differ from the full one?"""
    return _hs is not None and any(
        _literal_prefilter(c) and c.analysis.hs is not None for c in active
    )


def _cached_full_plan(
    active: tuple[_Compiled, ...], db_cache: DbCache | None, hit: list[bool]
) -> _Plan | None:
    """The full plan of these patterns if ``db_cache`` holds its database (``hit`` then gets
    a True), without compiling anything; else None. (A set Hyperscan rejects part of is stored
    without the rejected patterns: not found here, then built again.)"""
    if db_cache is None or _hs is None:
        return None
    exprs, ids, always = _exprs(active, skeleton=False)
    if not exprs:
        return None
    db = db_cache.get(cache_key(exprs), int(_hs.HS_MODE_BLOCK))
    if db is None:
        return None
    hit.append(True)
    return _Plan(active, db, tuple(ids), tuple(sorted(always)))


def _build_plan(
    active: tuple[_Compiled, ...],
    db_cache: DbCache | None = None,
    hit: list[bool] | None = None,
    *,
    skeleton: bool = False,
) -> _Plan:
    """The plan of one source; its database from ``db_cache`` when there (``hit`` then gets a
    True), else compiled (and stored there). ``skeleton``: the quick one (``_exprs``)."""
    if _hs is None or not active:
        return _Plan(active, None, (), tuple(range(len(active))))
    exprs, ids, always = _exprs(active, skeleton)
    db = _cached_db(exprs, db_cache, hit) if exprs else None
    if db is None and exprs:
        # Find the patterns Hyperscan rejects; they run without a prefilter.
        keep = [k for k, e in enumerate(exprs) if _compile_db([e]) is not None]
        rejected = {ids[k][0] for k in range(len(exprs)) if k not in keep}
        always.extend(sorted(rejected - set(always)))
        kept = [(exprs[k], ids[k]) for k in keep if ids[k][0] not in rejected]
        exprs = [e for e, _ in kept]
        ids = [i for _, i in kept]
        db = _cached_db(exprs, db_cache, hit) if exprs else None
    if db is None:
        return _Plan(active, None, (), tuple(range(len(active))))
    return _Plan(active, db, tuple(ids), tuple(sorted(always)), skeleton)


_FEATURES: list[str] = []
_CACHES: dict[Path, DbCache] = {}
_CACHES_LOCK = threading.Lock()


def open_db_cache(directory: Path | None) -> DbCache | None:
    """The process's ``DbCache`` on ``directory`` (one per directory, so that its warnings are
    said once however often the rules are reloaded); None without a directory or without the
    hyperscan wheel."""
    if directory is None or _hs is None:
        return None
    with _CACHES_LOCK:  # compile threads may open it at once: still one instance
        cache = _CACHES.get(directory)
        if cache is None:
            cache = _CACHES[directory] = DbCache(directory, _hs)
        return cache


def cache_key(exprs: Sequence[bytes]) -> str:
    """The ``dbcache`` key of the database of ``exprs`` (compiled the way ``_compile_db`` does)."""
    assert _hs is not None
    if not _FEATURES:
        _FEATURES.append(cpu_features())
    n = len(exprs)
    engine = f"{DB_FORMAT} hyperscan {getattr(_hs, '__version__', '?')}"
    return db_key(exprs, [_hs_flags()] * n, int(_hs.HS_MODE_BLOCK), engine, _FEATURES[0])


def _cached_db(exprs: list[bytes], db_cache: DbCache | None, hit: list[bool] | None) -> Any:
    """``_compile_db(exprs)``, through the cache when there is one. A set Hyperscan rejects is
    not cached (the caller then finds the culprits)."""
    if db_cache is None:
        return _compile_db(exprs)
    key = cache_key(exprs)
    db = db_cache.get(key, int(_hs.HS_MODE_BLOCK))
    if db is not None:
        if hit is not None:
            hit.append(True)
        return db
    db = _compile_db(exprs)
    if db is not None:
        db_cache.put(key, db)
    return db


def _compile_db(exprs: list[bytes]) -> Any:
    assert _hs is not None
    db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
    try:
        db.compile(
            expressions=exprs,
            ids=list(range(len(exprs))),
            elements=len(exprs),
            flags=[_hs_flags()] * len(exprs),
        )
    except _hs.error:
        return None
    return db


def _report(c: _Compiled, budget_s: float) -> PatternReport:
    a = c.analysis
    notes = list(a.reasons)
    skeleton = ""
    if _hs is not None and _literal_prefilter(c):
        assert a.literals is not None
        shown = ", ".join(repr(_translate.literal_text(x)) for x in a.literals[:4])
        more = f" and {len(a.literals) - 4} more" if len(a.literals) > 4 else ""
        skeleton = f"hyperscan literal skeleton ({len(a.literals)} required literals)"
        seen = f"its literals in order, holding one of {shown}{more}"
        if a.hs is not None:
            notes.insert(
                0,
                f"on a start without its database in the cache, a {skeleton} finds its "
                f"candidate lines ({seen}) until the full database is compiled in the background",
            )
        else:
            notes.insert(0, f"candidate lines: {seen}")
    if skeleton and a.hs is None:
        prefilter = skeleton
    elif _hs is None or a.hs is None:
        prefilter = "no prefilter (every line)"
    elif a.exact:
        prefilter = "hyperscan (exact on ASCII lines)"
    else:
        prefilter = "hyperscan prefilter"
    budget = f"each re search has a {budget_s * 1000:g} ms CPU budget"
    if c.pike is None:
        engine = f"{prefilter} + re (no linear fallback)"
        notes.append(
            f"{budget}; a line that exceeds it counts as not matching and raises an agent "
            f"alert ({c.no_pike}: no linear engine); after {MAX_OVERRUNS_PER_CALL} such lines "
            f"in one batch ({MAX_OVERRUNS_PER_CALL_ALL} for all rules together), the rule's "
            "other candidates of that batch are skipped (and counted)"
        )
    elif a.exact and not c.named and a.hs is not None and _hs is not None:
        # re confirms only non-ASCII lines, under the budget with the Pike VM behind it
        engine = prefilter
    else:
        engine = f"{prefilter} + re"
        notes.append(
            f"{budget}; over it, the Pike VM answers (linear time, same result), and after "
            f"{MAX_OVERRUNS_PER_CALL} such lines in one batch it answers the rule's other "
            "candidates of that batch at once"
        )
    if c.deferred:
        notes.append(
            "its named groups are not read on every hit: extracted (re, under the budget) only "
            "when the rule reads them (the labels of an alert a hit opens)"
        )
    return PatternReport(c.spec.rule, c.spec.role, engine, "; ".join(notes))


def _fields_of(m: re.Match[str]) -> dict[str, str]:
    """A confirmed match's named groups as fields: groups that did not take part are none."""
    groups = m.groupdict()
    if None in groups.values():
        return {k: v for k, v in groups.items() if v is not None}
    return groups
