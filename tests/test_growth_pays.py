"""Issue 12: incubation converges, blending does not shock the host, and a seed that only makes
the host depend on it cannot fossilize.

Real (small) training runs through the Trainer: a CNN on a learnable toy image task and a
transformer on a character LM over CPython's bundled reference text.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper.kasmina import GateConfig
from esper.kasmina.blueprints import _REGISTRY, register_blueprint
from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.leyline import Action, Decision, SeedStage
from esper.testing import toy_image_task
from esper.tolaria.config import TrainerConfig
from esper.tolaria.data import _pydoc_text, char_lm_data
from esper.tolaria.trainer import Trainer

S = SeedStage
EPOCHS = 12
GERMINATE_AT = 4


class Script:
    """Germinates one seed at a given epoch; asks to fossilize whenever it is in probation."""

    def __init__(self, slot: str, blueprint: str, at: int = GERMINATE_AT) -> None:
        self.slot, self.blueprint, self.at = slot, blueprint, at
        self.outcomes = []

    def decide(self, signals):
        if signals.epoch == self.at:
            return Decision(Action.GERMINATE, slot=self.slot, blueprint=self.blueprint)
        if any(r.slot == self.slot and r.stage == S.PROBATIONARY for r in signals.slots):
            return Decision(Action.FOSSILIZE, slot=self.slot)
        return Decision(Action.WAIT)

    def on_outcome(self, decision, outcome):
        self.outcomes.append((decision, outcome))


def _cnn_case():
    data = toy_image_task(2400, seed=0, size=8)
    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=3, base_channels=8, pool_layers=2, in_channels=1)
    config = TrainerConfig(lr=0.05, seed_lr=0.05, batch_size=32, total_epochs=EPOCHS)
    return host, data, config, "early", "conv_light"


def _transformer_case():
    text = _pydoc_text()[:400_000]
    data = char_lm_data(text, block_size=32, seed=0, n_train_windows=2048, max_val_windows=256)
    torch.manual_seed(0)
    host = TransformerHost(
        data.num_classes, n_embd=32, n_head=4, n_layer=2, block_size=32, dropout=0.0
    )
    config = TrainerConfig(
        optimizer="adamw",
        lr=3e-3,
        seed_lr=3e-3,
        batch_size=32,
        total_epochs=EPOCHS,
        epoch_samples=1024,
    )
    return host, data, config, "mid", "mlp"


# G2 asks for four epochs of incubation and nothing else: these tests are about what the
# incubator does with a seed, whatever its gain, so the seed must reach BLENDING.
_BLEND_AFTER_FOUR_EPOCHS = GateConfig(
    g2_min_incubation_gain=-math.inf, g2_min_training_epochs=4, g2_min_gradient_ratio=0.0
)


@pytest.mark.parametrize("case", [_cnn_case, _transformer_case], ids=["cnn", "transformer"])
def test_incubation_converges_and_blending_costs_no_training_accuracy(case):
    host, data, config, slot_name, blueprint = case()
    model = MorphogeneticModel(host, slots=[slot_name], gate_config=_BLEND_AFTER_FOUR_EPOCHS)
    trainer = Trainer(model, data, config, controller=Script(slot_name, blueprint))
    slot = model.seed_slots[slot_name]
    residuals: dict[int, float] = {}  # epoch -> max ||seed(x) - x|| / ||x|| over its batches

    def watch(module, inputs, output):
        x = inputs[0].detach()
        ratio = float((output.detach() - x).norm() / x.norm())
        residuals[trainer.epoch] = max(residuals.get(trainer.epoch, 0.0), ratio)

    stages, train_accuracy = {}, {}
    hook = None
    for _ in range(EPOCHS):
        if slot.seed is not None and hook is None:
            hook = slot.seed.register_forward_hook(watch)
        stage = slot.stage
        result = trainer.run_epoch()
        stages[result.epoch], train_accuracy[result.epoch] = stage, result.train_accuracy
    training = [e for e, s in stages.items() if s == S.TRAINING]
    blending = [e for e, s in stages.items() if s == S.BLENDING]
    assert len(training) == 4 and blending, stages

    # Bounded through TRAINING: the straight-through incubator's residual grew tenfold per epoch.
    incubating = [residuals[e] for e in training]
    assert all(0.0 <= r < 1.0 for r in incubating), incubating
    assert incubating[-1] <= 2 * max(incubating[0], 0.05), incubating
    # The first blended epoch costs at most one point of training accuracy.
    last_training, first_blended = training[-1], blending[0]
    assert first_blended == last_training + 1
    drop = train_accuracy[last_training] - train_accuracy[first_blended]
    assert drop <= 1.0, (train_accuracy[last_training], train_accuracy[first_blended])


class FixedPerturbation(nn.Module):
    """``x + conv(x)`` with a large random kernel that never trains: it adds nothing a host could
    use, but a host that adapts to it comes to depend on it."""

    def __init__(self, width: int, scale: float = 3.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        kernel = torch.randn(width, width, 3, 3, generator=gen) * scale / math.sqrt(9 * width)
        self.register_buffer("kernel", kernel)
        # One parameter, so the seed has an optimizer group and telemetry like any other.
        self.idle = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.conv2d(x, self.kernel, padding=1) + 0.0 * self.idle


@pytest.fixture
def perturbation_blueprint():
    register_blueprint("cnn", "test_perturbation", "test only")(FixedPerturbation)
    yield "test_perturbation"
    _REGISTRY["cnn"].pop("test_perturbation", None)


def test_a_seed_the_host_only_depends_on_cannot_fossilize(perturbation_blueprint):
    """G2 is opened so the perturbation blends in; the host adapts to it, so removing it (the
    alpha-0 counterfactual) costs far more than G5's contribution threshold. G5 must still
    refuse: what the seed added before the host could adapt was negative."""
    host, data, config, _, _ = _cnn_case()
    gates = GateConfig(
        g2_min_incubation_gain=-math.inf, g2_min_training_epochs=2, g2_min_gradient_ratio=0.0
    )
    model = MorphogeneticModel(host, slots=["early"], gate_config=gates, blending_steps=3)
    controller = Script("early", perturbation_blueprint)
    trainer = Trainer(model, data, config, controller=controller)
    slot = model.seed_slots["early"]
    contributions = []
    for _ in range(14):
        trainer.run_epoch()
        assert slot.stage != S.FOSSILIZED
        if slot.stage == S.PROBATIONARY:
            contributions.append(slot.state.metrics.counterfactual_contribution)
    record = next(iter(trainer.records.values()))
    assert "PROBATIONARY" in record.stages
    # The dependency is real: the old G5 (contribution >= 1 point) would have fossilized it.
    assert contributions and min(contributions) >= 10 * gates.g5_min_contribution, contributions
    refusals = [o for d, o in controller.outcomes if d.action == Action.FOSSILIZE]
    assert refusals and not any(o.applied for o in refusals)
    assert all("incubation_gain" in o.reason for o in refusals), refusals[0].reason
    assert record.final_stage in ("CULLED", "EMBARGOED", "RESETTING", "DORMANT")
