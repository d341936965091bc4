"""Bad input, table-driven (issue 20): both CLIs and the Python API.

Every CLI case: exit code 2, exactly one line on stderr starting with "error:", no
traceback, and nothing created or changed in the case's folder (nor the system's null
device). Every API case: a ValueError with a one-line message, nothing changed.
Outputs include a device-node twin made with os.mknod (when root) and a read-only
folder: chmod 555 when not root; as root (which bypasses the mode bits) a read-only
tmpfs mount, skipped with the reason when mounting is not permitted.

In-process calls (runtime.cli.main / costmodel.cli.main with capsys). With
PRISM_EDGE_BAD_INPUT_TABLE=FILE the case table (command, exit, first line) is written
there in Markdown (docs/reliability.md holds it).
"""
import json
import math
import os
import stat
import subprocess
import sys

import pytest

import costmodel
from costmodel import checks, safeio
from costmodel.decision import DecisionTable, choose
from costmodel.perfmap import PerfMapError, load_perfmap, save_perfmap, validate_perfmap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAP = os.path.join(ROOT, "data", "perfmaps", "jetson_orin_nano_paper.json")
PROFILE = os.path.join(ROOT, "costmodel", "profiles", "jetson-orin-nano.json")
TINY = ["--model", "test_vit", "--img-size", "32", "--depth", "1"]
ROWS: list = []
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class _NotATensor:
    """Pickled into a checkpoint: torch.load(weights_only=True) refuses it."""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    e = {"tmp": str(d), "map": MAP, "profile": PROFILE, "missing": str(d / "missing.json"),
         "dir": str(d / "adir")}
    os.mkdir(e["dir"])
    (d / "trunc.json").write_text(open(PROFILE).read()[:300])
    e["trunc"] = str(d / "trunc.json")
    doc = json.load(open(MAP))
    doc["records"][0]["compute_ms"] = float("nan")
    (d / "nanmap.json").write_text(json.dumps(doc))          # json writes the NaN literal
    e["nanmap"] = str(d / "nanmap.json")
    import torch
    torch.save({"w": torch.zeros(2), "x": _NotATensor()}, d / "pickled.pt")
    e["badckpt"] = str(d / "pickled.pt")
    # a twin of the null device (root: mknod); else the system's own
    e["dev"] = "/dev/null"
    if IS_ROOT:
        try:
            os.mknod(d / "null-twin", stat.S_IFCHR | 0o666, os.makedev(1, 3))
            e["dev"] = str(d / "null-twin")
        except OSError:
            pass
    ro = d / "ro"
    ro.mkdir()
    e["ro"], e["ro_skip"], mounted = str(ro), None, False
    if IS_ROOT:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            mounted = True
        else:
            e["ro_skip"] = f"root bypasses chmod 555 and a read-only tmpfs mount failed: {r.stderr.strip()}"
    else:
        ro.chmod(0o555)
    yield e
    if mounted:
        subprocess.run(["umount", str(ro)], check=False)
    else:
        ro.chmod(0o755)
    table = os.environ.get("PRISM_EDGE_BAD_INPUT_TABLE")
    if table:
        lines = ["| # | command | exit | first line |", "|---|---|---|---|"]
        for i, (cmd, rc, line) in enumerate(ROWS, 1):
            lines.append(f"| {i} | `{cmd}` | {rc} | {line.replace('|', '/')} |")
        with open(table, "w") as f:
            f.write("\n".join(lines) + "\n")


def _snapshot(root: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)
    st = os.stat("/dev/null")
    out["/dev/null"] = (stat.S_IFMT(st.st_mode), st.st_rdev)
    return out


def _fill(args, env):
    return [a.format(**env) for a in args]


