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

from costmodel.checks import argparse_message

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
    "finetune": ("runtime.train.cli", "add_args", "main",
                 "fine-tune a model under Prism (emulated P-partition forward) -> safetensors + card"),
    "demo": ("runtime.serve.demo", "add_args", "main",
             "profile, fit and serve end to end on a small default (make demo)"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (UsageError, exit 2) instead of usage + error."""

    def error(self, message):
        raise UsageError(argparse_message(message))


def _parser(prog: str = "python -m runtime", commands=None) -> argparse.ArgumentParser:
    ap = OneLineParser(prog=prog, description="prism-edge distributed inference runtime")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    for name in commands or COMMANDS:
        mod, add, _, hlp = COMMANDS[name]
        getattr(importlib.import_module(mod), add)(sub.add_parser(name, help=hlp, description=hlp))
    return ap


def debug_enabled() -> bool:
    """Tracebacks for unexpected errors: `--debug` (anywhere on the line; passed on to
    launched ranks through the environment) or PRISM_EDGE_DEBUG=1."""
    return os.environ.get("PRISM_EDGE_DEBUG", "") not in ("", "0")


def _one_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def expected_error(e: BaseException) -> str | None:
    """The one line for an error that is the user's input or environment (exit 2), or
    None for an unexpected one. Bad flags and values (UsageError, checks.CheckError and
    other ValueErrors of the validation layer), unreadable or invalid files (perf maps,
    models, checkpoints), outputs that cannot be written (safeio.WriteError), and OS
    errors naming a path."""
    from costmodel.checks import CheckError
    from costmodel.safeio import WriteError

    if isinstance(e, (UsageError, CheckError, WriteError)):
        return _one_line(e)
    try:
        from costmodel.features import QueryError
        from costmodel.model import ModelFileError
        from costmodel.perfmap import PerfMapError
        if isinstance(e, (QueryError, ModelFileError, PerfMapError)):
            return _one_line(e)
    except ImportError:                 # pragma: no cover - costmodel is in the same package set
        pass
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or _one_line(e)}"
    return None


def main(argv=None, prog: str = "python -m runtime") -> int:
    """Exit codes: 0 ok; 2 bad input (one line on stderr); 1 a launch that failed, or an
    unexpected error (one line; the traceback only with --debug / PRISM_EDGE_DEBUG=1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv = [x for x in argv if x != "--debug"]
        os.environ["PRISM_EDGE_DEBUG"] = "1"        # launched ranks inherit it
    logging.basicConfig(level=os.environ.get("PRISM_EDGE_LOG", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    # build only the chosen command's parser when it is known (imports stay lazy)
    chosen = [argv[0]] if argv and argv[0] in COMMANDS else None
    try:
        a = _parser(prog, chosen).parse_args(argv)
        mod, _, fn, _ = COMMANDS[a.cmd]
        return getattr(importlib.import_module(mod), fn)(a, argv) or 0
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line to the user, details with --debug
        from .launch import LaunchError
        if isinstance(e, LaunchError):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 1
        line = expected_error(e)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
            return 2
        if debug_enabled():
            raise
        print(f"error: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
