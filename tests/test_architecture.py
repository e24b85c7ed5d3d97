"""The package's own import graph: no cycle, nothing upward, every module placed in a layer.

The graph is read from the source with ``ast`` by ``benchmarks/import_graph.py``
(every import statement: top-level, in a function, under ``TYPE_CHECKING``,
relative or absolute); the layers are the fenced ``layers`` block of
``docs/architecture.md``. ``python benchmarks/import_graph.py`` prints the same
figures.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "import_graph.py"

#: Files over the length limit today, at most this long: the list may only shrink.
LONG_FILES: dict[str, int] = {
    # the families with their derivatives beside them: adding one touches this file only
    "gradscope/activations.py": 412}
#: Classes over the length limit today, at most this long: the list may only shrink.
LONG_CLASSES: dict[str, int] = {"gradscope.monitor.Monitor": 261}


@pytest.fixture(scope="module")
def ig() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graph(ig: ModuleType) -> dict[str, dict[str, int]]:
    return ig.graph()


def test_no_import_cycle(ig: ModuleType, graph: dict[str, dict[str, int]]) -> None:
    assert ig.cycles(graph) == []


def test_every_module_has_a_layer_and_every_layer_entry_a_module(
        ig: ModuleType, graph: dict[str, dict[str, int]]) -> None:
    layers = ig.read_layers()
    assert ig.unlisted(graph, layers) == [], "add these modules to the layers block of " \
        "docs/architecture.md"
    assert ig.stale(graph, layers) == [], "these entries of docs/architecture.md's layers " \
        "block name no module (mark a planned one with ?)"


def test_no_module_imports_a_layer_above_its_own(
        ig: ModuleType, graph: dict[str, dict[str, int]]) -> None:
    assert ig.upward(graph, ig.read_layers()) == []


def test_records_imports_nothing_of_gradscope(graph: dict[str, dict[str, int]]) -> None:
    assert graph["gradscope.records"] == {}
    assert graph["gradscope._version"] == {}


def test_capture_writes_to_no_sink_and_no_history(graph: dict[str, dict[str, int]]) -> None:
    """Capture hooks, reduces and defers to the queue: no writer, findings or flush module."""
    for name, targets in graph.items():
        if name.startswith("gradscope.capture"):
            bad = [t for t in targets if t.startswith(("gradscope.writers", "gradscope.findings",
                                                       "gradscope.flush", "gradscope.monitor"))]
            assert bad == [], name


def test_no_file_or_class_grows_past_the_limits(ig: ModuleType) -> None:
    files = ig.long_files()
    assert set(files) <= set(LONG_FILES), f"over {ig.MAX_FILE_LINES} lines: {files}"
    assert all(files[f] <= LONG_FILES[f] for f in files), files
    classes = ig.long_classes()
    assert set(classes) <= set(LONG_CLASSES), f"over {ig.MAX_CLASS_LINES} lines: {classes}"
    assert all(classes[c] <= LONG_CLASSES[c] for c in classes), classes


# ------------------------------------------------ the reader itself, on a made-up package
_FILES = {
    "__init__.py": "from pkg.top import run\n",
    "top.py": "from . import low\nfrom .mid import helper\n\ndef run():\n    return helper()\n",
    "mid.py": ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.low import T\n\n"
               "def helper():\n    import pkg.low.deep\n    return 1\n"),
    "low/__init__.py": "",
    "low/deep.py": "from ..mid import helper  # upward, and a cycle mid -> low.deep -> mid\n",
}
_LAYERS = "```layers\n__init__ top\nmid\nlow.* ?planned.*\n```\n"


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    for rel, text in _FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_reader_sees_every_kind_of_import(ig: ModuleType, package: Path) -> None:
    g = ig.graph(package)
    assert set(g["pkg"]) == {"pkg.top"}
    assert set(g["pkg.top"]) == {"pkg.low", "pkg.mid"}  # `from . import low`: the module
    assert set(g["pkg.mid"]) == {"pkg.low", "pkg.low.deep"}  # TYPE_CHECKING, in a function
    assert set(g["pkg.low.deep"]) == {"pkg.mid"}  # relative, two levels up


def test_an_upward_import_a_cycle_and_a_missing_module_are_caught(
        ig: ModuleType, package: Path) -> None:
    g = ig.graph(package)
    assert ig.cycles(g) == [["pkg.low.deep", "pkg.mid"]]
    layers = ig.read_layers(_LAYERS)
    assert [(a, b) for a, b, _ in ig.upward(g, layers)] == [("pkg.low.deep", "pkg.mid")]
    assert ig.unlisted(g, layers) == [] and ig.stale(g, layers) == []
    layers = ig.read_layers("```layers\n__init__ top\nmid\nlow.deep\ngone\n```\n")
    assert ig.unlisted(g, layers) == ["pkg.low"]
    assert ig.stale(g, layers) == ["gone"]
    with pytest.raises(ValueError, match="no ```layers block"):
        ig.read_layers("# no list here\n")
