"""What a controller sees (signals) and what it says (decisions), plus the Controller protocol."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from esper.leyline import SeedStateReport


class Action(StrEnum):
    WAIT = "wait"
    GERMINATE = "germinate"
    FOSSILIZE = "fossilize"
    CULL = "cull"


@dataclass(frozen=True)
class TrainingSignals:
    """One epoch's view of the run, built by the signal tracker."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    best_val_accuracy: float
    accuracy_delta: float
    loss_delta: float
    plateau_epochs: int
    host_stabilized: bool
    topology: str
    slots: tuple[SeedStateReport, ...] = ()
    blueprints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """One controller decision. ``slot``/``blueprint`` are set where the action needs them."""

    action: Action
    slot: str | None = None
    blueprint: str | None = None
    blend_algorithm: str | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "action": self.action.value,
            "slot": self.slot,
            "blueprint": self.blueprint,
            "blend_algorithm": self.blend_algorithm,
            "reason": self.reason,
        }


@runtime_checkable
class Controller(Protocol):
    """Anything that turns signals into a decision: the heuristic (Tamiyo) or PPO (Simic).

    Optional hooks the trainer calls when a controller has them: ``on_outcome(decision,
    succeeded)`` (whether the decision could be carried out, e.g. a refused G5) and
    ``on_cull(blueprint)`` (a seed of that blueprint was culled, by anyone).
    """

    def decide(self, signals: TrainingSignals) -> Decision: ...
