"""The JSONL sink (one event per line) and the reader that turns such a file back into events."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from esper.leyline import TELEMETRY_SCHEMA_VERSION, TelemetryEvent
from esper.nissa.sinks import TelemetrySink, register_sink


@register_sink("jsonl")
class JsonlSink(TelemetrySink):
    """Appends ``json.dumps(event.to_dict())`` plus a newline for every event.

    Each line is flushed as soon as it is written, so a run that crashes still leaves every event
    up to the crash on disk. The file is opened in append mode: resuming a run adds to its log
    instead of wiping it.

    Args:
        path: The ``.jsonl`` file; missing parent folders are created.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def emit(self, event: TelemetryEvent) -> None:
        """Write and flush one line.

        Raises:
            RuntimeError: If the sink was closed.
            TypeError: If ``event.data`` holds something JSON cannot encode.
        """
        if self._file.closed:
            raise RuntimeError(f"JsonlSink for {self.path} is closed")
        # Serialise before writing so an unencodable event never leaves half a line behind.
        try:
            line = json.dumps(event.to_dict())
        except TypeError as exc:
            raise TypeError(
                f"{event.event_type.value} event is not JSON-serialisable: {exc}"
            ) from exc
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def state_dict(self) -> dict:
        """The file's length now: a checkpoint records it so a resumed run can cut the log back
        to exactly the events that happened before the checkpoint."""
        self._file.flush()
        return {"offset": self._file.tell()}

    def load_state_dict(self, state: dict) -> None:
        """Cut the file back to ``state["offset"]`` bytes (events after it are replayed).

        Raises:
            ValueError: the file is shorter than the offset (it is not the log of that run).
        """
        offset = int(state["offset"])
        self._file.flush()
        size = self.path.stat().st_size
        if size < offset:
            raise ValueError(
                f"{self.path} holds {size} bytes, fewer than the {offset} the checkpoint recorded"
            )
        os.truncate(self.path, offset)
        self._file.seek(0, os.SEEK_END)


def read_events(path: str | os.PathLike[str]) -> list[TelemetryEvent]:
    """Read a JSONL telemetry file back into events, in file order.

    Blank lines are skipped. A last line without its newline that does not parse is what a crash
    mid-write leaves behind; it is dropped with a warning instead of failing the whole file.

    Args:
        path: A file written by :class:`JsonlSink`.

    Returns:
        The events, in the order they were written.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a line is not a valid event or was written by a newer telemetry schema;
            the message names the file and the line number.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    events: list[TelemetryEvent] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(parse_event_line(line))
        except ValueError as exc:
            truncated_tail = lineno == len(lines) and not text.endswith("\n")
            if truncated_tail:
                warnings.warn(
                    f"{path}:{lineno}: ignoring an incomplete last line (crashed run?): {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            raise ValueError(f"{path}:{lineno}: malformed telemetry event: {exc}") from None
    return events


def parse_event_line(line: str) -> TelemetryEvent:
    """One line of a JSONL telemetry file to one event.

    Args:
        line: The line, without its newline.

    Returns:
        The event.

    Raises:
        ValueError: With a short reason, for anything that is not a valid event of a schema this
            esper reads.
    """
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    if "event_type" not in raw:
        raise ValueError("missing 'event_type'")
    version = raw.get("schema_version", TELEMETRY_SCHEMA_VERSION)
    if not isinstance(version, int) or version > TELEMETRY_SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version!r} is not supported (this esper reads up to "
            f"{TELEMETRY_SCHEMA_VERSION}); upgrade esper to read this file"
        )
    if not isinstance(raw.get("data", {}), dict):
        raise ValueError("'data' must be a JSON object")
    try:
        return TelemetryEvent.from_dict(raw)
    except (ValueError, TypeError) as exc:
        # Unknown event_type values end up here (the enum raises ValueError).
        raise ValueError(str(exc)) from None
