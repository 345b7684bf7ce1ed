"""--compile: the trainer's passes under torch.compile, through a whole growing run."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch._dynamo.utils import counters

from esper.kasmina import MorphogeneticModel
from esper.leyline import Action, Decision, SeedStage
from esper.testing import permissive_gates
from esper.tolaria import Trainer, TrainerConfig
from esper.tolaria.flops import FlopMeter
from esper.tolaria.tasks import build_task_host, get_task


class Scripted:
    """Grows at fixed epochs and fossilizes whatever reaches probation: every stage, quickly."""

    def decide(self, signals):
        if signals.epoch == 2:
            return Decision(Action.GERMINATE, slot="early", blueprint="conv_light")
        if signals.epoch == 4:
            return Decision(Action.GERMINATE, slot="mid", blueprint="norm", blend_algorithm="gated")
        for report in signals.slots:
            if report.stage == SeedStage.PROBATIONARY:
                return Decision(Action.FOSSILIZE, slot=report.slot)
        return Decision(Action.WAIT)


def _run(compile_backend):
    spec = get_task("digits")
    data = spec.load(None, 0)
    torch.manual_seed(0)
    host = build_task_host(spec, data)
    model = MorphogeneticModel(host, slots=["early", "mid", "late"], gate_config=permissive_gates())
    config = TrainerConfig(lr=0.05, seed_lr=0.05, total_epochs=14, seed=0, compile=compile_backend)
    trainer = Trainer(model, data, config, controller=Scripted())
    results = [trainer.run_epoch() for _ in range(14)]
    trainer.close()
    return results, trainer, model


def test_a_compiled_run_follows_the_lifecycle_and_matches_the_eager_one():
    eager, eager_trainer, _ = _run(None)
    torch._dynamo.reset()
    counters.clear()
    compiled, compiled_trainer, model = _run("aot_eager")  # the same ops as eager, traced
    assert counters["stats"]["unique_graphs"] >= 2  # training and evaluation passes
    history = [stage for r in compiled for seed in r.seeds.values() for stage in [seed["stage"]]]
    assert {"TRAINING", "BLENDING", "FOSSILIZED"} <= set(history), history
    for a, b in zip(eager, compiled, strict=True):
        assert (a.train_loss, a.val_loss, a.val_accuracy) == (
            b.train_loss,
            b.val_loss,
            b.val_accuracy,
        )
        assert a.seeds == b.seeds
    # The first pass of each structure is counted eagerly: the compute is the same.
    assert compiled_trainer.train_flops.total == eager_trainer.train_flops.total
    assert compiled_trainer.eval_flops.total == eager_trainer.eval_flops.total
    torch._dynamo.reset()


def test_the_flop_meter_keeps_its_measured_structures_across_a_checkpoint():
    meter = FlopMeter()
    lin = torch.nn.Linear(4, 3)
    key = (True, (("early", 3, "conv_light", None, True, False, ()),))
    with meter.count(key, 5):
        lin(torch.randn(5, 4))
    state = meter.state_dict()
    restored = FlopMeter()
    restored.load_state_dict(state)
    assert restored.knows(key) and restored.total == meter.total
    with restored.count(key, 10):  # a known structure is not measured again
        pass
    assert restored.total == meter.total * 3


def test_an_unknown_compile_backend_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "esper.scripts.train",
            "static",
            "--compile",
            "nope",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown --compile backend 'nope'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
