"""The gradient-isolation contract and its snippet (docs/design.md, "The isolation snippet")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.leyline import SeedStage
from esper.testing import training_loss

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = """\
import torch
from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import SeedStage

model = MorphogeneticModel(CNNHost(num_classes=10, base_channels=8), device="cpu", slots=["mid"])
model.germinate_seed("norm", "seed-iso", slot="mid")
slot = model.seed_slots["mid"]
slot.state.stage = SeedStage.TRAINING
slot.isolate_gradients = True
for p in model.host.parameters():
    if p.requires_grad:
        p.grad = torch.ones_like(p) * 0.01
for p in slot.seed.parameters():
    if p.requires_grad:
        p.grad = torch.ones_like(p) * 0.02
print("violations before", slot.state.metrics.isolation_violations)
slot.capture_gradient_telemetry()
print("violations after", slot.state.metrics.isolation_violations)
"""


def test_bug_report_snippet_verbatim_prints_zero_violations():
    env = {**os.environ, "PYTHONPATH": "src"}
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "violations before 0" in out
    assert "violations after 0" in out


def _cnn_model(slot="mid", blueprint="conv_light"):
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(num_classes=10, base_channels=8), slots=[slot])
    model.germinate_seed(blueprint, "s0", slot=slot)
    return model


def _tf_model(slot="mid", blueprint="mlp"):
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=13, n_embd=16, n_head=2, n_layer=2, block_size=8, dropout=0.0)
    model = MorphogeneticModel(host, slots=[slot])
    model.germinate_seed(blueprint, "s0", slot=slot)
    return model


def _batch(model):
    g = torch.Generator().manual_seed(1)
    if model.topology == "cnn":
        return torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    x = torch.randint(0, 13, (4, 8), generator=g)
    return x, torch.randint(0, 13, (4, 8), generator=g)


def _train(model, steps=6, capture_every=1):
    """Real forward/backward/SGD steps on host and seed, capturing telemetry every step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _batch(model)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        training_loss(model, x, y).backward()  # the shadow pass included: seeds in TRAINING learn
        if step % capture_every == 0:
            model.capture_gradient_telemetry()
        opt.step()
    return model


def _to_stage(model, stage, slot="mid"):
    s = model.seed_slots[slot]
    s.advance_stage(SeedStage.TRAINING)
    if stage == SeedStage.BLENDING:
        s.state.metrics.gradient_ratio = 1.0
        s.state.metrics.epochs_in_current_stage = 3
        s.record_incubation_gain(0.1)
        assert s.advance_stage(SeedStage.BLENDING).passed
        s.set_alpha(0.5)
    return s


@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING])
def test_healthy_cnn_seed_counts_no_violation_under_real_training(stage):
    model = _cnn_model()
    slot = _to_stage(model, stage)
    assert slot.isolate_gradients
    _train(model)
    m = slot.state.metrics
    assert m.gradient_captures == 6
    assert m.host_gradient_norm > 0  # the host really trained
    assert m.seed_gradient_norm > 0  # ...and so did the seed
    assert m.isolation_violations == 0
    result = slot.gates.check_gate(slot.state, SeedStage.BLENDING)
    assert any("isolation" in c for c in result.checks_passed)


@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING])
@pytest.mark.parametrize("build", [_cnn_model, _tf_model])
def test_open_seed_path_while_isolation_required_is_counted(stage, build):
    model = build()
    slot = _to_stage(model, stage)
    if model.topology == "transformer" and stage == SeedStage.BLENDING:
        pytest.skip("transformer blending co-adapts by design; covered below")
    slot.isolate_gradients = False  # opens the seed path: a real leak
    _train(model, steps=3)
    assert slot.state.metrics.isolation_violations >= 1
    result = slot.gates.check_gate(slot.state, SeedStage.BLENDING)
    assert not result.passed
    assert any("isolation" in c for c in result.checks_failed)


def test_transformer_blending_with_open_seed_path_is_not_a_violation():
    model = _tf_model()
    slot = _to_stage(model, SeedStage.BLENDING)
    assert slot.isolate_gradients is False  # the lifecycle opened it for co-adaptation
    _train(model)
    assert slot.state.metrics.isolation_violations == 0
    assert slot.state.metrics.host_gradient_norm > 0


def test_leak_counting_is_per_capture_and_resets():
    model = _cnn_model()
    slot = _to_stage(model, SeedStage.TRAINING)
    slot.isolate_gradients = False
    _train(model, steps=3, capture_every=2)  # captures after steps 0 and 2, each saw a leak
    assert slot.state.metrics.isolation_violations == 2
    slot.isolate_gradients = True
    _train(model, steps=3)
    assert slot.state.metrics.isolation_violations == 2  # closed again: no more counted


def test_hand_set_gradients_with_no_backward_are_not_violations():
    model = _cnn_model()
    slot = _to_stage(model, SeedStage.TRAINING)
    slot.isolate_gradients = False
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    slot.capture_gradient_telemetry()
    assert slot.state.metrics.isolation_violations == 0


