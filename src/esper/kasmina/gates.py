"""Quality gates G0-G5: each forward transition must pass its gate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from esper.leyline import (
    DEFAULT_G2_MIN_GRADIENT_RATIO,
    DEFAULT_G2_MIN_INCUBATION_GAIN,
    DEFAULT_G2_MIN_TRAINING_EPOCHS,
    DEFAULT_G3_MIN_ALPHA,
    DEFAULT_G3_MIN_BLENDING_EPOCHS,
    DEFAULT_G5_MAX_ACCURACY_DROP,
    DEFAULT_G5_MAX_LOSS_RISE,
    DEFAULT_G5_MIN_CONTRIBUTION,
    DEFAULT_G5_MIN_CONTRIBUTION_LOSS,
    DEFAULT_G5_MIN_INCUBATION_GAIN,
    DEFAULT_MAX_ISOLATION_VIOLATIONS,
    QUALITY_UNITS,
    GateLevel,
    GateResult,
    SeedStage,
)


@dataclass(frozen=True)
class GateConfig:
    """Gate thresholds; defaults come from leyline.

    ``g2_min_incubation_gain`` and ``g5_min_incubation_gain``: the seed's measured incubation
    gain (:attr:`~esper.leyline.SeedMetrics.incubation_gain`, in the task loss's units) must
    exceed them to blend and to fossilize. It is the one measure of what a seed adds that the
    host's later co-adaptation cannot fake, so G5 reads it again: a seed pushed into BLENDING by
    hand or by a lenient G2 still cannot fossilize on dependency alone. A floor of ``-inf`` asks
    for nothing, not even a measurement.

    ``g3_require_ramp_complete``: G3 also waits until the alpha ramp has taken all its steps, so
    a schedule that passes ``g3_min_alpha`` early (``sigmoid``: 0.959 at step 4 of 5) still
    blends through its last step. Turn it off only to drive stages by hand (benchmarks).
    """

    g2_min_incubation_gain: float = DEFAULT_G2_MIN_INCUBATION_GAIN
    g2_min_training_epochs: int = DEFAULT_G2_MIN_TRAINING_EPOCHS
    g2_min_gradient_ratio: float = DEFAULT_G2_MIN_GRADIENT_RATIO
    max_isolation_violations: int = DEFAULT_MAX_ISOLATION_VIOLATIONS
    g3_min_blending_epochs: int = DEFAULT_G3_MIN_BLENDING_EPOCHS
    g3_min_alpha: float = DEFAULT_G3_MIN_ALPHA
    g5_min_contribution: float = DEFAULT_G5_MIN_CONTRIBUTION
    g5_min_incubation_gain: float = DEFAULT_G5_MIN_INCUBATION_GAIN
    g5_max_accuracy_drop: float = DEFAULT_G5_MAX_ACCURACY_DROP
    g3_require_ramp_complete: bool = True
    unit: str = "points"

    @classmethod
    def for_loss(cls, **overrides) -> GateConfig:
        """Gates for a task measured in validation loss (a regression or language model
        without an accuracy): ``unit="loss"`` and G5's thresholds on the loss's scale."""
        values = {
            "unit": "loss",
            "g5_min_contribution": DEFAULT_G5_MIN_CONTRIBUTION_LOSS,
            "g5_max_accuracy_drop": DEFAULT_G5_MAX_LOSS_RISE,
        }
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        if self.unit not in QUALITY_UNITS:
            raise ValueError(
                f"GateConfig.unit must be one of {', '.join(QUALITY_UNITS)}, got {self.unit!r}"
            )
        for name in (
            "g2_min_training_epochs",
            "max_isolation_violations",
            "g3_min_blending_epochs",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"GateConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.g3_min_alpha <= 1.0:
            raise ValueError(f"GateConfig.g3_min_alpha must be in [0, 1], got {self.g3_min_alpha}")
        if not isinstance(self.g3_require_ramp_complete, bool):
            raise TypeError(
                "GateConfig.g3_require_ramp_complete must be a bool, got "
                f"{self.g3_require_ramp_complete!r}"
            )


def _score(level: GateLevel, state) -> float:
    """The number a gate is mostly about, for telemetry."""
    m = state.metrics
    if level == GateLevel.G2:
        return float(m.incubation_gain or 0.0)
    if level == GateLevel.G3:
        return float(state.alpha)
    if level == GateLevel.G5:
        return float(m.counterfactual_contribution or 0.0)
    return 0.0


_GATE_FOR_TARGET = {
    SeedStage.GERMINATED: GateLevel.G0,
    SeedStage.TRAINING: GateLevel.G1,
    SeedStage.BLENDING: GateLevel.G2,
    SeedStage.PROBATIONARY: GateLevel.G3,
    SeedStage.FOSSILIZED: GateLevel.G5,
}


class QualityGates:
    """Evaluates the gate guarding a transition into ``target`` for a seed ``state``.

    ``state`` is a :class:`~esper.kasmina.state.SeedState`. Transitions without a gate (culls,
    embargo, reset) always pass.
    """

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()

    @staticmethod
    def gate_for(target: SeedStage) -> GateLevel | None:
        """The gate guarding a transition into ``target``; None when no gate does."""
        return _GATE_FOR_TARGET.get(SeedStage(target))

    def check_gate(self, state, target: SeedStage) -> GateResult:
        """Evaluate the gate guarding a transition of ``state`` into ``target``.

        Args:
            state: the seed's :class:`~esper.kasmina.state.SeedState`.
            target: the stage the seed would enter.

        Returns:
            The gate's result; a passing G0-level result for ungated targets.
        """
        target = SeedStage(target)
        level = _GATE_FOR_TARGET.get(target)
        if level is None:
            return GateResult(GateLevel.G0, True, message=f"no gate guards {target.name}")
        checks = getattr(self, f"_checks_{level.name.lower()}")(state)
        passed = tuple(name for name, ok, _ in checks if ok)
        failed = tuple(f"{name}: {why}" for name, ok, why in checks if not ok)
        ok = not failed
        verdict = "passed" if ok else "failed (" + "; ".join(failed) + ")"
        return GateResult(
            gate=level,
            passed=ok,
            score=_score(level, state),
            checks_passed=passed,
            checks_failed=failed,
            message=f"{level.name} -> {target.name} {verdict}",
            unit=self.config.unit,
        )

    # Each check is (name, ok, reason-if-failed).

    def _checks_g0(self, state):
        return [
            ("seed_id_present", bool(state.seed_id), "seed id is empty"),
            ("blueprint_id_present", bool(state.blueprint_id), "blueprint id is empty"),
            ("shape_probe", bool(state.shape_probe_passed), "seed changed the feature shape"),
        ]

    def _checks_g1(self, state):
        return [
            (
                "germinated",
                state.stage == SeedStage.GERMINATED,
                f"stage is {SeedStage(state.stage).name}, not GERMINATED",
            )
        ]

    @staticmethod
    def _incubation_check(state, floor: float):
        gain = state.metrics.incubation_gain
        if gain is None and floor == -math.inf:
            return ("incubation_gain", True, "")  # a floor of -inf asks for nothing
        if gain is None:
            return ("incubation_gain", False, "not measured (no epoch of shadow incubation)")
        return ("incubation_gain", gain > floor, f"{gain:.4f} <= {floor}")

    def _checks_g2(self, state):
        cfg, m = self.config, state.metrics
        return [
            self._incubation_check(state, cfg.g2_min_incubation_gain),
            (
                "training_epochs",
                m.epochs_in_current_stage >= cfg.g2_min_training_epochs,
                f"{m.epochs_in_current_stage} < {cfg.g2_min_training_epochs} epochs",
            ),
            (
                "gradient_ratio",
                m.gradient_ratio >= cfg.g2_min_gradient_ratio,
                f"{m.gradient_ratio:.4f} < {cfg.g2_min_gradient_ratio}",
            ),
            (
                "isolation",
                m.isolation_violations <= cfg.max_isolation_violations,
                f"{m.isolation_violations} violations > {cfg.max_isolation_violations} allowed",
            ),
            ("healthy", m.healthy, "seed produced non-finite values"),
        ]

    def _checks_g3(self, state):
        cfg, m = self.config, state.metrics
        checks = [
            (
                "blending_epochs",
                m.epochs_in_current_stage >= cfg.g3_min_blending_epochs,
                f"{m.epochs_in_current_stage} < {cfg.g3_min_blending_epochs} epochs",
            ),
            ("alpha", state.alpha >= cfg.g3_min_alpha, f"{state.alpha:.3f} < {cfg.g3_min_alpha}"),
        ]
        if cfg.g3_require_ramp_complete:
            checks.append(
                (
                    "ramp_complete",
                    state.blend_step >= state.blending_steps,
                    f"ramp at step {state.blend_step} of {state.blending_steps}",
                )
            )
        return checks

    def _checks_g5(self, state):
        cfg, m = self.config, state.metrics
        c = m.counterfactual_contribution
        known = c is not None
        before, now = m.quality_before_blending, m.current_quality
        drop = None if before is None or now is None else before - now
        unit = cfg.unit
        # In loss units the recorded quality is the negative loss: a drop is a rise in loss.
        worse = "accuracy fell" if unit == "points" else "loss rose"
        digits = 2 if unit == "points" else 4
        return [
            self._incubation_check(state, cfg.g5_min_incubation_gain),
            (
                "contribution",
                known and c >= cfg.g5_min_contribution,
                f"{c:.{digits}f} < {cfg.g5_min_contribution} {unit}"
                if known
                else "not measured yet",
            ),
            (
                "accuracy_held",
                drop is None or drop <= cfg.g5_max_accuracy_drop,
                f"validation {worse} {drop:.{digits}f} {unit} since blending began "
                f"(> {cfg.g5_max_accuracy_drop})"
                if drop is not None
                else "",
            ),
            (
                "probationary",
                state.stage == SeedStage.PROBATIONARY,
                f"stage is {SeedStage(state.stage).name}, not PROBATIONARY",
            ),
            ("healthy", m.healthy, "seed produced non-finite values"),
        ]
