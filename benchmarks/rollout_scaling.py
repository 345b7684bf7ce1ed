"""How Simic's rollouts scale with worker processes: episodes per second for W = 1, 2, 4, ...

    OMP_NUM_THREADS=1 python benchmarks/rollout_scaling.py --task digits --workers 1,2
    python benchmarks/rollout_scaling.py --task digits --epochs 30 --width-multiplier 0.5 \\
        --episodes 64 --workers 1,2,4,8,16 --json

Every arm runs the same episode jobs (training-run seed and sampling seed) with the same
untrained policy, so every arm does the same work and returns the same episodes; only the number
of processes differs. The static baselines the reward needs are computed once, before any
timing, and shared by every arm. Each arm runs the jobs twice on one pool: the first pass also
starts the W processes (spawn, import torch, load the data), the second is the steady state the
speed-up is computed from (against W = 1 in the same process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from esper.simic.env import EpisodeConfig
from esper.simic.training import SimicConfig, jobs_for_update, new_policy
from esper.simic.workers import RolloutWorkers
from esper.tolaria.tasks import list_tasks


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits", help=f"one of: {', '.join(list_tasks())}")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width-multiplier", type=float, default=0.5)
    parser.add_argument("--episodes", type=int, default=32, help="episodes per arm")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--json", action="store_true", help="last line: the numbers as JSON")
    return parser.parse_args(argv)


def _fail(message: str) -> int:
    sys.stderr.write(f"rollout_scaling: error: {message}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.task not in list_tasks():
        return _fail(f"unknown task {args.task!r}; valid: {', '.join(list_tasks())}")
    try:
        counts = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        return _fail(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not counts or min(counts) < 1 or args.episodes < 1:
        return _fail("--workers needs counts >= 1 and --episodes must be >= 1")
    episode = EpisodeConfig(args.task, epochs=args.epochs, width_multiplier=args.width_multiplier)
    config = SimicConfig(episode, episodes=args.episodes, episodes_per_update=args.episodes)
    policy = new_policy(config)
    jobs = jobs_for_update(config, 0)
    print(
        f"# {args.task}, {episode.resolved_epochs()} epochs, width x{args.width_multiplier:g}: "
        f"{len(jobs)} episodes per arm, {os.cpu_count()} CPUs",
        flush=True,
    )
    print("| workers | first pass s | seconds | episodes/s | speed-up | same episodes |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    rows: list[dict] = []
    single: float | None = None
    with tempfile.TemporaryDirectory() as baselines:
        # Untimed: the static baselines of the jobs' seeds, on the widest pool.
        with RolloutWorkers(episode, policy.layout, config.rent, baselines, max(counts)) as w:
            reference = w.run(policy.agent, jobs)
        for count in counts:
            started = time.perf_counter()
            with RolloutWorkers(episode, policy.layout, config.rent, baselines, count) as w:
                w.run(policy.agent, jobs)  # the first pass also starts the processes
                cold = time.perf_counter() - started
                started = time.perf_counter()
                results = w.run(policy.agent, jobs)
                seconds = time.perf_counter() - started
            if count == 1 and single is None:
                single = seconds  # the speed-up's reference
            row = {
                "workers": count,
                "first_pass_s": round(cold, 2),
                "seconds": round(seconds, 2),
                "episodes_per_s": round(len(jobs) / seconds, 3),
                "speedup": round(single / seconds, 3) if single else None,
                "same_episodes": [r.info for r in results] == [r.info for r in reference],
            }
            rows.append(row)
            speedup = f"{row['speedup']:.2f}" if row["speedup"] else "—"
            print(
                f"| {count} | {row['first_pass_s']:.2f} | {row['seconds']:.2f} | "
                f"{row['episodes_per_s']:.3f} | {speedup} | {row['same_episodes']} |",
                flush=True,
            )
    if args.json:
        print(json.dumps({"task": args.task, "episodes": len(jobs), "rows": rows}))
    return 0 if all(r["same_episodes"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
