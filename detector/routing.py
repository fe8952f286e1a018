"""Routes: which webhooks an alert goes to, decided once when the alert opens.

Sits beside the alert book (``alerts.py``), which asks :func:`route` when an alert opens and keeps
the answer on the alert, so its repeats and its resolved notice go where its firing went; and
behind ``detector check --routes``, which asks :func:`explain` where each rule's alerts go and why.
The order of precedence:

1. webhooks a signal names itself (agent alerts routed around a failing webhook, ``selfmon.py``);
2. a rule's own ``notify:``;
3. ``routes:``, in order: the first route whose ``match`` labels are equal and whose ``match_re``
   regexes fully match takes the alert; with ``continue: true`` the following routes are tried
   too, and every route that matched adds its webhooks;
4. ``defaults.notify`` (every webhook when that is unset) — for agent alerts, selfmon's own
   routing (``agent.fallback``, else every working webhook).

Agent alerts (rule ``detector-agent``) are taken only by a route that names that rule exactly in
``match: {rule: detector-agent}``: a catch-all route or a ``match_re`` on ``rule`` does not take
them, so a route written for the rules never swallows the agent's news about itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence

from detector.frozen import Frozen
from detector.model import AlertKind, RouteConfig, RuleConfig, RuleKind

AGENT_RULE = "detector-agent"
"""The rule name of agent alerts (``problems.AGENT_RULE``; repeated here, one layer below)."""

ALERT_KIND: Mapping[RuleKind, AlertKind] = {
    "error": "error",
    "threshold": "threshold",
    "heartbeat": "silence",
    "window": "window",
    "pair": "pair",
    "anomaly_new": "anomaly",
    "anomaly_rate": "anomaly",
}
"""The ``kind`` label of a rule kind's alerts."""

BUILTIN_LABELS = ("rule", "severity", "source", "kind", "host")
"""Labels every alert carries (besides the rule's ``labels:`` and its grouping fields)."""


@functools.lru_cache(maxsize=1024)
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def matches(route: RouteConfig, labels: Mapping[str, str]) -> bool:
    """Whether an alert with ``labels`` is taken by ``route`` (a missing label is '')."""
    for name, value in route.match.items():
        if labels.get(name, "") != value:
            return False
    return all(
        _compiled(regex).fullmatch(labels.get(name, "")) is not None
        for name, regex in route.match_re.items()
    )


def takes_agent_alerts(route: RouteConfig) -> bool:
    return route.match.get("rule") == AGENT_RULE


def describe(index: int, route: RouteConfig) -> str:
    """``route #2 (rules.yaml:40:5: severity=critical, rule=~'backup-.*')``."""
    conds = [f"{k}={v}" for k, v in route.match.items()]
    conds += [f"{k}=~'{v}'" for k, v in route.match_re.items()]
    where = f"{route.location}: " if route.location else ""
    return f"route #{index} ({where}{', '.join(conds) or 'every alert'})"


class Routed(Frozen):
    """The webhooks an alert goes to, and why."""

    webhooks: tuple[str, ...]
    why: tuple[str, ...]
    """The routes that took the alert (``describe``), in order."""


def route(
    routes: Sequence[RouteConfig], labels: Mapping[str, str], *, agent: bool = False
) -> Routed | None:
    """The webhooks of the routes that take an alert with ``labels``; None when none does."""
    chosen: list[str] = []
    why: list[str] = []
    for i, r in enumerate(routes, start=1):
        if agent and not takes_agent_alerts(r):
            continue
        if matches(r, labels):
            chosen += [w for w in r.webhooks if w not in chosen]
            why.append(describe(i, r))
            if not r.continue_:
                break
    return Routed(tuple(chosen), tuple(why)) if why else None


# ---------------------------------------------------------------- detector check --routes


def with_source(labels: Mapping[str, str], rule: RuleConfig | None) -> Mapping[str, str]:
    """The labels routes see: an alert raised without a line (a silence, a window that closed,
    a pair that timed out) has no ``source`` label; a rule that reads one source gives it."""
    if "source" in labels or rule is None or len(rule.sources) != 1:
        return labels
    return {**labels, "source": rule.sources[0]}


