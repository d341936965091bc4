"""costmodel.evaluate / costmodel.analysis and `python -m costmodel evaluate`: torch- and
matplotlib-free, the held-out tables, the subcommands' JSON and their --out files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from costmodel import evaluate
from costmodel.cli import main as cli_main
from costmodel.perfmap import PerfMap
from costmodel.synthetic import synthetic_perfmap

ROOT = Path(__file__).resolve().parent.parent
PERFMAPS = ROOT / "data" / "perfmaps"


def test_import_does_not_pull_torch_or_matplotlib():
    code = ("import sys, costmodel, costmodel.evaluate, costmodel.analysis, costmodel.cli; "
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def small_map():
    return PerfMap.from_dict(synthetic_perfmap(
        axes={"batch": (1, 4, 16), "bw": (100.0, 400.0), "cr": (4.95, 9.9), "img_size": (128,),
              "world_size": (2,)}, seed=3))


def test_held_out_scores_three_models_per_axis(small_map):
    res = evaluate.held_out(small_map, quick=True, axes=("bw",), keep_predictions=True)
    assert list(res) == ["bw"] and res["bw"]["values"] == [100.0, 400.0]
    for m in ("hybrid", "analytical", "forest"):
        assert set(res["bw"][m]) == set(evaluate.TARGETS)
        assert res["bw"][m]["latency"]["n"] > 0
    pr = res["bw"]["predictions"]
    assert len(pr["keys"]) == len(pr["hybrid"]) and set(pr["hybrid_phases"]) == {"compute", "staging", "comm"}


def test_situations_need_every_candidate(small_map):
    s = evaluate.situations(small_map, [4.95, 9.9])
    assert s and all(set(d) == {"single", "voltage", "prism(cr=4.95)", "prism(cr=9.9)"} for d in s.values())
    assert evaluate.situations(small_map, [3.3]) == {}


@pytest.mark.skipif(not (PERFMAPS / "testbed_vit_tp3.json").exists(), reason="no P = 3 maps")
def test_cli_extrapolation_writes_json_with_its_command(tmp_path, capsys):
    out = tmp_path / "x.json"
    assert cli_main(["evaluate", "extrapolation", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    assert written["command"] == f"python -m costmodel evaluate extrapolation --out {out}"
    assert written["profile"] == "testbed-vit-tp"
    assert set(written["strategies"]) == {"voltage", "prism", "tensor_parallel", "galaxy"}
    assert all(np.isfinite(v["median_ape"]) for v in written["strategies"].values())


def test_cli_held_out_quick(tmp_path, capsys):
    m = tmp_path / "m.json"
    m.write_text(json.dumps(synthetic_perfmap(
        axes={"batch": (1, 4, 16), "bw": (100.0, 400.0), "cr": (9.9,), "img_size": (128,),
              "world_size": (2,)}, seed=1)))
    assert cli_main(["evaluate", "held-out", str(m), "--axes", "batch", "--quick"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["command"].startswith("python -m costmodel evaluate held-out")
    assert list(d["held_out"]) == ["batch"] and d["held_out"]["batch"]["hybrid"]["latency"]["n"] > 0


def test_cli_evaluate_bad_input_exits_2(tmp_path, capsys):
    assert cli_main(["evaluate", "held-out", str(tmp_path / "missing.json")]) == 2
    assert cli_main(["evaluate", "cross-session", str(tmp_path / "a.json")]) == 2      # needs two maps
    assert cli_main(["evaluate", "nonsense"]) == 2


def test_every_result_file_says_its_command():
    for p in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        d = json.loads(p.read_text())
        assert isinstance(d.get("command"), str) and d["command"], f"{p.name} has no top-level 'command'"
