"""runtime.measure.hostcheck: the cores standing in for devices, timed alone and together."""
from __future__ import annotations

import json
import os

import pytest

from runtime.measure import hostcheck as hc
from runtime.cli import main


@pytest.mark.slow
def test_host_check_times_each_core_alone_and_together():
    cores = hc.usable_cores()[:2]
    res = hc.host_check(cores, iters=12, rounds=2)
    assert res["kind"] == hc.KIND and res["schema_version"] == 1
    assert [c["core"] for c in res["cores"]] == cores and res["rounds"] == 2
    for c in res["cores"]:
        for cond in ("solo", "concurrent"):
            s = c[cond]
            assert s["n"] == 24                     # iters x rounds
            assert 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
            assert s["spread_pct"] == pytest.approx((s["p90_ms"] / s["median_ms"] - 1) * 100, abs=0.01)
        assert c["slowdown_pct"] == pytest.approx(
            (c["concurrent"]["median_ms"] / c["solo"]["median_ms"] - 1) * 100, abs=0.01)
        if len(cores) == 1:                         # nothing to run concurrently with
            assert c["concurrent"] == c["solo"]
    assert res["summary"]["max_slowdown_pct"] == max(c["slowdown_pct"] for c in res["cores"])
    json.dumps(res, allow_nan=False)


def test_smt_siblings_include_the_core_itself():
    sib = hc.smt_siblings(hc.usable_cores()[0])
    if sib is None:
        pytest.skip("no CPU topology in sysfs")
    assert hc.usable_cores()[0] in sib


@pytest.mark.parametrize("args, msg", [
    (["--cores", "0,99999"], "cores [99999] are not usable here; allowed: ["),
    (["--cores", "a"], "--cores 'a' must be comma-separated integers"),
    (["--iters", "3"], "iters=3 must be an integer >= 10"),
    (["--rounds", "0"], "rounds=0 must be an integer >= 1"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, msg):
    out = tmp_path / "hc.json"
    assert main(["host-check", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and "\n" not in err
    assert not out.exists()


def test_repeated_core_is_refused():
    c = hc.usable_cores()[0]
    with pytest.raises(hc.HostCheckError, match="repeat a core"):
        hc.host_check([c, c], iters=10)


def test_cli_writes_the_json_it_prints(tmp_path, capsys):
    out = tmp_path / "hc.json"
    assert main(["host-check", "--cores", str(hc.usable_cores()[0]), "--iters", "10", "--rounds", "1",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert not [f for f in os.listdir(tmp_path) if f != "hc.json"]   # no temp file left
