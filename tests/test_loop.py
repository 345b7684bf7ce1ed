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
from esper.testing import pass_g2_metrics, permissive_gates, perturb_seed, toy_image_task
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
#: Both runs below grow two seeds, the most the budget allows, the second one after ILLEGAL.
MAX_SEEDS = 2
GROW_FIRST = Decision(Action.GERMINATE, slot="mid", blueprint="norm")
GROW_SECOND = Decision(Action.GERMINATE, slot="late", blueprint="norm")
SECOND_EPOCH = len(ILLEGAL) + 2
#: Refused by the trainer's own rule alone: "early" is DORMANT and "norm" is valid, so the
#: model would grow it, but the run's growth budget (MAX_SEEDS) is spent by then. It comes
#: last, so the budget masks none of ILLEGAL's own reasons.
OVER_BUDGET = Decision(Action.GERMINATE, slot="early", blueprint="norm")
ILLEGAL_EPOCHS = len(ILLEGAL) + 3


class Illegal:
    """Grows one seed at epoch 1, then tries an illegal decision every epoch; then grows a
    second seed (the budget's last) and tries one germination past the budget."""

    def __init__(self):
        self.outcomes = []

    def decide(self, signals):
        if signals.epoch == 1:
            return GROW_FIRST
        if signals.epoch == SECOND_EPOCH:
            return GROW_SECOND
        if signals.epoch > SECOND_EPOCH:
            return OVER_BUDGET
        return ILLEGAL[signals.epoch - 2]

    def on_outcome(self, decision, outcome):
        self.outcomes.append((decision, outcome))


class GrowThenWait:
    def decide(self, signals):
        if signals.epoch == 1:
            return Decision(Action.GERMINATE, slot="mid", blueprint="norm")
        return Decision(Action.WAIT)


class GrowTwiceAndWait:
    """What :class:`Illegal` does, with WAIT in place of each illegal decision."""

    def decide(self, signals):
        plan = {1: GROW_FIRST, SECOND_EPOCH: GROW_SECOND}
        return plan.get(signals.epoch, Decision(Action.WAIT))


def _run(controller, epochs=ILLEGAL_EPOCHS, **config):
    sink = MemorySink()
    model = _model(slots=("early", "mid", "late"))
    hub = TelemetryHub([sink])
    trainer = Trainer(model, _data(), _config(**config), controller=controller, hub=hub)
    results = [trainer.run_epoch() for _ in range(epochs)]
    return trainer, results, sink.events


def test_illegal_decisions_are_refused_and_the_run_is_as_if_it_waited():
    illegal, results, events = _run(Illegal(), max_seeds=MAX_SEEDS)
    waited, waited_results, _ = _run(GrowTwiceAndWait(), max_seeds=MAX_SEEDS)
    assert len(results) == ILLEGAL_EPOCHS
    refusals = [e for e in events if e.event_type == E.DECISION_REFUSED]
    assert len(refusals) == 7
    assert all(e.data["refused"] for e in refusals)
    told = illegal.controller.outcomes
    assert [d for d, _ in told] == [GROW_FIRST, *ILLEGAL, GROW_SECOND, OVER_BUDGET]
    assert told[0][1].applied and told[-2][1].applied
    outcomes = [o for _, o in told[1:-2]] + [told[-1][1]]
    assert all(not o.applied and o.reason for o in outcomes)
    assert "occupied" in outcomes[3].reason and "no_such_blueprint" in outcomes[2].reason
    assert "cubic" in outcomes[4].reason
    assert "max_seeds" in outcomes[6].reason
    # The germination the model would have accepted left its slot empty.
    assert illegal.model.seed_slots["early"].stage == SeedStage.DORMANT
    assert illegal.model.seed_slots["early"].seed is None
    assert illegal.model.count_parameters() == waited.model.count_parameters()
    assert set(illegal.records) == set(waited.records)
    grown = [e.slot for e in events if e.event_type == E.SEED_GERMINATED]
    assert grown == ["mid", "late"]
    # Model, optimizers and the numbers are exactly those of a run that waited instead.
    a, b = illegal.model.state_dict(), waited.model.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key
    assert [r.val_loss for r in results] == [r.val_loss for r in waited_results]
    sa = illegal.optimizers.state_dict(illegal.model)
    sb = waited.optimizers.state_dict(waited.model)
    assert sa["host"]["param_groups"] == sb["host"]["param_groups"]
    assert sa["seeds"].keys() == sb["seeds"].keys()
    assert "late" in illegal.optimizers.seeds and "early" not in illegal.optimizers.seeds
    for name, state in sa["host"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, sb["host"]["state"][name][k]), (name, k)
    assert illegal.seed_counter == waited.seed_counter == MAX_SEEDS


