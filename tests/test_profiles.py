"""Every shipped profile (costmodel/profiles/*.json) loads, predicts, and is exactly what
its own recorded fit command (profile.command) makes from its perf map(s)."""
import json
import math
import sys
from pathlib import Path

import pytest

import costmodel
from costmodel.api import PROFILE_DIR
from costmodel.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
PROFILES = costmodel.list_profiles()


def _fit_args(command: str) -> list:
    """`python -m costmodel fit ...` as recorded in a profile -> the CLI's argv. The
    description is free text (not quoted in the record), so it runs to the end."""
    head, sep, desc = command.partition(" --description ")
    words = head.split()
    assert words[:4] == ["python", "-m", "costmodel", "fit"], command
    return words[3:] + (["--description", desc] if sep else [])


def test_there_are_profiles():
    assert "jetson-orin-nano" in PROFILES and len(PROFILES) >= 2


@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_and_predicts(name):
    cm = costmodel.load_profile(name)
    m = cm.models_[0]
    for strategy in cm.strategies_:
        ws = 1 if strategy == "single" else 2
        p = cm.predict(8, 500.0, 9.9 if strategy == "prism" else None, strategy=strategy,
                       seq_len=m["seq_len"], world_size=ws, model=m["name"], warn=False)
        assert math.isfinite(float(p["latency_ms"])) and float(p["latency_ms"]) > 0, strategy


@pytest.mark.slow
@pytest.mark.parametrize("name", PROFILES)
def test_profile_refits_byte_identically(name, tmp_path, monkeypatch, capsys):
    shipped = PROFILE_DIR / f"{name}.json"
    profile = json.loads(shipped.read_text())["profile"]
    args = _fit_args(profile["command"])
    # the command names data/... and costmodel/profiles/... relative to the repository
    # root; run it in a scratch copy of that layout so the shipped file is not touched
    (tmp_path / "data").symlink_to(ROOT / "data")
    (tmp_path / "costmodel" / "profiles").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["python -m costmodel"] + args)   # fit records sys.argv[2:]
    assert cli_main(args) == 0
    capsys.readouterr()
    out = tmp_path / args[args.index("--out") + 1]
    assert out.read_bytes() == shipped.read_bytes(), f"refit of {name} differs from the shipped file"
