"""The package's layering, checked on its import statements (ast; nothing is imported).

Layers, bottom up: ``mpc/`` (share arrays in, share arrays out) < ``tensor.py`` (and
``booltensor.py``) < ``functions/`` (SecretTensor in and out) < ``nn/``, ``runtime``,
``apps/``; ``net/`` holds transports only.  Forbidden directions (module-level AND
function-level imports): ``mpc -> tensor|functions``, ``tensor -> functions``,
``net -> runtime|apps``, ``nn -> mpc``.  And no import cycle among modules through
module-level imports.

The deprecated re-export shims (every module that imports ``mpcache._shim``: ``protocols/*``,
``persistent``, ``net/accounting``, ``net/launcher``, ``jobs``, ``generate``, ``explain``,
``bench/*``, ``cli_*``) may import across the layers; an import OF a shim counts as an
import of the modules it re-exports, so a shim cannot hide a forbidden direction.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mpcache

ROOT = Path(mpcache.__file__).resolve().parent
PKG = "mpcache"


def _modules() -> dict:
    """module name -> path, for every .py file of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(mod: str) -> bool:
    return MODULES.get(mod, Path()).name == "__init__.py"


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if _is_package(mod) else mod.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(mod: str, node) -> list:
    """The package modules an import statement names."""
    out = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        src = _resolve(mod, node)
        names = []
        for a in node.names:
            sub = f"{src}.{a.name}"
            names.append(sub if sub in MODULES else src)
    for name in names:
        while name and name not in MODULES:      # ``import mpcache.x.y`` of a name in x
            name = name.rpartition(".")[0]
        if name.split(".")[0] == PKG and name in MODULES:
            out.append(name)
    return out


def _imports(mod: str) -> list:
    """[(target, module_level, line)] for every import in ``mod``'s source."""
    tree = ast.parse(MODULES[mod].read_text(), str(MODULES[mod]))
    out = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend((t, top, child.lineno) for t in _targets(mod, child))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return out


IMPORTS = {m: _imports(m) for m in MODULES}

#: The deprecated re-exports: the modules that call ``mpcache._shim.reexport`` (and the
#: ``protocols`` package's docstring-only ``__init__``).
SHIMS = {m for m in MODULES if any(t == "mpcache._shim" for t, _, _ in IMPORTS[m])} | {
    "mpcache.protocols"}


def _through_shims(target: str, seen=()) -> set:
    """An import of a shim stands for the modules the shim re-exports."""
    if target == "mpcache._shim":
        return set()
    if target not in SHIMS:
        return {target}
    out = set()
    for t, _, _ in IMPORTS[target]:
        if t not in seen and t != target:
            out |= _through_shims(t, seen + (target,))
    return out


def layer(mod: str) -> str | None:
    parts = mod.split(".")
    if len(parts) < 2:
        return None
    top = parts[1]
    if top in ("mpc", "functions", "net", "nn", "apps", "cli"):
        return "apps" if top == "cli" else top
    if top in ("tensor", "booltensor"):
        return "tensor"
    if top == "runtime":
        return "runtime"
    return None


NEVER = {("mpc", "tensor"), ("mpc", "functions"), ("tensor", "functions"),
         ("net", "runtime"), ("net", "apps"), ("nn", "mpc")}

#: Edges that break the layering today, each (importer, imported); the test fails when
#: one of them disappears, so the list cannot go stale.  Empty since the launcher moved
#: from net/ to apps/.
KNOWN_VIOLATIONS: set = set()
#: Import cycles through module-level imports that exist today, each as its sorted
#: member set; same rule: fixing one fails the test until its entry is removed.
KNOWN_CYCLES: set = set()


def _violations() -> set:
    found = set()
    for mod, imps in IMPORTS.items():
        if mod in SHIMS:
            continue
        for raw, _, line in imps:
            for t in _through_shims(raw):
                if (layer(mod), layer(t)) in NEVER:
                    found.add((mod, t, line))
    return found


def test_no_forbidden_direction():
    found = _violations()
    bad = sorted(v for v in found if v[:2] not in KNOWN_VIOLATIONS)
    assert not bad, "imports against the layering (importer, imported, line):\n" + \
        "\n".join(f"  {m} -> {t} (line {ln})" for m, t, ln in bad)
    gone = KNOWN_VIOLATIONS - {v[:2] for v in found}
    assert not gone, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(gone)}"


def _cycles() -> list:
    """Strongly connected components (size > 1, or a self-import) of the module-level
    import graph, each with one cycle through it as a readable path (Tarjan)."""
    graph = {m: sorted({t for t, top, _ in IMPORTS[m] if top}) for m in MODULES}
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
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
            if len(comp) > 1 or v in graph[v]:
                comps.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            strong(m)
    return [(c, _one_cycle(graph, c)) for c in comps]


def _one_cycle(graph, comp) -> list:
    """A path start -> ... -> start inside the component (breadth-first)."""
    members, start = set(comp), comp[0]
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in graph[v]:
                if w == start:                   # start -> ... -> v -> start
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def test_no_import_cycle():
    found = _cycles()
    bad = [(c, path) for c, path in found if frozenset(c) not in KNOWN_CYCLES]
    assert not bad, "import cycles (module-level imports):\n" + "\n".join(
        "  " + " -> ".join(path) for _, path in bad)
    gone = KNOWN_CYCLES - {frozenset(c) for c, _ in found}
    assert not gone, f"fixed, remove from KNOWN_CYCLES: {sorted(map(sorted, gone))}"


