"""The main job end to end on the default task: seeds really grow through the lifecycle, only
what paid is kept, and growth does no harm."""

from __future__ import annotations

import json

import pytest

from esper.kasmina import MorphogeneticModel
from esper.runs import RunSpec, train_run

TO_PROBATION = ["GERMINATED", "TRAINING", "BLENDING", "PROBATIONARY"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from rich.console import Console

    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    out = {}
    for mode in ("heuristic", "static"):
        run_dir = tmp_path_factory.mktemp(mode)
        train_run(RunSpec(mode=mode, seed=0, run_dir=str(run_dir)), console=quiet)
        out[mode] = run_dir
    return out


def test_default_heuristic_run_grows_seeds_through_the_lifecycle_and_keeps_only_what_paid(runs):
    """Digits saturates (the host reaches 100% training accuracy), so on seed 0 no seed adds
    anything before the host adapts; each one blends in, is measured in probation, and is
    culled rather than fossilized on dependency."""
    from esper.nissa import read_events

    summary = json.loads((runs["heuristic"] / "summary.json").read_text())
    assert summary["task"] == "digits" and summary["mode"] == "heuristic"
    assert any(s["stages"][:4] == TO_PROBATION for s in summary["seeds"])
    events = list(read_events(runs["heuristic"] / "events.jsonl"))
    fossilized = {e.seed_id for e in events if e.event_type.value == "seed_fossilized"}
    assert summary["fossilized"] == len(fossilized)
    for seed in summary["seeds"]:
        if seed["stages"][:4] == TO_PROBATION and seed["seed_id"] not in fossilized:
            assert seed["stages"][4] == "CULLED", seed


def test_growth_does_no_harm_on_seed_0(runs):
    grown = json.loads((runs["heuristic"] / "summary.json").read_text())
    static = json.loads((runs["static"] / "summary.json").read_text())
    assert grown["final_val_accuracy"] >= static["final_val_accuracy"] - 0.5


def test_run_checkpoint_reloads_into_a_fresh_model(runs):
    from esper.tolaria.data import load_digits_data
    from esper.tolaria.trainer import Trainer

    model = MorphogeneticModel.load_checkpoint(runs["heuristic"] / "model.pt")
    summary = json.loads((runs["heuristic"] / "summary.json").read_text())
    assert model.count_parameters()["total"] == summary["total_params"]
    stages = {s["slot"]: s["final_stage"] for s in summary["seeds"]}
    for name, slot in model.seed_slots.items():
        if name in stages and stages[name] not in ("CULLED", "EMBARGOED", "RESETTING"):
            assert slot.stage.name == stages[name]
    # The reloaded model predicts exactly what the run measured last.
    trainer = Trainer(model, load_digits_data(None, 0))
    val_loss, val_acc = trainer.evaluate()
    assert val_acc == summary["final_val_accuracy"]
    assert val_loss == summary["final_val_loss"]


def test_event_log_replays_every_slots_stage_history(runs):
    from esper.nissa import read_events

    model = MorphogeneticModel.load_checkpoint(runs["heuristic"] / "model.pt")
    histories = {name: ["DORMANT"] for name in model.seed_slots}
    changes = 0
    for event in read_events(runs["heuristic"] / "events.jsonl"):
        if event.event_type != "seed_stage_changed":
            continue
        changes += 1
        history = histories[event.slot]
        assert history[-1] == event.data["from"]
        if event.data["to"] == "DORMANT":
            history[:] = ["DORMANT"]
        else:
            history.append(event.data["to"])
    assert changes >= 5
    for name, slot in model.seed_slots.items():
        assert histories[name] == [s.name for s in slot.state.stage_history], name
