"""Load rules.yaml into the frozen dataclasses of ``model.py``, or explain exactly what is wrong.

Sits at the very start of the flow and drives the rest of this package: :func:`load_config` reads
the file, composes it to YAML nodes (so every key and value keeps its line and column), checks the
top level (``version: 1``, known keys; keys starting with ``x-`` are ignored, so they can hold YAML
anchors), collects the declared source and webhook names, then hands each section to
``sections.py``, the rule list to ``rules.py`` and the ``routes:`` list to ``routes.py`` (after
the rules, which it is checked against). All problems are raised together as one
:class:`~detector.config.nodes.ConfigError`, sorted by position; warnings go to
``Config.warnings``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from detector.config.nodes import (
    TAG_INT,
    TAG_NULL,
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
from detector.model import Config

_TOP_KEYS = ("version", "agent", "defaults", "sources", "webhooks", "rules", "routes")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate rules.yaml; raises :class:`ConfigError` listing every problem."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{name}: not valid UTF-8 at byte {e.start} — save the file as UTF-8"]
        ) from e
    except OSError as e:
        raise ConfigError([f"{name}: cannot read: {e.strerror or e}"]) from e
    return parse_config(text, name, env)


def parse_config(
    text: str, path: str = "rules.yaml", env: Mapping[str, str] | None = None
) -> Config:
    """Validate rules.yaml given as text; ``path`` is only used in messages and ``Config.path``."""
    return _load(NodeReader(path, os.environ if env is None else env), text)


def _load(r: NodeReader, text: str) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        r.problems.append(r.syntax_problem(e))
        r.raise_if_problems()
        raise AssertionError("unreachable") from e
    except yaml.YAMLError as e:
        raise ConfigError([f"{r.path}: YAML error: {e}"]) from e
    if root is None:
        raise ConfigError(
            [f"{r.path}:1:1: the file is empty — start with 'version: 1' and a rules: list"]
        )
    top = r.mapping(root, "", "a mapping with version, agent, sources, webhooks, rules", None)
    if top is None:
        r.raise_if_problems()
        raise AssertionError("unreachable")
    for key, (knode, _) in list(top.items()):
        if key not in _TOP_KEYS:
            if not key.startswith("x-"):
                hint = did_you_mean(key, _TOP_KEYS) or "top-level keys are: " + ", ".join(_TOP_KEYS)
                r.err(knode, "", f"unknown top-level key '{key}' — {hint}")
            del top[key]

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

    # Names first, so references can be checked in any order.
    declared = Declared(
        sources=_section_names(top.get("sources")), webhooks=_section_names(top.get("webhooks"))
    )

    for key in ("agent", "defaults", "sources", "webhooks", "rules", "routes"):
        if key in top and top[key][1].tag == TAG_NULL:
            del top[key]  # an empty section (e.g. every entry commented out)
    sources = read_sources(r, declared, top["sources"][1]) if "sources" in top else {}
    webhooks = read_webhooks(r, declared, top["webhooks"][1]) if "webhooks" in top else {}
    agent = read_agent(r, declared, top["agent"][1] if "agent" in top else None)
    defaults = read_defaults(r, declared, top["defaults"][1] if "defaults" in top else None)
    rules = read_rules(r, declared, top["rules"][1], defaults) if "rules" in top else ()
    routes = read_routes(r, declared, top["routes"][1], rules) if "routes" in top else ()
    if "rules" not in top:
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
        rules=rules,
        routes=routes,
        warnings=r.warning_texts(),
    )


def _section_names(entry: tuple[Node, Node] | None) -> set[str]:
    if entry is None or not isinstance(entry[1], MappingNode):
        return set()
    return {str(k.value) for k, _ in entry[1].value if isinstance(k, ScalarNode)}
