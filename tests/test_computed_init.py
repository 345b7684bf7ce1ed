"""Computed initialisation: the fit is the least-squares solution it claims, the seed it gives
lowers the training loss where a zero-initialised one changes nothing, the slot keeps only
what it should, and ranks under torch.distributed solve the same seed."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from esper.kasmina import CNNHost, MorphogeneticModel, TransformerHost
from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.computed_init import RIDGE, InitMemory, fit_output_layer, output_layer
from esper.leyline import SeedStage
from esper.runs import Run, RunSpec, UsageError, build_run
from esper.testing.distributed import init_gloo, report, spawn_ranks

# --- the fit ------------------------------------------------------------------------------------


def _samples(shape, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) for _ in range(n)
    ]


def test_a_linear_output_layer_is_the_ridge_solution_scaled_to_the_feature_rms():
    seed = get_blueprint("transformer", "mlp").build(8)
    samples = _samples((4, 5, 8))
    assert fit_output_layer(seed, samples, scale=0.1)
    with torch.no_grad():
        z = torch.cat([seed.hidden(x).reshape(-1, 32) for x, _ in samples]).double()
        z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1)  # fc2 has a bias
        g = torch.cat([g.reshape(-1, 8) for _, g in samples]).double()
        gram = z.T @ z
        ridge = RIDGE * gram.diagonal().mean()
        direction = -torch.linalg.solve(gram + ridge * torch.eye(33, dtype=z.dtype), z.T @ g)
        out = z @ direction
        features = torch.cat([x.reshape(-1, 8) for x, _ in samples]).double()
        expected = direction * 0.1 * features.pow(2).mean().sqrt() / out.pow(2).mean().sqrt()
    fc2 = seed.output_layer
    torch.testing.assert_close(fc2.weight.double(), expected[:-1].T, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fc2.bias.double(), expected[-1], rtol=1e-5, atol=1e-7)
    # The seed's output has 0.1 times the features' RMS, and points down the gradient.
    with torch.no_grad():
        outputs = torch.cat([(seed(x) - x).reshape(-1) for x, _ in samples])
        grads = torch.cat([g.reshape(-1) for _, g in samples])
    assert outputs.pow(2).mean().sqrt() == pytest.approx(
        0.1 * features.pow(2).mean().sqrt().item(), rel=1e-4
    )
    assert torch.dot(outputs, grads) < 0  # to first order the loss goes down


def test_a_conv_output_layer_matches_the_convolution_it_stands_for():
    """The fit works on unfolded patches; the conv it writes must compute what the solve did."""
    seed = get_blueprint("cnn", "conv_light").build(4)  # ..., Conv2d(4, 4, 3, padding=1)
    samples = _samples((2, 4, 6, 6))
    assert fit_output_layer(seed, samples, scale=0.05)
    conv = seed.output_layer
    with torch.no_grad():
        hidden = seed.hidden(samples[0][0])
        patches = F.unfold(hidden, 3, padding=1).transpose(1, 2).reshape(-1, 36)
        by_hand = patches @ conv.weight.reshape(4, 36).T + conv.bias
        assert torch.allclose(by_hand, conv(hidden).movedim(1, -1).reshape(-1, 4), atol=1e-6)
        first_order = sum(torch.sum((seed(x) - x) * g) for x, g in samples)
    assert first_order < 0


@pytest.mark.parametrize(
    ("topology", "blueprint"), [("cnn", "norm"), ("cnn", "attention"), ("cnn", "noop")]
)
def test_blueprints_without_an_output_layer_start_as_built(topology, blueprint):
    seed = get_blueprint(topology, blueprint).build(8)
    before = copy.deepcopy(seed.state_dict())
    assert output_layer(seed) is None
    assert not fit_output_layer(seed, _samples((2, 8, 4, 4)), scale=0.05)
    assert all(torch.equal(before[k], v) for k, v in seed.state_dict().items())


def test_nothing_to_solve_from_leaves_the_seed_at_zero():
    seed = get_blueprint("cnn", "conv_light").build(4)
    assert not fit_output_layer(seed, [], scale=0.05)
    zero_grad = [(x, torch.zeros_like(g)) for x, g in _samples((2, 4, 6, 6))]
    assert not fit_output_layer(seed, zero_grad, scale=0.05)
    assert not seed.output_layer.weight.any()


# --- the memory ---------------------------------------------------------------------------------


def test_the_memory_keeps_the_first_rows_of_every_nth_batch_and_their_gradient():
    memory = InitMemory(batches=2, rows=3, every=2)
    kept = []
    for i in range(6):
        x = torch.full((5, 4), float(i), requires_grad=True)
        memory.record(x)
        (x * (i + 1)).sum().backward()
        kept.append(x)
    samples = memory.samples()
    assert [s[0][0, 0].item() for s in samples] == [2.0, 4.0]  # batches 0, 2, 4: the last two
    assert all(x.shape == g.shape == (3, 4) for x, g in samples)
    assert [s[1][0, 0].item() for s in samples] == [3.0, 5.0]  # d(x * (i + 1)) / dx
    memory.record(torch.ones(5, 4, requires_grad=True))  # 7th offered: kept, no backward yet
    # It displaced the oldest, and until its backward runs it is no sample.
    assert [s[0][0, 0].item() for s in memory.samples()] == [4.0]
    memory.clear()
    assert len(memory) == 0
    with pytest.raises(ValueError, match="must be >= 1"):
        InitMemory(batches=0)


def _digits_model(**kwargs):
    torch.manual_seed(0)
    host = CNNHost(num_classes=10, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)
    return MorphogeneticModel(host, slots=["early", "mid"], **kwargs)


def test_a_slot_keeps_features_on_the_real_pass_of_training_steps_only():
    model = _digits_model()
    model.set_seed_init("computed")
    x = torch.randn(8, 1, 8, 8)
    model(x).sum().backward()  # a plain forward keeps nothing
    with torch.no_grad():
        model.forward_with_shadows(x)  # nor a pass without gradients
    assert all(len(s.init_memory) == 0 for s in model.seed_slots.values())
    out, _ = model.forward_with_shadows(x)
    out.sum().backward()
    assert all(len(s.init_memory) == 1 for s in model.seed_slots.values())
    model.germinate_seed("conv_light", "a", slot="mid")  # mid's memory is spent on the seed
    assert len(model.seed_slots["mid"].init_memory) == 0
    model.seed_slots["mid"].advance_stage(SeedStage.TRAINING)
    for _ in range(4):
        out, shadows = model.forward_with_shadows(x)
        (out.sum() + model.incubation_loss(lambda o: o.sum(), out, shadows)).backward()
    # An occupied slot keeps nothing (its next seed would read other features); the open one
    # goes on, every other batch.
    assert len(model.seed_slots["mid"].init_memory) == 0
    assert len(model.seed_slots["early"].init_memory) == 3
    model.reset_init_memory()
    assert len(model.seed_slots["early"].init_memory) == 0


def test_zero_init_keeps_no_memory_and_bad_settings_are_refused():
    model = _digits_model()
    assert all(s.init_memory is None for s in model.seed_slots.values())
    model.set_seed_init("computed")
    assert all(s.seed_init == "computed" for s in model.seed_slots.values())
    model.set_seed_init("zero")
    assert all(s.init_memory is None for s in model.seed_slots.values())
    assert all(s.seed_init == "zero" for s in model.seed_slots.values())
    with pytest.raises(ValueError, match="seed init must be one of zero, computed, got 'ones'"):
        model.set_seed_init("ones")
    with pytest.raises(ValueError, match="init scale must be > 0"):
        model.set_seed_init("computed", scale=0.0)
    with pytest.raises(UsageError, match="unknown --seed-init 'ones'; valid: zero, computed"):
        RunSpec("heuristic", seed_init="ones")


# --- the seed lowers the training loss -----------------------------------------------------------


def _trained(task: str, epochs: int, seed_init: str):
    built = build_run(RunSpec("static", task=task, seed=0, epochs=epochs, seed_init=seed_init))
    for _ in range(epochs):
        built.trainer.train_epoch()
    return built


def _shadow_loss(built, slot: str, batches) -> float:
    """The training loss with ``slot``'s seed blended in at alpha 1, as its first blended step
    would see it (the seed has not been trained yet)."""
    losses = [
        built.trainer.loss_fn(built.model.forward_with_shadows(x)[1][slot], y) for x, y in batches
    ]
    return float(torch.stack(losses).mean().detach())


@pytest.mark.parametrize(
    ("task", "slot", "blueprint"),
    [("digits", "late", "conv_light"), ("pyref", "late", "mlp")],
    ids=["conv", "mlp"],
)
def test_a_computed_seed_lowers_the_training_loss_where_a_zero_one_changes_nothing(
    task, slot, blueprint
):
    batches = None
    changes = {}
    for mode in ("zero", "computed"):
        built = _trained(task, 3, mode)
        try:
            batches = batches or list(built.trainer._batches("train"))[:8]  # fresh batches
            with torch.no_grad():
                host = float(
                    torch.stack(
                        [built.trainer.loss_fn(built.model(x), y) for x, y in batches]
                    ).mean()
                )
            built.model.germinate_seed(blueprint, "s", slot=slot)
            assert built.model.seed_slots[slot].advance_stage(SeedStage.TRAINING).passed
            changes[mode] = _shadow_loss(built, slot, batches) - host
        finally:
            built.trainer.close()
    assert changes["zero"] == pytest.approx(0.0, abs=1e-6)  # the identity: nothing changes
    assert changes["computed"] < -1e-4  # lower, by more than rounding


# --- ranks agree ----------------------------------------------------------------------------------


def _rank_worker(rank, world, init_file, out_dir):
    init_gloo(rank, world, init_file)
    try:
        samples = _samples((2, 6, 8), n=2, seed=rank)  # every rank saw other batches
        torch.manual_seed(0)
        seed = get_blueprint("transformer", "mlp").build(8)
        fit_output_layer(seed, samples, scale=0.05)
        dist.barrier()
    finally:
        # Left to interpreter exit, gloo's threads can abort the process.
        dist.destroy_process_group()
    report(out_dir, rank, {"weight": seed.output_layer.weight.flatten().tolist()})


def test_ranks_solve_one_seed_from_all_ranks_batches(tmp_path):
    r0, r1 = spawn_ranks(_rank_worker, 2, tmp_path)
    assert r0["weight"] == r1["weight"]
    torch.manual_seed(0)
    alone = get_blueprint("transformer", "mlp").build(8)
    both = _samples((2, 6, 8), n=2, seed=0) + _samples((2, 6, 8), n=2, seed=1)
    fit_output_layer(alone, both, scale=0.05)  # one process that saw every batch
    assert r0["weight"] == pytest.approx(alone.output_layer.weight.flatten().tolist(), abs=1e-6)


def test_a_transformer_host_takes_computed_seeds_at_every_blueprint_with_an_output_layer():
    torch.manual_seed(0)
    host = TransformerHost(vocab_size=16, n_embd=16, n_head=2, n_layer=1, block_size=8)
    model = MorphogeneticModel(host, slots=["late"])
    model.set_seed_init("computed")
    tokens = torch.randint(0, 16, (4, 8))
    for _ in range(2):
        out, _ = model.forward_with_shadows(tokens)
        F.cross_entropy(out.reshape(-1, 16), tokens.reshape(-1)).backward()
    for blueprint in ("mlp", "lora", "attention"):
        copy_ = copy.deepcopy(model)
        copy_.germinate_seed(blueprint, "s", slot="late")
        layer = copy_.seed_slots["late"].seed.output_layer
        assert isinstance(layer, nn.Linear) and layer.weight.any(), blueprint


def test_a_run_reports_how_each_seed_started(tmp_path):
    """summary.json and the germination event say whether a seed's start was computed: a run
    with computed starts whose seeds all have an output layer reports every one of them."""
    spec = RunSpec(
        "heuristic",
        task="digits",
        seed=0,
        epochs=16,
        seed_init="computed",
        blueprints=("conv_light",),
        run_dir=str(tmp_path / "run"),
    )
    with Run.new(spec, live=False) as run:
        run.train()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["seeds"] and {s["start"] for s in summary["seeds"]} == {"computed"}
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").open()]
    germinated = [e for e in events if e["event_type"] == "seed_germinated"]
    assert germinated and all(e["data"]["start"] == "computed" for e in germinated)


def test_a_model_given_slots_by_inject_slots_takes_computed_seeds_too():
    from esper.kasmina.inject import inject_slots

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    model = inject_slots(net, {"hidden": "1"}, example_input=x)
    model.set_seed_init("computed")
    for _ in range(4):
        out, _ = model.forward_with_shadows(x)
        F.cross_entropy(out, y).backward()
    with torch.no_grad():
        host = F.cross_entropy(model(x), y)
    model.germinate_seed("mlp", "s", slot="hidden")
    slot = model.seed_slots["hidden"]
    assert slot.seed_start == "computed"
    assert slot.advance_stage(SeedStage.TRAINING).passed
    _, shadows = model.forward_with_shadows(x)
    assert F.cross_entropy(shadows["hidden"], y) < host