def test_a_germinate_only_the_trainer_refuses_changes_nothing():
    """The growth budget is the trainer's rule, not the model's: the model would grow this seed
    (a DORMANT slot, a valid blueprint and blend), so only the refusal keeps it out."""
    sink = MemorySink()
    trainer = Trainer(_model(), _data(), _config(max_seeds=1), hub=TelemetryHub([sink]))
    model = trainer.model
    assert trainer.apply(Decision(Action.GERMINATE, slot="mid", blueprint="norm")).applied
    trainer.run_epoch()  # optimizer state exists for host and seed
    early = model.seed_slots["early"]
    assert early.stage == SeedStage.DORMANT
    state = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    extra = {k: copy.deepcopy(v) for k, v in model.state_dict().items() if not torch.is_tensor(v)}
    counts = model.count_parameters()
    optim = copy.deepcopy(trainer.optimizers.state_dict(model))
    host_groups = [list(g["params"]) for g in trainer.optimizers.host.param_groups]
    seed_optimizers = dict(trainer.optimizers.seeds)
    seed_counter, records = trainer.seed_counter, set(trainer.records)
    sink.events.clear()

    decision = Decision(Action.GERMINATE, slot="early", blueprint="conv_light")
    outcome = trainer.apply(decision)

    assert not outcome.applied and "max_seeds" in outcome.reason
    assert outcome.seed_id is None
    assert early.stage == SeedStage.DORMANT and early.seed is None
    after = model.state_dict()
    assert after.keys() == state.keys() | extra.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    for key, value in extra.items():
        assert after[key] == value, key
    assert model.count_parameters() == counts
    assert [list(g["params"]) for g in trainer.optimizers.host.param_groups] == host_groups
    assert dict(trainer.optimizers.seeds) == seed_optimizers
    optim_after = trainer.optimizers.state_dict(model)
    assert optim_after["host"]["param_groups"] == optim["host"]["param_groups"]
    assert optim_after["seeds"].keys() == optim["seeds"].keys() == {"mid"}
    assert optim_after["seeds"]["mid"]["param_groups"] == optim["seeds"]["mid"]["param_groups"]
    assert trainer.seed_counter == seed_counter and set(trainer.records) == records
    kinds = [e.event_type for e in sink.events]
    assert kinds == [E.CONTROLLER_DECISION, E.DECISION_REFUSED], kinds
    assert "max_seeds" in sink.events[-1].data["refused"]


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


@pytest.mark.parametrize(
    "stage",
    # Every stage whose seed has a forward path: the shadow pass (TRAINING), the blend
    # (BLENDING, PROBATIONARY) and the seed as part of the host (FOSSILIZED).
    [SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED],
    ids=lambda s: s.name,
)
def test_training_reads_numbers_back_only_at_captures_and_at_the_end(monkeypatch, stage):
    model = _model(gate_config=OPEN_GATES)
    trainer = Trainer(model, _data(n=400), _config(batch_size=8, telemetry_stride=1000))
    assert trainer.apply(Decision(Action.GERMINATE, slot="mid", blueprint="norm")).applied
    slot = model.seed_slots["mid"]
    if stage != SeedStage.TRAINING:
        # Through the lifecycle verbs (the trainer follows them: optimizers, events), with a
        # seed that is not the identity, so its output really enters the host's stream.
        pass_g2_metrics(slot)
        assert slot.advance_stage(SeedStage.BLENDING).passed
        perturb_seed(slot, fan_in_scaled=True)
        slot.set_alpha(0.5)
        if stage != SeedStage.BLENDING:
            slot.set_alpha(1.0)
            assert slot.advance_stage(SeedStage.PROBATIONARY).passed
        if stage == SeedStage.FOSSILIZED:
            slot.record_counterfactual(2.0)
            assert model.fossilize_seed(slot="mid").passed
    assert slot.stage == stage
    seed_runs = []
    slot.seed.register_forward_hook(lambda *_: seed_runs.append(1))
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
    assert len(seed_runs) >= steps  # the seed's forward path ran at every step
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
