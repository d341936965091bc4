"""`prism-edge <command> ...`: the runtime's commands (run, profile, profile-cluster,
testbed, serve, demo, host-check) and the cost model's (fit, predict, validate, evaluate,
plot, report) behind one name. Each is passed on unchanged to `python -m runtime` or
`python -m costmodel`; the cost model's commands never import torch.
"""
from __future__ import annotations

import sys


def runtime_commands() -> list:
    from runtime.cli import COMMANDS          # a table of names: no torch import
    return [c for c in COMMANDS if c != "profile-worker"]


def costmodel_commands() -> list:
    import argparse

    from costmodel.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def usage() -> str:
    return ("usage: prism-edge <command> [options]   (prism-edge <command> --help for its options)\n"
            f"  runtime:    {', '.join(runtime_commands())}\n"
            f"  cost model: {', '.join(costmodel_commands())}\n")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    cmd = argv[0]
    from runtime.cli import COMMANDS
    if cmd in COMMANDS:
        from runtime.cli import main as runtime_main
        return runtime_main(argv, prog="prism-edge")
    if cmd in costmodel_commands():
        from costmodel.cli import main as costmodel_main
        return costmodel_main(argv)
    print(f"error: unknown command {cmd!r}; allowed: {', '.join(runtime_commands() + costmodel_commands())}",
          file=sys.stderr)
    return 2
