"""Typed records of a run's history, as :class:`~esper.nissa.run_state.RunState` folds them out
of the event log: one :class:`EpochRecord` per completed epoch and one :class:`LifecycleMark`
per growth event.

The live view reads the latest of them and the reports (:mod:`esper.karn`) read them all; both
get them from the same fold, so what an event means is decided here once. Plain data: nothing
here touches a model or a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from esper.leyline import TelemetryEvent, TelemetryEventType

T = TelemetryEventType

#: Growth events marked on the plots, and the short name each is drawn under.
MARK_KINDS = {
    T.SEED_GERMINATED: "germinated",
    T.SEED_FOSSILIZED: "fossilized",
    T.SEED_CULLED: "culled",
    T.GOVERNOR_ROLLBACK: "rollback",
}


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (a JSON number), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def optional_number(value: Any) -> float | None:
    """``value`` as a float when it is a number, else None."""
    return float(value) if is_number(value) else None


@dataclass(frozen=True)
class SeedSnapshot:
    """A slot's seed as one ``epoch_completed`` event recorded it.

    Attributes:
        seed_id: The seed's id; ``"?"`` when the snapshot has none.
        blueprint: Its blueprint; ``"?"`` when the snapshot has none.
        stage: A ``SeedStage`` name such as ``"TRAINING"``; ``"UNKNOWN"`` when missing.
        alpha: The blend weight at the end of the epoch; None when not recorded.
        params: The seed's parameter count; None when not recorded.
        incubation_gain: The seed's incubation gain (loss units); None until measured.
    """

    seed_id: str
    blueprint: str
    stage: str
    alpha: float | None = None
    params: int | None = None
    incubation_gain: float | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SeedSnapshot:
        """The snapshot one entry of an epoch event's ``seeds`` describes."""
        params = raw.get("params")
        return cls(
            seed_id=str(raw.get("seed_id", "?")),
            blueprint=str(raw.get("blueprint", "?")),
            stage=str(raw.get("stage", "UNKNOWN")),
            alpha=optional_number(raw.get("alpha")),
            params=int(params) if is_number(params) else None,
            incubation_gain=optional_number(raw.get("incubation_gain")),
        )


@dataclass(frozen=True)
class EpochRecord:
    """One ``epoch_completed`` event.

    Attributes:
        epoch: The epoch it closed.
        val_accuracy: Validation accuracy in percent.
        val_loss: Validation loss; None when not recorded.
        train_accuracy: Train accuracy in percent; None when not recorded.
        seeds: Slot name -> the seed it held at the end of the epoch.
        train_flops: Training FLOPs spent up to the end of this epoch (None in logs that
            predate counting).
    """

    epoch: int
    val_accuracy: float
    val_loss: float | None = None
    train_accuracy: float | None = None
    seeds: dict[str, SeedSnapshot] = field(default_factory=dict)
    train_flops: float | None = None


@dataclass(frozen=True)
class LifecycleMark:
    """A moment worth a marker on the plots: germinate, fossilize, cull or governor rollback.

    Attributes:
        epoch: The event's epoch; for an event without one, the last epoch seen before it.
        kind: A value of :data:`MARK_KINDS`.
        slot: The slot concerned; None for a rollback.
        seed_id: The seed concerned; None for a rollback.
    """

    epoch: int
    kind: str
    slot: str | None
    seed_id: str | None


def seed_snapshots(raw: Any) -> dict[str, SeedSnapshot]:
    """The seeds of an epoch event's ``seeds`` field, by slot name; entries that are not objects
    are left out (:func:`epoch_problem` says when there were any)."""
    if not isinstance(raw, dict):
        return {}
    return {str(slot): SeedSnapshot.from_dict(s) for slot, s in raw.items() if isinstance(s, dict)}


def epoch_problem(event: TelemetryEvent) -> str | None:
    """Why an ``epoch_completed`` event cannot become an :class:`EpochRecord`, or None.

    Args:
        event: An ``epoch_completed`` event.

    Returns:
        ``"epoch_completed event for epoch N: what is wrong"``, or None when it can.
    """
    where = f"epoch_completed event for epoch {event.epoch}"
    if not isinstance(event.epoch, int):
        return f"{where}: 'epoch' must be an integer"
    if not is_number(event.data.get("val_accuracy")):
        return f"{where}: 'val_accuracy' missing or not a number"
    raw = event.data.get("seeds") or {}
    if not isinstance(raw, dict) or not all(isinstance(s, dict) for s in raw.values()):
        return f"{where}: 'seeds' must map slot names to objects"
    return None


def epoch_record(event: TelemetryEvent, seeds: dict[str, SeedSnapshot]) -> EpochRecord:
    """The record of an ``epoch_completed`` event that :func:`epoch_problem` passed.

    Args:
        event: The event.
        seeds: Its :func:`seed_snapshots`.

    Returns:
        The record.
    """
    data = event.data
    return EpochRecord(
        epoch=event.epoch,  # an int: epoch_problem passed the event
        val_accuracy=float(data["val_accuracy"]),
        val_loss=optional_number(data.get("val_loss")),
        train_accuracy=optional_number(data.get("train_accuracy")),
        seeds=seeds,
        train_flops=optional_number(data.get("total_train_flops")),
    )
