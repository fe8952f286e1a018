"""The import layers of ``detector/``: no import cycle, and no import against the table below.

Every module's imports are read with ``ast`` — module-level ones and those inside functions or
``if TYPE_CHECKING:`` alike, since a function-level import is still a dependency — and each module
may import only modules of its own layer or a lower one. A module the table does not name fails
the test: add it to the layer where it belongs. Entries are top-level modules or packages of
``detector/`` (``"__init__"`` is ``detector/__init__.py``); a dotted entry (``"delivery.cli"``)
places one submodule apart from its package, the longest matching entry wins.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest

# fmt: off
LAYERS: tuple[tuple[str, ...], ...] = (
    # the base of the frozen data classes, newline counting, loggers: import nothing from detector
    ("frozen", "newlines", "lazylog"),
    # plain data and pure helpers: import nothing else from detector (but the above)
    ("__init__", "clock", "timefmt", "model", "records", "templating", "timestamps", "schedule",
     "templates", "logs", "structured", "unitfiles",
     "routing", "digest"),
    # silences and maintenance windows: the mute decision's data and time arithmetic
    ("maintenance", "silences"),
    # rules.yaml into the model; the state file (SQLite), which stores records only
    ("config", "store"),
    # where lines come from, and what matches them
    ("sources", "sources.events", "matching"),
    ("rules",),
    # the agent's own problems, as agent-alert signals (pipeline and health build on it)
    ("problems",),
    ("alerts",),
    ("pipeline",),
    ("delivery",),
    ("health", "sdnotify", "http"),
    ("selfmon",),
    # the agent, and what the commands share
    ("service", "cli_support"),
    # the commands
    ("replay", "discover", "status", "templates_cli", "delivery.cli", "reload_cli", "outbox_cli",
     "stopnote_cli", "silence_cli"),
    ("cli", "__main__"),
)
# fmt: on

PACKAGE = Path(__file__).resolve().parents[1] / "detector"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{"pkg.sub.mod": path}`` for every ``.py`` file under ``root`` (a package dir)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _known(name: str, known: Iterable[str]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.C`` → ``a.b``)."""
    parts = name.split(".")
    names = set(known)
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in names:
            return candidate
    return None


