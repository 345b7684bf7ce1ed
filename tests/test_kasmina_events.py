"""Lifecycle events: every change is one typed event, emitted where it happens.

A listener on the model hears enough to rebuild every slot's ``stage_history`` exactly, hears one
``GateEvaluated`` per gate check, and never travels with the model (state_dict, checkpoints,
deepcopy, torch.compile).
"""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
from torch import nn

from conftest import DEFAULT_BLUEPRINT, TINY_HOSTS, drive_to, pass_g2_metrics
from esper.kasmina import GateFailedError, MorphogeneticModel
from esper.kasmina.blueprints import _REGISTRY, register_blueprint
from esper.kasmina.gates import QualityGates
from esper.kasmina.host import CNNHost
from esper.leyline import (
    GateEvaluated,
    GateLevel,
    IsolationViolated,
    SeedStage,
    StageChanged,
    is_valid_transition,
)
from esper.testing import host_output, training_loss

S = SeedStage


class Recorder:
    """A listener that keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)

    def of(self, kind) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def rebuild_histories(events, slots) -> dict[str, list[SeedStage]]:
    """Every slot's stage history, rebuilt from StageChanged events alone."""
    histories = {name: [S.DORMANT] for name in slots}
    for event in events:
        if not isinstance(event, StageChanged):
            continue
        history = histories[event.slot]
        assert history[-1] == event.from_stage, event
        if event.to_stage == S.DORMANT and not event.forced:
            histories[event.slot] = [S.DORMANT]  # entering DORMANT starts a fresh SeedState
        else:
            history.append(event.to_stage)
    return histories


@pytest.fixture
def widen_blueprint():
    """A test-only blueprint that fails G0's shape probe."""

    class Widen(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=-1)

    added = []
    for topology in ("cnn", "transformer"):
        register_blueprint(topology, "test_widen", "test only")(lambda w: Widen())
        added.append(topology)
    yield "test_widen"
    for topology in added:
        _REGISTRY[topology].pop("test_widen", None)


def _train_steps(model, tiny, opt, steps: int = 2) -> None:
    x, y = tiny.inputs(), tiny.targets()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        training_loss(model, x, y).backward()
        model.capture_gradient_telemetry()
        opt.step()


def _whole_lifecycle(tiny, widen: str) -> tuple[MorphogeneticModel, Recorder]:
    """``mid``: a failed germination, then germinate -> train -> blend -> probation -> a refused
    and an accepted fossilization. ``early``: germinate -> cull -> embargo -> reset -> germinate
    again. Only public verbs; the gates see real telemetry and recorded accuracies."""
    model = tiny.model(slots=["early", "mid"], embargo_epochs=2)
    recorder = model.subscribe(Recorder())
    blueprint = DEFAULT_BLUEPRINT[tiny.topology]
    with pytest.raises(ValueError, match="G0"):
        model.germinate_seed(widen, "bad", slot="mid")
    model.germinate_seed(blueprint, "s-mid", slot="mid")
    model.germinate_seed(blueprint, "s-early", slot="early")
    model.step_epoch()  # both -> TRAINING (G1)
    model.cull_seed(slot="early", reason="the test says so")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    accuracy = 50.0
    mid = model.seed_slots["mid"]
    for _ in range(30):
        _train_steps(model, tiny, opt)
        model.record_validation(accuracy)
        accuracy += 0.5
        if mid.stage in (S.BLENDING, S.PROBATIONARY):
            model.record_counterfactual("mid", 0.5)
        model.step_epoch()
        if mid.stage == S.PROBATIONARY:
            break
        if model.seed_slots["early"].stage == S.DORMANT:
            model.germinate_seed(blueprint, "s-early-2", slot="early")
    assert mid.stage == S.PROBATIONARY
    with pytest.raises(GateFailedError):
        model.fossilize_seed(slot="mid")  # 0.5 points < 1.0
    model.record_counterfactual("mid", 2.0)
    model.fossilize_seed(slot="mid")
    return model, recorder