# -- the checker itself, on small made-up graphs ---------------------------------------------
@pytest.mark.parametrize("importer,imported,bad", [
    ("mpcache.mpc.rep3", "mpcache.tensor", True),
    ("mpcache.mpc.pair", "mpcache.functions.compare", True),
    ("mpcache.tensor", "mpcache.functions", True),
    ("mpcache.net.transport", "mpcache.runtime", True),
    ("mpcache.net.pipe", "mpcache.apps.jobs", True),
    ("mpcache.nn.layers", "mpcache.mpc.base", True),
    ("mpcache.functions.compare", "mpcache.tensor", False),
    ("mpcache.tensor", "mpcache.mpc.base", False),
    ("mpcache.nn.layers", "mpcache.functions", False),
    ("mpcache.apps.jobs", "mpcache.runtime", False),
    ("mpcache.net.grpc_transport", "mpcache.cli.net", True),
    ("mpcache.net.transport", "mpcache.apps.launcher", True),
    ("mpcache.cli.net", "mpcache.apps.launcher", False),
    ("mpcache.apps.launcher", "mpcache.net.grpc_transport", False),
    ("mpcache.functions.select", "mpcache.mpc.rep3", False),
])
def test_rule_table(importer, imported, bad):
    assert ((layer(importer), layer(imported)) in NEVER) is bad


def test_imports_are_found_at_both_levels():
    """The walk sees function-level imports (not only module-level ones) and resolves
    relative imports, so a lazy import cannot slip past the direction check."""
    levels = {(t, top) for t, top, _ in IMPORTS["mpcache.runtime"]}
    assert ("mpcache.mpc.rep3", False) in levels          # inside make_protocol
    assert ("mpcache.accounting", True) in levels
    assert ("mpcache.tensor", True) in {(t, top) for t, top, _ in
                                        IMPORTS["mpcache.functions"]}


def test_the_shims_stand_for_their_targets():
    assert _through_shims("mpcache.protocols.select") == {
        "mpcache.functions.select", "mpcache.functions.topk", "mpcache.kernels"}
    assert _through_shims("mpcache.protocols.rep3") == {"mpcache.mpc.rep3"}
    assert _through_shims("mpcache.net.launcher") == {"mpcache.apps.launcher"}
    assert _through_shims("mpcache.bench.decode") == {"mpcache.apps.bench.decode"}
    assert {"mpcache.net.launcher", "mpcache.jobs", "mpcache.cli_net",
            "mpcache.bench"} <= SHIMS


def test_the_package_uses_the_new_paths():
    """The deprecated paths are for users: no module of the package imports a shim."""
    old = sorted((m, t, ln) for m, imps in IMPORTS.items() if m not in SHIMS
                 for t, _, ln in imps if t in SHIMS)
    assert not old, "imports of deprecated paths (importer, shim, line):\n" + "\n".join(
        f"  {m} -> {t} (line {ln})" for m, t, ln in old)


def test_the_launcher_lives_above_net():
    """net/ holds transports only: the launcher (runtime + jobs) is an app."""
    assert layer("mpcache.apps.launcher") == "apps"
    assert "mpcache.runtime" in {t for t, _, _ in IMPORTS["mpcache.apps.launcher"]}
    assert not [m for m in MODULES if layer(m) == "net" and m not in SHIMS
                and "mpcache.runtime" in {t for t, _, _ in IMPORTS[m]}]


# -- the method table and the deprecated paths ----------------------------------------------------
def test_every_method_comes_from_the_one_table():
    from mpcache.functions import METHODS
    from mpcache.tensor import SecretTensor
    for name, fn in METHODS.items():
        assert getattr(SecretTensor, name) is fn, name
    assert {"__lt__", "max", "top_k", "softmax", "select", "abs"} <= set(METHODS)


def test_old_paths_reexport_and_forward_patches():
    import mpcache.functions.select as new
    import mpcache.functions.topk as new_topk
    import mpcache.mpc.truncation as tr_new
    import mpcache.protocols.compare as old_cmp
    import mpcache.protocols.select as old
    import mpcache.protocols.truncation as tr_old
    from mpcache.functions import compare
    assert old.top_k is new_topk.top_k and old._reveal_lt is new_topk._reveal_lt
    assert old.one_hot is new.one_hot
    assert (old.max, old.min, old_cmp.abs, old_cmp.select) == (
        new.amax, new.amin, compare.absolute, compare.where)
    with pytest.MonkeyPatch.context() as mp:          # a patch through the old path ...
        mp.setattr(old, "ALL_PAIRS_PER_LEVEL", 7)
        mp.setattr(tr_old, "p0_mask", len)
        assert new_topk.ALL_PAIRS_PER_LEVEL == 7 and tr_new.p0_mask is len  # reaches the code
    assert new_topk.ALL_PAIRS_PER_LEVEL == old.ALL_PAIRS_PER_LEVEL != 7     # and is undone
    assert tr_new.p0_mask is tr_old.p0_mask is not len
