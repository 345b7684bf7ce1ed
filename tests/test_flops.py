"""Compute accounting: FLOPs counted once per model structure agree with an independent count
over every pass of a run, and with a count done by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import Action, Decision, SeedStage
from esper.testing import permissive_gates, toy_image_task
from esper.tolaria.config import TrainerConfig
from esper.tolaria.flops import FlopMeter
from esper.tolaria.trainer import Trainer


def test_a_linear_layer_costs_what_the_textbook_says():
    layer = nn.Linear(6, 5)
    meter = FlopMeter()
    for rows in (4, 4, 3):  # the first pass is measured, the rest scaled by rows
        x = torch.randn(rows, 6)
        with meter.count("linear", rows):
            layer(x).sum().backward()
    # forward 2*B*in*out; backward only the weight gradient (x needs none): 2*B*in*out again.
    assert meter.total == sum(2 * 2 * rows * 6 * 5 for rows in (4, 4, 3))


def _count_every_pass(trainer: Trainer) -> dict[str, int]:
    """Wrap ``trainer``'s training epochs and evaluations in ``FlopCounterMode``: the returned
    dict accumulates, under ``"train"`` and ``"eval"``, the FLOPs of every pass they run."""
    independent = {"train": 0, "eval": 0}

    def counted(kind, fn):
        def wrapper(*args, **kwargs):
            with FlopCounterMode(display=False) as mode:
                out = fn(*args, **kwargs)
            independent[kind] += mode.get_total_flops()
            return out

        return wrapper

    trainer.train_epoch = counted("train", trainer.train_epoch)
    trainer.evaluate = counted("eval", trainer.evaluate)
    return independent


def test_run_totals_agree_with_an_independent_count_over_every_pass():
    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)
    model = MorphogeneticModel(
        host, slots=["early", "mid"], gate_config=permissive_gates(), blending_steps=2
    )
    # 100 training rows in batches of 16: a short last batch checks the scaling by rows.
    trainer = Trainer(model, toy_image_task(133), TrainerConfig(batch_size=16, lr=0.05))
    independent = _count_every_pass(trainer)
    stages = set()
    grow = {
        1: Decision(Action.GERMINATE, slot="mid", blueprint="conv_light", blend_algorithm="gated"),
        2: Decision(Action.GERMINATE, slot="early", blueprint="attention"),
    }
    for epoch in range(1, 9):
        trainer.observe()
        trainer.apply(grow.get(epoch))
        mid = model.seed_slots["mid"]
        if mid.stage == SeedStage.PROBATIONARY:
            trainer.apply(Decision(Action.FOSSILIZE, slot="mid"))
        stages |= {slot.stage for slot in model.seed_slots.values()}
        trainer.end_epoch()
    assert {SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.FOSSILIZED} <= stages
    assert trainer.train_flops.total > 0 and trainer.eval_flops.total > 0
    # The issue asks for 5%; the count is exact (one measured pass per structure, scaled by
    # rows), so anything but rounding means a structure change was missed.
    assert trainer.train_flops.total == pytest.approx(independent["train"], rel=1e-9)
    assert trainer.eval_flops.total == pytest.approx(independent["eval"], rel=1e-9)
    per_epoch = sum(h.train_flops for h in trainer.history)
    assert per_epoch == trainer.train_flops.total
    assert all(h.params > 0 for h in trainer.history)


def test_stages_without_compute_share_a_structure_and_totals_stay_exact():
    """A culled seed's slot (CULLED, EMBARGOED, RESETTING), a dormant one, and a seed in TRAINING
    in a pass without its shadow pass all compute nothing there: they share one structure, so
    one measured pass covers them. A run through all of them, with the shadow pass every other
    step, still agrees with FlopCounterMode over every pass."""
    from esper.tolaria.flops import model_structure

    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)
    model = MorphogeneticModel(
        host, slots=["early", "mid"], gate_config=permissive_gates(), blending_steps=2
    )
    empty = model_structure(model, training=True)
    model.germinate_seed("conv_light", "s1", slot="mid")
    model.seed_slots["mid"].advance_stage(SeedStage.TRAINING)
    assert model_structure(model, training=True) != empty  # its shadow pass
    assert model_structure(model, training=True, shadows=False) == empty
    assert model_structure(model, training=False) == model_structure(
        MorphogeneticModel(
            CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1),
            slots=["early", "mid"],
        ),
        training=False,
    )
    model.cull_seed(slot="mid")
    assert model_structure(model, training=True) == empty

    trainer = Trainer(
        model, toy_image_task(133), TrainerConfig(batch_size=16, lr=0.05, shadow_every=2)
    )
    independent = _count_every_pass(trainer)
    stages = set()
    for epoch in range(1, 10):
        trainer.observe()
        early = model.seed_slots["early"]
        if epoch in (1, 6):
            trainer.apply(Decision(Action.GERMINATE, slot="early", blueprint="depthwise"))
        elif epoch == 4 and early.seed is not None:
            trainer.apply(Decision(Action.CULL, slot="early"))
        stages |= {slot.stage for slot in model.seed_slots.values()}
        trainer.end_epoch()
    assert {SeedStage.TRAINING, SeedStage.EMBARGOED, SeedStage.DORMANT} <= stages
    assert trainer.train_flops.total == pytest.approx(independent["train"], rel=1e-9)
    assert trainer.eval_flops.total == pytest.approx(independent["eval"], rel=1e-9)


def test_a_host_with_seeds_in_every_stage_at_once_agrees_with_an_independent_count():
    """Four slots, one seed each in TRAINING (shadow pass), BLENDING, PROBATIONARY and
    FOSSILIZED, plus a seed stacked after a fossil: an epoch of training and a validation pass
    are counted per structure and agree with FlopCounterMode over every pass (the issue asks
    for 5%)."""
    from esper.testing import drive_to

    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=4, base_channels=4, pool_layers=2, in_channels=1)
    model = MorphogeneticModel(host, slots=["block1", "block2", "block3", "block4"])
    drive_to(model, "block1", SeedStage.FOSSILIZED)
    drive_to(model, "block1", SeedStage.TRAINING, seed_id="stacked")  # after the fossil
    drive_to(model, "block2", SeedStage.BLENDING)
    drive_to(model, "block3", SeedStage.PROBATIONARY)
    drive_to(model, "block4", SeedStage.FOSSILIZED)
    stages = [slot.stage for slot in model.seed_slots.values()]
    assert stages == [
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
    ]
    trainer = Trainer(model, toy_image_task(133), TrainerConfig(batch_size=16, lr=0.05))
    with FlopCounterMode(display=False) as train_mode:
        trainer.train_epoch()
    with FlopCounterMode(display=False) as eval_mode:
        trainer.evaluate()
    assert trainer.train_flops.total == pytest.approx(train_mode.get_total_flops(), rel=0.05)
    assert trainer.eval_flops.total == pytest.approx(eval_mode.get_total_flops(), rel=0.05)
    # The shadow pass is in the count: the same epoch without the incubating seed costs less.
    model.cull_seed(slot="block1")
    before = trainer.train_flops.total
    trainer.train_epoch()
    assert trainer.train_flops.total - before < before


def test_counterfactual_passes_are_counted_apart_and_cost_one_validation_pass_per_seed():
    from esper.testing import drive_to

    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)
    model = MorphogeneticModel(host, slots=["early", "mid", "late"])
    drive_to(model, "early", SeedStage.BLENDING)
    drive_to(model, "mid", SeedStage.PROBATIONARY)
    drive_to(model, "late", SeedStage.TRAINING)  # no output yet: no counterfactual
    trainer = Trainer(model, toy_image_task(133), TrainerConfig(batch_size=16, lr=0.05))
    trainer.observe()
    epoch = trainer.end_epoch()
    # One validation pass with every seed, one per seed that shapes the output with it off.
    with FlopCounterMode(display=False) as mode:
        for name in ("early", "mid"):
            with model.force_alpha(0.0, slots=[name]):
                trainer.evaluate()
    assert epoch.counterfactual_flops == pytest.approx(mode.get_total_flops(), rel=1e-9)
    assert 0 < epoch.counterfactual_flops < epoch.eval_flops
    assert epoch.counterfactual_seconds > 0
    # A static run measures no counterfactual.
    static = Trainer(
        MorphogeneticModel(CNNHost(4, 3, 4, 2, 1), slots=["mid"]),
        toy_image_task(133),
        TrainerConfig(batch_size=16, lr=0.05),
    )
    static.observe()
    plain = static.end_epoch()
    assert plain.counterfactual_flops == 0 and plain.counterfactual_seconds == 0
