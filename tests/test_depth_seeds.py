"""Depth growth for transformers: a whole pre-norm block as a seed, fresh (the identity at
first) or stacked (a copy of the block before its slot), isolated and saved like every seed."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina import MorphogeneticModel, TransformerHost
from esper.kasmina.hosts import TransformerBlock
from esper.leyline import SeedStage
from esper.testing import cross_entropy


def _model(n_head=2):
    torch.manual_seed(0)
    host = TransformerHost(16, n_embd=16, n_head=n_head, n_layer=2, block_size=8, dropout=0.0)
    return MorphogeneticModel(host, slots=["early", "late"])


def _tokens():
    return torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(1))


def _late_features(model, tokens):
    host = model.host
    return host.run_blocks(host.stem(tokens), 0, host.n_blocks)


def test_a_fresh_block_is_the_identity_and_learns_in_the_shadow_pass():
    model = _model()
    model.germinate_seed("block", "b", slot="late")
    slot = model.seed_slots["late"]
    assert isinstance(slot.seed, TransformerBlock)
    h = torch.randn(2, 8, 16)
    assert torch.equal(slot.seed(h), h)  # both residual branches start at zero
    assert slot.advance_stage(SeedStage.TRAINING).passed
    tokens = _tokens()
    out, shadows = model.forward_with_shadows(tokens)
    loss = model.incubation_loss(lambda o: cross_entropy(o, tokens), out, shadows)
    loss.backward()
    assert slot.seed.mlp[2].weight.grad.abs().sum() > 0  # the zero output layers learn


def test_a_stacked_block_is_a_copy_of_the_block_before_it_in_its_own_tensors():
    model = _model(n_head=2)  # the seed's own rule would give 16 channels 4 heads
    model.germinate_seed("block_stack", "s", slot="late")
    assert model.seed_slots["late"].seed_start == "copy"
    seed, before = model.seed_slots["late"].seed, model.host.blocks[-1]
    h = torch.randn(2, 8, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(seed(h), before(h))  # the same function, heads included
    host_ptrs = {p.data_ptr() for p in model.host.parameters()}
    assert not any(p.data_ptr() in host_ptrs for p in seed.parameters())
    # Training the copy leaves the block it was copied from alone.
    weight = before.mlp[0].weight.detach().clone()
    with torch.no_grad():
        seed.mlp[0].weight.add_(1.0)
    assert torch.equal(before.mlp[0].weight, weight)


def test_a_stacked_seed_keeps_the_host_exact_while_it_incubates():
    model = _model()
    tokens = _tokens()
    with torch.no_grad():
        reference = model(tokens)
    model.germinate_seed("block_stack", "s", slot="late")
    assert model.seed_slots["late"].advance_stage(SeedStage.TRAINING).passed
    out, shadows = model.forward_with_shadows(tokens)
    assert torch.equal(out.detach(), reference)
    # Blended in at alpha 1 the model applies the last block twice: another output.
    assert not torch.allclose(shadows["late"], out)


def test_a_stacked_seed_round_trips_through_a_checkpoint(tmp_path):
    model = _model(n_head=2)
    model.germinate_seed("block_stack", "s", slot="late")
    model.save_checkpoint(tmp_path / "model.pt")
    loaded = MorphogeneticModel.load_checkpoint(tmp_path / "model.pt")
    seed = loaded.seed_slots["late"].seed
    assert seed.attn.n_head == 2
    assert loaded.seed_slots["late"].seed_start == "copy"
    h = torch.randn(2, 8, 16)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(seed(h), model.seed_slots["late"].seed(h))


def test_a_stacked_seed_after_the_embedding_is_refused_and_the_slot_left_alone():
    model = _model()
    with pytest.raises(ValueError, match="sits on Dropout, not on a block the seed can copy"):
        model.germinate_seed("block_stack", "s", slot="early")
    assert model.seed_slots["early"].stage == SeedStage.DORMANT
    assert model.seed_slots["early"].seed is None


def test_a_stacked_seed_copies_its_blocks_dropout_and_keeps_it_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    host = TransformerHost(16, n_embd=16, n_head=2, n_layer=2, block_size=8, dropout=0.1)
    model = MorphogeneticModel(host, slots=["late"])
    model.germinate_seed("block_stack", "s", slot="late")
    seed = model.seed_slots["late"].seed
    assert (seed.attn.dropout, seed.attn.resid_drop.p, seed.mlp[3].p) == (0.1, 0.1, 0.1)
    model.save_checkpoint(tmp_path / "model.pt")
    loaded = MorphogeneticModel.load_checkpoint(tmp_path / "model.pt").seed_slots["late"].seed
    assert (loaded.attn.dropout, loaded.attn.resid_drop.p, loaded.mlp[3].p) == (0.1, 0.1, 0.1)
    fresh_host = TransformerHost(16, n_embd=16, n_head=2, n_layer=2, block_size=8)
    fresh = MorphogeneticModel(fresh_host, slots=["late"])
    fresh.germinate_seed("block", "b", slot="late")
    assert fresh.seed_slots["late"].seed.attn.dropout == 0.0  # a fresh block: no dropout