def test_events_rebuild_every_stage_history_exactly(tiny, widen_blueprint):
    model, recorder = _whole_lifecycle(tiny, widen_blueprint)
    histories = rebuild_histories(recorder.events, model.seed_slots)
    for name, slot in model.seed_slots.items():
        assert histories[name] == slot.state.stage_history, name
    assert model.seed_slots["mid"].state.stage_history == [
        S.DORMANT,
        S.GERMINATED,
        S.TRAINING,
        S.BLENDING,
        S.PROBATIONARY,
        S.FOSSILIZED,
    ]
    early = [(e.from_stage, e.to_stage) for e in recorder.of(StageChanged) if e.slot == "early"]
    assert early[:6] == [
        (S.DORMANT, S.GERMINATED),
        (S.GERMINATED, S.TRAINING),
        (S.TRAINING, S.CULLED),
        (S.CULLED, S.EMBARGOED),
        (S.EMBARGOED, S.RESETTING),
        (S.RESETTING, S.DORMANT),
    ]
    assert early[6] == (S.DORMANT, S.GERMINATED)
    assert all(not e.forced for e in recorder.of(StageChanged))
    assert all(is_valid_transition(e.from_stage, e.to_stage) for e in recorder.of(StageChanged))


def test_one_gate_evaluated_per_gate_check(tiny, monkeypatch, widen_blueprint):
    checks: list = []
    real = QualityGates.check_gate

    def spy(self, state, target):
        result = real(self, state, target)
        if self.gate_for(target) is not None:
            checks.append((SeedStage(target), result))
        return result

    monkeypatch.setattr(QualityGates, "check_gate", spy)
    model, recorder = _whole_lifecycle(tiny, widen_blueprint)
    evaluated = [(e.target, e.result) for e in recorder.of(GateEvaluated)]
    assert evaluated == checks
    gates = [r.gate for _, r in evaluated]
    for level in (GateLevel.G0, GateLevel.G1, GateLevel.G2, GateLevel.G3, GateLevel.G5):
        assert level in gates
    # The failed G0 and the refused G5 were announced too.
    failed = [(t, r.gate) for t, r in evaluated if not r.passed]
    assert (S.GERMINATED, GateLevel.G0) in failed
    assert (S.FOSSILIZED, GateLevel.G5) in failed
    # Every gated StageChanged carries the result of the check that allowed it.
    for event in recorder.of(StageChanged):
        if event.to_stage in (S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY, S.FOSSILIZED):
            assert event.gate is not None and event.gate.passed, event
            assert any(r is event.gate for _, r in evaluated)
        else:
            assert event.gate is None, event


def test_failed_germination_announces_g0_and_changes_nothing(widen_blueprint):
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    recorder = model.subscribe(Recorder())
    before = model.seed_slots["mid"].state.to_dict()
    with pytest.raises(ValueError, match="G0"):
        model.germinate_seed(widen_blueprint, "wide", slot="mid")
    (event,) = recorder.events
    assert isinstance(event, GateEvaluated)
    assert event.slot == "mid" and event.seed_id == "wide" and event.target == S.GERMINATED
    assert event.result.gate == GateLevel.G0 and not event.result.passed
    assert model.seed_slots["mid"].state.to_dict() == before


def test_events_are_deterministic(widen_blueprint):
    runs = []
    for _ in range(2):
        _, recorder = _whole_lifecycle(TINY_HOSTS["cnn2"], widen_blueprint)
        runs.append(recorder.events)
    assert runs[0] == runs[1]


