"""The ``rules:`` list: each rule's common keys, its kind, patterns, templates and samples.

Sits between ``load.py`` and ``kinds.py``: for each list item it reads the keys every rule has
(name, source, match/ignore/fail/start/end patterns, severity and the other defaults it may
override, summary/description templates, samples, ``group_by``), decides the rule's one kind from
which keys it has, and hands the kind's own mapping to :func:`~detector.config.kinds.read_spec`.
Templates may use the captured groups of the rule's patterns and :data:`BUILTIN_FIELDS`; a
``group_by: name | [names]`` splits one rule into separate alerts per captured value. The result is
a :class:`~detector.model.RuleConfig` with the defaults filled in.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from detector.config.kinds import SYSTEMD_UNITS_MATCH, RulePatterns, captured_names, read_spec
from detector.config.nodes import TAG_STR, NodeReader, describe, did_you_mean
from detector.config.sections import DEFAULTS_KEYS, Declared, common_fields
from detector.model import Defaults, RuleConfig, RuleKind
from detector.structured import PARSERS, ParseError, lookup, message_text, normalize_path
from detector.timefmt import format_duration

BUILTIN_FIELDS: frozenset[str] = frozenset({"line", "count", "host", "source", "rule"})
"""Template fields every rule may use besides its captured groups."""

_RULE_COMMON = (
    "name",
    "source",
    "match",
    "ignore",
    "severity",
    "summary",
    "description",
    "labels",
    "notify",
    "owner",
    "runbook",
    "repeat",
    "resolve_after",
    "enabled",
    "samples",
    "group_by",
    "fields",
    "for",
    "keep_firing_for",
    "flap",
    "max_keys",
)
_RENAMED = {"for": "pending_for"}
"""rules.yaml keys whose field has another name (``for`` is a Python keyword)."""
_PAIR_KEYS = ("start", "end", "within", "min_duration", "on_orphan_end", "on_double_start")
_RULE_KEYS = (
    *_RULE_COMMON,
    "threshold",
    "expect",
    "anomaly",
    "systemd_units",
    "fail",
    *_PAIR_KEYS,
)


def read_rules(
    r: NodeReader, declared: Declared, node: Node, defaults: Defaults | None
) -> tuple[RuleConfig, ...]:
    if not isinstance(node, SequenceNode):
        r.err(node, "rules", f"expected a list of rules (- name: …), got {describe(node)}")
        return ()
    seen: dict[str, Node] = {}
    out: list[RuleConfig] = []
    for i, item in enumerate(node.value, start=1):
        rule = _rule(r, declared, item, i, seen, defaults=defaults or Defaults())
        if rule is not None:
            out.append(rule)
    return tuple(out)


def _rule(
    r: NodeReader,
    declared: Declared,
    node: Node,
    index: int,
    seen: dict[str, Node],
    *,
    defaults: Defaults,
) -> RuleConfig | None:
    w = f"rule #{index}"
    if isinstance(node, MappingNode):  # name the rule in messages about its own keys too
        for k, v in node.value:
            if k.value == "name" and isinstance(v, ScalarNode) and v.tag == TAG_STR and v.value:
                w = f"rule '{v.value}'"
    e = r.mapping(node, w, "a mapping with name:, source: and match:", _RULE_KEYS)
    if e is None:
        return None
    ok = True
    name: str | None = None
    if "name" not in e:
        r.err(node, w, "missing required key 'name' — add name: some-unique-name")
        ok = False
    else:
        nnode = e["name"][1]
        name = r.string(nnode, f"{w}: name", "a rule name")
        if name is not None:
            w = f"rule '{name}'"
            if name in seen:
                r.err(
                    nnode,
                    w,
                    f"duplicate rule name (first defined at line "
                    f"{seen[name].start_mark.line + 1}) — rule names must be unique; "
                    "rename one of them",
                )
                ok = False
            else:
                seen[name] = nnode
        else:
            ok = False

    sources: tuple[str, ...] | None = None
    if "source" not in e:
        hint = (
            "e.g. source: " + sorted(declared.sources)[0]
            if declared.sources
            else "and define it under sources:"
        )
        r.err(node, w, f"missing required key 'source' — add source: <name> ({hint})")
    else:
        sources = r.names(e["source"][1], f"{w}: source", declared.sources, "source")
    ok = ok and sources is not None
    journald = sources is not None and any(s in declared.journald for s in sources)
    fields: dict[str, str] = {}
    if "fields" in e:
        got_fields = _fields(r, e["fields"][1], f"{w}: fields", sources or (), declared)
        ok = ok and got_fields is not None
        fields = got_fields or {}
    # lines with fields the file cannot list (journald's, parsed ones): references to names
    # that no pattern captures are not errors there
    journald = journald or (sources is not None and any(s in declared.parsed for s in sources))

    kind, kind_ok = _kind(r, e, w, node)
    ok = ok and kind_ok

    kw: dict[str, Any] = {}
    # Patterns.
    pats: dict[str, str] = {}
    pattern_nodes: dict[str, Node] = {}
    for role in ("match", "ignore", "fail", "start", "end"):
        if role in e:
            pattern_nodes[role] = e[role][1]
            rx = r.regex(e[role][1], f"{w}: {role}")
            if rx is None:
                ok = False
            else:
                pats[role] = rx
    if kind == "systemd_units":
        if "match" in e:
            r.err(
                e["match"][0],
                w,
                "systemd_units: rules read systemd's own messages (a built-in pattern) — "
                "remove match:, and narrow the units with units: or exclude:",
            )
            ok = False
        else:
            pats["match"] = SYSTEMD_UNITS_MATCH
    if kind is not None:
        needs_match = kind not in ("pair", "anomaly_new", "anomaly_rate", "systemd_units")
        if needs_match and "match" not in e and "fields" not in e:
            r.err(
                node,
                w,
                f"missing required key 'match' — a {kind} rule needs a pattern, e.g. "
                "match: 'ERROR .*' (or fields: {level: error} on a parse: source)",
            )
            ok = False
        if kind == "pair" and "match" in e:
            r.err(
                e["match"][0],
                w,
                "pair rules use start: and end: instead of match: — remove match:",
            )
            ok = False
        if kind != "window" and "fail" in e:
            r.err(
                e["fail"][0],
                w,
                "fail: applies to window rules only (expect: {cron: …}) — remove it or "
                "make this an expect window rule",
            )
            ok = False
    patterns = _compile(pats)
    patterns.complete = set(pats) == set(pattern_nodes)
    for regex in fields.values():
        patterns.captured |= set(re.compile(regex).groupindex)

    common = common_fields(r, declared, e, w)
    if any(k in e and k not in common for k in DEFAULTS_KEYS if k not in _RENAMED):
        ok = False
    if any(k in e and _RENAMED[k] not in common for k in _RENAMED):
        ok = False
    for key in ("summary", "description"):
        if key in e:
            s = r.string(e[key][1], f"{w}: {key}", "a template string")
            if s is None:
                ok = False
            else:
                kw[key] = s
                if not _template_ok(r, s, e[key][1], f"{w}: {key}", patterns, journald=journald):
                    ok = False
    if "enabled" in e:
        b = r.boolean(e["enabled"][1], f"{w}: enabled")
        ok = ok and b is not None
        kw["enabled"] = b
    samples: tuple[str, ...] = ()
    if "samples" in e:
        snode = e["samples"][1]
        got = r.strings(snode, f"{w}: samples", "sample line")
        if got is None:
            ok = False
        else:
            samples = got
            mode = {declared.parsed.get(s) for s in sources or ()}
            parse = PARSERS[m] if len(mode) == 1 and (m := mode.pop()) is not None else None
            paths = {declared.messages.get(s) for s in sources or ()}
            path = paths.pop() if len(paths) == 1 else None
            message = None
            if parse is not None and path is not None:
                message = functools.partial(_sample_message, parse, path)
            if not _samples_ok(
                r,
                snode,
                w,
                samples,
                patterns,
                kind=kind,
                fields=(fields, parse),
                message=message,
            ):
                ok = False
    if "group_by" in e:
        g = captured_names(r, e["group_by"][1], f"{w}: group_by", patterns, journald, many=True)
        ok = ok and g is not None
        kw["group_by"] = g

    spec_kw: dict[str, Any] = {}
    if kind is not None and kind_ok and kind != "error":
        spec = read_spec(r, kind, e, w, patterns=patterns, journald=journald, pats=pats)
        if spec is None:
            ok = False
        else:
            spec_kw[kind] = spec

    if not ok or name is None or sources is None or kind is None:
        return None
    owner = common.get("owner", defaults.owner)
    runbook = common.get("runbook", defaults.runbook)
    if owner is None and runbook is None:
        r.warn(
            node,
            w,
            "no owner or runbook — add owner: (who to call) and runbook: (what to do), "
            "here or under defaults:",
        )
    elif owner is None:
        r.warn(node, w, "no owner — add owner: (who to call), here or under defaults:")
    elif runbook is None:
        r.warn(node, w, "no runbook — add runbook: (a link), here or under defaults:")
    notify = common.get("notify") or defaults.notify or tuple(sorted(declared.webhooks))
    pending_for = common.get("pending_for", defaults.pending_for)
    resolve_after = common.get("resolve_after", defaults.resolve_after)
    if kind in ("error", "anomaly_new") and pending_for and pending_for >= resolve_after:
        r.warn(
            e["for"][1] if "for" in e else node,
            f"{w}: for",
            f"for: {format_duration(pending_for)} is not shorter than resolve_after: "
            f"{format_duration(resolve_after)} — the alert resolves after resolve_after "
            "without a match, so it fires only if matches keep coming at least every "
            f"{format_duration(resolve_after)} for {format_duration(pending_for)}; if one "
            "match should be enough, make for: shorter than resolve_after, or raise "
            f"resolve_after (e.g. resolve_after: {format_duration(pending_for * 2)})",
        )
    return RuleConfig(
        name=name,
        kind=kind,
        sources=sources,
        match=pats.get("match"),
        ignore=pats.get("ignore"),
        fail=pats.get("fail"),
        severity=common.get("severity", defaults.severity),
        labels={**defaults.labels, **common.get("labels", {})},
        notify=notify,
        notify_own="notify" in common,
        owner=owner,
        runbook=runbook,
        repeat=common.get("repeat", defaults.repeat),
        resolve_after=resolve_after,
        pending_for=pending_for,
        keep_firing_for=common.get("keep_firing_for", defaults.keep_firing_for),
        flap=common.get("flap", defaults.flap),
        max_keys=common.get("max_keys", defaults.max_keys),
        samples=samples,
        fields=fields,
        location=r.location(node),
        **kw,
        **spec_kw,
    )


def _kind(
    r: NodeReader, e: dict[str, tuple[Node, Node]], w: str, node: Node
) -> tuple[RuleKind | None, bool]:
    """Which kind the rule's keys select; (None, False) after reporting a conflict."""
    found: list[tuple[str, Node]] = []
    for key in ("threshold", "expect", "anomaly", "systemd_units"):
        if key in e:
            found.append((key, e[key][0]))
    pair_keys = [k for k in ("start", "end") if k in e]
    if pair_keys:
        found.append((pair_keys[0], e[pair_keys[0]][0]))
    if len(found) > 1:
        (first, fnode), (second, snode) = found[0], found[1]
        r.err(
            snode,
            w,
            f"'{second}' cannot be combined with '{first}' (line {fnode.start_mark.line + 1})"
            " — a rule has exactly one kind; split it into two rules",
        )
        return None, False
    ok = True
    if not pair_keys:
        for key in _PAIR_KEYS[2:]:
            if key in e:
                where = "inside threshold: {…} or expect: {…}" if key == "within" else ""
                r.err(
                    e[key][0],
                    w,
                    f"'{key}' belongs to pair rules (with start: and end:)"
                    + (f"; for other kinds put it {where}" if where else " — remove it"),
                )
                ok = False
    if not found:
        if "match" in e or "fields" in e:
            return "error", ok
        r.err(
            node,
            w,
            "nothing to detect — add match: (alert on every match) or one of "
            "threshold:, expect:, start:/end:, anomaly:",
        )
        return None, False
    key, _ = found[0]
    if key == "threshold":
        return "threshold", ok
    if key == "systemd_units":
        return "systemd_units", ok
    if key in ("start", "end"):
        for need in ("start", "end", "within"):
            if need not in e:
                hint = "within: 30m" if need == "within" else f"{need}: 'pattern'"
                r.err(node, w, f"pair rule is missing '{need}' — add {hint}")
                ok = False
        return "pair", ok
    if key == "expect":
        vnode = e["expect"][1]
        if isinstance(vnode, MappingNode):
            keys = {str(k.value) for k, _ in vnode.value}
            if "every" in keys:
                return "heartbeat", ok
            if "cron" in keys or "between" in keys:
                return "window", ok
        r.err(
            vnode,
            f"{w}: expect",
            "needs every: (at least one match per period, e.g. {every: 5m}) or cron:/between:"
            " (a scheduled window, e.g. {cron: '0 2 * * *', within: 1h})",
        )
        return None, False
    anode = e["anomaly"][1]
    typ: str | None = None
    if isinstance(anode, ScalarNode):
        typ = str(anode.value)
    elif isinstance(anode, MappingNode):
        for k, v in anode.value:
            if k.value == "type" and isinstance(v, ScalarNode):
                typ = str(v.value)
    if typ == "new":
        return "anomaly_new", ok
    if typ == "rate":
        return "anomaly_rate", ok
    shown = f"'{typ}'" if typ is not None else "no type"
    r.err(
        anode,
        f"{w}: anomaly",
        f"{shown} is not an anomaly type — write anomaly: new (never-seen lines) or "
        "anomaly: rate (bursts and drops), or {type: new|rate, …}",
    )
    return None, False


