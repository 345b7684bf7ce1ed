"""Blueprints (registry, shape, identity start, causality) and blending (ramps that start at 0 and
end at exactly 1, the gated blend's gate trains, the reported alpha is the alpha used)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import drive_to
from esper.kasmina import BLEND_ALGORITHMS, blueprint_costs, build_blend, get_blueprint
from esper.kasmina import list_blueprints as blueprints_of
from esper.kasmina.blending import GatedBlend
from esper.leyline import SeedStage
from esper.testing import host_output

S = SeedStage
REQUIRED = {
    "cnn": {"noop", "norm", "attention", "depthwise", "conv_light", "conv_heavy"},
    "transformer": {"noop", "norm", "lora", "attention", "mlp"},
}


def _features(topology: str, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = {"cnn": (3, width, 5, 5), "transformer": (3, 6, width), "mlp": (3, width)}[topology]
    return torch.randn(shape, generator=gen)


@contextlib.contextmanager
def slot_io(slot):
    seen = {}
    handle = slot.register_forward_hook(lambda m, a, o: seen.update(inp=a[0], out=o))
    try:
        yield seen
    finally:
        handle.remove()


# --- blueprints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_required_blueprints_are_registered(topology):
    assert REQUIRED[topology] <= set(blueprints_of(topology))


def test_unknown_topology_and_blueprint_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="cnn"):
        blueprints_of("rnn")
    with pytest.raises(ValueError) as err:
        get_blueprint("transformer", "conv_heavy")
    assert all(name in str(err.value) for name in REQUIRED["transformer"])
    assert "depthwise" not in str(err.value)


@pytest.mark.parametrize("topology", ["cnn", "transformer", "mlp"])
@pytest.mark.parametrize("width", [4, 8, 16])
def test_blueprints_preserve_shape_and_start_as_identity(topology, width):
    x = _features(topology, width)
    for name in blueprints_of(topology):
        torch.manual_seed(0)
        seed = get_blueprint(topology, name).build(width)
        out = seed(x)
        assert out.shape == x.shape, name
        torch.testing.assert_close(out, x, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("topology", ["cnn", "transformer", "mlp"])
def test_blueprint_costs_match_built_seeds(topology):
    width = 16
    costs = blueprint_costs(topology, width)
    assert list(costs) == blueprints_of(topology)
    assert costs["noop"] == 0
    for name, cost in costs.items():
        seed = get_blueprint(topology, name).build(width)
        assert cost == sum(p.numel() for p in seed.parameters()), name
    if topology == "cnn":
        assert costs["conv_light"] < costs["conv_heavy"]


@pytest.mark.parametrize("name", ["noop", "norm", "lora", "attention", "mlp"])
def test_transformer_blueprints_are_causal(name):
    torch.manual_seed(0)
    seed = get_blueprint("transformer", name).build(16)
    perturb = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in seed.parameters():
            p.add_(torch.randn(p.shape, generator=perturb) * 0.3)
    x = _features("transformer", 16)
    changed = x.clone()
    changed[:, 4:] += 1.0
    assert torch.equal(seed(changed)[:, :4], seed(x)[:, :4])  # masked, not merely small


# --- schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", BLEND_ALGORITHMS)
@pytest.mark.parametrize("total", [1, 2, 3, 5, 10, 37])
def test_ramps_start_at_zero_end_at_exactly_one_and_rise(algorithm, total):
    blend = build_blend(algorithm, 8, "cnn")
    values = [blend.schedule(step, total) for step in range(total + 1)]
    assert values[0] == 0.0
    assert values[-1] == 1.0
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    assert blend.schedule(total + 3, total) == 1.0


def test_unknown_blend_algorithm_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        build_blend("cosine", 8, "cnn")
    assert all(a in str(err.value) for a in BLEND_ALGORITHMS)


@pytest.mark.parametrize("topology", ["cnn", "transformer"])
def test_gated_alpha_is_exact_at_the_ends_and_bounded_between(topology):
    torch.manual_seed(0)
    blend = GatedBlend(8, topology)
    with torch.no_grad():
        blend.gate.weight.normal_(0, 3.0)
        blend.gate.bias.fill_(1.5)
    x = _features(topology, 8)
    assert (blend.alpha(x, torch.tensor(0.0)) == 0.0).all()
    assert (blend.alpha(x, torch.tensor(1.0)) == 1.0).all()
    for r in (0.1, 0.5, 0.9):
        a = blend.alpha(x, torch.tensor(r))
        assert (a >= r * r - 1e-7).all() and (a <= r * (2 - r) + 1e-7).all()
        assert a.std() > 0  # it really is per sample / per position


def test_gated_alpha_is_causal_for_transformers():
    torch.manual_seed(0)
    blend = GatedBlend(8, "transformer")
    with torch.no_grad():
        blend.gate.weight.normal_()
    x = _features("transformer", 8)
    changed = x.clone()
    changed[:, 3:] -= 2.0
    ramp = torch.tensor(0.5)
    assert torch.equal(blend.alpha(changed, ramp)[:, :3], blend.alpha(x, ramp)[:, :3])


@pytest.mark.parametrize("algorithm", BLEND_ALGORITHMS)
def test_lifecycle_ramp_goes_from_exactly_zero_to_exactly_one(tiny, algorithm):
    model = tiny.model(slots=["mid"])
    slot = drive_to(model, "mid", S.TRAINING, blend=algorithm)
    assert slot.alpha == 0.0 and float(slot.alpha_tensor) == 0.0
    slot.state.metrics.gradient_ratio = 1.0
    slot.record_incubation_gain(0.1)
    while slot.stage == S.TRAINING:
        model.step_epoch()
    alphas = [slot.alpha]
    while slot.stage == S.BLENDING:
        model.step_epoch()
        alphas.append(slot.alpha)
    assert 0.0 < alphas[0] < 1.0
    assert alphas == sorted(alphas)
    assert slot.stage == S.PROBATIONARY and slot.alpha == 1.0
    assert float(slot.alpha_tensor) == 1.0 and slot.state.metrics.current_alpha == 1.0
    slot.state.metrics.counterfactual_contribution = 2.0
    model.fossilize_seed(slot="mid")
    assert slot.alpha == 1.0 and float(slot.alpha_tensor) == 1.0


# --- gated blend trains; reported alpha is the alpha used -------------------------------------


def test_gated_blend_parameters_are_seed_parameters_and_learn(tiny):
    model = tiny.model(slots=["mid"])
    slot = drive_to(model, "mid", S.BLENDING, blend="gated")
    slot.set_alpha(0.5)
    gate_params = list(slot.blend.parameters())
    assert gate_params
    seed_ids = {id(p) for p in model.seed_parameters()}
    assert all(id(p) in seed_ids for p in gate_params)
    assert not {id(p) for p in model.host_parameters()} & {id(p) for p in gate_params}
    assert slot.report().seed_params == sum(p.numel() for p in model.seed_parameters())

    before = [p.detach().clone() for p in gate_params]
    opt = torch.optim.SGD(model.seed_parameters(), lr=0.5)
    x, y = tiny.inputs(), tiny.targets()
    tiny.loss(model(x), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate_params)
    opt.step()
    assert any(not torch.equal(p, b) for p, b in zip(gate_params, before, strict=True))


@pytest.mark.parametrize("algorithm", ["linear", "sigmoid"])
def test_reported_alpha_is_the_alpha_used_for_schedules(tiny, algorithm):
    model = tiny.model(slots=["mid"])
    slot = drive_to(model, "mid", S.BLENDING, blend=algorithm)
    model.eval()
    x = tiny.inputs()
    for _ in range(2):
        with slot_io(slot) as seen:
            model(x)
        report = slot.report()
        h = seen["inp"]
        expected = torch.lerp(h, slot.seed(h), torch.tensor(report.alpha))
        assert torch.equal(seen["out"], expected)
        assert report.metrics.current_alpha == report.alpha
        # The alpha used is the reported one, held in the model's dtype.
        assert torch.tensor(report.alpha, dtype=slot.alpha_tensor.dtype) == slot.alpha_tensor
        slot.step_epoch()


def test_reported_alpha_is_the_alpha_used_for_the_gated_blend(tiny):
    model = tiny.model(slots=["mid"])
    slot = drive_to(model, "mid", S.BLENDING, blend="gated")
    slot.set_alpha(0.6)
    with torch.no_grad():
        slot.blend.gate.bias.fill_(2.0)  # a decidedly non-neutral gate
    x, y = tiny.inputs(), tiny.targets()
    with slot_io(slot) as seen:
        out = model(x)
    tiny.loss(out, y).backward()
    slot.capture_gradient_telemetry()
    h = seen["inp"]
    with torch.no_grad():
        used = slot.blend.alpha(h, slot.alpha_tensor)
        torch.testing.assert_close(seen["out"], torch.lerp(h, slot.seed(h), used))
    reported = slot.report().metrics.current_alpha
    assert reported == pytest.approx(float(used.mean()), abs=1e-6)
    assert reported > 0.6 + 0.05  # the gate pushed it above the schedule, and that is reported


@settings(max_examples=200, deadline=None)
@given(
    alpha=st.floats(0.0, 1.0),
    scale=st.floats(-3.0, 3.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_lerp_with_a_float_weight_has_the_bits_of_the_alpha_buffer(alpha, scale, dtype):
    """A scheduled blend passes alpha to ``lerp`` as a Python float (holding the buffer's
    value), so that its backward forms ``1 - alpha`` on the host: output and both gradients
    must be bit for bit what the 0-dim buffer as the weight gives."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, dtype=dtype, generator=gen) * 10**scale).requires_grad_()
    y = torch.randn(64, dtype=dtype, generator=gen).requires_grad_()
    grad = torch.randn(64, dtype=dtype, generator=gen)
    buffer = torch.tensor(alpha, dtype=dtype)
    results = []
    for weight in (buffer, buffer.item()):
        out = torch.lerp(x, y, weight)
        results.append((out, *torch.autograd.grad(out, (x, y), grad)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.1, 1 / 3, 0.7])
