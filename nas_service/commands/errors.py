"""How a command fails: :class:`CommandError` for a user mistake, and how errors are printed.

A user mistake (a missing file, a bad value, the service's error answer) is reported as
``nas-service: error: <message>`` on stderr with exit status 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

from nas_service.commands.output import PROG, print_stderr

Handler = Callable[[argparse.Namespace], int]
"""What a subcommand runs: the parsed arguments in, the exit status out."""


class CommandError(Exception):
    """A user mistake (missing file, bad value): printed as ``nas-service: error: <message>``,
    exit status 1."""


def print_error(message: str) -> None:
    print_stderr(f"{PROG}: error: {message}")


def reports_client_errors(handler: Handler) -> Handler:
    """Turns the client's exceptions into messages on stderr and exit status 1: an API error as
    its problem (``status title: detail`` and one line per located error), anything else (the
    service unreachable, a corrupt download, a wait timeout) as one line."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from nas_service.client import ApiError, ClientError

        try:
            return handler(args)
        except ApiError as e:
            lines = str(e).splitlines()
            print_error(lines[0])
            for line in lines[1:]:
                print_stderr(line)
            if e.slug == "unauthorized":
                print_stderr("  (pass --api-key or set NAS_API_KEY)")
            return 1
        except ClientError as e:
            raise CommandError(str(e)) from None

    return run
