"""The incubator: a seed in TRAINING leaves the host exactly as it would be without it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.leyline import SeedStage

CASES = {
    "cnn3": (lambda: CNNHost(num_classes=10, n_blocks=3, base_channels=4), "conv_heavy"),
    "cnn2": (lambda: CNNHost(num_classes=10, n_blocks=2, base_channels=4), "depthwise"),
    "tf1": (
        lambda: TransformerHost(13, n_embd=16, n_head=2, n_layer=1, block_size=8, dropout=0.0),
        "attention",
    ),
    "tf2": (
        lambda: TransformerHost(13, n_embd=16, n_head=2, n_layer=2, block_size=8, dropout=0.0),
        "mlp",
    ),
}


def _data(topology):
    g = torch.Generator().manual_seed(3)
    if topology == "cnn":
        return torch.randn(6, 3, 12, 12, generator=g), torch.randint(0, 10, (6,), generator=g)
    return torch.randint(0, 13, (3, 8), generator=g), torch.randint(0, 13, (3, 8), generator=g)


def _loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _incubating_model(case):
    make_host, blueprint = CASES[case]
    torch.manual_seed(0)
    host = make_host()
    reference = copy.deepcopy(host)
    model = MorphogeneticModel(host, slots=["early", "mid", "late"])
    for name in ("early", "mid", "late"):
        model.germinate_seed(blueprint, f"seed-{name}", slot=name)
        model.seed_slots[name].advance_stage(SeedStage.TRAINING)
        # Make the seeds non-trivial so an accidental leak into the output would show.
        with torch.no_grad():
            for p in model.seed_slots[name].seed.parameters():
                p.add_(torch.randn_like(p) * 0.5)
    return model, reference


@pytest.mark.parametrize("case", list(CASES))
def test_training_seeds_leave_output_and_host_gradients_unchanged(case):
    model, reference = _incubating_model(case)
    x, y = _data(model.topology)
    out = model(x)
    ref_out = reference(x)
    assert torch.equal(out, ref_out)  # bit for bit: a tolerance would let a 1e-6 leak through
    _loss(out, y).backward()
    _loss(ref_out, y).backward()
    for (name, p), (_, q) in zip(
        model.host.named_parameters(), reference.named_parameters(), strict=True
    ):
        assert p.grad is not None, name
        assert torch.equal(p.grad, q.grad), name
    for name, slot in model.seed_slots.items():
        grads = [p.grad for p in slot.seed.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"seed at {name} did not learn"


@pytest.mark.parametrize("case", list(CASES))
def test_nan_seed_never_reaches_the_host_output(case):
    model, reference = _incubating_model(case)
    slot = model.seed_slots["mid"]
    with torch.no_grad():
        for p in slot.seed.parameters():
            p.fill_(float("nan"))
    x, y = _data(model.topology)
    out = model(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out, reference(x))
    _loss(out, y).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.host.parameters())
    model.capture_gradient_telemetry()
    assert slot.state.metrics.healthy is False
    slot.step_epoch()  # an unhealthy incubating seed is culled, never blended
    assert slot.stage == SeedStage.CULLED


def test_incubating_seed_does_not_touch_host_batchnorm_statistics():
    model, reference = _incubating_model("cnn3")
    x, _ = _data("cnn")
    model.train()
    reference.train()
    model(x)
    reference(x)
    for a, b in zip(model.host.buffers(), reference.buffers(), strict=True):
        assert torch.equal(a, b)


_CHANNELS_LAST_SCRIPT = """
import torch
from esper.kasmina.blueprints import list_blueprints
from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import SeedStage

for blueprint in list_blueprints("cnn"):
    for stage in ("TRAINING", "BLENDING", "FOSSILIZED"):
        torch.manual_seed(0)
        model = MorphogeneticModel(CNNHost(num_classes=10, base_channels=4), slots=["early", "mid"])
        for slot in ("early", "mid"):
            model.germinate_seed(blueprint, f"s-{slot}", slot=slot)
            s = model.seed_slots[slot]
            s.advance_stage(SeedStage.TRAINING)
            if stage != "TRAINING":
                s.state.stage = SeedStage[stage]
                s.isolate_gradients = stage != "FOSSILIZED"
                s.set_alpha(0.5 if stage == "BLENDING" else 1.0)
        model = model.to(memory_format=torch.channels_last)
        x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
        model(x).sum().backward()
print("ok")
"""


def test_channels_last_cpu_training_does_not_crash():
    # CPU group-norm backward segfaults on a channels-last input that needs no gradient (the
    # isolated seed input); run in a child process so a crash is a failure, not a dead runner.
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _CHANNELS_LAST_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
