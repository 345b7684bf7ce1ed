"""Random sequences of legal and illegal lifecycle commands never corrupt the model.

A Hypothesis state machine drives a two-slot model (tiny CNN or tiny transformer) with every
public lifecycle verb, valid and invalid arguments alike, and checks after each step that the
stage is a SeedStage, the stage history only holds legal transitions, the lifecycle events a
listener heard rebuild every history exactly, the forward is finite with the right shape, a model
with no seed affecting the output is exactly its host, and every error raised is one of the
documented kinds and left the slot untouched.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from conftest import TINY_HOSTS
from esper.kasmina import GateFailedError, IllegalTransitionError, SlotOccupiedError
from esper.kasmina import list_blueprints as blueprints_of
from esper.leyline import SeedStage, StageChanged, affects_output, is_valid_transition
from esper.testing import host_output

SLOTS = ("early", "late")
DOCUMENTED = (ValueError, IllegalTransitionError, SlotOccupiedError, GateFailedError)


def lifecycle_machine(name: str) -> type[RuleBasedStateMachine]:
    tiny = TINY_HOSTS[name]
    valid = blueprints_of(tiny.topology)
    invalid = ["no_such_blueprint", "lora" if tiny.topology == "cnn" else "conv_light"]
    # Mostly valid choices, so that seeds live long enough to reach the deeper stages.
    blueprints = st.sampled_from(valid * 3 + invalid)
    blends = st.sampled_from(["linear", "sigmoid", "gated"] * 2 + ["bogus"])

    class LifecycleMachine(RuleBasedStateMachine):
        @initialize()
        def build(self):
            self.model = tiny.model(slots=SLOTS, embargo_epochs=2, probation_epochs=3)
            self.model.eval()
            self.x = tiny.inputs()
            self.transitions: list[tuple[SeedStage, SeedStage]] = []
            self.counter = 0
            self.histories = {name: [SeedStage.DORMANT] for name in SLOTS}
            self.model.subscribe(self._hear)

        def _hear(self, event):
            if isinstance(event, StageChanged):
                history = self.histories[event.slot]
                assert history[-1] == event.from_stage, event
                if event.to_stage == SeedStage.DORMANT and not event.forced:
                    self.histories[event.slot] = [SeedStage.DORMANT]  # a fresh SeedState
                else:
                    history.append(event.to_stage)

        # -- helpers ----------------------------------------------------------------------------

        def _attempt(self, slot_name, fn, *args, **kwargs):
            """Run ``fn``; a documented error must leave the slot exactly as it was."""
            slot = self.model.seed_slots[slot_name]
            before = (slot.state.to_dict(), slot.seed, slot.blend, slot.isolate_gradients)
            keys = set(self.model.state_dict())
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - the type is what is being checked
                assert isinstance(err, DOCUMENTED), f"undocumented {type(err).__name__}: {err}"
                assert (
                    slot.state.to_dict(),
                    slot.seed,
                    slot.blend,
                    slot.isolate_gradients,
                ) == before
                assert set(self.model.state_dict()) == keys
                return None

        # -- rules ------------------------------------------------------------------------------

        @rule(slot=st.sampled_from(SLOTS), blueprint=blueprints, blend=blends)
        def germinate(self, slot, blueprint, blend):
            self.counter += 1
            self._attempt(
                slot,
                self.model.germinate_seed,
                blueprint,
                f"s{self.counter}",
                slot=slot,
                blend_algorithm_id=blend,
            )
            if self.model.seed_slots[slot].seed is not None:
                # A random start so the seed's contribution is visible in the output.
                gen = torch.Generator().manual_seed(self.counter)
                with torch.no_grad():
                    for p in self.model.seed_slots[slot].seed_parameters():
                        p.add_(torch.randn(p.shape, generator=gen) * 0.1)

        @rule(slot=st.sampled_from(SLOTS), stage=st.sampled_from(list(SeedStage)))
        def advance(self, slot, stage):
            s = self.model.seed_slots[slot]
            src = s.stage
            result = self._attempt(slot, s.advance_stage, stage)
            if result is not None and s.stage != src:
                self.transitions.append((src, s.stage))

        @rule()
        def step_epoch(self):
            for report in self.model.step_epoch().values():
                self.transitions.extend(report.transitions)

        @rule(slot=st.sampled_from(SLOTS))
        def cull(self, slot):
            self._attempt(slot, self.model.cull_seed, slot=slot)

        @rule(slot=st.sampled_from(SLOTS), contribution=st.one_of(st.none(), st.floats(-5.0, 5.0)))
        def fossilize(self, slot, contribution):
            self.model.seed_slots[slot].state.metrics.counterfactual_contribution = contribution
            self._attempt(slot, self.model.fossilize_seed, slot=slot)

        @rule(
            slot=st.sampled_from(SLOTS),
            alpha=st.one_of(st.floats(0.0, 1.0), st.sampled_from([-0.5, 1.5, float("nan")])),
        )
        def set_alpha(self, slot, alpha):
            self._attempt(slot, self.model.seed_slots[slot].set_alpha, alpha)

        @rule(slot=st.sampled_from(SLOTS), quality=st.floats(0.0, 100.0))
        def record_quality(self, slot, quality):
            self.model.seed_slots[slot].record_validation(quality)

        @rule(
            slot=st.sampled_from(SLOTS),
            ratio=st.floats(0.0, 2.0),
            epochs=st.integers(0, 5),
            gain=st.floats(-2.0, 5.0),
        )
        def tune_metrics(self, slot, ratio, epochs, gain):
            """Set what the gates look at, so that they pass often enough for the deeper stages
            (blending, probation, fossilization) to be explored."""
            m = self.model.seed_slots[slot].state.metrics
            m.gradient_ratio = ratio
            m.epochs_in_current_stage = epochs
            if m.quality_at_stage_start is not None:
                m.record_quality(m.quality_at_stage_start + gain)

        @rule(
            slot=st.sampled_from(SLOTS),
            blueprint=st.sampled_from(valid),
            blend=blends,
            steps=st.integers(1, 4),
            use_step_epoch=st.booleans(),
        )
        def progress(self, slot, blueprint, blend, steps, use_step_epoch):
            """Grow along the happy path: germinate if empty, then meet each next gate's
            conditions and take the step, so the deeper stages are explored often."""
            s = self.model.seed_slots[slot]
            if s.stage == SeedStage.DORMANT:
                self.germinate(slot, blueprint, blend)
            for _ in range(steps):
                nxt = {
                    SeedStage.GERMINATED: SeedStage.TRAINING,
                    SeedStage.TRAINING: SeedStage.BLENDING,
                    SeedStage.BLENDING: SeedStage.PROBATIONARY,
                    SeedStage.PROBATIONARY: SeedStage.FOSSILIZED,
                }.get(s.stage)
                if nxt is None:
                    return
                m = s.state.metrics
                m.quality_at_stage_start = 50.0
                m.record_quality(51.0)
                m.gradient_ratio = max(m.gradient_ratio, 0.1)
                m.epochs_in_current_stage = max(m.epochs_in_current_stage, 3)
                if nxt == SeedStage.PROBATIONARY:
                    s.state.blend_step = s.state.blending_steps  # G3 waits for the ramp's end
                    s.set_alpha(1.0)
                if nxt == SeedStage.FOSSILIZED:
                    m.counterfactual_contribution = 1.5
                    self._attempt(slot, self.model.fossilize_seed, slot=slot)
                elif use_step_epoch:
                    self.step_epoch()
                else:
                    self.advance(slot, nxt)

        @rule()
        def train_step(self):
            self.model.train()
            out = self.model(self.x)
            out.float().pow(2).mean().backward()
            self.model.capture_gradient_telemetry()
            self.model.zero_grad(set_to_none=True)
            self.model.eval()

        # -- invariants -------------------------------------------------------------------------

        @invariant()
        def stages_are_seed_stages_with_legal_history(self):
            for s in self.model.seed_slots.values():
                assert isinstance(s.stage, SeedStage)
                history = s.state.stage_history
                assert history[-1] == s.stage
                assert s.state.forced == []  # nothing here assigns a stage directly
                for a, b in zip(history, history[1:], strict=False):
                    assert is_valid_transition(a, b), (a, b)
                assert self.histories[s.name] == history  # the events tell the whole story
                holds_seed = s.stage in (
                    SeedStage.GERMINATED,
                    SeedStage.TRAINING,
                    SeedStage.BLENDING,
                    SeedStage.PROBATIONARY,
                    SeedStage.FOSSILIZED,
                )
                assert (s.seed is not None) == holds_seed
            for a, b in self.transitions:
                assert is_valid_transition(a, b), (a, b)

        @invariant()
        def forward_is_finite_with_right_shape(self):
            with torch.no_grad():
                out = self.model(self.x)
            assert out.shape == tiny.output_shape
            assert torch.isfinite(out).all()
            live = [
                s
                for s in self.model.seed_slots.values()
                if s.seed is not None and affects_output(s.stage)
            ]
            if not live:
                assert torch.equal(out, host_output(self.model, self.x))

    return LifecycleMachine


@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_random_lifecycle_commands_never_corrupt_the_model(name):
    run_state_machine_as_test(
        lifecycle_machine(name),
        settings=settings(
            max_examples=30,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
