"""The loop as steps: decisions are applied or refused (never crash the run), the loop reads no
number back per training step, counterfactuals silence only the slot measured, the learning-rate
schedule, and the events the loop writes."""

from __future__ import annotations

import copy

import pytest
import torch

from esper.kasmina import GateConfig
from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import Action, Decision, Outcome, SeedStage, TelemetryEventType
from esper.nissa import MemorySink, TelemetryHub
from esper.testing import permissive_gates, toy_image_task
from esper.tolaria.config import TrainerConfig
from esper.tolaria.trainer import Trainer

E = TelemetryEventType
# Gates that pass as soon as the mechanics allow, so a seed reaches probation in a few epochs.
OPEN_GATES = permissive_gates()
_data = toy_image_task


def _model(slots=("early", "mid"), **kwargs) -> MorphogeneticModel:
    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)
    return MorphogeneticModel(host, slots=list(slots), **kwargs)


class Script:
    """A controller that says what a dict of epoch -> decision says, WAIT otherwise."""

    def __init__(self, plan: dict[int, Decision | list[Decision]]):
        self.plan = plan
        self.outcomes: list[tuple[Decision, Outcome]] = []

    def decide(self, signals):
        return self.plan.get(signals.epoch, Decision(Action.WAIT))

    def on_outcome(self, decision, outcome):
        self.outcomes.append((decision, outcome))


def _config(**kwargs) -> TrainerConfig:
    return TrainerConfig(**{"lr": 0.05, "seed_lr": 0.05, "batch_size": 16, **kwargs})


# ----------------------------------------------------------------------- refused decisions

ILLEGAL = [
    Decision(Action.CULL, slot="early"),  # nothing to cull: DORMANT
    Decision(Action.FOSSILIZE, slot="mid"),  # mid is in TRAINING
    Decision(Action.GERMINATE, slot="early", blueprint="no_such_blueprint"),
    Decision(Action.GERMINATE, slot="mid", blueprint="norm"),  # occupied
    Decision(Action.GERMINATE, slot="early", blueprint="norm", blend_algorithm="cubic"),
    Decision(Action.CULL, slot="nowhere"),
]


class Illegal:
    """Grows one seed at epoch 1, then tries an illegal decision every epoch."""

    def __init__(self):
        self.outcomes = []

    def decide(self, signals):
        if signals.epoch == 1:
            return Decision(Action.GERMINATE, slot="mid", blueprint="norm")
        return ILLEGAL[(signals.epoch - 2) % len(ILLEGAL)]

    def on_outcome(self, decision, outcome):
        self.outcomes.append((decision, outcome))


class GrowThenWait:
    def decide(self, signals):
        if signals.epoch == 1:
            return Decision(Action.GERMINATE, slot="mid", blueprint="norm")
        return Decision(Action.WAIT)


def _run(controller, epochs=8):
    sink = MemorySink()
    trainer = Trainer(_model(), _data(), _config(), controller=controller, hub=TelemetryHub([sink]))
    results = [trainer.run_epoch() for _ in range(epochs)]
    return trainer, results, sink.events


def test_illegal_decisions_are_refused_and_the_run_is_as_if_it_waited():
    illegal, results, events = _run(Illegal())
    waited, waited_results, _ = _run(GrowThenWait())
    assert len(results) == 8
    refusals = [e for e in events if e.event_type == E.DECISION_REFUSED]
    assert len(refusals) == 7
    assert all(e.data["refused"] for e in refusals)
    outcomes = [o for _, o in illegal.controller.outcomes[1:]]
    assert all(not o.applied and o.reason for o in outcomes)
    assert "occupied" in outcomes[3].reason and "no_such_blueprint" in outcomes[2].reason
    # Model, optimizers and the numbers are exactly those of a run that waited instead.
    a, b = illegal.model.state_dict(), waited.model.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, b[key]), key
    assert [r.val_loss for r in results] == [r.val_loss for r in waited_results]
    sa = illegal.optimizers.state_dict(illegal.model)
    sb = waited.optimizers.state_dict(waited.model)
    assert sa["host"]["param_groups"] == sb["host"]["param_groups"]
    assert sa["seeds"].keys() == sb["seeds"].keys() == {"mid"}
    for name, state in sa["host"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, sb["host"]["state"][name][k]), (name, k)
    assert illegal.seed_counter == waited.seed_counter == 1


