"""`python -m runtime <command>`: JSON on stdout, logs on stderr, exit 2 on bad input.

COMMANDS names each command's module; a module provides `add_args(parser)` and
`main(args, argv) -> exit code` (or the functions named in the table). Modules are
imported only when their command runs, and none of them imports this one.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .errors import UsageError

log = logging.getLogger("runtime")

# name -> (module, add_args, main, help)
COMMANDS = {
    "run": ("runtime.measure.run", "add_args", "main",
            "one distributed inference run (JSON result on stdout)"),
    "profile": ("runtime.measure.driver", "add_args", "main",
                "profiling sweep on the emulated network -> perf map JSON"),
    "profile-worker": ("runtime.measure.worker", "add_args", "main",
                       "internal: the ranks of one profiling group"),
    "profile-cluster": ("runtime.measure.cluster", "add_args", "main",
                        "profiling sweep across real devices under torchrun -> perf map"),
    "host-check": ("runtime.measure.hostcheck", "add_args", "main",
                   "time a fixed workload on the ranks' cores alone and together"),
    "testbed": ("runtime.netem.testbed", "add_args", "main",
                "create / check / remove the emulated network"),
    "serve": ("runtime.serve.server", "add_args", "main",
              "serve requests with the per-batch decision hook (adaptive runner)"),
    "demo": ("runtime.serve.demo", "add_args", "main",
             "profile, fit and serve end to end on a small default (make demo)"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (UsageError, exit 2) instead of usage + error."""

    def error(self, message):
        raise UsageError(message)


def _parser(prog: str = "python -m runtime", commands=None) -> argparse.ArgumentParser:
    ap = OneLineParser(prog=prog, description="prism-edge distributed inference runtime")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    for name in commands or COMMANDS:
        mod, add, _, hlp = COMMANDS[name]
        getattr(importlib.import_module(mod), add)(sub.add_parser(name, help=hlp, description=hlp))
    return ap


def main(argv=None, prog: str = "python -m runtime") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("PRISM_EDGE_LOG", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    # build only the chosen command's parser when it is known (imports stay lazy)
    chosen = [argv[0]] if argv and argv[0] in COMMANDS else None
    try:
        a = _parser(prog, chosen).parse_args(argv)
        mod, _, fn, _ = COMMANDS[a.cmd]
        return getattr(importlib.import_module(mod), fn)(a, argv) or 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line to the user, details in the log
        from .launch import LaunchError
        if isinstance(e, LaunchError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
