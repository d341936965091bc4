"""`python -m runtime run`: bad input, JSON output, --save-output, torchrun, traces."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from runtime.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "test_vit", "--img-size", "64", "--depth", "2"]   # N = 17, L_p = 9


def _cli(args, timeout=180, cmd=None):
    env = dict(os.environ, PRISM_EDGE_LOG="WARNING")
    return subprocess.run(cmd or [sys.executable, "-m", "runtime", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,needle", [
    (["--strategy", "prism", "--cr", "0.5"], "cr must be in [1, 9]"),
    (["--strategy", "prism", "--cr", "50"], "cr must be in [1, 9]"),
    (["--strategy", "prism", "--m", "10"], "m must be in [1, 9]"),
    (["--strategy", "voltage", "--batch", "0"], "batch=0 must be an integer >= 1"),
    (["--strategy", "voltage", "--world-size", "0"], "world-size=0 must be an integer >= 1"),
    (["--strategy", "voltage", "--partition", "10,10"], "sum to 20, not to the 17 tokens"),
    (["--strategy", "voltage", "--partition", "a,b"], "comma-separated integers"),
    (["--strategy", "nope"], "unknown strategy 'nope'; known: ["),
    (["--strategy", "voltage", "--exchange", "bcast"], "known: ['pairwise', 'allgather']"),
    (["--strategy", "single", "--world-size", "2"], "must be 1"),
    (["--strategy", "prism"], "exactly one of cr or m"),
    (["--strategy", "voltage", "--checkpoint", "/nonexistent.pt"], "does not exist"),
    (["--strategy", "voltage", "--heads", "1,1"], "applies to ['coformer', 'galaxy', 'tensor_parallel']"),
    (["--strategy", "galaxy", "--heads", "1,x"], "comma-separated integers"),
    (["--strategy", "galaxy", "--heads", "3,3"], "sum to 2"),
])
def test_bad_input_one_line_exit_2(args, needle, capsys):
    assert main(["run", *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error:") and needle in err, err


def test_unknown_model_exit_2_subprocess():
    r = _cli(["run", "--model", "no_such_vit", "--strategy", "voltage"])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown model 'no_such_vit'")


@pytest.mark.gloo
def test_save_output_voltage_equals_single_across_runs(tmp_path):
    """Separate runs with the same seed see the same model and data: Voltage's saved
    logits equal the single-device ones."""
    outs = {}
    for strat, extra in [("single", ["--world-size", "1"]), ("voltage", ["--world-size", "2"]),
                         ("prism", ["--world-size", "2", "--cr", "3"])]:
        p = tmp_path / f"{strat}.npy"
        r = _cli(["run", *TINY, "--strategy", strat, *extra, "--batch", "3", "--seed", "7",
                  "--save-output", str(p)])
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["schema_version"] == 1 and res["batch"] == 3
        assert len(res["ranks"]) == res["world_size"]
        assert all(len(rk["blocks"]) == 2 for rk in res["ranks"])
        assert res["ranks"][0]["comm_bytes"] == res["analytical"]["comm_bytes"][0]
        outs[strat] = np.load(p)
    np.testing.assert_allclose(outs["voltage"], outs["single"], atol=1e-4, rtol=1e-4)
    assert np.abs(outs["prism"] - outs["single"]).max() > 1e-3
    assert res["m"] == 3 and res["cr"] == 3.0


@pytest.mark.gloo
def test_torchrun_standalone(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    p = tmp_path / "tr.npy"
    r = _cli(None, cmd=[torchrun, "--standalone", "--nproc_per_node", "2", "-m", "runtime", "run",
                        *TINY, "--strategy", "prism", "--cr", "1", "--world-size", "2",
                        "--save-output", str(p)])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["world_size"] == 2 and res["strategy"] == "prism" and p.exists()
    ref = tmp_path / "ref.npy"
    r = _cli(["run", *TINY, "--strategy", "single", "--world-size", "1", "--save-output", str(ref)])
    np.testing.assert_allclose(np.load(p), np.load(ref), atol=1e-4, rtol=1e-4)


@pytest.mark.gloo
def test_profiler_trace_labels_phases(tmp_path):
    r = _cli(["run", *TINY, "--strategy", "voltage", "--world-size", "2", "--trace", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    for rank in (0, 1):
        trace = json.loads((tmp_path / f"trace_rank{rank}.json").read_text())
        names = {e.get("name", "") for e in trace["traceEvents"]}
        for phase in ("compute", "staging", "comm"):
            assert any(n.endswith("/" + phase) for n in names), (rank, phase)


@pytest.mark.gloo
@pytest.mark.parametrize("strategy,extra", [
    ("tensor_parallel", ["--heads", "2,0", "--cols", "128,64"]),
    ("galaxy", ["--heads", "1,1", "--tiles", "2"]),
])
def test_tensor_parallel_flags_reach_the_strategy(tmp_path, strategy, extra):
    """Uneven head / column splits from the CLI: the saved logits equal one device's."""
    ref, out = tmp_path / "single.npy", tmp_path / f"{strategy}.npy"
    r = _cli(["run", *TINY, "--strategy", "single", "--world-size", "1", "--save-output", str(ref)])
    assert r.returncode == 0, r.stderr
    r = _cli(["run", *TINY, "--strategy", strategy, "--world-size", "2", *extra, "--save-output", str(out)])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ranks"][0]["comm_bytes"] == res["analytical"]["comm_bytes"][0]
    np.testing.assert_allclose(np.load(out), np.load(ref), atol=1e-4, rtol=1e-4)


def test_every_command_has_a_help_page():
    """argparse formats every command's usage (a mutually exclusive group left empty once
    broke `run --help` on Python 3.11)."""
    import argparse

    from runtime.cli import COMMANDS, _parser

    ap = _parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    for name in COMMANDS:
        text = sub.choices[name].format_help()
        assert text.startswith("usage:"), name
