"""The controller contracts: what a controller sees each epoch (signals), what it says
(a decision), what became of it (an outcome), and the ``Controller`` base class.

They live here so that the training loop (tolaria), the heuristic (tamiyo) and the learned
controller (simic) agree on them without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

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
        train_loss, val_loss: this epoch's losses.
        val_quality: this epoch's validation quality, in the gates' unit
            (``GateConfig.unit``): accuracy in points, or the negative validation loss for a
            loss-unit task.
        best_val_quality: the best validation quality so far.
        quality_delta, loss_delta: change since the previous epoch.
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
    val_quality: float
    best_val_quality: float
    quality_delta: float
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


class Controller:
    """Turns signals into a decision: the heuristic (Tamiyo), PPO (Simic) or your own.

    Subclass it and write :meth:`decide`; every other hook has a default that does nothing, so
    the trainer calls each one without asking whether it is there (as Lightning's ``Callback``
    does). An object that has ``decide`` but does not subclass this is wrapped once by
    :func:`as_controller`.

    Attributes:
        reads_blending_counterfactuals: False says the controller reads a seed's
            counterfactual contribution only once the seed has left BLENDING. The trainer then
            skips the counterfactual passes of the BLENDING epochs before the last, whose
            values nothing would read (the last one's is what PROBATIONARY starts with).
    """

    reads_blending_counterfactuals: bool = True

    def decide(self, signals: TrainingSignals) -> Decision:
        """This epoch's decision.

        Args:
            signals: the epoch just finished, as the signal tracker saw it.

        Returns:
            The decision; the trainer refuses one it cannot carry out (see ``on_outcome``).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement decide(signals)")

    def on_outcome(self, decision: Decision, outcome: Outcome) -> None:
        """Called after each decision other than WAIT: whether it was carried out, and why
        not. Does nothing by default."""

    def on_cull(self, blueprint: str | None) -> None:
        """Called when a seed of ``blueprint`` was culled, by this controller or by the
        lifecycle itself. Does nothing by default."""

    def reset(self) -> None:
        """Start a new episode (a new run) with fresh internal state. Does nothing by default."""

    def state_dict(self) -> dict:
        """Internal state, saved in checkpoints so that a resumed run decides exactly as the
        uninterrupted one would. Empty by default: a controller without state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output. By default a controller keeps no state: the
        empty state loads as a no-op.

        Raises:
            ValueError: ``state`` is not empty, yet this controller keeps no state (the
                checkpoint was written under another controller).
        """
        if state:
            name = type(self.wrapped if isinstance(self, _ControllerAdapter) else self).__name__
            raise ValueError(
                f"the state holds a controller's state, but {name} cannot load one (it keeps "
                "no state: override state_dict and load_state_dict to keep some)"
            )


#: The hooks :func:`as_controller` takes from a wrapped object where it has them.
_HOOKS = ("on_outcome", "on_cull", "reset", "state_dict", "load_state_dict")


class _ControllerAdapter(Controller):
    """A :class:`Controller` over an object with ``decide`` that does not subclass it: the
    object's own hooks where it has them, the defaults elsewhere. Any other attribute is the
    object's own."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.decide = wrapped.decide
        self.reads_blending_counterfactuals = bool(
            getattr(wrapped, "reads_blending_counterfactuals", True)
        )
        for hook in _HOOKS:
            method = getattr(wrapped, hook, None)
            if callable(method):
                setattr(self, hook, method)

    def __getattr__(self, name: str) -> Any:
        if name == "wrapped":  # not set yet (e.g. during unpickling): not the object's
            raise AttributeError(name)
        return getattr(self.wrapped, name)


def as_controller(controller: Any) -> Controller | None:
    """``controller`` as a :class:`Controller`: itself when it subclasses one (or None), else
    wrapped once so that its missing hooks get the defaults.

    Raises:
        TypeError: ``controller`` has no ``decide`` method.
    """
    if controller is None or isinstance(controller, Controller):
        return controller
    if not callable(getattr(controller, "decide", None)):
        raise TypeError(
            f"a controller needs decide(signals) -> Decision; got {type(controller).__name__} "
            "(subclass esper.leyline.Controller)"
        )
    return _ControllerAdapter(controller)


def controller_state(controller: Any) -> dict:
    """``controller.state_dict()`` as a dict; empty for no controller."""
    controller = as_controller(controller)
    return {} if controller is None else dict(controller.state_dict())