def test_step_report_agrees_with_the_events():
    model = TINY_HOSTS["tf1"].model(slots=["mid"], probation_epochs=2)
    recorder = model.subscribe(Recorder())
    slot = drive_to(model, "mid", S.PROBATIONARY)
    recorder.events.clear()
    reports = [model.step_epoch()["mid"] for _ in range(2)]
    assert [r.transitions for r in reports] == [[], [(S.PROBATIONARY, S.CULLED)]]
    (cull,) = recorder.of(StageChanged)
    assert cull.reason == reports[1].cull_reason
    assert (
        cull.reason == "probation ended after 2 epochs without fossilization (contribution unknown)"
    )
    assert slot.stage == S.CULLED


@pytest.mark.parametrize(
    "contribution, reason",
    [(-1.0, "contribution -1.00 points is not positive"), (0.0, "contribution +0.00 points")],
)
def test_probation_cull_reason_is_announced(contribution, reason):
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    recorder = model.subscribe(Recorder())
    drive_to(model, "mid", S.PROBATIONARY)
    model.record_counterfactual("mid", contribution)
    report = model.step_epoch()["mid"]
    cull = recorder.of(StageChanged)[-1]
    assert cull.to_stage == S.CULLED and cull.gate is None
    assert cull.reason.startswith(reason) and cull.reason == report.cull_reason


def test_non_finite_and_explicit_culls_carry_their_reason():
    model = TINY_HOSTS["cnn3"].model(slots=["early", "mid"])
    recorder = model.subscribe(Recorder())
    drive_to(model, "early", S.TRAINING)
    drive_to(model, "mid", S.BLENDING)
    with torch.no_grad():
        next(iter(model.seed_slots["mid"].seed.parameters())).fill_(float("nan"))
    model.cull_seed(slot="early", reason="controller: stalled")
    model.step_epoch()
    culls = {e.slot: e.reason for e in recorder.of(StageChanged) if e.to_stage == S.CULLED}
    assert culls == {"early": "controller: stalled", "mid": "seed produced non-finite values"}
    plain = TINY_HOSTS["cnn3"].model(slots=["mid"])
    drive_to(plain, "mid", S.TRAINING)
    recorder = plain.subscribe(Recorder())
    plain.cull_seed(slot="mid")  # no reason given
    assert recorder.events[-1].reason == "culled"


def test_isolation_violation_is_announced_at_capture():
    tiny = TINY_HOSTS["cnn3"]
    model = tiny.model(slots=["early", "mid"])
    recorder = model.subscribe(Recorder())
    for name in ("early", "mid"):
        drive_to(model, name, S.TRAINING)
    model.seed_slots["mid"].isolate_gradients = False  # a real leak in one slot only
    x, y = tiny.inputs(), tiny.targets()
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        training_loss(model, x, y).backward()
        model.capture_gradient_telemetry()
    violations = recorder.of(IsolationViolated)
    assert violations == [
        IsolationViolated("mid", "seed-mid", 1),
        IsolationViolated("mid", "seed-mid", 2),
    ]
    assert model.seed_slots["mid"].state.metrics.isolation_violations == 2
    assert model.seed_slots["early"].state.metrics.isolation_violations == 0


# --- direct stage assignment ---------------------------------------------------------------------


def _bug_report_model(listener=None):
    model = MorphogeneticModel(
        CNNHost(num_classes=10, base_channels=8), device="cpu", slots=["mid"]
    )
    if listener is not None:
        model.subscribe(listener)
    model.germinate_seed("norm", "seed-iso", slot="mid")
    return model


