"""Lifecycle events: what a slot announces at the moment something happens to its seed.

Kasmina emits these where they happen (a transition, a gate evaluation, a detected leak);
listeners subscribe on the model (``MorphogeneticModel.subscribe``). Nothing downstream derives
them again by diffing histories or counters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from esper.leyline.gates import GateResult
from esper.leyline.stages import SeedStage


@dataclass(frozen=True)
class StageChanged:
    """A slot's seed moved from one stage to another.

    Attributes:
        slot: the slot's name.
        seed_id: the seed's id (the id it had, for the RESETTING -> DORMANT step).
        from_stage, to_stage: the transition.
        gate: the gate result that allowed it; None for transitions no gate guards (culls,
            embargo, reset).
        reason: why it happened, in words (``"germinated"``, a cull's cause, ...).
        forced: True when the stage was assigned directly (``slot.state.stage = ...``) rather
            than reached through the lifecycle verbs; the transition may then be illegal.
    """

    slot: str
    seed_id: str | None
    from_stage: SeedStage
    to_stage: SeedStage
    gate: GateResult | None = None
    reason: str = ""
    forced: bool = False


@dataclass(frozen=True)
class GateEvaluated:
    """A gate was evaluated for a transition into ``target`` (whether or not it passed)."""

    slot: str
    seed_id: str | None
    target: SeedStage
    result: GateResult


@dataclass(frozen=True)
class IsolationViolated:
    """A telemetry capture found gradient that really flowed from the seed into the host while
    isolation was required.

    Attributes:
        violations: the seed's violation count after this capture.
    """

    slot: str
    seed_id: str | None
    violations: int


LifecycleEvent = StageChanged | GateEvaluated | IsolationViolated
#: A subscriber to a model's lifecycle events.
LifecycleListener = Callable[[LifecycleEvent], None]
