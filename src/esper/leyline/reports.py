"""Seed metrics and state reports: plain data shared between the model, trainer and controllers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from esper.leyline.stages import SeedStage


@dataclass
class SeedMetrics:
    """What is known about one seed's health and usefulness.

    Numbers here are plain Python values: they are materialized only at telemetry capture or at
    epoch end, never per training step.
    """

    epochs_total: int = 0
    epochs_in_current_stage: int = 0
    initial_val_accuracy: float | None = None
    current_val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    accuracy_at_stage_start: float | None = None
    #: Accuracy with the seed minus accuracy with alpha forced to 0 (points); None until measured.
    #: Once the host has adapted to the seed this also counts the host's dependency on it.
    counterfactual_contribution: float | None = None
    #: The host's training loss minus the loss with the seed blended at alpha 1 (the shadow
    #: pass), mean over the seed's last TRAINING epoch, each batch measured before the update it
    #: drives. The host never sees a seed in TRAINING, so its adaptation cannot inflate this.
    #: None until an epoch of incubation was measured; frozen once TRAINING ends.
    incubation_gain: float | None = None
    #: Validation accuracy (points) of the last epoch before the seed entered BLENDING.
    accuracy_before_blending: float | None = None
    seed_gradient_norm: float = 0.0
    host_gradient_norm: float = 0.0
    #: EMA of (seed_norm / host_norm) * sqrt(host_params / seed_params).
    gradient_ratio: float = 0.0
    gradient_captures: int = 0
    #: Captures in which gradient really flowed from the seed back into the host.
    isolation_violations: int = 0
    #: Alpha actually used in the last forward (mean over the batch for a gated blend).
    current_alpha: float = 0.0
    healthy: bool = True

    @property
    def improvement_since_stage_start(self) -> float:
        """Accuracy gain (points) since the current stage began; 0 when unknown."""
        if self.current_val_accuracy is None or self.accuracy_at_stage_start is None:
            return 0.0
        return self.current_val_accuracy - self.accuracy_at_stage_start

    def record_accuracy(self, accuracy: float) -> None:
        """Record this epoch's validation accuracy (percent)."""
        accuracy = float(accuracy)
        if self.initial_val_accuracy is None:
            self.initial_val_accuracy = accuracy
        if self.accuracy_at_stage_start is None:
            self.accuracy_at_stage_start = accuracy
        self.current_val_accuracy = accuracy
        if self.best_val_accuracy is None or accuracy > self.best_val_accuracy:
            self.best_val_accuracy = accuracy

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SeedStateReport:
    """A snapshot of one slot for controllers and telemetry."""

    slot: str
    seed_id: str | None
    blueprint_id: str | None
    stage: SeedStage
    alpha: float
    isolate_gradients: bool
    seed_params: int
    metrics: SeedMetrics = field(default_factory=SeedMetrics)
    stage_history: tuple[SeedStage, ...] = ()
    #: Ids of the seeds fossilized in this slot before the current one, oldest first.
    fossils: tuple[str, ...] = ()

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stage_history]
