"""The errors a run reports to its user as one line (the command line exits with 2)."""

from __future__ import annotations

import sys


class UsageError(ValueError):
    """A run specification or command-line input that cannot be run: what is wrong and what
    is valid, in one line."""


class ResumeError(ValueError):
    """A run directory cannot be resumed; the message names the file and what is wrong."""


def print_error(exc: Exception) -> None:
    """``exc`` as the command line reports it: one unwrapped line on stderr, whatever the
    terminal width."""
    message = " ".join(str(exc).split())
    sys.stderr.write(f"esper: error: {message}\n")