# (CLI, argv with {placeholders}, needle in the one line)
CLI_CASES = [
    # ---------------------------------------------------------------- costmodel fit
    ("costmodel", ["fit", "{map}", "--out", "{dev}"], "character device"),
    ("costmodel", ["fit", "{map}", "--out", "/dev/null"], "character device"),
    ("costmodel", ["fit", "{map}", "--out", "{dir}"], "is a directory"),
    ("costmodel", ["fit", "{map}", "--out", "{ro}/m.json"], "Read-only"),
    ("costmodel", ["fit", "{nanmap}", "--out", "{tmp}/m.json"], "not a finite number"),
    ("costmodel", ["fit", "{trunc}", "--out", "{tmp}/m.json"], "not valid JSON"),
    ("costmodel", ["fit", "{missing}", "--out", "{tmp}/m.json"], "cannot read perf map"),
    ("costmodel", ["fit", "{map}", "--out", "{tmp}/m.json", "--interval", "1.5"], "--interval=1.5"),
    ("costmodel", ["fit", "{map}", "--out", "{tmp}/m.json", "--interval", "nan"], "--interval=nan"),
    ("costmodel", ["fit", "{map}", "--out", "{tmp}/m.json", "--unshaped-bw", "0"], "--unshaped-bw=0"),
    # ---------------------------------------------------------------- costmodel predict
    ("costmodel", ["predict", "--batch", "0"], "--batch=0 must be an integer >= 1"),
    ("costmodel", ["predict", "--batch", "2.5"], "--batch=2.5"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "nan", "--cr", "9.9"], "--bw=nan"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "-5", "--cr", "9.9"], "--bw=-5"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "500", "--cr", "nan"], "--cr=nan must be a finite number > 0"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "500", "--cr", "inf"], "--cr=inf"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "500", "--cr", "9.9", "--strategy", "voltage"],
     "--cr applies to ['prism'], not to --strategy voltage"),
    ("costmodel", ["predict", "--batch", "4", "--strategy", "single", "--world-size", "3"],
     "--world-size 3 must be 1"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "500", "--cr", "9.9", "--world-size", "0"], "--world-size=0"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "500", "--cr", "9.9", "--seq-len", "1"], "--seq-len=1"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "500", "--cr", "9.9", "--profile", "nope"], "unknown profile"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "500", "--cr", "9.9", "--model", "{trunc}"], "corrupt cost-model"),
    ("costmodel", ["predict", "--batch", "4", "--bw", "500", "--strategy", "megatron"], "megatron"),
    ("costmodel", ["predict", "--bw", "500"], "--batch"),
    # ---------------------------------------------------------------- costmodel validate / evaluate / other
    ("costmodel", ["validate", "{map}", "--max-mape", "nan"], "--max-mape=nan"),
    ("costmodel", ["validate", "{map}", "--max-mape", "-1"], "--max-mape=-1"),
    ("costmodel", ["validate", "{nanmap}"], "not a finite number"),
    ("costmodel", ["validate", "{trunc}"], "not valid JSON"),
    ("costmodel", ["report", "--model", "{missing}"], "missing.json"),
    ("costmodel", ["evaluate", "held-out", "{map}", "--out", "{dev}"], "character device"),
    ("costmodel", ["evaluate", "held-out", "{map}", "--out", "{dir}"], "is a directory"),
    ("costmodel", ["evaluate", "cross-session", "{map}", "{map}", "--blend", "1.5"], "--blend=1.5"),
    ("costmodel", ["nope"], "invalid choice"),
    # ---------------------------------------------------------------- runtime run
    ("runtime", ["run", *TINY, "--strategy", "single", "--timeout", "0"], "--timeout=0 must be a finite number > 0"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--timeout", "nan"], "--timeout=nan"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--threads", "0"], "--threads=0 must be an integer >= 1"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--repeats", "0"], "--repeats=0"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--warmup", "-1"], "--warmup=-1"),
    ("runtime", ["run", *TINY, "--strategy", "voltage", "--world-size", "0"], "--world-size=0"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--save-output", "{dir}"], "is a directory"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--save-output", "{dev}"], "character device"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--save-output", "{ro}/o.npy"], "Read-only"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--trace", "{dev}"], "not a directory"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--trace", "{ro}/traces"], "Read-only"),
    ("runtime", ["run", *TINY, "--strategy", "single", "--checkpoint", "{badckpt}"], "weights_only"),
    # ---------------------------------------------------------------- runtime profile
    ("runtime", ["profile", *TINY, "--strategy", "single", "--testbed", "loopback", "--out", "{dir}"],
     "is a directory"),
    ("runtime", ["profile", *TINY, "--strategy", "single", "--testbed", "loopback", "--out", "{dev}"],
     "character device"),
    ("runtime", ["profile", *TINY, "--strategy", "single", "--testbed", "loopback", "--out", "{ro}/m.json"],
     "Read-only"),
    ("runtime", ["profile", *TINY, "--strategy", "single", "--timeout", "0", "--out", "{tmp}/p.json"], "--timeout=0"),
    ("runtime", ["profile", *TINY, "--strategy", "single", "--repeats", "0", "--out", "{tmp}/p.json"], "--repeats=0"),
    ("runtime", ["profile", *TINY, "--strategy", "voltage", "--bw", "nan", "--out", "{tmp}/p.json"], "--bw=nan"),
    # ---------------------------------------------------------------- runtime testbed
    ("runtime", ["testbed", "check", "--seconds", "nan"], "--seconds=nan must be a finite number > 0"),
    ("runtime", ["testbed", "check", "--bw", "inf"], "--bw=inf must be a finite number > 0"),
    ("runtime", ["testbed", "check", "--world-size", "1"], "--world-size=1 must be an integer >= 2"),
    ("runtime", ["testbed", "check", "--delay", "-1"], "--delay=-1 must be a finite number >= 0"),
    # ---------------------------------------------------------------- runtime host-check
    ("runtime", ["host-check", "--out", "{dev}"], "character device"),
    ("runtime", ["host-check", "--out", "{dir}"], "is a directory"),
    ("runtime", ["host-check", "--out", "{ro}/h.json"], "Read-only"),
    ("runtime", ["host-check", "--iters", "5"], "iters=5"),
    # ---------------------------------------------------------------- runtime demo
    ("runtime", ["demo", "--out", "{dev}"], "not a directory"),
    ("runtime", ["demo", "--out", "{ro}/demo"], "Read-only"),
    ("runtime", ["demo", "--out", "{tmp}/demo", "--bw-low", "nan"], "--bw-low=nan"),
    ("runtime", ["demo", "--out", "{tmp}/demo", "--bw-low", "0"], "--bw-low=0"),
    ("runtime", ["demo", "--out", "{tmp}/demo", "--testbed", "foo"], "--testbed 'foo'"),
    ("runtime", ["demo", "--out", "{tmp}/demo", "--batches", "1,x"], "--batches"),
    ("runtime", ["demo", "--out", "{tmp}/demo", "--batches", "0"], "--batches"),
    # ---------------------------------------------------------------- runtime serve
    ("runtime", ["serve", "--stream", "1,2", "--costmodel", "{missing}"], "cannot read cost model"),
    ("runtime", ["serve", "--stream", "1,2", "--costmodel", "{trunc}"], "corrupt cost-model"),
    ("runtime", ["serve", "--stream", "1,2", "--costmodel", "{profile}", "--perfmap", "{trunc}"], "not valid JSON"),
    ("runtime", ["serve", "--stream", "1,2", "--costmodel", "{profile}", "--perfmap", "{nanmap}"],
     "not a finite number"),
    ("runtime", ["serve", "--stream", "1,2", "--costmodel", "{profile}", "--objective", "speed"], "unknown objective"),
    ("runtime", ["serve", "--stream", "1,2"], "needs --costmodel"),
    ("runtime", ["serve", "--stream", "1,2", "--policy", "prism", "--cr", "0"], "--cr=0"),
    ("runtime", ["serve", "--stream", "1,2", "--world-size", "0"], "--world-size=0"),
    ("runtime", ["serve", "--stream", "1,2", "--timeout", "0"], "--timeout=0"),
    ("runtime", ["serve", "--stream", "1,2", "--policy", "nope"], "unknown policy"),
    ("runtime", ["serve", "--stream", "0,2", "--policy", "voltage"], "--stream"),
    ("runtime", ["nope"], "invalid choice"),
]


