"""The trainer on the user's own batches and loss; quality in loss units for a regression."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from esper import inject_slots
from esper.kasmina import GateConfig, MorphogeneticModel
from esper.kasmina.gates import QualityGates
from esper.leyline import Action, Decision, SeedStage
from esper.tamiyo import HeuristicConfig, HeuristicController
from esper.testing import drive_to, set_contribution
from esper.tolaria import LoaderData, Trainer, TrainerConfig
from esper.tolaria.data import iterate_batches


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh())
        self.out = nn.Linear(24, 1)

    def forward(self, x):
        return self.out(self.body(x))


def _regression(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (torch.sin(2 * x[:, :1]) * x[:, 1:2] + 0.5 * x[:, 2:3] ** 2).float()
    return x, y


def _loaders(batch=32):
    x, y = _regression()
    xv, yv = _regression(128, seed=1)
    train = DataLoader(
        TensorDataset(x, y),
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    return LoaderData(train=train, val=DataLoader(TensorDataset(xv, yv), batch_size=64))


def _regressor(gates=None):
    torch.manual_seed(0)
    gates = gates or GateConfig.for_loss()
    return inject_slots(Regressor(), ["body.1", "body.3"], torch.randn(2, 6), gate_config=gates)


def test_a_regression_grows_on_dataloaders_measured_in_loss():
    # G2 lets any seed blend after one epoch: this test is about the units, not about a toy
    # regression's seeds earning their place.
    model = _regressor(
        GateConfig.for_loss(g2_min_incubation_gain=-math.inf, g2_min_training_epochs=1)
    )
    controller = HeuristicController(model.topology, HeuristicConfig.for_loss(), seed=0)
    config = TrainerConfig(seed=0, total_epochs=24, lr=0.05, seed_lr=0.05)
    events = []

    class Hub:
        def emit(self, event):
            events.append(event)

    trainer = Trainer(
        model, _loaders(), config, controller=controller, hub=Hub(), loss_fn=F.mse_loss
    )
    results = [trainer.run_epoch() for _ in range(24)]
    assert results[-1].val_loss < results[0].val_loss
    assert all(math.isnan(r.val_accuracy) and math.isnan(r.train_accuracy) for r in results)
    kinds = [e.event_type.value for e in events]
    assert any("germinat" in k for k in kinds), kinds
    gates = [e.data for e in events if e.data and "gate" in e.data and "unit" in e.data]
    assert gates and all(d["unit"] == "loss" for d in gates)
    cf = [e.data for e in events if e.data and "loss_without" in e.data]
    assert cf, "no counterfactual was measured"
    for d in cf:  # a positive contribution is a lower loss with the seed
        assert d["unit"] == "loss"
        assert d["contribution"] == pytest.approx(d["loss_without"] - d["loss_with"])
    trainer.close()


def test_loader_evaluation_equals_tensor_evaluation_on_the_same_batches():
    from esper.testing import toy_image_task

    data = toy_image_task(96)
    torch.manual_seed(0)
    from esper.kasmina import CNNHost

    model = MorphogeneticModel(CNNHost(10, 2, 4, in_channels=data.train_x.shape[1]))
    config = TrainerConfig(seed=0, total_epochs=2, eval_batch_size=16)
    batches = list(iterate_batches(data.val_x, data.val_y, 16, None, shuffle=False))
    loaders = LoaderData(train=[(data.train_x, data.train_y)], val=batches)
    a = Trainer(model, data, config)
    b = Trainer(model, loaders, config)
    assert a.evaluate() == b.evaluate()
    with pytest.raises(ValueError, match="no test split"):
        b.evaluate("test")
    a.close()
    b.close()


def test_one_shot_iterators_and_non_iterables_are_refused():
    x, y = _regression(8)
    with pytest.raises(TypeError, match="one-shot iterator"):
        LoaderData(train=iter([(x, y)]), val=[(x, y)])
    with pytest.raises(TypeError, match="val must be a DataLoader"):
        LoaderData(train=[(x, y)], val=3)


def test_a_batch_that_is_not_a_pair_is_refused_in_one_line():
    model = _regressor()
    x, _ = _regression(8)
    trainer = Trainer(model, LoaderData(train=[x], val=[x]), TrainerConfig(total_epochs=1))
    with pytest.raises(ValueError, match=r"\(inputs, targets\) pair"):
        trainer.train_epoch()
    trainer.close()


def test_gate_results_state_their_unit():
    with pytest.raises(ValueError, match="unit must be one of points, loss"):
        GateConfig(unit="nats")
    model = _regressor()
    slot = drive_to(model, "body.1", SeedStage.PROBATIONARY, blueprint="mlp")
    set_contribution(slot, 0.001)
    result = QualityGates(GateConfig.for_loss()).check_gate(slot.state, SeedStage.FOSSILIZED)
    assert result.unit == "loss"
    assert not result.passed
    assert any("0.0010 < 0.005 loss" in c for c in result.checks_failed), result.checks_failed
    points = QualityGates().check_gate(slot.state, SeedStage.FOSSILIZED)
    assert points.unit == "points"


def _host_state(trainer):
    state = trainer.optimizers.host.state_dict()
    return {k: {n: v.clone() for n, v in s.items()} for k, s in state["state"].items()}


def test_growth_keeps_the_host_optimizer_state_of_a_user_model():
    model = _regressor()
    config = TrainerConfig(seed=0, total_epochs=4, lr=0.05, seed_lr=0.05)
    trainer = Trainer(model, _loaders(), config, loss_fn=F.mse_loss)
    trainer.run_epoch()  # momentum on the host
    before = _host_state(trainer)
    assert before
    grow = Decision(Action.GERMINATE, slot="body.1", blueprint="mlp")
    assert trainer.apply(grow).applied
    cull = Decision(Action.CULL, slot="body.1", reason="test")
    assert trainer.apply(cull).applied
    after = _host_state(trainer)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k][n], after[k][n]) for k in before for n in before[k])
    trainer.close()


def test_a_user_model_run_resumes_exactly_from_the_trainer_state():
    x, y = _regression()
    xv, yv = _regression(128, seed=1)

    def build():
        model = _regressor()
        config = TrainerConfig(seed=0, total_epochs=6, lr=0.05, seed_lr=0.05)
        # Shuffled by torch's global generator, which the trainer's state holds.
        train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
        loaders = LoaderData(train=train, val=DataLoader(TensorDataset(xv, yv), batch_size=64))
        return model, Trainer(model, loaders, config, loss_fn=F.mse_loss)

    model, trainer = build()
    trainer.run_epoch()
    assert trainer.apply(Decision(Action.GERMINATE, slot="body.3", blueprint="lora")).applied
    trainer.run_epoch()
    state = copy.deepcopy(trainer.state_dict())
    report = model.seed_slots["body.3"].report()
    straight = [trainer.run_epoch() for _ in range(2)]
    torch.manual_seed(12345)  # whatever the global generator holds now, the state restores it
    fresh_model, fresh = build()  # rebuild, inject the same targets, load
    fresh.load_state_dict(state)
    assert fresh_model.seed_slots["body.3"].report() == report  # the seed, with its stage
    resumed = [fresh.run_epoch() for _ in range(2)]
    for a, b in zip(straight, resumed, strict=True):
        assert (a.train_loss, a.val_loss, a.seeds) == (b.train_loss, b.val_loss, b.seeds)


def test_a_sampler_with_set_epoch_is_told_each_epoch():
    from torch.utils.data import Sampler

    class Recording(Sampler):
        def __init__(self, n):
            self.n, self.epochs = n, []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self):
            return self.n

    x, y = _regression(64)
    sampler = Recording(64)
    train = DataLoader(TensorDataset(x, y), batch_size=16, sampler=sampler)
    loaders = LoaderData(train=train, val=[(x, y)])
    trainer = Trainer(_regressor(), loaders, TrainerConfig(total_epochs=3), loss_fn=F.mse_loss)
    for _ in range(3):
        trainer.run_epoch()
    assert sampler.epochs == [1, 2, 3]
    trainer.close()