def test_direct_stage_assignment_is_recorded_as_forced():
    recorder = Recorder()
    model = _bug_report_model(recorder)
    n_germination = len(recorder.events)
    slot = model.seed_slots["mid"]
    slot.state.stage = SeedStage.TRAINING  # docs/design.md, "The isolation snippet"
    assert slot.stage == S.TRAINING and slot.state.previous_stage == S.GERMINATED
    assert slot.state.stage_history == [S.DORMANT, S.GERMINATED, S.TRAINING]
    assert slot.state.forced == [2]
    slot.isolate_gradients = True
    for p in model.parameters():
        p.grad = torch.ones_like(p) * 0.01
    slot.capture_gradient_telemetry()
    assert slot.state.metrics.isolation_violations == 0
    pass_g2_metrics(slot)
    report = slot.step_epoch()
    assert slot.state.stage_history == [S.DORMANT, S.GERMINATED, S.TRAINING, S.BLENDING]
    assert slot.state.forced == [2]
    assert report.transitions == [(S.TRAINING, S.BLENDING)]

    germinated, forced, gated = recorder.of(StageChanged)
    assert germinated.to_stage == S.GERMINATED
    assert forced == StageChanged(
        slot="mid",
        seed_id="seed-iso",
        from_stage=S.GERMINATED,
        to_stage=S.TRAINING,
        gate=None,
        reason="stage assigned directly",
        forced=True,
    )
    # Announced by the capture, the first lifecycle-related call after the assignment.
    assert recorder.events[n_germination] is forced
    assert gated.from_stage == S.TRAINING and gated.to_stage == S.BLENDING and not gated.forced
    assert gated.gate.gate == GateLevel.G2 and gated.gate.passed
    assert rebuild_histories(recorder.events, ["mid"])["mid"] == slot.state.stage_history


def test_forced_stages_give_a_working_forward_and_an_honest_history():
    tiny = TINY_HOSTS["tf2"]
    model = tiny.model(slots=["mid"])
    recorder = model.subscribe(Recorder())
    model.germinate_seed("mlp", "direct", slot="mid")
    slot = model.seed_slots["mid"]
    for stage in (S.TRAINING, S.TRAINING, S.BLENDING, S.FOSSILIZED):
        slot.state.stage = stage  # a repeat of the current stage records nothing
        assert torch.isfinite(model(tiny.inputs())).all()
    assert slot.state.stage_history == [
        S.DORMANT,
        S.GERMINATED,
        S.TRAINING,
        S.BLENDING,
        S.FOSSILIZED,
    ]
    assert slot.state.forced == [2, 3, 4]
    assert len(recorder.of(StageChanged)) == 1  # the germination; the rest wait for a verb
    model.step_epoch()
    forced = [e for e in recorder.of(StageChanged) if e.forced]
    assert [(e.from_stage, e.to_stage) for e in forced] == [
        (S.GERMINATED, S.TRAINING),
        (S.TRAINING, S.BLENDING),
        (S.BLENDING, S.FOSSILIZED),
    ]
    model.step_epoch()  # announced once only
    assert len([e for e in recorder.of(StageChanged) if e.forced]) == 3
    assert rebuild_histories(recorder.events, ["mid"])["mid"] == slot.state.stage_history


def test_forced_steps_survive_a_checkpoint_and_are_not_announced_again(tmp_path):
    model = _bug_report_model()
    model.seed_slots["mid"].state.stage = S.TRAINING
    model.seed_slots["mid"].step_epoch()  # announces it (nobody listening)
    loaded = MorphogeneticModel.load_checkpoint(model.save_checkpoint(tmp_path / "ck.pt"))
    state = loaded.seed_slots["mid"].state
    assert state.forced == [2] and state == model.seed_slots["mid"].state
    recorder = loaded.subscribe(Recorder())
    loaded.step_epoch()
    assert not [e for e in recorder.of(StageChanged) if e.forced]


# --- listeners never travel with the model -------------------------------------------------------


