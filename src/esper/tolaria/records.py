"""The loop's one lifecycle listener: keeps optimizers, seed records and the event log in step
with what the model announces (docs/design.md, "The epoch loop"). Nothing here re-derives it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from esper.leyline import (
    GateEvaluated,
    GateResult,
    IsolationViolated,
    LifecycleEvent,
    SeedStage,
    StageChanged,
    TelemetryEventType,
)
from esper.tolaria.optim import GrowthOptimizers

E = TelemetryEventType


@dataclass
class SeedRecord:
    """The life of one seed, for the run summary."""

    seed_id: str
    slot: str
    blueprint: str
    stages: list[str] = field(default_factory=list)
    germinated_epoch: int = 0
    #: How it started: ``zero`` (as built), ``computed`` or ``copy`` (``SeedSlot.seed_start``).
    start: str = "zero"

    @property
    def final_stage(self) -> str:
        return self.stages[-1]

    def to_dict(self) -> dict:
        return {
            "seed_id": self.seed_id,
            "slot": self.slot,
            "blueprint": self.blueprint,
            "final_stage": self.final_stage,
            "stages": list(self.stages),
            "germinated_epoch": self.germinated_epoch,
            "start": self.start,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> SeedRecord:
        return cls(
            seed_id=raw["seed_id"],
            slot=raw["slot"],
            blueprint=raw["blueprint"],
            stages=list(raw["stages"]),
            germinated_epoch=int(raw["germinated_epoch"]),
            start=str(raw.get("start", "zero")),  # records written before starts were reported
        )


def gate_data(result: GateResult) -> dict:
    """A gate result as JSON-able event data."""
    return {
        "gate": result.gate.name,
        "passed": result.passed,
        "score": result.score,
        "checks_failed": list(result.checks_failed),
        "message": result.message,
        "unit": result.unit,
    }


class LifecycleRecorder:
    """Subscribed to a model: turns each lifecycle event into optimizer changes, seed records
    and telemetry events, as it happens.

    Args:
        model: the model whose slots announce the events (read for blueprint and parameters).
        optimizers: gain a seed optimizer at germination, lose it at a cull, and take a
            fossilized seed's parameters into the host optimizer.
        emit: ``emit(event_type, **fields)`` of the trainer (stamps the epoch).
        epoch: returns the current epoch (for germination records).
        on_cull: called with the blueprint of every culled seed (the controller's hook).
    """

    def __init__(
        self,
        model,
        optimizers: GrowthOptimizers,
        emit: Callable[..., None],
        epoch: Callable[[], int],
        on_cull: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.optimizers = optimizers
        self.emit = emit
        self.epoch = epoch
        self.on_cull = on_cull
        self.records: dict[str, SeedRecord] = {}

    def __call__(self, event: LifecycleEvent) -> None:
        if isinstance(event, StageChanged):
            self._stage_changed(event)
        elif isinstance(event, GateEvaluated):
            self.emit(
                E.GATE_EVALUATED,
                slot=event.slot,
                seed_id=event.seed_id,
                data={"target": event.target.name, **gate_data(event.result)},
            )
        elif isinstance(event, IsolationViolated):
            self.emit(
                E.ISOLATION_VIOLATION,
                slot=event.slot,
                seed_id=event.seed_id,
                data={"violations": event.violations},
            )

    def _stage_changed(self, event: StageChanged) -> None:
        slot = self.model.seed_slots[event.slot]
        to = event.to_stage
        if to == SeedStage.GERMINATED:
            blueprint = slot.state.blueprint_id
            self.records[event.seed_id] = SeedRecord(
                event.seed_id, event.slot, blueprint, [], self.epoch(), slot.seed_start
            )
            self.optimizers.add_seed(event.slot, slot.seed_parameters())
            self.emit(
                E.SEED_GERMINATED,
                slot=event.slot,
                seed_id=event.seed_id,
                data={
                    "blueprint": blueprint,
                    "blend": slot.state.blend_algorithm_id,
                    "start": slot.seed_start,
                },
            )
        record = self.records.get(event.seed_id or "")
        if record is not None and to != SeedStage.DORMANT:
            record.stages.append(to.name)
        data = {"from": event.from_stage.name, "to": to.name, "reason": event.reason}
        if event.gate is not None:
            data["gate"] = event.gate.gate.name
        if event.forced:
            data["forced"] = True
        self.emit(E.SEED_STAGE_CHANGED, slot=event.slot, seed_id=event.seed_id, data=data)
        if to == SeedStage.CULLED:
            self.optimizers.drop_seed(event.slot)
            if self.on_cull is not None and record is not None:
                self.on_cull(record.blueprint)
            self.emit(
                E.SEED_CULLED, slot=event.slot, seed_id=event.seed_id, data={"reason": event.reason}
            )
        elif to == SeedStage.FOSSILIZED:
            self.optimizers.fossilize_seed(event.slot, slot.seed.parameters())
            self.emit(
                E.SEED_FOSSILIZED,
                slot=event.slot,
                seed_id=event.seed_id,
                data={"contribution": slot.state.metrics.counterfactual_contribution},
            )

    def state_dict(self) -> dict:
        return {"records": [r.to_dict() for r in self.records.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.records = {r["seed_id"]: SeedRecord.from_dict(r) for r in state["records"]}
