"""Tamiyo's heuristic controller: rules from the reference design, over every slot."""

from __future__ import annotations

import random
from dataclasses import dataclass

from esper.kasmina.blueprints import list_blueprints
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_BLENDING_STEPS,
    DEFAULT_BLUEPRINT_CULL_PENALTY,
    DEFAULT_CULL_AFTER_EPOCHS,
    DEFAULT_CULL_IF_ACCURACY_DROPS,
    DEFAULT_CULL_IF_LOSS_RISES,
    DEFAULT_CULL_STALLED_AFTER_EPOCHS,
    DEFAULT_G2_MIN_TRAINING_EPOCHS,
    DEFAULT_GROWTH_PATIENCE,
    DEFAULT_MIN_EPOCHS_BEFORE_GERMINATION,
    DEFAULT_PLATEAU_EPOCHS,
    DEFAULT_RELATIVE_GROWTH_SHARE,
    DEFAULT_TIMING,
    QUALITY_UNITS,
    Action,
    Controller,
    Decision,
    Outcome,
    SeedStage,
    TrainingSignals,
    get_topology,
)

# The blueprints the heuristic chooses from unless told otherwise, tried in this order when
# nothing has been learned yet: cheap, proven residual modules.
_PREFERENCE = {
    "cnn": ("conv_light", "depthwise", "attention", "conv_heavy", "norm"),
    "transformer": ("mlp", "attention", "lora", "norm"),
    "mlp": ("mlp", "lora", "norm"),
}
_INCUBATING = (SeedStage.GERMINATED, SeedStage.TRAINING)
#: A seed whose fate (fossilized or culled) is not known yet.
_UNDECIDED = (SeedStage.BLENDING, SeedStage.PROBATIONARY)
SLOT_ORDERS = ("auto", "deepest_first", "shallowest_first")
#: When to grow: on an accuracy plateau (the reference's rule), or once the validation loss's
#: learning curve has flattened relative to itself and a seed can still finish its lifecycle.
TIMINGS = ("plateau", "relative")
#: Epochs a seed needs from germination to a fossilization decision with the default gates: G2's
#: incubation, the alpha ramp, one epoch of probation.
_LIFECYCLE_EPOCHS = DEFAULT_G2_MIN_TRAINING_EPOCHS + DEFAULT_BLENDING_STEPS + 1


@dataclass(frozen=True)
class HeuristicConfig:
    min_epochs_before_germination: int = DEFAULT_MIN_EPOCHS_BEFORE_GERMINATION
    plateau_epochs: int = DEFAULT_PLATEAU_EPOCHS
    cull_after_epochs: int = DEFAULT_CULL_AFTER_EPOCHS
    cull_if_accuracy_drops: float = DEFAULT_CULL_IF_ACCURACY_DROPS
    #: Cull a seed that has incubated this long without passing G2 (0 disables): a seed whose
    #: incubation gain never turns positive would otherwise hold its slot.
    cull_stalled_after_epochs: int = DEFAULT_CULL_STALLED_AFTER_EPOCHS
    blueprint_cull_penalty: float = DEFAULT_BLUEPRINT_CULL_PENALTY
    #: Germinate no more once this many seeds in a row were culled (0: keep growing). A host
    #: whose seeds keep failing has nothing for them to add; each further trial is compute
    #: spent for nothing. A fossilized seed starts the count again. With patience set, seeds
    #: are also tried one at a time: the next germinates once the last is fossilized or culled
    #: (without it, the next grows while the last blends).
    growth_patience: int = DEFAULT_GROWTH_PATIENCE
    blend_algorithm: str = DEFAULT_BLEND_ALGORITHM
    #: Blueprints the controller may choose; None means the measured default set of the topology
    #: (every non-noop blueprint for a topology without one).
    blueprints: tuple[str, ...] | None = None
    #: Which dormant slot grows first. ``auto``: deepest first for transformers (on pyref one MLP
    #: seed after the last block lowered validation loss 1.456 -> 1.400, while seeds after the
    #: embedding bought under 0.01), shallowest first for CNNs (on digits early seeds cost ~150
    #: parameters and were fossilized; a late conv seed cost ~2,300 and was culled).
    slot_order: str = "auto"
    #: ``relative`` (default): germinate once the last few epochs lowered the validation loss by
    #: less than ``relative_share`` of its fall since the first epoch (or on a plateau), and never
    #: so late that a seed cannot finish its lifecycle before the run ends. ``plateau``: germinate
    #: after ``plateau_epochs`` epochs without an accuracy gain, once the host has stabilized.
    timing: str = DEFAULT_TIMING
    relative_share: float = DEFAULT_RELATIVE_GROWTH_SHARE
    #: What the trainer's qualities are measured in (the model's ``GateConfig.unit``):
    #: ``cull_if_accuracy_drops`` and the reasons given are in it.
    unit: str = "points"

    @classmethod
    def for_loss(cls, **overrides) -> HeuristicConfig:
        """For a model whose gates measure loss (``GateConfig.for_loss()``): the cull threshold
        on the loss's scale."""
        values = {"unit": "loss", "cull_if_accuracy_drops": DEFAULT_CULL_IF_LOSS_RISES}
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        if self.unit not in QUALITY_UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; valid: {', '.join(QUALITY_UNITS)}")
        if self.timing not in TIMINGS:
            raise ValueError(f"unknown timing {self.timing!r}; valid: {', '.join(TIMINGS)}")
        if not 0.0 < self.relative_share < 1.0:
            raise ValueError(f"relative_share must be in (0, 1), got {self.relative_share}")
        if self.growth_patience < 0:
            raise ValueError(
                f"growth_patience must be >= 0 (0: never stop growing), got {self.growth_patience}"
            )
        if self.slot_order not in SLOT_ORDERS:
            raise ValueError(
                f"unknown slot_order {self.slot_order!r}; valid: {', '.join(SLOT_ORDERS)}"
            )