class _Unpicklable:
    """A listener owner that can be neither deep-copied nor pickled (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list = []

    def hear(self, event) -> None:
        self.events.append(event)


def test_listeners_are_not_state_and_copies_start_without_them(tmp_path):
    tiny = TINY_HOSTS["cnn3"]
    model = tiny.model(slots=["mid"])
    owner = _Unpicklable()
    model.subscribe(owner.hear)
    slot_recorder = model.seed_slots["mid"].subscribe(Recorder())
    plain = tiny.model(slots=["mid"])
    assert model.state_dict().keys() == plain.state_dict().keys()

    twin = copy.deepcopy(model)
    pickle.loads(pickle.dumps(model))
    model.save_checkpoint(tmp_path / "ck.pt")
    assert len(twin._listeners) == 0 and len(twin.seed_slots["mid"]._listeners) == 0

    twin.germinate_seed("norm", "in-the-copy", slot="mid")
    assert owner.events == [] and slot_recorder.events == []
    model.germinate_seed("norm", "in-the-original", slot="mid")
    assert [e.seed_id for e in owner.events] == ["in-the-original"] * 2
    assert slot_recorder.events == owner.events  # a slot's own listeners hear it too


def test_slot_listeners_hear_before_model_listeners_and_unsubscribe_works():
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    order = []
    model.subscribe(lambda e: order.append("model"))
    model.seed_slots["mid"].subscribe(lambda e: order.append("slot"))
    model.germinate_seed("norm", "s", slot="mid")
    assert order == ["slot", "model"] * 2  # G0, then DORMANT -> GERMINATED

    recorder = Recorder()
    assert model.subscribe(recorder) is recorder
    model.subscribe(recorder)  # a second subscription changes nothing
    model.step_epoch()
    assert len(recorder.events) == 2  # G1, GERMINATED -> TRAINING
    model.unsubscribe(recorder)
    model.cull_seed(slot="mid")
    assert len(recorder.events) == 2
    with pytest.raises(ValueError, match="not subscribed"):
        model.unsubscribe(recorder)
    with pytest.raises(TypeError, match="callable"):
        model.subscribe("not a function")


def test_compiled_model_with_listeners_traces_fullgraph():
    torch._dynamo.reset()
    try:
        tiny = TINY_HOSTS["cnn3"]
        model = tiny.model(slots=["mid"])
        owner = _Unpicklable()
        model.subscribe(owner.hear)
        drive_to(model, "mid", S.BLENDING)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        x = tiny.inputs()
        model.eval()
        with torch.no_grad():
            assert torch.equal(compiled(x), model(x))
        n = len(owner.events)
        model.cull_seed(slot="mid")
        with torch.no_grad():
            assert torch.equal(compiled(x), host_output(model, x))
        assert len(owner.events) == n + 1
    finally:
        torch._dynamo.reset()


# --- record verbs --------------------------------------------------------------------------------


def test_record_verbs_write_what_the_trainer_wrote_by_hand():
    tiny = TINY_HOSTS["cnn3"]
    by_verb = tiny.model(slots=["early", "mid", "late"])
    by_hand = tiny.model(slots=["early", "mid", "late"])
    for model in (by_verb, by_hand):
        drive_to(model, "early", S.TRAINING)
        drive_to(model, "mid", S.BLENDING)
    for accuracy in (50.0, 49.25, 53.125):
        assert by_verb.record_validation(accuracy) == ["early", "mid"]
        for slot in by_hand.seed_slots.values():
            if slot.seed is not None:
                slot.state.metrics.record_quality(accuracy)
    by_verb.record_counterfactual("mid", 1.75)
    by_hand.seed_slots["mid"].state.metrics.counterfactual_contribution = 1.75
    for name in by_verb.seed_slots:
        assert by_verb.seed_slots[name].state == by_hand.seed_slots[name].state, name

    late = by_verb.seed_slots["late"]
    assert late.record_validation(60.0) is False  # no seed: nothing to record into
    assert late.state.metrics.current_quality is None
    with pytest.raises(ValueError, match="'late' holds no seed"):
        by_verb.record_counterfactual("late", 1.0)
    with pytest.raises(ValueError, match="finite"):
        by_verb.record_counterfactual("mid", float("nan"))
    with pytest.raises(ValueError, match="finite"):
        by_verb.record_validation(float("inf"))
    with pytest.raises(TypeError, match="number"):
        by_verb.record_validation("50")
    with pytest.raises(ValueError, match="unknown slot"):
        by_verb.record_counterfactual("nowhere", 1.0)
