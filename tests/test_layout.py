"""The shape of the code, checked: no import cycles, no module importing another's
private names, costmodel never importing torch or runtime, no file over ~500 lines
unless it is one idea (listed below with the reason).

    python -m pytest tests/test_layout.py -q     # "no cycles" as a test
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "costmodel", "prism_edge")
MAX_LINES = 500
ONE_IDEA = {   # longer files and why they stay one file
    "costmodel/model.py": "the fitted CostModel: fit, predict, save/load of one estimator",
    "runtime/netem/testbed.py": "the emulated network: namespaces, veth, tbf, rate check, launch",
    "costmodel/evaluate.py": "held-out evaluation and the tables the figures draw",
}


def _modules() -> dict:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = p
    return mods


def _imports(mod: str, path: pathlib.Path):
    """(imported module, names) for every import statement, relative ones resolved."""
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            for a in n.names:
                yield a.name, ()
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)]
                base = ".".join(up + ([base] if base else []))
            yield base, tuple(a.name for a in n.names)


def import_graph() -> dict:
    """module -> modules it imports (anywhere in the file, function bodies included);
    a package's __init__ counts as the package."""
    mods = _modules()
    g = {m: set() for m in mods}
    for m, p in mods.items():
        for base, names in _imports(m, p):
            for x in [base] + [f"{base}.{a}" for a in names]:
                if x in mods and x != m:
                    g[m].add(x)
    return g


def find_cycles(g: dict) -> list:
    """Every elementary cycle's smallest rotation, found by DFS (Tarjan SCCs first)."""
    index, low, on, stack, sccs, i = {}, {}, set(), [], [], [0]

    def strong(v):
        index[v] = low[v] = i[0]
        i[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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
            if len(comp) > 1:
                sccs.append(sorted(comp))
    for v in g:
        if v not in index:
            strong(v)
    return sccs


def _is_package_init(mod: str, other: str) -> bool:
    # a package importing its own submodules (to register them) is not a cycle edge back
    return other.startswith(mod + ".")


def test_no_import_cycles():
    g = import_graph()
    # edges from a package __init__ to its own submodules are the package's re-exports
    g = {m: {x for x in xs if not _is_package_init(m, x) and not _is_package_init(x, m)}
         for m, xs in g.items()}
    assert find_cycles(g) == []


def test_no_private_names_imported_across_modules():
    bad = []
    for m, p in _modules().items():
        for base, names in _imports(m, p):
            if base == "__future__" or not base.split(".")[0] in PACKAGES:
                continue
            bad += [f"{m}: from {base} import {n}" for n in names if n.startswith("_")]
    assert bad == []


def test_costmodel_never_imports_torch_or_runtime():
    for m, p in _modules().items():
        if not m.startswith("costmodel"):
            continue
        for base, _ in _imports(m, p):
            assert base.split(".")[0] not in ("torch", "runtime", "timm", "transformers"), (m, base)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES
                                        for p in (ROOT / pkg).rglob("*.py")))
def test_files_are_one_idea(path):
    n = len((ROOT / path).read_text().splitlines())
    assert n <= MAX_LINES or path in ONE_IDEA, f"{path}: {n} lines"


def test_graph_summary_is_printable(capsys):
    g = import_graph()
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges")
    assert len(g) > 20
