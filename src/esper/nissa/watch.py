"""``esper watch RUN_DIR``: the live view of a run that is training elsewhere, or has finished.

It follows the run's ``events.jsonl`` (read-only: nothing in the run directory is ever written)
and redraws when new events arrive. ``q`` or Ctrl-C quits. With ``once`` (or when the output is
not a terminal) it prints the view of the events written so far and returns.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.live import Live

from esper.nissa.follow import EventFollower
from esper.nissa.live import LiveView
from esper.nissa.run_state import RunState

QUIT_KEYS = frozenset("qQ")
# Files every run directory has from its first moment (events.jsonl may follow a moment later).
RUN_MARKERS = ("config.json", "events.jsonl")


class WatchError(ValueError):
    """The folder cannot be watched. The message is one line and names the folder."""


def check_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Make sure ``run_dir`` is a run directory.

    Args:
        run_dir: The folder given to ``esper watch``.

    Returns:
        The folder as a path.

    Raises:
        WatchError: It does not exist, is not a folder, or holds neither ``config.json`` nor
            ``events.jsonl``.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise WatchError(f"{path}: no such run directory")
    if not any((path / name).is_file() for name in RUN_MARKERS):
        raise WatchError(
            f"{path}: not a run directory (it holds no {' or '.join(RUN_MARKERS)}; "
            "`esper train --run-dir` makes one)"
        )
    return path


def watch_run(
    run_dir: str | os.PathLike[str],
    console: Console,
    *,
    once: bool = False,
    interval: float = 0.5,
    keys: TextIO | None = None,
) -> int:
    """Show the live view of a run directory.

    Args:
        run_dir: The run to watch.
        console: Where to draw; a non-terminal console prints the view once.
        once: Print the view of the events so far and return, even on a terminal.
        interval: Seconds between looks at ``events.jsonl``.
        keys: Where ``q`` is read from; ``sys.stdin`` when omitted. Keys are read only when it
            is a terminal; otherwise only Ctrl-C stops the watch.

    Returns:
        0 (also after ``q`` or Ctrl-C).

    Raises:
        WatchError: ``run_dir`` is not a run directory.
        ValueError: ``interval`` is not positive.
    """
    path = check_run_dir(run_dir)
    if interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval}")
    follower = EventFollower(path / "events.jsonl")
    view = LiveView()
    if once or not console.is_terminal:
        _catch_up(follower, view, base_note=None)
        console.print(view)
        return 0
    note = f"watching {path} · q or Ctrl-C quits"
    _catch_up(follower, view, note)
    try:
        with _keys_unbuffered(keys if keys is not None else sys.stdin) as read_key:
            with Live(view, console=console, auto_refresh=False) as live:
                size = console.size
                while not QUIT_KEYS.intersection(read_key(interval)):
                    # Redraw only when events arrived or the terminal was resized.
                    if _catch_up(follower, view, note) or console.size != size:
                        size = console.size
                        live.refresh()
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends; the run is not affected
    return 0


def _catch_up(follower: EventFollower, view: LiveView, base_note: str | None) -> bool:
    """Apply what was appended to the view; True when there was anything."""
    poll = follower.poll()
    if poll.restarted:  # a resume cut the log back: rebuild from its first line
        view.state = RunState()
    for event in poll.events:
        view.apply(event)
    notes = [base_note] if base_note else []
    if follower.skipped:
        notes.append(f"{follower.skipped} unreadable line(s) in events.jsonl skipped")
    view.note = " · ".join(notes) or None
    return poll.restarted or bool(poll.events)


@contextlib.contextmanager
def _keys_unbuffered(stream: TextIO) -> Iterator:
    """Yield ``read_key(timeout) -> str`` (the keys pressed, or ""); on a terminal, keys arrive
    without Enter.

    The terminal goes into cbreak mode (keys unbuffered, Ctrl-C still a signal) and is restored
    on the way out whatever happens. Without a terminal (or without termios, on Windows) it
    only sleeps, and Ctrl-C is the way out.
    """
    try:
        import termios
        import tty

        fd = stream.fileno()
        interactive = os.isatty(fd)
    except (ImportError, AttributeError, OSError, ValueError):
        interactive = False
    if not interactive:

        def sleep(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield sleep
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)

        def read_key(timeout: float) -> str:
            ready, _, _ = select.select([fd], [], [], timeout)
            keys = os.read(fd, 32) if ready else b""
            if ready and not keys:  # end of input: wait as if no key came, never spin
                time.sleep(timeout)
            return keys.decode(errors="replace")

        yield read_key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
