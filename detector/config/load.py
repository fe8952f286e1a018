"""Load rules.yaml into the frozen dataclasses of ``model.py``, or explain exactly what is wrong.

Sits at the very start of the flow and drives the rest of this package: :func:`load_config` reads
the file, composes it to YAML nodes (so every key and value keeps its line and column), checks the
top level (``version: 1``, known keys; keys starting with ``x-`` are ignored, so they can hold YAML
anchors), reads the files its ``include:`` names (each composed with its own name in its marks, so
a message names the right file; they may hold ``sources:``, ``webhooks:`` and ``rules:``), collects
the declared source and webhook names of every file (names are shared by all files, a duplicate
across files is an error naming both places), then hands each section to ``sections.py`` and each
file's rule list to ``rules.py``, and the ``routes:`` list to ``routes.py`` (after the rules, which
it is checked against). All problems are raised together as one
:class:`~detector.config.nodes.ConfigError`, sorted by file and position; warnings go to
``Config.warnings``.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from detector.config.maintenance import read_maintenance
from detector.config.nodes import (
    TAG_INT,
    TAG_NULL,
    TAG_STR,
    ConfigError,
    NodeReader,
    describe,
    did_you_mean,
)
from detector.config.routes import read_routes
from detector.config.rules import read_rules
from detector.config.sections import (
    Declared,
    read_agent,
    read_defaults,
    read_sources,
    read_webhooks,
)
from detector.model import Config, IncludeConfig, RuleConfig, SourceConfig, WebhookConfig

_TOP_KEYS = (
    "version",
    "include",
    "agent",
    "defaults",
    "sources",
    "webhooks",
    "rules",
    "maintenance",
    "routes",
)
_INCLUDED_KEYS = ("sources", "webhooks", "rules")
"""What an included file may hold; the rest of ``_TOP_KEYS`` is read from the main file only."""


@dataclass
class _File:
    """One file of the config, composed: its top-level entries by key."""

    path: str
    root: Node
    top: dict[str, tuple[Node, Node]]


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate rules.yaml and the files it includes; raises :class:`ConfigError`
    listing every problem."""
    name = str(path)
    problem, text = _read(name)
    if problem is not None:
        raise ConfigError([f"{name}: {problem}"])
    return parse_config(text, name, env)


def parse_config(
    text: str, path: str = "rules.yaml", env: Mapping[str, str] | None = None
) -> Config:
    """Validate rules.yaml given as text; ``path`` is used in messages and ``Config.path``, and
    its directory is where relative ``include:`` paths are looked up."""
    env = os.environ if env is None else env
    if _FAST_LOADER is not None:
        # libyaml composes the same nodes (same marks) ~50x faster; a file with an error is
        # read again the pure-Python way, whose marks also hold the text (the caret under a bad
        # regex), so every message is the same either way
        r = NodeReader(path, env)
        r.fast = True
        with contextlib.suppress(ConfigError):
            return _load(r, text, [])
    r = NodeReader(path, env)
    watch: list[str] = []
    try:
        return _load(r, text, watch)
    except ConfigError as e:
        e.watch = tuple(watch)
        raise


def _read(path: str) -> tuple[str | None, str]:
    """The text of ``path``, or what keeps it from being read (and '')."""
    try:
        return None, Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return f"not valid UTF-8 at byte {e.start} — save the file as UTF-8", ""
    except OSError as e:
        return f"cannot read: {e.strerror or e}", ""


_FAST_LOADER = getattr(yaml, "CSafeLoader", None)
"""libyaml's loader, when PyYAML was built with it."""


def _compose(r: NodeReader, text: str, path: str) -> Node | None:
    """``text`` as YAML nodes whose marks name ``path``; a syntax error is recorded (None)."""
    loader: yaml.SafeLoader | yaml.CSafeLoader
    try:
        if r.fast and _FAST_LOADER is not None:
            stream = io.StringIO(text)
            stream.name = path  # libyaml's marks name the stream
            loader = _FAST_LOADER(stream)
        else:
            loader = yaml.SafeLoader(text)
            loader.name = path  # every mark made from here on names the file
    except yaml.YAMLError as e:  # e.g. a control character, found before any token
        raise ConfigError([f"{path}: YAML error: {e}"]) from e
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        r.problems.append(r.syntax_problem(e, path))
        return None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: YAML error: {e}"]) from e
    finally:
        loader.dispose()


