"""What a whole grown run costs against the static runs it competes with: wall time and FLOPs.

    OMP_NUM_THREADS=1 python benchmarks/run_overhead.py --task digits --seeds 0,1,2
    python benchmarks/run_overhead.py --task digits --seeds 0 --reps 5 --json
    python benchmarks/run_overhead.py --task digits --shadow-every 1   # the shadow pass every step
    python benchmarks/run_overhead.py --task digits --growth-patience 0  # never stop growing

Three runs per seed, built exactly as ``esper train`` builds them and timed side by side in one
process (interleaved, ``--reps`` times, medians):

* **static host**: ``esper train static``;
* **grown**: ``esper train heuristic``;
* **static-equivalent**: the grown run's final architecture trained from the first epoch for
  the same epochs: every seed that shapes the final model's output (fossilized, or still
  blending or in probation at the end) is put in its slot, fossilized, before training starts,
  in the order it was germinated (stacked seeds stay stacked).

Training FLOPs are the matmul/conv/attention FLOPs of the training passes (seeds and shadow
passes included, see ``esper.tolaria.flops``); evaluation FLOPs cover validation and the
counterfactual passes, which get a row of their own (FLOPs and seconds). Data loading is not
timed. The whole-run cost criterion, checked per seed:

* a run that keeps a seed spends at most its static-equivalent's training FLOPs (growth trains
  the extra capacity for part of the run only);
* a run that keeps none (its static-equivalent is the static host, which no run that tried a
  seed can match) spends at most ``CULLED_TRIALS_BUDGET`` (10%) more than the static host: what
  its culled trials may cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from esper.kasmina import MorphogeneticModel
from esper.leyline import DEFAULT_GROWTH_PATIENCE, SeedStage
from esper.simic.env import EpisodeConfig, episode_trainer
from esper.tamiyo import HeuristicConfig, HeuristicController
from esper.testing import drive_to
from esper.tolaria.tasks import get_task, list_tasks

#: What the trials of a run that keeps no seed may cost, as a share of the static host's
#: training FLOPs.
CULLED_TRIALS_BUDGET = 0.10
#: Final stages of a seed whose output is part of the final model.
SHAPES_OUTPUT = ("FOSSILIZED", "BLENDING", "PROBATIONARY")
ARMS = ("static", "grown", "equivalent")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits", help=f"one of: {', '.join(list_tasks())}")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds")
    parser.add_argument("--epochs", type=int, default=None, help="default: the task's")
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each run")
    parser.add_argument(
        "--shadow-every",
        type=int,
        default=None,
        metavar="N",
        help="steps between incubating seeds' shadow passes (default: the task's)",
    )
    parser.add_argument(
        "--growth-patience",
        type=int,
        default=DEFAULT_GROWTH_PATIENCE,
        metavar="N",
        help="the heuristic germinates no more after N seeds in a row were culled (default "
        f"{DEFAULT_GROWTH_PATIENCE}, as esper train heuristic; 0: never stops)",
    )
    parser.add_argument("--json", action="store_true", help="last line: the numbers as JSON")
    return parser.parse_args(argv)


def _fail(message: str) -> int:
    sys.stderr.write(f"run_overhead: error: {message}\n")
    return 2


def final_architecture(trainer) -> list[tuple[str, str]]:
    """``(slot, blueprint)`` of every seed that shapes the final model's output, in
    germination order."""
    return [
        (r.slot, r.blueprint) for r in trainer.records.values() if r.final_stage in SHAPES_OUTPUT
    ]


def fossilize(architecture: list[tuple[str, str]]):
    """A ``prepare`` hook for ``episode_trainer`` that grows ``architecture`` into the model and
    fossilizes it, before training starts."""

    def prepare(model: MorphogeneticModel) -> None:
        for slot, blueprint in architecture:
            drive_to(model, slot, SeedStage.FOSSILIZED, blueprint=blueprint, perturb=False)

    return prepare


def timed_run(
    config: EpisodeConfig,
    seed: int,
    arm: str,
    data: dict,
    architecture=None,
    heuristic: HeuristicConfig | None = None,
) -> dict:
    """One run of ``arm``; returns its measurements (and, for ``grown``, its architecture)."""
    topology = get_task(config.task).topology
    controller = HeuristicController(topology, heuristic, seed=seed) if arm == "grown" else None
    prepare = fossilize(architecture) if arm == "equivalent" else None
    trainer = episode_trainer(config, seed, data, controller=controller, prepare=prepare)
    try:
        started = time.perf_counter()
        for _ in range(config.resolved_epochs()):
            trainer.run_epoch()
        wall = time.perf_counter() - started
        history = trainer.history
        return {
            "wall_s": wall,
            "train_flops": trainer.train_flops.total,
            "eval_flops": trainer.eval_flops.total,
            "counterfactual_flops": sum(h.counterfactual_flops for h in history),
            "counterfactual_s": sum(h.counterfactual_seconds for h in history),
            "params": trainer.model.count_parameters()["total"],
            "val_accuracy": history[-1].val_accuracy,
            "architecture": architecture if arm == "equivalent" else final_architecture(trainer),
        }
    finally:
        trainer.close()


def measure(
    config: EpisodeConfig,
    seed: int,
    reps: int,
    data: dict,
    heuristic: HeuristicConfig | None = None,
) -> dict[str, dict]:
    """Every arm on ``seed``, ``reps`` times interleaved; per arm the median wall time and the
    (deterministic) FLOPs of the first repetition."""
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    architecture = None
    for _ in range(reps):
        for arm in ARMS:
            result = timed_run(config, seed, arm, data, architecture, heuristic)
            if arm == "grown":
                architecture = architecture or result["architecture"]
            runs[arm].append(result)
    out = {}
    for arm, results in runs.items():
        first = dict(results[0])
        first["wall_s"] = statistics.median(r["wall_s"] for r in results)
        first["counterfactual_s"] = statistics.median(r["counterfactual_s"] for r in results)
        out[arm] = first
    return out


def cost_checks(per_seed: dict[int, dict[str, dict]]) -> dict[str, bool]:
    """The whole-run cost criterion over every seed: runs that kept a seed against their
    static-equivalent, runs that kept none against the static host plus the trials' budget (a
    check without any run of its kind holds)."""
    kept = {s: runs for s, runs in per_seed.items() if runs["grown"]["architecture"]}
    none = {s: runs for s, runs in per_seed.items() if not runs["grown"]["architecture"]}
    return {
        "kept_seeds_at_most_equivalent": all(
            r["grown"]["train_flops"] <= r["equivalent"]["train_flops"] for r in kept.values()
        ),
        "culled_trials_within_budget": all(
            r["grown"]["train_flops"] <= (1 + CULLED_TRIALS_BUDGET) * r["static"]["train_flops"]
            for r in none.values()
        ),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.task not in list_tasks():
        return _fail(f"unknown task {args.task!r}; valid: {', '.join(list_tasks())}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        return _fail(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds or args.reps < 1:
        return _fail("--seeds needs at least one seed and --reps must be >= 1")
    if args.shadow_every is not None and args.shadow_every < 1:
        return _fail(f"--shadow-every must be >= 1, got {args.shadow_every}")
    try:
        heuristic = HeuristicConfig(growth_patience=args.growth_patience)
    except ValueError as exc:
        return _fail(str(exc))
    config = EpisodeConfig(
        args.task,
        epochs=args.epochs,
        width_multiplier=args.width_multiplier,
        shadow_every=args.shadow_every,
    )
    try:
        config.run_spec(seeds[0])  # validates epochs and width before anything trains
    except ValueError as exc:
        return _fail(str(exc))
    data: dict = {}
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = measure(config, seed, args.reps, data, heuristic)
        runs = per_seed[seed]
        grown, equivalent = runs["grown"], runs["equivalent"]
        versus = (
            f"{grown['train_flops'] / equivalent['train_flops']:.3f}x its static-equivalent's"
            if grown["architecture"]
            else f"{grown['train_flops'] / runs['static']['train_flops']:.3f}x the static host's "
            f"(kept none: the trials' budget is {1 + CULLED_TRIALS_BUDGET:.2f}x)"
        )
        print(
            f"seed {seed}: grown {grown['params']} params, "
            f"{len(grown['architecture'])} seed(s) in the final model; training FLOPs {versus}",
            flush=True,
        )

    def mean(arm: str, key: str) -> float:
        return statistics.fmean(per_seed[s][arm][key] for s in seeds)

    rows = {
        arm: {
            key: mean(arm, key)
            for key in ("params", "train_flops", "eval_flops", "wall_s", "val_accuracy")
        }
        for arm in ARMS
    }
    rows["counterfactual"] = {
        "eval_flops": mean("grown", "counterfactual_flops"),
        "wall_s": mean("grown", "counterfactual_s"),
    }
    checks = cost_checks(per_seed)
    equivalent_wall = rows["equivalent"]["wall_s"]
    shadow_every = config.to_dict()["shadow_every"]
    print(
        f"# {args.task}, {config.resolved_epochs()} epochs, width x{args.width_multiplier:g}, "
        f"shadow pass every {shadow_every} step(s), growth patience {args.growth_patience}: "
        f"means over seeds {seeds}, wall time the median of {args.reps} interleaved runs"
    )
    print("| run | params | train GFLOP | eval GFLOP | wall s | wall / equivalent | val acc |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    labels = {
        "static": "static host",
        "grown": "grown (heuristic)",
        "equivalent": "static-equivalent",
    }
    for arm in ARMS:
        row = rows[arm]
        print(
            f"| {labels[arm]} | {row['params']:,.0f} | {row['train_flops'] / 1e9:.2f} | "
            f"{row['eval_flops'] / 1e9:.2f} | {row['wall_s']:.2f} | "
            f"{row['wall_s'] / equivalent_wall:.3f} | {row['val_accuracy']:.2f} |"
        )
    cf, grown = rows["counterfactual"], rows["grown"]
    print(
        f"| grown's counterfactual passes | — | — | {cf['eval_flops'] / 1e9:.2f} | "
        f"{cf['wall_s']:.2f} | {cf['wall_s'] / equivalent_wall:.3f} | — |"
    )
    share = cf["wall_s"] / grown["wall_s"] if grown["wall_s"] else 0.0
    print(f"counterfactual passes: {100 * share:.1f}% of the grown run's wall time")
    flops_ratio = grown["train_flops"] / rows["equivalent"]["train_flops"]
    print(f"grown training FLOPs: {flops_ratio:.3f}x the static-equivalent's (means over seeds)")
    for name, ok in checks.items():
        print(f"check {name}: {'yes' if ok else 'NO'}")
    if args.json:
        payload = {
            "task": args.task,
            "epochs": config.resolved_epochs(),
            "width_multiplier": args.width_multiplier,
            "shadow_every": shadow_every,
            "growth_patience": args.growth_patience,
            "seeds": seeds,
            "reps": args.reps,
            "rows": rows,
            "per_seed": {str(s): runs for s, runs in per_seed.items()},
            "checks": checks,
        }
        print(json.dumps(payload))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
