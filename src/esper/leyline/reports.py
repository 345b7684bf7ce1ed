"""Seed metrics and state reports: plain data shared between the model, trainer and controllers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from esper.leyline.stages import SeedStage


@dataclass
class SeedMetrics:
    """What is known about one seed's health and usefulness.

    Numbers here are plain Python values: they are materialized only at telemetry capture or at
    epoch end, never per training step.

    A *quality* is what the gates compare, in ``GateConfig.unit``: validation accuracy in
    points, or for a loss-unit task the negative validation loss (higher is better either way).

    Attributes:
        initial_quality: the quality of the first epoch recorded for this seed (at germination).
        current_quality: the quality of the last epoch recorded.
        best_quality: the best quality recorded.
        quality_at_stage_start: the quality when the current stage began.
    """

    epochs_total: int = 0
    epochs_in_current_stage: int = 0
    initial_quality: float | None = None
    current_quality: float | None = None
    best_quality: float | None = None
    quality_at_stage_start: float | None = None
    #: Quality with the seed minus quality with alpha forced to 0 (in the gates' unit); None
    #: until measured. Once the host has adapted to the seed this also counts the host's
    #: dependency on it.
    counterfactual_contribution: float | None = None
    #: The host's training loss minus the loss with the seed blended at alpha 1 (the shadow
    #: pass), mean over the seed's last TRAINING epoch, each batch measured before the update it
    #: drives. The host never sees a seed in TRAINING, so its adaptation cannot inflate this.
    #: None until an epoch of incubation was measured; frozen once TRAINING ends.
    incubation_gain: float | None = None
    #: Quality of the last epoch before the seed entered BLENDING.
    quality_before_blending: float | None = None
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
        """Quality gain since the current stage began (in the gates' unit); 0 when unknown."""
        if self.current_quality is None or self.quality_at_stage_start is None:
            return 0.0
        return self.current_quality - self.quality_at_stage_start

    def record_quality(self, quality: float) -> None:
        """Record this epoch's validation quality.

        Args:
            quality: accuracy in points, or the negative validation loss for a loss-unit task.
        """
        quality = float(quality)
        if self.initial_quality is None:
            self.initial_quality = quality
        if self.quality_at_stage_start is None:
            self.quality_at_stage_start = quality
        self.current_quality = quality
        if self.best_quality is None or quality > self.best_quality:
            self.best_quality = quality

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