def test_scheduled_blend_gives_the_bits_of_the_alpha_buffer(tiny_cnn, monkeypatch, alpha, dtype):
    """The eager forward's float alpha against the buffer a compiled forward reads: the same
    output and the same gradient for every parameter, in the model's dtype."""
    model = tiny_cnn.model(slots=["mid"]).to(dtype)
    slot = drive_to(model, "mid", S.BLENDING, blend="linear")
    slot.set_alpha(alpha)
    x, y = tiny_cnn.inputs().to(dtype), tiny_cnn.targets()
    runs = []
    for compiling in (False, True):  # True: the buffer path a compiled graph traces
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
        model.zero_grad(set_to_none=True)
        out = model(x)
        tiny_cnn.loss(out, y).backward()
        runs.append([out.detach(), *(p.grad.clone() for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    # A new alpha, or alpha written to the state by hand, is what the next forward uses.
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    slot.state.alpha = 0.25
    assert slot._alpha_weight(dtype) == torch.tensor(0.25, dtype=torch.float32).to(dtype).item()


def test_forced_alpha_is_used_and_restored(tiny):
    model = tiny.model(slots=["mid"])
    slot = drive_to(model, "mid", S.BLENDING, blend="gated")
    slot.set_alpha(0.4)
    model.eval()
    x = tiny.inputs()
    blended = model(x)
    with model.force_alpha(0.0):
        assert torch.equal(model(x), host_output(model, x))
    assert slot.alpha == 0.4 and torch.equal(model(x), blended)


def test_wide_blueprint_adds_a_branch_twice_the_slot_width_and_starts_as_identity():
    from esper.kasmina.blueprints import get_blueprint
    from esper.tamiyo.heuristic import HeuristicConfig, HeuristicController

    seed = get_blueprint("cnn", "wide").build(8)
    convs = [m for m in seed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 8]
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(seed(x), x)  # zero-initialized projection: function-preserving
    # Opt-in: the heuristic's default set is the measured one; naming it makes it a choice.
    assert "wide" not in HeuristicController("cnn").blueprints
    chosen = HeuristicController("cnn", HeuristicConfig(blueprints=("wide",))).blueprints
    assert chosen == ("wide",)