def _compile(pats: Mapping[str, str]) -> RulePatterns:
    positive: list[tuple[str, re.Pattern[str]]] = []
    captured: set[str] = set()
    for role in ("match", "start", "end", "fail"):
        if role in pats:
            rx = re.compile(pats[role])
            positive.append((role, rx))
            captured |= set(rx.groupindex)
    ignore = re.compile(pats["ignore"]) if "ignore" in pats else None
    return RulePatterns(positive, ignore, captured, complete=True)


def _template_ok(
    r: NodeReader, text: str, node: Node, w: str, patterns: RulePatterns, *, journald: bool
) -> bool:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        r.err(
            node,
            w,
            f"malformed template: {e} — write {{name}} for a field and {{{{ }}}} "
            "for literal braces",
        )
        return False
    if journald or not patterns.complete:
        return True
    names = {n.split(".")[0].split("[")[0] for _, n, _, _ in parsed if n}
    available = patterns.captured | BUILTIN_FIELDS
    bad = sorted(n for n in names if n not in available)
    for n in bad:
        hint = did_you_mean(n, sorted(available))
        r.err(
            node,
            w,
            f"'{{{n}}}' is not a captured group or a built-in field — "
            + (f"{hint} " if hint else "")
            + "available: "
            + ", ".join(sorted(available))
            + f"; or capture it with (?P<{n}>…) in the pattern",
        )
    return not bad


