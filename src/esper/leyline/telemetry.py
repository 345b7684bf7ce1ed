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
