"""Quality-gate contracts: levels and the result every gate returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class GateLevel(IntEnum):
    """Gate guarding each forward transition (G4 is reserved; probation has no entry gate)."""

    G0 = 0  # -> GERMINATED
    G1 = 1  # -> TRAINING
    G2 = 2  # -> BLENDING
    G3 = 3  # -> PROBATIONARY
    G4 = 4
    G5 = 5  # -> FOSSILIZED


@dataclass(frozen=True)
class GateResult:
    """Outcome of one gate evaluation.

    Attributes:
        gate: which gate ran.
        passed: whether the transition may happen.
        score: a gate-specific number (e.g. improvement or contribution), for telemetry.
        checks_passed: names of the checks that passed.
        checks_failed: names of the checks that failed, each with a short reason.
        message: one human-readable line.
        unit: what ``score`` and the thresholds in ``checks_failed`` are measured in for G5:
            ``"points"`` (validation accuracy) or ``"loss"`` (validation loss).
    """

    gate: GateLevel
    passed: bool
    score: float = 0.0
    checks_passed: tuple[str, ...] = field(default_factory=tuple)
    checks_failed: tuple[str, ...] = field(default_factory=tuple)
    message: str = ""
    unit: str = "points"
