"""Growth that keeps going: a fossilized seed becomes part of the host and its slot takes a new
seed stacked after it. Earlier seeds keep their contribution, isolation stays exact, and
checkpoints, compile and the governor handle the stack."""

from __future__ import annotations

import copy

import pytest
import torch

from esper.kasmina import MorphogeneticModel
from esper.leyline import Action, Decision, SeedStage
from esper.testing import (
    TINY_HOSTS,
    drive_to,
    permissive_gates,
    perturb_seed,
    toy_image_task,
    training_loss,
)
from esper.tolaria.config import TrainerConfig
from esper.tolaria.governor import Governor
from esper.tolaria.trainer import Trainer

S = SeedStage


def _regrown(name: str, times: int = 3) -> MorphogeneticModel:
    """``mid`` grows and fossilizes ``times`` seeds, each with its own random weights."""
    model = TINY_HOSTS[name].model(slots=["early", "mid"])
    slot = model.seed_slots["mid"]
    for i in range(times):
        drive_to(model, "mid", S.BLENDING, perturb=False)
        perturb_seed(slot, scale=0.3, seed=100 + i, fan_in_scaled=True)
        drive_to_fossil(model, "mid")
    return model


def drive_to_fossil(model, name):
    slot = model.seed_slots[name]
    for _ in range(slot.blending_steps + 3):
        slot.step_epoch()
        if slot.stage != S.BLENDING:
            break
    slot.record_counterfactual(2.0)
    model.fossilize_seed(slot=name)


@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_a_slot_regrown_three_times_keeps_every_earlier_seed(name):
    tiny = TINY_HOSTS[name]
    model = _regrown(name, times=3)
    slot = model.seed_slots["mid"]
    x = tiny.inputs()
    model.eval()
    before = model(x)
    assert slot.stage == S.FOSSILIZED and len(slot.fossils) == 2
    # A fourth seed, blending at alpha 0: the output is exactly that of the three fossils.
    drive_to(model, "mid", S.BLENDING, seed_id="fourth")
    assert [seed_id for seed_id, _ in slot.fossil_seeds] == ["seed-mid", "seed-mid-2", "seed-mid-3"]
    with model.force_alpha(0.0):
        assert torch.equal(model(x), before)
    # Each earlier seed really is in the forward: drop any one of them and the output changes.
    for k in range(len(slot.fossils)):
        kept = slot.fossils
        slot.fossils = torch.nn.ModuleList(f for i, f in enumerate(kept) if i != k)
        with model.force_alpha(0.0):
            assert not torch.equal(model(x), before), k
        slot.fossils = kept
    # The fossils are host parameters now; the live seed is not.
    host_ids = {id(p) for p in model.host_parameters()}
    assert all(id(p) in host_ids for f in slot.fossils for p in f.parameters())
    assert not any(id(p) in host_ids for p in model.seed_parameters())


@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_a_stacked_seed_in_training_leaves_the_host_and_its_fossils_exact(name):
    tiny = TINY_HOSTS[name]
    model = _regrown(name, times=2)
    reference = copy.deepcopy(model)  # the same host with its fossils, nothing incubating
    drive_to(model, "mid", S.TRAINING, seed_id="incubating")
    perturb_seed(model.seed_slots["mid"], seed=5)
    x, y = tiny.inputs(), tiny.targets()
    training_loss(model, x, y).backward()
    training_loss(reference, x, y).backward()
    # Host parameters in a stable order: the host's own, then each slot's fossils oldest first
    # (the reference's FOSSILIZED seed is the model's last fossil now).
    host, ref_host = list(model.host_parameters()), list(reference.host_parameters())
    assert len(host) == len(ref_host)
    for p, q in zip(host, ref_host, strict=True):
        assert torch.equal(p.grad, q.grad)
    assert any(p.grad is not None for p in model.seed_parameters("mid"))


@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_a_stacked_model_reloads_from_a_checkpoint_exactly(name, tmp_path):
    tiny = TINY_HOSTS[name]
    model = _regrown(name, times=3)
    drive_to(model, "mid", S.BLENDING, seed_id="fourth")
    model.seed_slots["mid"].set_alpha(0.5)
    model.save_checkpoint(tmp_path / "m.pt")
    loaded = MorphogeneticModel.load_checkpoint(tmp_path / "m.pt")
    x = tiny.inputs()
    model.eval()
    loaded.eval()
    assert torch.equal(model(x), loaded(x))
    assert loaded.seed_slots["mid"].fossil_seeds == model.seed_slots["mid"].fossil_seeds
    assert loaded.seed_slots["mid"].stage == S.BLENDING
    for (n, a), (m, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == m
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), n


