"""Following a run's ``events.jsonl`` while it is written: ``tail -f`` that understands resumes.

A run appends one line per event and flushes it, so a reader can see a half-written last line;
a resumed run first cuts the file back to its checkpoint and then appends again, so the file can
shrink, or shrink and grow past where the reader was. :class:`EventFollower` handles both: it
hands out complete lines only, and when the bytes it has read are no longer the file's bytes it
starts over from the beginning and says so. It only ever opens the file for reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from esper.leyline import TelemetryEvent
from esper.nissa.jsonl import parse_event_line


@dataclass(frozen=True)
class Poll:
    """What one :meth:`EventFollower.poll` found.

    Attributes:
        events: New complete events, in file order.
        restarted: True when the file was cut back or replaced: ``events`` then starts from the
            file's beginning and whatever was built from earlier polls must be rebuilt.
    """

    events: list[TelemetryEvent] = field(default_factory=list)
    restarted: bool = False


class EventFollower:
    """Reads the events appended to a JSONL telemetry file since the last poll.

    Args:
        path: The ``events.jsonl`` to follow; it may not exist yet.

    Attributes:
        skipped: Complete lines that were not valid events (counted, never fatal: a viewer
            should keep showing the rest).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.skipped = 0
        self._offset = 0  # bytes read so far
        self._tail = b""  # an incomplete last line, kept until its newline arrives
        self._last = b""  # the last complete line read, with its newline ...
        self._last_at = 0  # ... and where it starts: both are checked to notice a rewrite

    def poll(self) -> Poll:
        """Read what was appended since the last call.

        Returns:
            The new events, and whether the file was rewritten since the last poll.
        """
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            restarted = self._offset > 0
            self._reset()
            return Poll(restarted=restarted)
        with handle:
            restarted = not self._unchanged(handle)
            if restarted:
                self._reset()
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        return Poll(self._complete_lines(self._tail + chunk), restarted)

    def _unchanged(self, handle) -> bool:
        """True when the file still holds, where we read them, the bytes we read last."""
        if self._offset == 0:
            return True
        if os.fstat(handle.fileno()).st_size < self._offset:
            return False
        handle.seek(self._last_at)
        expected = self._last + self._tail
        return handle.read(len(expected)) == expected

    def _complete_lines(self, data: bytes) -> list[TelemetryEvent]:
        *lines, self._tail = data.split(b"\n")
        position = self._offset - len(data)
        events = []
        for raw in lines:
            self._last, self._last_at = raw + b"\n", position
            position += len(raw) + 1
            if not raw.strip():
                continue
            try:
                events.append(parse_event_line(raw.decode("utf-8")))
            except (UnicodeDecodeError, ValueError):
                self.skipped += 1
        return events

    def _reset(self) -> None:
        self._offset = self._last_at = 0
        self._tail = self._last = b""
        self.skipped = 0
