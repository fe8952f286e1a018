"""The synchronous core: matcher → evaluators → alert book, producing one :class:`Commit` per step.

Both the live agent (``service.py``) and the dry run (``replay.py``, ``detector test``) drive the
same pipeline, so what ``detector test`` shows is what the agent does. There is no I/O and no clock
here: every step takes the time it should use.

1. ``process(batch, when_for)``: match the batch's lines in one pass, feed hits (and, to rules that
   want them, every line) to the evaluators, collect signals into the alert book, and return the
   Commit that holds the batch's checkpoints, the changed rule state, alerts and outbox rows;
2. ``tick(now)``: run every deadline that is due (silence, windows, threshold expiry, repeats);
3. ``next_deadline()``: when ``tick`` must run next; ``settle_sources(now)``: the sources the
   live agent has read up to ``now`` before such a tick (an expectation deadline must not fire
   while a line stamped before it is still on its way).
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, overload

from detector.alerts import AlertBook, fingerprint
from detector.lazylog import logger
from detector.maintenance import Maintenance
from detector.matching import (
    CONFIRM_BUDGET_S,
    MAX_OVERRUNS_PER_CALL,
    MAX_OVERRUNS_PER_CALL_ALL,
    PIKE_S_PER_CALL,
    Abandoned,
    Hit,
    Matcher,
    PatternSpec,
    open_db_cache,
)
from detector.matching.fields import Structured
from detector.model import Config, RuleConfig
from detector.problems import agent_signal
from detector.records import Commit
from detector.rules.base import Evaluator, Signal, When
from detector.rules.match import MatchEvaluator, is_plain
from detector.rules.registry import build_evaluator
from detector.rules.state import KeyCap, SharedKeys
from detector.rules.threshold import ThresholdEvaluator
from detector.schedule import DeadlineHeap
from detector.silences import Muter, Silence
from detector.sources.base import Batch, Line, SourceProblem

LOG = "detector.pipeline"
StateLoader = Callable[[str], Mapping[str, Any]]

REGEX_QUIET = timedelta(hours=1)
"""An agent alert about lines a rule's regex could not decide in time resolves after this long
without another such line."""


def new_matcher(config: Config) -> Matcher:
    """The matcher of ``config``'s rules, with its compiled-pattern cache (not compiled yet)."""
    return Matcher(pattern_specs(config.rules), db_cache=open_db_cache(config.agent.cache_dir))


def build_matcher(
    config: Config, cancelled: Callable[[], bool] | None = None, *, quick: bool = False
) -> Matcher:
    """``new_matcher(config)`` with every source's database compiled (or loaded from the cache).
    Seconds for a large rule set: the service runs it in a thread, while the event loop (and the
    old matcher, on a reload) keeps going; ``cancelled`` (asked between sources) cuts it short
    with ``CompileCancelled`` when the agent stops meanwhile. ``quick``: literal skeletons where
    the full databases are not cached (``Matcher.warm``), ``upgrade_matcher`` builds those."""
    matcher = new_matcher(config)
    matcher.warm(list(config.sources), workers=_workers(), cancelled=cancelled, quick=quick)
    return matcher