def captured_fields(rule: RuleConfig) -> set[str]:
    """The labels a rule's alerts may carry besides the static ones: grouping and captured
    fields (known only once a line is read)."""
    names = set(rule.group_by)
    patterns = [rule.match, rule.fail]
    if rule.pair is not None:
        patterns += [rule.pair.start, rule.pair.end]
    for p in patterns:
        if p is not None:
            try:
                names |= set(_compiled(p).groupindex)
            except re.error:  # a pattern only the matcher's translation accepts
                continue
    if rule.kind == "anomaly_new":
        names.add("template_id")
    if rule.anomaly_rate is not None and rule.anomaly_rate.by:
        names.add(rule.anomaly_rate.by)
    if rule.heartbeat is not None and rule.heartbeat.by:
        names.add(rule.heartbeat.by)
    return names


def static_labels(rule: RuleConfig, host: str, source: str) -> dict[str, str]:
    """The labels of a rule's alerts that are known before any line is read."""
    return {
        **rule.labels,
        "host": host,
        "rule": rule.name,
        "severity": rule.severity,
        "kind": ALERT_KIND[rule.kind],
        "source": source,
    }


def _unknown(route: RouteConfig, known: Mapping[str, str], fields: set[str]) -> list[str]:
    """The labels ``route`` tests that are known only once a line is read (grouping fields)."""
    return [n for n in (*route.match, *route.match_re) if n not in known and n in fields]


def explain(rule: RuleConfig, routes: Sequence[RouteConfig], host: str, source: str) -> list[str]:
    """Where the alerts of ``rule`` read from ``source`` go, and why, as lines of text: the
    usual destination first, then one line per route that depends on a label known only per
    alert (``if ip=~'10\\..*': …``)."""
    if rule.notify_own:
        return [f"{', '.join(rule.notify)} — its own notify: (wins over routes:)"]
    known = static_labels(rule, host, source)
    fields = captured_fields(rule) - set(known)
    chosen: list[str] = []
    why: list[str] = []
    maybe: list[str] = []
    for i, r in enumerate(routes, start=1):
        unknown = _unknown(r, known, fields)
        fixed = RouteConfig(
            webhooks=r.webhooks,
            match={k: v for k, v in r.match.items() if k not in unknown},
            match_re={k: v for k, v in r.match_re.items() if k not in unknown},
        )
        if not matches(fixed, known):
            continue
        if unknown:
            conds = [f"{k}={v}" for k, v in r.match.items() if k in unknown]
            conds += [f"{k}=~'{v}'" for k, v in r.match_re.items() if k in unknown]
            then = "" if r.continue_ else ", and no later route"
            maybe.append(
                f"if {' and '.join(conds)}: {', '.join(r.webhooks)} — {describe(i, r)}{then}"
            )
            continue
        chosen += [w for w in r.webhooks if w not in chosen]
        why.append(describe(i, r) + ("; continue" if r.continue_ else ""))
        if not r.continue_:
            break
    if why:
        head = f"{', '.join(chosen)} — {'; '.join(why)}"
    else:
        head = f"{', '.join(rule.notify)} — defaults.notify (no route matches)"
    return [head, *maybe]


def agent_explain(
    routes: Sequence[RouteConfig], fallback: Iterable[str], webhooks: Iterable[str]
) -> str:
    """Where agent alerts go (``detector check --routes``)."""
    taking = [describe(i, r) for i, r in enumerate(routes, start=1) if takes_agent_alerts(r)]
    if taking:
        return (
            "the routes that name rule=detector-agent: "
            + "; ".join(taking)
            + " (a delivery failure still goes around the failing webhook)"
        )
    fb = tuple(fallback)
    if fb:
        return f"{', '.join(fb)} — agent.fallback"
    return f"{', '.join(sorted(webhooks))} — every webhook that is not failing (no agent.fallback)"