def imports_of(module: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The known modules that ``module`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub if there is one
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            found = _known(target, known)
            if found is not None and found != module:
                out.add(found)
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    known = module_names(root, package)
    return {module: imports_of(module, path, known) for module, path in known.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def cycle_path(graph: Mapping[str, set[str]], component: Sequence[str]) -> list[str]:
    """One shortest cycle through the first module of ``component``: ``[a, b, …, a]``."""
    start, inside = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & inside):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{component} is not a cycle")


def layer_of(module: str, package: str, layers: Sequence[Sequence[str]]) -> int | None:
    """The layer of ``module`` by the longest table entry it is or lies in; None if unnamed."""
    rel = module[len(package) + 1 :] if module != package else "__init__"
    best: tuple[int, int] | None = None  # (entry length, layer)
    for n, layer in enumerate(layers):
        for entry in layer:
            if (rel == entry or rel.startswith(entry + ".")) and (
                best is None or len(entry) > best[0]
            ):
                best = (len(entry), n)
    return None if best is None else best[1]


def layer_problems(
    graph: Mapping[str, set[str]], package: str, layers: Sequence[Sequence[str]]
) -> list[str]:
    """Every module the table does not name, and every import of a higher layer."""
    problems: list[str] = []
    for module in sorted(graph):
        if layer_of(module, package, layers) is None:
            top = [*module.split("."), "__init__"][1]
            problems.append(
                f"{module} is not in the layer table (LAYERS in tests/test_layers.py): add "
                f"{top!r} to the layer it belongs in"
            )
    for module in sorted(graph):
        mine = layer_of(module, package, layers)
        if mine is None:
            continue
        for target in sorted(graph[module]):
            theirs = layer_of(target, package, layers)
            if theirs is not None and theirs > mine:
                problems.append(
                    f"{module} (layer {mine}) imports {target} (layer {theirs}), a higher layer"
                )
    return problems


def test_detector_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE, "detector")
    found = [" -> ".join(cycle_path(graph, c)) for c in cycles(graph)]
    assert found == [], "import cycles:\n" + "\n".join(found)


def test_detector_imports_follow_the_layer_table() -> None:
    problems = layer_problems(import_graph(PACKAGE, "detector"), "detector", LAYERS)
    assert problems == [], "\n".join(problems)


def test_the_layer_table_names_each_module_once() -> None:
    entries = [entry for layer in LAYERS for entry in layer]
    assert len(entries) == len(set(entries))


# --- the checker itself, on a small package ----------------------------------------------------


def write_package(root: Path, files: Mapping[str, str]) -> Path:
    pkg = root / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return pkg


TINY_LAYERS = (("__init__", "low"), ("mid", "sub"), ("high",))


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    pkg = write_package(
        tmp_path,
        {
            "low.py": "X = 1\n",
            "mid.py": "from pkg import low\n\ndef f():\n    from pkg.high import g\n    return g\n",
            "high.py": "import pkg.mid\n\ndef g():\n    return pkg.mid.f\n",
        },
    )
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.mid"] == {"pkg.low", "pkg.high"}
    assert cycles(graph) == [["pkg.high", "pkg.mid"]]
    assert cycle_path(graph, ["pkg.high", "pkg.mid"]) == ["pkg.high", "pkg.mid", "pkg.high"]


def test_checker_finds_a_cycle_through_relative_imports_in_a_subpackage(tmp_path: Path) -> None:
    pkg = write_package(
        tmp_path,
        {
            "sub/__init__.py": "from .a import A\n",
            "sub/a.py": "from . import b\nA = 1\n",
            "sub/b.py": "from ..sub import a\n",
        },
    )
    assert cycles(import_graph(pkg, "pkg")) == [["pkg.sub.a", "pkg.sub.b"]]


def test_checker_passes_a_package_without_cycles_or_upward_imports(tmp_path: Path) -> None:
    pkg = write_package(
        tmp_path,
        {
            "low.py": "import os\n",
            "mid.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import low\n"
            ),
            "high.py": "from pkg import mid, low\nfrom pkg.sub.a import A\n",
            "sub/__init__.py": "",
            "sub/a.py": "from pkg.low import os\nA = 1\n",
        },
    )
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.high"] == {"pkg.mid", "pkg.low", "pkg.sub.a"}
    assert graph["pkg.mid"] == {"pkg.low"}
    assert cycles(graph) == []
    assert layer_problems(graph, "pkg", TINY_LAYERS) == []


def test_checker_reports_an_upward_import_and_an_unnamed_module(tmp_path: Path) -> None:
    pkg = write_package(
        tmp_path,
        {
            "low.py": "def f():\n    from pkg.high import H\n    return H\n",
            "high.py": "H = 1\n",
            "mid.py": "",
            "stray.py": "",
        },
    )
    problems = layer_problems(import_graph(pkg, "pkg"), "pkg", TINY_LAYERS)
    assert problems == [
        "pkg.stray is not in the layer table (LAYERS in tests/test_layers.py): add 'stray' "
        "to the layer it belongs in",
        "pkg.low (layer 0) imports pkg.high (layer 2), a higher layer",
    ]


@pytest.mark.parametrize(
    ("module", "layer"),
    [("pkg.low", 0), ("pkg.sub.deep", 1), ("pkg.sub.cli", 2), ("pkg.other", None)],
)
def test_checker_places_a_module_by_its_longest_table_entry(module: str, layer: int | None) -> None:
    layers = (("low",), ("sub",), ("sub.cli",))
    assert layer_of(module, "pkg", layers) == layer
