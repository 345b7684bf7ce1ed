"""``--log tensorboard``: event files that TensorBoard's own reader reads back, a one-line error
when the package is missing, resumed runs not shown twice, and the logger registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from esper.cli import main
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import LoggerContext, TensorBoardSink, available_loggers, create_logger, sinks
from esper.nissa.tensorboard import scalar_tag

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard package is an optional extra (in dev)",
)
T = TelemetryEventType
INSTALL_LINE = '--log tensorboard needs the tensorboard package: pip install "esper[tensorboard]"'


def read_back(log_dir: Path):
    acc = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={"scalars": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    argv = ["train", "heuristic", "--epochs", "20", "--run-dir", str(run_dir), "--no-live"]
    assert main([*argv, "--log", "tensorboard"]) == 0
    return run_dir


def test_event_files_hold_the_validation_curve_and_every_seeds_alpha(logged_run):
    events = [json.loads(line) for line in (logged_run / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event_type"] == "epoch_completed"]
    acc = read_back(logged_run / "tensorboard")
    val = scalars(acc, "accuracy/val")
    assert val == pytest.approx({e["epoch"]: e["data"]["val_accuracy"] for e in epochs})
    assert scalars(acc, "loss/val") == pytest.approx(
        {e["epoch"]: e["data"]["val_loss"] for e in epochs}
    )
    for tag in ("loss/train", "accuracy/train", "params/host", "params/total"):
        assert len(scalars(acc, tag)) == len(epochs), tag
    alphas: dict[str, dict[int, float]] = {}
    for e in epochs:
        for slot, seed in e["data"]["seeds"].items():
            alphas.setdefault(slot, {})[e["epoch"]] = seed["alpha"]
    germinated = {e["slot"] for e in events if e["event_type"] == "seed_germinated"}
    assert alphas and set(alphas) == germinated  # every seed's slot has an alpha curve
    for slot, curve in alphas.items():
        assert scalars(acc, f"alpha/{slot}") == pytest.approx(curve), slot
    contributions = [e for e in events if e["event_type"] == "counterfactual_evaluated"]
    for e in contributions:
        assert scalars(acc, f"contribution/{e['slot']}")[e["epoch"]] == pytest.approx(
            e["data"]["contribution"]
        )
    texts = [
        (t.step, t.tensor_proto.string_val[0].decode())
        for t in acc.Tensors("lifecycle/text_summary")
    ]
    for e in (e for e in events if e["event_type"] == "seed_germinated"):
        assert any(step == e["epoch"] and e["seed_id"] in text for step, text in texts), e


def test_a_missing_tensorboard_package_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    # What an install without the extra looks like: both imports fail.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    run_dir = tmp_path / "run"
    argv = [
        "train",
        "heuristic",
        "--epochs",
        "1",
        "--run-dir",
        str(run_dir),
        "--log",
        "tensorboard",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"esper: error: {INSTALL_LINE}\n"
    assert not run_dir.exists()  # checked before anything was written


def test_an_unknown_logger_lists_the_valid_ones(tmp_path, capsys):
    argv = ["train", "static", "--epochs", "1", "--run-dir", str(tmp_path / "r"), "--log", "wandb"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown --log 'wandb'; valid: tensorboard" in err


def test_a_resumed_run_is_not_shown_twice(tmp_path):
    def epoch(step: int, acc: float) -> TelemetryEvent:
        return TelemetryEvent(T.EPOCH_COMPLETED, epoch=step, data={"val_accuracy": acc})

    first = TensorBoardSink(tmp_path / "tensorboard")
    for step in range(1, 6):
        first.emit(epoch(step, 10.0 * step))
    first.close()
    # Killed after epoch 5, checkpoint at epoch 3: epochs 4 and 5 are trained again.
    resumed = create_logger("tensorboard", LoggerContext(tmp_path, start_epoch=3))
    for step in range(4, 7):
        resumed.emit(epoch(step, 1.0 * step))
    resumed.close()
    curve = [(e.step, e.value) for e in read_back(tmp_path / "tensorboard").Scalars("accuracy/val")]
    assert curve == [(1, 10.0), (2, 20.0), (3, 30.0), (4, 4.0), (5, 5.0), (6, 6.0)]


def test_scalar_tags_and_closed_sink(tmp_path):
    assert scalar_tag("val_loss") == "loss/val" and scalar_tag("test_accuracy") == "accuracy/test"
    assert scalar_tag("host_params") == "params/host" and scalar_tag("lr") == "run/lr"
    sink = TensorBoardSink(tmp_path)
    sink.close()
    sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink.emit(TelemetryEvent(T.RUN_STARTED))


def test_another_logger_plugs_in_by_name_without_esper_depending_on_it(tmp_path, monkeypatch):
    received = []

    class Recorder:
        def __init__(self, context: LoggerContext) -> None:
            self.context = context

        def emit(self, event: TelemetryEvent) -> None:
            received.append(event.event_type)

        def close(self) -> None:
            received.append("closed")

    monkeypatch.setitem(sinks._LOGGERS, "recorder", sinks._Logger(Recorder, lambda: None))
    assert "recorder" in available_loggers()
    run_dir = tmp_path / "r"
    argv = ["train", "static", "--epochs", "2", "--run-dir", str(run_dir), "--no-live"]
    assert main([*argv, "--log", "recorder"]) == 0
    assert received[0] is T.RUN_STARTED and received[-1] == "closed"
    assert received.count(T.EPOCH_COMPLETED) == 2
    assert json.loads((run_dir / "config.json").read_text())["log"] == ["recorder"]


def test_a_run_resumed_from_an_older_checkpoint_logs_each_epoch_once(tmp_path, monkeypatch):
    from esper.runs import resume_run
    from esper.tolaria.trainer import Trainer

    original = Trainer.run_epoch

    def stop_after_12(self):
        if self.epoch == 12:
            raise KeyboardInterrupt  # like a kill: the last checkpoint is epoch 10's
        return original(self)

    monkeypatch.setattr(Trainer, "run_epoch", stop_after_12)
    run_dir = tmp_path / "run"
    argv = ["train", "heuristic", "--epochs", "14", "--run-dir", str(run_dir), "--no-live"]
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--checkpoint-every", "5", "--log", "tensorboard"])
    monkeypatch.undo()
    resume_run(run_dir)  # keeps --log tensorboard: it is part of the run's configuration
    acc = read_back(run_dir / "tensorboard")
    steps = [e.step for e in acc.Scalars("accuracy/val")]
    assert steps == list(range(1, 15))  # epochs 11 and 12 were trained twice, shown once
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    final = {
        e["epoch"]: e["data"]["val_accuracy"]
        for e in events
        if e["event_type"] == "epoch_completed"
    }
    assert scalars(acc, "accuracy/val") == pytest.approx(final)