def _load(r: NodeReader, text: str, watch: list[str]) -> Config:
    root = _compose(r, text, r.path)
    r.raise_if_problems()
    if root is None:
        raise ConfigError(
            [f"{r.path}:1:1: the file is empty — start with 'version: 1' and a rules: list"]
        )
    top = r.mapping(root, "", "a mapping with version, agent, sources, webhooks, rules", None)
    if top is None:
        r.raise_if_problems()
        raise AssertionError("unreachable")
    _known_keys(r, top, _TOP_KEYS, main=None)

    if "version" not in top:
        r.warn(root, "", "no 'version:' — add 'version: 1' at the top of the file")
    else:
        vnode = top["version"][1]
        if not (isinstance(vnode, ScalarNode) and vnode.tag == TAG_INT and vnode.value == "1"):
            r.err(
                vnode,
                "version",
                f"unsupported version {describe(vnode)} — this detector reads 'version: 1'",
            )

    includes: list[IncludeConfig] = []
    files = [_File(r.path, root, top)]
    if "include" in top and top["include"][1].tag != TAG_NULL:
        includes, more, complete = _included_files(r, _includes(r, top["include"][1], watch))
        files += more
        if not complete:  # a file that cannot be read or parsed: its names are unknown
            r.raise_if_problems()

    for f in files:
        for key in ("agent", "defaults", "sources", "webhooks", "rules", "maintenance", "routes"):
            if key in f.top and f.top[key][1].tag == TAG_NULL:
                del f.top[key]  # an empty section (e.g. every entry commented out)

    # Names first (of every file), so references can be checked in any order and across files.
    declared = Declared(
        sources=_names_across(r, files, "sources", "source"),
        webhooks=_names_across(r, files, "webhooks", "webhook"),
    )
    _rule_names_across(r, files)

    sources: dict[str, SourceConfig] = {}
    webhooks: dict[str, WebhookConfig] = {}
    for f in files:
        if "sources" in f.top:
            sources.update(read_sources(r, declared, f.top["sources"][1]))
    for f in files:
        if "webhooks" in f.top:
            webhooks.update(read_webhooks(r, declared, f.top["webhooks"][1]))
    agent = read_agent(r, declared, top["agent"][1] if "agent" in top else None)
    defaults = read_defaults(r, declared, top["defaults"][1] if "defaults" in top else None)
    rules: list[RuleConfig] = []
    for f in files:
        if "rules" in f.top:
            rules += read_rules(r, declared, f.top["rules"][1], defaults)
    maintenance = (
        read_maintenance(r, top["maintenance"][1], {x.name for x in rules})
        if "maintenance" in top
        else ()
    )
    routes = read_routes(r, declared, top["routes"][1], tuple(rules)) if "routes" in top else ()
    if not any("rules" in f.top for f in files):
        r.warn(root, "", "no 'rules:' — nothing will be detected; add a rules: list")
    if rules and not declared.webhooks:
        r.warn(
            root,
            "",
            "no webhooks defined — alerts will only be logged; add a webhooks: section",
        )
    r.raise_if_problems()
    assert agent is not None and defaults is not None
    return Config(
        path=r.path,
        agent=agent,
        defaults=defaults,
        sources=sources,
        webhooks=webhooks,
        rules=tuple(rules),
        routes=routes,
        warnings=r.warning_texts(),
        maintenance=maintenance,
        files=tuple(r.files),
        includes=tuple(includes),
    )


def _known_keys(
    r: NodeReader, top: dict[str, tuple[Node, Node]], keys: tuple[str, ...], main: str | None
) -> None:
    """Drop the top-level keys that are not read (``x-…`` quietly); ``main``: of an included
    file, whose main file is ``main``."""
    for key, (knode, _) in list(top.items()):
        if key not in keys:
            if key.startswith("x-"):
                pass
            elif main is not None and key == "include":
                r.err(
                    knode,
                    "",
                    f"'include:' is only read from the main file ({main}), not from an included "
                    "one — list this pattern in the include: of the main file",
                )
            elif main is not None and key in _TOP_KEYS:
                r.err(
                    knode,
                    "",
                    f"'{key}:' is only read from the main file ({main}) — move it there; an "
                    "included file holds sources:, webhooks: and rules:",
                )
            else:
                hint = did_you_mean(key, keys) or "top-level keys are: " + ", ".join(keys)
                r.err(knode, "", f"unknown top-level key '{key}' — {hint}")
            del top[key]