def _sample_message(parse: Callable[[str], dict[str, Any]], path: str, sample: str) -> str:
    """A sample of a ``message:`` source as ``match:`` sees it: its record's message."""
    try:
        got = lookup(parse(sample), path)
    except ParseError:
        return sample
    return sample if got is None else message_text(got)


def _samples_ok(
    r: NodeReader,
    node: Node,
    w: str,
    samples: tuple[str, ...],
    patterns: RulePatterns,
    *,
    kind: RuleKind | None,
    fields: tuple[Mapping[str, str], Callable[[str], dict[str, Any]] | None] = ({}, None),
    message: Callable[[str], str] | None = None,
) -> bool:
    if not isinstance(node, SequenceNode):
        nodes: list[Node] = [node]
    else:
        nodes = list(node.value)
    ok = True
    roles = "/".join(r for r, _ in patterns.positive) or "match"
    wanted, parse = fields
    for raw, snode in zip(samples, nodes, strict=False):
        sample = raw if message is None else message(raw)  # what match: sees
        if wanted and parse is not None:
            problem = _sample_fields(raw, wanted, parse)
            if problem:
                r.err(
                    snode,
                    f"{w}: samples",
                    f"sample {problem}: '{r.redact(raw)[:120]}' — fix fields: or the sample",
                )
                ok = False
                continue
        if not patterns.positive and wanted:
            if patterns.ignore is not None and patterns.ignore.search(sample):
                r.err(
                    snode,
                    f"{w}: samples",
                    "sample is excluded by the rule's ignore pattern: "
                    f"'{r.redact(sample)[:120]}' — fix ignore: or the sample",
                )
                ok = False
            continue
        if not patterns.positive:
            if kind in ("anomaly_new", "anomaly_rate"):
                continue  # every line is an input
            return ok  # the pattern itself is broken or missing: reported already
        if not any(rx.search(sample) for _, rx in patterns.positive):
            r.err(
                snode,
                f"{w}: samples",
                f"sample does not match the rule's {roles} pattern: '{r.redact(sample)[:120]}' — "
                "fix the pattern or the sample",
            )
            ok = False
        elif patterns.ignore is not None and patterns.ignore.search(sample):
            r.err(
                snode,
                f"{w}: samples",
                f"sample is excluded by the rule's ignore pattern: '{r.redact(sample)[:120]}' — "
                "fix ignore: or the sample",
            )
            ok = False
    return ok


