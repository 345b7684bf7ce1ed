"""Throughput of one training run on 1 and on N processes (torchrun, gloo on CPU, NCCL on GPUs).

Runs the project's own command, ``esper train static`` (no growth: the same work every epoch),
once per process count, and reports training rows per second of wall time from each run's
``summary.json``: ``epochs * rows per epoch / wall_seconds``. Wall time includes validation,
as a run's does. On a 2-core CPU machine two processes share two cores with nothing else, so the
number is informative only; on a GPU node give ``--device cuda --nproc 1 2 4 8``. Usage::

    python benchmarks/distributed_throughput.py --task digits --epochs 20 --nproc 1 2
    python benchmarks/distributed_throughput.py --task fashion --device cuda --nproc 1 2 4 8

``--json`` makes the last line of stdout one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from esper.runs import RunSummary


def run_once(task: str, epochs: int, nproc: int, device: str, seed: int, out: Path) -> RunSummary:
    """One ``esper train static`` run on ``nproc`` processes; its summary."""
    run_dir = out / f"{task}-n{nproc}"
    train = ["--task", task, "--epochs", str(epochs), "--seed", str(seed), "--device", device]
    train += ["--run-dir", str(run_dir)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "esper", "train", "static", *train]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*launcher, "--nproc_per_node", str(nproc), "-m", "esper", "train", "static"]
        cmd += train
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return RunSummary.from_dict(json.loads((run_dir / "summary.json").read_text()))


def rows_per_epoch(task: str, seed: int) -> int:
    from esper.tolaria.tasks import get_task

    spec = get_task(task)
    data = spec.load(None, seed)
    n = data.train_x.shape[0]
    return min(n, spec.epoch_samples) if spec.epoch_samples else n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1 or any(n < 1 for n in args.nproc):
        p.error("--epochs and every --nproc must be >= 1")
    rows = rows_per_epoch(args.task, args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nproc:
            summary = run_once(args.task, args.epochs, n, args.device, args.seed, Path(tmp))
            rate = args.epochs * rows / summary.wall_seconds
            results[n] = {
                "wall_seconds": summary.wall_seconds,
                "rows_per_second": round(rate, 1),
                "final_val_accuracy": summary.final_val_accuracy,
                # Written only under torchrun: one process is identical to itself.
                "ranks_identical": (
                    True if summary.ranks_identical is None else summary.ranks_identical
                ),
            }
    base = results[args.nproc[0]]["rows_per_second"]
    print(f"{args.task}, {args.epochs} epochs of {rows} rows, device {args.device}")
    print("| processes | wall s | rows/s | speed-up | final val acc | ranks identical |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, r in results.items():
        print(
            f"| {n} | {r['wall_seconds']:.2f} | {r['rows_per_second']:,.0f} | "
            f"{r['rows_per_second'] / base:.2f}x | {r['final_val_accuracy']:.2f} | "
            f"{r['ranks_identical']} |"
        )
    if args.json:
        print(json.dumps({"task": args.task, "device": args.device, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
