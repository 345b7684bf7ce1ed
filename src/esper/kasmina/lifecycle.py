"""The seed lifecycle of a slot: its verbs, its transitions, and the events they announce.

``SlotLifecycle`` is a part of :class:`~esper.kasmina.slot.SeedSlot` (a mixin): ``germinate``,
``advance_stage``, ``step_epoch``, ``cull``, ``fossilize`` and the record verbs live here, and
``_enter`` is the single place where a stage changes. Every change is announced where it
happens, as one typed event (``esper.leyline.lifecycle``), to the slot's own listeners and then
to its owner model's:

* ``StageChanged`` from ``_enter``, carrying the gate result that allowed the step (None for
  culls, embargo and reset) and the reason in words;
* ``GateEvaluated`` for every gate check, passed or failed (G0 in ``germinate``, G1-G5 wherever
  ``advance_stage``, ``step_epoch`` or ``fossilize`` checks one);
* ``StageChanged(forced=True)`` for a stage assigned directly to ``slot.state.stage``, announced
  by the next lifecycle verb (or telemetry capture) before anything else it does.

Nothing here runs in the forward, so listeners never meet ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from numbers import Real

import torch
from torch import nn

from esper.kasmina.blending import BlendAlgorithm, build_blend
from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.computed_init import fit_output_layer
from esper.kasmina.distributed import all_ranks_agree, sum_over_ranks, world_size
from esper.kasmina.errors import GateFailedError, IllegalTransitionError, SlotOccupiedError
from esper.kasmina.events import Listeners
from esper.kasmina.gates import QualityGates
from esper.kasmina.state import SeedState
from esper.kasmina.tensors import all_finite
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    VALID_TRANSITIONS,
    GateEvaluated,
    GateLevel,
    GateResult,
    LifecycleEvent,
    LifecycleListener,
    SeedStage,
    StageChanged,
    is_active_stage,
    is_valid_transition,
)

#: The reason a StageChanged gives for a forced (directly assigned) stage.
FORCED_REASON = "stage assigned directly"


@dataclass
class SlotStepReport:
    """What one ``step_epoch`` did to a slot: stage changes and the gates evaluated.

    Read off the events the step emitted; listeners get the same facts as they happen.
    """

    slot: str
    seed_id: str | None
    transitions: list[tuple[SeedStage, SeedStage]] = field(default_factory=list)
    gate_results: list[GateResult] = field(default_factory=list)
    #: Why the lifecycle culled the seed in this step, if it did.
    cull_reason: str | None = None


def _points(value: float | None) -> str:
    return "unknown" if value is None else f"{value:+.2f} points"


def _finite_number(slot: str, label: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"slot {slot!r}: {label} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"slot {slot!r}: {label} must be finite, got {value}")
    return value


class SlotLifecycle:
    """The lifecycle half of a :class:`~esper.kasmina.slot.SeedSlot`.

    Relies on the slot for: ``name``, ``width``, ``topology``, ``gates``, ``blending_steps``,
    ``probation_epochs``, ``embargo_epochs``, ``seed``, ``blend``, ``state``,
    ``isolate_gradients``, ``_keeps_isolation_while_blending``, ``_probe_shape_dims``,
    ``_alpha_forced``, ``_leak_sq``, ``_gain_sum``, ``_gain_batches``, ``_listeners``,
    ``_recorder``, ``_owner``, ``set_alpha``, ``_device``, ``_build_seed``,
    ``_tensors_shared_with_host``, ``_flush_owner_telemetry``.
    """

    name: str
    width: int
    topology: str
    gates: QualityGates
    blending_steps: int
    probation_epochs: int
    embargo_epochs: int
    seed: nn.Module | None
    blend: BlendAlgorithm | None
    state: SeedState
    isolate_gradients: bool
    _listeners: Listeners
    _recorder: list[LifecycleEvent] | None

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: LifecycleListener) -> LifecycleListener:
        """Call ``listener(event)`` for every lifecycle event of this slot.

        A slot's own listeners hear its events before its owner model's listeners do. They are
        not saved in ``state_dict`` and a copy of the slot starts without them.

        Args:
            listener: any callable taking one event.

        Returns:
            ``listener``, so this works as a decorator.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        return self._listeners.subscribe(listener)

    def unsubscribe(self, listener: LifecycleListener) -> None:
        """Stop calling ``listener``.

        Raises:
            ValueError: ``listener`` is not subscribed to this slot.
        """
        self._listeners.unsubscribe(listener)

    def _emit(self, event: LifecycleEvent) -> None:
        if self._recorder is not None:
            self._recorder.append(event)
        self._listeners.emit(event)
        owner_listeners = getattr(self._owner[0], "_listeners", None)
        if isinstance(owner_listeners, Listeners):
            owner_listeners.emit(event)

    @contextlib.contextmanager
    def _recording(self) -> Iterator[list[LifecycleEvent]]:
        events: list[LifecycleEvent] = []
        self._recorder = events
        try:
            yield events
        finally:
            self._recorder = None

    def _announce_forced(self) -> None:
        """Announce stages assigned directly to ``state.stage`` since the last announcement."""
        state = self.state
        for index in state._unannounced_forced():
            self._emit(
                StageChanged(
                    slot=self.name,
                    seed_id=state.seed_id,
                    from_stage=state.stage_history[index - 1],
                    to_stage=state.stage_history[index],
                    gate=None,
                    reason=FORCED_REASON,
                    forced=True,
                )
            )

    def _agreed(self, result: GateResult) -> GateResult:
        """``result`` as every rank agrees on it: refused wherever any rank refused."""
        if all_ranks_agree(result.passed) or not result.passed:
            return result
        failed = (*result.checks_failed, "consensus: another rank refused")
        return replace(result, passed=False, checks_failed=failed)

    # ------------------------------------------------------------------ verbs

    def germinate(
        self,
        blueprint_id: str,
        seed_id: str,
        *,
        blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM,
    ) -> GateResult:
        """Grow a seed from ``blueprint_id`` into this (DORMANT) slot; it enters GERMINATED.

        Everything is validated before the slot changes: on any error the slot is exactly as
        it was. The G0 check is announced as a ``GateEvaluated`` whether it passes or not.

        Args:
            blueprint_id: a blueprint registered for this slot's topology.
            seed_id: a non-empty id for the new seed.
            blend_algorithm_id: the alpha schedule for BLENDING.

        Returns:
            The passing G0 result.

        Raises:
            SlotOccupiedError: the slot is neither DORMANT nor FOSSILIZED.
            ValueError: unknown blueprint or blend algorithm, empty id, a seed that changes the
                feature shape or produces non-finite values (G0 fails), or one that shares a
                parameter or buffer with the host.
        """
        self._announce_forced()
        stacking = self.state.stage == SeedStage.FOSSILIZED and self.seed is not None
        if self.state.stage != SeedStage.DORMANT and not stacking:
            raise SlotOccupiedError(
                f"slot {self.name!r} is {self.state.stage.name}, not DORMANT or FOSSILIZED; cull "
                f"the seed {self.state.seed_id!r} (and wait out the embargo) before germinating "
                "again"
            )
        if not isinstance(seed_id, str) or not seed_id:
            raise ValueError(f"slot {self.name!r}: seed_id must be a non-empty string")
        seed = self._build_seed(blueprint_id)
        start = "zero"
        if get_blueprint(self.topology, blueprint_id).copies_target:
            self._copy_target_into(seed, blueprint_id)
            start = "copy"
        memory = self.init_memory
        # A collective under torch.distributed: every rank germinates the same seed here.
        if memory is not None and fit_output_layer(seed, memory.samples(), self.init_scale):
            start = "computed"
        blend = build_blend(blend_algorithm_id, self.width, self.topology)
        blend = blend.to(self._device(), self.alpha_tensor.dtype)
        if self._tensors_shared_with_host(seed):
            raise ValueError(
                f"slot {self.name!r}: blueprint {blueprint_id!r} shares a parameter or buffer "
                "with the host; seeds must own all their tensors"
            )
        candidate = SeedState(
            slot=self.name,
            seed_id=seed_id,
            blueprint_id=blueprint_id,
            blend_algorithm_id=blend_algorithm_id,
            blending_steps=self.blending_steps,
            shape_probe_passed=self._probe_shape(seed),
        )
        local = self.gates.check_gate(candidate, SeedStage.GERMINATED)
        result = self._agreed(local)
        self._emit(GateEvaluated(self.name, seed_id, SeedStage.GERMINATED, result))
        if not result.passed:
            raise ValueError(
                f"slot {self.name!r}: blueprint {blueprint_id!r} failed G0: "
                + ("; ".join(local.checks_failed) or "another rank refused")
            )
        # Commit. A fossilized seed stays where it is in the forward, now as the last fossil.
        if stacking:
            self.fossils.append(self.seed)
            self.fossil_seeds.append((self.state.seed_id, self.state.blueprint_id))
        self.seed, self.blend, self.state = seed, blend, candidate
        self.seed_start = start
        self.isolate_gradients = True
        self._alpha_forced = False
        self._leak_sq.zero_()
        self._reset_incubation_gain()
        if memory is not None:
            memory.clear()  # features of the model before this seed
        self.set_alpha(0.0)
        seed.train(self.training)
        blend.train(self.training)
        self._enter(SeedStage.GERMINATED, gate=result, reason="germinated")
        return result

    def _probe_shape(self, seed: nn.Module) -> bool:
        shape = self._probe_shape_dims
        gen = torch.Generator(device="cpu").manual_seed(0)
        probe = torch.randn(shape, generator=gen).to(self._device(), self.alpha_tensor.dtype)
        was_training = seed.training
        seed.eval()
        try:
            with torch.no_grad():
                out = seed(probe)
        except Exception:  # noqa: BLE001 - any failure on the probe means the shape check failed
            return False
        finally:
            seed.train(was_training)
        return tuple(out.shape) == shape and bool(torch.isfinite(out).all())

    def advance_stage(self, target: SeedStage) -> GateResult:
        """Move to ``target`` if the transition is legal and its gate passes.

        Does exactly what ``step_epoch`` does on the same transition (blending set-up included).
        A refused gate leaves the slot unchanged and returns the failed result. A gated target
        announces a ``GateEvaluated``; an actual move, a ``StageChanged``.

        Args:
            target: the stage to enter (a SeedStage or its int value).

        Returns:
            The gate's result (a passing G0-level result for ungated targets; a failing one for
            RESETTING while the embargo lasts).

        Raises:
            IllegalTransitionError: ``target`` is not reachable from the current stage.
        """
        target = SeedStage(target)
        self._announce_forced()
        self._require_transition(target)
        if target == SeedStage.CULLED:
            self.cull()
            return GateResult(GateLevel.G0, True, message=f"slot {self.name} culled")
        if target == SeedStage.RESETTING and self.state.embargo_remaining > 0:
            # The embargo is a cooldown, not a gate: only step_epoch counts it down.
            left = self.state.embargo_remaining
            return GateResult(
                GateLevel.G0,
                False,
                checks_failed=(f"embargo: {left} epoch(s) remaining",),
                message=f"slot {self.name} is embargoed for {left} more epoch(s)",
            )
        gated = self.gates.gate_for(target) is not None
        result = self._agreed(self.gates.check_gate(self.state, target))
        if gated:
            self._emit(GateEvaluated(self.name, self.state.seed_id, target, result))
        if result.passed:
            self._enter(target, gate=result if gated else None)
        return result

    def _require_transition(self, target: SeedStage) -> None:
        stage = self.state.stage
        if not is_valid_transition(stage, target):
            legal = ", ".join(s.name for s in VALID_TRANSITIONS[stage]) or "none (terminal)"
            raise IllegalTransitionError(
                f"slot {self.name!r}: illegal transition {stage.name} -> {target.name}; "
                f"legal from {stage.name}: {legal}"
            )

    def _enter(
        self, target: SeedStage, *, gate: GateResult | None = None, reason: str = ""
    ) -> None:
        """Apply a transition and its set-up, and announce it. The single place where stages
        change (the lifecycle's own changes: never marked forced)."""
        state = self.state
        source, seed_id = state.stage, state.seed_id
        state._move_to(target)
        m = state.metrics
        m.epochs_in_current_stage = 0
        m.quality_at_stage_start = m.current_quality
        if target == SeedStage.TRAINING:
            self.isolate_gradients = True
        elif target == SeedStage.BLENDING:
            m.quality_before_blending = m.current_quality
            self._reset_incubation_gain()  # what was measured is frozen in the metrics
            self.isolate_gradients = self._keeps_isolation_while_blending
            state.blend_step = 1
            self.set_alpha(self.blend.schedule(1, state.blending_steps) if self.blend else 1.0)
        elif target == SeedStage.PROBATIONARY:
            state.blend_step = state.blending_steps
            self.set_alpha(1.0)
        elif target == SeedStage.FOSSILIZED:
            self.isolate_gradients = False
            self.set_alpha(1.0)
            self.blend = None  # the seed's output is used directly from now on
        elif target == SeedStage.EMBARGOED:
            state.embargo_remaining = self.embargo_epochs
        elif target == SeedStage.DORMANT:  # RESETTING -> DORMANT: an empty slot, as step_epoch
            self.state = SeedState(
                slot=self.name,
                previous_stage=SeedStage.RESETTING,
                blending_steps=self.blending_steps,
            )
        if target != source:
            if not reason:
                reason = gate.message if gate is not None else self._default_reason(target)
            self._emit(StageChanged(self.name, seed_id, source, target, gate, reason))

    def _default_reason(self, target: SeedStage) -> str:
        return {
            SeedStage.CULLED: "culled",
            SeedStage.EMBARGOED: f"embargoed for {self.embargo_epochs} epoch(s) after a cull",
            SeedStage.RESETTING: "embargo over",
            SeedStage.DORMANT: "slot reset; ready to germinate",
        }.get(target, f"entered {target.name}")

    def cull(self, *, reason: str = "") -> None:
        """Remove the seed: the host's output is restored bit for bit; the slot enters CULLED.

        Args:
            reason: why, in words; carried by the ``StageChanged`` (``"culled"`` when empty).

        Raises:
            IllegalTransitionError: nothing to cull, or the seed is FOSSILIZED.
            TypeError: ``reason`` is not a str.
        """
        if not isinstance(reason, str):
            raise TypeError(f"slot {self.name!r}: cull reason must be a str, got {reason!r}")
        self._announce_forced()
        self._require_transition(SeedStage.CULLED)
        self.seed = None
        self.blend = None
        self.isolate_gradients = True
        self._alpha_forced = False
        self._leak_sq.zero_()
        self._reset_incubation_gain()
        self.set_alpha(0.0)
        self._enter(SeedStage.CULLED, reason=reason)

    def fossilize(self) -> GateResult:
        """Make the seed a permanent part of the host (through G5).

        Returns:
            The passing G5 result.

        Raises:
            IllegalTransitionError: the seed is not PROBATIONARY.
            GateFailedError: G5 refused (announced as a failed ``GateEvaluated`` first); the
                message lists the failed checks.
        """
        result = self.advance_stage(SeedStage.FOSSILIZED)
        if not result.passed:
            raise GateFailedError(
                f"slot {self.name!r}: cannot fossilize seed {self.state.seed_id!r}: "
                + "; ".join(result.checks_failed),
                result,
            )
        return result

    def may_leave_blending_this_epoch(self) -> bool:
        """Whether this epoch's :meth:`step_epoch` may move the seed from BLENDING to
        PROBATIONARY: G3 passes on the state the step will leave (one more ramp step and epoch
        in the stage). The counterfactual measured before that step is the one PROBATIONARY
        starts with; those of earlier BLENDING epochs are overwritten unread unless a
        controller reads them."""
        state = self.state
        if self.seed is None or state.stage != SeedStage.BLENDING:
            return False
        after = copy.copy(state)
        after.metrics = copy.copy(state.metrics)
        after.metrics.epochs_in_current_stage += 1
        after.blend_step, after.alpha = self._next_ramp_step()
        return self.gates.check_gate(after, SeedStage.PROBATIONARY).passed

    def _next_ramp_step(self) -> tuple[int, float]:
        """The blend step and the alpha a BLENDING epoch's :meth:`step_epoch` moves to (and
        :meth:`may_leave_blending_this_epoch` predicts)."""
        state = self.state
        step = min(state.blend_step + 1, state.blending_steps)
        return step, self.blend.schedule(step, state.blending_steps)

    def step_epoch(self) -> SlotStepReport:
        """Advance what is mechanical at the end of an epoch; see docs/design.md, "Gates".

        Returns:
            What this step did, read off the events it emitted (a forced stage announced at the
            start is not part of the step).
        """
        self._flush_owner_telemetry()  # the gates read what a pending capture measured
        self._announce_forced()
        seed_id = self.state.seed_id
        with self._recording() as events:
            self._step_epoch()
        changes = [e for e in events if isinstance(e, StageChanged)]
        culls = [e.reason for e in changes if e.to_stage == SeedStage.CULLED]
        return SlotStepReport(
            slot=self.name,
            seed_id=seed_id,
            transitions=[(e.from_stage, e.to_stage) for e in changes],
            gate_results=[e.result for e in events if isinstance(e, GateEvaluated)],
            cull_reason=culls[-1] if culls else None,
        )

    def _step_epoch(self) -> None:
        state, m = self.state, self.state.metrics
        start = state.stage
        if start == SeedStage.TRAINING and self._gain_batches:
            # The epoch's one read of the shadow pass's gains, before G2 looks at them. Under
            # torch.distributed each rank saw its own batches (as many as every other rank):
            # the mean is over all of them, the same on every rank.
            total = sum_over_ranks(self._gain_sum)
            gain = float(total) / (self._gain_batches * world_size())
            self._reset_incubation_gain()
            if math.isfinite(gain):
                m.incubation_gain = gain
            else:
                m.healthy = False
        if is_active_stage(start):
            m.epochs_total += 1
            m.epochs_in_current_stage += 1
            if self.seed is not None and not all_finite(self.seed.parameters()):
                m.healthy = False

        if start == SeedStage.GERMINATED:
            self.advance_stage(SeedStage.TRAINING)
        elif start in (SeedStage.TRAINING, SeedStage.BLENDING) and not all_ranks_agree(m.healthy):
            # Unhealthy on any rank: every rank culls (and skips the gate's collective).
            self.cull(reason="seed produced non-finite values")
        elif start == SeedStage.TRAINING:
            self.advance_stage(SeedStage.BLENDING)
        elif start == SeedStage.BLENDING:
            state.blend_step, alpha = self._next_ramp_step()
            self.set_alpha(alpha)
            self.advance_stage(SeedStage.PROBATIONARY)
        elif start == SeedStage.PROBATIONARY:
            contribution = m.counterfactual_contribution
            timed_out = m.epochs_in_current_stage >= self.probation_epochs
            keep = m.healthy and not timed_out and (contribution is None or contribution > 0)
            if not all_ranks_agree(keep):  # one architecture on every rank
                self.cull(
                    reason="seed produced non-finite values"
                    if not m.healthy
                    else f"probation ended after {m.epochs_in_current_stage} epochs without "
                    f"fossilization (contribution {_points(contribution)})"
                    if timed_out
                    else f"contribution {_points(contribution)} is not positive"
                )
        elif start == SeedStage.CULLED:
            self._enter(SeedStage.EMBARGOED)
        elif start == SeedStage.EMBARGOED:
            # max(): a state loaded or forced into EMBARGOED may already be at 0.
            state.embargo_remaining = max(0, state.embargo_remaining - 1)
            if state.embargo_remaining <= 0:
                self._enter(SeedStage.RESETTING)
        elif start == SeedStage.RESETTING:
            self._enter(SeedStage.DORMANT)

    # ------------------------------------------------------------------ records

    def record_validation(self, quality: float) -> bool:
        """Record this epoch's validation quality into the seed's metrics.

        Only a slot that holds a seed (GERMINATED to FOSSILIZED) records: an empty slot's
        metrics are replaced at the next germination, and a culled seed's are final.

        Args:
            quality: the validation quality in the gates' unit (``GateConfig.unit``): accuracy
                in points, or the negative validation loss for a loss-unit task.

        Returns:
            True when recorded; False when the slot holds no seed.

        Raises:
            TypeError, ValueError: ``quality`` is not a finite number.
        """
        quality = _finite_number(self.name, "validation quality", quality)
        self._announce_forced()
        if self.seed is None:
            return False
        self.state.metrics.record_quality(quality)
        return True

    def _reset_incubation_gain(self) -> None:
        self._gain_sum.zero_()
        self._gain_batches = 0

    def record_incubation_gain(self, gain: float) -> None:
        """Record the seed's incubation gain: the host's loss minus the loss with the seed blended
        at alpha 1, measured while the seed is in TRAINING. G2 and G5 read it.

        ``step_epoch`` records it on its own from the gains ``MorphogeneticModel.incubation_loss``
        accumulated over the epoch; call this only for a gain measured another way.

        Args:
            gain: the difference, in the task loss's units (positive: the seed helps).

        Raises:
            ValueError: the seed is not in TRAINING (the measure is only free of the host's
                adaptation there), or ``gain`` is not finite.
            TypeError: ``gain`` is not a number.
        """
        gain = _finite_number(self.name, "incubation gain", gain)
        self._announce_forced()
        if self.seed is None or self.state.stage != SeedStage.TRAINING:
            raise ValueError(
                f"slot {self.name!r} is {self.state.stage.name}; an incubation gain is measured "
                "in TRAINING, before the host can adapt to the seed"
            )
        self._reset_incubation_gain()
        self.state.metrics.incubation_gain = gain

    def record_counterfactual(self, contribution: float) -> None:
        """Record the seed's measured contribution: quality with it minus quality with alpha
        forced to 0, in the gates' unit. G5 and the probation cull read it.

        Args:
            contribution: the difference (accuracy points, or loss for a loss-unit task).

        Raises:
            ValueError: the slot holds no seed, or ``contribution`` is not finite.
            TypeError: ``contribution`` is not a number.
        """
        contribution = _finite_number(self.name, "counterfactual contribution", contribution)
        self._announce_forced()
        if self.seed is None:
            raise ValueError(
                f"slot {self.name!r} holds no seed ({self.state.stage.name}); a counterfactual "
                "contribution belongs to a seed"
            )
        self.state.metrics.counterfactual_contribution = contribution
