"""Stop and resume: a run killed at any moment continues from its last checkpoint to exactly
the result of an uninterrupted run (summary, model tensors, event log), and bad resumes are one
clear line with nothing in the run directory changed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from esper.cli import main
from esper.kasmina.host import CNNHost, MorphogeneticModel
from esper.leyline import DEFAULT_GROWTH_PATIENCE, Action, Decision
from esper.nissa import MemorySink, TelemetryHub
from esper.runs import RunSpec
from esper.tamiyo import HeuristicController
from esper.testing import toy_image_task
from esper.tolaria.config import TrainerConfig
from esper.tolaria.data import TaskData
from esper.tolaria.trainer import Trainer

EPOCHS = 24  # digits: a seed germinates at epoch 9, blends at 12, is fossilized at 17


def _data() -> TaskData:
    return toy_image_task(128)


def _trainer(kind: str, controller) -> Trainer:
    torch.manual_seed(0)
    host = CNNHost(num_classes=4, n_blocks=3, base_channels=4, pool_layers=2, in_channels=1)
    model = MorphogeneticModel(host, slots=["early", "mid"])
    cfg = TrainerConfig(optimizer=kind, lr=0.02, seed_lr=0.02, batch_size=16, total_epochs=12)
    return Trainer(model, _data(), cfg, controller=controller, hub=TelemetryHub([MemorySink()]))


class Grower:
    """Germinates early at epoch 2 and mid at epoch 4 (so optimizers exist at the checkpoint)."""

    def decide(self, signals):
        plan = {2: ("early", "conv_light"), 4: ("mid", "norm")}
        if signals.epoch in plan:
            slot, blueprint = plan[signals.epoch]
            return Decision(Action.GERMINATE, slot=slot, blueprint=blueprint)
        return Decision(Action.WAIT)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_trainer_state_round_trips_to_the_same_continuation(kind):
    straight = _trainer(kind, Grower())
    for _ in range(8):
        straight.run_epoch()

    first = _trainer(kind, Grower())
    for _ in range(5):
        first.run_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    torch.manual_seed(123)  # the resumed process's RNG must not matter

    resumed = _trainer(kind, Grower())
    resumed.load_state_dict(state)
    assert resumed.epoch == 5 and set(resumed.optimizers.seeds) == {"early", "mid"}
    for _ in range(3):
        resumed.run_epoch()
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in straight.history]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key, value in a.items():
        if torch.is_tensor(value):
            assert torch.equal(value, b[key]), key
    assert resumed.records.keys() == straight.records.keys()


# ----------------------------------------------------------------------- the CLI, killed

ROOT = Path(__file__).resolve().parents[1]


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "esper.cli", "train", *args]


def _train_ok(*args: str) -> None:
    """Run ``esper train ARGS`` to the end and require it to succeed."""
    done = subprocess.run(
        _train_cmd(*args), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _events(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row.pop("timestamp")
        rows.append(row)
    return rows


def _summary(path: Path) -> dict:
    summary = json.loads((path / "summary.json").read_text())
    summary.pop("wall_seconds")
    summary.pop("counterfactual_seconds")  # a wall time too
    return summary


def _assert_same_run(a: Path, b: Path) -> None:
    assert _summary(a) == _summary(b)
    assert _events(a / "events.jsonl") == _events(b / "events.jsonl")
    ma = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    mb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    assert ma.keys() == mb.keys()
    for key, value in ma.items():
        if torch.is_tensor(value):
            assert torch.equal(value, mb[key]), key
        else:
            assert value == mb[key], key


def _kill_when(run_dir: Path, needle: str, extra: list[str], mode: str = "heuristic") -> None:
    """Start a run and SIGKILL it as soon as its event log contains ``needle``."""
    proc = subprocess.Popen(
        _train_cmd(mode, "--epochs", str(EPOCHS), "--run-dir", str(run_dir), *extra),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = run_dir / "events.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and needle in log.read_text():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "summary.json").exists()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    _train_ok("heuristic", "--epochs", str(EPOCHS), "--run-dir", str(run_dir))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    "needle",
    ['"to": "TRAINING"', '"to": "BLENDING"'],
    ids=["killed-while-training", "killed-while-blending"],
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, needle):
    run_dir = tmp_path / "run"
    _kill_when(run_dir, needle, [])
    _train_ok("--resume", str(run_dir))
    _assert_same_run(uninterrupted, run_dir)
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_resume_with_sparse_checkpoints_replays_the_lost_epochs(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    _kill_when(run_dir, '"to": "BLENDING"', ["--checkpoint-every", "5"])
    _train_ok("--resume", str(run_dir))
    _assert_same_run(uninterrupted, run_dir)


@pytest.mark.slow
def test_a_killed_run_with_computed_seeds_resumes_to_the_uninterrupted_result(tmp_path):
    """A computed seed is solved from its epoch's batches alone, which a run resumed at the
    epoch's start trains again: the seeds germinated after the kill come out the same."""
    flags = ["--seed-init", "computed"]
    straight = tmp_path / "straight"
    _train_ok("heuristic", "--epochs", str(EPOCHS), "--run-dir", str(straight), *flags)
    run_dir = tmp_path / "run"
    _kill_when(run_dir, '"to": "TRAINING"', flags)
    _train_ok("--resume", str(run_dir))
    _assert_same_run(straight, run_dir)


