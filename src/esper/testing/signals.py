"""Hand-made controller inputs: one slot's report and one epoch's signals, for controller tests."""

from __future__ import annotations

from esper.leyline import SeedMetrics, SeedStage, SeedStateReport, TrainingSignals

#: The slots of the default CNN task, in forward order.
SLOTS = ("early", "mid", "late")


def slot_report(slot: str, stage: SeedStage = SeedStage.DORMANT, **metrics) -> SeedStateReport:
    """A report for ``slot`` at ``stage`` (a ``conv_light`` seed unless dormant)."""
    return SeedStateReport(
        slot=slot,
        seed_id=None if stage == SeedStage.DORMANT else f"s-{slot}",
        blueprint_id=None if stage == SeedStage.DORMANT else "conv_light",
        stage=stage,
        alpha=0.0,
        isolate_gradients=True,
        seed_params=0,
        metrics=SeedMetrics(**metrics),
    )


def training_signals(
    epoch: int = 10,
    plateau: int = 3,
    stabilized: bool = True,
    slots=None,
    topology: str = "cnn",
    **extra,
) -> TrainingSignals:
    """Epoch ``epoch`` of a run at 90% accuracy, plateaued for ``plateau`` epochs; every slot
    dormant unless ``slots`` says otherwise; ``extra`` sets any other field."""
    fields = {
        "train_loss": 0.1,
        "val_loss": 0.2,
        "val_quality": 90.0,
        "best_val_quality": 90.0,
        "quality_delta": 0.0,
        "loss_delta": 0.0,
        **extra,
    }
    return TrainingSignals(
        epoch=epoch,
        plateau_epochs=plateau,
        host_stabilized=stabilized,
        topology=topology,
        slots=tuple(slots or [slot_report(s) for s in SLOTS]),
        **fields,
    )
