"""The main job end to end on the default task: a seed really grows, and growth does no harm."""

from __future__ import annotations

import json

import pytest

from esper.kasmina import MorphogeneticModel
from esper.scripts.train import RunConfig, run_training

FULL_PATH = ["GERMINATED", "TRAINING", "BLENDING", "PROBATIONARY", "FOSSILIZED"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from rich.console import Console

    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the process
    out = {}
    for mode in ("heuristic", "static"):
        run_dir = tmp_path_factory.mktemp(mode)
        run_training(RunConfig(mode=mode, seed=0, run_dir=str(run_dir)), quiet)
        out[mode] = run_dir
    return out


def test_default_heuristic_run_fossilizes_a_seed_through_the_full_lifecycle(runs):
    summary = json.loads((runs["heuristic"] / "summary.json").read_text())
    assert summary["task"] == "digits" and summary["mode"] == "heuristic"
    assert any(s["stages"] == FULL_PATH for s in summary["seeds"])
    assert summary["fossilized"] >= 1


def test_growth_does_no_harm_on_seed_0(runs):
    grown = json.loads((runs["heuristic"] / "summary.json").read_text())
    static = json.loads((runs["static"] / "summary.json").read_text())
    assert grown["final_val_accuracy"] >= static["final_val_accuracy"] - 0.5


def test_run_checkpoint_reloads_into_a_fresh_model(runs):
    model = MorphogeneticModel.load_checkpoint(runs["heuristic"] / "model.pt")
    summary = json.loads((runs["heuristic"] / "summary.json").read_text())
    assert model.count_parameters()["total"] == summary["total_params"]
