"""Checkpoints survive growth: a model with seeds in every kind of stage saves as plain data plus
tensors, loads with ``weights_only=True`` into a fresh model, and behaves identically after."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import TINY_HOSTS, drive_to, perturb_seed
from esper.kasmina import GateConfig, SeedState, SlotOccupiedError
from esper.kasmina.blending import GatedBlend
from esper.kasmina.host import MorphogeneticModel
from esper.leyline import SeedStage

S = SeedStage
ROOT = Path(__file__).resolve().parents[1]
PLAN = [S.TRAINING, S.BLENDING, S.FOSSILIZED, S.EMBARGOED]


def grown(tiny, last_stage=S.EMBARGOED, **kwargs):
    """A model with a TRAINING seed, a gated BLENDING seed, a FOSSILIZED seed and a culled slot,
    trained for a few steps so that no weight or buffer is at its initial value."""
    points = list(tiny.build().injection_points)[:4]
    model = tiny.model(slots=points, embargo_epochs=2, **kwargs)
    plan = [*PLAN[:3], last_stage]
    for name, stage in zip(points, plan, strict=True):
        blend = "gated" if stage == S.BLENDING else "linear"
        drive_to(model, name, stage, blend=blend)
    perturb_seed(model.seed_slots[points[0]], seed=1)
    perturb_seed(model.seed_slots[points[1]], seed=2)
    model.seed_slots[points[1]].set_alpha(0.4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = tiny.inputs(), tiny.targets()
    for _ in range(2):
        opt.zero_grad()
        tiny.loss(model(x), y).backward()
        opt.step()
        model.capture_gradient_telemetry()
    model.seed_slots[points[0]].state.metrics.record_quality(61.5)
    return model, points


def assert_same_model(a, b, x):
    assert a.architecture() == b.architecture()
    assert list(a.seed_slots) == list(b.seed_slots)
    for name, sa in a.seed_slots.items():
        sb = b.seed_slots[name]
        assert sa.state.to_dict() == sb.state.to_dict(), name
        assert sa.isolate_gradients == sb.isolate_gradients, name
        assert (sa.seed is None) == (sb.seed is None), name
        assert type(sa.seed) is type(sb.seed) and type(sa.blend) is type(sb.blend), name
    sda, sdb = a.state_dict(), b.state_dict()
    assert sda.keys() == sdb.keys()
    for key, value in sda.items():
        if torch.is_tensor(value):
            assert torch.equal(value, sdb[key]), key
        else:
            assert value == sdb[key], key
    a.eval()
    b.eval()
    assert torch.equal(a(x), b(x))
    assert [p.shape for p in a.seed_parameters()] == [p.shape for p in b.seed_parameters()]
    assert [p.shape for p in a.host_parameters()] == [p.shape for p in b.host_parameters()]


def _plain(value) -> bool:
    """Only tensors and plain data (what weights_only=True accepts without allow-listing)."""
    if torch.is_tensor(value) or value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return False


def test_checkpoint_round_trip(tiny, tmp_path):
    model, points = grown(tiny)
    x = tiny.inputs()
    model.eval()
    expected = model(x)
    path = model.save_checkpoint(tmp_path / "ck.pt")

    loaded = MorphogeneticModel.load_checkpoint(path)
    assert_same_model(model, loaded, x)
    assert torch.equal(loaded(x), expected)
    stages = [loaded.seed_slots[p].stage for p in points]
    assert stages == PLAN
    assert isinstance(loaded.seed_slots[points[1]].blend, GatedBlend)
    assert loaded.seed_slots[points[3]].state.embargo_remaining == 2

    # The reloaded model goes on exactly like the original.
    model.train()
    loaded.train()
    for _ in range(3):
        ra, rb = model.step_epoch(), loaded.step_epoch()
        assert {k: v.transitions for k, v in ra.items()} == {
            k: v.transitions for k, v in rb.items()
        }
    assert_same_model(model, loaded, x)
    gate = list(loaded.seed_slots[points[1]].blend.parameters())
    assert {id(p) for p in gate} <= {id(p) for p in loaded.seed_parameters()}


def test_culled_slot_round_trip(tmp_path):
    tiny = TINY_HOSTS["tf1"]
    model, points = grown(tiny, last_stage=S.CULLED)
    loaded = MorphogeneticModel.load_checkpoint(model.save_checkpoint(tmp_path / "c.pt"))
    assert_same_model(model, loaded, tiny.inputs())
    slot = loaded.seed_slots[points[3]]
    assert slot.stage == S.CULLED and slot.seed is None
    with pytest.raises(SlotOccupiedError):
        loaded.germinate_seed("noop", "x", slot=points[3])
    loaded.step_epoch()
    assert slot.stage == S.EMBARGOED


def test_checkpoint_loads_with_weights_only_and_holds_plain_data(tmp_path):
    tiny = TINY_HOSTS["cnn3"]
    model, _ = grown(tiny)
    path = model.save_checkpoint(tmp_path / "sub" / "ck.pt", extra={"epoch": 7, "note": "hi"})
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"architecture", "state_dict", "extra"}
    assert payload["extra"] == {"epoch": 7, "note": "hi"}
    assert _plain(payload)
    # The plain-data description of every slot is in the state_dict itself.
    extra_keys = [k for k in payload["state_dict"] if k.endswith("_extra_state")]
    assert len(extra_keys) == len(model.seed_slots)


def test_settings_and_gate_config_survive(tmp_path):
    tiny = TINY_HOSTS["cnn2"]
    config = GateConfig(g2_min_training_epochs=1, g5_min_contribution=2.5)
    model = tiny.model(
        slots=["early", "late"], gate_config=config, blending_steps=3, probation_epochs=4
    )
    loaded = MorphogeneticModel.load_checkpoint(model.save_checkpoint(tmp_path / "s.pt"))
    slot = loaded.seed_slots["late"]
    assert loaded.slot_settings == model.slot_settings
    assert slot.blending_steps == 3 and slot.probation_epochs == 4
    assert slot.gates.config == config


def test_load_state_dict_into_fresh_model_rebuilds_seeds(tiny):
    model, points = grown(tiny)
    fresh = tiny.model(slots=points, seed=99, embargo_epochs=2)  # no seeds, other weights
    assert all(s.seed is None for s in fresh.seed_slots.values())
    fresh.load_state_dict(model.state_dict())  # strict
    assert_same_model(model, fresh, tiny.inputs())


def test_load_unseeded_state_removes_seeds(tiny):
    model, points = grown(tiny)
    empty = tiny.model(slots=points, seed=5, embargo_epochs=2)
    model.load_state_dict(empty.state_dict())
    assert all(s.seed is None and s.stage == S.DORMANT for s in model.seed_slots.values())
    assert model.seed_parameters() == []
    assert_same_model(model, empty, tiny.inputs())


def test_loading_into_an_eval_model_keeps_every_module_in_eval_mode(tiny):
    model, points = grown(tiny)
    fresh = tiny.model(slots=points, seed=3, embargo_epochs=2)
    fresh.eval()
    fresh.load_state_dict(model.state_dict())
    assert [n for n, m in fresh.named_modules() if m.training] == []
    fresh.train()
    fresh.load_state_dict(model.state_dict())
    assert all(m.training for m in fresh.modules())


def test_save_is_atomic_and_overwrites(tmp_path):
    tiny = TINY_HOSTS["tf2"]
    model, _ = grown(tiny)
    path = tmp_path / "ck.pt"
    model.save_checkpoint(path)
    model.seed_slots["early"].state.metrics.record_quality(99.0)
    model.save_checkpoint(path)
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]  # no temporary files left behind
    loaded = MorphogeneticModel.load_checkpoint(path)
    assert loaded.seed_slots["early"].state.metrics.current_quality == 99.0


def test_seed_state_round_trips_through_plain_data(tiny):
    model, points = grown(tiny)
    slot = model.seed_slots[points[0]]
    slot.state.stage = S.BLENDING  # a forced step, recorded in the history
    for s in model.seed_slots.values():
        raw = s.state.to_dict()
        assert _plain(raw) and "forced" in raw and "blending_steps" in raw
        assert SeedState.from_dict(raw) == s.state
    assert slot.state.to_dict()["forced"] == [3]


def test_a_development_versions_checkpoint_is_refused_in_one_line(tmp_path):
    model, _ = grown(TINY_HOSTS["cnn3"], blending_steps=4)
    path = model.save_checkpoint(tmp_path / "new.pt")
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["format"] = 1  # written before 0.4.0, the first release
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="model architecture format 1 is not 2; it was written"):
        MorphogeneticModel.load_checkpoint(tmp_path / "old.pt")


def test_load_missing_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        MorphogeneticModel.load_checkpoint(tmp_path / "nothing_here.pt")


def test_deepcopy_of_a_grown_model_is_independent(tiny):
    model, points = grown(tiny)
    twin = copy.deepcopy(model)
    x = tiny.inputs()
    assert_same_model(model, twin, x)
    for slot in twin.seed_slots.values():
        assert slot._owner[0] is twin  # telemetry of the copy reads the copy's host
    with torch.no_grad():
        perturb_seed(twin.seed_slots[points[1]], seed=9)
    assert not torch.equal(twin(x), model(x))


def test_checkpoint_loads_in_a_fresh_process(tmp_path):
    tiny = TINY_HOSTS["cnn3"]
    model, _ = grown(tiny)
    model.eval()
    x = tiny.inputs()
    model.save_checkpoint(tmp_path / "ck.pt")
    torch.save({"x": x, "out": model(x).detach()}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from esper.kasmina.host import MorphogeneticModel
        model = MorphogeneticModel.load_checkpoint({str(tmp_path / "ck.pt")!r})
        model.eval()
        io = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        assert torch.equal(model(io["x"]), io["out"])
        print("stages", [s.stage.name for s in model.seed_slots.values()])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "['TRAINING', 'BLENDING', 'FOSSILIZED', 'EMBARGOED']" in done.stdout
