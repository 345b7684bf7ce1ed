"""Growth controllers compared on held-out seeds: static host, masked-random, the default
heuristic, the heuristic tuned by random search, behaviour cloning alone, and a PPO policy.

    python benchmarks/controller_eval.py --task digits --policy policy.pt --out runs/eval
    python benchmarks/controller_eval.py --task digits --controllers static,heuristic --json
    python benchmarks/controller_eval.py --task pyref --workers 2 --out runs/eval-pyref

Every controller trains the same runs (the policy's episode configuration: task, epochs, host
width, slots) on the same held-out seeds (default 1000..1009; policies train on 0..63), and each
final model is measured once on the task's test split. The table gives, per controller, mean ±
sample std of the test metric, mean final parameters and wall time per run, and PPO's paired
difference to it with a 95% bootstrap interval (positive: PPO better). The tuned heuristic gets
as many training runs for its random search as the policy trained on (``--tune-budget``
overrides), scored on training seeds only. For a policy warm-started by behaviour cloning,
``bc`` is that policy before any PPO update, rebuilt from the training configuration saved in
the policy file and checked against the cloning statistics recorded then. ``--out`` keeps every
run's result and the tuning (``results.jsonl``, ``tuning.json``), so an interrupted evaluation
resumes; ``--json`` makes the last line one JSON object with the table's numbers.
``--workers W`` spreads the runs (and the tuner's) over W processes of one torch thread each;
every run depends only on its controller and seed, so the numbers are the same for any W.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from esper.leyline import DEFAULT_PARAMETER_RENT, DEFAULT_TRAIN_SEEDS
from esper.simic.env import BaselineCache, EpisodeConfig
from esper.simic.evaluate import (
    CONTROLLERS,
    ControllerJob,
    EvaluationWorkers,
    RunResult,
    heuristic_config_from_dict,
    heuristic_config_to_dict,
    metric_name,
    paired_bootstrap,
    tune_heuristic,
)
from esper.simic.policy import Policy, PolicyError, shipped_policy_path
from esper.simic.training import behaviour_cloned
from esper.tolaria.tasks import get_task, list_tasks


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(list_tasks())}")
    parser.add_argument("--seeds", default=",".join(str(s) for s in range(1000, 1010)))
    parser.add_argument(
        "--controllers",
        default=None,
        help=f"comma-separated, of {', '.join(CONTROLLERS)} (default: all; bc only for a "
        "policy warm-started by behaviour cloning)",
    )
    parser.add_argument("--policy", default=None, help="default: the policy shipped for --task")
    parser.add_argument("--epochs", type=int, default=None, help="default: the policy's")
    parser.add_argument(
        "--width-multiplier", type=float, default=None, help="default: the policy's"
    )
    parser.add_argument("--tune-budget", type=int, default=None, help="default: PPO's episodes")
    parser.add_argument("--out", default=None, help="keep results here (resumable)")
    parser.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    parser.add_argument("--json", action="store_true", help="last line: the numbers as JSON")
    return parser.parse_args(argv)


def _fail(message: str) -> int:
    sys.stderr.write(f"controller_eval: error: {message}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.task not in list_tasks():
        return _fail(f"unknown task {args.task!r}; valid: {', '.join(list_tasks())}")
    names = [c for c in (args.controllers or ",".join(CONTROLLERS)).split(",") if c]
    unknown = [c for c in names if c not in CONTROLLERS]
    if unknown or not names:
        return _fail(f"unknown controller {unknown[:1]}; valid: {', '.join(CONTROLLERS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        return _fail(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.workers < 1:
        return _fail(f"--workers must be >= 1, got {args.workers}")
    policy = path = None
    # The policy also fixes the runs every controller trains (its episode configuration), so
    # it is read whenever one is named, whichever controllers run.
    if args.policy or {"ppo", "bc", "tuned"} & set(names):
        path = Path(args.policy) if args.policy else shipped_policy_path(args.task)
        try:
            policy = Policy.load(path)
            spec = get_task(args.task)
            policy.check_fits(args.task, spec.topology, policy.layout.slots, str(path))
        except PolicyError as exc:
            return _fail(str(exc))
    if args.controllers is None and not (policy and policy.training.get("bc")):
        names.remove("bc")  # nothing was cloned: there is no cloned policy to run
    episode = _episode(args, policy)
    out = Path(args.out) if args.out else None
    done = _load_results(out)
    with contextlib.ExitStack() as stack:
        paths = {"ppo": path} if path is not None else {}
        if "bc" in names and any(("bc", s) not in done for s in seeds):
            folder = out or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            paths["bc"] = folder / "bc-policy.pt"
            if not paths["bc"].is_file():
                print("rebuilding the behaviour-cloned policy", flush=True)
                try:
                    behaviour_cloned(policy, args.workers).save(paths["bc"])
                except PolicyError as exc:
                    return _fail(str(exc))
        workers = stack.enter_context(EvaluationWorkers(episode, paths, args.workers))
        tuned = None
        if "tuned" in names and any(("tuned", s) not in done for s in seeds):
            tuned = heuristic_config_to_dict(_tuned(episode, policy, out, args, workers))
        jobs = [
            ControllerJob(name, seed, tuned if name == "tuned" else None)
            for name in names
            for seed in seeds
            if (name, seed) not in done
        ]
        for result in workers.run(jobs):
            done[(result.controller, result.seed)] = result
            print(
                f"{result.controller} seed {result.seed}: {result.metric:.4f} "
                f"({result.wall_seconds:.1f} s)",
                flush=True,
            )
            if out is not None:
                with (out / "results.jsonl").open("a") as f:
                    f.write(json.dumps(asdict(result)) + "\n")
    table, payload = _report(args.task, names, seeds, done, episode)
    print(table)
    if args.json:
        print(json.dumps(payload))
    return 0


def _episode(args: argparse.Namespace, policy: Policy | None) -> EpisodeConfig:
    # The policy's runs (its task is --task: check_fits said so), unless flags say otherwise.
    saved = EpisodeConfig.from_dict(policy.episode) if policy is not None else None
    base = saved or EpisodeConfig(args.task)
    return replace(
        base,
        epochs=args.epochs or base.epochs,
        width_multiplier=args.width_multiplier or base.width_multiplier,
    )


def _tuned(episode: EpisodeConfig, policy: Policy, out: Path | None, args, workers):
    path = out / "tuning.json" if out is not None else None
    if path is not None and path.is_file():
        return heuristic_config_from_dict(json.loads(path.read_text())["best"])
    training = policy.training.get("config", {})
    budget = args.tune_budget or int(policy.training.get("episodes", 0))
    train_seeds = range(int(training.get("train_seeds", DEFAULT_TRAIN_SEEDS)))
    print(f"tuning the heuristic: random search with {budget} training runs", flush=True)
    best, trials = tune_heuristic(
        episode,
        budget,
        train_seeds,
        rent=float(training.get("rent", DEFAULT_PARAMETER_RENT)),
        baselines=BaselineCache(out / "baselines" if out is not None else None),
        on_trial=lambda t: print(f"  trial {t['trial']}: {t['score']:+.3f}", flush=True),
        workers=workers,
    )
    if path is not None:
        path.write_text(
            json.dumps({"best": heuristic_config_to_dict(best), "trials": trials}, indent=2)
        )
    return best


def _load_results(out: Path | None) -> dict:
    if out is None:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = RunResult(**json.loads(line))
                done[(r.controller, r.seed)] = r
    return done


def _report(task, names, seeds, done, episode) -> tuple[str, dict]:
    metric, higher = metric_name(task)
    fmt = "{:.2f}" if higher else "{:.4f}"
    lines = [
        f"# Controllers on {task}: {len(seeds)} held-out seeds ({seeds[0]}..{seeds[-1]}), "
        f"{episode.resolved_epochs()} epochs, host width x{episode.width_multiplier:g}",
        "",
        f"| controller | {metric} mean ± std | params | wall s | PPO − this (95% CI) |",
        "| --- | --- | --- | --- | --- |",
    ]
    payload = {"task": task, "metric": metric, "seeds": seeds, "controllers": {}}
    ppo = [done[("ppo", s)].metric for s in seeds] if "ppo" in names else None
    for name in names:
        runs = [done[(name, s)] for s in seeds]
        values = [r.metric for r in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        params = statistics.fmean(r.total_params for r in runs)
        wall = statistics.fmean(r.wall_seconds for r in runs)
        entry = {"mean": statistics.fmean(values), "std": std, "params": params, "wall": wall}
        diff = "—"
        if ppo is not None and name != "ppo":
            mean, low, high = paired_bootstrap(ppo, values, higher)
            entry["ppo_minus_this"] = {"mean": mean, "low": low, "high": high}
            diff = f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"
        payload["controllers"][name] = entry
        cell = f"{fmt.format(entry['mean'])} ± {fmt.format(std)}"
        lines.append(f"| {name} | {cell} | {params:,.0f} | {wall:.1f} | {diff} |")
    return "\n".join(lines), payload


if __name__ == "__main__":
    sys.exit(main())