@pytest.mark.slow
def test_growth_patience_counts_across_a_kill(tmp_path):
    """Seed 0 of stock digits culls its first seed at epoch 16; with patience 1 it grows no
    more. Killed at epoch 18, the checkpoint holds the heuristic's count of culls, so the resumed
    run does not start growing again."""
    flags = ["--epochs", "45", "--growth-patience", "1"]
    straight = tmp_path / "straight"
    _train_ok("heuristic", *flags, "--run-dir", str(straight))
    assert len(_summary(straight)["seeds"]) == 1
    run_dir = tmp_path / "run"
    _kill_when(run_dir, '"epoch": 18,', flags)
    _train_ok("--resume", str(run_dir))
    _assert_same_run(straight, run_dir)


# ----------------------------------------------------------------------- refusals


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture
def short_run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    assert main(["train", "static", "--epochs", "2", "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_resuming_a_finished_run_says_so_and_changes_nothing(short_run, capsys):
    before = _snapshot(short_run)
    assert main(["train", "--resume", str(short_run)]) == 0
    assert "already finished" in capsys.readouterr().out
    # The live view is display only, so it may be switched on a resume; nothing else may.
    assert main(["train", "--resume", str(short_run), "--no-live"]) == 0
    assert _snapshot(short_run) == before


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_a_bad_checkpoint_is_one_line_exit_2_and_nothing_changes(short_run, capsys, damage):
    (short_run / "summary.json").unlink()  # not finished: a resume would go on
    checkpoint = short_run / "checkpoint.pt"
    if damage == "missing":
        checkpoint.unlink()
    elif damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    else:
        checkpoint.write_bytes(b"not a checkpoint at all")
    before = _snapshot(short_run)
    capsys.readouterr()
    assert main(["train", "--resume", str(short_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "checkpoint.pt" in err
    if damage == "missing":  # a run directory without a checkpoint: stopped in its first epoch
        assert "stopped before its first checkpoint" in err and "config.json" in err
    assert _snapshot(short_run) == before
    # A folder that is not a run directory at all says so.
    assert main(["train", "--resume", str(short_run.parent)]) == 2
    assert "is this a run directory?" in capsys.readouterr().err


def test_resume_refuses_other_flags_and_missing_folders(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["train", "heuristic", "--resume", str(tmp_path), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "--epochs" in err and "mode" in err
    assert main(["train"]) == 2
    assert "mode is required" in capsys.readouterr().err


def test_config_json_records_threads_and_the_trainer_config(short_run):
    config = json.loads((short_run / "config.json").read_text())
    assert config["threads"] == 1 and config["checkpoint_every"] == 1
    assert config["trainer"]["total_epochs"] == 2
    assert config["trainer"]["optimizer"] == "sgd"
    payload = torch.load(short_run / "checkpoint.pt", weights_only=True)
    assert payload["epoch"] == 2


def test_heuristic_and_tracker_state_round_trip():
    from esper.tolaria import SignalTracker

    a = HeuristicController("cnn", seed=3)
    a.on_cull("conv_light")
    a._rng.random()
    b = HeuristicController("cnn", seed=3)
    b.load_state_dict(a.state_dict())
    assert b.penalties == a.penalties and b.uses == a.uses
    assert [b._choose_blueprint() for _ in range(5)] == [a._choose_blueprint() for _ in range(5)]
    b.reset()
    assert b.penalties["conv_light"] == 0.0

    t = SignalTracker()
    for acc in (50.0, 60.0, 60.1):
        t.update(epoch=1, train_loss=1.0, val_loss=1.0, val_quality=acc, topology="cnn")
    u = SignalTracker()
    u.load_state_dict(t.state_dict())
    kwargs = {"epoch": 4, "train_loss": 0.9, "val_loss": 0.95, "val_quality": 60.2}
    assert u.update(**kwargs, topology="cnn") == t.update(**kwargs, topology="cnn")


def test_a_write_killed_midway_leaves_the_last_checkpoint_and_is_cleaned_up(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    for run_dir in (straight, broken):
        assert main(["train", "heuristic", "--epochs", "3", "--run-dir", str(run_dir)]) == 0
    # What a SIGKILL inside the final writes leaves: a half-written temporary beside the last
    # good checkpoint, and no summary or model yet.
    (broken / "summary.json").unlink()
    (broken / "model.pt").unlink()
    (broken / ".checkpoint.pt.99999.tmp").write_bytes(b"PK\x03\x04 half a zip")
    with (broken / "events.jsonl").open("a") as log:
        log.write('{"event_type": "epoch_completed", "trunc')  # a line cut off mid-write
    assert main(["train", "--resume", str(broken)]) == 0
    assert not list(broken.glob(".*.tmp"))
    _assert_same_run(straight, broken)


def test_a_checkpoint_from_another_run_is_refused(tmp_path, capsys):
    one, other = tmp_path / "one", tmp_path / "other"
    assert main(["train", "static", "--epochs", "1", "--run-dir", str(one)]) == 0
    argv = ["train", "static", "--epochs", "1", "--slots", "early", "--run-dir", str(other)]
    assert main(argv) == 0
    (one / "summary.json").unlink()
    (one / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    before = _snapshot(one)
    capsys.readouterr()
    assert main(["train", "--resume", str(one)]) == 2
    err = capsys.readouterr().err
    assert "another run" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(one) == before


def test_a_run_recorded_before_timing_existed_resumes_on_the_plateau_rule(short_run):
    raw = json.loads((short_run / "config.json").read_text())
    assert raw["timing"] == "relative"  # today's default is recorded with every run
    raw.pop("timing")
    raw.pop("format")  # a development version's config.json, written before formats had versions
    assert RunSpec.from_dict(raw).timing == "plateau"


def test_a_heuristic_run_recorded_before_growth_patience_existed_resumes_without_it(short_run):
    raw = json.loads((short_run / "config.json").read_text())
    assert raw["growth_patience"] is None  # a static run has no heuristic to be patient
    heuristic = {**raw, "mode": "heuristic", "growth_patience": DEFAULT_GROWTH_PATIENCE + 1}
    assert RunSpec.from_dict(heuristic).growth_patience == DEFAULT_GROWTH_PATIENCE + 1
    heuristic.pop("growth_patience")
    heuristic.pop("format")  # a development version's config.json
    # It never stopped growing; today's default would change its controller under it.
    assert RunSpec.from_dict(heuristic).growth_patience == 0
    assert RunSpec(mode="heuristic").growth_patience == DEFAULT_GROWTH_PATIENCE > 0


@pytest.mark.slow
def test_a_killed_run_under_a_policy_resumes_under_it(tmp_path):
    """The shipped digits policy drives the run; a resumed run reads it again and ends as the
    uninterrupted one."""
    straight = tmp_path / "straight"
    _train_ok("ppo", "--epochs", str(EPOCHS), "--run-dir", str(straight))
    run_dir = tmp_path / "run"
    _kill_when(run_dir, '"to": "TRAINING"', [], mode="ppo")
    _train_ok("--resume", str(run_dir))
    _assert_same_run(straight, run_dir)
