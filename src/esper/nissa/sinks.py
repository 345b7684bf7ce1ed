"""What a telemetry sink is, the in-memory sink, and the registry of sinks by name.

A sink is anything with ``emit(event)`` and ``close()``. Sinks are looked up by name (``console``,
``jsonl``, ``memory``) so the CLI can map ``--telemetry jsonl`` onto a class without an
``isinstance`` chain. The registry holds factories only, never live sinks, so nothing leaks from
one run into the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from esper.leyline import TelemetryEvent, TelemetryEventType


@runtime_checkable
class TelemetrySink(Protocol):
    """Receives every event a :class:`~esper.nissa.hub.TelemetryHub` emits."""

    def emit(self, event: TelemetryEvent) -> None:
        """Handle one event. May raise; the hub turns a failure into a warning."""

    def close(self) -> None:
        """Release files or other resources. Called once by the hub; must be idempotent."""


SinkFactory = Callable[..., TelemetrySink]

_REGISTRY: dict[str, SinkFactory] = {}


def register_sink(name: str) -> Callable[[SinkFactory], SinkFactory]:
    """Decorator adding a sink class (or factory) to the registry under ``name``.

    Args:
        name: Registry key, e.g. ``"jsonl"``.

    Returns:
        A decorator that registers and returns the factory unchanged.

    Raises:
        ValueError: If ``name`` is already registered (two sinks silently sharing a name would
            make ``--telemetry NAME`` ambiguous).
    """

    def wrap(factory: SinkFactory) -> SinkFactory:
        if name in _REGISTRY:
            raise ValueError(f"telemetry sink {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_sinks() -> list[str]:
    """Names accepted by :func:`create_sink`, sorted."""
    return sorted(_REGISTRY)


def create_sink(name: str, **kwargs: Any) -> TelemetrySink:
    """Build a sink by registry name.

    Args:
        name: A name from :func:`available_sinks`.
        **kwargs: Passed to the sink's constructor (``path=`` for ``jsonl``,
            ``console=`` for ``console``).

    Returns:
        The new sink.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown telemetry sink {name!r}; valid: {', '.join(available_sinks())}")
    return _REGISTRY[name](**kwargs)


@register_sink("memory")
class MemorySink:
    """Keeps every event in ``self.events``; meant for tests and notebooks."""

    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []
        self.closed = False

    def emit(self, event: TelemetryEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True

    def of_type(self, event_type: TelemetryEventType | str) -> list[TelemetryEvent]:
        """The recorded events of one type, in emission order."""
        wanted = TelemetryEventType(event_type)
        return [e for e in self.events if e.event_type is wanted]
