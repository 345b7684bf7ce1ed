"""Hosts: every valid small size works, injection points sit where they say, bad args fail."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_HOSTS, VOCAB_SIZE, drive_to
from esper.kasmina import build_host, get_blueprint, list_blueprints
from esper.kasmina.host import CNNHost, MorphogeneticModel, TransformerHost
from esper.leyline import SeedStage


def _features_at(host, x, position):
    return host.run_blocks(host.stem(x), 0, position)


def test_injection_points_exist_with_correct_widths(tiny):
    host = tiny.build()
    host.eval()
    x = tiny.inputs()
    points, positions = host.injection_points, host.injection_positions
    assert {"early", "mid", "late"} <= set(points)
    assert set(points) == set(positions)
    # Points are listed in forward order.
    order = [positions[name] for name in points]
    assert order == sorted(order)
    assert positions["early"] <= positions["mid"] <= positions["late"] == host.n_blocks
    for name, width in points.items():
        h = _features_at(host, x, positions[name])
        channel_dim = 1 if tiny.topology == "cnn" else -1
        assert h.shape[channel_dim] == width, name


def test_cnn_points_follow_blocks(tiny_cnn):
    host = tiny_cnn.build()
    base = tiny_cnn.kwargs["base_channels"]
    n = host.n_blocks
    # A CNN slot never sits on the raw image; early precedes late once there are 2+ blocks.
    assert host.injection_positions["early"] >= 1
    if n >= 2:
        assert host.injection_positions["early"] < host.injection_positions["late"]
    for k in range(1, n + 1):
        assert host.injection_positions[f"block{k}"] == k
        assert host.injection_points[f"block{k}"] == base * 2 ** (k - 1)


def test_transformer_points_follow_layers(tiny_tf):
    host = tiny_tf.build()
    n = host.n_blocks
    assert 0 <= host.injection_positions["early"] < host.injection_positions["late"] == n
    for k in range(1, n + 1):
        assert host.injection_positions[f"layer{k}"] == k
    assert host.lm_head.weight is host.tok_emb.weight  # head tied to the embedding


def test_segments_compose_to_forward_at_every_split(tiny):
    host = tiny.build()
    host.eval()
    x = tiny.inputs()
    full = host(x)
    assert full.shape == tiny.output_shape
    for position in sorted(set(host.injection_positions.values())):
        h = host.run_blocks(host.stem(x), 0, position)
        out = host.head(host.run_blocks(h, position, host.n_blocks))
        assert torch.equal(out, full)


@pytest.mark.parametrize("train", [False, True])
def test_model_with_every_slot_and_no_seed_equals_host(tiny, train):
    host = tiny.build()
    model = MorphogeneticModel(host, slots=list(host.injection_points))
    model.train(train)
    x = tiny.inputs()
    assert torch.equal(model(x), host(x))


def test_seeds_at_every_point_run_forward_and_backward(tiny):
    """One seed per injection point, in every live stage, on every valid small host."""
    host = tiny.build()
    names = list(host.injection_points)
    model = MorphogeneticModel(host, slots=names)
    stages = [SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED]
    for i, name in enumerate(names):
        drive_to(model, name, stages[i % len(stages)])
    x, y = tiny.inputs(), tiny.targets()
    out, shadows = model.forward_with_shadows(x)
    assert out.shape == tiny.output_shape
    assert torch.isfinite(out).all()
    assert set(shadows) == {n for n in names if model.seed_slots[n].stage == SeedStage.TRAINING}
    loss = tiny.loss(out, y) + model.incubation_loss(lambda o: tiny.loss(o, y), out, shadows)
    loss.backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    # The deepest seed always learns. (Upstream ones may see no gradient at all: an isolated CNN
    # seed at alpha 1 passes none back to what lies before it.)
    last = model.seed_slots[names[-1]]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in last.seed.parameters())


def test_every_blueprint_at_every_point(tiny):
    """Every blueprint of the topology germinates (shape probe passes) at every point and runs."""
    x = tiny.inputs()
    for blueprint in list_blueprints(tiny.topology):
        model = MorphogeneticModel(tiny.build(), slots=["early", "mid", "late"])
        for name in model.seed_slots:
            if get_blueprint(tiny.topology, blueprint).copies_target and (
                model.host.injection_positions[name] == 0
            ):
                # A copy of the block before the slot: there is none after the embedding.
                with pytest.raises(ValueError, match="copies the block before the slot"):
                    model.germinate_seed(blueprint, "s", slot=name)
                assert model.seed_slots[name].stage == SeedStage.DORMANT
                continue
            drive_to(model, name, SeedStage.BLENDING, blueprint=blueprint)
            model.seed_slots[name].set_alpha(0.5)
        out = model(x)
        assert out.shape == tiny.output_shape, blueprint
        assert torch.isfinite(out).all(), blueprint


@pytest.mark.parametrize("n_blocks", [1, 2, 3, 4])
def test_every_small_cnn_depth(n_blocks):
    torch.manual_seed(0)
    host = CNNHost(num_classes=10, n_blocks=n_blocks, base_channels=4)
    model = MorphogeneticModel(host, slots=["early", "mid", "late"])
    for name in model.seed_slots:
        drive_to(model, name, SeedStage.BLENDING)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("n_layer", [1, 2, 3])
def test_every_small_transformer_depth(n_layer):
    torch.manual_seed(0)
    host = TransformerHost(VOCAB_SIZE, n_embd=16, n_head=2, n_layer=n_layer, block_size=8)
    model = MorphogeneticModel(host, slots=["early", "mid", "late"])
    for name in model.seed_slots:
        drive_to(model, name, SeedStage.BLENDING)
    out = model(torch.randint(0, VOCAB_SIZE, (2, 8)))
    assert out.shape == (2, 8, VOCAB_SIZE) and torch.isfinite(out).all()


@pytest.mark.parametrize("pool_layers", [0, 1, 3])
def test_cnn_pool_layers(pool_layers):
    torch.manual_seed(0)
    host = CNNHost(num_classes=10, n_blocks=3, base_channels=4, pool_layers=pool_layers)
    assert host(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_host_config_rebuilds_the_same_architecture(tiny):
    host = tiny.build()
    rebuilt = build_host(host.topology, dict(host.config))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in host.state_dict().items()
    }
    assert rebuilt.injection_points == host.injection_points


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_blocks": 0},
        {"n_blocks": -1},
        {"n_blocks": 2.5},
        {"num_classes": 0},
        {"base_channels": 0},
        {"in_channels": 0},
        {"pool_layers": -1},
        {"n_blocks": 2, "pool_layers": 3},
    ],
)
def test_cnn_invalid_args_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        CNNHost(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vocab_size": 0},
        {"n_layer": 0},
        {"n_embd": 0},
        {"n_head": 0},
        {"block_size": 0},
        {"n_embd": 15, "n_head": 2},
        {"dropout": 1.0},
        {"dropout": -0.1},
    ],
)
def test_transformer_invalid_args_raise_value_error(kwargs):
    args = {"vocab_size": VOCAB_SIZE, "n_embd": 16, "n_head": 2, "n_layer": 1, "block_size": 8}
    args.update(kwargs)
    with pytest.raises(ValueError):
        TransformerHost(**args)


def test_transformer_rejects_too_long_sequence():
    host = TINY_HOSTS["tf1"].build()
    with pytest.raises(ValueError, match="block_size"):
        host(torch.zeros(1, 9, dtype=torch.long))


def test_build_host_unknown_kind():
    with pytest.raises(ValueError, match="cnn"):
        build_host("rnn", {})


@pytest.mark.parametrize("slots", [["nowhere"], [], ["mid", "mid"], ["early", "bogus"]])
def test_model_invalid_slots_raise_value_error(slots):
    host = TINY_HOSTS["cnn3"].build()
    with pytest.raises(ValueError) as err:
        MorphogeneticModel(host, slots=slots)
    if slots and slots[0] != "mid":
        assert "early" in str(err.value) and "late" in str(err.value)  # lists the valid points


def test_model_accepts_a_single_slot_name_and_orders_slots_by_position():
    host = TINY_HOSTS["cnn3"].build()
    assert list(MorphogeneticModel(host, slots="late").seed_slots) == ["late"]
    host = TINY_HOSTS["cnn3"].build()
    model = MorphogeneticModel(host, slots=["late", "early", "mid"])
    assert list(model.seed_slots) == ["early", "mid", "late"]


def test_model_unknown_slot_in_operations_raises():
    model = TINY_HOSTS["cnn3"].model(slots=["mid"])
    with pytest.raises(ValueError, match="mid"):
        model.germinate_seed("norm", "s", slot="early")
    with pytest.raises(ValueError):
        model.cull_seed(slot="late")