class HeuristicController(Controller):
    """Decides WAIT / GERMINATE / FOSSILIZE / CULL from :class:`TrainingSignals`.

    Priorities each epoch: settle probation (fossilize a seed whose incubation gain and
    counterfactual contribution are both positive, cull any other), cull a seed that has
    lingered in a stage while accuracy fell, then germinate once the host has stabilized and
    plateaued: into a dormant slot, else stacked after a fossilized seed. One seed incubates at
    a time, so each germination answers one plateau. With ``patience`` N, a seed is tried only
    once the last one's fate is known, and growth stops once N seeds in a row were culled.
    Deterministic for a given ``seed`` (ties between blueprints are broken by a seeded RNG).
    """

    #: Counterfactuals are read in PROBATIONARY only: the trainer skips those of the BLENDING
    #: epochs before the last (see :class:`~esper.leyline.controller.Controller`).
    reads_blending_counterfactuals = False

    def __init__(self, topology: str, config: HeuristicConfig | None = None, seed: int = 0):
        self.topology = topology
        self.config = config or HeuristicConfig()
        valid = list_blueprints(topology)
        # By default the measured set (_PREFERENCE): a newly registered blueprint joins the
        # heuristic's choices only when named, so adding one does not change existing runs.
        default = _PREFERENCE.get(topology) or tuple(b for b in valid if b != "noop")
        chosen = self.config.blueprints or tuple(b for b in default if b in valid)
        unknown = [b for b in chosen if b not in valid]
        if unknown:
            raise ValueError(
                f"unknown blueprint(s) {', '.join(unknown)} for topology {topology!r}; "
                f"valid: {', '.join(valid)}"
            )
        preference = _PREFERENCE.get(topology, ())
        self.blueprints = tuple(
            sorted(
                chosen,
                key=lambda b: (b not in preference, preference.index(b) if b in preference else 0),
            )
        )
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget what earlier episodes taught (penalties, uses) and reseed the tie-breaker."""
        self.penalties = {b: 0.0 for b in self.blueprints}
        self.uses = {b: 0 for b in self.blueprints}
        #: Seeds culled since the last fossilization (or the start): what ``patience`` counts.
        self.culls_in_a_row = 0
        self._rng = random.Random(self.seed)

    def state_dict(self) -> dict:
        """Blueprint penalties and uses and the tie-breaker's RNG state (for resume)."""
        return {
            "penalties": dict(self.penalties),
            "uses": dict(self.uses),
            "culls_in_a_row": self.culls_in_a_row,
            "rng": self._rng.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.penalties = {b: float(state["penalties"][b]) for b in self.blueprints}
        self.uses = {b: int(state["uses"][b]) for b in self.blueprints}
        self.culls_in_a_row = int(state["culls_in_a_row"])
        self._rng.setstate(state["rng"])

    def decide(self, signals: TrainingSignals) -> Decision:
        """This epoch's decision: settle probation, cull a failing seed, else grow or wait."""
        decision = self._settle_probation(signals)
        if decision is None:
            decision = self._cull_failing(signals)
        if decision is not None:
            return decision
        waiting, why_now = self._growth_wait(signals)
        if waiting:
            return Decision(Action.WAIT, reason=waiting)
        return self._germinate(signals, why_now)

    def _settle_probation(self, signals: TrainingSignals) -> Decision | None:
        """Fossilize or cull the first seed in PROBATIONARY whose contribution is measured."""
        unit = self.config.unit
        for report in signals.slots:
            m = report.metrics
            if report.stage == SeedStage.PROBATIONARY and m.counterfactual_contribution is not None:
                c, gain = m.counterfactual_contribution, m.incubation_gain
                if gain is not None and gain <= 0:
                    # What the seed added before the host adapted to it; the counterfactual alone
                    # would count the host's dependency as value.
                    return Decision(
                        Action.CULL,
                        slot=report.slot,
                        reason=f"incubation gain {gain:+.4f} is not positive",
                    )
                if c > 0:
                    return Decision(
                        Action.FOSSILIZE, slot=report.slot, reason=f"contribution {c:+.2f} {unit}"
                    )
                return Decision(
                    Action.CULL,
                    slot=report.slot,
                    reason=f"contribution {c:+.2f} {unit} is not positive",
                )
        return None

    def _cull_failing(self, signals: TrainingSignals) -> Decision | None:
        """Cull a seed that lingered in a stage while quality fell, or stalled in TRAINING."""
        unit = self.config.unit
        quality = "accuracy" if unit == "points" else "quality (negative loss)"
        for report in signals.slots:
            m = report.metrics
            if report.stage in (SeedStage.TRAINING, SeedStage.BLENDING) and (
                m.epochs_in_current_stage >= self.config.cull_after_epochs
                and m.improvement_since_stage_start < -self.config.cull_if_accuracy_drops
            ):
                return Decision(
                    Action.CULL,
                    slot=report.slot,
                    reason=f"{m.epochs_in_current_stage} epochs in {report.stage.name}, "
                    f"{quality} {m.improvement_since_stage_start:+.2f} {unit}",
                )
        stalled = self.config.cull_stalled_after_epochs
        for report in signals.slots:
            epochs = report.metrics.epochs_in_current_stage
            if stalled and report.stage == SeedStage.TRAINING and epochs >= stalled:
                return Decision(
                    Action.CULL,
                    slot=report.slot,
                    reason=f"stalled: {epochs} epochs in TRAINING without passing G2",
                )
        return None

    def _growth_wait(self, signals: TrainingSignals) -> tuple[str, str]:
        """(why not to grow now, why to grow now): one of them is empty, as in :meth:`_timing`."""
        if any(r.stage in _INCUBATING for r in signals.slots):
            return "a seed is incubating", ""
        if signals.seeds_left == 0:
            return "the run's seed budget (max_seeds) is spent", ""
        patience = self.config.growth_patience
        if patience and self.culls_in_a_row >= patience:
            return (
                f"growth stopped: the last {self.culls_in_a_row} seeds were culled "
                f"(patience {patience})"
            ), ""
        if patience and any(r.stage in _UNDECIDED for r in signals.slots):
            # Counting culls means knowing each seed's fate before trying the next: without
            # this wait a new seed grows while the last one blends, and by the time the count
            # reaches the limit one or two more trials are already paid for.
            return f"patience {patience}: waiting for the last seed's fate", ""
        if signals.epoch < self.config.min_epochs_before_germination:
            return "too early to grow", ""
        return self._timing(signals)

    def _germinate(self, signals: TrainingSignals, why_now: str) -> Decision:
        """Germinate into the first free slot (WAIT when there is none)."""
        # signals.slots is in forward order (shallow to deep). Empty slots first; then a slot
        # whose seed fossilized takes a new one stacked after it.
        order = self.config.slot_order
        if order == "auto":
            order = get_topology(self.topology).growth_order
        free = []
        for stage in (SeedStage.DORMANT, SeedStage.FOSSILIZED):
            names = [r.slot for r in signals.slots if r.stage == stage]
            free.extend(reversed(names) if order == "deepest_first" else names)
        if not free:
            return Decision(Action.WAIT, reason="no dormant or fossilized slot")
        blueprint = self._choose_blueprint()
        return Decision(
            Action.GERMINATE,
            slot=free[0],
            blueprint=blueprint,
            blend_algorithm=self.config.blend_algorithm,
            reason=why_now,
        )

    def _timing(self, signals: TrainingSignals) -> tuple[str, str]:
        """(why it is not yet, or no longer, time to grow; why it is): one of them is empty."""
        plateau = f"plateau for {signals.plateau_epochs} epochs"
        plateaued = signals.plateau_epochs >= self.config.plateau_epochs
        if self.config.timing == "plateau":
            if not signals.host_stabilized:
                return "host not stabilized", ""
            return ("", plateau) if plateaued else (f"plateau {signals.plateau_epochs} epochs", "")
        if signals.total_epochs and signals.total_epochs - signals.epoch < _LIFECYCLE_EPOCHS:
            return "too late: a seed could not finish its lifecycle before the run ends", ""
        share = signals.recent_loss_share
        if share is not None and share < self.config.relative_share:
            return "", f"learning curve flattened: recent loss fall {share:.0%} of the total"
        if plateaued:
            return "", plateau
        return ("still learning fast" if share is not None else "learning curve not known yet"), ""

    def _choose_blueprint(self) -> str:
        # Lowest penalty wins; among equals prefer the least used, then the preference order,
        # with a seeded coin only between exact ties.
        def key(b: str) -> tuple:
            return (self.penalties[b], self.uses[b], self.blueprints.index(b), self._rng.random())

        return min(self.blueprints, key=key)

    def on_outcome(self, decision: Decision, outcome: Outcome) -> None:
        if decision.action == Action.GERMINATE and outcome.applied and decision.blueprint:
            self.uses[decision.blueprint] += 1
        if decision.action == Action.FOSSILIZE and outcome.applied:
            self.culls_in_a_row = 0

    def on_cull(self, blueprint: str | None) -> None:
        """Penalize a blueprint whose seed was culled (by the controller or the lifecycle)."""
        self.culls_in_a_row += 1
        if blueprint in self.penalties:
            self.penalties[blueprint] += self.config.blueprint_cull_penalty
