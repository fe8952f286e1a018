"""The ``routes:`` list: which webhooks an alert goes to, by its labels.

Sits beside ``rules.py`` in the config loader: ``load.py`` hands it the list after the rules are
read, so that a route can be checked against them (a ``rule:`` that names no rule, a label that no
rule's alerts carry). Each entry becomes a :class:`~detector.model.RouteConfig`; what the routes
mean is ``routing.py``'s business. The syntax is Alertmanager's: ``match:`` takes exact values,
``match_re:`` regexes that must match the whole value, ``webhooks:`` names the receivers and
``continue: true`` lets the following routes be tried too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from yaml.nodes import Node, SequenceNode

from detector.config.nodes import NodeReader, describe, did_you_mean
from detector.config.sections import Declared
from detector.model import SEVERITIES, RouteConfig, RuleConfig
from detector.routing import AGENT_RULE, ALERT_KIND, BUILTIN_LABELS, captured_fields

_ROUTE_KEYS = ("match", "match_re", "webhooks", "continue")


def read_routes(
    r: NodeReader, declared: Declared, node: Node, rules: Iterable[RuleConfig]
) -> tuple[RouteConfig, ...]:
    if not isinstance(node, SequenceNode):
        r.err(
            node,
            "routes",
            f"expected a list of routes (- match: {{severity: critical}}\\n  webhooks: [pager]), "
            f"got {describe(node)}",
        )
        return ()
    rules = list(rules)
    labels = set(BUILTIN_LABELS)
    for rule in rules:
        labels |= set(rule.labels) | captured_fields(rule)
    out: list[RouteConfig] = []
    for i, item in enumerate(node.value, start=1):
        route = _route(r, declared, item, f"route #{i}", known=(rules, labels))
        if route is not None:
            out.append(route)
    return tuple(out)


def _route(
    r: NodeReader,
    declared: Declared,
    node: Node,
    w: str,
    *,
    known: tuple[list[RuleConfig], set[str]],
) -> RouteConfig | None:
    rules, labels = known
    e = r.mapping(node, w, "a mapping with match:/match_re: and webhooks:", _ROUTE_KEYS)
    if e is None:
        return None
    ok = True
    kw: dict[str, Any] = {}
    if "webhooks" not in e:
        r.err(node, w, "missing required key 'webhooks' — add webhooks: [name, …]")
        ok = False
    else:
        names = _webhooks(r, e["webhooks"][1], f"{w}: webhooks", declared.webhooks)
        ok = ok and names is not None
        kw["webhooks"] = names
    for key in ("match", "match_re"):
        if key not in e:
            continue
        got = r.str_map(e[key][1], f"{w}: {key}", "a mapping of label: value")
        if got is None:
            ok = False
            continue
        entries = r.mapping(e[key][1], f"{w}: {key}", "a mapping", None) or {}
        for name, value in got.items():
            knode, vnode = entries[name]
            where = f"{w}: {key}"
            if not _label_ok(r, (key, name, value), (knode, vnode), where, known=(rules, labels)):
                ok = False
        kw[key] = got
    if "continue" in e:
        b = r.boolean(e["continue"][1], f"{w}: continue")
        ok = ok and b is not None
        kw["continue_"] = bool(b)
    if not ok:
        return None
    return RouteConfig(location=r.location(node), **kw)


def _webhooks(r: NodeReader, node: Node, w: str, known: set[str]) -> tuple[str, ...] | None:
    """Webhook names, each unknown one reported at its own position with a did-you-mean."""
    items = r.strings(node, w, "webhook name")
    if items is None:
        return None
    if not items:
        r.err(node, w, "empty list — name at least one webhook")
        return None
    nodes = node.value if isinstance(node, SequenceNode) else [node]
    ok = True
    for name, item in zip(items, nodes, strict=False):
        if name not in known:
            ok = False
            hint = did_you_mean(name, sorted(known)) or (
                "defined webhooks: " + ", ".join(sorted(known))
                if known
                else "define it under webhooks:"
            )
            r.err(item, w, f"unknown webhook '{name}' — {hint}")
    return items if ok else None


def _label_ok(
    r: NodeReader,
    entry: tuple[str, str, str],
    nodes: tuple[Node, Node],
    w: str,
    *,
    known: tuple[list[RuleConfig], set[str]],
) -> bool:
    """One ``label: value`` of a route's ``match`` or ``match_re`` (``entry``: which of the
    two, the label, the value; ``nodes``: its key and value nodes)."""
    key, name, value = entry
    knode, vnode = nodes
    rules, labels = known
    if key == "match_re":
        rx = r.regex(vnode, f"{w}.{name}")
        if rx is None:
            return False
    elif name == "severity" and value not in SEVERITIES:
        hint = did_you_mean(value, SEVERITIES) or "use one of: " + ", ".join(SEVERITIES)
        r.err(vnode, f"{w}.severity", f"'{value}' is not a severity — {hint}")
        return False
    elif name == "kind" and value not in set(ALERT_KIND.values()) | {"agent"}:
        kinds = sorted(set(ALERT_KIND.values()) | {"agent"})
        hint = did_you_mean(value, kinds) or "use one of: " + ", ".join(kinds)
        r.err(vnode, f"{w}.kind", f"'{value}' is not an alert kind — {hint}")
        return False
    elif name == "rule" and value not in {x.name for x in rules} | {AGENT_RULE}:
        names = sorted({x.name for x in rules} | {AGENT_RULE})
        hint = did_you_mean(value, names) or "use match_re: for a pattern of rule names"
        r.err(vnode, f"{w}.rule", f"no rule is named '{value}' — {hint}")
        return False
    if name not in labels:
        hint = did_you_mean(name, sorted(labels))
        r.warn(
            knode,
            w,
            f"no rule's alerts carry the label '{name}', so this never matches"
            + (f" — {hint}" if hint else " unless its value is '' — check the name"),
        )
    return True
