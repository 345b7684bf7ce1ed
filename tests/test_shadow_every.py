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
from esper.runs import RunSpec, resolve_spec, trainer_config
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
    default = resolve_spec(RunSpec("heuristic"))
    assert trainer_config(default, spec).shadow_every == spec.shadow_every
    assert (
        trainer_config(resolve_spec(RunSpec("heuristic", shadow_every=2)), spec).shadow_every == 2
    )
    # A config.json from before the setting existed: every step ran the shadow pass.
    assert RunSpec.from_dict({"mode": "heuristic", "task": "digits"}).shadow_every == 1


def test_an_injected_model_on_dataloaders_skips_the_shadow_pass_too():
    """The same stride for a model given slots by ``inject_slots``: its plain steps are the
    model's own forward, and its host trains as it would without the seed."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from esper import inject_slots
    from esper.kasmina import GateConfig
    from esper.tolaria import LoaderData

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)

    def run(seed: bool) -> dict:
        torch.manual_seed(0)
        body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        model = inject_slots(body, ["1"], torch.randn(2, 6), gate_config=GateConfig())
        if seed:
            drive_to(model, "1", SeedStage.TRAINING, blueprint="mlp")
        train = DataLoader(TensorDataset(x, y), batch_size=16)  # in order: 6 steps
        data = LoaderData(train=train, val=DataLoader(TensorDataset(x, y), batch_size=32))
        trainer = Trainer(model, data, TrainerConfig(lr=0.05, shadow_every=3, telemetry_stride=0))
        if seed:
            trainer.optimizers.add_seed("1", model.seed_parameters("1"))
            assert _shadow_steps(trainer) == [0, 3]
        else:
            trainer.train_epoch()
        return {k: v.clone() for k, v in model.host_state_dict().items()}

    alone, grown = run(False), run(True)
    assert alone.keys() == grown.keys()
    assert all(torch.equal(alone[k], grown[k]) for k in alone)
