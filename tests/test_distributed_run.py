"""One model on two gloo processes under torchrun: growth, agreement, failure and resume.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node 2`` on the
digits task (a few seconds per run on two cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from esper.runs.checkpoints import read_run_checkpoint
from esper.tolaria.data import iterate_batches

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
#: Seed 0 fossilizes a seed on two processes (seed 3 culls every seed it grows). Digits runs
#: the shadow pass every 4th step, so the DDP wrapper also meets steps that leave an incubating
#: seed without gradient.
SEED = "0"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TORCHRUN, str(nproc), "-m", "esper.scripts.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("dist") / "run"
    proc = _torchrun("heuristic", "--task", "digits", "--seed", SEED, "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def test_two_ranks_grow_blend_and_fossilize_one_bit_identical_model(two_rank_run):
    run_dir, summary = two_rank_run
    assert summary["world_size"] == 2
    assert summary["ranks_identical"] is True
    assert len(summary["rank_state_digests"]) == 2
    assert summary["fossilized"] >= 1
    stages = [stage for seed in summary["seeds"] for stage in seed["stages"]]
    assert "BLENDING" in stages and "FOSSILIZED" in stages
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2


def test_a_static_run_stays_one_model_from_its_first_step(tmp_path):
    """No growth, so no DDP rebuild ever re-broadcasts the weights: every step must have
    reduced its gradients (the first pass of a structure too, which is counted eagerly)."""
    run_dir = tmp_path / "static"
    proc = _torchrun("static", "--task", "digits", "--epochs", "3", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ranks_identical"] is True
    assert "FutureWarning" not in proc.stderr


def test_a_learned_policy_decides_on_rank_zero_for_both_ranks(tmp_path):
    run_dir = tmp_path / "ppo"
    proc = _torchrun("ppo", "--task", "digits", "--epochs", "12", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ranks_identical"] is True
    assert len(set(summary["rank_event_digests"])) == 1


def test_equal_states_have_equal_digests_whatever_objects_hold_their_strings():
    """Ranks build equal slot states from different objects (rank 0's decision is unpickled on
    the others): the digest must see values, not which equal strings are one object."""
    from torch import nn

    from esper.tolaria.distributed import state_digest

    class Holder(nn.Module):
        def __init__(self, extra) -> None:
            super().__init__()
            self.extra = extra

        def state_dict(self):
            return {"slot._extra_state": self.extra}

    name = "".join(["conv", "_light"])
    twin = "".join(["conv_", "light"])  # equal to name, another object
    shared = {"blueprint_id": name, "fossils": [["s0", name]]}
    distinct = {"blueprint_id": name, "fossils": [["s0", twin]]}
    assert state_digest(Holder(shared)) == state_digest(Holder(distinct))
    assert state_digest(Holder({**shared, "blueprint_id": "norm"})) != state_digest(Holder(shared))


def test_every_rank_saw_the_same_decisions_and_lifecycle(two_rank_run):
    _, summary = two_rank_run
    digests = summary["rank_event_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_only_rank_zero_wrote_the_run_directory(two_rank_run):
    run_dir, _ = two_rank_run
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["checkpoint.pt", "config.json", "events.jsonl", "model.pt", "summary.json"]
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    started = [line for line in lines if '"run_started"' in line]
    assert len(started) == 1  # one writer, not one per rank


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"esper.scripts.train" in cmdline:
            return pid
    return None


def _wait_for_checkpoint(run_dir: Path, epoch: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if read_run_checkpoint(run_dir)["epoch"] >= epoch:
                return
        except Exception:  # not written yet, or being replaced
            pass
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find ranks")
def test_a_killed_rank_stops_the_other_within_60_s_and_the_run_resumes(tmp_path, two_rank_run):
    run_dir = tmp_path / "run"
    args = ["heuristic", "--task", "digits", "--seed", SEED, "--run-dir", str(run_dir)]
    proc = subprocess.Popen(
        [*TORCHRUN, "2", "-m", "esper.scripts.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _wait_for_checkpoint(run_dir, 12, proc)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None, "rank 1 not found"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # One line names the rank that failed (torchrun's report) or the one that lost it (ours).
    assert "rank      : 1" in err or "esper: error: rank 0 of 2: lost the other ranks" in err, err[
        -3000:
    ]
    checkpoint = read_run_checkpoint(run_dir)  # the last checkpoint is whole
    assert checkpoint["epoch"] >= 12
    assert not (run_dir / "summary.json").exists()

    resumed = _torchrun("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ranks_identical"] is True
    # Resumed with the same world size, the run ends as the uninterrupted one did.
    _, uninterrupted = two_rank_run
    for key in ("final_val_loss", "test_loss", "fossilized", "total_params"):
        assert summary[key] == uninterrupted[key], key


def test_a_resume_with_another_world_size_is_one_line(two_rank_run, tmp_path):
    run_dir, _ = two_rank_run
    # A finished run says so whatever the size; an unfinished copy must be refused.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "events.jsonl", "checkpoint.pt"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", "--resume", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert proc.returncode == 2
    assert "trained on 2 process(es)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_shards_split_the_epoch_into_disjoint_equal_parts():
    x = torch.arange(103).float()[:, None]
    y = torch.arange(103)
    parts = []
    for rank in range(3):
        gen = torch.Generator().manual_seed(5)
        rows = [yb for _, yb in iterate_batches(x, y, 4, gen, shuffle=True, shard=(rank, 3))]
        parts.append(torch.cat(rows))
    assert len({p.numel() for p in parts}) == 1  # as many steps on every rank
    seen = torch.cat(parts)
    assert seen.unique().numel() == seen.numel() == 102  # disjoint; the remainder is dropped
    gen = torch.Generator().manual_seed(5)
    whole = torch.cat([yb for _, yb in iterate_batches(x, y, 4, gen, shuffle=True)])
    assert torch.equal(torch.sort(seen).values, torch.sort(whole[:102]).values)
    evals = [
        torch.cat([yb for _, yb in iterate_batches(x, y, 8, None, shuffle=False, shard=(r, 3))])
        for r in range(3)
    ]
    assert torch.equal(torch.sort(torch.cat(evals)).values, y)  # evaluation sees every row


def _trainer_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from esper.kasmina import CNNHost, MorphogeneticModel
    from esper.leyline import SeedStage
    from esper.testing import toy_image_task
    from esper.tolaria import Trainer, TrainerConfig
    from esper.tolaria.distributed import shutdown, state_digest

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        data = toy_image_task(96, seed=0)
        host = CNNHost(10, 2, 4, in_channels=data.train_x.shape[1])
        model = MorphogeneticModel(host, slots=["early", "late"])
        config = TrainerConfig(seed=0, total_epochs=3, batch_size=16, telemetry_stride=1)
        trainer = Trainer(model, data, config)
        trainer.train_epoch()
        torch.manual_seed(100 + rank)  # each rank would draw a different new seed
        model.germinate_seed("conv_light", "s", slot="early")
        model.advance_stage(SeedStage.TRAINING, slot="early")
        if rank == 1:  # a leak on one rank only
            model.seed_slots["early"].isolate_gradients = False
        trainer.train_epoch()
        metrics = model.seed_slots["early"].state.metrics
        model.seed_slots["early"].isolate_gradients = True  # part of the state compared below
        out = {
            "violations": metrics.isolation_violations,
            "captures": metrics.gradient_captures,
            "digest": state_digest(model),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))
        trainer.close()
    finally:
        shutdown(together=True)


def test_a_leak_on_one_rank_is_counted_on_every_rank_and_a_new_seed_is_rank_zeros(tmp_path):
    import torch.multiprocessing as mp

    init_file = tmp_path / "init"
    mp.spawn(_trainer_worker, args=(2, str(init_file), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["captures"] == ranks[1]["captures"] > 0
    # Rank 1's accumulator was neither overwritten by rank 0's (DDP broadcasts no slot buffer)
    # nor read alone: the violation is counted on both ranks, once per capture.
    assert ranks[0]["violations"] == ranks[1]["violations"] >= 1
    # Seeds drawn from different generators start as rank 0's (the rebuilt DDP broadcast).
    assert ranks[0]["digest"] == ranks[1]["digest"]


def test_a_bad_dist_timeout_is_one_line_and_nothing_is_written(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "esper.scripts.train",
            "static",
            "--dist-timeout",
            "0",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "esper: error: --dist-timeout must be > 0 seconds, got 0.0"
    assert not (tmp_path / "r").exists()
