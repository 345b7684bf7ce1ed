"""The signal tracker: turns each epoch's numbers into the observation a controller reads.

Building the observation is the loop's job (as an environment's step returns its observation),
so the tracker lives in tolaria, beside the trainer, and controllers (tamiyo's heuristic,
simic's policy) only read the :class:`~esper.leyline.TrainingSignals` it produces. It keeps its
own state: it listens to the model's lifecycle events (a germination restarts the plateau
count) and has ``state_dict()`` for checkpoints, so the loop never edits its fields.
"""

from __future__ import annotations

from esper.leyline import (
    DEFAULT_PLATEAU_THRESHOLD,
    DEFAULT_RECENT_LOSS_EPOCHS,
    DEFAULT_STABILIZATION_THRESHOLD,
    LifecycleEvent,
    SeedStage,
    SeedStateReport,
    StageChanged,
    TrainingSignals,
)

_STATE_FIELDS = (
    "best_val_quality",
    "prev_val_quality",
    "prev_val_loss",
    "plateau_epochs",
    "host_stabilized",
    "first_val_loss",
    "recent_val_losses",
)


class SignalTracker:
    """Keeps the history a controller needs (best quality, plateau length, loss trend).

    A quality is what the gates compare (``GateConfig.unit``): validation accuracy in points, or
    the negative validation loss for a loss-unit task.

    Args:
        plateau_threshold: an epoch whose quality gain over the best so far is below this (in
            the quality's unit) counts as plateau.
        stabilization_threshold: the host is stable once an epoch improves its validation loss
            by less than this fraction.
    """

    def __init__(
        self,
        plateau_threshold: float = DEFAULT_PLATEAU_THRESHOLD,
        stabilization_threshold: float = DEFAULT_STABILIZATION_THRESHOLD,
    ) -> None:
        self.plateau_threshold = plateau_threshold
        self.stabilization_threshold = stabilization_threshold
        self.best_val_quality = float("-inf")
        self.prev_val_quality: float | None = None
        self.prev_val_loss: float | None = None
        self.plateau_epochs = 0
        self.host_stabilized = False
        # The first validation loss and the last few: enough for recent_loss_share.
        self.first_val_loss: float | None = None
        self.recent_val_losses: list[float] = []

    def reset_plateau(self) -> None:
        """A germination answers the plateau: the new seed gets a fresh plateau count."""
        self.plateau_epochs = 0

    def on_lifecycle(self, event: LifecycleEvent) -> None:
        """Listener for a model's lifecycle events: a germination resets the plateau count."""
        if isinstance(event, StageChanged) and event.to_stage == SeedStage.GERMINATED:
            self.reset_plateau()

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in _STATE_FIELDS}

    def load_state_dict(self, state: dict) -> None:
        for name in _STATE_FIELDS:
            setattr(self, name, state[name])

    def _recent_loss_share(self, val_loss: float) -> float | None:
        """The share of the loss's fall since the first epoch that the last
        ``DEFAULT_RECENT_LOSS_EPOCHS`` epochs made; None until known, or while nothing fell."""
        if self.first_val_loss is None:
            self.first_val_loss = val_loss
        window = DEFAULT_RECENT_LOSS_EPOCHS
        self.recent_val_losses = [*self.recent_val_losses, val_loss][-(window + 1) :]
        fallen = self.first_val_loss - val_loss
        if len(self.recent_val_losses) < window + 1 or not fallen > 0:
            return None
        return (self.recent_val_losses[0] - val_loss) / fallen

    def update(
        self,
        *,
        epoch: int,
        train_loss: float,
        val_loss: float,
        val_quality: float,
        topology: str,
        slots: tuple[SeedStateReport, ...] = (),
        blueprints: tuple[str, ...] = (),
        blend_algorithms: tuple[str, ...] = (),
        params: dict[str, int] | None = None,
    ) -> TrainingSignals:
        """Fold one epoch's numbers in and return the controller's signals.

        ``val_quality`` is the epoch's validation quality (``Trainer.quality``); ``params`` is
        ``MorphogeneticModel.count_parameters()`` (host, seeds, total).
        """
        # Plateau: no new best by at least the threshold. Judged against the best so far, so a
        # noisy up-and-down validation curve does not look like progress.
        gain = val_quality - self.best_val_quality
        if gain < self.plateau_threshold:
            self.plateau_epochs += 1
        else:
            self.plateau_epochs = 0
        prev = self.prev_val_quality
        quality_delta = 0.0 if prev is None else val_quality - prev
        loss_delta = 0.0 if self.prev_val_loss is None else val_loss - self.prev_val_loss
        if self.prev_val_loss is not None and self.prev_val_loss > 0:
            if -loss_delta / self.prev_val_loss < self.stabilization_threshold:
                self.host_stabilized = True
        self.best_val_quality = max(self.best_val_quality, val_quality)
        self.prev_val_quality, self.prev_val_loss = val_quality, val_loss
        share = self._recent_loss_share(val_loss)
        return TrainingSignals(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_quality=val_quality,
            best_val_quality=self.best_val_quality,
            quality_delta=quality_delta,
            loss_delta=loss_delta,
            plateau_epochs=self.plateau_epochs,
            host_stabilized=self.host_stabilized,
            topology=topology,
            slots=slots,
            blueprints=blueprints,
            blend_algorithms=blend_algorithms,
            host_params=(params or {}).get("host", 0),
            seed_params=(params or {}).get("seeds", 0),
            total_params=(params or {}).get("total", 0),
            recent_loss_share=share,
        )