def _id(c):
    return " ".join([c[0]] + [a for a in c[1] if a not in TINY or a.startswith("--s")])[:60]


@pytest.mark.parametrize("cli,argv,needle", CLI_CASES, ids=[_id(c) for c in CLI_CASES])
def test_cli_bad_input(cli, argv, needle, env, capsys, monkeypatch):
    if "{ro}" in " ".join(argv) and env["ro_skip"]:
        pytest.skip(env["ro_skip"])
    monkeypatch.delenv("PRISM_EDGE_DEBUG", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    args = _fill(argv, env)
    before = _snapshot(env["tmp"])
    if cli == "runtime":
        from runtime.cli import main
    else:
        from costmodel.cli import main
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    ROWS.append((f"{cli} " + " ".join(a.replace(env["tmp"], "$TMP") for a in args), rc,
                 lines[0].replace(env["tmp"], "$TMP") if lines else ""))
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    assert needle in lines[0], lines[0]
    assert _snapshot(env["tmp"]) == before, "a file was created or changed"


def _nan_map():
    d = json.load(open(MAP))
    d["records"][0]["compute_ms"] = math.nan
    return d


API_CASES = [
    ("costmodel.predict(0, 500, 9.9)", lambda e: costmodel.predict(0, 500, 9.9), "batch=0"),
    ("costmodel.predict(4, 500, nan)", lambda e: costmodel.predict(4, 500, math.nan), "cr=nan"),
    ("costmodel.predict(4, 500, inf)", lambda e: costmodel.predict(4, 500, math.inf), "cr=inf"),
    ("costmodel.predict(4, nan, 9.9)", lambda e: costmodel.predict(4, math.nan, 9.9), "bw=nan"),
    ("costmodel.predict(4, 500, 9.9, strategy='voltage')",
     lambda e: costmodel.predict(4, 500, 9.9, strategy="voltage"), "not to 'voltage'"),
    ("costmodel.predict(4, None, None, strategy='single', world_size=3)",
     lambda e: costmodel.predict(4, None, None, strategy="single", world_size=3), "world_size=3"),
    ("costmodel.predict(4, 500, 9.9, world_size=0)",
     lambda e: costmodel.predict(4, 500, 9.9, world_size=0), "world_size=0"),
    ("choose(4, 500, max_cr=nan)", lambda e: choose(4, 500, max_cr=math.nan), "max_cr=nan"),
    ("choose(4, 500, max_cr=0)", lambda e: choose(4, 500, max_cr=0), "max_cr=0"),
    ("choose(4, 500, world_size=0)", lambda e: choose(4, 500, world_size=0), "world_size=0"),
    ("choose(0, 500)", lambda e: choose(0, 500), "batch=0"),
    ("choose(4, nan)", lambda e: choose(4, math.nan), "bw=nan"),
    ("DecisionTable(objective={'latency': nan})",
     lambda e: DecisionTable(costmodel.load_profile(), objective={"latency": math.nan}), "objective"),
    ("validate_perfmap(map with NaN compute_ms)", lambda e: validate_perfmap(_nan_map()), "not a finite number"),
    ("save_perfmap(map, <device twin>)", lambda e: save_perfmap(load_perfmap(MAP), e["dev"]), "character device"),
    ("safeio.write_text(<directory>, ...)", lambda e: safeio.write_text(e["dir"], "x"), "is a directory"),
    ("safeio.check_writable(<read-only>/x)", lambda e: safeio.check_writable(e["ro"] + "/x"), "Read-only"),
    ("checks.count('batch', True)", lambda e: checks.count("batch", True), "batch=True"),
    ("checks.positive('timeout', nan)", lambda e: checks.positive("timeout", math.nan), "timeout=nan"),
]


@pytest.mark.parametrize("what,call,needle", API_CASES, ids=[c[0][:60] for c in API_CASES])
def test_api_bad_input(what, call, needle, env):
    if "read-only" in what and env["ro_skip"]:
        pytest.skip(env["ro_skip"])
    before = _snapshot(env["tmp"])
    with pytest.raises(ValueError) as ei:
        call(env)
    msg = str(ei.value)
    ROWS.append((what, "ValueError", type(ei.value).__name__ + ": " + msg.replace(env["tmp"], "$TMP")))
    assert "\n" not in msg and needle in msg, msg
    assert _snapshot(env["tmp"]) == before


def test_nan_map_is_refused_as_perfmap_error():
    with pytest.raises(PerfMapError, match=r"records\[0\]\.compute_ms: nan is not a finite number"):
        validate_perfmap(_nan_map())


def test_failed_write_leaves_no_temp_file(tmp_path):
    """A writer that fails mid-way (here: the fill raises) leaves the target and the
    folder as they were: no `.NAME.PID.tmp` behind."""
    target = tmp_path / "out.npy"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(safeio.WriteError, match="No space left on device"):
        safeio.write_with(target, boom)
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["out.npy"]


def test_unexpected_error_traceback_only_with_debug(monkeypatch, capsys):
    """An unexpected error: one line and exit 1; with --debug the traceback."""
    import costmodel.cli as cli

    def boom(a):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_report", boom)
    monkeypatch.delenv("PRISM_EDGE_DEBUG", raising=False)
    assert cli.main(["report"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: RuntimeError: boom" in err[0] and "--debug" in err[0]
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "report"])


def test_runtime_subprocess_bad_input_one_line():
    """The real entry point (a subprocess) too: one line, exit 2."""
    r = subprocess.run([sys.executable, "-m", "runtime", "run", "--timeout", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PRISM_EDGE_LOG="WARNING"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == \
        ["error: --timeout=0 must be a finite number > 0 (s)"]


def test_coformer_on_a_family_without_its_residual_stream_is_one_line_exit_2():
    """Refused before any rank starts (plan() sees the family), not as a rank's crash."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "runtime", "run", "--model", "bert-tiny", "--seq-len", "24",
                        "--strategy", "coformer", "--k", "2", "--world-size", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "coformer k=2" in lines[0] and "--k 1" in lines[0], r.stderr
