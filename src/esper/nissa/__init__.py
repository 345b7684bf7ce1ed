"""Nissa: telemetry. One hub per run fans typed events out to sinks (console, JSONL, memory,
the live view, loggers such as TensorBoard).

Example::

    from esper.leyline import TelemetryEvent, TelemetryEventType
    from esper.nissa import JsonlSink, TelemetryHub

    with TelemetryHub([JsonlSink(run_dir / "events.jsonl")]) as hub:
        hub.emit(TelemetryEvent(TelemetryEventType.RUN_STARTED, data={...}))
"""

from esper.nissa.console import ConsoleSink, format_event
from esper.nissa.follow import EventFollower, Poll
from esper.nissa.hub import TelemetryHub
from esper.nissa.jsonl import JsonlSink, parse_event_line, read_events
from esper.nissa.live import LiveSink, LiveView, render_run
from esper.nissa.records import EpochRecord, LifecycleMark, SeedSnapshot
from esper.nissa.run_state import RunState, SlotState, events_through_epoch, resumed_state
from esper.nissa.sinks import (
    DigestSink,
    LoggerContext,
    LoggerUnavailableError,
    MemorySink,
    TelemetrySink,
    available_loggers,
    available_sinks,
    check_logger,
    create_logger,
    create_sink,
    register_logger,
    register_sink,
)
from esper.nissa.tensorboard import TensorBoardSink
from esper.nissa.watch import WatchError, check_run_dir, watch_run

__all__ = [
    "ConsoleSink",
    "DigestSink",
    "EpochRecord",
    "EventFollower",
    "JsonlSink",
    "LifecycleMark",
    "LiveSink",
    "LiveView",
    "LoggerContext",
    "LoggerUnavailableError",
    "MemorySink",
    "Poll",
    "RunState",
    "SeedSnapshot",
    "SlotState",
    "TelemetryHub",
    "TelemetrySink",
    "TensorBoardSink",
    "WatchError",
    "available_loggers",
    "available_sinks",
    "check_logger",
    "check_run_dir",
    "create_logger",
    "create_sink",
    "events_through_epoch",
    "format_event",
    "parse_event_line",
    "read_events",
    "register_logger",
    "register_sink",
    "render_run",
    "resumed_state",
    "watch_run",
]