def test_parameter_shared_with_host_after_germination_is_counted():
    model = _cnn_model(blueprint="norm")
    slot = _to_stage(model, SeedStage.TRAINING)
    # A research script that ties a seed tensor to a host tensor opens a path around detach().
    host_bn = model.host.blocks[1][1]
    slot.seed.norm.weight = host_bn.weight
    _train(model, steps=2)
    assert slot.state.metrics.isolation_violations >= 1


@pytest.mark.parametrize("how", ["register_buffer", "replace_buffer"])
def test_buffer_shared_with_host_after_germination_is_counted(how):
    """A buffer never has a gradient, so only the structural check (storage addresses, read on
    the host side without a sync) can see a seed buffer tied to a host buffer."""
    from torch import nn

    from esper.leyline import IsolationViolated

    model = _cnn_model(blueprint="norm")
    slot = _to_stage(model, SeedStage.TRAINING)
    events = []
    model.subscribe(events.append)
    host_bn = model.host.blocks[1][1]
    if how == "register_buffer":
        slot.seed.register_buffer("stolen", host_bn.running_mean)
    else:
        slot.seed.bn = nn.BatchNorm2d(host_bn.num_features)  # a research script's extra norm
        slot.seed.bn.running_mean = host_bn.running_mean
    _train(model, steps=2)
    assert slot.state.metrics.isolation_violations == 2  # one per capture while it lasts
    assert [e for e in events if isinstance(e, IsolationViolated)] == [
        IsolationViolated("mid", "s0", 1),
        IsolationViolated("mid", "s0", 2),
    ]
    result = slot.gates.check_gate(slot.state, SeedStage.BLENDING)
    assert any(c.startswith("isolation") for c in result.checks_failed)


def test_shared_buffer_is_not_a_violation_where_isolation_is_not_required():
    model = _tf_model()
    slot = _to_stage(model, SeedStage.BLENDING)  # transformer blending co-adapts by design
    slot.seed.register_buffer("stolen", model.host.lm_head.weight.detach())
    _train(model, steps=2)
    assert slot.state.metrics.isolation_violations == 0


def test_gradient_ratio_is_parameter_normalized_and_feeds_g2():
    model = _cnn_model()
    slot = _to_stage(model, SeedStage.TRAINING)
    for p in model.host.parameters():
        p.grad = torch.full_like(p, 0.01)
    for p in slot.seed_parameters():
        p.grad = torch.full_like(p, 0.02)
    slot.capture_gradient_telemetry()
    n_host = sum(p.numel() for p in model.host.parameters())
    n_seed = sum(p.numel() for p in slot.seed_parameters())
    seed_norm = 0.02 * n_seed**0.5
    host_norm = 0.01 * n_host**0.5
    expected = (seed_norm / host_norm) * (n_host / n_seed) ** 0.5  # == 2.0
    assert slot.state.metrics.gradient_ratio == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(2.0)