def test_a_refused_fossilize_reports_the_gate():
    model = _model(gate_config=GateConfig(g5_min_contribution=100.0))
    slot = model.seed_slots["mid"]
    trainer = Trainer(model, _data(), _config())
    assert trainer.apply(Decision(Action.GERMINATE, slot="mid", blueprint="norm")).applied
    assert slot.stage == SeedStage.TRAINING
    refused = trainer.apply(Decision(Action.FOSSILIZE, slot="mid"))
    assert not refused.applied and "TRAINING" in refused.reason


# ----------------------------------------------------------------------- optimizers and growth


def _to_probation(trainer: Trainer, slot: str = "mid") -> None:
    """Grow a seed in ``slot`` and step epochs until it is in probation (open gates)."""
    assert trainer.apply(Decision(Action.GERMINATE, slot=slot, blueprint="conv_light")).applied
    for _ in range(6):
        trainer.run_epoch()
        if trainer.model.seed_slots[slot].stage == SeedStage.PROBATIONARY:
            return
    raise AssertionError(f"{slot} stuck in {trainer.model.seed_slots[slot].stage.name}")


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_fossilize_keeps_the_host_optimizer_state(kind):
    model = _model(gate_config=OPEN_GATES, blending_steps=1)
    trainer = Trainer(model, _data(), _config(optimizer=kind))
    trainer.run_epoch()
    _to_probation(trainer)
    host_state = copy.deepcopy(trainer.optimizers.host.state_dict())
    assert host_state["state"], "the host optimizer holds momentum / moments by now"
    outcome = trainer.apply(Decision(Action.FOSSILIZE, slot="mid"))
    assert outcome.applied, outcome.reason
    after = trainer.optimizers.host.state_dict()
    assert len(after["param_groups"]) == len(host_state["param_groups"]) + 1
    assert after["param_groups"][:-1] == host_state["param_groups"]
    for idx, state in host_state["state"].items():
        for k, v in state.items():
            assert torch.equal(v, after["state"][idx][k]), (idx, k)
    assert "mid" not in trainer.optimizers.seeds


# ----------------------------------------------------------------------- no sync per step

_SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


def test_training_reads_numbers_back_only_at_captures_and_at_the_end(monkeypatch):
    model = _model()
    trainer = Trainer(model, _data(n=400), _config(batch_size=8, telemetry_stride=1000))
    assert trainer.apply(Decision(Action.GERMINATE, slot="mid", blueprint="norm")).applied
    calls = []
    for name in _SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    steps_before = trainer.global_step
    trainer.train_epoch()
    steps = trainer.global_step - steps_before
    assert steps >= 30
    # One telemetry capture (stride 1000) reads back once; the epoch's loss and accuracy once
    # each at the end. Anything per step would be >= 30.
    assert len(calls) <= 4, calls


# ----------------------------------------------------------------------- counterfactuals


def test_counterfactual_silences_only_the_slot_it_measures():
    model = _model(gate_config=OPEN_GATES, blending_steps=1)
    sink = MemorySink()
    trainer = Trainer(model, _data(), _config(), hub=TelemetryHub([sink]))
    trainer.run_epoch()
    for slot in ("early", "mid"):
        assert trainer.apply(Decision(Action.GERMINATE, slot=slot, blueprint="conv_light"))
    while model.seed_slots["mid"].stage != SeedStage.PROBATIONARY:
        trainer.run_epoch()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # make both seeds matter a lot to the predictions
        for slot in ("early", "mid"):
            for p in model.seed_slots[slot].seed_parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 2.0)
    _, with_all = trainer.evaluate()
    expected = {}
    for slot in ("early", "mid"):
        with model.force_alpha(0.0, slots=[slot]):
            expected[slot] = with_all - trainer.evaluate()[1]
    with model.force_alpha(0.0):
        all_off = with_all - trainer.evaluate()[1]
    assert all_off not in expected.values(), "precondition: silencing both differs"
    sink.events.clear()
    trainer.counterfactuals(with_all)
    for slot in ("early", "mid"):
        measured = model.seed_slots[slot].state.metrics.counterfactual_contribution
        assert measured == expected[slot], slot
    events = sink.of_type(E.COUNTERFACTUAL_EVALUATED)
    assert [e.slot for e in events] == ["early", "mid"]
    assert [e.data["contribution"] for e in events] == [expected["early"], expected["mid"]]


