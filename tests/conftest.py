"""Shared tiny hosts for the core tests: a matrix of CNN and transformer hosts small enough that a
whole lifecycle runs in milliseconds on a CPU.

Every host is built right after ``torch.manual_seed``, so building the same spec twice gives
bit-identical weights (a "fresh process" stand-in for checkpoint tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost

VOCAB_SIZE = 17
NUM_CLASSES = 10
CNN_INPUT_SHAPE = (4, 3, 16, 16)
TF_INPUT_SHAPE = (4, 8)


@dataclass(frozen=True)
class TinyHost:
    """A recipe for one tiny host: how to build it, feed it and score it."""

    name: str
    topology: str
    factory: Callable[..., nn.Module]
    kwargs: dict = field(default_factory=dict)

    def build(self, seed: int = 0) -> nn.Module:
        """A fresh host; the same ``seed`` always gives the same weights."""
        torch.manual_seed(seed)
        return self.factory(**self.kwargs)

    def model(self, slots: Iterable[str] = ("mid",), seed: int = 0, **kwargs) -> MorphogeneticModel:
        """A fresh ``MorphogeneticModel`` around ``build(seed)``."""
        return MorphogeneticModel(self.build(seed), slots=list(slots), **kwargs)

    def inputs(self, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        if self.topology == "cnn":
            return torch.randn(CNN_INPUT_SHAPE, generator=gen)
        return torch.randint(0, VOCAB_SIZE, TF_INPUT_SHAPE, generator=gen)

    def targets(self, seed: int = 2) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        if self.topology == "cnn":
            return torch.randint(0, NUM_CLASSES, (CNN_INPUT_SHAPE[0],), generator=gen)
        return torch.randint(0, VOCAB_SIZE, TF_INPUT_SHAPE, generator=gen)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.topology == "cnn":
            return (CNN_INPUT_SHAPE[0], NUM_CLASSES)
        return (*TF_INPUT_SHAPE, VOCAB_SIZE)

    @staticmethod
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))


def _tf_kwargs(n_layer: int) -> dict:
    return {
        "vocab_size": VOCAB_SIZE,
        "n_embd": 16,
        "n_head": 2,
        "n_layer": n_layer,
        "block_size": 8,
        "dropout": 0.0,
    }


TINY_HOSTS: dict[str, TinyHost] = {
    "cnn3": TinyHost(
        "cnn3",
        "cnn",
        CNNHost,
        {"num_classes": NUM_CLASSES, "n_blocks": 3, "base_channels": 4, "in_channels": 3},
    ),
    "cnn2": TinyHost(
        "cnn2",
        "cnn",
        CNNHost,
        {"num_classes": NUM_CLASSES, "n_blocks": 2, "base_channels": 4, "in_channels": 3},
    ),
    "tf1": TinyHost("tf1", "transformer", TransformerHost, _tf_kwargs(1)),
    "tf2": TinyHost("tf2", "transformer", TransformerHost, _tf_kwargs(2)),
}
CNN_HOSTS = [k for k, v in TINY_HOSTS.items() if v.topology == "cnn"]
TF_HOSTS = [k for k, v in TINY_HOSTS.items() if v.topology == "transformer"]


def pytest_configure(config) -> None:
    # The tensors here are tiny: intra-op threads only add overhead, and on a shared machine
    # they contend badly (a 4x3x16x16 conv measured 20x slower with 2 threads than with 1).
    torch.set_num_threads(1)


@pytest.fixture(params=list(TINY_HOSTS))
def tiny(request) -> TinyHost:
    """Every tiny host (2- and 3-block CNN, 1- and 2-layer transformer)."""
    torch.manual_seed(0)
    return TINY_HOSTS[request.param]


@pytest.fixture(params=CNN_HOSTS)
def tiny_cnn(request) -> TinyHost:
    torch.manual_seed(0)
    return TINY_HOSTS[request.param]


@pytest.fixture(params=TF_HOSTS)
def tiny_tf(request) -> TinyHost:
    torch.manual_seed(0)
    return TINY_HOSTS[request.param]


@pytest.fixture
def cnn_host() -> CNNHost:
    """CNNHost(num_classes=10, n_blocks=3, base_channels=4, in_channels=3)."""
    return TINY_HOSTS["cnn3"].build()


@pytest.fixture
def cnn2_host() -> CNNHost:
    return TINY_HOSTS["cnn2"].build()


@pytest.fixture
def tf1_host() -> TransformerHost:
    return TINY_HOSTS["tf1"].build()


@pytest.fixture
def tf2_host() -> TransformerHost:
    return TINY_HOSTS["tf2"].build()


@pytest.fixture
def cnn_input() -> torch.Tensor:
    """A (4, 3, 16, 16) image batch."""
    return TINY_HOSTS["cnn3"].inputs()


@pytest.fixture
def tf_input() -> torch.Tensor:
    """A (4, 8) batch of token ids below 17."""
    return TINY_HOSTS["tf1"].inputs()


# --- lifecycle helpers shared by the test files -------------------------------------------------


def pass_g2_metrics(slot) -> None:
    """Make G2 pass: enough epochs, a real improvement, a learning seed, no leaks."""
    m = slot.state.metrics
    m.record_accuracy(50.0)
    m.accuracy_at_stage_start = 50.0
    m.record_accuracy(52.0)
    m.epochs_in_current_stage = max(m.epochs_in_current_stage, 3)
    m.gradient_ratio = 1.0
    m.isolation_violations = 0


def perturb_seed(slot, scale: float = 0.5, seed: int = 123) -> None:
    """Give every seed (and gate) parameter random values so the seed is no longer identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in slot.seed_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


DEFAULT_BLUEPRINT = {"cnn": "conv_light", "transformer": "mlp"}


def drive_to(model, slot: str, target, *, blueprint: str | None = None, blend: str = "linear"):
    """Take ``slot`` from DORMANT to ``target`` through the public lifecycle API only.

    Returns the slot. Seeds reaching BLENDING or later are perturbed so they change the output.
    """
    from esper.leyline import SeedStage as S

    s = model.seed_slots[slot]
    target = S(target)
    assert s.stage == S.DORMANT, f"drive_to starts from DORMANT, slot is {s.stage.name}"
    if target == S.DORMANT:
        return s
    blueprint = blueprint or DEFAULT_BLUEPRINT[model.topology]
    model.germinate_seed(blueprint, f"seed-{slot}", slot=slot, blend_algorithm_id=blend)
    if target == S.GERMINATED:
        return s
    if target in (S.CULLED, S.EMBARGOED, S.RESETTING):
        model.cull_seed(slot=slot)
        if target == S.CULLED:
            return s
        s.step_epoch()
        while target == S.RESETTING and s.stage == S.EMBARGOED:
            s.step_epoch()
        assert s.stage == target
        return s
    assert s.advance_stage(S.TRAINING).passed
    if target == S.TRAINING:
        return s
    pass_g2_metrics(s)
    assert s.advance_stage(S.BLENDING).passed
    perturb_seed(s)
    if target == S.BLENDING:
        return s
    for _ in range(s.blending_steps + 3):
        s.step_epoch()
        if s.stage == S.PROBATIONARY:
            break
    assert s.stage == S.PROBATIONARY
    if target == S.PROBATIONARY:
        return s
    s.state.metrics.counterfactual_contribution = 2.0
    model.fossilize_seed(slot=slot)
    assert s.stage == S.FOSSILIZED == target
    return s
