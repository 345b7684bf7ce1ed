"""Training loop: optimizer state survives growth, the governor rolls back a collapse."""

from __future__ import annotations

import copy

import pytest
import torch

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import Action, Decision, SeedStage, TelemetryEventType
from esper.nissa import MemorySink, TelemetryHub
from esper.testing import toy_image_task
from esper.tolaria.config import TrainerConfig
from esper.tolaria.governor import Governor
from esper.tolaria.optim import GrowthOptimizers
from esper.tolaria.trainer import Trainer

GROW_MID = Decision(Action.GERMINATE, slot="mid", blueprint="conv_light")


_data = toy_image_task


def _model(slots=("early", "mid")):
    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)
    return MorphogeneticModel(host, slots=list(slots))


def _state_copy(opt: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(opt.state_dict())


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            other = b["state"][k][name]
            if torch.is_tensor(value):
                assert torch.equal(value, other), (k, name)
            else:
                assert value == other
    assert a["param_groups"] == b["param_groups"]


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_germinate_and_cull_leave_host_optimizer_state_untouched(kind):
    model = _model()
    config = TrainerConfig(optimizer=kind, lr=0.05, seed_lr=0.05, batch_size=16)
    trainer = Trainer(model, _data(), config)
    trainer.run_epoch()  # builds momentum / Adam moments on the host
    before = _state_copy(trainer.optimizers.host)
    assert before["state"], "host optimizer should hold state after an epoch"
    assert trainer.apply(GROW_MID).applied
    assert "mid" in trainer.optimizers.seeds
    _assert_same_state(before, _state_copy(trainer.optimizers.host))
    assert trainer.apply(Decision(Action.CULL, slot="mid", reason="test")).applied
    assert "mid" not in trainer.optimizers.seeds
    _assert_same_state(before, _state_copy(trainer.optimizers.host))


def test_seed_params_train_and_fossilized_params_join_host_optimizer():
    model = _model()
    opts = GrowthOptimizers("sgd", model.host_parameters(), lr=0.1, seed_lr=0.1)
    model.germinate_seed("norm", "s", slot="mid")
    opts.add_seed("mid", model.seed_parameters("mid"))
    n_groups = len(opts.host.param_groups)
    opts.fossilize_seed("mid", model.seed_slots["mid"].seed.parameters())
    assert len(opts.host.param_groups) == n_groups + 1
    assert "mid" not in opts.seeds


def test_governor_rolls_back_injected_nan_and_run_finishes_finite():
    model = _model()
    sink = MemorySink()
    hub = TelemetryHub([sink])
    config = TrainerConfig(lr=0.05, seed_lr=0.05, batch_size=16)
    trainer = Trainer(model, _data(), config, hub=hub)
    for _ in range(3):
        trainer.run_epoch()
    assert trainer.apply(GROW_MID).applied
    trainer.run_epoch()
    with torch.no_grad():
        next(model.host.parameters()).fill_(float("nan"))
    result = trainer.run_epoch()
    assert result.rolled_back
    # Live seeds are culled (and the lifecycle moves the slot on into its embargo).
    assert model.seed_slots["mid"].stage == SeedStage.EMBARGOED
    (record,) = trainer.records.values()
    assert record.stages[-2:] == ["CULLED", "EMBARGOED"]
    for _ in range(2):
        assert not trainer.run_epoch().rolled_back
    assert all(torch.isfinite(p).all() for p in model.parameters())
    kinds = [e.event_type for e in sink.events]
    assert TelemetryEventType.GOVERNOR_ROLLBACK in kinds
    assert trainer.governor.rollbacks == 1


def test_governor_flags_spike_but_not_noise():
    gov = Governor(min_history=5)
    for loss in [1.0, 0.9, 0.95, 0.85, 0.9, 0.88]:
        assert gov.check(loss) is None
    assert gov.check(50.0) is not None
    assert gov.check(float("inf")) is not None
    assert gov.check(0.87) is None


def test_training_captures_gradient_telemetry_so_seeds_can_blend():
    # The reference heuristic path never captured telemetry, so G2 could never pass.
    model = _model()
    config = TrainerConfig(lr=0.05, seed_lr=0.05, batch_size=16, telemetry_stride=2)
    trainer = Trainer(model, _data(), config)
    assert trainer.apply(GROW_MID).applied
    trainer.run_epoch()
    m = model.seed_slots["mid"].state.metrics
    assert m.gradient_captures > 0
    assert m.gradient_ratio > 0
    assert m.isolation_violations == 0
