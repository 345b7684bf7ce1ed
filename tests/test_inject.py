"""inject_slots: seed slots in models Esper did not write (a CNN, an MLP, a transformer)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper import inject_slots
from esper.kasmina import CNNHost, MorphogeneticModel
from esper.kasmina.inject import InjectionError
from esper.leyline import SeedStage
from esper.testing import drive_to


class ResNetish(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width))
        self.layer1 = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.layer1(h)  # a skip around the first target
        return self.head(self.layer2(h).mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.body(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.lm_head = nn.Linear(width, vocab)

    def forward(self, idx):
        T = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        return self.lm_head(self.blocks(self.emb(idx), mask=mask, is_causal=True))


def _cnn():
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return ResNetish(), ["layer1", "layer2"], x, torch.randint(0, 10, (6,)), "conv_light"


def _mlp():
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(1))
    return MLP(), ["body.1", "body.3"], x, torch.randint(0, 3, (6,)), "mlp"


def _gpt():
    x = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    return TinyGPT(), r"blocks\.layers\.\d", x, torch.randint(0, 11, (3, 5)), "mlp"


def _sequential():
    # A bare nn.Sequential: its forward runs every child, so the slots' container must not be one.
    model = nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(1))
    return model, ["1", "3"], x, torch.randint(0, 3, (6,)), "mlp"


MODELS = {"cnn": _cnn, "mlp": _mlp, "gpt": _gpt, "sequential": _sequential}


def _loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _build(kind):
    torch.manual_seed(0)
    model, targets, x, y, blueprint = MODELS[kind]()
    plain = copy.deepcopy(model)
    return inject_slots(model, targets, example_input=x), plain, x, y, blueprint


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_seed_in_training_leaves_output_and_host_gradients_bit_identical(kind):
    model, plain, x, y, blueprint = _build(kind)
    first = next(iter(model.seed_slots))
    model.germinate_seed(blueprint, "s0", slot=first)
    model.advance_stage(SeedStage.TRAINING, slot=first)
    model.train()
    plain.train()
    out, shadows = model.forward_with_shadows(x)
    assert set(shadows) == {first}
    loss = _loss(out, y) + model.incubation_loss(lambda o: _loss(o, y), out, shadows)
    loss.backward()
    ref = plain(x)
    _loss(ref, y).backward()
    assert torch.equal(out, ref)
    host = dict(model.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(host[name].grad, p.grad), name
    for name, b in plain.named_buffers():  # batch-norm statistics: the shadow wrote copies
        assert torch.equal(dict(model.named_buffers())[name], b), name
    seed_grads = [p.grad for p in model.seed_parameters(first)]
    assert seed_grads and all(g is not None for g in seed_grads)
    assert any(g.abs().sum() > 0 for g in seed_grads)  # the seed learns from its shadow


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_slots_are_named_after_their_targets_with_inferred_widths(kind):
    model, plain, x, _, _ = _build(kind)
    expected = {
        "cnn": {"layer1": (8, "cnn"), "layer2": (16, "cnn")},
        "mlp": {"body.1": (16, "mlp"), "body.3": (16, "mlp")},
        "gpt": {"blocks.layers.0": (16, "transformer"), "blocks.layers.1": (16, "transformer")},
        "sequential": {"1": (16, "mlp"), "3": (16, "mlp")},
    }[kind]
    assert {n: (s.width, s.topology) for n, s in model.seed_slots.items()} == expected
    assert list(model.slot_targets) == list(expected)  # forward order
    assert isinstance(model, type(plain))
    # The user's own state_dict keys are unchanged; the slots add theirs under seed_slots.
    keys = set(model.state_dict())
    assert set(plain.state_dict()) <= keys
    assert all(k.startswith("seed_slots.") for k in keys - set(plain.state_dict()))
    assert model.count_parameters()["host"] == sum(p.numel() for p in plain.parameters())


def _train_steps(model, x, y, steps=4):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out, shadows = model.forward_with_shadows(x)
        loss = _loss(out, y) + model.incubation_loss(lambda o: _loss(o, y), out, shadows)
        loss.backward()
        model.capture_gradient_telemetry()
        opt.step()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_isolation_telemetry_counts_only_a_real_leak(kind):
    model, _, x, y, blueprint = _build(kind)
    first = next(iter(model.seed_slots))
    model.germinate_seed(blueprint, "s0", slot=first)
    model.advance_stage(SeedStage.TRAINING, slot=first)
    _train_steps(model, x, y)
    metrics = model.seed_slots[first].state.metrics
    assert metrics.host_gradient_norm > 0 and metrics.seed_gradient_norm > 0
    assert metrics.isolation_violations == 0
    model.seed_slots[first].isolate_gradients = False  # opens the seed path into the host
    _train_steps(model, x, y)
    assert model.seed_slots[first].state.metrics.isolation_violations >= 1


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_checkpoint_round_trip_restores_every_stage_and_output(kind):
    model, _, x, y, blueprint = _build(kind)
    names = list(model.seed_slots)
    torch.manual_seed(3)
    drive_to(model, names[0], SeedStage.BLENDING, blueprint=blueprint, blend="gated")
    drive_to(model, names[1], SeedStage.FOSSILIZED, blueprint=blueprint)
    _train_steps(model, x, y, steps=2)
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(99)
    fresh, _, _, _, _ = _build(kind)  # rebuild, inject the same targets, load
    fresh.load_state_dict(state)
    for name in names:
        assert fresh.seed_slots[name].stage == model.seed_slots[name].stage
        assert fresh.seed_slots[name].report() == model.seed_slots[name].report()
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(x), model(x))


def test_the_whole_lifecycle_on_an_injected_model_and_step_epoch():
    model, _, x, y, _ = _build("cnn")
    model.germinate_seed("conv_light", "s0", slot="layer2")
    model.advance_stage(SeedStage.TRAINING, slot="layer2")
    _train_steps(model, x, y)
    reports = model.step_epoch()
    assert set(reports) == {"layer1", "layer2"}
    model.cull_seed(slot="layer2", reason="test")
    assert model.seed_slots["layer2"].stage == SeedStage.CULLED
    model.step_epoch()
    assert model.seed_slots["layer2"].stage == SeedStage.EMBARGOED
    assert model.seed_parameters() == []


def test_injected_builtin_host_matches_the_morphogenetic_model_bit_for_bit():
    """The built-in hosts' segmented shadow pass and the generic replay are one semantics."""
    torch.manual_seed(0)
    host = CNNHost(10, 3, 4, in_channels=1)
    x = torch.randn(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    built = MorphogeneticModel(copy.deepcopy(host), slots=["early", "mid", "late"])
    injected = inject_slots(
        copy.deepcopy(host), {"early": "blocks.0", "mid": "blocks.1", "late": "blocks.2"}, x
    )
    for model in (built, injected):
        torch.manual_seed(1)
        drive_to(model, "early", SeedStage.TRAINING)
        drive_to(model, "mid", SeedStage.BLENDING, blend="gated")
        drive_to(model, "late", SeedStage.TRAINING)
    injected.load_state_dict({k.removeprefix("host."): v for k, v in built.state_dict().items()})
    results = []
    for model in (built, injected):
        model.train()
        out, shadows = model.forward_with_shadows(x)
        loss = F.cross_entropy(out, y)
        (loss + model.incubation_loss(lambda o: F.cross_entropy(o, y), out, shadows)).backward()
        grads = {n: p.grad for n, p in model.seed_slots.named_parameters() if p.grad is not None}
        results.append((out, shadows, grads))
    (out_a, sh_a, g_a), (out_b, sh_b, g_b) = results
    assert torch.equal(out_a, out_b)
    assert set(sh_a) == set(sh_b) == {"early", "late"}
    assert all(torch.equal(sh_a[k], sh_b[k]) for k in sh_a)
    assert g_a.keys() == g_b.keys() and all(torch.equal(g_a[k], g_b[k]) for k in g_a)


def test_compiled_fullgraph_follows_stage_changes():
    model, _, x, _, _ = _build("cnn")
    model.eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    before = compiled(x)
    assert torch.equal(before, model(x))
    torch.manual_seed(2)
    drive_to(model, "layer1", SeedStage.BLENDING)
    model.seed_slots["layer1"].set_alpha(0.5)
    with torch.no_grad():
        for p in model.seed_parameters("layer1"):
            p.add_(0.1)
    eager = model(x)
    assert not torch.equal(eager, before)
    assert torch.equal(compiled(x), eager)


class Reused(nn.Module):
    """``act`` runs twice with different shapes, ``shared`` twice with the same one."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.act = nn.ReLU()
        self.proj = nn.Linear(6, 2)

    def forward(self, x):
        h = self.shared(self.shared(self.act(self.block(x))))
        return self.act(self.proj(h))


class TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x), x.sum()


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = TupleBlock()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h, aux = self.block(x)
        return self.out(h) + 0 * aux


def test_a_tuple_output_puts_the_slot_on_its_first_element():
    torch.manual_seed(0)
    model = inject_slots(TupleNet(), ["block"], torch.randn(2, 4))
    assert model.seed_slots["block"].width == 4
    torch.manual_seed(1)
    drive_to(model, "block", SeedStage.FOSSILIZED, blueprint="norm")
    with torch.no_grad():
        model.seed_slots["block"].seed.scale.fill_(1.0)
    x = torch.randn(3, 4)
    h = model.block.lin(x)
    expected = model.out(h + model.seed_slots["block"].seed.norm(h))
    assert torch.allclose(model(x), expected)


def _unchanged(model, before_state, before_class):
    assert type(model) is before_class
    assert not hasattr(model, "seed_slots")
    assert all(not m._forward_hooks for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before_state.keys()
    assert all(torch.equal(after[k], before_state[k]) for k in after)


@pytest.mark.parametrize(
    "targets, example, match",
    [
        (["layer9"], True, "'layer9' matches no module"),
        (r"nothing\d", True, "matches no module"),
        ({"a": "layer1", "b": "missing"}, True, "'missing' matches no module"),
        (["layer1"], False, "needs example_input"),
    ],
)
def test_bad_targets_are_refused_naming_them_and_the_model_is_unchanged(targets, example, match):
    model, _, x, _, _ = _cnn()
    model.train()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InjectionError, match=match):
        inject_slots(model, targets, example_input=x if example else None)
    _unchanged(model, before, ResNetish)
    assert model.training and model.layer1[1].training


@pytest.mark.parametrize(
    "target, match",
    [("act", "'act'.*changes shape across calls"), ("shared", "'shared' runs 2 times")],
)
def test_a_module_whose_output_changes_shape_across_calls_is_refused(target, match):
    model = Reused()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InjectionError, match=match):
        inject_slots(model, ["block", target], torch.randn(2, 4))
    _unchanged(model, before, Reused)


class Alternating(nn.Module):
    """Its output's width alternates from one call to the next."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x if self.calls % 2 else torch.cat([x, x], dim=1)


class UsesAlternating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Alternating()

    def forward(self, x):
        return self.inner(x).sum(dim=1)


def test_a_module_whose_shape_changes_between_forwards_is_refused():
    model = UsesAlternating()
    with pytest.raises(InjectionError, match="'inner'.*changes shape across calls"):
        inject_slots(model, ["inner"], torch.randn(2, 4))
    assert not hasattr(model, "seed_slots")
    assert type(model) is UsesAlternating


def test_a_second_injection_is_refused():
    model, _, x, _, _ = _build("mlp")
    with pytest.raises(InjectionError, match="already has seed_slots"):
        inject_slots(model, ["out"], x)


def test_explicit_widths_and_layouts_without_a_probe():
    model = inject_slots(MLP(), ["body.1"], widths={"body.1": 16}, layouts={"body.1": "BC"})
    assert model.seed_slots["body.1"].topology == "mlp"
    with pytest.raises(InjectionError, match="layout 'XYZ'"):
        inject_slots(MLP(), ["body.1"], widths={"body.1": 16}, layouts={"body.1": "XYZ"})


def test_a_deep_copy_routes_through_its_own_slots():
    model, _, x, _, _ = _build("mlp")
    twin = copy.deepcopy(model)
    torch.manual_seed(4)
    drive_to(twin, "body.1", SeedStage.FOSSILIZED, blueprint="norm")
    with torch.no_grad():
        twin.seed_slots["body.1"].seed.scale.fill_(1.0)
    model.eval()
    twin.eval()
    assert model.seed_slots["body.1"].seed is None
    assert not torch.equal(twin(x), model(x))


def test_a_hugging_face_gpt2_keeps_the_incubator_exact():
    """Optional: only where ``transformers`` is installed (never a dependency of Esper)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=50,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    plain = copy.deepcopy(model)
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    inject_slots(model, r"transformer\.h\.\d+", example_input=x)
    assert list(model.seed_slots) == ["transformer.h.0", "transformer.h.1"]
    assert {s.width for s in model.seed_slots.values()} == {32}
    model.germinate_seed("mlp", "s0", slot="transformer.h.0")
    model.advance_stage(SeedStage.TRAINING, slot="transformer.h.0")
    model.train()
    plain.train()
    out, shadows = model.forward_with_shadows(x)
    loss_fn = lambda o: _loss(o.logits, y)  # noqa: E731
    (loss_fn(out) + model.incubation_loss(loss_fn, out, shadows)).backward()
    ref = plain(x)
    loss_fn(ref).backward()
    assert torch.equal(out.logits, ref.logits)
    host = dict(model.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(host[name].grad, p.grad), name
    assert all(p.grad is not None for p in model.seed_parameters("transformer.h.0"))


def test_an_injected_sequential_still_counts_iterates_and_indexes_its_layers_only():
    model, plain, x, _, blueprint = _build("sequential")
    layers = list(plain)
    assert len(model) == len(plain) == 5
    assert [type(m) for m in model] == [type(m) for m in layers]
    assert type(model[-1]) is nn.Linear and model[-1] is model[4]
    with pytest.raises(IndexError, match="out of range"):
        model[5]
    head = model[:2]
    assert type(head) is nn.Sequential and len(head) == 2 and head[0] is model[0]
    drive_to(model, "1", SeedStage.FOSSILIZED, blueprint=blueprint)
    assert not torch.equal(model(x), plain(x))  # the fossil is part of the forward now
    with pytest.raises(TypeError, match="change its layers before inject_slots"):
        model.insert(0, nn.Identity())
    with pytest.raises(TypeError, match="change its layers before inject_slots"):
        del model[0]
    with pytest.raises(TypeError, match="change its layers before inject_slots"):
        model.pop(0)
    model.append(nn.Identity())
    assert len(model) == 6 and type(model[-1]) is nn.Identity
    assert model(x).shape == (6, 3)


def test_a_model_that_runs_all_its_children_passes_through_the_slots_container():
    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(12, 16)
            self.b = nn.Tanh()
            self.c = nn.Linear(16, 3)

        def forward(self, x):
            for module in self.children():
                x = module(x)
            return x

    torch.manual_seed(0)
    model, x = Chain(), torch.randn(4, 12)
    before = model(x)
    inject_slots(model, ["b"], example_input=x)
    assert torch.equal(model(x), before)
    drive_to(model, "b", SeedStage.FOSSILIZED, blueprint="mlp")
    assert not torch.equal(model(x), before)  # the fossil runs, from its route