# ----------------------------------------------------------------------- schedule and events


def test_cosine_schedule_spans_the_run_and_reaches_the_floor():
    cfg = TrainerConfig(total_epochs=10, lr_floor=0.05)
    assert cfg.lr_factor(1) == 1.0
    assert cfg.lr_factor(6) == pytest.approx(0.05 + 0.95 * 0.5)
    assert cfg.lr_factor(11) == pytest.approx(0.05)
    assert [cfg.lr_factor(e) for e in range(1, 11)] == sorted(
        (cfg.lr_factor(e) for e in range(1, 11)), reverse=True
    )
    assert TrainerConfig(total_epochs=10, lr_schedule="constant").lr_factor(7) == 1.0
    assert TrainerConfig().lr_factor(7) == 1.0  # no length known: constant


def test_trainer_applies_the_schedule_to_host_and_seed_groups():
    trainer = Trainer(_model(), _data(), _config(total_epochs=4), controller=GrowThenWait())
    for epoch in range(1, 5):
        trainer.run_epoch()
        factor = trainer.config.lr_factor(epoch)
        assert trainer.optimizers.host.param_groups[0]["lr"] == pytest.approx(0.05 * factor)
        if epoch > 1:
            seed_group = trainer.optimizers.seeds["mid"].param_groups[0]
            assert seed_group["lr"] == pytest.approx(0.05 * factor)


def test_a_real_leak_is_an_isolation_violation_event():
    model = _model()
    sink = MemorySink()
    trainer = Trainer(model, _data(), _config(telemetry_stride=1), hub=TelemetryHub([sink]))
    assert trainer.apply(Decision(Action.GERMINATE, slot="mid", blueprint="norm")).applied
    model.seed_slots["mid"].isolate_gradients = False  # opens the seed path while required
    trainer.run_epoch()
    leaks = sink.of_type(E.ISOLATION_VIOLATION)
    assert leaks and all(e.slot == "mid" for e in leaks)
    assert (
        leaks[-1].data["violations"] == model.seed_slots["mid"].state.metrics.isolation_violations
    )


def test_every_gate_evaluation_reaches_the_event_log():
    model = _model(gate_config=OPEN_GATES, blending_steps=1)
    sink = MemorySink()
    trainer = Trainer(model, _data(), _config(), hub=TelemetryHub([sink]))
    trainer.run_epoch()
    _to_probation(trainer)
    model.record_counterfactual("mid", 2.0)
    assert trainer.apply(Decision(Action.FOSSILIZE, slot="mid")).applied
    gates = [e.data["gate"] for e in sink.of_type(E.GATE_EVALUATED)]
    for gate in ("G0", "G1", "G2", "G3", "G5"):
        assert gate in gates, gates


def test_trainer_config_rejects_bad_values_with_one_line():
    with pytest.raises(ValueError, match="optimizer.*valid: sgd, adamw"):
        TrainerConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainerConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainerConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown field"):
        TrainerConfig.from_dict({"learning_rate": 0.1})
    cfg = TrainerConfig(optimizer="adamw", lr=0.003, total_epochs=9)
    assert TrainerConfig.from_dict(cfg.to_dict()) == cfg


def test_tolaria_does_not_import_tamiyo():
    import subprocess
    import sys

    code = (
        "import sys, esper.tolaria, esper.tolaria.trainer; "
        "print(sorted(m for m in sys.modules if m.startswith('esper.tamiyo')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
