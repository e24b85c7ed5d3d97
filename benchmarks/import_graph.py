"""gradscope's own import graph, read from the source with ``ast``: modules, arrows, cycles, layers.

Every ``import`` statement of every module counts, wherever it sits: at the top,
inside a function, under ``if TYPE_CHECKING:`` (annotation-only imports are
imports of the design too), relative or absolute. ``from gradscope.x import name``
is an arrow to ``gradscope.x.name`` when that is a module, else to ``gradscope.x``.
A package's ``__init__`` is the module named after the package.

The layers are read from the fenced ``layers`` block of ``docs/architecture.md``:
one line per layer, top first, its modules separated by spaces (``capture.*``
stands for every module of the ``capture`` package; a ``?`` before a name marks a
planned module that need not exist yet). A module may import modules of its own
layer or of the layers below; an arrow to a layer above is an upward import.

Usage::

    python benchmarks/import_graph.py            # figures on stdout (markdown)
    python benchmarks/import_graph.py --json     # the same as JSON
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gradscope"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_FILE_LINES = 400
MAX_CLASS_LINES = 250
#: Directories whose files the length limit does not apply to (scripts of experiments).
LENGTH_EXEMPT = ("experiments",)


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``gradscope/capture/step.py`` -> ``gradscope.capture.step``; ``__init__`` -> the package."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The absolute module a (possibly relative) ``from`` import names."""
    if not node.level:
        return node.module or ""
    base = name.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The package modules ``name`` imports, each with the line of its first import."""
    tree = ast.parse(path.read_text(), str(path))
    top = name.split(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in known:  # gradscope.x.y.attr -> gradscope.x.y
            target = target.rpartition(".")[0]
        if target and target != name:
            out.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == top:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, name, path.name == "__init__.py")
            if source.split(".")[0] != top:
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                add(full if full in known else source, node.lineno)
    return out


def graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, for every module of the package."""
    mods = modules(package)
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(g) + 100))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out, key=len, reverse=True)


@dataclass
class Layers:
    """The layer list of ``docs/architecture.md``: top layer first."""

    rows: list[list[str]]
    planned: set[str] = field(default_factory=set)

    def layer_of(self, module: str) -> int | None:
        """The row index of ``module`` (0 = top), or None when the list does not name it."""
        rel = module.partition(".")[2] or "__init__"
        for i, row in enumerate(self.rows):
            for entry in row:
                if entry == rel or (entry.endswith(".*") and (
                        rel == entry[:-2] or rel.startswith(entry[:-1]))):
                    return i
        return None


def read_layers(text: str | None = None) -> Layers:
    """Parse the fenced ``layers`` block of ``docs/architecture.md``."""
    text = ARCHITECTURE.read_text() if text is None else text
    match = re.search(r"```layers\n(.*?)```", text, re.S)
    if match is None:
        raise ValueError(f"{ARCHITECTURE} has no ```layers block: add the layer list there")
    rows: list[list[str]] = []
    planned: set[str] = set()
    for line in match.group(1).splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        row = []
        for entry in line.split():
            if entry.startswith("?"):
                entry = entry[1:]
                planned.add(entry)
            row.append(entry)
        rows.append(row)
    return Layers(rows, planned)


def upward(g: dict[str, dict[str, int]], layers: Layers) -> list[tuple[str, str, int]]:
    """Arrows (importer, imported, line) from a layer to one above it."""
    out = []
    for src, targets in sorted(g.items()):
        ls = layers.layer_of(src)
        for dst, line in sorted(targets.items()):
            ld = layers.layer_of(dst)
            if ls is not None and ld is not None and ld < ls:
                out.append((src, dst, line))
    return out


def unlisted(g: dict[str, dict[str, int]], layers: Layers) -> list[str]:
    """Modules the layer list does not place."""
    return sorted(m for m in g if layers.layer_of(m) is None)


def stale(g: dict[str, dict[str, int]], layers: Layers) -> list[str]:
    """Entries of the layer list that name no module (planned ones excepted)."""
    out = []
    for row in layers.rows:
        for entry in row:
            if entry in layers.planned:
                continue
            probe = Layers([[entry]])
            if not any(probe.layer_of(m) is not None for m in g):
                out.append(entry)
    return out


def long_files(package: Path = PACKAGE, limit: int = MAX_FILE_LINES) -> dict[str, int]:
    """Files over ``limit`` lines outside the exempt directories."""
    out = {}
    for path in modules(package).values():
        if any(part in LENGTH_EXEMPT for part in path.relative_to(package).parts[:-1]):
            continue
        n = len(path.read_text().splitlines())
        if n > limit:
            out[str(path.relative_to(package.parent))] = n
    return out


def long_classes(package: Path = PACKAGE, limit: int = MAX_CLASS_LINES) -> dict[str, int]:
    """Classes over ``limit`` lines (decorators to last line), anywhere in the package."""
    out = {}
    for name, path in modules(package).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > limit:
                    out[f"{name}.{node.name}"] = n
    return out


def figures(package: Path = PACKAGE) -> dict:
    """Every figure this script reports, as one dict."""
    g = graph(package)
    out: dict = {
        "modules": len(g),
        "arrows": sum(len(t) for t in g.values()),
        "cycles": [{"size": len(c), "modules": c} for c in cycles(g)],
        "files_over_400": long_files(package),
        "classes_over_250": long_classes(package),
    }
    try:
        layers = read_layers()
    except (ValueError, FileNotFoundError) as exc:
        out["layers"] = str(exc)
    else:
        out["layers"] = len(layers.rows)
        out["upward"] = [f"{a} -> {b} (line {n})" for a, b, n in upward(g, layers)]
        out["unlisted"] = unlisted(g, layers)
        out["stale"] = stale(g, layers)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    data = figures()
    if "--json" in argv:
        print(json.dumps(data, indent=2))
        return data
    print(f"modules: {data['modules']}, arrows: {data['arrows']}, layers: {data['layers']}")
    print(f"cycles: {len(data['cycles'])} " + str([c["size"] for c in data["cycles"]]))
    for c in data["cycles"]:
        print("  - " + ", ".join(c["modules"]))
    for key in ("upward", "unlisted", "stale"):
        if key in data:
            print(f"{key}: {len(data[key])}")
            for item in data[key]:
                print(f"  - {item}")
    print(f"files over {MAX_FILE_LINES} lines (outside {', '.join(LENGTH_EXEMPT)}/): "
          f"{data['files_over_400']}")
    print(f"classes over {MAX_CLASS_LINES} lines: {data['classes_over_250']}")
    return data


if __name__ == "__main__":
    main()
