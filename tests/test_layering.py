"""The package's import graph: no cycles between its modules at import time, and the search
does not depend on the export stage (a trial needs a byte count, not the exporter)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "autocompress"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(mod: str, path: Path, mods: dict, *, top_level: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    nodes = tree.body if top_level else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if full in mods else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in mods and m != mod}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycles_at_import_time():
    mods = _modules()
    graph = {m: _imports(m, p, mods, top_level=True) for m, p in mods.items()}
    assert not _cycles(graph)
    assert len(graph) > 50  # the walk saw the package


def test_no_module_cycles_even_through_imports_inside_functions():
    """A function-local import that closes a cycle hides a layering mistake; none is left."""
    mods = _modules()
    graph = {m: _imports(m, p, mods, top_level=False) for m, p in mods.items()}
    assert not _cycles(graph)


def test_search_does_not_import_the_export_stage():
    mods = _modules()
    search_mods = [m for m in mods if m.startswith("autocompress.search.")]
    assert len(search_mods) > 5  # the search package is where this test looks for it
    for m, p in mods.items():
        if m.startswith("autocompress.search"):
            bad = {d for d in _imports(m, p, mods, top_level=False) if ".export" in d}
            assert not bad, (m, bad)


def _stated_layers() -> list[list[str]]:
    """The layer list of the package docstring: lines ``N. title: mod, mod, ...`` (continued on
    indented lines), lowest layer first."""
    import re

    import autocompress

    doc = autocompress.__doc__.split("Layers", 1)[1]
    layers: list[list[str]] = []
    for line in doc.splitlines():
        m = re.match(r"\s*\d+\. [^:]+: (.*)", line)
        if m:
            layers.append([])
        elif not layers or not line.startswith("   ") or not line.strip():
            if layers and not line.strip():
                break
            continue
        text = m.group(1) if m else line
        layers[-1] += [w.strip(" .,") for w in text.split(",") if w.strip(" .,")]
    return layers


def _layer_of(mod: str, layers: list[list[str]]) -> int:
    """Index of the layer naming the longest prefix of ``mod`` (``hardware`` covers
    ``hardware.table`` unless ``hardware.table`` is named itself)."""
    rel = mod.removeprefix("autocompress").removeprefix(".") or "autocompress"
    best = (-1, -1)
    for i, names in enumerate(layers):
        for n in names:
            if rel == n or rel.startswith(n + "."):
                best = max(best, (len(n), i))
    assert best[1] >= 0, f"{mod} is in no layer of the package docstring"
    return best[1]


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    layers = _stated_layers()
    assert len(layers) >= 4 and "config" in layers[0]
    mods = _modules()
    named = {n for names in layers for n in names}
    assert {f"autocompress.{n}" for n in named - {"autocompress"}} <= set(mods)  # no stale names
    bad = []
    for m, p in mods.items():
        mine = _layer_of(m, layers)
        for d in _imports(m, p, mods, top_level=False):
            if _layer_of(d, layers) > mine:
                bad.append(f"{m} (layer {mine + 1}) imports {d} (layer {_layer_of(d, layers) + 1})")
    assert not bad, "\n".join(sorted(bad))
