"""Typed telemetry events: the contract between emitters (trainer, model) and sinks (nissa)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from esper.leyline.defaults import TELEMETRY_SCHEMA_VERSION


class TelemetryEventType(StrEnum):
    """Kinds of events. String values are what events.jsonl stores."""

    RUN_STARTED = "run_started"
    EPOCH_COMPLETED = "epoch_completed"
    SEED_GERMINATED = "seed_germinated"
    SEED_STAGE_CHANGED = "seed_stage_changed"
    GATE_EVALUATED = "gate_evaluated"
    SEED_FOSSILIZED = "seed_fossilized"
    SEED_CULLED = "seed_culled"
    ISOLATION_VIOLATION = "isolation_violation"
    COUNTERFACTUAL_EVALUATED = "counterfactual_evaluated"
    CONTROLLER_DECISION = "controller_decision"
    DECISION_REFUSED = "decision_refused"
    GOVERNOR_ROLLBACK = "governor_rollback"
    RUN_COMPLETED = "run_completed"


@dataclass(frozen=True)
class TelemetryEvent:
    """One event. ``data`` holds JSON-serializable values only."""

    event_type: TelemetryEventType
    epoch: int | None = None
    slot: str | None = None
    seed_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    schema_version: int = TELEMETRY_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "event_type": self.event_type.value,
            "timestamp": self.timestamp,
            "epoch": self.epoch,
            "slot": self.slot,
            "seed_id": self.seed_id,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TelemetryEvent:
        """Rebuild an event read back from JSONL."""
        return cls(
            event_type=TelemetryEventType(raw["event_type"]),
            epoch=raw.get("epoch"),
            slot=raw.get("slot"),
            seed_id=raw.get("seed_id"),
            data=dict(raw.get("data", {})),
            timestamp=float(raw.get("timestamp", 0.0)),
            schema_version=int(raw.get("schema_version", TELEMETRY_SCHEMA_VERSION)),
        )


class TelemetrySink:
    """Receives every event a telemetry hub emits (the hub is one too: it fans them out).

    Subclass it and write :meth:`emit`; the other hooks have defaults that do nothing, so the
    hub and the trainer call each one without asking whether it is there. An object that has
    ``emit`` but does not subclass this is wrapped once by :func:`as_sink`.
    """

    def emit(self, event: TelemetryEvent) -> None:
        """Handle one event. May raise; the hub turns a failure into a warning."""
        raise NotImplementedError(f"{type(self).__name__} must implement emit(event)")

    def close(self) -> None:
        """Release files or other resources. Called once by the hub; must be idempotent. Does
        nothing by default."""

    def state_dict(self) -> dict:
        """The sink's position (e.g. a log file's length), saved in checkpoints so a resumed
        run can go on from it. Empty by default: a sink without one."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output. Does nothing by default: a sink without a
        position has nothing to restore."""


#: The hooks :func:`as_sink` takes from a wrapped object where it has them.
_SINK_HOOKS = ("close", "state_dict", "load_state_dict")


class _SinkAdapter(TelemetrySink):
    """A :class:`TelemetrySink` over an object with ``emit`` that does not subclass it: the
    object's own hooks where it has them, the defaults elsewhere."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.emit = wrapped.emit
        for hook in _SINK_HOOKS:
            method = getattr(wrapped, hook, None)
            if callable(method):
                setattr(self, hook, method)


def as_sink(sink: Any) -> TelemetrySink:
    """``sink`` as a :class:`TelemetrySink`: itself when it subclasses one, else wrapped once
    so that its missing hooks get the defaults.

    Raises:
        TypeError: ``sink`` has no ``emit`` method.
    """
    if isinstance(sink, TelemetrySink):
        return sink
    if not callable(getattr(sink, "emit", None)):
        raise TypeError(
            f"a telemetry sink needs emit(event) (close() is optional); got "
            f"{type(sink).__name__} (subclass esper.leyline.TelemetrySink)"
        )
    return _SinkAdapter(sink)