def _includes(r: NodeReader, node: Node, watch: list[str]) -> list[tuple[IncludeConfig, Node]]:
    """The ``include:`` items (one path or glob, or a list), each with the files it matches.
    A relative item is looked up in the main file's directory; a glob's files are sorted; a
    glob may match nothing; a path (no * ? [) must exist."""
    if not isinstance(node, SequenceNode | ScalarNode):
        r.err(node, "include", f"expected a list of paths or globs, got {describe(node)}")
        return []
    items = node.value if isinstance(node, SequenceNode) else [node]
    base = os.path.dirname(r.path)
    out: list[tuple[IncludeConfig, Node]] = []
    for item in items:
        if not isinstance(item, ScalarNode) or item.tag != TAG_STR or not item.value:
            r.err(
                item,
                "include",
                f"expected a path or glob such as rules.d/*.yaml, got {describe(item)}",
            )
            continue
        pattern = r.string(item, "include", "a path or glob")
        if pattern is None:
            continue
        looked_up = os.path.join(base, os.path.expanduser(pattern))
        watch.append(looked_up)
        if glob.has_magic(looked_up):
            found = sorted(p for p in glob.glob(looked_up, recursive=True) if os.path.isfile(p))
        elif os.path.isdir(looked_up):
            r.err(
                item,
                "include",
                f"'{pattern}' is a directory — include its files with a glob, e.g. "
                f"{pattern.rstrip('/')}/*.yaml",
            )
            continue
        elif not os.path.exists(looked_up):
            r.err(
                item,
                "include",
                f"'{pattern}' does not exist ({looked_up}) — fix the path, or write a glob "
                "(e.g. rules.d/*.yaml), which may match no file",
            )
            continue
        else:
            found = [looked_up]
        out.append((IncludeConfig(pattern, looked_up, tuple(found), r.location(item)), item))
    return out


def _included_files(
    r: NodeReader, includes: list[tuple[IncludeConfig, Node]]
) -> tuple[list[IncludeConfig], list[_File], bool]:
    """Read and compose every included file once (a file matched twice, or the main file
    matched by a glob, is read once, where it came first): the includes with the files read,
    the files, and whether every file could be read and parsed."""
    complete = True
    seen = {os.path.realpath(r.path)}
    out: list[_File] = []
    kept: list[IncludeConfig] = []
    for inc, item in includes:
        files: list[str] = []
        for path in inc.files:
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            files.append(path)
            r.files.append(path)
            problem, text = _read(path)
            if problem is not None:
                r.err(item, f"include '{inc.pattern}'", f"{path}: {problem}")
                complete = False
                continue
            before = len(r.problems)
            root = _compose(r, text, path)
            complete = complete and len(r.problems) == before
            if root is None:
                continue  # an empty file (or all comments): nothing to add; or a syntax error
            top = r.mapping(root, "", "a mapping with sources, webhooks, rules", None)
            if top is None:
                continue
            _known_keys(r, top, _INCLUDED_KEYS, main=r.path)
            out.append(_File(path, root, top))
        kept.append(IncludeConfig(inc.pattern, inc.glob, tuple(files), inc.location))
    return kept, out, complete


def _names_across(r: NodeReader, files: list[_File], key: str, kind: str) -> set[str]:
    """The names declared under ``key`` in every file; a name declared in two files is an error
    at the second, naming the first (a duplicate in one file is the mapping's own error)."""
    first: dict[str, Node] = {}
    for f in files:
        entry = f.top.get(key)
        if entry is None or not isinstance(entry[1], MappingNode):
            continue
        for knode, _ in entry[1].value:
            if not isinstance(knode, ScalarNode) or knode.tag == "tag:yaml.org,2002:merge":
                continue
            name = str(knode.value)
            if name in first and r.file_of(first[name]) != f.path:
                r.err(
                    knode,
                    f"{kind} '{name}'",
                    f"already defined at {r.place(first[name])} — a {kind} name is shared by "
                    "every file of the config; rename one of them, or remove one",
                )
            first.setdefault(name, knode)
    return set(first)


def _rule_names_across(r: NodeReader, files: list[_File]) -> None:
    """A rule name used in two files is an error at the second, naming the first (a duplicate
    in one file is reported by ``rules.py``)."""
    first: dict[str, Node] = {}
    for f in files:
        entry = f.top.get("rules")
        if entry is None or not isinstance(entry[1], SequenceNode):
            continue
        for item in entry[1].value:
            if not isinstance(item, MappingNode):
                continue
            for k, v in item.value:
                if k.value == "name" and isinstance(v, ScalarNode) and v.tag == TAG_STR:
                    name = str(v.value)
                    if name in first and r.file_of(first[name]) != f.path:
                        r.err(
                            v,
                            f"rule '{name}'",
                            f"duplicate rule name, already defined at {r.place(first[name])} — "
                            "rule names are shared by every file of the config; rename one",
                        )
                    first.setdefault(name, v)
