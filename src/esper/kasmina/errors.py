"""Model-side errors. Each message names the slot, what was wrong and what is valid."""

from __future__ import annotations

from esper.leyline import GateResult


class IllegalTransitionError(ValueError):
    """A lifecycle transition that VALID_TRANSITIONS does not allow."""


class SlotOccupiedError(RuntimeError):
    """Germination into a slot that is not DORMANT."""


class GateFailedError(RuntimeError):
    """A transition that was asked for explicitly and refused by its quality gate."""

    def __init__(self, message: str, result: GateResult) -> None:
        super().__init__(message)
        self.result = result
