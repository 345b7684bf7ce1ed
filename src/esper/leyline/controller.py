"""The controller contracts: what a controller sees each epoch (signals), what it says
(a decision), what became of it (an outcome), and the ``Controller`` protocol.

They live here so that the training loop (tolaria), the heuristic (tamiyo) and the learned
controller (simic) agree on them without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from esper.leyline.reports import SeedStateReport


class Action(StrEnum):
    WAIT = "wait"
    GERMINATE = "germinate"
    FOSSILIZE = "fossilize"
    CULL = "cull"


@dataclass(frozen=True)
class TrainingSignals:
    """One epoch's observation of the run, built by the signal tracker.

    Attributes:
        epoch: the epoch just finished (1-based).
        train_loss, val_loss, val_accuracy: this epoch's numbers (accuracy in percent).
        best_val_accuracy: best validation accuracy so far.
        accuracy_delta, loss_delta: change since the previous epoch.
        plateau_epochs: consecutive epochs without a new best by the plateau threshold.
        host_stabilized: the host's loss has stopped falling fast (latched).
        topology: the host's topology.
        slots: one report per slot, in forward order (shallow to deep).
        blueprints: blueprints the registry offers for this topology.
        blend_algorithms: blend algorithms a germination may use.
        host_params, seed_params, total_params: parameter counts (fossilized seeds count as
            host).
        seeds_left: germinations the run still allows (``max_seeds`` minus those made); None
            when the run sets no bound.
        total_epochs: the run's length, when the loop knows it.
        recent_loss_share: the share of the validation loss's fall since the first epoch that
            happened in the last few epochs (None until there are enough epochs, or while the
            loss has not fallen): small once the learning curve has flattened.
    """

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
    blend_algorithms: tuple[str, ...] = ()
    host_params: int = 0
    seed_params: int = 0
    total_params: int = 0
    seeds_left: int | None = None
    total_epochs: int | None = None
    recent_loss_share: float | None = None


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
            "action": Action(self.action).value,
            "slot": self.slot,
            "blueprint": self.blueprint,
            "blend_algorithm": self.blend_algorithm,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Outcome:
    """What became of a decision.

    Attributes:
        applied: the decision was carried out (WAIT is always applied).
        reason: why it was refused (empty when applied).
        seed_id: the new seed's id, for an applied GERMINATE.
    """

    applied: bool
    reason: str = ""
    seed_id: str | None = None

    def to_dict(self) -> dict:
        return {"applied": self.applied, "reason": self.reason, "seed_id": self.seed_id}


@runtime_checkable
class Controller(Protocol):
    """Anything that turns signals into a decision: the heuristic (Tamiyo) or PPO (Simic).

    Optional methods the loop calls when a controller has them:

    * ``on_outcome(decision, outcome)``: whether the decision was carried out;
    * ``on_cull(blueprint)``: a seed of that blueprint was culled, by anyone;
    * ``reset()``: start a new episode (a new run) with fresh internal state;
    * ``state_dict()`` / ``load_state_dict(state)``: internal state, saved in checkpoints so a
      resumed run decides exactly as the uninterrupted one would.

    And one optional attribute:

    * ``reads_blending_counterfactuals`` (True when absent): False says the controller reads a
      seed's counterfactual contribution only once the seed has left BLENDING. The trainer
      then skips the counterfactual passes of the BLENDING epochs before the last, whose
      values nothing would read (the last one's is what PROBATIONARY starts with).
    """

    def decide(self, signals: TrainingSignals) -> Decision: ...


def controller_state(controller: Any) -> dict:
    """``controller.state_dict()`` when it has one, else an empty dict."""
    getter = getattr(controller, "state_dict", None)
    return dict(getter()) if callable(getter) else {}
