"""The learned controller's action space: one masked discrete space over every slot.

Index 0 is WAIT; then GERMINATE for each (slot, blueprint), slot-major; then FOSSILIZE per slot;
then CULL per slot. The mask says which indices the lifecycle allows now, from the slots'
stages alone (what a controller sees in :class:`TrainingSignals`), so the same mask serves the
environment during training and the controller in a real run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from esper.kasmina.blueprints import list_blueprints
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    Action,
    Decision,
    SeedStage,
    TrainingSignals,
    is_valid_transition,
)

#: Stages a new seed may be germinated into: an empty slot, or after a fossilized seed.
_GERMINABLE = (SeedStage.DORMANT, SeedStage.FOSSILIZED)


@dataclass(frozen=True)
class ActionLayout:
    """Which decision each action index stands for, for one slot layout and blueprint set.

    Attributes:
        slots: slot names in forward order (shallow to deep), as the model reports them.
        blueprints: blueprints a germination may choose, in a fixed order.
        blend_algorithm: the blend every germination uses.
    """

    slots: tuple[str, ...]
    blueprints: tuple[str, ...]
    blend_algorithm: str = DEFAULT_BLEND_ALGORITHM

    def __post_init__(self) -> None:
        if not self.slots:
            raise ValueError("ActionLayout needs at least one slot")
        if not self.blueprints:
            raise ValueError("ActionLayout needs at least one blueprint")
        for what, names in (("slot", self.slots), ("blueprint", self.blueprints)):
            if len(set(names)) != len(names):
                raise ValueError(f"ActionLayout: repeated {what} in {', '.join(names)}")

    @classmethod
    def for_topology(cls, topology: str, slots: tuple[str, ...]) -> ActionLayout:
        """Every blueprint of ``topology`` but ``noop`` (a control that adds nothing to learn)."""
        blueprints = tuple(b for b in list_blueprints(topology) if b != "noop")
        return cls(tuple(slots), blueprints)

    @property
    def n(self) -> int:
        """The number of actions."""
        return 1 + len(self.slots) * (len(self.blueprints) + 2)

    @property
    def _fossilize_start(self) -> int:
        return 1 + len(self.slots) * len(self.blueprints)

    @property
    def _cull_start(self) -> int:
        return self._fossilize_start + len(self.slots)

    def index(self, decision: Decision) -> int:
        """The index of ``decision`` (its reason and blend are not part of the action).

        Raises:
            ValueError: the decision names a slot or blueprint outside this layout.
        """
        action = Action(decision.action)
        if action == Action.WAIT:
            return 0
        if decision.slot not in self.slots:
            raise ValueError(
                f"slot {decision.slot!r} is not in this layout; slots: {', '.join(self.slots)}"
            )
        s = self.slots.index(decision.slot)
        if action == Action.GERMINATE:
            if decision.blueprint not in self.blueprints:
                raise ValueError(
                    f"blueprint {decision.blueprint!r} is not in this layout; "
                    f"blueprints: {', '.join(self.blueprints)}"
                )
            return 1 + s * len(self.blueprints) + self.blueprints.index(decision.blueprint)
        start = self._fossilize_start if action == Action.FOSSILIZE else self._cull_start
        return start + s

    def decision(self, index: int, reason: str = "") -> Decision:
        """The decision action ``index`` stands for.

        Raises:
            ValueError: ``index`` is outside ``[0, n)``.
        """
        index = int(index)
        if not 0 <= index < self.n:
            raise ValueError(f"action {index} is outside this layout's 0..{self.n - 1}")
        if index == 0:
            return Decision(Action.WAIT, reason=reason)
        if index < self._fossilize_start:
            s, b = divmod(index - 1, len(self.blueprints))
            return Decision(
                Action.GERMINATE,
                slot=self.slots[s],
                blueprint=self.blueprints[b],
                blend_algorithm=self.blend_algorithm,
                reason=reason,
            )
        if index < self._cull_start:
            return Decision(
                Action.FOSSILIZE, slot=self.slots[index - self._fossilize_start], reason=reason
            )
        return Decision(Action.CULL, slot=self.slots[index - self._cull_start], reason=reason)

    def mask(self, signals: TrainingSignals) -> np.ndarray:
        """Legal actions now: a bool array of length ``n`` (WAIT is always legal).

        GERMINATE needs a dormant or fossilized slot and a seed left in the run's budget;
        FOSSILIZE and CULL need the lifecycle to allow that transition from the slot's stage.
        A legal FOSSILIZE can still be refused by the G5 gate; the trainer then leaves the
        model as it was, as for a WAIT.

        Raises:
            ValueError: the signals' slots are not this layout's.
        """
        stages = {r.slot: r.stage for r in signals.slots}
        if tuple(stages) != self.slots:
            raise ValueError(
                f"the run's slots ({', '.join(stages)}) are not this layout's "
                f"({', '.join(self.slots)})"
            )
        mask = np.zeros(self.n, dtype=np.bool_)
        mask[0] = True
        budget = signals.seeds_left is None or signals.seeds_left > 0
        offered = set(signals.blueprints) if signals.blueprints else set(self.blueprints)
        for s, slot in enumerate(self.slots):
            stage = stages[slot]
            if budget and stage in _GERMINABLE:
                for b, blueprint in enumerate(self.blueprints):
                    mask[1 + s * len(self.blueprints) + b] = blueprint in offered
            mask[self._fossilize_start + s] = is_valid_transition(stage, SeedStage.FOSSILIZED)
            mask[self._cull_start + s] = is_valid_transition(stage, SeedStage.CULLED)
        return mask

    def names(self) -> list[str]:
        """A short name per action, for tables and logs (``germinate:late:mlp``)."""
        out = []
        for i in range(self.n):
            d = self.decision(i)
            parts = [Action(d.action).value, d.slot, d.blueprint]
            out.append(":".join(p for p in parts if p))
        return out

    def to_dict(self) -> dict:
        return {
            "slots": list(self.slots),
            "blueprints": list(self.blueprints),
            "blend_algorithm": self.blend_algorithm,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ActionLayout:
        return cls(tuple(raw["slots"]), tuple(raw["blueprints"]), raw["blend_algorithm"])