@pytest.mark.parametrize("leaking", [False, True])
def test_capture_reads_a_leak_accumulator_only_after_its_hook_fired(leaking):
    """A capture reads back every gradient's norm and, per slot, the leak accumulator only if
    a leak hook fired since the last capture (until then it holds 0); a schedule's alpha is
    known on the host. So a healthy model's readback is its norms alone."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Stacks(TorchDispatchMode):
        sizes: list[int] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "stack":
                self.sizes.append(len(args[0]))
            return func(*args, **(kwargs or {}))

    model = _cnn_model()
    slot = _to_stage(model, SeedStage.BLENDING)
    slot.isolate_gradients = not leaking
    x, y = _batch(model)
    training_loss(model, x, y).backward()
    assert slot._leak_seen == leaking
    n_grads = sum(p.grad is not None for p in model.parameters())
    with Stacks() as stacks:
        model.capture_gradient_telemetry()
    assert stacks.sizes == [n_grads + int(leaking)]
    assert not slot._leak_seen and float(slot._leak_sq) == 0.0
    m = slot.state.metrics
    assert m.isolation_violations == int(leaking)
    assert m.current_alpha == torch.tensor(0.5).item()


def _leaking_and_healthy_model():
    """Seeds in TRAINING at ``early`` (isolated, healthy) and ``late`` (its path open: a leak)."""
    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(num_classes=10, base_channels=8), slots=["early", "late"])
    for name in ("early", "late"):
        model.germinate_seed("conv_light", f"s-{name}", slot=name)
        model.seed_slots[name].advance_stage(SeedStage.TRAINING)
    model.seed_slots["late"].isolate_gradients = False
    return model


def _steps_with_captures(model, wait, steps=4, between=None):
    """Train ``steps`` steps capturing every step with ``wait``; ``between(step)`` runs after
    each capture. Returns the lifecycle events announced."""
    events = []
    model.subscribe(events.append)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = _batch(model)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        training_loss(model, x, y).backward()
        model.capture_gradient_telemetry(wait=wait)
        opt.step()
        if between is not None:
            between(step)
    model.flush_telemetry()
    return events


def test_a_capture_folded_later_gives_the_same_metrics_and_events():
    """``wait=False`` (the trainer's way: no wait for the backward on a GPU) folds the same
    numbers, in the same order, with the same ``IsolationViolated`` events, as waiting."""
    import copy

    model = _leaking_and_healthy_model()
    twin = copy.deepcopy(model)
    waited = _steps_with_captures(twin, wait=True)
    seen_before_fold = []
    later = _steps_with_captures(
        model,
        wait=False,
        between=lambda step: seen_before_fold.append(
            model.seed_slots["late"].state.metrics.gradient_captures
        ),
    )
    assert seen_before_fold == [0, 1, 2, 3]  # each capture folded by the next one
    assert later == waited and len(later) == 4  # one violation per capture of the leaking slot
    for name in ("early", "late"):
        assert model.seed_slots[name].state.metrics == twin.seed_slots[name].state.metrics


def test_a_pending_capture_is_folded_before_anything_reads_the_metrics():
    model = _cnn_model()
    slot = _to_stage(model, SeedStage.TRAINING)
    x, y = _batch(model)
    for read in (model.slot_reports, model.step_epoch, slot.step_epoch, model.flush_telemetry):
        before = slot.state.metrics.gradient_captures
        training_loss(model, x, y).backward()
        model.capture_gradient_telemetry(wait=False)
        assert slot.state.metrics.gradient_captures == before
        read()
        assert slot.state.metrics.gradient_captures == before + 1


def test_a_pending_capture_lands_on_the_seed_it_measured():
    """The slot's seed replaced before the fold (here by loading another model's state, as a
    rollback does): the numbers go to the seed that was measured, not to its successor. A deep
    copy of the model does not fold its original's capture."""
    import copy

    model = _cnn_model()
    slot = _to_stage(model, SeedStage.TRAINING)
    slot.isolate_gradients = False
    measured = slot.state
    x, y = _batch(model)
    training_loss(model, x, y).backward()
    model.capture_gradient_telemetry(wait=False)
    twin = copy.deepcopy(model)
    events = []
    model.subscribe(events.append)
    model.load_state_dict(_cnn_model().state_dict())  # a fresh seed in the slot
    assert slot.state is not measured
    model.flush_telemetry()
    assert measured.metrics.gradient_captures == 1 and measured.metrics.isolation_violations == 1
    assert slot.state.metrics.gradient_captures == 0
    assert [e.seed_id for e in events] == [measured.seed_id]
    twin.flush_telemetry()
    assert twin.seed_slots["mid"].state.metrics.gradient_captures == 0


def test_model_level_capture_matches_per_slot_capture():
    """The batched capture (one sync for all slots) gives the same metrics as per-slot calls."""
    import copy

    model = _leaking_and_healthy_model()
    twin = copy.deepcopy(model)
    x, y = _batch(model)
    for m in (model, twin):
        training_loss(m, x, y).backward()
    model.capture_gradient_telemetry()
    for slot in twin.seed_slots.values():
        slot.capture_gradient_telemetry()
    for name in ("early", "late"):
        assert model.seed_slots[name].state.metrics == twin.seed_slots[name].state.metrics
    assert model.seed_slots["early"].state.metrics.isolation_violations == 0
    assert model.seed_slots["late"].state.metrics.isolation_violations == 1


def test_a_copied_model_checks_sharing_against_its_own_host_not_the_original():
    """The host's tensor addresses are cached; a deep copy must not inherit the original's."""
    import copy

    torch.manual_seed(0)
    model = MorphogeneticModel(CNNHost(10, 2, 4), slots=["mid"])
    original = model.host_tensor_ptrs()  # primes the cache
    twin = copy.deepcopy(model)
    assert twin.host_tensor_ptrs().isdisjoint(original)
    twin.germinate_seed("norm", "s", slot="mid")
    seed = twin.seed_slots["mid"].seed
    seed.norm.weight = twin.host.blocks[0][1].weight  # the twin's own host tensor, shared
    assert twin.seed_slots["mid"]._tensors_shared_with_host(seed)


def test_grad_norms_give_each_group_the_norm_of_its_own_gradients():
    """One fused norm over every group's gradients, folded per group on the host: each group's
    value is the plain L2 norm of its own gradients, an empty group or one without gradients
    reads 0."""
    from torch import nn

    from esper.kasmina.tensors import fold_grad_norms, queue_grad_norms

    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(n)) for n in (3, 5, 2, 4)]
    for p in params[:3]:
        p.grad = torch.randn_like(p)
    groups = [params[:2], [], [params[3]], params[2:]]
    norms, bounds = queue_grad_norms(groups)
    assert len(norms) == 3  # one per gradient: params[3] has none
    got = fold_grad_norms([n.item() for n in norms], bounds)
    expected = [
        torch.cat([params[0].grad, params[1].grad]).double().norm().item(),
        0.0,
        0.0,
        params[2].grad.double().norm().item(),
    ]
    assert got == pytest.approx(expected, rel=1e-6, abs=0)
    assert queue_grad_norms([[params[3]]]) == ([], [(0, 0)])
