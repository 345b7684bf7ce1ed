"""torch.compile(fullgraph=True) traces the model in every forward branch and matches eager.

The cheap ``aot_eager`` backend covers the whole matrix (it runs dynamo and AOT autograd, which
is where graph breaks and autograd.Function problems show up); the default inductor backend
covers the CNN host, forward and backward, in the most intricate state (isolated blending).
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import DEFAULT_BLUEPRINT, TINY_HOSTS, drive_to, pass_g2_metrics, perturb_seed
from esper.leyline import SeedStage
from esper.testing import host_output

S = SeedStage
STATES = ["none", "training", "blending", "fossilized"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model_in(name: str, state: str, blend: str = "linear"):
    tiny = TINY_HOSTS[name]
    model = tiny.model(slots=["early", "mid"])
    if state == "training":
        slot = drive_to(model, "mid", S.TRAINING, blend=blend)
        perturb_seed(slot)
    elif state == "blending":
        slot = drive_to(model, "mid", S.BLENDING, blend=blend)
        slot.set_alpha(0.5)
        expected_isolation = tiny.topology == "cnn"
        assert slot.isolate_gradients == expected_isolation
    elif state == "fossilized":
        drive_to(model, "mid", S.FOSSILIZED, blend=blend)
        drive_to(model, "early", S.TRAINING)
    return tiny, model


def _forward_backward(call, model, tiny, x, y):
    model.zero_grad(set_to_none=True)
    out = call(x)
    tiny.loss(out, y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _check_matches_eager(name: str, state: str, backend: str, blend: str = "linear"):
    tiny, model = _model_in(name, state, blend)
    twin = copy.deepcopy(model)  # identical weights and buffers; eager reference
    x, y = tiny.inputs(), tiny.targets()
    compiled = torch.compile(model, fullgraph=True, backend=backend)

    model.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), twin(x), rtol=1e-5, atol=1e-5)

    model.train()
    twin.train()
    out_c, grads_c = _forward_backward(compiled, model, tiny, x, y)
    out_e, grads_e = _forward_backward(twin, twin, tiny, x, y)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for key, grad in grads_e.items():
        torch.testing.assert_close(grads_c[key], grad, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_compiled_matches_eager_aot_eager(name, state):
    _check_matches_eager(name, state, "aot_eager")


@pytest.mark.parametrize("name", ["cnn2", "tf1"])
def test_compiled_gated_blending_aot_eager(name):
    _check_matches_eager(name, "blending", "aot_eager", blend="gated")


@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_compiled_shadow_pass_matches_eager(name):
    """``forward_with_shadows`` compiles (the host's part whole; dynamo breaks the graph at the
    shadow pass's ``functional_call``) and gives the eager outputs, shadows and gradients, with a
    seed incubating behind a blending one."""
    tiny = TINY_HOSTS[name]
    model = tiny.model(slots=["early", "mid"])
    drive_to(model, "early", S.BLENDING).set_alpha(0.5)
    perturb_seed(drive_to(model, "mid", S.TRAINING))
    twin = copy.deepcopy(model)
    x, y = tiny.inputs(), tiny.targets()
    compiled = torch.compile(model.forward_with_shadows, backend="aot_eager")
    results = []
    for net, call in ((model, compiled), (twin, twin.forward_with_shadows)):
        out, shadows = call(x)
        assert list(shadows) == ["mid"]
        loss = tiny.loss(out, y) + net.incubation_loss(lambda o: tiny.loss(o, y), out, shadows)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        results.append((out.detach(), shadows["mid"].detach(), grads))
    (out_c, shadow_c, grads_c), (out_e, shadow_e, grads_e) = results
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shadow_c, shadow_e, rtol=1e-5, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    assert any(k.startswith("seed_slots.mid.seed") for k in grads_e)
    for key, grad in grads_e.items():
        torch.testing.assert_close(grads_c[key], grad, rtol=1e-4, atol=1e-5, msg=key)


def test_compiled_isolated_cnn_blending_inductor():
    _check_matches_eager("cnn3", "blending", "inductor")


def test_alpha_changes_do_not_recompile_but_stage_changes_are_seen():
    from torch._dynamo.testing import CompileCounter

    tiny, model = _model_in("cnn3", "blending")
    model.eval()
    x = tiny.inputs()
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    slot = model.seed_slots["mid"]
    with torch.no_grad():
        for alpha in (0.1, 0.7, 1.0, 0.0):
            slot.set_alpha(alpha)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
        assert counter.frame_count == 1  # alpha lives in a buffer: one graph for every value

        # A lifecycle change must never be served by a stale graph.
        model.cull_seed(slot="mid")
        torch.testing.assert_close(compiled(x), host_output(model, x), rtol=0, atol=0)
        model.germinate_seed("conv_light", "again", slot="early")
        model.seed_slots["early"].advance_stage(S.TRAINING)
        torch.testing.assert_close(compiled(x), host_output(model, x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["cnn3", "tf2"])
def test_one_compiled_model_follows_the_whole_lifecycle(name):
    """A single compiled model, driven DORMANT -> ... -> FOSSILIZED, matches eager at every stage
    and compiles about one graph per stage change (a stage tested with a frozenset was not
    guarded by dynamo, so the first stage's graph was silently reused)."""
    from torch._dynamo.testing import CompileCounter

    tiny = TINY_HOSTS[name]
    model = tiny.model(slots=["mid"])
    twin = copy.deepcopy(model)
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x, y = tiny.inputs(), tiny.targets()
    stages = [S.DORMANT, S.TRAINING, S.BLENDING, S.PROBATIONARY, S.FOSSILIZED]
    for stage in stages:
        if stage != S.DORMANT:
            for m in (model, twin):
                _step_to(m, stage)
        if stage == S.TRAINING:  # same (non-trivial) seed weights in both models
            with torch.no_grad():
                for a, b in zip(
                    model.seed_slots["mid"].seed.parameters(),
                    twin.seed_slots["mid"].seed.parameters(),
                    strict=True,
                ):
                    a.add_(0.3)
                    b.copy_(a)
        out_c, grads_c = _forward_backward(compiled, model, tiny, x, y)
        out_e, grads_e = _forward_backward(twin, twin, tiny, x, y)
        torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5, msg=stage.name)
        assert grads_c.keys() == grads_e.keys(), stage.name
        for key in grads_e:
            torch.testing.assert_close(grads_c[key], grads_e[key], rtol=1e-4, atol=1e-5)
    assert counter.frame_count <= len(stages) + 1


def _step_to(model, stage):
    s = model.seed_slots["mid"]
    if stage == S.TRAINING:
        model.germinate_seed(DEFAULT_BLUEPRINT[model.topology], "s", slot="mid")
        assert s.advance_stage(S.TRAINING).passed
    elif stage == S.BLENDING:
        pass_g2_metrics(s)
        assert s.advance_stage(S.BLENDING).passed
        s.set_alpha(0.5)
    elif stage == S.PROBATIONARY:
        s.state.metrics.epochs_in_current_stage = 3
        s.state.blend_step = s.blending_steps  # G3 waits for the end of the ramp
        s.set_alpha(1.0)
        assert s.advance_stage(S.PROBATIONARY).passed
    elif stage == S.FOSSILIZED:
        s.state.metrics.counterfactual_contribution = 2.0
        model.fossilize_seed(slot="mid")
