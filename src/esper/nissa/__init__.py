"""Nissa: telemetry. One hub per run fans typed events out to sinks (console, JSONL, memory).

Example::

    from esper.leyline import TelemetryEvent, TelemetryEventType
    from esper.nissa import JsonlSink, TelemetryHub

    with TelemetryHub([JsonlSink(run_dir / "events.jsonl")]) as hub:
        hub.emit(TelemetryEvent(TelemetryEventType.RUN_STARTED, data={...}))
"""

from esper.nissa.console import ConsoleSink
from esper.nissa.hub import TelemetryHub
from esper.nissa.jsonl import JsonlSink, read_events
from esper.nissa.sinks import (
    MemorySink,
    TelemetrySink,
    available_sinks,
    create_sink,
    register_sink,
)

__all__ = [
    "ConsoleSink",
    "JsonlSink",
    "MemorySink",
    "TelemetryHub",
    "TelemetrySink",
    "available_sinks",
    "create_sink",
    "read_events",
    "register_sink",
]
