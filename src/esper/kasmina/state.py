"""SeedState: the lifecycle state of the seed in one slot, as validated plain data.

The slot owns its state: the lifecycle (``esper.kasmina.lifecycle``) moves the stage, and the
record verbs (``SeedSlot.record_validation`` / ``record_counterfactual``) write the metrics.
Every field is checked when it is set, so a state cannot hold a stage that is a string or an
alpha of 2.

Assigning ``state.stage`` from outside the lifecycle (``slot.state.stage = SeedStage.TRAINING``,
as in the original bug report) still works, and is never silent: the change is appended to
``stage_history`` like any other, and its index goes into ``forced``, so a history with an
illegal step says plainly which step was not taken through the lifecycle. The slot announces
such a change to its listeners as a ``StageChanged(forced=True)`` the next time it does
anything lifecycle-related.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any

from esper.leyline import DEFAULT_BLEND_ALGORITHM, DEFAULT_BLENDING_STEPS, SeedMetrics, SeedStage

_VALID_STAGES = ", ".join(f"{s.name}={s.value}" for s in SeedStage)


def _stage(name: str, value: Any) -> SeedStage:
    # A str is refused although SeedStage["TRAINING"] would work: "3" vs "TRAINING" vs 3 in a
    # checkpoint is exactly the kind of ambiguity this dataclass exists to rule out.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(
            f"SeedState.{name} must be a SeedStage or its int value, got "
            f"{type(value).__name__} {value!r}; valid: {_VALID_STAGES}"
        )
    try:
        return SeedStage(int(value))
    except ValueError:
        raise ValueError(
            f"SeedState.{name}: {value!r} is not a SeedStage value; valid: {_VALID_STAGES}"
        ) from None


def _stage_list(name: str, value: Any) -> list[SeedStage]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"SeedState.{name} must be a list of SeedStage, got {type(value).__name__}")
    if not value:
        raise ValueError(f"SeedState.{name} must not be empty (it starts as [DORMANT])")
    return [_stage(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"SeedState.{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"SeedState.{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _index_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"SeedState.{name} must be a list of ints, got {type(value).__name__}")
    return [_count(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _alpha(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"SeedState.{name} must be a float in [0, 1], got {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"SeedState.{name} must be a float in [0, 1], got {value}")
    return value


def _slot_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"SeedState.{name} must be a non-empty str (the slot's name), got {value!r}"
        )
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"SeedState.{name} must be a str or None, got {type(value).__name__}")
    return value


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"SeedState.{name} must be a str, got {type(value).__name__}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"SeedState.{name} must be a bool, got {value!r}")
    return value


def _metrics(name: str, value: Any) -> SeedMetrics:
    if not isinstance(value, SeedMetrics):
        raise TypeError(f"SeedState.{name} must be a SeedMetrics, got {type(value).__name__}")
    return value


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "slot": _slot_name,
    "stage": _stage,
    "seed_id": _optional_str,
    "blueprint_id": _optional_str,
    "blend_algorithm_id": _str,
    "previous_stage": _stage,
    "stage_history": _stage_list,
    "forced": _index_list,
    "metrics": _metrics,
    "alpha": _alpha,
    "blend_step": _count,
    "blending_steps": lambda name, value: _count(name, value, minimum=1),
    "embargo_remaining": _count,
    "shape_probe_passed": _flag,
}


@dataclass(kw_only=True)
class SeedState:
    """Lifecycle state of the seed in one slot: plain data, saved in checkpoints.

    Every field is validated whenever it is set (construction included).

    Attributes:
        slot: the slot's name.
        stage: the current stage. Assigning it directly records a forced change (see the module
            docstring); the lifecycle moves it through a private path that does not.
        seed_id, blueprint_id: the seed's identity; None while the slot is empty.
        blend_algorithm_id: the alpha schedule the seed blends with.
        previous_stage: the stage before the current one.
        stage_history: every stage this seed has been in, in order; starts as ``[DORMANT]``.
        forced: indices into ``stage_history`` of stages that were assigned directly rather
            than reached through the lifecycle (the step ``history[i-1] -> history[i]`` may then
            be illegal).
        metrics: what is known about the seed's health and usefulness.
        alpha: the schedule's alpha (mirrors the slot's alpha buffer; a gated blend modulates it
            per sample).
        blend_step: ramp steps taken so far in BLENDING.
        blending_steps: ramp steps in all; G3 waits for the ramp to finish.
        embargo_remaining: epochs of cooldown left in EMBARGOED.
        shape_probe_passed: the seed preserved the feature shape on a probe (G0).

    Raises:
        TypeError: a field of the wrong type (a stage given as a str, say); the message names
            the field and what is valid.
        ValueError: a value out of range (an alpha of 2, a negative count, an unknown stage
            number, a ``forced`` index outside the history).
    """

    slot: str
    stage: SeedStage = SeedStage.DORMANT
    seed_id: str | None = None
    blueprint_id: str | None = None
    blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM
    previous_stage: SeedStage = SeedStage.UNKNOWN
    stage_history: list[SeedStage] = field(default_factory=lambda: [SeedStage.DORMANT])
    forced: list[int] = field(default_factory=list)
    metrics: SeedMetrics = field(default_factory=SeedMetrics)
    alpha: float = 0.0
    blend_step: int = 0
    blending_steps: int = DEFAULT_BLENDING_STEPS
    embargo_remaining: int = 0
    shape_probe_passed: bool = False

    def __post_init__(self) -> None:
        for index in self.forced:
            if not 1 <= index < len(self.stage_history):
                raise ValueError(
                    f"SeedState.forced: index {index} does not name a step of stage_history "
                    f"(valid: 1..{len(self.stage_history) - 1})"
                )
        # How many entries of ``forced`` the slot has announced to its listeners. Not a field:
        # it is bookkeeping of the slot's event stream, not part of the seed's state.
        object.__setattr__(self, "_announced", 0)

    def __setattr__(self, name: str, value: Any) -> None:
        validate = _VALIDATORS.get(name)
        if validate is not None:
            value = validate(name, value)
        if name == "stage" and "stage" in self.__dict__:
            # Set after construction, from outside the lifecycle: keep it, and say so.
            if value != self.stage:
                self._record(value, forced=True)
            return
        object.__setattr__(self, name, value)

    def _move_to(self, target: SeedStage) -> None:
        """The lifecycle's own stage change (never marked forced)."""
        target = _stage("stage", target)
        if target != self.stage:
            self._record(target, forced=False)

    def _record(self, target: SeedStage, *, forced: bool) -> None:
        object.__setattr__(self, "previous_stage", self.stage)
        object.__setattr__(self, "stage", target)
        self.stage_history.append(target)
        if forced:
            self.forced.append(len(self.stage_history) - 1)

    def _unannounced_forced(self) -> list[int]:
        """Forced history indices not yet announced; marks them announced."""
        pending = self.forced[self._announced :]
        object.__setattr__(self, "_announced", len(self.forced))
        return pending

    def to_dict(self) -> dict:
        """Plain data (ints, floats, strings, lists, dicts) for checkpoints and comparisons.

        Returns:
            A dict that :meth:`from_dict` turns back into an equal state, and that
            ``torch.load(..., weights_only=True)`` accepts.
        """
        raw = asdict(self)
        raw["stage"] = int(self.stage)
        raw["previous_stage"] = int(self.previous_stage)
        raw["stage_history"] = [int(s) for s in self.stage_history]
        return raw

    @classmethod
    def from_dict(cls, raw: dict) -> SeedState:
        """Rebuild a state from :meth:`to_dict` output.

        Args:
            raw: the dict from :meth:`to_dict`.

        Returns:
            The state. Its forced steps count as already announced: they happened before the
            checkpoint was written.

        Raises:
            TypeError, ValueError: a field fails validation.
        """
        raw = dict(raw)
        raw["metrics"] = SeedMetrics(**raw["metrics"])
        state = cls(**raw)
        object.__setattr__(state, "_announced", len(state.forced))
        return state
