"""``TrainerConfig.shadow_every``: an incubating seed's shadow pass on every N-th step only.

The claims: the host trains exactly as it would without the seed whatever N is; the seed learns
on the shadow steps alone (and on every telemetry capture step, so its gradient is measured);
the FLOP count follows what ran; a run takes the task's setting or its own, and a run written
before the setting existed resumes on every step (``test_cli`` checks the bad-input line).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import SeedStage
from esper.scripts.train import RunConfig
from esper.testing import drive_to, toy_image_task
from esper.tolaria.config import TrainerConfig
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import Trainer


def _trainer(*, seed: bool, shadow_every: int, stride: int = 0) -> Trainer:
    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)
    model = MorphogeneticModel(host, slots=["early", "late"])
    if seed:
        drive_to(model, "early", SeedStage.TRAINING, blueprint="conv_light")
    config = TrainerConfig(
        batch_size=8, lr=0.05, telemetry_stride=stride, shadow_every=shadow_every
    )
    # 96 rows: 72 training rows, 9 steps an epoch.
    trainer = Trainer(model, toy_image_task(96), config)
    if seed:  # grown before the trainer existed: give its parameters to the seed optimizer
        trainer.optimizers.add_seed("early", model.seed_parameters("early"))
    return trainer


def _shadow_steps(trainer: Trainer) -> list[int]:
    """The global steps whose pass ran ``forward_with_shadows`` in the next epoch."""
    steps = []
    model = trainer.model
    real = model.forward_with_shadows

    def spy(x):
        steps.append(trainer.global_step)
        return real(x)

    model.forward_with_shadows = spy
    try:
        trainer.train_epoch()
    finally:
        del model.forward_with_shadows
    return steps


@pytest.mark.parametrize("every", [2, 3])
def test_the_host_trains_exactly_as_without_the_seed_whatever_the_shadow_stride(every):
    alone = _trainer(seed=False, shadow_every=1)
    with_seed = _trainer(seed=True, shadow_every=every)
    for _ in range(2):
        alone.train_epoch()
        with_seed.train_epoch()
    host, other = alone.model.host_state_dict(), with_seed.model.host_state_dict()
    assert host.keys() == other.keys()
    for key in host:
        assert torch.equal(host[key], other[key]), key


def test_the_seed_learns_on_shadow_steps_only():
    trainer = _trainer(seed=True, shadow_every=3)
    slot = trainer.model.seed_slots["early"]
    changed = []
    before = [p.detach().clone() for p in slot.seed.parameters()]
    real_step = trainer.optimizers.step

    def step():
        real_step()
        now = [p.detach().clone() for p in slot.seed.parameters()]
        changed.append(any(not torch.equal(a, b) for a, b in zip(before, now, strict=True)))
        before[:] = now

    trainer.optimizers.step = step
    shadow = _shadow_steps(trainer)
    assert shadow == [0, 3, 6]
    assert changed == [step in shadow for step in range(9)]


def test_a_telemetry_capture_step_always_runs_the_shadow_pass():
    trainer = _trainer(seed=True, shadow_every=4, stride=5)
    assert _shadow_steps(trainer) == [0, 4, 5, 8]
    metrics = trainer.model.seed_slots["early"].state.metrics
    assert metrics.gradient_captures == 2
    # Measured on a step where the seed had a gradient (0 would fail G2's gradient ratio).
    assert metrics.seed_gradient_norm > 0 and metrics.gradient_ratio > 0


def test_every_step_runs_it_when_the_stride_is_one_or_no_seed_incubates():
    assert _shadow_steps(_trainer(seed=True, shadow_every=1)) == list(range(9))
    # Without an incubating seed the pass is the plain one either way (nothing to skip).
    assert _shadow_steps(_trainer(seed=False, shadow_every=3)) == list(range(9))


def test_the_flop_count_follows_what_ran():
    counts = {}
    for every in (1, 3):
        trainer = _trainer(seed=True, shadow_every=every)
        with FlopCounterMode(display=False) as mode:
            trainer.train_epoch()
        assert trainer.train_flops.total == pytest.approx(mode.get_total_flops(), rel=1e-9)
        counts[every] = trainer.train_flops.total
    plain = _trainer(seed=False, shadow_every=1)
    plain.train_epoch()
    # 3 shadow steps of 9 instead of 9: the shadow's share of the epoch falls to a third.
    shadow_share = counts[1] - plain.train_flops.total
    assert counts[3] - plain.train_flops.total == pytest.approx(shadow_share / 3, rel=1e-9)


def test_the_setting_is_validated_and_reaches_the_trainer():
    with pytest.raises(ValueError, match="shadow_every must be >= 1"):
        TrainerConfig(shadow_every=0)
    spec = get_task("digits")
    assert RunConfig("heuristic").trainer_config(spec, 3).shadow_every == spec.shadow_every
    assert RunConfig("heuristic", shadow_every=2).trainer_config(spec, 3).shadow_every == 2
    # A config.json from before the setting existed: every step ran the shadow pass.
    assert RunConfig.from_dict({"mode": "heuristic", "task": "digits"}).shadow_every == 1