def upgrade_matcher(matcher: Matcher, cancelled: Callable[[], bool] | None = None) -> list[str]:
    """``matcher.upgrade``: the full databases of the sources a quick build gave their literal
    skeleton, with half the CPUs (the agent matches meanwhile); the sources built."""
    return matcher.upgrade(workers=max(1, _workers() // 2), cancelled=cancelled)


def _workers() -> int:
    return min(4, os.cpu_count() or 1)


def pattern_specs(rules: Iterable[RuleConfig]) -> list[PatternSpec]:
    specs: list[PatternSpec] = []
    for r in rules:
        if not r.enabled:
            continue
        sources = frozenset(r.sources)
        roles: list[tuple[Any, str | None]] = [
            ("match", r.match),
            ("ignore", r.ignore),
            ("fail", r.fail),
        ]
        if r.pair is not None:
            roles += [("start", r.pair.start), ("end", r.pair.end)]
        if r.threshold is not None:
            roles.append(("reset", r.threshold.reset_on))
        for role, regex in roles:
            if regex is not None:
                specs.append(PatternSpec(r.name, role, regex, sources, hits_carry_groups(r, role)))
    return specs


def hits_carry_groups(rule: RuleConfig, role: str) -> bool:
    """Must every hit of ``rule``'s ``role`` pattern carry its named groups
    (``PatternSpec.groups``)? Not the ``match:`` hits of a plain error rule (``is_plain``: no
    ``group_by``, ``summary`` or ``description``) without ``fields:``: it reads a hit's groups
    only for the labels of a Signal it builds (an alert opening; a hit on its open alert builds
    none) and on a line with fields of its own (journald, ``parse:``), and asks the matcher for
    them there (``MatchEvaluator.groups_of``); nor those of a threshold without ``by``,
    ``distinct`` or templates, which reads them likewise only for a Signal it builds (a hit on
    its open alert builds none: ``ThresholdEvaluator.fire_open``). Every other rule and role
    may read them on any hit: templates, ``group_by``, a threshold's ``by``/``distinct``, a
    pair's key, anomaly keys,
    the captures ``fields:`` merges (``Structured.apply``); an ``ignore:`` hit reads none."""
    if role != "match" or rule.fields or rule.summary or rule.description:
        return True
    if rule.kind == "threshold":  # one count (no by:), not of distinct values: as plain
        t = rule.threshold
        return t is None or bool(t.by) or t.distinct is not None
    return not (rule.kind == "error" and is_plain(rule))


class SparseTexts(Sequence[str]):
    """The lines of a block of ``n`` lines of which only some were decoded (those with hits): its
    length, and the texts of those lines. Any other index is an error."""

    def __init__(self, n: int, texts: dict[int, str]) -> None:
        self._n = n
        self._texts = texts

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        return self._texts[i + self._n if i < 0 else i]

    def getter(self) -> Callable[[int], str]:
        """``self[i]`` for a line index ``i >= 0``, without the generic indexing (hot path)."""
        return self._texts.__getitem__


def text_getter(texts: Sequence[str]) -> Callable[[int], str]:
    """The fastest way to get line ``i >= 0`` of ``texts`` (a list or ``SparseTexts``)."""
    return texts.getter() if isinstance(texts, SparseTexts) else texts.__getitem__


class Pipeline:
    def __init__(
        self,
        config: Config,
        now: datetime,
        load_state: StateLoader,
        alert_rows: Iterable[Mapping[str, Any]] = (),
        *,
        matcher: Matcher | None = None,
    ) -> None:
        """``matcher``: built beforehand for ``config`` (``build_matcher``, off the event loop);
        else built here."""
        self.config = config
        self.evaluators: dict[str, Evaluator] = {}
        self.alerts = AlertBook(
            config.agent.host,
            {r.name: r for r in config.rules},
            config.webhooks.keys(),
            config.agent.fallback,
            config.routes,
        )
        self.alerts.load(alert_rows)
        self.muter = Muter(Maintenance(config.maintenance))
        self.alerts.muter = self.muter
        self.lines_read: Counter[str] = Counter()
        self.rule_errors: Counter[str] = Counter()
        self.lines_matched: Counter[str] = Counter()
        self.last_match_at: dict[str, datetime] = {}
        self.lines_undecided: Counter[str] = Counter()
        """Per rule, lines its regex could not decide within the budget (counted as no match)."""
        self._undecided_at: dict[str, datetime] = {}
        self._foreign_abandoned: list[dict[str, Abandoned]] = []
        self._unsaved: set[str] = set()
        self.signal_time = False
        """Notifications are stamped with the time of the signal that caused them (the line or
        the deadline), not the batch's ``now`` (``detector test``'s simulated clock)."""
        self.keep_rows = True
        """Commits carry the changed alert rows and the outbox rows; False (``detector test``,
        which stores nothing and gets every notification from ``AlertBook.record``): they are
        dropped, not built."""
        self.lazy_rows = False
        """True (the live agent): commits carry the changed alerts themselves
        (``Commit.changed``), their rows built once when the commit is written (``seal``)."""
        self._build(config, now, load_state, keep={}, matcher=matcher)
        self.alerts.loaded_keys = {}
        self.alerts.recheck_mutes(now)

    def _build(
        self,
        config: Config,
        now: datetime,
        load_state: StateLoader,
        keep: Mapping[str, Evaluator],
        matcher: Matcher | None = None,
    ) -> None:
        self.config = config
        evaluators: dict[str, Evaluator] = {}
        for rule in config.rules:
            if not rule.enabled:
                continue
            old = keep.get(rule.name)
            if old is not None and old.rule == rule:
                evaluators[rule.name] = old
                continue
            ev = build_evaluator(rule, now)
            items = load_state(rule.name)
            pool = self.alerts.loaded_keys.get(rule.name)  # the keys its alerts hold, once
            ev.load_state(SharedKeys(items, pool) if pool else items)
            evaluators[rule.name] = ev
            self._unsaved.add(rule.name)  # its initial schedule must reach the state file
        self.evaluators = evaluators
        self._rank = {name: i for i, name in enumerate(evaluators)}
        self.matcher = matcher if matcher is not None else new_matcher(config)
        self._wire()
        self._hold_expectations()
        self._schedule()
        old = getattr(self, "structured", None)
        self.structured = Structured(config, old.failures if old is not None else None)
        self._all_lines: dict[str, list[Evaluator]] = {}
        for ev in evaluators.values():
            if ev.wants_all_lines:
                for s in ev.rule.sources:
                    self._all_lines.setdefault(s, []).append(ev)

    def _wire(self) -> None:
        """Bind the evaluators that tell the alert book directly of a hit on an open alert
        (``fire_open``: a plain error rule, see ``MatchEvaluator``) and those that ask the
        matcher for their hits' groups (``groups_of``, see ``hits_carry_groups``), and note how
        soon after a hit each can have a deadline (``deadline_delay``: the replay's per-hit
        check)."""
        self._delays: dict[str, timedelta] = {}
        self._plain: dict[str, MatchEvaluator] = {}
        """The plain error rules, whose ``observe_plain`` a match hit on a line without fields
        comes to."""
        for name, ev in self.evaluators.items():
            if isinstance(ev, MatchEvaluator) and ev.plain:
                self._plain[name] = ev
            if isinstance(ev, MatchEvaluator | ThresholdEvaluator):
                deferred = (name, "match") in self.matcher.deferred
                ev.groups_of = (
                    functools.partial(self.matcher.groups, name, "match") if deferred else None
                )
            if hasattr(ev, "fire_open"):
                ev.fire_open = self.alerts.fire_open_of(fingerprint(name, ""))
            if isinstance(ev, ThresholdEvaluator):
                ev.book = self.alerts
            delay = getattr(ev, "deadline_delay", None)
            if isinstance(delay, timedelta):
                self._delays[name] = delay

    def _hold_expectations(self) -> None:
        """Tell the expectation rules (heartbeat, window, pair) about their maintenance windows,
        so that nothing fires inside one nor falsely right after it."""
        maintenance = Maintenance(self.config.maintenance)
        for name, ev in self.evaluators.items():
            hold = getattr(ev, "set_maintenance", None)
            if hold is not None:
                hold(functools.partial(maintenance.overlapping, name) if maintenance else None)

    def set_silences(self, silences: Iterable[Silence], now: datetime) -> Commit:
        """The silences table changed (``detector silence``): mute and unmute at once."""
        self.muter.set_silences(silences)
        self.alerts.recheck_mutes(now)
        commit = Commit()
        self._collect(commit, ())
        return commit

    def _schedule(self) -> None:
        self._deadlines = DeadlineHeap()
        for name, ev in self.evaluators.items():
            self._deadlines.push(name, ev.next_deadline())

    def _reschedule(self, names: set[str]) -> None:
        """Schedule the next deadline of each rule in ``names`` again, in the rules' order:
        rules due at one time run in the order they were scheduled for it, and a set's order
        (seeded by PYTHONHASHSEED) would make equal-time notifications come out in a different
        order from one run of ``detector test`` to the next."""
        push, evaluators = self._deadlines.push, self.evaluators
        for name in sorted(names, key=self._rank.__getitem__) if len(names) > 1 else names:
            push(name, evaluators[name].next_deadline())

    def start_at(self, now: datetime) -> None:
        """Start every rule afresh at ``now`` (``detector test``: the first line's time, found
        after the pipeline, and its compiled matcher, were built)."""
        for name, ev in list(self.evaluators.items()):
            self.evaluators[name] = build_evaluator(ev.rule, now)
        self._wire()
        self._hold_expectations()
        self._schedule()
        self.alerts.recheck_mutes(now)
        self._all_lines = {}
        for ev in self.evaluators.values():
            if ev.wants_all_lines:
                for s in ev.rule.sources:
                    self._all_lines.setdefault(s, []).append(ev)

    def reconfigure(
        self,
        config: Config,
        now: datetime,
        load_state: StateLoader,
        matcher: Matcher | None = None,
    ) -> Commit:
        """Switch to a new, already validated config (``matcher``: built for it beforehand, see
        ``build_matcher``). Unchanged rules keep their evaluator and
        state; changed rules restart from their stored state; removed or disabled rules resolve
        their alerts and drop their state."""
        gone = set(self.evaluators) - {r.name for r in config.rules if r.enabled}
        commit = Commit()
        for name in gone:
            self.alerts.resolve_rule(name, now, "the rule was removed from the configuration")
            commit.rule_state[name] = {k: None for k in load_state(name)}
        self.alerts.configure(
            {r.name: r for r in config.rules},
            config.webhooks.keys(),
            config.agent.fallback,
            config.routes,
        )
        self.muter.maintenance = Maintenance(config.maintenance)
        self._build(config, now, load_state, keep=self.evaluators, matcher=matcher)
        self.alerts.recheck_mutes(now)
        self._collect(commit)
        return commit

    def warm(self) -> None:
        """Compile the matcher's per-source databases now (they are otherwise built on the first
        batch). The service calls this off the event loop: compiling can take most of a second."""
        self.matcher.warm(list(self.config.sources))

    def needs_texts(self, source: str) -> bool:
        """Every line of ``source`` must be decoded (an all-lines rule, or ``parse:``)."""
        return bool(self._all_lines.get(source)) or self.structured.needs_texts(source)

    def parse_problems(self, source: str, now: datetime) -> list[SourceProblem]:
        """Lines of a ``parse:`` source that did not parse (an event; see matching/fields.py)."""
        return self.structured.failures.problems(source, now)

    def over_cap(self) -> dict[str, tuple[int, int]]:
        """The rules past their ``max_keys``: ``{rule: (keys folded, max_keys)}``."""
        out: dict[str, tuple[int, int]] = {}
        for name, ev in self.evaluators.items():
            cap = getattr(ev, "cap", None)
            if isinstance(cap, KeyCap) and cap.folded:
                out[name] = (cap.folded, cap.limit)
        return out

    def lines_unparsed(self, source: str) -> int:
        """Lines of ``source`` that did not parse, since the start."""
        return self.structured.failures.count(source)

    def note_downtime(self, since: datetime, until: datetime) -> None:
        for name, ev in self.evaluators.items():
            ev.note_downtime(since, until)
            self._deadlines.push(name, ev.next_deadline())
            self._unsaved.add(name)

    # ---------------------------------------------------------------- the two steps

    def process(
        self,
        batch: Batch,
        when_for: Callable[[Line], When],
        now: datetime,
        *,
        interleave_ticks: bool = False,
    ) -> Commit:
        """Run one batch. With ``interleave_ticks`` (replay of timestamped lines), deadlines that
        fall between two hits run between them, in time order."""
        if batch.block is not None and not batch.lines:
            commit = self._process_block(batch, when_for, now, interleave_ticks)
        else:
            lines = batch.all_lines()  # the lines themselves, unless a block came too
            commit = self.process_texts(
                batch.source,
                [ln.text for ln in lines],
                lines.__getitem__,
                when_for,
                now,
                interleave_ticks=interleave_ticks,
            )
        commit.checkpoints.extend(batch.checkpoints)
        return commit

    def _process_block(
        self, batch: Batch, when_for: Callable[[Line], When], now: datetime, interleave: bool
    ) -> Commit:
        """A batch of raw lines (``Batch.block``): matched as bytes, and only the lines a rule
        needs are decoded and made into Lines."""
        assert batch.block is not None
        source, path = batch.source, batch.block_path
        texts: dict[int, str] = {}
        if self.structured.rewrites(source):  # matched on the messages, not the raw lines
            every = batch.block.decode("utf-8", "replace").split("\n")[:-1]
            return self.process_texts(
                source,
                every,
                lambda i: Line(source, every[i], None, path),
                when_for,
                now,
                interleave_ticks=interleave,
            )
        n, hits = self.matcher.match_block(source, batch.block, texts)
        seq: Sequence[str]
        if self.needs_texts(source):
            seq = batch.block.decode("utf-8", "replace").split("\n")[:n]
        else:
            seq = SparseTexts(n, texts)

        text = text_getter(seq)

        def line_at(i: int) -> Line:
            return Line(source, text(i), None, path)

        return self.process_texts(
            source, seq, line_at, when_for, now, interleave_ticks=interleave, hits=hits
        )

    def process_texts(
        self,
        source: str,
        texts: Sequence[str],
        line_at: Callable[[int], Line],
        when_for: Callable[[Line], When],
        now: datetime,
        *,
        interleave_ticks: bool = False,
        hits: Sequence[Hit] | None = None,
        when_of: Callable[[str], When] | None = None,
    ) -> Commit:
        """The core of ``process``: ``line_at(i)`` builds the Line of ``texts[i]`` only for lines
        that a rule needs (hits), which keeps the common case — no match — cheap. ``hits``, when
        given, are the matcher's hits for ``texts`` computed elsewhere (``detector test --jobs``,
        by worker processes with a matcher built from the same rules): the matcher is not run.
        ``when_of``, when given, is ``when_for`` of a line from its text alone: every
        ``line_at(i)`` is then ``Line(source, texts[i], None, path)`` (no time or fields of its
        own), and is built only for a hit of a rule that wants a Line (not a plain error rule)."""
        self.lines_read[source] += len(texts)
        stamp = None if self.signal_time else now
        signals: list[Signal] = []
        touched: set[str] = set()
        if texts:
            records = None
            if self.structured.needs_texts(source):  # parse:
                texts, line_at, records = self.structured.prepare(source, texts, line_at, now)
                when_of = None  # its Lines have fields, maybe a time of their own
                if self.structured.rewrites(source):
                    hits = None  # found on the raw lines (detector test's reader): not these
            if hits is None:
                hits = self.matcher.match(source, texts)
            if self.structured.active(source):
                hits = self.structured.apply(source, texts, line_at, hits, records)
                abandoned = self.structured.take_abandoned()
                if abandoned:
                    self._foreign_abandoned.append(abandoned)
            evaluators, delays, plain_of = self.evaluators, self._delays, self._plain
            upcoming = self.next_deadline() if interleave_ticks else None
            matched: dict[str, int] = {}
            last_at: dict[str, datetime] = {}
            touch = touched.add
            extend = signals.extend
            last_i = -1
            line: Line | None = None
            when = When.exact(now)
            at = now
            text = ""
            bare = True
            text_at = text_getter(texts)
            for hit in hits:
                i, rule, role, groups = hit
                ev = evaluators.get(rule)
                if ev is None:
                    continue
                if i != last_i:  # the hits of one line share its Line and its time
                    last_i = i
                    if when_of is None:
                        line = line_at(i)
                        when = when_for(line)
                        text = line.text
                        bare = not line.fields
                    else:  # the Line only if a rule wants it
                        line = None
                        text = text_at(i)
                        when = when_of(text)
                    at = when.at
                if upcoming is not None and upcoming <= at:
                    self.alerts.apply(signals, stamp)
                    signals = []
                    extend = signals.extend
                    self._reschedule(touched)
                    touched |= self._advance(at)
                    upcoming = self.next_deadline()
                touch(rule)
                plain = None
                if role == "match":
                    matched[rule] = matched.get(rule, 0) + 1
                    last_at[rule] = at
                    if bare:
                        plain = plain_of.get(rule)
                try:
                    if plain is not None and plain is ev:  # a plain error rule: no Line, no list
                        signal = plain.observe_plain(at, text, groups, source)
                        if signal is not None:
                            signals.append(signal)
                    else:
                        if line is None:
                            line = line_at(i)
                        extend(ev.observe(hit, line, when))
                except Exception as e:  # one rule's bug must not stop the agent
                    signals.append(self._rule_failed(rule, e, text, at))
                if interleave_ticks and (
                    upcoming is None or (delay := delays.get(rule)) is None or at + delay < upcoming
                ):  # else no deadline of this rule can come before the next one already known
                    d = ev.next_deadline()
                    if d is not None and (upcoming is None or d < upcoming):
                        upcoming = d
            self.lines_matched.update(matched)
            self.last_match_at.update(last_at)
            for ev in self._all_lines.get(source, ()):
                touched.add(ev.rule.name)
                upcoming = self.next_deadline() if interleave_ticks else None
                for i in range(len(texts)):
                    line = line_at(i)
                    when = when_for(line)
                    if upcoming is not None and upcoming <= when.at:
                        self.alerts.apply(signals, stamp)
                        signals = []
                        self._reschedule(touched)
                        touched |= self._advance(when.at)
                        upcoming = self.next_deadline()
                    try:
                        signals.extend(ev.observe_line(line, when))
                    except Exception as e:  # as above
                        signals.append(self._rule_failed(ev.rule.name, e, line.text, when.at))
                    if interleave_ticks:
                        d = ev.next_deadline()
                        if d is not None and (upcoming is None or d < upcoming):
                            upcoming = d
        self._undecided(signals, now)
        self.alerts.apply(signals, stamp)
        self._reschedule(touched)
        commit = Commit()
        self._collect(commit, touched)
        return commit

    def note_abandoned(self, abandoned: dict[str, Abandoned]) -> None:
        """Lines abandoned by a matcher of another process (``detector test --jobs``): reported
        with the next batch like the pipeline's own matcher's."""
        if abandoned:
            self._foreign_abandoned.append(abandoned)

    def _undecided(self, signals: list[Signal], now: datetime) -> None:
        """Lines a rule's regex could not decide within the confirmation budget (backreferences
        or lookaround with catastrophic backtracking; see matching.py) counted as not matching:
        that must not pass silently. Raise (or raise the count of) an agent alert per rule."""
        found = [self.matcher.take_abandoned(), *self._foreign_abandoned]
        self._foreign_abandoned.clear()
        for batch in found:
            for rule, a in batch.items():
                self.lines_undecided[rule] += a.lines
                if rule not in self._undecided_at:
                    logger(LOG).warning(
                        "rule %s: a line took over %.0f ms to match and was treated as not "
                        "matching (%d characters): %r",
                        rule,
                        CONFIRM_BUDGET_S * 1000,
                        a.longest,
                        a.sample,
                    )
                self._undecided_at[rule] = now
                signals.append(
                    agent_signal(
                        f"regex:{rule}",
                        "fire",
                        now,
                        count=a.lines,
                        summary=(
                            f"rule {rule}: lines took over {CONFIRM_BUDGET_S * 1000:.0f} ms to "
                            "match and were treated as not matching"
                        ),
                        description=(
                            "The rule's pattern needs backtracking that no linear-time engine "
                            "can run (backreference or lookaround; `detector check` names it), "
                            f"and it ran over its budget on these lines (longest: {a.longest} "
                            "characters), so they could not be decided and were skipped for this "
                            "rule."
                            + (
                                f" {a.untried} of them were not even tried: after "
                                f"{MAX_OVERRUNS_PER_CALL} lines over the budget in one batch "
                                f"({MAX_OVERRUNS_PER_CALL_ALL} for all rules together), or "
                                f"after {PIKE_S_PER_CALL:g} s of linear-time (Pike VM) matching "
                                "in one batch, the rules skip their other candidate lines of "
                                "that batch, so that a flood of them cannot stall the agent."
                                if a.untried
                                else ""
                            )
                            + " Fix: rewrite the pattern without the backreference/lookaround, "
                            "or make it anchored and specific so that it cannot backtrack."
                        ),
                        sample=a.sample,
                    )
                )

    def _rule_failed(self, rule: str, error: Exception, text: str | None, at: datetime) -> Signal:
        """A rule raised: log it with the line, skip that one event, and raise an agent alert
        (once per rule; it repeats while firing). Without this a bad line would crash the agent,
        which would read the same batch again after its restart, forever."""
        self.rule_errors[rule] += 1
        if self.rule_errors[rule] <= 3:
            logger(LOG).exception(
                "rule %s failed on %r; the event is skipped", rule, (text or "")[:200]
            )
        return agent_signal(
            f"rule:{rule}",
            "fire",
            at,
            summary=f"rule {rule} failed: {type(error).__name__}: {error}"[:300],
            description="The event was skipped; details are in the agent's log.",
            sample=text,
        )

    def _due(self, now: datetime) -> set[str]:
        """Run evaluators' and the alert book's deadlines up to ``now``; return who changed."""
        signals: list[Signal] = []
        due = self._deadlines.pop_due(now)  # earliest first: a deterministic order
        touched = set(due)
        for name in due:
            ev = self.evaluators[name]
            try:
                signals.extend(ev.due(now))
            except Exception as e:  # as above
                signals.append(self._rule_failed(name, e, None, now))
            self._deadlines.push(name, ev.next_deadline())
        for rule, last in list(self._undecided_at.items()):
            if last + REGEX_QUIET <= now:
                del self._undecided_at[rule]
                signals.append(
                    agent_signal(
                        f"regex:{rule}",
                        "resolve",
                        now,
                        summary=f"rule {rule}: every line decided in time for an hour",
                    )
                )
        self.alerts.apply(signals, now)
        self.alerts.due(now)
        return touched

    def _advance(self, until: datetime) -> set[str]:
        """Run every deadline due up to ``until`` at its own time, in time order (a replay's
        simulated clock); return who changed."""
        touched: set[str] = set()
        last: datetime | None = None
        while (at := self.next_deadline()) is not None and at <= until:
            if last is not None and at <= last:  # a deadline that does not move on
                touched |= self._due(until)
                break
            touched |= self._due(at)
            last = at
        return touched

    def advance(self, until: datetime) -> Commit:
        """``tick`` for a simulated clock: every deadline up to ``until`` runs at its own time,
        not at ``until``."""
        touched = self._advance(until)
        commit = Commit()
        self._collect(commit, touched)
        return commit

    def tick(self, now: datetime) -> Commit:
        touched = self._due(now)
        commit = Commit()
        self._collect(commit, touched)
        return commit

    def apply_signals(self, signals: Iterable[Signal], now: datetime) -> Commit:
        """Signals from outside the rules (agent self-monitoring)."""
        self.alerts.apply(signals, now)
        commit = Commit()
        self._collect(commit, ())
        return commit

    def settle_sources(self, now: datetime) -> frozenset[str]:
        """The sources to read to ``now`` before ``tick(now)``: those of the expectation rules
        (heartbeat, window, pair, systemd_units: a deadline that says "nothing came") due by
        then. A line of theirs stamped before ``now`` that is still on its way must be seen
        first; other deadlines (threshold expiry, repeats) need no wait. The live agent asks;
        ``detector test`` has every line already."""
        out: set[str] = set()
        for name, ev in self.evaluators.items():
            at = self._deadlines.get(name)
            if at is not None and at <= now and hasattr(ev, "set_maintenance"):
                out.update(ev.rule.sources)
        return frozenset(out)

    def next_deadline(self) -> datetime | None:
        undecided = min(self._undecided_at.values()) + REGEX_QUIET if self._undecided_at else None
        present = [
            c
            for c in (self._deadlines.next_at(), self.alerts.next_deadline(), undecided)
            if c is not None
        ]
        return min(present) if present else None

    def _collect(self, commit: Commit, touched: Iterable[str] | None = None) -> None:
        """Move changed state, alerts and outbox rows into ``commit``. ``touched`` limits the
        evaluators asked for changes (None: all of them)."""
        names = set(self.evaluators) if touched is None else set(touched) | self._unsaved
        self._unsaved.clear()
        for name in names:
            ev = self.evaluators.get(name)
            if ev is None:
                continue
            changes = ev.state_changes()
            if changes:
                commit.rule_state.setdefault(name, {}).update(changes)
        if not self.keep_rows:
            self.alerts.drop_changes()
            return
        if self.lazy_rows:
            changed, outbox = self.alerts.take_alerts()
            commit.changed.update(changed)
            commit.outbox.extend(outbox)
            return
        alerts, outbox = self.alerts.take()
        commit.alerts.update(alerts)
        commit.outbox.extend(outbox)
