"""Gate consensus under torch.distributed: a gate passes only where it passes on every rank, so
the ranks' architectures never diverge.

Two gloo processes run the same scripted scenarios once (module-scoped, it takes a few seconds);
each test then checks what both ranks recorded.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from esper.kasmina import GateFailedError
from esper.kasmina.distributed import all_ranks_agree
from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import SeedStage
from esper.testing.distributed import init_gloo, report, spawn_ranks

WORLD = 2


def _g2_metrics(slot, passing: bool) -> None:
    m = slot.state.metrics
    m.incubation_gain = 0.05 if passing else -0.01  # rank-local shadow losses disagree
    m.epochs_in_current_stage = 5
    m.gradient_ratio = 1.0


def _new_slot(name: str = "mid", probation_epochs: int = 5):
    torch.manual_seed(0)
    host = CNNHost(num_classes=10, n_blocks=2, base_channels=4)
    model = MorphogeneticModel(host, slots=[name], probation_epochs=probation_epochs)
    model.germinate_seed("norm", "s", slot=name)
    slot = model.seed_slots[name]
    assert slot.advance_stage(SeedStage.TRAINING).passed
    return model, slot


def _to_probation(model, slot, contribution):
    _g2_metrics(slot, True)
    assert slot.advance_stage(SeedStage.BLENDING).passed
    slot.state.metrics.epochs_in_current_stage = 5
    slot.state.blend_step = slot.blending_steps  # G3 waits for the end of the ramp
    slot.set_alpha(1.0)
    assert slot.advance_stage(SeedStage.PROBATIONARY).passed
    slot.state.metrics.counterfactual_contribution = contribution


def _scenarios(rank: int) -> dict:
    out: dict = {}
    r0 = rank == 0

    # G2 passes on rank 0 only, via step_epoch: nobody blends.
    model, slot = _new_slot()
    _g2_metrics(slot, passing=r0)
    report = slot.step_epoch()
    out["g2_split_step"] = {
        "stage": slot.stage.name,
        "passed": [r.passed for r in report.gate_results],
        "failed": [list(r.checks_failed) for r in report.gate_results],
        "isolate": slot.isolate_gradients,
        "alpha": slot.alpha,
    }

    # Same through advance_stage.
    model, slot = _new_slot()
    _g2_metrics(slot, passing=r0)
    result = slot.advance_stage(SeedStage.BLENDING)
    out["g2_split_advance"] = {
        "stage": slot.stage.name,
        "passed": result.passed,
        "failed": list(result.checks_failed),
    }

    # G2 passes everywhere: everybody blends.
    model, slot = _new_slot()
    _g2_metrics(slot, passing=True)
    slot.step_epoch()
    out["g2_both"] = {"stage": slot.stage.name, "alpha": slot.alpha}

    # G5 (fossilize) passes on rank 1 only: both refuse, with GateFailedError.
    model, slot = _new_slot()
    _to_probation(model, slot, contribution=0.2 if r0 else 3.0)
    try:
        model.fossilize_seed(slot="mid")
        out["g5_split"] = {"raised": False, "stage": slot.stage.name}
    except GateFailedError as err:
        out["g5_split"] = {"raised": True, "stage": slot.stage.name, "message": str(err)}

    # G5 passes everywhere.
    model, slot = _new_slot()
    _to_probation(model, slot, contribution=3.0)
    model.fossilize_seed(slot="mid")
    out["g5_both"] = {"stage": slot.stage.name}

    # Probation: rank 0 measured a harmful seed, rank 1 a helpful one. One architecture only.
    model, slot = _new_slot()
    _to_probation(model, slot, contribution=-1.0 if r0 else 2.0)
    slot.step_epoch()
    out["probation_split"] = {"stage": slot.stage.name}

    # A seed that went non-finite on one rank only: culled everywhere, not on one rank.
    model, slot = _new_slot()
    _g2_metrics(slot, passing=True)
    if r0:
        with torch.no_grad():
            slot.seed.scale.fill_(float("nan"))
    slot.step_epoch()
    out["unhealthy_split"] = {"stage": slot.stage.name}

    out["agree"] = [all_ranks_agree(True), all_ranks_agree(r0), all_ranks_agree(False)]
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    init_gloo(rank, world, init_file)
    try:
        result = _scenarios(rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    report(out_dir, rank, result)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return spawn_ranks(_worker, WORLD, tmp_path_factory.mktemp("ddp"))


def test_g2_refused_everywhere_when_one_rank_fails_step_epoch(ranks):
    r0, r1 = (r["g2_split_step"] for r in ranks)
    assert r0["stage"] == r1["stage"] == "TRAINING"
    assert r0["passed"] == r1["passed"] == [False]
    assert any("another rank" in c for c in r0["failed"][0])  # rank 0 passed locally
    assert any(c.startswith("incubation_gain") for c in r1["failed"][0])
    assert r0["isolate"] and r1["isolate"] and r0["alpha"] == r1["alpha"] == 0.0


def test_g2_refused_everywhere_when_one_rank_fails_advance_stage(ranks):
    r0, r1 = (r["g2_split_advance"] for r in ranks)
    assert r0["stage"] == r1["stage"] == "TRAINING"
    assert not r0["passed"] and not r1["passed"]
    assert any("another rank" in c for c in r0["failed"])


def test_g2_passes_when_every_rank_passes(ranks):
    assert [r["g2_both"]["stage"] for r in ranks] == ["BLENDING", "BLENDING"]
    assert ranks[0]["g2_both"]["alpha"] == ranks[1]["g2_both"]["alpha"] > 0.0


def test_fossilize_refused_everywhere_when_one_rank_fails(ranks):
    r0, r1 = (r["g5_split"] for r in ranks)
    assert r0["raised"] and r1["raised"]
    assert r0["stage"] == r1["stage"] == "PROBATIONARY"
    assert "another rank" in r1["message"]
    assert [r["g5_both"]["stage"] for r in ranks] == ["FOSSILIZED", "FOSSILIZED"]


def test_probation_and_health_culls_are_agreed(ranks):
    assert ranks[0]["probation_split"]["stage"] == ranks[1]["probation_split"]["stage"]
    assert ranks[0]["unhealthy_split"]["stage"] == ranks[1]["unhealthy_split"]["stage"]
    # A seed that is harmful (or broken) on any rank is culled on every rank.
    assert ranks[0]["probation_split"]["stage"] == "CULLED"
    assert ranks[0]["unhealthy_split"]["stage"] == "CULLED"


def test_all_ranks_agree_is_a_logical_and(ranks):
    assert ranks[0]["agree"] == ranks[1]["agree"] == [True, False, False]


@pytest.mark.parametrize("value", [True, False, 1, 0])
def test_all_ranks_agree_is_a_no_op_without_init(value):
    assert not dist.is_initialized()
    assert all_ranks_agree(value) is bool(value)
