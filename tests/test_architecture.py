"""The package's dependency rule, read from the source: layers point one way and no import cycles.

``_errors <- io <- core <- viz <- plugin``: a module imports only from its own layer or the layers
before it; ``cli`` uses ``io`` and ``core`` (and ``plugin.viewer`` for ``demo --view``); ``io`` and
``core`` never import napari, Qt or matplotlib. Every import counts, also those inside functions;
only imports under ``if TYPE_CHECKING:`` (never executed) are left out. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import napari_spatial_impute

PKG = "napari_spatial_impute"
ROOT = Path(napari_spatial_impute.__file__).parent
LAYERS = {"_errors": 0, "_version": 0, "io": 1, "core": 2, "viz": 3, "plugin": 4}
GUI_LIBRARIES = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "superqt",
    "magicgui",
    "matplotlib",
    "vispy",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path, type_only: bool = False) -> set[str]:
    """Modules imported by ``path`` when it runs (``TYPE_CHECKING`` blocks left out unless
    ``type_only``)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not type_only:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            for alias in node.names:  # ``from pkg import submodule``
                found.add(f"{module}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _runtime_imports(path) if m in modules and m != name}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


GRAPH = _graph()


def test_the_graph_is_read():
    assert len(GRAPH) > 30
    assert f"{PKG}.core.mapping" in GRAPH[f"{PKG}.cli"] or any(
        m.startswith(f"{PKG}.core") for m in GRAPH[f"{PKG}.cli"]
    )


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) is not None))
def test_layers_point_one_way(module):
    own = _layer(module)
    wrong = sorted(m for m in GRAPH[module] if (_layer(m) or 0) > own)
    assert not wrong, f"{module} (layer {own}) imports later layers: {wrong}"


def test_cli_uses_core_and_io_only():
    allowed_plugin = {f"{PKG}.plugin.viewer"}
    wrong = sorted(
        m for m in GRAPH[f"{PKG}.cli"] if _layer(m) in (3, 4) and m not in allowed_plugin
    )
    assert not wrong, f"cli imports {wrong}"


@pytest.mark.parametrize("layer", ["io", "core"])
def test_science_layers_import_no_gui(layer):
    offenders = {}
    for path in (ROOT / layer).rglob("*.py"):
        gui = sorted(m for m in _runtime_imports(path) if m.split(".")[0] in GUI_LIBRARIES)
        if gui:
            offenders[_module_name(path)] = gui
    assert not offenders, f"{layer}/ imports GUI libraries: {offenders}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycles():
    # the package __init__ is the lazy facade over everything; a module importing the package
    # itself (for __version__) would close a cycle through it, so it counts like any module
    assert _cycles(GRAPH) == []


def test_no_import_cycles_in_the_core_not_even_for_types():
    """Issue 22: result, project, export and uncertainty imported each other through type-only
    imports; the result is now a record the others take, and the maps sit below mapping."""
    core = {_module_name(p): p for p in (ROOT / "core").rglob("*.py")}
    graph = {
        name: {m for m in _runtime_imports(path, type_only=True) if m in core and m != name}
        for name, path in core.items()
    }
    assert _cycles(graph) == []
    result = graph[f"{PKG}.core.result"]
    assert not any(m.endswith((".project", ".export", ".uncertainty")) for m in result)
    maps = [m for m in graph if m.startswith(f"{PKG}.core.maps")]
    assert maps and not any(f"{PKG}.core.mapping" in graph[m] for m in maps)


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
