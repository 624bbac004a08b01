"""``python -m cetd_phase1 <command>``: thin argument parsing, one function per command.

Each command is a ``run_*`` function registered with :func:`command` as
``name -> (help, add_arguments, run)``; ``run(args)`` returns the exit code. Heavy imports stay
inside the functions so ``--help`` is instant. A :class:`~cetd_phase1.errors.CETDError` becomes one line on
stderr and its exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from cetd_phase1.errors import CETDError

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run`` as the command ``name``."""
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, run)
        return run
    return register


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m cetd_phase1",
                                     description="CET-D Phase 1: requirement -> code retrieval")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except CETDError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# --- commands -------------------------------------------------------------------------------


# --- end of commands ------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
