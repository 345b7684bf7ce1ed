"""What a telemetry sink is, the in-memory sink, and the registry of sinks by name.

A sink subclasses :class:`TelemetrySink` (its home is :mod:`esper.leyline.telemetry`, so the
trainer can rely on its hooks without importing nissa); any other object with ``emit(event)``
is wrapped once by :func:`as_sink`. Sinks are looked up by name (``console``,
``jsonl``, ``memory``) so the CLI can map ``--telemetry jsonl`` onto a class without an
``isinstance`` chain. The registry holds factories only, never live sinks, so nothing leaks from
one run into the next.

*Loggers* (``esper train --log tensorboard``) have a registry of their own, below: all are built
from a :class:`LoggerContext`, and each can say before a run starts that its optional package is
missing. A W&B or MLflow logger is one module with a ``@register_logger("wandb", check=...)``
factory; esper itself depends on none of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.leyline import TelemetryEvent, TelemetryEventType

# Re-exported: the sink contract's home is leyline; nissa is where users look for it.
from esper.leyline.telemetry import TelemetrySink as TelemetrySink
from esper.leyline.telemetry import as_sink as as_sink

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
class MemorySink(TelemetrySink):
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


@register_sink("digest")
class DigestSink(TelemetrySink):
    """A SHA-256 over every event's content (its timestamp left out): two processes that saw
    the same events in the same order have the same :meth:`hexdigest`. How the ranks of a
    distributed run show that they took the same decisions."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.count = 0

    def emit(self, event: TelemetryEvent) -> None:
        content = event.to_dict()
        content.pop("timestamp", None)
        self._digest.update(json.dumps(content, sort_keys=True, default=str).encode() + b"\n")
        self.count += 1

    def close(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


# ------------------------------------------------------------------------------------ loggers
# A logger is a sink that writes a run into another tool's format (TensorBoard, W&B, MLflow),
# picked on the command line with ``--log NAME``. Unlike the sinks above, every logger is built
# the same way, from a LoggerContext, so the CLI needs no per-logger code; and each declares a
# check that says, before the run starts, whether its optional package is installed.


@dataclass(frozen=True)
class LoggerContext:
    """What a logger needs to know about the run it writes.

    Attributes:
        run_dir: The run directory; a logger writes under its own subfolder of it.
        start_epoch: 0 for a new run; for a resumed run, the checkpoint's epoch: events of later
            epochs were written once already and are now written again.
    """

    run_dir: Path
    start_epoch: int = 0


class LoggerUnavailableError(RuntimeError):
    """A logger's optional package is not installed. The message says how to install it.

    Args:
        name: The logger's registry name, as given to ``--log``.
        package: The missing package.
        extra: The ``esper`` extra that installs it.
    """

    def __init__(self, name: str, package: str, extra: str) -> None:
        super().__init__(f'--log {name} needs the {package} package: pip install "esper[{extra}]"')
        self.name, self.package, self.extra = name, package, extra


@dataclass(frozen=True)
class _Logger:
    factory: Callable[[LoggerContext], TelemetrySink]
    check: Callable[[], None]


_LOGGERS: dict[str, _Logger] = {}


def _always_available() -> None:
    """The check of a logger that needs no optional package."""


def register_logger(
    name: str, check: Callable[[], None] = _always_available
) -> Callable[[Callable[[LoggerContext], TelemetrySink]], Callable[[LoggerContext], TelemetrySink]]:
    """Decorator adding a logger factory (``factory(context) -> sink``) under ``name``.

    Args:
        name: The value ``--log`` accepts, e.g. ``"tensorboard"``.
        check: Raises :class:`LoggerUnavailableError` when the logger's package is missing;
            it must not create files (it runs before the run directory exists).

    Returns:
        A decorator that registers and returns the factory unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def wrap(
        factory: Callable[[LoggerContext], TelemetrySink],
    ) -> Callable[[LoggerContext], TelemetrySink]:
        if name in _LOGGERS:
            raise ValueError(f"logger {name!r} is already registered")
        _LOGGERS[name] = _Logger(factory, check)
        return factory

    return wrap


def available_loggers() -> list[str]:
    """Names accepted by ``--log`` (and :func:`create_logger`), sorted."""
    return sorted(_LOGGERS)


def check_logger(name: str) -> None:
    """Make sure ``name`` is a logger whose package is installed, before a run starts.

    Args:
        name: A name from :func:`available_loggers`.

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.
        LoggerUnavailableError: If the logger's optional package is missing.
    """
    if name not in _LOGGERS:
        valid = ", ".join(available_loggers()) or "none registered"
        raise ValueError(f"unknown --log {name!r}; valid: {valid}")
    _LOGGERS[name].check()


def create_logger(name: str, context: LoggerContext) -> TelemetrySink:
    """Build the logger ``name`` for one run.

    Args:
        name: A name from :func:`available_loggers`.
        context: The run it writes.

    Returns:
        A sink to add to the run's hub.

    Raises:
        ValueError: If ``name`` is unknown.
        LoggerUnavailableError: If its optional package is missing.
    """
    check_logger(name)
    return _LOGGERS[name].factory(context)
