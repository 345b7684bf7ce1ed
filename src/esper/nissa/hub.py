"""The telemetry hub: one per run, fans every event out to its sinks."""

from __future__ import annotations

import warnings
from types import TracebackType
from typing import Any

from esper.leyline import TelemetryEvent
from esper.nissa.sinks import TelemetrySink, as_sink


class TelemetryHub(TelemetrySink):
    """Sends each emitted event to every sink, in the order the sinks were added (a sink
    itself, whose position is its sinks' positions).

    A sink that raises must neither stop training nor fail silently: the hub issues one
    ``RuntimeWarning`` per failing sink (not one per event, which would flood the console) and
    keeps delivering to that sink and all others. :meth:`failure_count` says how often a
    sink failed.

    Create one hub per run; there is no global instance. Use it as a context manager so sinks are
    closed (and files flushed) even when training raises.

    Args:
        sinks: Sinks to start with; more can be added with :meth:`add_sink`.
    """

    def __init__(self, sinks: list[TelemetrySink] | tuple[TelemetrySink, ...] = ()) -> None:
        # (the sink as added, the sink as called: itself, or its as_sink wrapper)
        self._sinks: list[tuple[Any, TelemetrySink]] = []
        self._failures: dict[int, int] = {}  # id(sink) -> errors raised by it
        self._closed = False
        for sink in sinks:
            self.add_sink(sink)

    @property
    def sinks(self) -> tuple[TelemetrySink, ...]:
        """The attached sinks (read-only view)."""
        return tuple(added for added, _ in self._sinks)

    @property
    def closed(self) -> bool:
        return self._closed

    def failure_count(self, sink: TelemetrySink) -> int:
        """How many times ``sink`` raised in ``emit`` or ``close`` (0 for a healthy sink)."""
        return self._failures.get(id(sink), 0)

    def add_sink(self, sink: TelemetrySink) -> TelemetrySink:
        """Attach a sink.

        Args:
            sink: A :class:`TelemetrySink`, or any object with ``emit(event)`` (wrapped once by
                :func:`~esper.nissa.sinks.as_sink`).

        Returns:
            The same sink, so ``mem = hub.add_sink(MemorySink())`` reads naturally.

        Raises:
            TypeError: If ``sink`` lacks ``emit``.
            RuntimeError: If the hub is closed.
        """
        called = as_sink(sink)
        if self._closed:
            raise RuntimeError("cannot add a sink to a closed TelemetryHub")
        self._sinks.append((sink, called))
        return sink

    def emit(self, event: TelemetryEvent) -> None:
        """Deliver ``event`` to every sink.

        Args:
            event: The event to deliver.

        Raises:
            TypeError: If ``event`` is not a :class:`~esper.leyline.TelemetryEvent`.
            RuntimeError: If the hub is closed (an event after close would be lost unnoticed).
        """
        if not isinstance(event, TelemetryEvent):
            raise TypeError(f"expected a TelemetryEvent, got {type(event).__name__}")
        if self._closed:
            raise RuntimeError(f"TelemetryHub is closed; {event.event_type.value} event dropped")
        for added, sink in self._sinks:
            try:
                sink.emit(event)
            except Exception as exc:  # any sink error: training must go on
                self._record_failure(added, f"failed on a {event.event_type.value} event", exc)

    def state_dict(self) -> dict:
        """Positions of the sinks that have one (e.g. a JSONL file's length), by sink index."""
        positions = {str(i): sink.state_dict() for i, (_, sink) in enumerate(self._sinks)}
        return {"sinks": {key: position for key, position in positions.items() if position}}

    @staticmethod
    def saved_position(state: dict, index: int) -> dict:
        """What :meth:`state_dict` saved for sink ``index`` (e.g. an event log's length:
        ``{"offset": N}``), or ``{}`` when it saved nothing."""
        return state.get("sinks", {}).get(str(index), {})

    def load_state_dict(self, state: dict) -> None:
        """Give each sink its saved position back (sinks added in the same order as before).

        Raises:
            ValueError: a saved position has no sink at its index, or one without a position
                (the sinks are not the ones, or not in the order, the checkpoint saw).
        """
        for key, sink_state in state.get("sinks", {}).items():
            index = int(key)
            if index >= len(self._sinks) or not self._sinks[index][1].state_dict():
                raise ValueError(f"no sink {index} with a saved position in this hub")
            self._sinks[index][1].load_state_dict(sink_state)

    def close(self) -> None:
        """Close every sink once; later calls do nothing. Close errors become warnings too."""
        if self._closed:
            return
        self._closed = True
        for added, sink in self._sinks:
            try:
                sink.close()
            except Exception as exc:  # close every sink even if one fails
                self._record_failure(added, "failed to close", exc)

    def _record_failure(self, sink: Any, what: str, exc: Exception) -> None:
        key = id(sink)
        self._failures[key] = self._failures.get(key, 0) + 1
        if self._failures[key] == 1:
            warnings.warn(
                f"telemetry sink {type(sink).__name__} {what}: {type(exc).__name__}: {exc} "
                "(later errors from this sink are only counted: TelemetryHub.failure_count)",
                RuntimeWarning,
                stacklevel=3,
            )

    def __enter__(self) -> TelemetryHub:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
