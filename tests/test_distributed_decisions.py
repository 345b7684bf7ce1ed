"""Rank 0 decides for every rank: a controller that proposes something else on each rank still
leaves one model and one event stream.

Two gloo processes drive the :class:`~esper.tolaria.Trainer` directly (no command line), each
with its own controller instance that decides by its rank. The trainer must carry out rank 0's
decision everywhere and tell each rank's controller that decision, not the one it proposed.
"""

from __future__ import annotations

import torch

from esper.kasmina import CNNHost, MorphogeneticModel
from esper.leyline import Action, Decision, TelemetryEventType
from esper.nissa import DigestSink, MemorySink, TelemetryHub
from esper.testing import permissive_gates, toy_image_task
from esper.testing.distributed import init_gloo, report, spawn_ranks
from esper.tolaria import Trainer, TrainerConfig
from esper.tolaria.distributed import shutdown, state_digest

WORLD = 2
EPOCHS = 4


def _plan(rank: int) -> dict[int, Decision]:
    """What the controller on ``rank`` proposes, by epoch (WAIT otherwise). Every proposal keeps
    the parameter shapes of both ranks alike, so following its own rank's proposal makes the
    ranks disagree in state and events, never in the collectives they run."""
    if rank == 0:
        return {
            1: Decision(Action.GERMINATE, slot="early", blueprint="norm", blend_algorithm="linear"),
            3: Decision(Action.CULL, slot="nowhere"),  # refused: no such slot
        }
    return {
        1: Decision(Action.GERMINATE, slot="early", blueprint="norm", blend_algorithm="sigmoid"),
        2: Decision(Action.FOSSILIZE, slot="early"),  # refused: the seed is not in probation
    }


class ByRank:
    """Proposes :func:`_plan` for its rank; remembers what it was told was carried out."""

    def __init__(self, rank: int) -> None:
        self.plan = _plan(rank)
        self.told: list[tuple[dict, bool]] = []

    def decide(self, signals):
        return self.plan.get(signals.epoch, Decision(Action.WAIT))

    def on_outcome(self, decision, outcome):
        self.told.append((decision.to_dict(), bool(outcome.applied)))


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    init_gloo(rank, world, init_file)
    try:
        torch.manual_seed(0)
        data = toy_image_task(96, seed=0)
        host = CNNHost(4, 2, 4, in_channels=1)
        model = MorphogeneticModel(
            host,
            slots=["early", "late"],
            gate_config=permissive_gates(full_alpha_ramp=True),
            blending_steps=5,
        )
        config = TrainerConfig(seed=0, total_epochs=EPOCHS, batch_size=16, telemetry_stride=1)
        digest, memory = DigestSink(), MemorySink()
        controller = ByRank(rank)
        trainer = Trainer(
            model, data, config, controller=controller, hub=TelemetryHub([digest, memory])
        )
        for _ in range(EPOCHS):
            trainer.run_epoch()
        slot = model.seed_slots["early"]
        out = {
            "state_digest": state_digest(model),
            "event_digest": digest.hexdigest(),
            "told": controller.told,
            "stage": slot.stage.name,
            "blend": slot.state.blend_algorithm_id,
            "alpha": slot.alpha,
            "decisions": [
                e.data
                for e in memory.events
                if e.event_type == TelemetryEventType.CONTROLLER_DECISION
            ],
            "refused": [
                e.data["refused"]
                for e in memory.events
                if e.event_type == TelemetryEventType.DECISION_REFUSED
            ],
        }
        trainer.close()
        report(out_dir, rank, out)
    finally:
        shutdown(together=True)


def test_each_rank_carries_out_rank_zeros_decision_whatever_its_own_controller_says(tmp_path):
    r0, r1 = spawn_ranks(_worker, WORLD, tmp_path)
    # One model (bit for bit) and one event stream.
    assert r0["state_digest"] == r1["state_digest"]
    assert r0["event_digest"] == r1["event_digest"]
    # It is rank 0's: the seed blends on rank 0's schedule everywhere, and only rank 0's
    # decisions were carried out (or refused), on every rank.
    assert r0["stage"] == r1["stage"] == "BLENDING"
    assert r0["blend"] == r1["blend"] == "linear"
    assert r0["alpha"] == r1["alpha"] > 0.0  # the ramp ran: the blend is in use
    plan = _plan(0)
    expected = [plan[1].to_dict(), plan[3].to_dict()]
    assert r0["decisions"] == r1["decisions"] == expected
    assert len(r0["refused"]) == len(r1["refused"]) == 1 and "nowhere" in r1["refused"][0]
    # Each controller is told what was done, not what it proposed.
    assert r0["told"] == r1["told"] == [[expected[0], True], [expected[1], False]]