_JOURNAL_FIELD = re.compile(r"[A-Z0-9_]+")
_PATH = re.compile(r"[^.\[\]]+(?:\.[^.\[\]]+|\[\d+\])*")


def _fields(
    r: NodeReader, node: Node, w: str, sources: tuple[str, ...], declared: Declared
) -> dict[str, str] | None:
    """``fields: {path: regex, …}``: every path a dotted path, every regex valid, and every
    source one whose lines have fields (journald, or a file source with ``parse:``)."""
    entries = r.mapping(node, w, "a mapping of field: regex, e.g. {level: error}", None)
    if entries is None:
        return None
    ok = True
    if not entries:
        r.err(node, w, "empty — name at least one field, e.g. {level: error}")
        ok = False
    plain = [s for s in sources if s not in declared.journald and s not in declared.parsed]
    for s in plain:
        r.err(
            node,
            w,
            f"source '{s}' has no fields: its lines are plain text — add parse: json or "
            f"parse: logfmt to source '{s}', or match the text with match:",
        )
        ok = False
    journal_only = bool(sources) and all(s in declared.journald for s in sources)
    out: dict[str, str] = {}
    for key, (knode, vnode) in entries.items():
        if not _PATH.fullmatch(key):
            r.err(
                knode,
                w,
                f"'{key}' is not a field path — write a name, or a dotted path into nested JSON "
                "such as http.status or items.0.id (items[0].id)",
            )
            ok = False
            continue
        if journal_only and not _JOURNAL_FIELD.fullmatch(key):
            r.err(
                knode,
                w,
                f"'{key}' is not a journald field name — journal fields are upper case, e.g. "
                f"{key.upper().replace('.', '_')}, PRIORITY, SYSLOG_IDENTIFIER, _SYSTEMD_UNIT",
            )
            ok = False
            continue
        rx = r.regex(vnode, f"{w}.{key}")
        if rx is None:
            ok = False
            continue
        out[normalize_path(key)] = rx
    return out if ok else None


def _sample_fields(
    sample: str, wanted: Mapping[str, str], parse: Callable[[str], dict[str, Any]]
) -> str:
    """Why a sample line of a ``parse:`` source fails the rule's ``fields:`` ('' if it passes)."""
    try:
        record = parse(sample)
    except ParseError as e:
        return f"does not parse ({e})"
    for path, regex in wanted.items():
        value = lookup(record, path)
        if value is None:
            return f"has no field '{path}'"
        if not re.search(regex, value):
            return f"field {path}={value[:60]!r} does not match {regex!r}"
    return ""
