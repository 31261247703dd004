"""The ``accel`` command. Each sub-command lives in ``accel/commands/<name>.py`` and defines
``configure(parser)`` and ``main(args) -> int``; modules are imported only when their command runs
(``--help`` of the top level lists them without importing torch).

Errors: a failing command prints one line, ``accel CMD: error: ...``, and exits with code 2; ``--debug``
(anywhere on the command line) shows the traceback instead. Ctrl-C exits with 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "bench": "run the main benchmark on the bundled zoo (or selected methods/models)",
    "sample": "sample an image grid from a zoo model or checkpoint",
    "train": "train zoo models (resumable, accelerate)",
    "parity": "check accel against a fixture folder made by the official code",
    "plot": "plot results JSONL files",
    "calibrate": "calibration runs (e.g. ScaleKV budgets)",
}
# Sub-commands that live in their own module: ``accel train distill-data`` -> accel/commands/distill_data.py.
NESTED = {("train", "distill-data"): ("distill_data", "teacher (noise, tokens) pairs for Distilled Decoding")}


def _module(name: str):
    try:
        return importlib.import_module(f"accel.commands.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"accel.commands.{name}":
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(prog="accel", description="Faster decoding for autoregressive image generators, measured honestly.",
                                     epilog="--debug (anywhere): show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    if tuple(argv[:2]) in NESTED:
        name, help_ = NESTED[tuple(argv[:2])]
        mod = _module(name)
        cmd_parser = argparse.ArgumentParser(prog=f"accel {' '.join(argv[:2])}", description=help_)
        mod.configure(cmd_parser)
        return _run(mod, cmd_parser.parse_args(argv[2:]), " ".join(argv[:2]), debug)
    mod = _module(name)
    if mod is None:
        print(f"accel {name}: not available in this version", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"accel {name}", description=COMMANDS[name])
    mod.configure(cmd_parser)
    return _run(mod, cmd_parser.parse_args(argv[1:]), name, debug)


def _run(mod, args: argparse.Namespace, name: str, debug: bool) -> int:
    """``mod.main(args)`` with errors as one line on stderr and exit code 2 (tracebacks with ``--debug``)."""
    if debug:
        return int(mod.main(args) or 0)
    try:
        return int(mod.main(args) or 0)
    except KeyboardInterrupt:
        print(f"accel {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI boundary: every error becomes one line
        print(f"accel {name}: error: {one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return 2


def one_line(e: BaseException) -> str:
    """``Type: message`` on one line (KeyError's quotes dropped, newlines folded)."""
    msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    return f"{type(e).__name__}: " + " ".join(part.strip() for part in msg.splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
