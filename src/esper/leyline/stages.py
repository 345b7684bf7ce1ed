"""The seed lifecycle: stages and the only transitions allowed between them."""

from __future__ import annotations

from enum import IntEnum


class SeedStage(IntEnum):
    """Where a seed is in its life. Values are stable: they appear in checkpoints and telemetry."""

    UNKNOWN = 0
    DORMANT = 1
    GERMINATED = 2
    TRAINING = 3
    BLENDING = 4
    PROBATIONARY = 6
    FOSSILIZED = 7
    CULLED = 8
    EMBARGOED = 9
    RESETTING = 10


VALID_TRANSITIONS: dict[SeedStage, tuple[SeedStage, ...]] = {
    SeedStage.UNKNOWN: (SeedStage.DORMANT,),
    SeedStage.DORMANT: (SeedStage.GERMINATED,),
    SeedStage.GERMINATED: (SeedStage.TRAINING, SeedStage.CULLED),
    SeedStage.TRAINING: (SeedStage.BLENDING, SeedStage.CULLED),
    SeedStage.BLENDING: (SeedStage.PROBATIONARY, SeedStage.CULLED),
    SeedStage.PROBATIONARY: (SeedStage.FOSSILIZED, SeedStage.CULLED),
    SeedStage.FOSSILIZED: (),
    SeedStage.CULLED: (SeedStage.EMBARGOED,),
    SeedStage.EMBARGOED: (SeedStage.RESETTING,),
    SeedStage.RESETTING: (SeedStage.DORMANT,),
}

# Stages in which a seed module exists and may affect (or shadow) the forward pass.
_ACTIVE = frozenset(
    {
        SeedStage.GERMINATED,
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
    }
)
_FAILURE = frozenset({SeedStage.CULLED, SeedStage.EMBARGOED, SeedStage.RESETTING})


def is_valid_transition(src: SeedStage, dst: SeedStage) -> bool:
    """Return True when ``src -> dst`` is a legal lifecycle transition."""
    return SeedStage(dst) in VALID_TRANSITIONS.get(SeedStage(src), ())


def is_active_stage(stage: SeedStage) -> bool:
    """True for stages in which the slot holds a live (or fossilized) seed module."""
    return SeedStage(stage) in _ACTIVE


def is_failure_stage(stage: SeedStage) -> bool:
    """True for the stages a culled seed passes through on its way back to DORMANT."""
    return SeedStage(stage) in _FAILURE


def is_terminal_stage(stage: SeedStage) -> bool:
    """True for stages with no way out (FOSSILIZED)."""
    return not VALID_TRANSITIONS[SeedStage(stage)]


def affects_output(stage: SeedStage) -> bool:
    """True for stages in which the seed's output is mixed into the host's stream."""
    return SeedStage(stage) in (
        SeedStage.BLENDING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
    )