def test_compiled_stacked_model_matches_eager():
    torch._dynamo.reset()
    tiny = TINY_HOSTS["cnn3"]
    model = _regrown("cnn3", times=2)
    drive_to(model, "mid", S.BLENDING, seed_id="third")
    model.seed_slots["mid"].set_alpha(0.5)
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = tiny.inputs()
    model.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), twin(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_governor_rollback_restores_stacked_fossils_and_culls_the_live_seed():
    model = _regrown("cnn3", times=2)
    slot = model.seed_slots["mid"]
    governor = Governor()
    governor.take_snapshot(model)
    saved = [copy.deepcopy(m.state_dict()) for m in slot.host_side_modules()]
    drive_to(model, "mid", S.TRAINING, seed_id="live")  # stacks: the FOSSILIZED seed moves
    with torch.no_grad():
        for p in model.host_parameters():
            p.add_(1.0)
    assert governor.rollback(model, "test") == ["mid"]
    assert slot.stage == S.CULLED and len(slot.fossils) == 2
    for module, sd in zip(slot.host_side_modules(), saved, strict=True):
        for key, value in module.state_dict().items():
            assert torch.equal(value, sd[key]), key


class _Regrow:
    """Germinates into ``mid`` whenever it is free (DORMANT or FOSSILIZED); fossilizes in
    probation."""

    def __init__(self):
        self.outcomes = []

    def decide(self, signals):
        mid = next(r for r in signals.slots if r.slot == "mid")
        if mid.stage == S.PROBATIONARY:
            return Decision(Action.FOSSILIZE, slot="mid")
        if mid.stage in (S.DORMANT, S.FOSSILIZED):
            return Decision(Action.GERMINATE, slot="mid", blueprint="conv_light")
        return Decision(Action.WAIT)

    def on_outcome(self, decision, outcome):
        self.outcomes.append((decision, outcome))


def _run(tmp_config, epochs):
    torch.manual_seed(0)
    model = TINY_HOSTS["cnn3"].model(
        slots=["mid"], gate_config=permissive_gates(), blending_steps=2
    )
    controller = _Regrow()
    data = toy_image_task(160, size=16)
    data = type(data)(
        data.train_x.expand(-1, 3, -1, -1).contiguous(),
        data.train_y,
        data.val_x.expand(-1, 3, -1, -1).contiguous(),
        data.val_y,
        num_classes=4,
    )
    trainer = Trainer(model, data, tmp_config, controller=controller)
    for _ in range(epochs):
        trainer.run_epoch()
    return trainer, controller


def test_trainer_stacks_seeds_until_max_seeds_and_resumes_exactly():
    config = TrainerConfig(lr=0.05, seed_lr=0.05, batch_size=16, max_seeds=3)
    trainer, controller = _run(config, 14)
    slot = trainer.model.seed_slots["mid"]
    germinated = [o for d, o in controller.outcomes if d.action == Action.GERMINATE and o.applied]
    refused = [o for d, o in controller.outcomes if d.action == Action.GERMINATE and not o.applied]
    assert len(germinated) == 3 == trainer.seed_counter
    assert refused and all("max_seeds" in o.reason for o in refused)
    assert len(slot.fossils) == 2 and slot.stage == S.FOSSILIZED
    # A trainer rebuilt from the state (as --resume does) continues exactly.
    state = copy.deepcopy(trainer.state_dict())
    model_state = copy.deepcopy(trainer.model.state_dict())
    fresh_trainer, _ = _run(config, 0)
    fresh_trainer.model.load_state_dict(model_state)
    fresh_trainer.load_state_dict(state)
    a, b = trainer.run_epoch(), fresh_trainer.run_epoch()
    assert (a.train_loss, a.val_accuracy) == (b.train_loss, b.val_accuracy)
    for (n, p), (_, q) in zip(
        trainer.model.named_parameters(), fresh_trainer.model.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), n


def test_max_seeds_must_not_be_negative():
    with pytest.raises(ValueError, match="max_seeds"):
        TrainerConfig(max_seeds=-1)
