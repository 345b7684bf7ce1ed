"""The errors a run reports to its user as one line (the command line exits with 2)."""

from __future__ import annotations


class UsageError(ValueError):
    """A run specification or command-line input that cannot be run: what is wrong and what
    is valid, in one line."""


class ResumeError(ValueError):
    """A run directory cannot be resumed; the message names the file and what is wrong."""
