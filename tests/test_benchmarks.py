"""Every benchmarks/*.py imports as its script would (benchmarks/ on sys.path for sibling
imports, no sys.path hacks) without running anything, and without torch unless it is a
torch benchmark; each names its command in its module docstring."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
FILES = sorted(f for f in os.listdir(BENCH) if f.endswith(".py"))
STEMS = {f[:-3] for f in FILES}
# benchmarks allowed to import torch at module level (GPU benchmarks); every other one
# imports torch inside the functions that need it
TORCH_AT_IMPORT = {"gpu_staging"}
HELPERS = {"fidelity_common"}  # imported by siblings, no command of its own


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench_path(monkeypatch):
    """benchmarks/ first on sys.path, as for `python benchmarks/x.py`; sibling modules
    imported by a benchmark are forgotten afterwards."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(BENCH)
    yield
    for name in set(sys.modules) - before:
        if name in STEMS or name.startswith("_bench_"):
            del sys.modules[name]


def test_found_benchmarks():
    assert {"bench_runtime", "bench_tp_galaxy", "fidelity_common", "train_vit_digits"} <= STEMS


@pytest.mark.parametrize("fname", FILES)
def test_imports_and_names_its_command(fname, bench_path, capsys):
    stem = fname[:-3]
    if stem in TORCH_AT_IMPORT:
        pytest.importorskip("torch")
    mod = _load(os.path.join(BENCH, fname), f"_bench_{stem}")
    out = capsys.readouterr()
    assert out.out == "", f"importing {fname} printed: {out.out[:200]!r}"
    doc = mod.__doc__ or ""
    assert doc.strip(), f"{fname} has no module docstring"
    if stem not in HELPERS:
        assert callable(getattr(mod, "main", None)), f"{fname} has no main()"
        assert f"python benchmarks/{fname}" in doc, f"{fname}'s docstring does not name its command"


_NO_TORCH = r"""
import importlib.abc, importlib.util, json, os, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch blocked by the test")

sys.meta_path.insert(0, _Block())
bench = sys.argv[1]
sys.path.insert(0, bench)
errors = {}
for fname in sys.argv[2:]:
    spec = importlib.util.spec_from_file_location("_bench_" + fname[:-3], os.path.join(bench, fname))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException as e:  # noqa: BLE001 - reported to the test
        errors[fname] = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps(errors))
"""


def test_imports_without_torch():
    """Importing a (non-torch) benchmark needs neither torch nor a run: torch is blocked
    in a fresh interpreter, and nothing but the result line reaches stdout."""
    files = [f for f in FILES if f[:-3] not in TORCH_AT_IMPORT]
    r = subprocess.run([sys.executable, "-c", _NO_TORCH, BENCH, *files], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("RESULT "), r.stdout[-2000:]
    assert json.loads(lines[0][len("RESULT "):]) == {}
