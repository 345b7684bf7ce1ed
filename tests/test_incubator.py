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


def _train_step(model, x, y):
    out, shadows = model.forward_with_shadows(x)
    loss = _loss(out, y) + model.incubation_loss(lambda o: _loss(o, y), out, shadows)
    loss.backward()
    return out, shadows


@pytest.mark.parametrize("case", list(CASES))
def test_training_seeds_leave_output_gradients_and_buffers_unchanged_over_steps(case):
    """Four SGD steps with three incubating seeds learning in the shadow pass: the host's output,
    gradients, weights and buffers stay bit-identical to the host trained alone."""
    model, reference = _incubating_model(case)
    x, y = _data(model.topology)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    seeds_before = [p.detach().clone() for p in model.seed_parameters()]
    for _ in range(4):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        out, shadows = _train_step(model, x, y)
        ref_out = reference(x)
        _loss(ref_out, y).backward()
        assert set(shadows) == {"early", "mid", "late"}
        assert torch.equal(out, ref_out)  # bit for bit: a tolerance would let a leak through
        for (name, p), (_, q) in zip(
            model.host.named_parameters(), reference.named_parameters(), strict=True
        ):
            assert torch.equal(p.grad, q.grad), name
        opt.step()
        ref_opt.step()
    for a, b in zip(model.host.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    moved = [
        not torch.equal(a, b) for a, b in zip(seeds_before, model.seed_parameters(), strict=True)
    ]
    assert any(moved), "no seed learned from its shadow loss"
    for name, slot in model.seed_slots.items():
        grads = [p.grad for p in slot.seed.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


@pytest.mark.parametrize("case", list(CASES))
def test_shadow_output_is_the_output_with_the_seed_blended_at_alpha_one(case):
    """What the seed learns from is what blending will do: its shadow output equals the model's
    output once that seed is BLENDING at alpha 1 (the other seeds still incubating)."""
    model, _ = _incubating_model(case)
    model.eval()  # running statistics: the comparison does not depend on batch composition
    x, _ = _data(model.topology)
    _, shadows = model.forward_with_shadows(x)
    for name in ("early", "mid", "late"):
        blended = copy.deepcopy(model)
        slot = blended.seed_slots[name]
        slot.state.metrics.gradient_ratio = 1.0
        slot.state.metrics.epochs_in_current_stage = 3
        slot.record_incubation_gain(0.1)
        assert slot.advance_stage(SeedStage.BLENDING).passed
        slot.set_alpha(1.0)
        assert torch.allclose(shadows[name], blended(x), rtol=1e-5, atol=1e-6), name


def test_plain_forward_gives_an_incubating_seed_no_gradient():
    """``model(x)`` never runs a TRAINING seed: without the incubation loss it does not learn
    (and G2 then refuses it for lack of a measured gain and of gradient)."""
    model, _ = _incubating_model("cnn3")
    x, y = _data("cnn")
    _loss(model(x), y).backward()
    assert all(p.grad is None for p in model.seed_parameters())
    out, shadows = model.forward_with_shadows(x)
    with torch.no_grad():
        assert model.forward_with_shadows(x)[1] == {}  # nothing can learn without gradients
    assert set(shadows) == {"early", "mid", "late"}


def test_incubation_gain_is_the_epochs_mean_and_freezes_when_blending_starts():
    model, _ = _incubating_model("cnn3")
    x, y = _data("cnn")
    slot = model.seed_slots["mid"]
    expected = []
    for _ in range(3):
        out, shadows = model.forward_with_shadows(x)
        base = _loss(out, y).item()
        expected.append(base - _loss(shadows["mid"], y).item())
        model.incubation_loss(lambda o: _loss(o, y), out, shadows)
    assert slot.state.metrics.incubation_gain is None  # nothing read back per step
    slot.step_epoch()
    assert slot.state.metrics.incubation_gain == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert slot.stage == SeedStage.TRAINING  # G2 also wants epochs and a learning seed
    slot.state.metrics.epochs_in_current_stage = 3
    slot.state.metrics.gradient_ratio = 1.0
    slot.record_incubation_gain(0.25)
    slot.state.metrics.record_quality(71.5)
    assert slot.advance_stage(SeedStage.BLENDING).passed
    assert slot.state.metrics.quality_before_blending == 71.5
    with pytest.raises(ValueError, match="measured in TRAINING"):
        slot.record_incubation_gain(0.5)
    assert slot.state.metrics.incubation_gain == 0.25


@pytest.mark.parametrize("case", list(CASES))
def test_nan_seed_never_reaches_the_host_output(case):
    model, reference = _incubating_model(case)
    slot = model.seed_slots["mid"]
    with torch.no_grad():
        for p in slot.seed.parameters():
            p.fill_(float("nan"))
    x, y = _data(model.topology)
    out, _ = _train_step(model, x, y)
    assert torch.isfinite(out).all()
    assert torch.equal(out, reference(x))
    assert all(torch.isfinite(p.grad).all() for p in model.host.parameters())
    model.capture_gradient_telemetry()
    assert slot.state.metrics.healthy is False
    slot.step_epoch()  # an unhealthy incubating seed is culled, never blended
    assert slot.stage == SeedStage.CULLED


def test_incubating_seed_does_not_touch_host_batchnorm_statistics():
    model, reference = _incubating_model("cnn3")
    x, y = _data("cnn")
    model.train()
    reference.train()
    _train_step(model, x, y)
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
        out, shadows = model.forward_with_shadows(x)
        (out.sum() + sum(s.sum() for s in shadows.values())).backward()
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


def test_loading_a_checkpoint_drops_gains_gathered_before_it():
    model, _ = _incubating_model("cnn3")
    saved = copy.deepcopy(model.state_dict())  # no gain measured yet
    x, y = _data("cnn")
    for _ in range(2):
        _train_step(model, x, y)
    model.load_state_dict(saved)
    model.seed_slots["mid"].step_epoch()
    assert model.seed_slots["mid"].state.metrics.incubation_gain is None


def test_the_shadow_pass_writes_no_slot_buffer_and_reads_only_those_forward_never_writes():
    """A shadow pass shares a slot's read-only buffers instead of copying them; that is safe
    only while no forward writes them, and a gated blend's record of the alpha it used must
    still come from the real forward, not from a shadow."""
    from esper.kasmina.slot import SeedSlot
    from esper.testing import drive_to

    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(10, 3, 4), slots=["early", "mid", "late"])
    drive_to(model, "early", SeedStage.TRAINING)
    drive_to(model, "mid", SeedStage.BLENDING, blend="gated")  # downstream of the shadow
    drive_to(model, "late", SeedStage.TRAINING)
    x, y = _data("cnn")
    model.train()
    with torch.no_grad():
        model(x)  # the real forward alone
    alpha_used = model.seed_slots["mid"]._alpha_used.clone()
    for slot in model.seed_slots.values():
        slot._alpha_used.fill_(-1.0)
    read_only = {
        (name, b): getattr(slot, b).clone()
        for name, slot in model.seed_slots.items()
        for b in SeedSlot.FORWARD_READ_ONLY_BUFFERS
    }
    out, shadows = model.forward_with_shadows(x)  # forward only: no backward, no loss
    assert set(shadows) == {"early", "late"}
    for (name, b), before in read_only.items():
        assert torch.equal(getattr(model.seed_slots[name], b), before), (name, b)
    # The gated slot's record is the real forward's, not the shadow's (which ran it on other
    # features): the shadow wrote into a copy.
    assert torch.equal(model.seed_slots["mid"]._alpha_used, alpha_used)
    frozen = model._frozen_tensors(prefix="model.")
    assert not any(
        k.endswith(tuple(f".{b}" for b in SeedSlot.FORWARD_READ_ONLY_BUFFERS)) for k in frozen
    )
    assert "model.seed_slots.mid._alpha_used" in frozen
    # Where no gated blend runs, nothing writes _alpha_used either: it is read in place.
    assert "model.seed_slots.early._alpha_used" not in frozen
    assert "model.seed_slots.late._alpha_used" not in frozen


def test_a_given_baseline_is_the_loss_the_gain_would_have_computed():
    """``baseline=`` (the training loss the caller has) saves a pass of the loss and changes
    nothing: the same total, the same recorded gains, bit for bit."""
    from esper.testing import drive_to, perturb_seed

    gains = []
    for given in (False, True):
        torch.manual_seed(0)
        model = MorphogeneticModel(CNNHost(10, 3, 4), slots=["early", "late"])
        for name in ("early", "late"):
            perturb_seed(drive_to(model, name, SeedStage.TRAINING))  # not the identity
        x, y = _data("cnn")
        out, shadows = model.forward_with_shadows(x)
        loss = F.cross_entropy(out, y)
        extra = {"baseline": loss} if given else {}
        total = model.incubation_loss(lambda o, y=y: F.cross_entropy(o, y), out, shadows, **extra)
        gains.append((total, [s._gain_sum.clone() for s in model.seed_slots.values()]))
    (t0, g0), (t1, g1) = gains
    assert torch.equal(t0, t1) and all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
    assert any(g.abs() > 0 for g in g0)


@pytest.mark.parametrize("case", ["cnn3", "tf2"])
def test_the_shadow_pass_gets_every_tensor_by_every_name_and_sees_one_assigned_by_hand(case):
    """``_frozen_tensors`` reads the modules' own tables: it must name what named_modules and
    named_parameters/named_buffers name (tied weights under each name, one detached tensor),
    and a parameter assigned between two steps must be the one the next pass uses."""
    from esper.testing import drive_to

    model, _ = _incubating_model(case)
    model.cull_seed(slot="late")
    model.seed_slots["late"].state.stage = SeedStage.DORMANT  # past the embargo, by hand
    drive_to(model, "late", SeedStage.FOSSILIZED)  # a host-side seed and a fossil's buffers
    frozen = model._frozen_tensors(prefix="model.")
    expected = {}
    for name, module in model.named_modules(remove_duplicate=False):
        base = f"model.{name}." if name else "model."
        skip = module.buffers_forward_leaves_alone() if hasattr(module, "fossils") else ()
        for key, p in module.named_parameters(recurse=False, remove_duplicate=False):
            expected[base + key] = p
        for key, b in module.named_buffers(recurse=False, remove_duplicate=False):
            if key not in skip:
                expected[base + key] = b
    assert frozen.keys() == expected.keys()
    for key, tensor in frozen.items():
        assert not tensor.requires_grad and torch.equal(tensor, expected[key]), key
    if case == "tf2":  # the head's weight is the embedding's: one detached tensor for both
        tied = [k for k, t in expected.items() if t is model.host.lm_head.weight]
        assert len(tied) == 2 and frozen[tied[0]] is frozen[tied[1]]
    name, linear = next(
        (n, m) for n, m in model.host.named_modules() if isinstance(m, torch.nn.Linear)
    )
    linear.weight = torch.nn.Parameter(torch.zeros_like(linear.weight))
    again = model._frozen_tensors(prefix="model.")
    assert torch.equal(again[f"model.host.{name}.weight"], linear.weight)
    assert not torch.equal(frozen[f"model.host.{name}.weight"], linear.weight)
