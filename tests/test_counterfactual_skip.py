"""Counterfactual passes only where they are read: under a controller that reads a seed's
contribution once it has left BLENDING (the heuristic), the BLENDING epochs before the last are
not measured, and the run is otherwise the same run, bit for bit."""

from __future__ import annotations

import torch

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import SeedStage
from esper.simic.env import EpisodeConfig, episode_trainer
from esper.tamiyo import HeuristicController
from esper.testing import drive_to, permissive_gates
from esper.tolaria.tasks import get_task


class _ReadsEveryEpoch(HeuristicController):
    reads_blending_counterfactuals = True


def _run(controller_class, seed: int):
    config = EpisodeConfig("digits", epochs=30)
    controller = controller_class(get_task("digits").topology, seed=seed)
    trainer = episode_trainer(config, seed, {}, controller=controller)
    measured = []
    for _ in range(config.resolved_epochs()):
        trainer.run_epoch()
        measured.append(trainer.history[-1].counterfactual_flops > 0)
    trainer.close()
    return trainer, measured


def test_the_heuristic_run_is_the_same_run_with_fewer_counterfactual_passes():
    # Seed 1 of digits fossilizes a seed and culls others in probation (measured).
    lean, lean_measured = _run(HeuristicController, 1)
    full, full_measured = _run(_ReadsEveryEpoch, 1)
    lean_state, full_state = lean.model.state_dict(), full.model.state_dict()
    assert lean_state.keys() == full_state.keys()
    for key, value in lean_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, full_state[key]), key
    # Every slot where it was; only a seed still blending at the end may lack a measurement.
    for name, slot in lean.model.seed_slots.items():
        other = full.model.seed_slots[name].state
        assert (slot.state.stage, slot.state.seed_id) == (other.stage, other.seed_id)
        assert slot.state.metrics.incubation_gain == other.metrics.incubation_gain
    assert [r.final_stage for r in lean.records.values()] == [
        r.final_stage for r in full.records.values()
    ]
    assert "FOSSILIZED" in {r.final_stage for r in lean.records.values()}
    assert [h.val_loss for h in lean.history] == [h.val_loss for h in full.history]
    assert lean.train_flops.total == full.train_flops.total
    # Fewer passes, never where the full run had none, and some still (probation reads them).
    assert 0 < sum(lean_measured) < sum(full_measured)
    assert all(f or not m for m, f in zip(lean_measured, full_measured, strict=True))
    assert lean.eval_flops.total < full.eval_flops.total


def _host() -> CNNHost:
    return CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)


def test_the_last_blending_epoch_is_the_one_measured():
    torch.manual_seed(0)
    model = MorphogeneticModel(_host(), slots=["mid"], blending_steps=4)
    drive_to(model, "mid", SeedStage.BLENDING)
    slot = model.seed_slots["mid"]
    seen = []
    while slot.stage == SeedStage.BLENDING:
        seen.append(slot.may_leave_blending_this_epoch())
        slot.step_epoch()
    # Default G3: three epochs blending, alpha >= 0.95 and the 4-step ramp done.
    assert seen[-1] and not any(seen[:-1]) and len(seen) >= 3
    assert slot.stage == SeedStage.PROBATIONARY
    assert not slot.may_leave_blending_this_epoch()  # not blending any more
    # Gates that ask for nothing may let a seed go after its first epoch: measured then.
    model = MorphogeneticModel(_host(), slots=["mid"], gate_config=permissive_gates())
    drive_to(model, "mid", SeedStage.BLENDING)
    slot = model.seed_slots["mid"]
    assert slot.may_leave_blending_this_epoch()
    slot.step_epoch()
    assert slot.stage == SeedStage.PROBATIONARY
