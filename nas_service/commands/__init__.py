"""The ``nas-service`` command line: :func:`main`, the parser, and :data:`COMMANDS`, the one
registry of subcommands.

Each subcommand is one ``add_<name>(add_parser)`` function in the module of its group
(``graph``, ``service``, ``training``, ``remote``): it declares the arguments and points
``handler`` at a ``_<name>(args) -> int`` function beside it. :data:`COMMANDS` lists them and is
the one place a new command is registered. Handlers import what they need inside their body, so
``nas-service info`` never pays for the web or database stack and a command whose package is not
installed yet fails on its own without breaking the others. The group modules share only
``arguments``, ``errors`` and ``output``; none imports another.

Exit status: 0 success, 1 the command failed (an invalid graph, an unreadable file, a bad value,
an error answer from the service), 2 a usage error reported by argparse, 130 interrupted. A user
mistake is reported as one line on stderr, never as a traceback: handlers raise
:class:`~nas_service.commands.errors.CommandError` for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from nas_service.commands import graph, remote, service, training
from nas_service.commands.arguments import AddParser
from nas_service.commands.errors import CommandError, print_error
from nas_service.commands.output import PROG
from nas_service.version import __version__

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: tuple[Callable[[AddParser], None], ...] = (
    service.add_info,
    graph.add_graph,  # graph validate | summary | sample
    training.add_train_ghn,
    training.add_evaluate_ghn,
    training.add_rank_ghn,
    training.add_continual_bench,
    training.add_train_char_lm,
    service.add_db,  # db upgrade | current
    service.add_serve,
    service.add_worker,
    remote.add_predict,
    remote.add_search,
    remote.add_jobs,
    remote.add_cancel,
    remote.add_tasks,  # tasks add | list | show
    remote.add_download,
    remote.add_finetune,
)
"""Every subcommand, in the order ``--help`` lists them. Register a new one here."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Neural architecture search with graph hypernetworks.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(sub.add_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns its exit status (never raises for user mistakes)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    from nas_service.runtime import retain_freed_memory

    retain_freed_memory()  # every command that predicts weights runs faster (see runtime.py)
    try:
        return handler(args)
    except CommandError as e:
        print_error(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `nas-service graph sample ... | head`
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
